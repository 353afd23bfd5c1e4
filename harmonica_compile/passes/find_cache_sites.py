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
    >>> [s.name for s in find_sites(cap.graph_module)]  # the exported graph, before or after clean-up
    ['blocks.0.attn', 'blocks.0.mlp', 'blocks.1.attn', 'blocks.1.mlp']
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import fx

from ..errors import SiteError
from ..names import SITE_OUTPUT, SITES
from .infra import GraphPass, PassResult
from .regions import (
    block_lists,
    children,
    in_module,
    module_table,
    op_name,
    reaches_residual,
    sample_paths,
    shape_of,
    short_class,
)
from .site_rules import ATTENTION_CLASS, BUILTIN_RULES, CROSS_NAMES, MLP_CLASS, MLP_NAMES
from .sites import CacheSite, SiteRule

__all__ = ["BUILTIN_RULES", "CacheSite", "FindCacheSites", "SiteRule", "find_sites"]


def _build_site(graph: fx.Graph, path: str, kind: str, cls: str, calls: list[str]) -> CacheSite:
    if len(calls) > 1:
        raise SiteError(
            f"FindCacheSites: '{path}' ({short_class(cls)}) is called {len(calls)} times in one forward; "
            "a site must run once per step. Exclude it with site_rules=..."
        )
    region = [n for n in graph.nodes if in_module(n, path)]
    if not region:
        raise SiteError(f"FindCacheSites: '{path}' computes nothing in the captured graph")
    names = {n.name for n in region}
    outputs = [n for n in region if any(u.name not in names for u in n.users)]
    for n in outputs:
        if not isinstance(n.meta.get("val"), torch.Tensor):
            raise SiteError(
                f"FindCacheSites: site '{path}' hands a non-tensor value ('{n.name}', {op_name(n)}) to the rest "
                "of the model; only tensor outputs can be cached"
            )
    if not outputs:
        raise SiteError(f"FindCacheSites: site '{path}' has no output used outside it")
    inputs: list[str] = []
    for n in region:
        for a in n.all_input_nodes:
            if a.name not in names and a.op != "get_attr" and a.name not in inputs:
                inputs.append(a.name)
    gated = all(reaches_residual(o, names)[1] for o in outputs)
    shapes, dtypes = zip(*(shape_of(o) for o in outputs), strict=True)
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
                if short_class(parent_cls) != rule.block_class:
                    continue
            found.append((path, rule.kind))
            break
    return found


def _generic_candidates(
    graph: fx.Graph, table: dict[str, tuple[str, list[str]]]
) -> tuple[list[tuple[str, str]], list[str]]:
    found: list[tuple[str, str]] = []
    examined: list[str] = []
    for parent, blocks in block_lists(table).items():
        block_cls = short_class(table[blocks[0]][0])
        kids = children(table, blocks[0])
        examined.append(
            f"'{parent or '<root>'}' ({len(blocks)} x {block_cls}: "
            + ", ".join(f"{n} {short_class(c)}" for n, c in kids[:8])
            + (", ..." if len(kids) > 8 else "")
            + ")"
        )
        for block in blocks:
            for name, cls in children(table, block):
                short = short_class(cls)
                if "norm" in short.lower() or "processor" in short.lower() or "embed" in short.lower():
                    continue
                kind = None
                if ATTENTION_CLASS.search(short):
                    kind = "cross_attention" if name in CROSS_NAMES else "attention"
                elif MLP_CLASS.search(short) or name in MLP_NAMES:
                    kind = "mlp"
                if kind is None:
                    continue
                path = f"{block}.{name}"
                region = {n.name for n in graph.nodes if in_module(n, path)}
                outs = [n for n in graph.nodes if n.name in region and any(u.name not in region for u in n.users)]
                if outs and all(reaches_residual(o, region)[0] for o in outs):
                    found.append((path, kind))
    return found, examined


def find_sites(gm: fx.GraphModule, rules: Sequence[SiteRule] | None = None) -> list[CacheSite]:
    """The cache sites of a captured graph, in execution order; see the module docstring."""
    table = module_table(gm.graph)
    if rules is not None:
        rules = list(rules)
        if not rules:
            raise SiteError("FindCacheSites: site_rules is empty; pass at least one SiteRule or None")
        candidates = _match_rules(table, rules)
        if not candidates:
            raise SiteError(
                "FindCacheSites: none of the site rules "
                + ", ".join(repr(r.pattern) for r in rules)
                + f" matches a module of the model (module paths look like: {sample_paths(table)})"
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
                    f"architecture (module paths look like: {sample_paths(table)})"
                )
    sites = [_build_site(gm.graph, path, kind, table[path][0], table[path][1]) for path, kind in candidates]
    order = {n.name: i for i, n in enumerate(gm.graph.nodes)}
    sites.sort(key=lambda s: order[s.nodes[0]])
    _check_disjoint(sites)
    return sites


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
        gm.meta[SITES] = tuple(self.sites)
        return PassResult(gm, False, {"sites": [s.name for s in self.sites]})
