"""RemoveEvalDropout: replace dropout that cannot drop (eval mode, or p == 0) by its input.

Dropout ops carry the ``nondeterministic_seeded`` tag, so FX considers them impure and never
eliminates them, even when ``train=False`` makes them the identity.
"""

from __future__ import annotations

import torch
from torch import fx

from ..errors import PassError
from .infra import GraphPass, PassResult

__all__ = ["RemoveEvalDropout"]

_DROPOUTS = {
    torch.ops.aten.dropout.default,
    torch.ops.aten.feature_dropout.default,
    torch.ops.aten.alpha_dropout.default,
    torch.ops.aten.feature_alpha_dropout.default,
}


def _inactive(node: fx.Node) -> bool:
    p = node.args[1] if len(node.args) > 1 else node.kwargs.get("p", 0.5)
    train = node.args[2] if len(node.args) > 2 else node.kwargs.get("train", True)
    return (train is False) or (isinstance(p, int | float) and p == 0)


class RemoveEvalDropout(GraphPass):
    """Replace inactive dropout by the identity."""

    name = "remove_eval_dropout"

    def call(self, gm: fx.GraphModule) -> PassResult:
        removed = 0
        for node in list(gm.graph.nodes):
            if node.op == "call_function" and node.target in _DROPOUTS and _inactive(node):
                node.replace_all_uses_with(node.args[0])
                gm.graph.erase_node(node)
                removed += 1
        if removed:
            gm.recompile()
        return PassResult(gm, removed > 0, {"removed": removed})

    def ensures(self, gm: fx.GraphModule) -> None:
        for node in gm.graph.nodes:
            if node.op == "call_function" and node.target in _DROPOUTS and _inactive(node):
                raise PassError(f"{self.name}: inactive dropout '{node.name}' remains")
