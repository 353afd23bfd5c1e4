"""CachedModel: equals eager with every site computed, equals forward-hook caching for random
schedules on randomly re-drawn weights, and follows the step / timestep rules."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    diffusers_dit_inputs,
    output_tensor,
    pixart_inputs,
    ref_inputs,
    tiny_diffusers_dit,
    tiny_pixart,
    tiny_reference_dit,
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


def _as_kwargs(name, inputs):
    if isinstance(inputs, dict):
        return dict(inputs)
    return dict(zip(("x", "t", "y"), inputs, strict=True))


def _loop(model, kwargs, x_name, t_name, sampler):
    """A DDIM loop: the latent is advanced with each step's prediction."""
    x = kwargs[x_name]
    outs = []
    for i, t in enumerate(sampler.timesteps):
        kw = {**kwargs, x_name: x, t_name: torch.full((x.shape[0],), t, dtype=torch.long)}
        with torch.no_grad():
            out = output_tensor(model(**kw))
        outs.append(out)
        x = sampler.step(out[:, : x.shape[1]], i, x)
    return x, outs


@pytest.mark.parametrize("batch", [1, 2], ids=["b1", "b2"])
@pytest.mark.parametrize("name", list(MODELS))
def test_every_site_computed_equals_eager(name, batch):
    make, make_inputs, x_name, t_name = MODELS[name]
    model = make()
    kwargs = _as_kwargs(name, make_inputs(batch))
    cm = hc.prepare(model, kwargs)
    sampler = DDIMSampler(5)
    cached = hc.optimize(cm, schedule=CacheSchedule.all_compute(cm.site_names, 5))
    x_ref, ref = _loop(model, kwargs, x_name, t_name, sampler)
    x_got, got = _loop(cached, kwargs, x_name, t_name, sampler)
    for a, b in zip(ref, got, strict=True):
        assert (a - b).abs().max() <= 1e-5
    assert (x_ref - x_got).abs().max() <= 1e-5


def _random_schedule(sites, num_steps, seed, p_cache=0.5):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(num_steps, len(sites), generator=gen) > p_cache
    mask[0] = True
    return CacheSchedule(mask.tolist(), sites)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", list(MODELS))
def test_cache_semantics_match_forward_hooks(name, seed):
    make, make_inputs, x_name, t_name = MODELS[name]
    model = make(seed=seed)
    kwargs = _as_kwargs(name, make_inputs(2, seed=seed))
    cm = hc.prepare(model, kwargs)
    schedule = _random_schedule(cm.site_names, 6, seed)
    assert 0 < schedule.cur < 1
    sampler = DDIMSampler(6)
    hooks = HookCachedModel(model, schedule)
    try:
        x_ref, ref = _loop(hooks, kwargs, x_name, t_name, sampler)
    finally:
        hooks.close()
    x_full, _ = _loop(model, kwargs, x_name, t_name, sampler)
    _, got = _loop(hc.optimize(cm, schedule=schedule), kwargs, x_name, t_name, sampler)
    for a, b in zip(ref, got, strict=True):
        assert (a - b).abs().max() <= 1e-5
    # and caching really changed something (so this test can fail)
    assert (x_full - x_ref).abs().max() > 1e-3


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
