"""Specialize: one step's mask to its own graph, with everything that step does not compute gone.

For a boolean mask over the sites (True = compute), every cached site's outputs become graph
inputs ``cache.<site>`` (``cache.<site>.<i>`` for sites with several outputs), dead-code
elimination removes the site and everything that fed only it (its norm and modulate), and each
computed site listed in ``refresh`` gets an extra output ``new_cache.<site>``, the fresh value a
later step will read. Inputs are ordered model inputs then ``cache.*`` in site order; outputs model
outputs then ``new_cache.*`` in site order.

A cached site whose branch (``kinds``) is a forecast of order k also takes its k older values
(``cache_h1.<site>``, ``cache_h2.<site>``, right after its ``cache.<site>``) and the graph takes
one more input, ``forecast.weights`` ``[num_sites, 3]``, last: the site's value is then
``w[k, 0] * cache + w[k, 1] * cache_h1 (+ w[k, 2] * cache_h2)``, an explicit branch of the graph
(the runtime feeds the step's weights, so steps that differ only in their weights share a graph).

Example (a 2-block DiT, both MLPs cached):
    >>> import torch
    >>> from harmonica_compile import prepare
    >>> from harmonica_compile.models import DiT_models
    >>> m = DiT_models["DiT-S/8"](input_size=16, num_classes=10)
    >>> m.blocks = m.blocks[:2]
    >>> cm = prepare(m, (torch.randn(2, 4, 16, 16), torch.tensor([1, 1]), torch.tensor([0, 1])))
    >>> step = Specialize(cm.sites, [True, False, True, False], refresh=["blocks.0.attn"])
    >>> gm = step(cm.graph_module).graph_module
    >>> gm.meta["harmonica_input_names"], gm.meta["harmonica_output_names"]
    (('x', 't', 'y', 'cache.blocks.0.mlp', 'cache.blocks.1.mlp'), ('output', 'new_cache.blocks.0.attn'))
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import fx

from ..errors import PassError
from ..names import (
    FORECAST_WEIGHTS,
    INPUT_NAME,
    INPUT_NAMES,
    KINDS,
    MASK,
    NEW_CACHE,
    OUTPUT_NAMES,
    REFRESH,
    ROUTING,
    history_names,
)
from .eliminate_dead_code import is_impure
from .infra import GraphPass, PassResult, clone_graph_module, output_node, stamp
from .sites import CacheSite

__all__ = ["Specialize"]


class Specialize(GraphPass):
    """Replace cached sites by graph inputs, add refreshed caches as outputs, remove dead code."""

    name = "specialize"
    preserves_computation = False

    def __init__(
        self,
        sites: Sequence[CacheSite],
        mask: Sequence[bool],
        refresh: Iterable[str] = (),
        kinds: Sequence[str] | None = None,
    ):
        self.sites = list(sites)
        self.mask = [bool(m) for m in mask]
        if len(self.mask) != len(self.sites):
            raise PassError(f"{self.name}: mask has {len(self.mask)} entries for {len(self.sites)} sites")
        self.kinds = [("compute" if m else "reuse") for m in self.mask] if kinds is None else list(kinds)
        orders = {"reuse": 0, "taylor1": 1, "taylor2": 2}
        for site, compute, kind in zip(self.sites, self.mask, self.kinds, strict=True):
            if compute != (kind == "compute") or (not compute and kind not in orders):
                raise PassError(
                    f"{self.name}: site '{site.name}' is {'computed' if compute else 'cached'} with kind {kind!r}"
                )
        self.orders = [orders.get(k, 0) for k in self.kinds]
        names = {s.name for s in self.sites}
        self.refresh = set(refresh)
        unknown = self.refresh - names
        if unknown:
            raise PassError(f"{self.name}: refresh names unknown sites {sorted(unknown)}")
        cached_refresh = [
            s.name for s, m in zip(self.sites, self.mask, strict=True) if not m and s.name in self.refresh
        ]
        if cached_refresh:
            raise PassError(f"{self.name}: sites {cached_refresh} are cached in this step, so they cannot be refreshed")

    def call(self, gm: fx.GraphModule) -> PassResult:
        gm = clone_graph_module(gm)
        graph = gm.graph
        nodes = {n.name: n for n in graph.nodes}
        for n in graph.nodes:
            if n.op == "placeholder" and n.meta.get(INPUT_NAME) in ("router", "mask"):
                raise PassError(f"{self.name}: expects the captured graph, got a routed graph (input '{n.name}')")
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        anchor = placeholders[-1]
        input_names = [n.meta.get(INPUT_NAME, n.name) for n in placeholders]
        before = len(graph.nodes)
        new_outputs: list[fx.Node] = []
        new_output_names: list[str] = []
        forecasts: list[tuple[int, CacheSite, list[fx.Node], list[list[fx.Node]]]] = []
        for k, (site, compute, order) in enumerate(zip(self.sites, self.mask, self.orders, strict=True)):
            outs = [nodes.get(o) for o in site.outputs]
            if any(o is None for o in outs):
                raise PassError(f"{self.name}: site '{site.name}' has outputs missing from the graph")
            if compute:
                if site.name in self.refresh:
                    new_outputs.extend(outs)  # type: ignore[arg-type]
                    new_output_names.extend(site.cache_names(NEW_CACHE))
                continue
            history: list[list[fx.Node]] = []
            names = history_names(site.name, site.num_outputs, order)
            for j, out in enumerate(outs):
                per_output = []
                for cname in names[j * (order + 1) : (j + 1) * (order + 1)]:
                    with graph.inserting_after(anchor):
                        ph = graph.placeholder(cname.replace(".", "_"))
                    ph.meta[INPUT_NAME] = cname
                    if "val" in out.meta:  # type: ignore[union-attr]
                        ph.meta["val"] = out.meta["val"]  # type: ignore[union-attr]
                    stamp(ph, self.name, site.name, "cache")
                    anchor = ph
                    input_names.append(cname)
                    per_output.append(ph)
                history.append(per_output)
                if order == 0:
                    out.replace_all_uses_with(per_output[0])  # type: ignore[union-attr]
            if order:
                forecasts.append((k, site, outs, history))  # type: ignore[arg-type]
        if forecasts:
            with graph.inserting_after(anchor):
                weights = graph.placeholder(FORECAST_WEIGHTS.replace(".", "_"))
            weights.meta[INPUT_NAME] = FORECAST_WEIGHTS
            stamp(weights, self.name, None, "forecast")
            input_names.append(FORECAST_WEIGHTS)
            anchor = weights
            for k, site, outs, history in forecasts:
                for out, values in zip(outs, history, strict=True):
                    anchor = self._forecast(graph, anchor, weights, k, site, out, values)
        out_node = output_node(graph)
        model_outputs = tuple(out_node.args[0])
        out_node.args = (model_outputs + tuple(new_outputs),)
        graph.eliminate_dead_code(is_impure_node=is_impure)
        gm.meta[OUTPUT_NAMES] = tuple(list(gm.meta.get(OUTPUT_NAMES, ())) + new_output_names)
        gm.meta[INPUT_NAMES] = tuple(input_names)
        gm.meta[MASK] = tuple(self.mask)
        gm.meta[KINDS] = tuple(self.kinds)
        gm.meta[REFRESH] = tuple(s.name for s in self.sites if s.name in self.refresh)
        gm.meta.pop(ROUTING, None)
        gm.delete_all_unused_submodules()
        gm.recompile()
        return PassResult(
            gm,
            True,
            {
                "removed_nodes": before - len(graph.nodes),
                "cached_sites": [s.name for s, m in zip(self.sites, self.mask, strict=True) if not m],
                "refreshed": sorted(self.refresh),
            },
        )

    def _forecast(
        self,
        graph: fx.Graph,
        anchor: fx.Node,
        weights: fx.Node,
        k: int,
        site: CacheSite,
        out: fx.Node,
        values: list[fx.Node],
    ) -> fx.Node:
        """``sum_m weights[k, m] * values[m]`` in place of the site output ``out``; returns the last node."""
        aten = torch.ops.aten
        created: list[fx.Node] = []

        def add(target: object, *args: object) -> fx.Node:
            with graph.inserting_after(created[-1] if created else anchor):
                node = graph.call_function(target, args)
            created.append(stamp(node, self.name, site.name, "forecast"))
            return node

        row = add(aten.select.int, weights, 0, k)
        val = out.meta.get("val")
        if isinstance(
            val, torch.Tensor
        ):  # the runtime's weights may be float64; the branch computes in the site's dtype
            row = add(aten.to.dtype, row, val.dtype)
        total = None
        for m, value in enumerate(values):
            term = add(aten.mul.Tensor, value, add(aten.select.int, row, 0, m))
            total = term if total is None else add(aten.add.Tensor, total, term)
        out.replace_all_uses_with(total)  # type: ignore[arg-type]
        return created[-1]

    def ensures(self, gm: fx.GraphModule) -> None:
        names = {n.name for n in gm.graph.nodes}
        for site, compute in zip(self.sites, self.mask, strict=True):
            if compute:
                continue
            left = [n for n in site.nodes if n in names]
            if left:
                raise PassError(f"{self.name}: cached site '{site.name}' still computes nodes {left[:5]}")
        for n in gm.graph.nodes:
            if n.op == "placeholder" and n.meta.get(INPUT_NAME) in ("router", "mask"):
                raise PassError(f"{self.name}: router input '{n.name}' remains after specialization")
