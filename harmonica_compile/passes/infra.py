"""Pass infrastructure: a pass returns what it changed, and the graph is checked after every pass.

A pass is a small object with a ``name``; calling it on a ``GraphModule`` returns a
:class:`PassResult` and, before returning, checks the graph with ``Graph.lint()`` and the invariants
listed in ``passes/README.md``. A :class:`PassManager` runs a visible list of passes, wraps any
failure as ``error in pass X after passes [...]``, and can dump the graph before or after a named
pass (``dump_before`` / ``dump_after``, or the ``HARMONICA_DUMP`` environment variable, e.g.
``HARMONICA_DUMP=before:specialize,after:insert_cache_branches``).

Example:
    >>> from harmonica_compile.passes import CLEANUP_PIPELINE
    >>> [p.name for p in CLEANUP_PIPELINE]
    ['remove_guards', 'remove_assertions', 'remove_eval_dropout', 'hoist_symbolic_sizes', 'eliminate_dead_code']
"""

from __future__ import annotations

import abc
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import fx

from ..errors import HarmonicaError, PassError

__all__ = [
    "GraphPass",
    "PassManager",
    "PassResult",
    "check_graph",
    "graph_text",
    "input_names",
    "output_names",
    "stamp",
]

#: ``node.meta`` key holding ``{"pass", "site", "branch"}`` on every node a pass creates.
PROVENANCE = "harmonica"
#: ``node.meta`` key on placeholders: the input's public name (``x``, ``cache.blocks.0.attn``).
INPUT_NAME = "harmonica_input"
#: ``node.meta`` key on site output nodes: ``(site name, output index)``.
SITE_OUTPUT = "harmonica_site"
#: ``gm.meta`` key: public names of the graph's outputs, in order.
OUTPUT_NAMES = "harmonica_output_names"


def stamp(node: fx.Node, pass_name: str, site: str | None = None, branch: str | None = None) -> fx.Node:
    """Record which pass created ``node``, for which site and branch (``compute``/``cache``/``mix``)."""
    node.meta[PROVENANCE] = {"pass": pass_name, "site": site, "branch": branch}
    return node


def input_names(gm: fx.GraphModule) -> list[str]:
    return [n.meta.get(INPUT_NAME, n.name) for n in gm.graph.nodes if n.op == "placeholder"]


def output_names(gm: fx.GraphModule) -> list[str]:
    return list(gm.meta.get(OUTPUT_NAMES, ()))


def output_node(graph: fx.Graph) -> fx.Node:
    for node in reversed(graph.nodes):
        if node.op == "output":
            return node
    raise PassError("graph has no output node")


@dataclass
class PassResult:
    """What a pass returns: the (possibly new) graph module, whether it changed, and how."""

    graph_module: fx.GraphModule
    modified: bool
    changes: dict[str, Any] = field(default_factory=dict)


class GraphPass(abc.ABC):
    """Base class of our passes. Subclasses set ``name`` and implement :meth:`call`.

    ``preserves_computation`` declares that the pass leaves the graph's outputs unchanged for the
    same inputs; the test suite checks every such pass against the graph before it.
    """

    name: ClassVar[str]
    preserves_computation: ClassVar[bool] = True

    @abc.abstractmethod
    def call(self, gm: fx.GraphModule) -> PassResult: ...

    def ensures(self, gm: fx.GraphModule) -> None:
        """Post-conditions specific to this pass; raise :class:`PassError` naming the node."""

    def __call__(self, gm: fx.GraphModule) -> PassResult:
        before = {n.name for n in gm.graph.nodes}
        result = self.call(gm)
        check_graph(result.graph_module, pass_name=self.name, existing=before)
        self.ensures(result.graph_module)
        return result

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def check_graph(gm: fx.GraphModule, *, pass_name: str, existing: Iterable[str] | None = None) -> None:
    """``Graph.lint()`` plus our invariants (see ``passes/README.md``)."""
    try:
        gm.graph.lint()
    except Exception as e:
        raise PassError(f"{pass_name}: the graph fails Graph.lint(): {e}") from e
    names = input_names(gm)
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise PassError(f"{pass_name}: duplicate graph input names {dup}")
    recorded = gm.meta.get("harmonica_input_names")
    if recorded is not None and tuple(recorded) != tuple(names):
        raise PassError(f"{pass_name}: gm.meta records inputs {list(recorded)} but the placeholders are {names}")
    out = output_node(gm.graph)
    if not isinstance(out.args[0], tuple | list):
        raise PassError(f"{pass_name}: the output node must return a flat tuple, got {type(out.args[0]).__name__}")
    declared = gm.meta.get(OUTPUT_NAMES)
    if declared is not None and len(declared) != len(out.args[0]):
        raise PassError(f"{pass_name}: the graph returns {len(out.args[0])} values but names {len(declared)} outputs")
    if existing is not None:
        existing = set(existing)
        for node in gm.graph.nodes:
            if node.name in existing or node.op == "output":
                continue
            prov = node.meta.get(PROVENANCE)
            if not prov or "pass" not in prov:
                raise PassError(
                    f"{pass_name}: node '{node.name}' ({node.op} {node.target}) was created without "
                    "provenance; call passes.infra.stamp(node, pass_name, site, branch)"
                )
    seen_non_placeholder = False
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if seen_non_placeholder:
                raise PassError(f"{pass_name}: placeholder '{node.name}' comes after a computation node")
        elif node.op != "get_attr":
            seen_non_placeholder = True
        if (
            node.op == "call_function"
            and isinstance(node.target, torch._ops.OpOverload)
            and node.target._schema.is_mutable
        ):
            raise PassError(
                f"{pass_name}: node '{node.name}' calls the in-place op {node.target}; cached graphs must be functional"
            )


def graph_text(gm: fx.GraphModule) -> str:
    """The graph as readable text, with the public input and output names."""
    head = f"# inputs: {input_names(gm)}\n# outputs: {output_names(gm)}\n"
    return head + str(gm.graph)


def _env_dumps() -> tuple[set[str], set[str]]:
    before: set[str] = set()
    after: set[str] = set()
    for item in filter(None, os.environ.get("HARMONICA_DUMP", "").split(",")):
        when, _, name = item.partition(":")
        (before if when.strip() == "before" else after).add(name.strip())
    return before, after


class PassManager:
    """Runs passes in order; see the module docstring."""

    def __init__(
        self,
        passes: Sequence[GraphPass],
        *,
        dump_before: Iterable[str] = (),
        dump_after: Iterable[str] = (),
        dump_dir: str | os.PathLike[str] | None = None,
    ):
        self.passes = list(passes)
        env_before, env_after = _env_dumps()
        self.dump_before = set(dump_before) | env_before
        self.dump_after = set(dump_after) | env_after
        self.dump_dir = (
            Path(dump_dir or os.environ.get("HARMONICA_DUMP_DIR", ""))
            if (dump_dir or os.environ.get("HARMONICA_DUMP_DIR"))
            else None
        )
        known = {p.name for p in self.passes}
        # Names of passes in other pipelines are fine; they simply do not fire here.
        self._unknown = (self.dump_before | self.dump_after) - known

    def __repr__(self) -> str:
        return "PassManager([" + ", ".join(p.name for p in self.passes) + "])"

    def describe(self) -> str:
        return "\n".join(
            f"{i + 1}. {p.name}: {(type(p).__doc__ or '').strip().splitlines()[0]}" for i, p in enumerate(self.passes)
        )

    def _dump(self, gm: fx.GraphModule, when: str, name: str, index: int) -> None:
        text = graph_text(gm)
        if self.dump_dir is None:
            print(f"# ---- graph {when} pass {name} ----\n{text}", file=sys.stderr)
            return
        self.dump_dir.mkdir(parents=True, exist_ok=True)
        (self.dump_dir / f"{index:02d}-{when}-{name}.txt").write_text(text)

    def __call__(self, gm: fx.GraphModule) -> tuple[fx.GraphModule, list[tuple[str, PassResult]]]:
        done: list[tuple[str, PassResult]] = []
        for i, p in enumerate(self.passes):
            if p.name in self.dump_before:
                self._dump(gm, "before", p.name, i)
            where = f"error in pass {p.name}" + (f" after passes {[n for n, _ in done]}" if done else "")
            try:
                result = p(gm)
            except HarmonicaError as e:
                raise type(e)(f"{where}: {e}") from e
            except Exception as e:
                raise PassError(f"{where}: {type(e).__name__}: {e}") from e
            gm = result.graph_module
            done.append((p.name, result))
            if p.name in self.dump_after:
                self._dump(gm, "after", p.name, i)
        return gm, done


def clone_graph_module(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``gm`` with its own graph (node meta copied) sharing the same weight tensors."""
    graph = fx.Graph()
    value_map: dict[fx.Node, fx.Node] = {}
    out = graph.graph_copy(gm.graph, value_map)
    graph.output(out)
    for old, new in value_map.items():
        new.meta = dict(old.meta)
    clone = fx.GraphModule(gm, graph, class_name=type(gm).__name__)
    clone.meta.update(gm.meta)
    return clone
