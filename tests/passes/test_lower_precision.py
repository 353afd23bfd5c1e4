"""LowerPrecision: which ops run in bf16/fp16, which stay fp32, and each lowered op's error.

The pass changes numerics on purpose, so it is not among the passes checked equal to eager.
Instead: (1) at run time every lowered op reads ``dtype`` operands and every norm, softmax,
activation and conditioning linear reads fp32 ones; (2) each lowered op's result is within the
bound its own arithmetic allows of the same op in float64 on the operands it should have read
(the fp32 values and weights it replaced, rounded to ``dtype``), so a wrong weight, a missed
cast or an accumulation in ``dtype`` fails; (3) the copies of the weights are made once and
shared by every graph lowered with the same table.
"""

from __future__ import annotations

import math
from operator import attrgetter

import pytest
import torch
import torch.nn.functional as F
from helpers import diffusers_dit_inputs, ref_inputs, tiny_diffusers_dit, tiny_reference_dit
from torch import fx

import harmonica_compile as hc
from harmonica_compile.errors import ConfigError, PassError
from harmonica_compile.names import COMPUTE_DTYPE, LOWERED_FROM, PROVENANCE
from harmonica_compile.passes.lower_precision import LowerPrecision, resolve_dtype

aten = torch.ops.aten
LOWERED = {aten.linear.default, aten.conv2d.default, aten.scaled_dot_product_attention.default}
KEPT_FP32 = {aten.layer_norm.default, aten.native_layer_norm.default, aten.group_norm.default, aten.silu.default}
KEPT_FP32 |= {aten.gelu.default, aten._softmax.default, aten.softmax.int}
#: Unit roundoff (half the gap from 1 to the next number) of each dtype, and of fp32 accumulation.
UNIT = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
U32 = 2.0**-24


def _model(which):
    if which == "reference-dit":
        return tiny_reference_dit(), ref_inputs()
    return tiny_diffusers_dit(), diffusers_dit_inputs()


def _lowered(which, dtype, table=None):
    model, inputs = _model(which)
    cm = hc.prepare(model, inputs)
    flat = list(cm.captured.example_inputs)
    gm = cm.specialize([True] * cm.num_sites)
    result = LowerPrecision(dtype, table)(gm)
    return cm, result, flat


class _Record(fx.Interpreter):
    """Runs the graph and keeps every node's value (small models: a few MB)."""

    def run_node(self, n):
        out = super().run_node(n)
        self.values[n] = out
        return out

    def __init__(self, gm):
        super().__init__(gm)
        self.values = {}


def _is_lowered_op(node):
    return (
        node.op == "call_function"
        and node.meta.get(PROVENANCE, {}).get("pass") == "lower_precision"
        and (node.target in LOWERED)
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("which", ["reference-dit", "diffusers-dit"])
def test_token_matmuls_run_low_the_rest_fp32(which, dtype):
    _, result, flat = _lowered(which, dtype)
    gm = result.graph_module
    assert gm.meta[COMPUTE_DTYPE] == str(dtype).removeprefix("torch.")
    rec = _Record(gm)
    with torch.no_grad():
        outs = rec.run(*flat)
    assert all(o.dtype == torch.float32 for o in outs), "graph outputs and caches stay fp32"
    lowered = kept_linear = 0
    for node in rec.values:
        if node.op != "call_function":
            continue
        operands = [rec.values[a] for a in node.args if isinstance(a, fx.Node)]
        tensors = [v for v in operands if isinstance(v, torch.Tensor) and v.is_floating_point()]
        if _is_lowered_op(node):
            lowered += 1
            assert tensors and all(v.dtype == dtype for v in tensors), node.name
        elif node.target in KEPT_FP32:
            assert tensors[0].dtype == torch.float32, f"{node.name} ({node.target}) must read fp32"
        elif node.target is aten.linear.default:  # left alone: the conditioning path [batch, channels]
            kept_linear += 1
            assert tensors[0].dim() == 2 and all(v.dtype == torch.float32 for v in tensors), node.name
    assert lowered == result.changes["lowered"] > 0
    assert kept_linear == result.changes["kept_fp32"] > 0, "timestep/label embedders and adaLN stay fp32"


def _bound(node, rec, gm, dtype):
    """The op in float64 on the operands it should read (fp32 sources rounded to ``dtype``), and
    the bound on the kernel's own error against it: accumulation in fp32 over the K products of
    each output, ``K * u32 * (|a| @ |b|)``, plus the rounding of the result to ``dtype``,
    ``u * |ref|`` (first order; the second-order terms are covered by the factor ``1 + 4u``).
    For attention, with S = q k^T * scale and P = softmax(S): an error dS in the scores moves
    each row of P by at most ``2 max|dS|`` in sum, and rounding P for the second matmul adds
    ``u P``; so the bound is ``(2 max_j dS_ij + u + N u32) * (P |v|) + u |ref|``, dS from fp32
    accumulation ``d u32 * scale * (|q| |k|^T)``."""
    u = UNIT[dtype]

    def source(arg):
        """What the lowered op should read for ``arg``: the fp32 value or weight it replaced, rounded."""
        if arg.op == "get_attr":
            return attrgetter(arg.meta[LOWERED_FROM])(gm).to(dtype).double()
        assert arg.target is aten.to.dtype and arg.args[1] == dtype, f"{node.name} reads {arg.name} uncast"
        fp32 = rec.values[arg.args[0]]
        assert fp32.dtype == torch.float32
        return fp32.to(dtype).double()

    args = [source(a) if isinstance(a, fx.Node) else a for a in node.args]
    if node.target is aten.scaled_dot_product_attention.default:
        q, k, v = args[:3]
        d, n = q.shape[-1], k.shape[-2]
        scale = node.kwargs.get("scale") or 1 / math.sqrt(d)
        p = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1)
        ref = p @ v
        ds = d * U32 * scale * (q.abs() @ k.abs().transpose(-1, -2))
        bound = (2 * ds.amax(-1, keepdim=True) + u + n * U32) * (p @ v.abs()) + u * ref.abs()
        return ref, bound * (1 + 4 * u)
    x, w = args[0], args[1]
    b = args[2] if len(args) > 2 and isinstance(args[2], torch.Tensor) else None
    if node.target is aten.linear.default:
        ref, mag, fan_in = F.linear(x, w, b), F.linear(x.abs(), w.abs()), w.shape[1]
    else:  # convolution: same stride, padding, dilation, groups
        rest = args[3:]
        ref, mag = F.conv2d(x, w, b, *rest), F.conv2d(x.abs(), w.abs(), None, *rest)
        fan_in = math.prod(w.shape[1:])
    if b is not None:  # the bias joins every output's sum (per channel: dimension 1 of a convolution)
        mag = mag + (b.abs() if node.target is aten.linear.default else b.abs().view(-1, *[1] * (ref.dim() - 2)))
    return ref, ((fan_in + 1) * U32 * mag + u * ref.abs()) * (1 + 4 * u)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("which", ["reference-dit", "diffusers-dit"])
def test_each_lowered_op_is_within_its_rounding_bound(which, dtype):
    """Every lowered op against float64 on its rounded fp32 sources (bound in ``_bound``)."""
    _, result, flat = _lowered(which, dtype)
    gm = result.graph_module
    rec = _Record(gm)
    with torch.no_grad():
        rec.run(*flat)
    checked = 0
    for node in gm.graph.nodes:
        if not _is_lowered_op(node):
            continue
        ref, bound = _bound(node, rec, gm, dtype)
        err = (rec.values[node].double() - ref).abs()
        assert (err <= bound).all(), f"{node.name}: error {float(err.max()):.3g} over its bound"
        checked += 1
    assert checked == result.changes["lowered"]


def test_weights_are_lowered_once_and_shared():
    table = {}
    model, inputs = _model("reference-dit")
    cm = hc.prepare(model, inputs)
    graphs = [cm.specialize(m) for m in ([True] * cm.num_sites, [True, False] * (cm.num_sites // 2))]
    lowered = [LowerPrecision(torch.bfloat16, table)(g).graph_module for g in graphs]
    reads = {n.meta[LOWERED_FROM] for n in lowered[0].graph.nodes if LOWERED_FROM in n.meta}
    assert len(table) == len(reads), "the second graph (a subset of the first) made no copy of its own"
    shared = [{n: p.data_ptr() for n, p in gm.named_parameters() if n.endswith("__bfloat16")} for gm in lowered]
    common = set(shared[0]) & set(shared[1])
    assert common and all(shared[0][n] == shared[1][n] for n in common), "one copy per weight, for every graph"
    assert all(low.dtype == torch.bfloat16 and not low.requires_grad for _, low in table.values())


def test_cached_model_dtype_runs_lowered_graphs_and_refuses_export(tmp_path):
    model = tiny_reference_dit()
    x, t, y = ref_inputs(2)
    cm = hc.prepare(model, (x, t, y))
    schedule = hc.CacheSchedule.fora(cm.site_names, 2, 2)
    fp32 = hc.optimize(cm, schedule=schedule)
    bf16 = hc.optimize(cm, schedule=schedule, dtype="bf16")
    assert bf16.dtype == torch.bfloat16 and "dtype=bfloat16" in repr(bf16)
    assert all(gm.meta.get(COMPUTE_DTYPE) == "bfloat16" for gm in bf16.graphs)
    assert bf16.flops(0) == fp32.flops(0), "the same work, in another dtype"
    with torch.no_grad():
        for tt in (999, 0):
            a = fp32(x, torch.full((2,), tt), y)
            b = bf16(x, torch.full((2,), tt), y)
            assert b.dtype == torch.float32 and torch.isfinite(b).all()
            assert not torch.equal(a, b), "the bf16 graph rounds: it must differ from fp32"

    from harmonica_compile.exporters.onnx import export_onnx
    from harmonica_compile.sampling.ddim import DDIMSampler

    with pytest.raises(hc.HarmonicaError, match="fp32 graphs"):
        export_onnx(bf16, tmp_path / "eng", model_name="m", sampler=DDIMSampler(2))


def test_bad_dtype_and_fp32_are_refused():
    with pytest.raises(ConfigError, match="not supported"):
        resolve_dtype("int8")
    with pytest.raises(ConfigError, match="needs bf16 or fp16"):
        LowerPrecision("fp32")
    assert resolve_dtype("BF16") is torch.bfloat16 and resolve_dtype(None) is torch.float32


def test_postcondition_catches_a_low_value_escaping():
    """A lowered op whose bf16 result reaches anything but its cast back fails the pass's check."""
    _, result, _ = _lowered("reference-dit", torch.bfloat16)
    gm = result.graph_module
    op = next(n for n in gm.graph.nodes if _is_lowered_op(n))
    with gm.graph.inserting_after(op):
        leak = gm.graph.call_function(aten.neg.default, (op,))
    leak.meta[PROVENANCE] = {"pass": "test", "site": None, "branch": None}
    with pytest.raises(PassError, match="instead of one cast back"):
        LowerPrecision(torch.bfloat16).ensures(gm)
