"""Forecast read branches: the graph's branch against an independent oracle, history across
refreshes, the fallback of the first steps, version-1 schedules, ONNX export, FLOPs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import ref_inputs, tiny_reference_dit, tiny_roundings, tiny_spec

import harmonica_compile as hc
from harmonica_compile import CacheSchedule
from harmonica_compile.engine import GraphIO, StepEngine
from harmonica_compile.errors import ScheduleError
from harmonica_compile.io import canonical_checksum
from harmonica_compile.reference import HookCachedModel
from harmonica_compile.sampling import DDIMSampler
from harmonica_compile.schedule import lagrange_weights

SITES4 = ["blocks.0.attn", "blocks.0.mlp", "blocks.1.attn", "blocks.1.mlp"]


def _irregular(order: str) -> CacheSchedule:
    """6 steps: sites computed at irregular steps, then forecast (and one reused) entries."""
    mask = [[1, 1, 1, 1], [1, 0, 1, 1], [0, 1, 1, 0], [1, 0, 0, 1], [0, 0, 1, 0], [0, 1, 0, 0]]
    branches = [["compute" if m else order for m in row] for row in mask]
    branches[4][0] = "reuse"
    return CacheSchedule(mask, SITES4, branches=branches)


U64 = 2.0**-53


@pytest.mark.parametrize("order", ["taylor1", "taylor2"])
def test_forecast_branch_equals_an_independent_hand_computation(order):
    """In float64, so that the check is tight: both models are fed the oracle's latents; a forecast
    sums at most W = max sum|w| times the values it combines, each the end of at most (i + 1)
    forwards of R roundings, so they agree within W * 2 (i + 1) R u64 max(|out|, 1) (~1e-9 here,
    while a wrong weight or a wrong history moves outputs by more than 1e-4)."""
    model = tiny_reference_dit(depth=2).double()
    x, t, y = ref_inputs()
    x = x.double()
    cm = hc.prepare(model, (x, t, y))
    schedule = _irregular(order)
    assert schedule.uses_forecast
    sampler = DDIMSampler(6)
    hooks = HookCachedModel(model, schedule)
    cached = hc.optimize(cm, schedule=schedule)
    wmax = max(sum(abs(v) for v in w) for i in range(6) for w in schedule.forecast_weights(i))
    x_i = x
    try:
        for i, ts in enumerate(sampler.timesteps):
            tt = torch.full((2,), ts, dtype=torch.long)
            with torch.no_grad():
                want, got = hooks(x_i, tt, y), cached(x_i, tt, y)
            bound = wmax * 2 * (i + 1) * tiny_roundings("reference-dit") * U64 * max(float(want.abs().max()), 1.0)
            assert (want - got).abs().max() <= bound, (i, float((want - got).abs().max()), bound)
            x_i = sampler.step(want[:, :4], i, x_i)
    finally:
        hooks.close()
    # and the forecast is not the reuse value (so this test can fail)
    reuse = hc.optimize(
        cm, schedule=schedule.with_branches([["compute" if m else "reuse" for m in r] for r in schedule.mask])
    )
    x_i = x
    outs = []
    for i, ts in enumerate(sampler.timesteps):
        tt = torch.full((2,), ts, dtype=torch.long)
        with torch.no_grad():
            a, b = cached(x_i, tt, y), reuse(x_i, tt, y)
        outs.append(float((a - b).abs().max()))
        x_i = sampler.step(a[:, :4], i, x_i)
    assert max(outs) > 1e-3


def test_history_shifts_across_refreshes():
    graphs = [GraphIO((), ("new_cache.a",)), GraphIO(("cache.a", "cache_h1.a", "cache_h2.a"), ())]
    engine = StepEngine(graphs, [0, 0, 0, 1], history=2)
    values = iter(["v0", "v1", "v2"])
    for _ in range(3):
        engine.step(None, 1, [], lambda g, i, c: ["out", next(values)])
    assert engine.cache == {"cache.a": "v2", "cache_h1.a": "v1", "cache_h2.a": "v0"}
    assert engine.filled_at == {"cache.a": 2, "cache_h1.a": 1, "cache_h2.a": 0}
    seen = []
    engine.step(None, 1, [], lambda g, i, c: seen.append(list(c)) or ["out"])
    assert seen == [["v2", "v1", "v0"]]


def test_the_first_steps_fall_back_to_what_history_allows():
    s = CacheSchedule.taylorseer(SITES4, 6, 2, order=2)
    assert [row[0] for row in s.branches] == ["compute", "reuse", "compute", "taylor1", "compute", "taylor2"]
    assert s.forecast_weights(1)[0] == (1.0, 0.0, 0.0)
    assert s.forecast_weights(3)[0] == (1.5, -0.5, 0.0) == (*lagrange_weights(3, [2, 0]), 0.0)
    assert s.history_depth == 2


def test_bad_branches_are_named():
    with pytest.raises(ScheduleError, match=r"branches\[1\]\[0\] \(blocks.0.attn\) is 'taylor3'"):
        CacheSchedule([[1] * 4, [0] * 4], SITES4, branches=[["compute"] * 4, ["taylor3"] * 4])
    with pytest.raises(ScheduleError, match="the mask computes it but its branch is 'reuse'"):
        CacheSchedule([[1] * 4, [1] * 4], SITES4, branches=[["compute"] * 4, ["reuse"] * 4])


def test_version_1_schedules_load(tmp_path):
    payload = {"sites": SITES4, "mask": [[True] * 4, [False] * 4], "timesteps": [999.0, 0.0], "meta": {"m": 1}}
    data = {"format": "harmonica-compile/schedule", "version": 1, **payload, "checksum": canonical_checksum(payload)}
    (tmp_path / "v1.json").write_text(json.dumps(data))
    s = CacheSchedule.load(tmp_path / "v1.json")
    assert s.branches == (("compute",) * 4, ("reuse",) * 4) and not s.uses_forecast
    again = json.loads(s.save(tmp_path / "v2.json").read_text())
    assert again["version"] == 2 and again["branches"][1] == ["reuse"] * 4
    data["mask"][1][0] = True  # tampered: the version-1 checksum catches it
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(hc.errors.ArtifactError, match="checksum mismatch"):
        CacheSchedule.load(tmp_path / "bad.json")


def test_steps_that_read_alike_share_a_graph_and_forecasts_cost_their_multiply_adds():
    spec = tiny_spec()
    sites = spec.cacheable().site_names
    ts = [float(t) for t in spec.sampler(8).timesteps]
    s = CacheSchedule.taylorseer(sites, 8, 2, order=1, timesteps=ts)
    cached = spec.cached(s)
    # compute, reuse (step 1, one value so far), forecast order 1 (steps 3, 5, 7)
    assert cached.num_graphs == 3 and len({cached.graph_of_step(i) for i in (3, 5, 7)}) == 1
    reuse = spec.cached(CacheSchedule.fora(sites, 8, 2, timesteps=ts))
    extra = cached.flops(3) - reuse.flops(3)
    per_site = [np.prod([2 if d == -1 else d for d in site.shapes[0]]) for site in cached.site_info]
    assert extra == sum(3 * n for n in per_site)  # two multiplies and an add per element


def test_forecast_graphs_export_and_run_in_onnx_runtime(tmp_path):
    from harmonica_compile.exporters.onnx import export_onnx
    from harmonica_compile.runtime.ort import OrtRunner
    from harmonica_compile.runtime.parity import onnx_parity_gate
    from harmonica_compile.sampling import generate

    spec = tiny_spec()
    sites = spec.cacheable().site_names
    sampler = spec.sampler(7)
    s = CacheSchedule.taylorseer(sites, 7, 2, order=2, timesteps=[float(t) for t in sampler.timesteps])
    cached = spec.cached(s)
    manifest = export_onnx(
        cached, tmp_path / "eng", model_name=spec.name, sampler=sampler, spec=spec, max_batch=8,
        check=onnx_parity_gate(spec, sampler),
    )  # fmt: skip
    assert manifest.data["parity"]["graph_max_abs_diff"] >= 0  # the gate passed on every forecast graph
    last = manifest.graphs[manifest.steps[5]["graph"]]  # steps 0, 2, 4, 6 compute; 5 forecasts (order 2)
    roles = {i["name"]: i["role"] for i in last["inputs"]}
    assert roles["forecast.weights"] == "forecast_weights" and roles["cache_h2.blocks.0.attn"] == "cache_in"
    assert manifest.steps[5]["forecast_weights"][0] == list(s.forecast_weights(5)[0])
    # the parity gate's whole-pipeline tolerance (atol 1e-4, rtol 1e-2)
    a, _ = generate(spec, OrtRunner(tmp_path / "eng"), num=3, steps=7)
    b, _ = generate(spec, spec.denoiser(cached), num=3, steps=7)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-2)
