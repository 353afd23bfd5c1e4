"""LowerPrecision: run a step graph's token matmuls in bf16 or fp16, everything else in fp32.

Mixed precision as a graph rewrite, the way autocast does it at run time but decided once per
graph and visible in it. Lowered (operands cast to ``dtype``, the result cast back to fp32):

- ``linear`` and convolutions whose activation holds tokens or pixels (rank 3 or more), with a
  ``dtype`` copy of their weight and bias made once and shared by every graph given the same
  ``weights`` table (so 16 step graphs hold one low-precision copy, not 16);
- ``scaled_dot_product_attention`` (its softmax runs inside the kernel, which accumulates in fp32
  on CUDA), ``matmul`` and ``bmm`` between token tensors.

Kept in fp32: every other op, so layer/group/RMS norms, explicit softmax, GELU, the gated residual
adds; and the linears on rank-2 conditioning vectors ``[batch, channels]``: the timestep and label
embedders and the adaLN modulation, whose shift/scale/gate multiply every token. The graph's
inputs, outputs and caches stay fp32 (a cached site's value is its lowered op's result cast back,
so a cache holds values that bf16 represents exactly, stored in fp32).

Every node the pass makes is stamped ``branch="precision"`` with the site of the value it lowers
(when that value is a site's output). Post-condition: no low-precision value escapes its op (each
lowered op's only user is its cast back to fp32) and no candidate op is left in fp32.

Example (a 1-block DiT: patch embedding, qkv, attention, projection, two MLP linears and the
output linear lowered; the timestep MLP, the block's and the final layer's adaLN kept fp32):
    >>> import torch
    >>> from harmonica_compile import prepare
    >>> from harmonica_compile.models import DiT_models
    >>> m = DiT_models["DiT-S/8"](input_size=16, num_classes=10)
    >>> m.blocks = m.blocks[:1]
    >>> cm = prepare(m, (torch.randn(2, 4, 16, 16), torch.tensor([1, 1]), torch.tensor([0, 1])))
    >>> gm = cm.specialize([True, True])
    >>> result = LowerPrecision(torch.bfloat16)(gm)
    >>> result.changes["lowered"], result.changes["kept_fp32"]
    (7, 4)
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any

import torch
from torch import fx, nn

from ..errors import ConfigError, PassError
from ..names import COMPUTE_DTYPE, LOWERED_FROM, PROVENANCE, SITE_OUTPUT
from .infra import GraphPass, PassResult, stamp

__all__ = ["LOW_PRECISION_DTYPES", "LowerPrecision", "WeightTable", "resolve_dtype"]

aten = torch.ops.aten

#: The dtypes ``dtype=`` accepts, by every name a user may type.
LOW_PRECISION_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
}

#: Ops with a weight (argument 1) and an optional bias (argument 2): lowered with shared copies.
_WEIGHTED = {
    aten.linear.default,
    aten.conv1d.default,
    aten.conv2d.default,
    aten.conv3d.default,
    aten.convolution.default,
}
#: Ops between activations: every floating tensor operand is cast.
_ACTIVATION = {aten.scaled_dot_product_attention.default, aten.matmul.default, aten.bmm.default}

#: ``(id(weight), dtype) -> (weight, low-precision copy)``; the weight is held so its id stays unique.
WeightTable = dict[tuple[int, torch.dtype], tuple[torch.Tensor, nn.Parameter]]


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """``"bf16"``, ``torch.bfloat16``, ... to a torch dtype; ``None`` is fp32."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype in LOW_PRECISION_DTYPES.values():
            return dtype
    elif dtype.lower() in LOW_PRECISION_DTYPES:
        return LOW_PRECISION_DTYPES[dtype.lower()]
    raise ConfigError(
        f"dtype {dtype!r} is not supported; expected one of {sorted(set(LOW_PRECISION_DTYPES))} "
        "(bf16 and fp16 run the token matmuls in that dtype, the rest stays fp32)"
    )


def _val(arg: Any) -> torch.Tensor | None:
    value = arg.meta.get("val") if isinstance(arg, fx.Node) else None
    return value if isinstance(value, torch.Tensor) else None


def is_candidate(node: fx.Node) -> bool:
    """Whether ``node`` is an op this pass lowers: a matmul-class op over fp32 token tensors."""
    if node.op != "call_function" or node.target not in _WEIGHTED | _ACTIVATION:
        return False
    x = _val(node.args[0]) if node.args else None
    return x is not None and x.dtype == torch.float32 and x.dim() >= 3


class LowerPrecision(GraphPass):
    """Token matmuls (linear, convolution, attention) in bf16/fp16; norms, softmax, adaLN in fp32."""

    name = "lower_precision"
    preserves_computation = False  # rounds operands to dtype; the test suite bounds the error per op

    def __init__(self, dtype: str | torch.dtype, weights: WeightTable | None = None):
        self.dtype = resolve_dtype(dtype)
        if self.dtype == torch.float32:
            raise ConfigError("LowerPrecision needs bf16 or fp16; fp32 graphs need no pass")
        #: Low-precision copies of weights, shared by every graph lowered with the same table.
        self.weights: WeightTable = {} if weights is None else weights

    def _made(self, node: fx.Node, site: str | None) -> fx.Node:
        return stamp(node, self.name, site, "precision")

    def _low_weight(self, gm: fx.GraphModule, node: fx.Node, site: str | None) -> fx.Node:
        """A ``get_attr`` of the shared ``dtype`` copy of the weight ``node`` reads."""
        if node.op != "get_attr":  # a computed weight: cast it in the graph
            return self._made(self._graph.call_function(aten.to.dtype, (node, self.dtype)), site)
        tensor = attrgetter(str(node.target))(gm)
        key = (id(tensor), self.dtype)
        if key not in self.weights:
            self.weights[key] = (tensor, nn.Parameter(tensor.detach().to(self.dtype), requires_grad=False))
        attr = f"{str(node.target).replace('.', '_')}__{str(self.dtype).removeprefix('torch.')}"
        if not hasattr(gm, attr):
            gm.register_parameter(attr, self.weights[key][1])
        read = self._made(self._graph.get_attr(attr), site)
        read.meta[LOWERED_FROM] = str(node.target)
        return read

    def call(self, gm: fx.GraphModule) -> PassResult:
        self._graph = graph = gm.graph
        lowered, kept = 0, 0
        for node in list(graph.nodes):
            if node.op != "call_function" or node.target not in _WEIGHTED | _ACTIVATION:
                continue
            if not is_candidate(node):
                kept += 1
                continue
            site_tag = node.meta.get(SITE_OUTPUT)
            site = site_tag[0] if site_tag else None
            with graph.inserting_before(node):
                args = list(node.args)
                for i, arg in enumerate(args):
                    if node.target in _WEIGHTED and i in (1, 2) and isinstance(arg, fx.Node):
                        args[i] = self._low_weight(gm, arg, site)
                    elif (value := _val(arg)) is not None and value.is_floating_point():
                        args[i] = self._made(graph.call_function(aten.to.dtype, (arg, self.dtype)), site)
                low = self._made(graph.call_function(node.target, tuple(args), dict(node.kwargs)), site)
                back = self._made(graph.call_function(aten.to.dtype, (low, torch.float32)), site)
            back.meta.update({k: v for k, v in node.meta.items() if k != PROVENANCE})  # val, site tag, module stack
            node.replace_all_uses_with(back)
            graph.erase_node(node)
            lowered += 1
        for node in list(graph.nodes):  # the fp32 weights the lowered ops no longer read
            if node.op == "get_attr" and not node.users:
                graph.erase_node(node)
        if lowered:
            gm.meta[COMPUTE_DTYPE] = str(self.dtype).removeprefix("torch.")
            gm.recompile()
        return PassResult(gm, lowered > 0, {"lowered": lowered, "kept_fp32": kept, "dtype": str(self.dtype)})

    def ensures(self, gm: fx.GraphModule) -> None:
        for node in gm.graph.nodes:
            if is_candidate(node):
                raise PassError(f"{self.name}: '{node.name}' ({node.target}) still runs on fp32 tokens")
            made = node.meta.get(PROVENANCE, {}).get("pass") == self.name
            if made and node.op == "call_function" and node.target in _WEIGHTED | _ACTIVATION:
                users = list(node.users)
                if len(users) != 1 or users[0].target is not aten.to.dtype or users[0].args[1] != torch.float32:
                    raise PassError(
                        f"{self.name}: the {self.dtype} result of '{node.name}' reaches {[u.name for u in users]} "
                        "instead of one cast back to fp32"
                    )
