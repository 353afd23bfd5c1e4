"""ONNX specialization as onnx-ir passes: the hard-routed ONNX graph to one step mask's graph.

The routed graph mixes every site as ``Where(mask[k], fresh, cache.<site>)``. For one mask:

1. :class:`SpecializeToMask` rewires each ``Where`` to its fresh value (a computed site) or to its
   ``cache.<site>`` input (a cached site), makes the fresh value of every refreshed site the output
   ``new_cache.<site>``, and drops the ``fresh.*`` outputs;
2. onnx-ir's ``RemoveUnusedNodesPass`` removes what no output needs any more (the cached sites'
   sub-layers, their norms and modulations, unused initializers);
3. :class:`PruneInputs` drops the inputs nothing reads any more (``mask``, computed sites' caches),
   checking that they are indeed unread;
4. onnx-ir's ``ClearMetadataAndDocStringPass`` and :class:`ClearIntermediateShapes` remove what a
   user should not ship: the exporter's per-node stack traces and module paths (~90% of a file),
   and intermediate shapes that every runtime infers again (~50 KB per graph).

Each pass checks its own post-conditions (onnx-ir's ``ensures``), so a graph whose inputs or
outputs are not what the torch graph of the same mask has never reaches the folder.

Example::

    passes = specialize_passes(mask, sites, refresh, model_inputs=["x", "t", "y"])
    model = passes(routed_model).model
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import onnx_ir as ir
from onnx_ir.passes.common import ClearMetadataAndDocStringPass, RemoveUnusedNodesPass

from ..errors import ExportError
from ..names import CACHE, FRESH, NEW_CACHE

__all__ = ["ClearIntermediateShapes", "PruneInputs", "SpecializeToMask", "specialize_passes"]


class SpecializeToMask(ir.passes.InPlacePass):
    """Rewire every site's ``Where`` to its fresh value or its cache input; outputs ``new_cache.*``."""

    def __init__(self, mask: Sequence[bool], sites: Sequence[Any], refresh: Iterable[str]):
        super().__init__()
        self.mask = [bool(m) for m in mask]
        self.sites = list(sites)
        self.refresh = set(refresh)

    def requires(self, model: ir.Model) -> None:
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            if node.graph is not model.graph:
                raise ExportError(f"ONNX specialization does not handle subgraphs (node {node.name}, {node.op_type})")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        inputs = {v.name: v for v in graph.inputs}
        num_fresh = sum(s.num_outputs for s in self.sites)
        model_outputs = list(graph.outputs)[: len(graph.outputs) - num_fresh]
        new_outputs: list[ir.Value] = []
        for site, compute in zip(self.sites, self.mask, strict=True):
            names = zip(site.cache_names(CACHE), site.cache_names(FRESH), site.cache_names(NEW_CACHE), strict=True)
            for cache_name, fresh_name, new_name in names:
                cache = inputs.get(cache_name)
                where = [] if cache is None else [n for n in cache.consumers() if n.op_type == "Where"]
                if len(where) != 1 or where[0].inputs[2] is not cache:
                    raise ExportError(f"ONNX graph: expected one Where reading '{cache_name}', found {len(where)}")
                fresh = where[0].inputs[1]
                if fresh is None or fresh.name != fresh_name:
                    raise ExportError(f"ONNX graph: the Where reading '{cache_name}' does not mix '{fresh_name}'")
                where[0].outputs[0].replace_all_uses_with(fresh if compute else cache)
                if compute and site.name in self.refresh:
                    fresh.name = new_name
                    new_outputs.append(fresh)
        graph.outputs.clear()
        graph.outputs.extend([*model_outputs, *new_outputs])
        return ir.passes.PassResult(model, modified=True)


class PruneInputs(ir.passes.InPlacePass):
    """Keep the graph inputs named ``keep`` (in their order), dropping the others, which must be unread."""

    def __init__(self, keep: Sequence[str]):
        super().__init__()
        self.keep = list(keep)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        kept = [v for v in graph.inputs if v.name in self.keep]
        dropped = [v for v in graph.inputs if v.name not in self.keep]
        read = [v.name for v in dropped if v.uses()]
        if read:
            raise ExportError(f"ONNX specialization: inputs {read} are still read after dead-code removal")
        graph.inputs.clear()
        graph.inputs.extend(kept)
        return ir.passes.PassResult(model, modified=bool(dropped))

    def ensures(self, model: ir.Model) -> None:
        got = [v.name for v in model.graph.inputs]
        if got != self.keep:
            raise ExportError(f"ONNX specialization: the graph takes {got}, expected {self.keep}")


class ClearIntermediateShapes(ir.passes.InPlacePass):
    """Drop the types and shapes of intermediate values (runtimes infer them again); graph inputs
    and outputs keep theirs."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        boundary = {id(v) for v in (*graph.inputs, *graph.outputs)}
        modified = False
        for node in graph:
            for value in node.outputs:
                if id(value) not in boundary and (value.shape is not None or value.type is not None):
                    value.shape = None
                    value.type = None
                    modified = True
        return ir.passes.PassResult(model, modified=modified)


def specialize_passes(
    mask: Sequence[bool], sites: Sequence[Any], refresh: Iterable[str], model_inputs: Sequence[str]
) -> ir.passes.Sequential:
    """The passes that turn the hard-routed ONNX model into the graph of one mask (see above)."""
    keep = list(model_inputs) + [n for s, m in zip(sites, mask, strict=True) if not m for n in s.cache_names(CACHE)]
    return ir.passes.Sequential(
        SpecializeToMask(mask, sites, refresh),
        RemoveUnusedNodesPass(),
        PruneInputs(keep),
        ClearMetadataAndDocStringPass(),
        ClearIntermediateShapes(),
    )
