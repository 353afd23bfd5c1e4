"""The step engine every runtime drives: steps from timesteps, runs, the batch lock, the refresh
rule, hooks; and the runtimes really share it."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_spec

from harmonica_compile import CacheSchedule
from harmonica_compile.engine import GraphIO, StepEngine
from harmonica_compile.errors import InputError, ScheduleError

# graph 0 computes everything and hands "a" on; graph 1 reads "a"
GRAPHS = [GraphIO((), ("new_cache.a",)), GraphIO(("cache.a",), ())]


def _run(graph, inputs, cache):
    return [f"out{graph}"] + (["fresh a"] if graph == 0 else [])


def test_refresh_rule_and_hooks():
    engine = StepEngine(GRAPHS, [0, 1, 0, 1], [900.0, 600.0, 300.0, 0.0])
    seen = []
    remove = engine.add_hook(lambda step, graph, inputs, cache: seen.append((step, graph, list(cache))))
    assert engine.step(900, 2, ["x"], _run) == ["out0"]
    assert engine.cache == {"cache.a": "fresh a"} and engine.filled_at == {"cache.a": 0}
    assert engine.step(600, 2, ["x"], _run) == ["out1"]
    remove()
    engine.step(300, 2, ["x"], _run)
    assert seen == [(0, 0, []), (1, 1, ["fresh a"])]
    engine.step(0, 2, ["x"], _run)
    assert engine.cache == {} and engine.next_step == 0  # a run ends after its last step


def test_step_zero_starts_a_new_run_and_the_batch_is_locked():
    engine = StepEngine(GRAPHS, [0, 1], [900.0, 0.0])
    engine.step(900, 2, ["x"], _run)
    with pytest.raises(InputError, match="this call has batch 4 but the cache holds batch 2"):
        engine.step(0, 4, ["x"], _run)
    engine.step(900, 4, ["x"], _run)  # the first timestep again: a new run, any batch
    assert engine.batch == 4


def test_unknown_timesteps_and_missing_caches_are_errors():
    engine = StepEngine(GRAPHS, [0, 1], [900.0, 0.0], owner="ENG")
    with pytest.raises(ScheduleError, match=r"timestep 450 is not one of the 2 timesteps of ENG \(900, 0\)"):
        engine.step(450, 2, ["x"], _run)
    with pytest.raises(ScheduleError, match="step 1 reads 'cache.a' but no earlier step of this run computed it"):
        engine.step(0, 2, ["x"], _run)
    assert engine.step(900.00001, 2, ["x"], _run) == ["out0"]  # within the one timestep tolerance


def test_steps_are_counted_by_calls_without_timesteps():
    engine = StepEngine(GRAPHS, [0, 1])
    assert [engine.resolve(None), engine.step(None, 1, [], _run), engine.resolve(None)] == [0, ["out0"], 1]


def test_cached_model_runs_on_the_engine():
    spec = tiny_spec()
    sites = spec.cacheable().site_names
    schedule = CacheSchedule.fora(sites, 4, 2, timesteps=[float(t) for t in spec.sampler(4).timesteps])
    cached = spec.cached(schedule)
    graphs = []
    cached.engine.add_hook(lambda step, graph, inputs, cache: graphs.append((step, graph, len(cache))))
    x, t, y = spec.example_inputs(2)
    for ts in spec.sampler(4).timesteps:
        cached(x, torch.full_like(t, ts), y)
    assert graphs == [(0, 0, 0), (1, 1, len(sites)), (2, 0, 0), (3, 1, len(sites))]
