"""Graph passes, one per file, and the pipelines they run in.

``harmonica-compile show --passes`` prints the pipeline (:func:`describe_pipeline`)::

    capture (torch.export, no pass)
    prepare(): one PassManager
      remove_guards, remove_assertions, remove_eval_dropout, hoist_symbolic_sizes,
      eliminate_dead_code (the clean-up), flatten_inputs_outputs, find_cache_sites (analysis)
    then, per use:
      insert_cache_branches (training, reference), specialize (one graph per step mask),
      lower_precision (``dtype="bf16"``/``"fp16"`` only: token matmuls in that dtype)

Each pass returns a :class:`PassResult` and is checked around its run (its ``requires``,
``Graph.lint()``, the invariants in ``README.md`` next to this file, its ``ensures``).
"""

from __future__ import annotations

from .eliminate_dead_code import EliminateDeadCode, eliminate_dead_code
from .find_cache_sites import FindCacheSites, find_sites
from .flatten_inputs_outputs import FlattenInputsOutputs
from .hoist_symbolic_sizes import HoistSymbolicSizes
from .infra import (
    GraphPass,
    PassManager,
    PassResult,
    check_graph,
    clone_graph_module,
    describe_passes,
    graph_text,
    input_names,
    output_names,
    stamp,
)
from .insert_cache_branches import InsertCacheBranches
from .lower_precision import LowerPrecision
from .remove_assertions import RemoveAssertions
from .remove_eval_dropout import RemoveEvalDropout
from .remove_guards import RemoveGuards
from .site_rules import BUILTIN_RULES
from .sites import CacheSite, SiteRule
from .specialize import Specialize

__all__ = [
    "BUILTIN_RULES",
    "CLEANUP_PIPELINE",
    "PER_USE_PASSES",
    "PREPARE_PASSES",
    "CacheSite",
    "EliminateDeadCode",
    "FindCacheSites",
    "FlattenInputsOutputs",
    "GraphPass",
    "HoistSymbolicSizes",
    "InsertCacheBranches",
    "LowerPrecision",
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
    "stamp",
]

#: The clean-up passes, in order (the first part of ``prepare``'s pipeline).
CLEANUP_PIPELINE: tuple[GraphPass, ...] = (
    RemoveGuards(),
    RemoveAssertions(),
    RemoveEvalDropout(),
    HoistSymbolicSizes(),
    EliminateDeadCode(),
)
#: The pass classes ``prepare`` runs, in order (it builds the last two for the captured model).
PREPARE_PASSES: tuple[type[GraphPass], ...] = (
    *(type(p) for p in CLEANUP_PIPELINE),
    FlattenInputsOutputs,
    FindCacheSites,
)
#: Passes run per use of a prepared model: routed graphs (training), one graph per step mask, and
#: (``dtype=`` only) that graph's token matmuls in bf16/fp16.
PER_USE_PASSES: tuple[type[GraphPass], ...] = (InsertCacheBranches, Specialize, LowerPrecision)


def describe_pipeline() -> str:
    """The pipeline as ``harmonica-compile show --passes`` prints it, from the pass lists themselves."""
    return "\n".join(
        [
            "capture (torch.export; no pass)",
            "prepare(): one PassManager",
            describe_passes(PREPARE_PASSES),
            "then, per use:",
            describe_passes(PER_USE_PASSES, start=len(PREPARE_PASSES) + 1),
        ]
    )
