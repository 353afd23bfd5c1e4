"""Graph passes, one per file, and the pipeline they run in.

The pipeline, in order (``harmonica-compile show --passes`` prints it)::

    capture (torch.export)
      1. remove_guards          drop export's input-guard call
      2. remove_assertions      drop runtime assertion nodes (they block dead-code elimination)
      3. remove_eval_dropout    dropout in eval mode is the identity
      4. hoist_symbolic_sizes   every symbolic size reads a graph input, not an inner tensor
      5. eliminate_dead_code    DCE that knows SDPA without dropout is pure
      6. find_cache_sites       analysis: tag each site's output nodes
    then, per use:
      insert_cache_branches     soft (router) or hard (mask) mix per site: training, reference
      specialize                one step's mask -> graph with cached sites as inputs, dead code gone

Each pass returns a :class:`PassResult` and is checked after it runs (``Graph.lint()`` and the
invariants in ``README.md`` next to this file).
"""

from __future__ import annotations

from typing import Any

from torch import fx

from .eliminate_dead_code import EliminateDeadCode, eliminate_dead_code
from .find_cache_sites import BUILTIN_RULES, CacheSite, FindCacheSites, SiteRule, find_sites
from .hoist_symbolic_sizes import HoistSymbolicSizes
from .infra import (
    GraphPass,
    PassManager,
    PassResult,
    check_graph,
    clone_graph_module,
    graph_text,
    input_names,
    output_names,
    stamp,
)
from .insert_cache_branches import InsertCacheBranches
from .remove_assertions import RemoveAssertions
from .remove_eval_dropout import RemoveEvalDropout
from .remove_guards import RemoveGuards
from .specialize import Specialize

__all__ = [
    "BUILTIN_RULES",
    "CLEANUP_PIPELINE",
    "CacheSite",
    "EliminateDeadCode",
    "FindCacheSites",
    "GraphPass",
    "HoistSymbolicSizes",
    "InsertCacheBranches",
    "PassManager",
    "PassResult",
    "RemoveAssertions",
    "RemoveEvalDropout",
    "RemoveGuards",
    "SiteRule",
    "Specialize",
    "check_graph",
    "clone_graph_module",
    "describe_pipeline",
    "eliminate_dead_code",
    "find_sites",
    "graph_text",
    "input_names",
    "output_names",
    "run_cleanup",
    "stamp",
]

#: The clean-up passes ``capture`` runs, in order.
CLEANUP_PIPELINE: tuple[GraphPass, ...] = (
    RemoveGuards(),
    RemoveAssertions(),
    RemoveEvalDropout(),
    HoistSymbolicSizes(),
    EliminateDeadCode(),
)


def run_cleanup(gm: fx.GraphModule, **dump: Any) -> list[tuple[str, dict[str, Any]]]:
    """Run :data:`CLEANUP_PIPELINE` on ``gm`` in place; return each pass's changes."""
    _, done = PassManager(CLEANUP_PIPELINE, **dump)(gm)
    return [(name, result.changes) for name, result in done]


def describe_pipeline() -> str:
    """The pipeline as printed by ``harmonica-compile show --passes``."""
    return __doc__.split("::", 1)[1].split("Each pass returns")[0].strip("\n")
