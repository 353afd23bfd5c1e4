"""InsertCacheBranches: rewrite every site into an explicit compute / cache-read branch.

For each site output ``fresh`` the pass adds a graph input ``cache.<site>`` and replaces every use
of ``fresh`` outside the site by a mix of the two:

- ``mode="soft"`` (training): ``r * fresh + (1 - r) * cache`` with ``r = router[k]``, a new graph
  input ``router`` of shape ``[num_sites]``. With ``r`` in {0, 1} (a hard mask, or the
  straight-through value ``hard + r - r.detach()``) the forward is exactly the hard one.
- ``mode="hard"`` (reference inference): ``where(mask[k], fresh, cache)`` with ``mask`` a bool
  input of shape ``[num_sites]``.

Every site's ``fresh`` value also becomes an output ``fresh.<site>``, so a training loop can refresh
its cache. Inputs are ordered: model inputs, ``cache.*`` in site order, then ``router``/``mask``;
outputs: model outputs, then ``fresh.*`` in site order. The routed graph still computes every site;
removing what a step does not compute is :mod:`specialize`'s job.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import fx

from ..errors import PassError
from ..names import FRESH, INPUT_NAME, INPUT_NAMES, OUTPUT_NAMES, ROUTING
from .infra import GraphPass, PassResult, output_node, stamp
from .sites import CacheSite

__all__ = ["InsertCacheBranches"]

aten = torch.ops.aten


class InsertCacheBranches(GraphPass):
    """Add a cache input and a soft (router) or hard (mask) mix for every site."""

    name = "insert_cache_branches"
    # The rewritten graph takes more inputs; with router = 1 (or mask = True) it equals the input graph.
    preserves_computation = False

    def __init__(self, sites: Sequence[CacheSite], mode: str = "soft"):
        if mode not in ("soft", "hard"):
            raise PassError(f"{self.name}: mode must be 'soft' or 'hard', got {mode!r}")
        if not sites:
            raise PassError(f"{self.name}: no sites to rewrite")
        self.sites = list(sites)
        self.mode = mode

    def call(self, gm: fx.GraphModule) -> PassResult:
        graph = gm.graph
        nodes = {n.name: n for n in graph.nodes}
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        anchor = placeholders[-1] if placeholders else None
        cache_inputs: list[list[fx.Node]] = []
        with graph.inserting_after(anchor) if anchor is not None else graph.inserting_before(None):
            gate_name = "router" if self.mode == "soft" else "mask"
            gate = graph.placeholder(gate_name)
        stamp(gate, self.name, None, "router")
        gate.meta[INPUT_NAME] = gate_name
        gate.meta["val_shape"] = (len(self.sites),)
        # cache placeholders go between the model inputs and the router input
        for site in self.sites:
            phs = []
            for cname in site.cache_names():
                with graph.inserting_before(gate):
                    ph = graph.placeholder(cname.replace(".", "_"))
                ph.meta[INPUT_NAME] = cname
                stamp(ph, self.name, site.name, "cache")
                phs.append(ph)
            cache_inputs.append(phs)

        fresh_outputs: list[fx.Node] = []
        for k, site in enumerate(self.sites):
            for j, out_name in enumerate(site.outputs):
                fresh = nodes.get(out_name)
                if fresh is None:
                    raise PassError(f"{self.name}: output node '{out_name}' of site '{site.name}' is not in the graph")
                cache = cache_inputs[k][j]
                region = set(site.nodes)
                users = [u for u in fresh.users if u.name not in region]
                with graph.inserting_after(fresh):
                    created = self._mix(graph, gate, k, fresh, cache, site)
                mixed = created[-1]
                new = set(created)
                for u in users:
                    if u not in new:
                        u.replace_input_with(fresh, mixed)
                fresh_outputs.append(fresh)

        out = output_node(graph)
        model_outputs = tuple(out.args[0])
        out.args = (model_outputs + tuple(fresh_outputs),)
        names = list(gm.meta.get(OUTPUT_NAMES, [f"output.{i}" for i in range(len(model_outputs))]))
        names += [n for site in self.sites for n in site.cache_names(FRESH)]
        gm.meta[OUTPUT_NAMES] = tuple(names)
        gm.meta[ROUTING] = self.mode
        gm.meta[INPUT_NAMES] = tuple(n.meta.get(INPUT_NAME, n.name) for n in graph.nodes if n.op == "placeholder")
        gm.recompile()
        return PassResult(
            gm,
            True,
            {"mode": self.mode, "sites": len(self.sites), "cache_inputs": sum(s.num_outputs for s in self.sites)},
        )

    def _mix(
        self, graph: fx.Graph, gate: fx.Node, k: int, fresh: fx.Node, cache: fx.Node, site: CacheSite
    ) -> list[fx.Node]:
        created: list[fx.Node] = []

        def add(target: object, *args: object) -> fx.Node:
            if created:
                with graph.inserting_after(created[-1]):
                    node = graph.call_function(target, args)
            else:
                node = graph.call_function(target, args)
            created.append(stamp(node, self.name, site.name, "mix"))
            return node

        g = add(aten.select.int, gate, 0, k)
        if self.mode == "hard":
            add(aten.where.self, g, fresh, cache)
            return created
        val = fresh.meta.get("val")
        if isinstance(val, torch.Tensor) and val.dtype != torch.float32:
            g = add(aten.to.dtype, g, val.dtype)
        a = add(aten.mul.Tensor, fresh, g)
        one_minus = add(aten.rsub.Scalar, g, 1)
        b = add(aten.mul.Tensor, cache, one_minus)
        add(aten.add.Tensor, a, b)
        return created

    def ensures(self, gm: fx.GraphModule) -> None:
        names = [n.meta.get(INPUT_NAME) for n in gm.graph.nodes if n.op == "placeholder"]
        expected_tail = [c for s in self.sites for c in s.cache_names()] + ["router" if self.mode == "soft" else "mask"]
        if names[-len(expected_tail) :] != expected_tail:
            raise PassError(
                f"{self.name}: graph inputs end with {names[-len(expected_tail) :]}, expected {expected_tail}"
            )
