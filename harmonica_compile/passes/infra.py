"""Pass infrastructure: a pass returns what it changed, and the graph is checked around every pass.

A pass is a small object with a ``name`` (like torch.fx's ``PassBase``); calling it on a
``GraphModule`` first checks its preconditions (:meth:`GraphPass.requires`), runs it, then checks
the graph with ``Graph.lint()``, the invariants listed in ``passes/README.md`` and the pass's own
post-conditions (:meth:`GraphPass.ensures`), and returns a :class:`PassResult`.

A :class:`PassManager` is itself a pass: it runs a visible list of passes (pipelines nest), wraps
any failure as ``error in pass X after passes [...]``, returns a :class:`PassResult` whose
``history`` lists every pass it ran with its result, and can dump the graph before or after a
named pass (``dump_before`` / ``dump_after`` arguments, which must name one of its passes; or the
``HARMONICA_DUMP`` environment variable, e.g. ``HARMONICA_DUMP=before:specialize``).

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
from typing import Any

import torch
from torch import fx

from ..errors import ConfigError, HarmonicaError, PassError
from ..names import INPUT_NAME, INPUT_NAMES, OUTPUT_NAMES, PROVENANCE

__all__ = [
    "GraphPass",
    "PassManager",
    "PassResult",
    "check_graph",
    "describe_passes",
    "graph_text",
    "input_names",
    "output_names",
    "stamp",
]


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
    """What a pass returns: the (possibly new) graph module, whether it changed, and how.

    A :class:`PassManager`'s result also lists, in ``history``, every pass it ran and its result.
    """

    graph_module: fx.GraphModule
    modified: bool
    changes: dict[str, Any] = field(default_factory=dict)
    history: list[tuple[str, PassResult]] = field(default_factory=list)


class GraphPass(abc.ABC):
    """Base class of our passes. Subclasses set ``name`` and implement :meth:`call`.

    ``preserves_computation`` declares that the pass leaves the graph's outputs unchanged for the
    same inputs; the test suite checks every such pass against the graph before it.
    """

    name: str
    preserves_computation: bool = True

    @abc.abstractmethod
    def call(self, gm: fx.GraphModule) -> PassResult: ...

    def requires(self, gm: fx.GraphModule) -> None:
        """Preconditions on the graph this pass is given; raise :class:`PassError` saying what is missing."""

    def ensures(self, gm: fx.GraphModule) -> None:
        """Post-conditions specific to this pass; raise :class:`PassError` naming the node."""

    def __call__(self, gm: fx.GraphModule) -> PassResult:
        self.requires(gm)
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
    recorded = gm.meta.get(INPUT_NAMES)
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


def describe_passes(passes: Iterable[GraphPass | type[GraphPass]], start: int = 1) -> str:
    """Numbered lines ``name  first docstring line`` for passes (instances or classes)."""
    lines = []
    for i, p in enumerate(passes, start):
        doc = (p.__doc__ or "").strip().splitlines()
        lines.append(f"{i:4d}. {p.name:<24} {doc[0] if doc else ''}")
    return "\n".join(lines)


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


class PassManager(GraphPass):
    """Runs passes in order, and is itself a pass; see the module docstring."""

    def __init__(
        self,
        passes: Sequence[GraphPass],
        *,
        name: str = "pipeline",
        dump_before: Iterable[str] = (),
        dump_after: Iterable[str] = (),
        dump_dir: str | os.PathLike[str] | None = None,
    ):
        self.passes = list(passes)
        self.name = name
        self.preserves_computation = all(p.preserves_computation for p in self.passes)
        known = set(self.pass_names())
        asked = set(dump_before) | set(dump_after)
        unknown = sorted(asked - known)
        if unknown:
            raise ConfigError(f"no pass named {unknown} in the pipeline; its passes are {self.pass_names()}")
        # Names from the environment may name passes of other pipelines: those simply do not fire here.
        env_before, env_after = _env_dumps()
        self.dump_before = set(dump_before) | env_before
        self.dump_after = set(dump_after) | env_after
        env_dir = os.environ.get("HARMONICA_DUMP_DIR")
        self.dump_dir = Path(dump_dir) if dump_dir else Path(env_dir) if env_dir else None
        for p in self.passes:  # nested pipelines dump with the outer one's settings
            if isinstance(p, PassManager):
                p.dump_before |= self.dump_before
                p.dump_after |= self.dump_after
                p.dump_dir = p.dump_dir or self.dump_dir

    def __repr__(self) -> str:
        return "PassManager([" + ", ".join(p.name for p in self.passes) + "])"

    def pass_names(self) -> list[str]:
        """Every pass this pipeline runs, nested pipelines expanded, in order."""
        names: list[str] = []
        for p in self.passes:
            names += p.pass_names() if isinstance(p, PassManager) else [p.name]
        return names

    def describe(self) -> str:
        """One line per pass: its number, name and the first line of its docstring."""
        return describe_passes(self._leaves())

    def _leaves(self) -> list[GraphPass]:
        out: list[GraphPass] = []
        for p in self.passes:
            out += p._leaves() if isinstance(p, PassManager) else [p]
        return out

    def _dump(self, gm: fx.GraphModule, when: str, name: str, index: int) -> None:
        text = graph_text(gm)
        if self.dump_dir is None:
            print(f"# ---- graph {when} pass {name} ----\n{text}", file=sys.stderr)
            return
        self.dump_dir.mkdir(parents=True, exist_ok=True)
        (self.dump_dir / f"{index:02d}-{when}-{name}.txt").write_text(text)

    def call(self, gm: fx.GraphModule) -> PassResult:
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
            done += result.history if isinstance(p, PassManager) else [(p.name, result)]
            if p.name in self.dump_after:
                self._dump(gm, "after", p.name, i)
        changes = {name: r.changes for name, r in done}
        return PassResult(gm, any(r.modified for _, r in done), changes, done)

    def __call__(self, gm: fx.GraphModule) -> PassResult:
        # every pass it runs checks the graph after itself; the pipeline adds no check of its own
        return self.call(gm)


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
