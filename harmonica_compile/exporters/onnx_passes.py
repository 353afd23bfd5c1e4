"""ONNX specialization as onnx-ir passes: the hard-routed ONNX graph to one step mask's graph.

The routed graph mixes every site as ``Where(mask[k], fresh, cache.<site>)``. For one mask:

1. :class:`SpecializeToMask` rewires each ``Where`` to its fresh value (a computed site), to its
   ``cache.<site>`` input (a reused site) or to a forecast built from new inputs (a forecast site:
   ``w[k, 0] * cache + w[k, 1] * cache_h1 (+ w[k, 2] * cache_h2)`` with ``w`` the graph input
   ``forecast.weights``, exactly the torch graph's branch), makes the fresh value of every
   refreshed site the output ``new_cache.<site>``, and drops the ``fresh.*`` outputs;
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

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import ClearMetadataAndDocStringPass, RemoveUnusedNodesPass

from ..errors import ExportError
from ..names import CACHE, FORECAST_WEIGHTS, FRESH, NEW_CACHE, history_names

_ORDER = {"compute": 0, "reuse": 0, "taylor1": 1, "taylor2": 2}

__all__ = ["ClearIntermediateShapes", "PruneInputs", "SpecializeToMask", "specialize_passes"]


class SpecializeToMask(ir.passes.InPlacePass):
    """Rewire every site's ``Where`` to its fresh value or its cache input; outputs ``new_cache.*``."""

    def __init__(
        self, mask: Sequence[bool], sites: Sequence[Any], refresh: Iterable[str], kinds: Sequence[str] | None = None
    ):
        super().__init__()
        self.mask = [bool(m) for m in mask]
        self.sites = list(sites)
        self.refresh = set(refresh)
        self.kinds = list(kinds) if kinds is not None else ["compute" if m else "reuse" for m in self.mask]

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
        self._weights: ir.Value | None = None
        for k, (site, compute, kind) in enumerate(zip(self.sites, self.mask, self.kinds, strict=True)):
            names = zip(site.cache_names(CACHE), site.cache_names(FRESH), site.cache_names(NEW_CACHE), strict=True)
            for j, (cache_name, fresh_name, new_name) in enumerate(names):
                cache = inputs.get(cache_name)
                where = [] if cache is None else [n for n in cache.consumers() if n.op_type == "Where"]
                if len(where) != 1 or where[0].inputs[2] is not cache:
                    raise ExportError(f"ONNX graph: expected one Where reading '{cache_name}', found {len(where)}")
                fresh = where[0].inputs[1]
                if fresh is None or fresh.name != fresh_name:
                    raise ExportError(f"ONNX graph: the Where reading '{cache_name}' does not mix '{fresh_name}'")
                order = _ORDER[kind]
                if compute or order == 0:
                    where[0].outputs[0].replace_all_uses_with(fresh if compute else cache)
                else:
                    forecast = self._forecast(graph, k, site, j, order, cache)
                    graph.insert_before(where[0], forecast)
                    where[0].outputs[0].replace_all_uses_with(forecast[-1].outputs[0])
                if compute and site.name in self.refresh:
                    fresh.name = new_name
                    new_outputs.append(fresh)
        graph.outputs.clear()
        graph.outputs.extend([*model_outputs, *new_outputs])
        return ir.passes.PassResult(model, modified=True)

    def _forecast(self, graph: ir.Graph, k: int, site: Any, j: int, order: int, cache: ir.Value) -> list[ir.Node]:
        """The nodes of site ``k``'s output ``j`` forecast from ``cache`` and ``order`` older values,
        which become graph inputs (as does ``forecast.weights``, once)."""
        if self._weights is None:
            shape = ir.Shape([len(self.sites), 3])
            self._weights = ir.Value(name=FORECAST_WEIGHTS, type=ir.TensorType(ir.DataType.FLOAT), shape=shape)
            graph.inputs.append(self._weights)
        per_output = order + 1
        older = history_names(site.name, site.num_outputs, order)[j * per_output + 1 : (j + 1) * per_output]
        values = [cache]
        for name in older:
            values.append(ir.Value(name=name, type=cache.type, shape=cache.shape))
            graph.inputs.append(values[-1])
        return _forecast_nodes(self._weights, k, values)


def _forecast_nodes(weights: ir.Value, k: int, values: Sequence[ir.Value]) -> list[ir.Node]:
    """``sum_m weights[k, m] * values[m]`` as ONNX nodes (Gather, Mul, Add); the last node's output
    is the forecast."""
    if values[0].dtype not in (None, ir.DataType.FLOAT):
        raise ExportError(f"ONNX forecast branches are fp32; '{values[0].name}' is {values[0].dtype}")

    def const(v: int) -> ir.Node:
        return ir.node("Constant", [], {"value": ir.tensor(np.array(v, dtype=np.int64))})

    nodes: list[ir.Node] = []
    index = const(k)
    row = ir.node("Gather", [weights, index.outputs[0]], {"axis": 0})
    nodes += [index, row]
    total: ir.Value | None = None
    for m, value in enumerate(values):
        pick = const(m)
        w = ir.node("Gather", [row.outputs[0], pick.outputs[0]], {"axis": 0})
        term = ir.node("Mul", [value, w.outputs[0]])
        nodes += [pick, w, term]
        if total is None:
            total = term.outputs[0]
        else:
            add = ir.node("Add", [total, term.outputs[0]])
            nodes.append(add)
            total = add.outputs[0]
    return nodes


class PruneInputs(ir.passes.InPlacePass):
    """Keep the graph inputs named ``keep`` (in their order), dropping the others, which must be unread."""

    def __init__(self, keep: Sequence[str]):
        super().__init__()
        self.keep = list(keep)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        by_name = {v.name: v for v in graph.inputs}
        kept = [by_name[n] for n in self.keep if n in by_name]
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
    mask: Sequence[bool],
    sites: Sequence[Any],
    refresh: Iterable[str],
    model_inputs: Sequence[str],
    kinds: Sequence[str] | None = None,
) -> ir.passes.Sequential:
    """The passes that turn the hard-routed ONNX model into the graph of one mask (see above)."""
    kinds = list(kinds) if kinds is not None else ["compute" if m else "reuse" for m in mask]
    keep = list(model_inputs)
    for site, kind in zip(sites, kinds, strict=True):
        if kind != "compute":
            keep += history_names(site.name, site.num_outputs, _ORDER[kind])
    if any(_ORDER[k] for k in kinds):
        keep.append(FORECAST_WEIGHTS)
    return ir.passes.Sequential(
        SpecializeToMask(mask, sites, refresh, kinds),
        RemoveUnusedNodesPass(),
        PruneInputs(keep),
        ClearMetadataAndDocStringPass(),
        ClearIntermediateShapes(),
    )
