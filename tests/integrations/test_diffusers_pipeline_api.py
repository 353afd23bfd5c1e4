"""The accelerated pipeline keeps the whole diffusers API: save/load, moves, resolutions, processors,
and the ``pipe.transformer = hc.optimize(...)`` form.

Exactness: with a full-compute schedule, the accelerated transformer runs the graphs torch.export
captured from the live model, the same aten ops on the same inputs as the eager forward, so the
images equal plain diffusers' images exactly (0.0) in each of these situations. A caching
schedule must give other images than full compute (so the comparisons can fail).
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from test_diffusers import DIT_INPUTS, PIXART_INPUTS, _dit_pipe, _pixart_pipe, _run_dit, _schedule, _sites
from test_diffusers import _run_pixart as _run_pixart_prompts

import harmonica_compile as hc
from harmonica_compile.errors import ScheduleError
from harmonica_compile.integrations.diffusers import SCHEDULE_FILE, accelerate, remove_acceleration

diffusers = pytest.importorskip("diffusers")


def _full(pipe, sites, steps=4):
    pipe.scheduler.set_timesteps(steps)
    return hc.CacheSchedule([[True] * len(sites)] * steps, sites, [float(t) for t in pipe.scheduler.timesteps])


def _run_pixart(pipe, height=8, width=8, seed=0):
    return _run_pixart_prompts(pipe, ["a red cat"], seed=seed, height=height, width=width)


def _components(pipe):
    """The pipeline's component entries (save_pretrained itself adds _class_name and _diffusers_version)."""
    return {k: v for k, v in dict(pipe.config).items() if not k.startswith("_")}


@pytest.fixture(scope="module")
def dit():
    pipe = _dit_pipe()
    sites = _sites(pipe.transformer, DIT_INPUTS)
    return pipe, _full(pipe, sites), _schedule(pipe, 4, sites)


@pytest.mark.parametrize("form", ["accelerate", "optimize"])
def test_save_and_load_round_trip(dit, tmp_path, form):
    pipe, _, caching = dit
    plain = _run_dit(pipe, [1, 2])
    config = _components(pipe)
    if form == "accelerate":
        handle = accelerate(pipe, caching)
    else:
        pipe.transformer = hc.optimize(pipe.transformer, DIT_INPUTS, schedule=caching)
    cached = _run_dit(pipe, [1, 2])
    assert np.abs(cached - plain).max() > 0  # the schedule caches
    pipe.save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["transformer"] == ["diffusers", "DiTTransformer2DModel"]
    assert (tmp_path / "saved" / "transformer" / SCHEDULE_FILE).is_file()
    assert _components(pipe) == config
    if form == "accelerate":
        handle.undo()
    else:
        remove_acceleration(pipe.transformer)
    assert _components(pipe) == config
    np.testing.assert_array_equal(_run_dit(pipe, [1, 2]), plain)

    loaded = diffusers.DiTPipeline.from_pretrained(tmp_path / "saved", local_files_only=True)
    np.testing.assert_array_equal(_run_dit(loaded, [1, 2]), plain)  # a plain pipeline again
    with accelerate(loaded):  # the schedule saved beside the transformer
        np.testing.assert_array_equal(_run_dit(loaded, [1, 2]), cached)


def test_optimize_form_with_full_compute_is_exact(dit):
    pipe, full, _ = dit
    plain = _run_dit(pipe, [3], seed=2)
    transformer = pipe.transformer
    pipe.transformer = hc.optimize(pipe.transformer, DIT_INPUTS, schedule=full)
    try:
        assert pipe.transformer is transformer and pipe.transformer.config.in_channels == 4
        np.testing.assert_array_equal(_run_dit(pipe, [3], seed=2), plain)
        with pytest.raises(ScheduleError):  # a 5-step run: timestep 800 is not in the 4-step schedule
            _run_dit(pipe, [3], steps=5)
    finally:
        remove_acceleration(pipe.transformer)


def test_move_to_float64_after_the_first_call(caplog):
    """fp64 eager and fp64 accelerated (captured again in fp64) within 1e-6; measured 0.0."""
    pipe = _dit_pipe()
    full = _full(pipe, _sites(pipe.transformer, DIT_INPUTS))
    with accelerate(pipe, full) as handle:
        _run_dit(pipe, [1])
        pipe.to(torch.float64)
        with caplog.at_level(logging.INFO, logger="harmonica_compile"):
            got = _run_dit(pipe, [1])
        assert handle.acceleration.captures == 2
        assert "it moved to torch.float64 on cpu since capture; capturing again" in caplog.text
    eager = _run_dit(pipe, [1])
    assert pipe.transformer.dtype == torch.float64
    np.testing.assert_allclose(got, eager, atol=1e-6, rtol=0)


def _zero_attention(attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
    return torch.zeros_like(hidden_states)


class ZeroAttention:
    """An attention processor that zeroes attention (the issue's example of a silent no-op)."""

    def __call__(self, attn, hidden_states, *args, **kwargs):
        return _zero_attention(attn, hidden_states)


@pytest.mark.parametrize("change", ["processor", "fuse_qkv", "parameter edit"])
def test_changes_to_the_live_model_after_the_first_call_are_seen(change, caplog):
    """PixArt (it has set_attn_processor and fuse_qkv_projections): each change is captured again
    and the accelerated images equal eager with the change (full compute, exact)."""
    pipe = _pixart_pipe()
    full = _full(pipe, _sites(pipe.transformer, PIXART_INPUTS))
    before = _run_pixart(pipe)
    with accelerate(pipe, full) as handle:
        np.testing.assert_array_equal(_run_pixart(pipe), before)
        if change == "processor":
            pipe.transformer.set_attn_processor(ZeroAttention())
        elif change == "fuse_qkv":
            pipe.transformer.fuse_qkv_projections()
        else:
            with torch.no_grad():
                pipe.transformer.transformer_blocks[0].ff.net[2].weight.mul_(1.5)
        with caplog.at_level(logging.INFO, logger="harmonica_compile"):
            got = _run_pixart(pipe)
        assert handle.acceleration.captures == 2 and "capturing again" in caplog.text
    eager = _run_pixart(pipe)
    np.testing.assert_allclose(got, eager, atol=0, rtol=0)
    if change != "fuse_qkv":  # fusing changes no value (beyond rounding); the other two must
        assert np.abs(eager - before).max() > 1e-3


@pytest.mark.parametrize("kind", ["alpha", "sigma"])
def test_pixart_at_several_resolutions_in_one_pipeline(kind, caplog):
    """16x16 and 16x8 besides the default 8x8: diffusers computes the position embedding in place at
    sizes other than sample_size; capture functionalizes it. Full compute exact; a caching schedule
    runs at a non-square size and differs from full compute."""
    pipe = _pixart_pipe(kind=kind)
    sites = _sites(pipe.transformer, PIXART_INPUTS)
    sizes = [(8, 8), (16, 16), (16, 8)]
    plain = {hw: _run_pixart(pipe, *hw) for hw in sizes}
    with accelerate(pipe, _full(pipe, sites)) as handle, caplog.at_level(logging.INFO, logger="harmonica_compile"):
        for hw in sizes:
            np.testing.assert_array_equal(_run_pixart(pipe, *hw), plain[hw])
        assert handle.acceleration.captures == 3
        assert "new input shapes [4x16x8, 16x12, 16, scalar] per sample" in caplog.text
    with accelerate(pipe, _schedule(pipe, 4, sites, seed=3)):
        got = _run_pixart(pipe, 16, 8)
        assert got.shape == (1, 16, 8, 3) and np.abs(got - plain[16, 8]).max() > 0


def test_captured_shapes_are_bounded(dit, caplog):
    pipe = _pixart_pipe()
    sites = _sites(pipe.transformer, PIXART_INPUTS)
    with accelerate(pipe, _full(pipe, sites)) as handle, caplog.at_level(logging.INFO, logger="harmonica_compile"):
        handle.acceleration.max_shapes = 1
        _run_pixart(pipe, 8, 8)
        _run_pixart(pipe, 16, 8)
        _run_pixart(pipe, 8, 8)
        assert handle.acceleration.captures == 3
        assert "keeping 1 input shapes; dropped the graphs for [4x8x8" in caplog.text


def test_schedule_for_another_model_fails_at_the_first_call_before_any_step(dit):
    """Site names of another model: refused when the graphs are captured, before step 0 computes."""
    pipe, full, _ = dit
    other = hc.CacheSchedule(full.mask, [f"blocks.{i}.other" for i in range(len(full.sites))], full.timesteps)
    steps = []
    step = pipe.scheduler.step
    with accelerate(pipe, other):
        pipe.scheduler.step = lambda *a, **k: steps.append(1) or step(*a, **k)
        try:
            with pytest.raises(ScheduleError) as info:
                _run_dit(pipe, [1])
        finally:
            del pipe.scheduler.step
    assert steps == [] and "\n" not in str(info.value)


def test_layerwise_casting():
    """``enable_layerwise_casting`` (fp8 storage, fp32 compute): captured with the layers cast to the
    compute dtype once, the cast the hooks make at every call, so the images are the same (exact);
    the model keeps its fp8 storage and is not captured again at the next call."""
    pipe = _pixart_pipe()
    full = _full(pipe, _sites(pipe.transformer, PIXART_INPUTS))
    pipe.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    plain = [_run_pixart(pipe, seed=s) for s in (0, 1)]
    with accelerate(pipe, full) as handle:
        for s in (0, 1):
            np.testing.assert_array_equal(_run_pixart(pipe, seed=s), plain[s])
        assert handle.acceleration.captures == 1
        assert pipe.transformer.transformer_blocks[0].ff.net[2].weight.dtype == torch.float8_e4m3fn


def test_accelerate_with_compile_runs_compiled_graphs(dit):
    """``accelerate(pipe, schedule, compile=True)``: the captured step graphs run through
    torch.compile (one record per graph, none fell back) and give the eager schedule's images. The
    rounding-level bound of compiled against eager is test_compiling's (teacher forced); through a
    whole pipeline the scheduler's amplification of those differences is not bounded, so the images
    are checked at 1e-3 (of their [0, 1] range) against another function: full
    compute's images differ from the schedule's by more than that, checked so the test can fail."""
    pipe, _, caching = dit
    plain = _run_dit(pipe, [1, 2])
    with accelerate(pipe, caching):
        eager = _run_dit(pipe, [1, 2])
    with accelerate(pipe, caching, compile=True):
        compiled = _run_dit(pipe, [1, 2])
        acceleration = pipe.transformer._harmonica_acceleration
        (cached,) = acceleration._captures.values()
        report = cached.compile_report()
    assert len(report) == cached.num_graphs and not any(r["fell_back"] for r in report)
    assert np.abs(compiled - eager).max() <= 1e-3
    assert np.abs(plain - eager).max() > 1e-3


def test_accelerate_with_dtype_lowers_each_capture(dit):
    """``accelerate(pipe, schedule, dtype="bf16")``: every capture's graphs compute their token
    matmuls in bf16 (the per-op bounds are test_lower_precision's); the images differ from the fp32
    schedule's (so the option did something) and stay finite."""
    pipe, _, caching = dit
    with accelerate(pipe, caching):
        fp32 = _run_dit(pipe, [1, 2])
    with accelerate(pipe, caching, dtype="bf16"):
        bf16 = _run_dit(pipe, [1, 2])
        (cached,) = pipe.transformer._harmonica_acceleration._captures.values()
    assert cached.dtype == torch.bfloat16
    assert all(gm.meta.get("harmonica_compute_dtype") == "bfloat16" for gm in cached.graphs)
    assert np.isfinite(bf16).all() and np.abs(bf16 - fp32).max() > 0
