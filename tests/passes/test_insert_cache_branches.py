"""InsertCacheBranches: soft and hard mixes, input/output order, provenance."""

from __future__ import annotations

import pytest
import torch
from helpers import fp32_atol, ref_inputs, tiny_reference_dit, tiny_roundings

import harmonica_compile as hc
from harmonica_compile.errors import PassError
from harmonica_compile.passes import InsertCacheBranches, input_names, output_names

#: One reference-DiT forward's longest chain (helpers.dit_roundings: 14907) plus the soft mix
#: ``fresh * r + cache * (1 - r)`` (3 roundings) at each of the 4 sites it passes.
R = tiny_roundings("reference-dit") + 3 * 4


@pytest.fixture(scope="module")
def cm():
    return hc.prepare(tiny_reference_dit(depth=2), ref_inputs())


def _fresh(cm, inputs):
    """Every site's output on these inputs (from the soft graph with router = 1)."""
    soft = cm.routed("soft")
    cache = cm.example_cache(inputs[0].shape[0])
    outs = soft(*inputs, *cache.values(), torch.ones(cm.num_sites))
    return outs[0], list(outs[1:])


def test_soft_graph_signature(cm):
    soft = cm.routed("soft")
    sites = cm.site_names
    assert input_names(soft) == ["x", "t", "y", *(f"cache.{s}" for s in sites), "router"]
    assert output_names(soft) == ["output", *(f"fresh.{s}" for s in sites)]


def test_router_one_is_the_plain_graph_and_fresh_values_are_site_outputs(cm):
    """Router 1 is the plain graph's function plus the mixes: ``fp32_atol(out, R)``; a site's fresh
    value is a prefix of one forward, so ``fp32_atol`` of one forward's chain bounds it too."""
    inputs = ref_inputs(seed=3)
    out, fresh = _fresh(cm, inputs)
    want = cm.graph_module(*inputs)[0]
    assert (out - want).abs().max() <= fp32_atol(want, R)
    # the fresh value of blocks.0.attn is what the eager module returns on the same input
    model = tiny_reference_dit(depth=2)
    seen = {}
    h = model.blocks[0].attn.register_forward_hook(lambda m, a, o: seen.setdefault("attn", o))
    model(*inputs)
    h.remove()
    assert (fresh[0] - seen["attn"]).abs().max() <= fp32_atol(seen["attn"], R)


def test_soft_mix_is_linear_in_the_router(cm):
    """Both runs are one forward with 4 mixes (R) and the second also mixes site 0's cache in
    the test (3 roundings): ``fp32_atol(out, R + 3)``."""
    inputs = ref_inputs(seed=4)
    _, fresh = _fresh(cm, inputs)
    soft = cm.routed("soft")
    cache = [f + 1.0 for f in fresh]  # a different cache
    # site 0's fresh value depends on the inputs only, so it is the same in both runs below
    out_r = soft(*inputs, *cache, torch.tensor([0.25, 1.0, 1.0, 1.0]))[0]
    mixed_cache = list(cache)
    mixed_cache[0] = 0.25 * fresh[0] + 0.75 * cache[0]
    out_0 = soft(*inputs, *mixed_cache, torch.tensor([0.0, 1.0, 1.0, 1.0]))[0]
    assert (out_r - out_0).abs().max() <= fp32_atol(out_r, R + 3)


def test_router_gradient_flows_only_to_the_router(cm):
    inputs = ref_inputs(seed=5)
    _, fresh = _fresh(cm, inputs)
    soft = cm.routed("soft")
    r = torch.full((cm.num_sites,), 0.5, requires_grad=True)
    out = soft(*inputs, *[f + 0.5 for f in fresh], r)[0]
    out.square().mean().backward()
    assert r.grad is not None and (r.grad != 0).all()
    assert all(not b.requires_grad for b in soft.buffers())


def test_hard_graph_selects(cm):
    """``where`` selects exactly; the soft mix with 0/1 rounds at most 3 times per site: within
    ``fp32_atol(out, R)``."""
    inputs = ref_inputs(seed=6)
    _, fresh = _fresh(cm, inputs)
    hard = cm.routed("hard")
    assert input_names(hard)[-1] == "mask"
    cache = [f * 0 + 3.0 for f in fresh]
    mask = torch.tensor([True, False, True, True])
    soft_out = cm.routed("soft")(*inputs, *cache, mask.float())[0]
    assert (hard(*inputs, *cache, mask)[0] - soft_out).abs().max() <= fp32_atol(soft_out, R)


def test_every_created_node_carries_provenance(cm):
    soft = cm.routed("soft")
    created = [n for n in soft.graph.nodes if "harmonica" in n.meta]
    assert created
    for n in created:
        prov = n.meta["harmonica"]
        assert prov["pass"] == "insert_cache_branches"
        assert prov["branch"] in {"cache", "mix", "router"}
        assert prov["site"] in (*cm.site_names, None)
    mixes = {n.meta["harmonica"]["site"] for n in created if n.meta["harmonica"]["branch"] == "mix"}
    assert mixes == set(cm.site_names)


def test_bad_mode_and_empty_sites():
    with pytest.raises(PassError, match="mode must be 'soft' or 'hard'"):
        InsertCacheBranches([object()], "medium")  # type: ignore[list-item]
    with pytest.raises(PassError, match="no sites"):
        InsertCacheBranches([], "soft")
