"""CachedModel: equals eager with every site computed, equals forward-hook caching for random
schedules on randomly re-drawn weights, and follows the step / timestep rules."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    diffusers_dit_inputs,
    fp32_atol,
    output_tensor,
    pixart_inputs,
    ref_inputs,
    tiny_diffusers_dit,
    tiny_pixart,
    tiny_reference_dit,
    tiny_roundings,
)

import harmonica_compile as hc
from harmonica_compile import CacheSchedule
from harmonica_compile.errors import InputError, ScheduleError
from harmonica_compile.reference import HookCachedModel
from harmonica_compile.sampling.ddim import DDIMSampler

MODELS = {
    "reference-dit": (tiny_reference_dit, ref_inputs, "x", "t"),
    "diffusers-dit": (tiny_diffusers_dit, diffusers_dit_inputs, "hidden_states", "timestep"),
    "pixart-alpha": (tiny_pixart, pixart_inputs, "hidden_states", "timestep"),
}
#: Roundings along one forward's longest chain (helpers.dit_roundings): 4 * 1000 for the timestep's
#: sin/cos, the embedding MLP and adaLN (256 + 2 * hidden), per block two layer norms (2 * 2 * hidden),
#: attention (3 * hidden + head_dim + 2 * tokens) and the MLP (hidden + mlp_hidden), the final layer:
#: 14907 for the reference DiT (hidden 384), 4859 / 5049 for the diffusers DiT / PixArt (hidden 16).
ROUNDINGS = {name: tiny_roundings(name) for name in MODELS}


def _as_kwargs(name, inputs):
    if isinstance(inputs, dict):
        return dict(inputs)
    return dict(zip(("x", "t", "y"), inputs, strict=True))


def _loop(model, kwargs, x_name, t_name, sampler, xs=None):
    """A DDIM loop: the latent is advanced with each step's prediction; returns the final latent,
    the outputs and the latent each step was fed. Given ``xs``, step i is fed ``xs[i]`` instead
    (teacher forcing): two models then see the same inputs at every step, and their outputs differ
    by their own roundings only, not by a trajectory that drifted through the sampler."""
    x = kwargs[x_name]
    outs, seen = [], []
    for i, t in enumerate(sampler.timesteps):
        x = x if xs is None else xs[i]
        seen.append(x)
        kw = {**kwargs, x_name: x, t_name: torch.full((x.shape[0],), t, dtype=torch.long)}
        with torch.no_grad():
            out = output_tensor(model(**kw))
        outs.append(out)
        x = sampler.step(out[:, : x.shape[1]], i, x)
    return x, outs, seen


@pytest.mark.parametrize("batch", [1, 2], ids=["b1", "b2"])
@pytest.mark.parametrize("name", list(MODELS))
def test_every_site_computed_equals_eager(name, batch):
    """With nothing cached each step is one forward of the same function: outputs agree within
    ``fp32_atol(out, R)``, R = ROUNDINGS[name] (one forward's chain). The final latent is one DDIM
    step from the same latent, ``c_x x + c_eps out``: within ``|c_eps|`` times that, plus the
    step's two roundings (``c_eps * out``, the add) in each evaluation."""
    make, make_inputs, x_name, t_name = MODELS[name]
    model = make()
    kwargs = _as_kwargs(name, make_inputs(batch))
    cm = hc.prepare(model, kwargs)
    sampler = DDIMSampler(5)
    cached = hc.optimize(cm, schedule=CacheSchedule.all_compute(cm.site_names, 5))
    x_ref, ref, xs = _loop(model, kwargs, x_name, t_name, sampler)
    x_got, got, _ = _loop(cached, kwargs, x_name, t_name, sampler, xs=xs)
    for a, b in zip(ref, got, strict=True):
        assert (a - b).abs().max() <= fp32_atol(a, ROUNDINGS[name])
    ab, ab_prev = sampler.alpha_bars(sampler.num_steps - 1)
    c_eps = abs((1 - ab_prev) ** 0.5 - (ab_prev * (1 - ab) / ab) ** 0.5)
    atol = c_eps * fp32_atol(ref[-1], ROUNDINGS[name]) + fp32_atol(x_ref, 2)
    assert (x_ref - x_got).abs().max() <= atol


def _random_schedule(sites, num_steps, seed, p_cache=0.5):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(num_steps, len(sites), generator=gen) > p_cache
    mask[0] = True
    return CacheSchedule(mask.tolist(), sites)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", list(MODELS))
def test_cache_semantics_match_forward_hooks(name, seed):
    """Both models are fed the hooks' latents. At step i an output depends on cached values from
    earlier steps, each the end of an earlier step's chain, so its chain is at most (i + 1) forwards:
    ``fp32_atol(out, (i + 1) * R)``, R = ROUNDINGS[name]."""
    make, make_inputs, x_name, t_name = MODELS[name]
    model = make(seed=seed)
    kwargs = _as_kwargs(name, make_inputs(2, seed=seed))
    cm = hc.prepare(model, kwargs)
    schedule = _random_schedule(cm.site_names, 6, seed)
    assert 0 < schedule.cur < 1
    sampler = DDIMSampler(6)
    hooks = HookCachedModel(model, schedule)
    try:
        _, ref, xs = _loop(hooks, kwargs, x_name, t_name, sampler)
    finally:
        hooks.close()
    _, full, _ = _loop(model, kwargs, x_name, t_name, sampler, xs=xs)
    _, got, _ = _loop(hc.optimize(cm, schedule=schedule), kwargs, x_name, t_name, sampler, xs=xs)
    atols = [fp32_atol(a, (i + 1) * ROUNDINGS[name]) for i, a in enumerate(ref)]
    for a, b, atol in zip(ref, got, atols, strict=True):
        assert (a - b).abs().max() <= atol
    # and caching really changes an output by more than the tolerance (so this test can fail)
    assert any((f - a).abs().max() > atol for f, a, atol in zip(full, ref, atols, strict=True))


@pytest.fixture(scope="module")
def small():
    model = tiny_reference_dit(depth=2)
    return model, hc.prepare(model, ref_inputs())


def test_steps_are_counted_by_calls_and_runs_restart(small):
    _, cm = small
    schedule = CacheSchedule.fora(cm.site_names, 3, 2)
    cached = hc.optimize(cm, schedule=schedule)
    x, t, y = ref_inputs()
    first = [cached(x, t, y) for _ in range(3)]
    assert cached.step == 0  # a run ended after num_steps calls
    second = [cached(x, t, y) for _ in range(3)]
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    cached(x, t, y)
    assert cached.step == 1
    cached.reset()
    assert cached.step == 0


def test_step_is_found_from_the_timestep(small):
    _, cm = small
    schedule = CacheSchedule.fora(cm.site_names, 3, 2, timesteps=[999, 500, 0])
    cached = hc.optimize(cm, schedule=schedule)
    x, _, y = ref_inputs()
    ts = [torch.full((2,), v) for v in (999, 500, 0)]
    a = [cached(x, t, y) for t in ts]
    # a new run starts at the first timestep even in the middle of a run
    cached(x, ts[0], y)
    b = [cached(x, t, y) for t in ts[1:]]
    assert torch.equal(a[1], b[0]) and torch.equal(a[2], b[1])
    with pytest.raises(ScheduleError, match="timestep 123 is not one of"):
        cached(x, torch.full((2,), 123), y)


def test_skipping_into_a_cached_step_is_an_error(small):
    _, cm = small
    cached = hc.optimize(cm, schedule=CacheSchedule.fora(cm.site_names, 3, 2, timesteps=[999, 500, 0]))
    x, _, y = ref_inputs()
    with pytest.raises(ScheduleError, match="step 1 reads 'cache.blocks.0.attn' but no earlier step"):
        cached(x, torch.full((2,), 500), y)


def test_batch_change_inside_a_run_is_an_error(small):
    _, cm = small
    cached = hc.optimize(cm, schedule=CacheSchedule.fora(cm.site_names, 3, 2))
    x, t, y = ref_inputs(2)
    cached(x, t, y)
    x4, t4, y4 = ref_inputs(4)
    with pytest.raises(InputError, match="batch 4 but the cache holds batch 2"):
        cached(x4, t4, y4)


def test_equal_masks_share_a_graph_and_flops(small):
    _, cm = small
    schedule = CacheSchedule.fora(cm.site_names, 6, 3)
    cached = hc.optimize(cm, schedule=schedule)
    assert cached.num_graphs == 2
    assert [cached.graph_of_step(i) for i in range(6)] == [0, 1, 1, 0, 1, 1]
    assert cached.step_module(1) is cached.step_module(2)
    assert cached.flops(0) == cached.flops_full
    assert cached.flops(1) < cached.flops_full / 3
    expected = 6 * cached.flops_full / (2 * cached.flops(0) + 4 * cached.flops(1))
    assert cached.theoretical_speedup == pytest.approx(expected)


def test_schedule_for_another_model_is_refused(small):
    _, cm = small
    with pytest.raises(ScheduleError, match="the schedule has 2 sites and the model .* has 4"):
        hc.optimize(cm, schedule=CacheSchedule.all_compute(["blocks.0.attn", "blocks.9.mlp"], 3))


def test_schedule_path_and_training_options(small, tmp_path):
    _, cm = small
    path = CacheSchedule.fora(cm.site_names, 4, 2).save(tmp_path / "s.json")
    assert hc.optimize(cm, schedule=str(path)).schedule.cur == 0.5
    with pytest.raises(hc.HarmonicaError, match="training options"):
        hc.optimize(cm, schedule=str(path), target_cur=0.5)
