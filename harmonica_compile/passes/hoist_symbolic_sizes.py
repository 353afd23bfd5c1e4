"""HoistSymbolicSizes: read every symbolic size from a graph input, never from an inner tensor.

``aten.sym_size.int(inner, 0)`` keeps ``inner`` alive: if ``inner`` belongs to a site, caching the
site could not remove it. torch.export usually reads sizes from the inputs already; this pass makes
it an invariant. A size that equals a dimension of an input (same symbol) is rewritten to read that
input; a size that is a known constant is replaced by the constant.
"""

from __future__ import annotations

import torch
from torch import fx

from .infra import GraphPass, PassResult

__all__ = ["HoistSymbolicSizes"]

_SYM_SIZE = torch.ops.aten.sym_size.int


def _symbol_key(value: object) -> str | None:
    node = getattr(value, "node", None)
    return None if node is None else str(node.expr)


class HoistSymbolicSizes(GraphPass):
    """Make every ``sym_size`` read a graph input."""

    name = "hoist_symbolic_sizes"

    def call(self, gm: fx.GraphModule) -> PassResult:
        sources: dict[str, tuple[fx.Node, int]] = {}
        for node in gm.graph.nodes:
            if node.op != "placeholder":
                continue
            val = node.meta.get("val")
            if isinstance(val, torch.Tensor):
                for dim, size in enumerate(val.shape):
                    key = _symbol_key(size)
                    if key is not None:
                        sources.setdefault(key, (node, dim))
        rewritten = folded = left = 0
        for node in list(gm.graph.nodes):
            if node.op != "call_function" or node.target is not _SYM_SIZE:
                continue
            src = node.args[0]
            if isinstance(src, fx.Node) and src.op == "placeholder":
                continue
            val = node.meta.get("val")
            if isinstance(val, int):
                node.replace_all_uses_with(val)  # type: ignore[arg-type]
                gm.graph.erase_node(node)
                folded += 1
                continue
            key = _symbol_key(val)
            if key in sources:
                ph, dim = sources[key]
                node.args = (ph, dim)
                rewritten += 1
            else:
                left += 1  # a derived size; it keeps its tensor alive, which costs memory, not correctness
        if rewritten or folded:
            gm.recompile()
        return PassResult(gm, bool(rewritten or folded), {"rewritten": rewritten, "folded": folded, "left": left})
