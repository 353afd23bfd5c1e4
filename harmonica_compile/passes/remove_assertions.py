"""RemoveAssertions: drop export's runtime assertion nodes.

``aten._assert_tensor_metadata``, ``aten._assert_scalar``, ``aten.sym_constrain_range*`` and
``aten._assert_async`` have no outputs anyone uses, but FX treats them as side effects, so they keep
otherwise dead branches alive: without this pass, caching a site removes almost nothing.
"""

from __future__ import annotations

import torch
from torch import fx

from ..errors import PassError
from .infra import GraphPass, PassResult

__all__ = ["RemoveAssertions", "is_assertion"]

_ASSERT_PREFIXES = ("_assert", "sym_constrain_range", "_functional_assert", "_functional_sym_constrain")


def is_assertion(node: fx.Node) -> bool:
    if node.op != "call_function":
        return False
    target = node.target
    if target is torch._assert:
        return True
    name = getattr(target, "__name__", "") or ""
    if isinstance(target, torch._ops.OpOverload):
        name = target._schema.name.split("::")[-1]
    return name.startswith(_ASSERT_PREFIXES)


class RemoveAssertions(GraphPass):
    """Remove runtime assertion and shape-constraint nodes."""

    name = "remove_assertions"

    def call(self, gm: fx.GraphModule) -> PassResult:
        removed = 0
        for node in list(gm.graph.nodes):
            if is_assertion(node) and not node.users:
                gm.graph.erase_node(node)
                removed += 1
        if removed:
            gm.recompile()
        return PassResult(gm, removed > 0, {"removed": removed})

    def ensures(self, gm: fx.GraphModule) -> None:
        for node in gm.graph.nodes:
            if is_assertion(node):
                raise PassError(f"{self.name}: assertion '{node.name}' remains (used by {list(node.users)})")
