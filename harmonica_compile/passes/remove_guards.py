"""RemoveGuards: drop the ``_guards_fn`` call that ``ExportedProgram.module()`` inserts.

The guard re-checks input shapes on every call and, being a module call, is impure to FX. We check
inputs ourselves (``CapturedModel.flatten_inputs``) with errors that name the input.
"""

from __future__ import annotations

from torch import fx

from .infra import GraphPass, PassResult

__all__ = ["RemoveGuards"]


class RemoveGuards(GraphPass):
    """Remove export's input-guard module calls."""

    name = "remove_guards"

    def call(self, gm: fx.GraphModule) -> PassResult:
        removed = 0
        for node in list(gm.graph.nodes):
            if node.op == "call_module" and str(node.target).startswith("_guards"):
                if node.users:
                    continue
                gm.graph.erase_node(node)
                if hasattr(gm, str(node.target)):
                    delattr(gm, str(node.target))
                removed += 1
        if removed:
            gm.recompile()
        return PassResult(gm, removed > 0, {"removed": removed})

    def ensures(self, gm: fx.GraphModule) -> None:
        from ..errors import PassError

        for node in gm.graph.nodes:
            if node.op == "call_module" and str(node.target).startswith("_guards"):
                raise PassError(f"{self.name}: guard '{node.name}' is still used by {list(node.users)}")
