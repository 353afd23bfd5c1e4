"""Specialize: structure (what is gone), numerics (equals the hard-routed graph), FLOPs."""

from __future__ import annotations

import itertools

import pytest
import torch
from helpers import fp32_atol, ref_inputs, tiny_reference_dit, tiny_roundings

import harmonica_compile as hc
from harmonica_compile.cacheable import count_flops
from harmonica_compile.errors import PassError
from harmonica_compile.passes import Specialize, input_names, output_names


@pytest.fixture(scope="module")
def cm():
    return hc.prepare(tiny_reference_dit(depth=2), ref_inputs())


def _linear_modules(gm):
    """Module paths of the linear layers a graph still computes."""
    out = set()
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target is torch.ops.aten.linear.default:
            stack = n.meta.get("nn_module_stack") or {}
            out.add(list(stack.values())[-1][0])
    return out


def test_all_mlps_cached_leaves_no_mlp_matmul(cm):
    mask = [s.kind != "mlp" for s in cm.sites]
    gm = cm.specialize(mask)
    linears = _linear_modules(gm)
    assert not any(p.startswith("blocks.") and ".mlp." in p for p in linears)
    assert {"blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.1.attn.qkv"} <= linears
    # the MLP's norm and modulate went with it, the gate (adaLN) stayed
    assert "blocks.0.adaLN_modulation.1" in linears
    norms = [n for n in gm.graph.nodes if n.target is torch.ops.aten.layer_norm.default]
    assert len(norms) == 2 + 1  # norm1 of each block and the final layer
    assert input_names(gm) == ["x", "t", "y", "cache.blocks.0.mlp", "cache.blocks.1.mlp"]


def test_flops_drop_by_the_mlp_matmuls(cm):
    batch = 2
    full = count_flops(cm.graph_module, cm.captured.example_inputs)
    gm = cm.specialize([s.kind != "mlp" for s in cm.sites])
    cached = count_flops(gm, cm.step_inputs(gm, cm.captured.example_inputs))
    hidden, tokens, blocks = 384, 4, 2
    mlp_flops = blocks * 2 * (2 * batch * tokens * hidden * 4 * hidden)  # fc1 and fc2
    assert full - cached == mlp_flops


def test_refresh_outputs_and_names(cm):
    gm = cm.specialize([True, False, True, True], refresh=["blocks.0.attn", "blocks.1.mlp"])
    assert output_names(gm) == ["output", "new_cache.blocks.0.attn", "new_cache.blocks.1.mlp"]
    assert gm.meta["harmonica_mask"] == (True, False, True, True)


@pytest.mark.parametrize(
    "mask", list(itertools.product([True, False], repeat=4)), ids=lambda m: "".join("C."[not b] for b in m)
)
def test_specialized_equals_hard_routed_graph(cm, mask):
    """The specialized graph is the hard-routed one with its selects resolved: the same function,
    one reference-DiT forward's chain (14907 roundings, helpers.dit_roundings) for the output and
    a prefix of it for each refreshed site: within ``fp32_atol(value, 14907)``."""
    inputs = ref_inputs(seed=7)
    rounds = tiny_roundings("reference-dit")
    soft = cm.routed("soft")
    fresh = soft(*inputs, *cm.example_cache(2).values(), torch.ones(cm.num_sites))[1:]
    cache = [f.flip(0) + 0.3 for f in fresh]  # not what would be computed now
    want = cm.routed("hard")(*inputs, *cache, torch.tensor(mask))
    refresh = [s for s, m in zip(cm.site_names, mask, strict=True) if m]
    gm = cm.specialize(list(mask), refresh=refresh)
    cache_in = [c for c, m in zip(cache, mask, strict=True) if not m]
    got = gm(*inputs, *cache_in)
    assert (got[0] - want[0]).abs().max() <= fp32_atol(want[0], rounds)
    for g, w in zip(got[1:], [f for f, m in zip(want[1:], mask, strict=True) if m], strict=True):
        assert (g - w).abs().max() <= fp32_atol(w, rounds)
    # structure: nothing of a cached site is left, and no router input
    names = {n.name for n in gm.graph.nodes}
    for site, m in zip(cm.sites, mask, strict=True):
        assert m or not (set(site.nodes) & names)
    assert "router" not in input_names(gm) and "mask" not in input_names(gm)


def test_created_nodes_are_stamped(cm):
    gm = cm.specialize([True, False, False, True])
    created = [n for n in gm.graph.nodes if "harmonica" in n.meta]
    assert [n.meta["harmonica"] for n in created] == [
        {"pass": "specialize", "site": "blocks.0.mlp", "branch": "cache"},
        {"pass": "specialize", "site": "blocks.1.attn", "branch": "cache"},
    ]


def test_bad_arguments(cm):
    with pytest.raises(PassError, match="mask has 3 entries for 4 sites"):
        Specialize(cm.sites, [True] * 3)
    with pytest.raises(PassError, match="unknown sites"):
        Specialize(cm.sites, [True] * 4, refresh=["blocks.9.mlp"])
    with pytest.raises(PassError, match="cached in this step"):
        Specialize(cm.sites, [True, False, True, True], refresh=["blocks.0.mlp"])
    with pytest.raises(PassError, match="routed graph"):
        Specialize(cm.sites, [True] * 4)(cm.routed("soft"))


def test_attention_with_a_mask_is_removed_when_cached():
    """SDPA is tagged nondeterministic (dropout); with dropout_p == 0 it is pure even with a mask,
    whose position (4th argument) once hid dropout_p from the purity check."""
    from torch import fx

    from harmonica_compile.passes.eliminate_dead_code import is_impure

    graph = fx.Graph()
    q, mask = graph.placeholder("q"), graph.placeholder("mask")
    sdpa = torch.ops.aten.scaled_dot_product_attention.default
    with_mask = graph.call_function(sdpa, (q, q, q, mask))
    with_dropout = graph.call_function(sdpa, (q, q, q, mask, 0.1))
    with_kwarg = graph.call_function(sdpa, (q, q, q), {"dropout_p": 0.0})
    assert not is_impure(with_mask) and is_impure(with_dropout) and not is_impure(with_kwarg)
