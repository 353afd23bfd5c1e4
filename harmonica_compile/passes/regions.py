"""Graph-region helpers for finding sites: which module computed a node (torch.export's
``nn_module_stack``), which nodes a module's region holds, and whether a value reaches a residual
add (through a gate).
"""

from __future__ import annotations

import torch
from torch import fx

__all__ = [
    "block_lists",
    "children",
    "in_module",
    "is_tensor_value",
    "module_table",
    "op_name",
    "reaches_residual",
    "sample_paths",
    "shape_of",
    "short_class",
]

# Ops through which a sub-layer's output may pass on its way to the residual add.
PASS_THROUGH = {
    "mul",
    "div",
    "view",
    "reshape",
    "unsqueeze",
    "squeeze",
    "to",
    "_to_copy",
    "clone",
    "contiguous",
    "getitem",
    "transpose",
    "permute",
    "flatten",
    "expand",
    "type_as",
    "alias",
    "slice",
    "select",
}


def short_class(qualname: str) -> str:
    return qualname.rsplit(".", 1)[-1]


def module_table(graph: fx.Graph) -> dict[str, tuple[str, list[str]]]:
    """Module path -> (class qualname, call keys), in order of first use, from nn_module_stack."""
    table: dict[str, tuple[str, list[str]]] = {}
    for node in graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        for key, value in stack.items():
            path, cls = value[0], value[1]
            if path.startswith("_empty_nn_module_stack"):  # export's marker for "no module"
                continue
            cls_name = cls if isinstance(cls, str) else getattr(cls, "__qualname__", str(cls))
            if path not in table:
                table[path] = (cls_name, [key])
            elif key not in table[path][1]:
                table[path][1].append(key)
    return table


def op_name(node: fx.Node) -> str:
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        return target._schema.name.split("::")[-1]
    return getattr(target, "__name__", str(target))


def reaches_residual(node: fx.Node, region: set[str], depth: int = 6) -> tuple[bool, bool]:
    """Whether ``node`` flows into an ``add`` through pass-through ops, and whether a ``mul`` (the
    gate) is on that path."""
    frontier = [(node, False)]
    for _ in range(depth):
        nxt = []
        for n, gated in frontier:
            for user in n.users:
                if user.op != "call_function" or user.name in region:
                    continue
                name = op_name(user)
                if name in ("add", "add_", "sub"):
                    return True, gated
                if name in PASS_THROUGH:
                    nxt.append((user, gated or name == "mul"))
        frontier = nxt
    return False, False


def is_tensor_value(node: fx.Node) -> bool:
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        return True
    return isinstance(val, list | tuple) and bool(val) and all(isinstance(v, torch.Tensor) for v in val)


def in_module(node: fx.Node, path: str) -> bool:
    """Whether ``node`` computes a tensor inside module ``path``. Symbolic-size arithmetic is left
    out: it depends on input shapes only and is shared between modules."""
    if node.op != "call_function" or not is_tensor_value(node):
        return False
    stack = node.meta.get("nn_module_stack") or {}
    return any(v[0] == path for v in stack.values())


def shape_of(node: fx.Node) -> tuple[tuple[int, ...], str]:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        return (), "unknown"
    dims = []
    for i, d in enumerate(val.shape):
        dims.append(int(d) if isinstance(d, int) else -1 if i == 0 else -2)
    return tuple(dims), str(val.dtype).replace("torch.", "")


def block_lists(table: dict[str, tuple[str, list[str]]]) -> dict[str, list[str]]:
    """Module lists of blocks: parent path -> block paths (``blocks`` -> ``blocks.0``, ...)."""
    lists: dict[str, list[str]] = {}
    for path in table:
        parent, _, last = path.rpartition(".")
        if last.isdigit():
            lists.setdefault(parent, []).append(path)
    # Sequential containers of leaf layers (``adaLN_modulation.1``) are not block lists.
    return {k: v for k, v in lists.items() if children(table, v[0])}


def children(table: dict[str, tuple[str, list[str]]], block: str) -> list[tuple[str, str]]:
    prefix = block + "."
    return [
        (path[len(prefix) :], cls)
        for path, (cls, _) in table.items()
        if path.startswith(prefix) and "." not in path[len(prefix) :]
    ]


def sample_paths(table: dict[str, tuple[str, list[str]]]) -> str:
    lists = block_lists(table)
    if lists:
        first = next(iter(lists.values()))[0]
        paths = [first] + [f"{first}.{name}" for name, _ in children(table, first)]
    else:
        paths = [p for p in table if p]
    return ", ".join(paths[:6]) + (", ..." if len(paths) > 6 else "")
