"""EliminateDeadCode: FX dead-code elimination that knows which "impure" ops are in fact pure.

``scaled_dot_product_attention`` is tagged ``nondeterministic_seeded`` (it can apply dropout), so
plain ``Graph.eliminate_dead_code()`` keeps every attention alive. With ``dropout_p == 0`` it is a
pure function and is removed like any other dead node.
"""

from __future__ import annotations

import torch
from torch import fx

from .infra import GraphPass, PassResult

__all__ = ["EliminateDeadCode", "eliminate_dead_code", "is_impure"]

_SDPA = {torch.ops.aten.scaled_dot_product_attention.default}


def is_impure(node: fx.Node) -> bool:
    if node.op == "call_function" and node.target in _SDPA:
        # scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, ...)
        p = node.args[4] if len(node.args) > 4 else node.kwargs.get("dropout_p", 0.0)
        return not (isinstance(p, int | float) and p == 0)
    return node.is_impure()


def eliminate_dead_code(gm: fx.GraphModule) -> int:
    """Remove dead nodes (and unused weights); return how many nodes went."""
    before = len(gm.graph.nodes)
    gm.graph.eliminate_dead_code(is_impure_node=is_impure)
    removed = before - len(gm.graph.nodes)
    if removed:
        gm.recompile()
    return removed


class EliminateDeadCode(GraphPass):
    """Remove nodes whose values nobody uses."""

    name = "eliminate_dead_code"

    def call(self, gm: fx.GraphModule) -> PassResult:
        removed = eliminate_dead_code(gm)
        return PassResult(gm, removed > 0, {"removed": removed})
