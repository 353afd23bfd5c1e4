"""FindCacheSites: find the sub-layers whose output can be reused from an earlier step.

A *cache site* is a sub-layer (self-attention, cross-attention, MLP) of a transformer block whose
output enters the residual stream, usually through an adaLN gate: ``x = x + gate * f(...)``. Its
name is the module path of that sub-layer (``blocks.3.mlp``, ``transformer_blocks.0.attn1``).

Sites are found from the captured graph alone: torch.export records, for every node, the stack of
modules (path and class) it was computed in. Rules map module paths to site kinds:

- built-in rules for our reference DiT (``blocks.N.attn``, ``blocks.N.mlp``) and diffusers'
  ``BasicTransformerBlock`` (``transformer_blocks.N.attn1``, ``.attn2``, ``.ff``);
- a generic rule for any transformer whose blocks sit in a module list: every direct child of a
  block that is an attention or feed-forward module and whose output reaches a residual add;
- your own :class:`SiteRule` patterns, which replace the built-ins.

The pass changes no node: it tags each site's output nodes (``node.meta["harmonica_site"]``) and
returns the sites in execution order.

Example:
    >>> import torch
    >>> from harmonica_compile.capture import capture
    >>> from harmonica_compile.models import DiT_models
    >>> m = DiT_models["DiT-S/8"](input_size=16, num_classes=10)
    >>> m.blocks = m.blocks[:2]
    >>> cap = capture(m, (torch.randn(2, 4, 16, 16), torch.tensor([1, 1]), torch.tensor([0, 1])))
    >>> [s.name for s in find_sites(cap.graph_module)]
    ['blocks.0.attn', 'blocks.0.mlp', 'blocks.1.attn', 'blocks.1.mlp']
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx

from ..errors import SiteError
from .infra import SITE_OUTPUT, GraphPass, PassResult

__all__ = [
    "BUILTIN_RULES",
    "CacheSite",
    "FindCacheSites",
    "SiteRule",
    "find_sites",
]

KINDS = ("attention", "cross_attention", "mlp", "other")


@dataclass(frozen=True)
class SiteRule:
    """A site pattern: module paths matching ``pattern`` (a regular expression, full match) are
    sites of ``kind``. ``block_class`` restricts the rule to sub-layers of blocks whose class name
    is that (e.g. ``"DiTBlock"``).

    Example: ``SiteRule(r"layers\\.\\d+\\.(self_attn|mlp)", "attention")``.
    """

    pattern: str
    kind: str = "other"
    block_class: str | None = None

    def __post_init__(self) -> None:
        try:
            re.compile(self.pattern)
        except re.error as e:
            raise SiteError(f"SiteRule pattern {self.pattern!r} is not a valid regular expression: {e}") from e
        if self.kind not in KINDS:
            raise SiteError(f"SiteRule kind must be one of {KINDS}, got {self.kind!r}")


@dataclass(frozen=True)
class CacheSite:
    """One cache site of a captured graph. Node names refer to the captured graph."""

    name: str
    kind: str
    block: str
    module_class: str
    #: Nodes whose values leave the sub-layer (one per output tensor), in graph order.
    outputs: tuple[str, ...]
    #: Nodes from outside the sub-layer that it reads.
    inputs: tuple[str, ...]
    #: Every node computed inside the sub-layer.
    nodes: tuple[str, ...]
    #: Each output's shape, ``-1`` for the batch dimension, and dtype.
    shapes: tuple[tuple[int, ...], ...] = ()
    dtypes: tuple[str, ...] = ()
    #: Whether each output is multiplied by a gate before it joins the residual stream.
    gated: bool = False
    flops_hint: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def cache_names(self, prefix: str = "cache") -> list[str]:
        """Graph input (or output) names for this site: ``cache.<site>`` or ``cache.<site>.<i>``."""
        if self.num_outputs == 1:
            return [f"{prefix}.{self.name}"]
        return [f"{prefix}.{self.name}.{i}" for i in range(self.num_outputs)]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "block": self.block,
            "module_class": self.module_class,
            "num_outputs": self.num_outputs,
            "shapes": [list(s) for s in self.shapes],
            "dtypes": list(self.dtypes),
            "gated": self.gated,
        }


_REFERENCE_DIT = (
    SiteRule(r"(?:.*\.)?blocks\.\d+\.attn", "attention", block_class="DiTBlock"),
    SiteRule(r"(?:.*\.)?blocks\.\d+\.mlp", "mlp", block_class="DiTBlock"),
)
_BASIC_TRANSFORMER_BLOCK = (
    SiteRule(r"(?:.*\.)?transformer_blocks\.\d+\.attn1", "attention", block_class="BasicTransformerBlock"),
    SiteRule(r"(?:.*\.)?transformer_blocks\.\d+\.attn2", "cross_attention", block_class="BasicTransformerBlock"),
    SiteRule(r"(?:.*\.)?transformer_blocks\.\d+\.ff", "mlp", block_class="BasicTransformerBlock"),
)
#: Rule sets tried in order before the generic rule; the first that matches anything is used.
BUILTIN_RULES: dict[str, tuple[SiteRule, ...]] = {
    "reference-dit": _REFERENCE_DIT,
    "diffusers-basic-transformer-block": _BASIC_TRANSFORMER_BLOCK,
}

_ATTENTION_CLASS = re.compile(r"attention|attn", re.IGNORECASE)
_MLP_CLASS = re.compile(r"(FeedForward|Mlp|MLP|FFN|FeedForwardNetwork)", re.IGNORECASE)
_MLP_NAMES = {"ff", "mlp", "ff_context", "feed_forward", "ffn", "ff_context_mlp"}
_CROSS_NAMES = {"attn2", "cross_attn", "cross_attention", "encoder_attn"}
# Ops through which a sub-layer's output may pass on its way to the residual add.
_PASS_THROUGH = {
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


def _short_class(qualname: str) -> str:
    return qualname.rsplit(".", 1)[-1]


def _module_table(graph: fx.Graph) -> dict[str, tuple[str, list[str]]]:
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


def _op_name(node: fx.Node) -> str:
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        return target._schema.name.split("::")[-1]
    return getattr(target, "__name__", str(target))


def _reaches_residual(node: fx.Node, region: set[str], depth: int = 6) -> tuple[bool, bool]:
    """Whether ``node`` flows into an ``add`` through pass-through ops, and whether a ``mul`` (the
    gate) is on that path."""
    frontier = [(node, False)]
    for _ in range(depth):
        nxt = []
        for n, gated in frontier:
            for user in n.users:
                if user.op != "call_function" or user.name in region:
                    continue
                name = _op_name(user)
                if name in ("add", "add_", "sub"):
                    return True, gated
                if name in _PASS_THROUGH:
                    nxt.append((user, gated or name == "mul"))
        frontier = nxt
    return False, False


def _is_tensor_value(node: fx.Node) -> bool:
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        return True
    return isinstance(val, list | tuple) and bool(val) and all(isinstance(v, torch.Tensor) for v in val)


def _in_module(node: fx.Node, path: str) -> bool:
    """Whether ``node`` computes a tensor inside module ``path``. Symbolic-size arithmetic is left
    out: it depends on input shapes only and is shared between modules."""
    if node.op != "call_function" or not _is_tensor_value(node):
        return False
    stack = node.meta.get("nn_module_stack") or {}
    return any(v[0] == path for v in stack.values())


def _shape_of(node: fx.Node) -> tuple[tuple[int, ...], str]:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        return (), "unknown"
    dims = []
    for i, d in enumerate(val.shape):
        dims.append(int(d) if isinstance(d, int) else -1 if i == 0 else -2)
    return tuple(dims), str(val.dtype).replace("torch.", "")


def _build_site(graph: fx.Graph, path: str, kind: str, cls: str, calls: list[str]) -> CacheSite:
    if len(calls) > 1:
        raise SiteError(
            f"FindCacheSites: '{path}' ({_short_class(cls)}) is called {len(calls)} times in one forward; "
            "a site must run once per step. Exclude it with site_rules=..."
        )
    region = [n for n in graph.nodes if _in_module(n, path)]
    if not region:
        raise SiteError(f"FindCacheSites: '{path}' computes nothing in the captured graph")
    names = {n.name for n in region}
    outputs = [n for n in region if any(u.name not in names for u in n.users)]
    for n in outputs:
        if not isinstance(n.meta.get("val"), torch.Tensor):
            raise SiteError(
                f"FindCacheSites: site '{path}' hands a non-tensor value ('{n.name}', {_op_name(n)}) to the rest "
                "of the model; only tensor outputs can be cached"
            )
    if not outputs:
        raise SiteError(f"FindCacheSites: site '{path}' has no output used outside it")
    inputs: list[str] = []
    for n in region:
        for a in n.all_input_nodes:
            if a.name not in names and a.op != "get_attr" and a.name not in inputs:
                inputs.append(a.name)
    gated = all(_reaches_residual(o, names)[1] for o in outputs)
    shapes, dtypes = zip(*(_shape_of(o) for o in outputs), strict=True)
    block = path.rsplit(".", 1)[0] if "." in path else ""
    return CacheSite(
        name=path,
        kind=kind,
        block=block,
        module_class=cls,
        outputs=tuple(o.name for o in outputs),
        inputs=tuple(inputs),
        nodes=tuple(n.name for n in region),
        shapes=tuple(shapes),
        dtypes=tuple(dtypes),
        gated=gated,
    )


def _match_rules(table: dict[str, tuple[str, list[str]]], rules: Sequence[SiteRule]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for path, (_cls, _calls) in table.items():
        for rule in rules:
            if not re.fullmatch(rule.pattern, path):
                continue
            if rule.block_class is not None:
                parent = path.rsplit(".", 1)[0] if "." in path else ""
                parent_cls = table.get(parent, ("", []))[0]
                if _short_class(parent_cls) != rule.block_class:
                    continue
            found.append((path, rule.kind))
            break
    return found


def _block_lists(table: dict[str, tuple[str, list[str]]]) -> dict[str, list[str]]:
    """Module lists of blocks: parent path -> block paths (``blocks`` -> ``blocks.0``, ...)."""
    lists: dict[str, list[str]] = {}
    for path in table:
        parent, _, last = path.rpartition(".")
        if last.isdigit():
            lists.setdefault(parent, []).append(path)
    # Sequential containers of leaf layers (``adaLN_modulation.1``) are not block lists.
    return {k: v for k, v in lists.items() if _children(table, v[0])}


def _children(table: dict[str, tuple[str, list[str]]], block: str) -> list[tuple[str, str]]:
    prefix = block + "."
    return [
        (path[len(prefix) :], cls)
        for path, (cls, _) in table.items()
        if path.startswith(prefix) and "." not in path[len(prefix) :]
    ]


def _generic_candidates(
    graph: fx.Graph, table: dict[str, tuple[str, list[str]]]
) -> tuple[list[tuple[str, str]], list[str]]:
    found: list[tuple[str, str]] = []
    examined: list[str] = []
    for parent, blocks in _block_lists(table).items():
        block_cls = _short_class(table[blocks[0]][0])
        kids = _children(table, blocks[0])
        examined.append(
            f"'{parent or '<root>'}' ({len(blocks)} x {block_cls}: "
            + ", ".join(f"{n} {_short_class(c)}" for n, c in kids[:8])
            + (", ..." if len(kids) > 8 else "")
            + ")"
        )
        for block in blocks:
            for name, cls in _children(table, block):
                short = _short_class(cls)
                if "norm" in short.lower() or "processor" in short.lower() or "embed" in short.lower():
                    continue
                kind = None
                if _ATTENTION_CLASS.search(short):
                    kind = "cross_attention" if name in _CROSS_NAMES else "attention"
                elif _MLP_CLASS.search(short) or name in _MLP_NAMES:
                    kind = "mlp"
                if kind is None:
                    continue
                path = f"{block}.{name}"
                region = {n.name for n in graph.nodes if _in_module(n, path)}
                outs = [n for n in graph.nodes if n.name in region and any(u.name not in region for u in n.users)]
                if outs and all(_reaches_residual(o, region)[0] for o in outs):
                    found.append((path, kind))
    return found, examined


def find_sites(gm: fx.GraphModule, rules: Sequence[SiteRule] | None = None) -> list[CacheSite]:
    """The cache sites of a captured graph, in execution order; see the module docstring."""
    table = _module_table(gm.graph)
    if rules is not None:
        rules = list(rules)
        if not rules:
            raise SiteError("FindCacheSites: site_rules is empty; pass at least one SiteRule or None")
        candidates = _match_rules(table, rules)
        if not candidates:
            raise SiteError(
                "FindCacheSites: none of the site rules "
                + ", ".join(repr(r.pattern) for r in rules)
                + f" matches a module of the model (module paths look like: {_sample_paths(table)})"
            )
    else:
        candidates = []
        for rule_set in BUILTIN_RULES.values():
            candidates = _match_rules(table, rule_set)
            if candidates:
                break
        if not candidates:
            candidates, examined = _generic_candidates(gm.graph, table)
            if not candidates:
                seen = "; ".join(examined) if examined else "no module list of blocks"
                raise SiteError(
                    f"FindCacheSites: no cache sites found. Examined {seen}. A site is an attention or "
                    "feed-forward sub-layer of a block whose output joins the residual stream; pass "
                    "site_rules=[SiteRule(r'blocks\\.\\d+\\.attn', 'attention'), ...] to describe this "
                    f"architecture (module paths look like: {_sample_paths(table)})"
                )
    sites = [_build_site(gm.graph, path, kind, table[path][0], table[path][1]) for path, kind in candidates]
    order = {n.name: i for i, n in enumerate(gm.graph.nodes)}
    sites.sort(key=lambda s: order[s.nodes[0]])
    _check_disjoint(sites)
    return sites


def _sample_paths(table: dict[str, tuple[str, list[str]]]) -> str:
    lists = _block_lists(table)
    if lists:
        first = next(iter(lists.values()))[0]
        paths = [first] + [f"{first}.{name}" for name, _ in _children(table, first)]
    else:
        paths = [p for p in table if p]
    return ", ".join(paths[:6]) + (", ..." if len(paths) > 6 else "")


def _check_disjoint(sites: Sequence[CacheSite]) -> None:
    owner: dict[str, str] = {}
    for s in sites:
        for n in s.nodes:
            if n in owner:
                raise SiteError(
                    f"FindCacheSites: sites '{owner[n]}' and '{s.name}' overlap (node '{n}'); "
                    "a site may not contain another site"
                )
            owner[n] = s.name


class FindCacheSites(GraphPass):
    """Find cache sites and tag their output nodes (analysis; no node changes)."""

    name = "find_cache_sites"

    def __init__(self, rules: Sequence[SiteRule] | None = None):
        self.rules = rules
        self.sites: list[CacheSite] = []

    def call(self, gm: fx.GraphModule) -> PassResult:
        self.sites = find_sites(gm, self.rules)
        by_name = {n.name: n for n in gm.graph.nodes}
        for site in self.sites:
            for i, out in enumerate(site.outputs):
                by_name[out].meta[SITE_OUTPUT] = (site.name, i)
        gm.meta["harmonica_sites"] = tuple(self.sites)
        return PassResult(gm, False, {"sites": [s.name for s in self.sites]})
