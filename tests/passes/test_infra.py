"""Pass infrastructure: results, checks after every pass, provenance, dumps, error wrapping."""

from __future__ import annotations

import pytest
import torch
from helpers import diffusers_dit_inputs, fp32_atol, ref_inputs, tiny_diffusers_dit, tiny_reference_dit, tiny_roundings
from torch import fx

from harmonica_compile.errors import PassError
from harmonica_compile.passes import (
    CLEANUP_PIPELINE,
    GraphPass,
    PassManager,
    PassResult,
    describe_pipeline,
    stamp,
)


def _raw_export(model, inputs):
    """ep.module() before any of our passes, made flat enough to call directly."""
    batch = torch.export.Dim("batch", min=1, max=64)
    if isinstance(inputs, dict):
        ep = torch.export.export(model, (), inputs, dynamic_shapes={k: {0: batch} for k in inputs}, strict=False)
    else:
        ep = torch.export.export(model, inputs, dynamic_shapes=tuple({0: batch} for _ in inputs), strict=False)
    gm = ep.module()
    return gm


@pytest.mark.parametrize("upto", range(len(CLEANUP_PIPELINE)), ids=[p.name for p in CLEANUP_PIPELINE])
@pytest.mark.parametrize("which", ["reference-dit", "diffusers-dit"])
def test_cleanup_passes_preserve_computation(which, upto):
    """Every pass that declares preserves_computation is checked against eager, on real models.

    The graph computes the same function as eager in float32: within ``fp32_atol(out, R)``,
    R = tiny_roundings(which), one forward's longest chain (14907 roundings for the reference DiT,
    4859 for the diffusers DiT; see helpers.dit_roundings)."""
    if which == "reference-dit":
        model, inputs = tiny_reference_dit(), ref_inputs()
    else:
        model, inputs = tiny_diffusers_dit(), diffusers_dit_inputs()
    gm = _raw_export(model, inputs)
    passes = CLEANUP_PIPELINE[: upto + 1]
    assert passes[-1].preserves_computation
    gm = PassManager(passes)(gm).graph_module
    with torch.no_grad():
        want = model(**inputs) if isinstance(inputs, dict) else model(*inputs)
        got = gm(**inputs) if isinstance(inputs, dict) else gm(*inputs)
    want = want if isinstance(want, torch.Tensor) else want.sample
    got = got if isinstance(got, torch.Tensor) else got.sample
    assert (got - want).abs().max() <= fp32_atol(want, tiny_roundings(which))


def test_cleanup_reports_what_changed():
    gm = _raw_export(tiny_diffusers_dit(), diffusers_dit_inputs())
    result = PassManager(CLEANUP_PIPELINE)(gm)
    gm, done = result.graph_module, result.history
    changes = {name: r.changes for name, r in done}
    assert result.changes == changes and result.modified
    assert changes["remove_guards"] == {"removed": 1}
    assert changes["remove_eval_dropout"] == {"removed": 4}
    assert all(isinstance(r, PassResult) for _, r in done)
    # running the pipeline again finds nothing left to do
    again = PassManager(CLEANUP_PIPELINE)(gm)
    assert not again.modified and not any(r.modified for _, r in again.history)


class _AddsUnstampedNode(GraphPass):
    name = "adds_unstamped_node"

    def call(self, gm: fx.GraphModule) -> PassResult:
        out = next(n for n in gm.graph.nodes if n.op == "output")
        with gm.graph.inserting_before(out):
            gm.graph.call_function(torch.ops.aten.relu.default, (out.args[0][0],))
        return PassResult(gm, True)


class _AddsStampedNode(_AddsUnstampedNode):
    name = "adds_stamped_node"

    def call(self, gm: fx.GraphModule) -> PassResult:
        out = next(n for n in gm.graph.nodes if n.op == "output")
        with gm.graph.inserting_before(out):
            stamp(gm.graph.call_function(torch.ops.aten.relu.default, (out.args[0][0],)), self.name)
        return PassResult(gm, True)


class _Breaks(GraphPass):
    name = "breaks"

    def call(self, gm: fx.GraphModule) -> PassResult:
        raise RuntimeError("boom")


def _small_gm():
    from harmonica_compile.capture import capture

    return capture(tiny_reference_dit(depth=1), ref_inputs()).graph_module


def test_node_without_provenance_is_caught():
    with pytest.raises(PassError, match="adds_unstamped_node: node 'relu_default' .* without provenance"):
        _AddsUnstampedNode()(_small_gm())
    gm = _AddsStampedNode()(_small_gm()).graph_module
    relu = next(n for n in gm.graph.nodes if n.name == "relu_default")
    assert relu.meta["harmonica"] == {"pass": "adds_stamped_node", "site": None, "branch": None}


def test_failures_name_the_pass_and_the_passes_before_it():
    with pytest.raises(
        PassError, match=r"error in pass breaks after passes \['adds_stamped_node'\]: RuntimeError: boom"
    ):
        PassManager([_AddsStampedNode(), _Breaks()])(_small_gm())


def test_lint_failure_is_a_pass_error():
    class _Dangling(GraphPass):
        name = "dangling"

        def call(self, gm):
            calls = [n for n in gm.graph.nodes if n.op == "call_function"]
            calls[0].args = (calls[-1], *calls[0].args[1:])  # used before it is defined
            return PassResult(gm, True)

    with pytest.raises(PassError, match="dangling: the graph fails Graph.lint"):
        _Dangling()(_small_gm())


def test_dump_before_and_after_a_named_pass(tmp_path, monkeypatch):
    gm = _raw_export(tiny_reference_dit(depth=1), ref_inputs())
    PassManager(
        CLEANUP_PIPELINE, dump_before=["remove_assertions"], dump_after=["eliminate_dead_code"], dump_dir=tmp_path
    )(gm)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["01-before-remove_assertions.txt", "04-after-eliminate_dead_code.txt"]
    assert "_assert_tensor_metadata" in (tmp_path / files[0]).read_text()
    assert "_assert_tensor_metadata" not in (tmp_path / files[1]).read_text()
    # the same through the environment
    monkeypatch.setenv("HARMONICA_DUMP", "after:remove_guards")
    monkeypatch.setenv("HARMONICA_DUMP_DIR", str(tmp_path / "env"))
    PassManager(CLEANUP_PIPELINE)(_raw_export(tiny_reference_dit(depth=1), ref_inputs()))
    assert [p.name for p in (tmp_path / "env").iterdir()] == ["00-after-remove_guards.txt"]


def test_pipeline_is_printable():
    text = describe_pipeline()
    for name in [
        "remove_guards",
        "remove_assertions",
        "remove_eval_dropout",
        "hoist_symbolic_sizes",
        "eliminate_dead_code",
        "find_cache_sites",
        "insert_cache_branches",
        "specialize",
    ]:
        assert name in text


class _NeedsInputNames(GraphPass):
    name = "needs_input_names"

    def requires(self, gm):
        if "harmonica_input_names" not in gm.meta:
            raise PassError(f"{self.name}: needs a flattened graph")

    def call(self, gm):
        return PassResult(gm, False)


def test_preconditions_run_before_the_pass():
    with pytest.raises(PassError, match="needs_input_names: needs a flattened graph"):
        PassManager([_NeedsInputNames()])(_raw_export(tiny_reference_dit(depth=1), ref_inputs()))


def test_pipelines_nest_and_report_every_pass():
    inner = PassManager(CLEANUP_PIPELINE[:2], name="first_two")
    outer = PassManager([inner, *CLEANUP_PIPELINE[2:]])
    assert outer.pass_names() == [p.name for p in CLEANUP_PIPELINE]
    result = outer(_raw_export(tiny_reference_dit(depth=1), ref_inputs()))
    assert [name for name, _ in result.history] == [p.name for p in CLEANUP_PIPELINE]
    assert result.modified and result.changes["remove_guards"] == {"removed": 1}
    assert "2. remove_assertions" in outer.describe()


def test_dumps_must_name_a_pass_of_the_pipeline():
    from harmonica_compile.errors import ConfigError

    with pytest.raises(ConfigError, match=r"no pass named \['remove_gards'\] in the pipeline"):
        PassManager(CLEANUP_PIPELINE, dump_after=["remove_gards"])
