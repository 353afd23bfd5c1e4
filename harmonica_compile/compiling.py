"""``torch.compile`` for a CachedModel's step graphs: ``CachedModel(..., compile=True)``.

Each specialized step graph is compiled on its first call (inductor; on the CPU it writes C++ and
needs a C++ compiler). What is known of the compile is kept per graph in a :class:`CompileRecord`:
the seconds of the calls that compiled (the first call, and a recompile when a new batch size
arrives), the graph breaks dynamo reported, inductor FX-graph cache hits, and whether the graph
fell back to eager and why.

- Shapes: on the CPU ``dynamic=None`` (torch's automatic dynamic shapes: the first batch size is
  compiled static, a second one recompiles once with a symbolic batch). On CUDA the default mode
  is ``"reduce-overhead"`` (CUDA graphs), which records one graph per batch size (static shapes).
- Cached across runs: inductor's FX graph cache (``torch._inductor.config.fx_graph_cache``, on by
  default; ``TORCHINDUCTOR_CACHE_DIR`` moves it) keys compiled code by the graph's content, so a
  second process compiling the same schedule loads it (``cache_hits``) instead of compiling again.
  Graphs of one schedule differ in what they compute, so they do not share code within a run.
- CUDA graphs replay into static output buffers that the next replay overwrites; the engine
  keeps cache values across steps, so under CUDA graphs every output is cloned once per step.
- Fallback: a graph whose compile fails (no C++ compiler, an inductor error) runs eagerly; the
  first failure warns once with the reason, and the record keeps it (``fell_back``).

Example:
    >>> compiler = StepCompiler()
    >>> compiler.mode_for("cpu"), compiler.mode_for("cuda")
    ('default', 'reduce-overhead')
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

__all__ = ["CompileRecord", "StepCompiler"]

CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


@dataclass
class CompileRecord:
    """What compiling one step graph cost and did."""

    graph: int
    device: str
    mode: str
    #: Seconds of the calls that compiled (each includes one run of the graph).
    seconds: float = 0.0
    compiles: int = 0
    #: Inductor FX-graph cache hits during those calls (compiled code loaded from an earlier run).
    cache_hits: int = 0
    #: Dynamo's graph-break reasons and counts (none expected: step graphs are plain aten graphs).
    graph_breaks: dict[str, int] = field(default_factory=dict)
    #: Why the graph runs eagerly instead, or ``None``.
    fell_back: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _counters() -> Any:
    from torch._dynamo.utils import counters

    return counters


def _snapshot() -> tuple[int, int, dict[str, int]]:
    c = _counters()
    return sum(c["frames"].values()), int(c["inductor"].get("fxgraph_cache_hit", 0)), dict(c["graph_break"])


class StepCompiler:
    """Compiles step graphs on first use and runs them; one per CachedModel (see the module docstring).

    ``mode`` is ``torch.compile``'s mode; ``None`` picks ``"reduce-overhead"`` (CUDA graphs) on CUDA
    and the default mode on the CPU. ``options`` are inductor options passed to ``torch.compile``.
    """

    def __init__(self, mode: str | None = None, options: dict[str, Any] | None = None):
        self.mode = mode
        self.options = dict(options or {})
        self.records: dict[tuple[int, str], CompileRecord] = {}
        self._compiled: dict[tuple[int, str], Callable[..., Any]] = {}
        self._warned = False

    def mode_for(self, device: str) -> str:
        if self.mode is not None:
            return self.mode
        return "reduce-overhead" if device == "cuda" else "default"

    def _function(self, graph: int, gm: torch.nn.Module, device: str) -> Callable[..., Any]:
        key = (graph, device)
        if key not in self._compiled:
            # torch.compile takes a mode or inductor options, not both; options mean no CUDA graphs
            mode = self.mode_for(device) if not self.options else "options"
            options: dict[str, Any] = {"mode": mode} if not self.options else {"options": self.options}
            dynamic = False if mode in CUDA_GRAPH_MODES and device == "cuda" else None
            self._compiled[key] = torch.compile(gm, dynamic=dynamic, **options)
            self.records[key] = CompileRecord(graph, device, mode)
        return self._compiled[key]

    def run(self, graph: int, gm: torch.nn.Module, inputs: Sequence[torch.Tensor]) -> list[Any]:
        """Run graph ``graph`` (module ``gm``) on ``inputs``, compiled; eagerly if its compile failed."""
        device = inputs[0].device.type if inputs else "cpu"
        fn = self._function(graph, gm, device)
        record = self.records[(graph, device)]
        if record.fell_back is not None:
            return list(gm(*inputs))
        cuda_graphs = device == "cuda" and record.mode in CUDA_GRAPH_MODES
        if cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        frames, hits, breaks = _snapshot()
        start = time.perf_counter()
        try:
            outs = list(fn(*inputs))
        except Exception as e:  # a compile failure falls back; anything else (bad inputs) is raised as it is
            if record.compiles or not _is_compile_failure(e):
                raise
            record.fell_back = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
            if not self._warned:
                warnings.warn(
                    f"torch.compile failed on step graph {graph} ({record.fell_back}); running it eagerly. "
                    "On the CPU inductor needs a C++ compiler (g++ or clang) on PATH",
                    RuntimeWarning,
                    stacklevel=3,
                )
                self._warned = True
            return list(gm(*inputs))
        now_frames, now_hits, now_breaks = _snapshot()
        if now_frames != frames:  # dynamo compiled (or recompiled) during this call
            record.compiles += 1
            record.seconds += time.perf_counter() - start
            record.cache_hits += now_hits - hits
            for reason, n in now_breaks.items():
                if n - breaks.get(reason, 0) > 0:
                    record.graph_breaks[reason] = record.graph_breaks.get(reason, 0) + n - breaks.get(reason, 0)
        if cuda_graphs:  # the next replay overwrites these buffers; the engine keeps cache values
            outs = [o.clone() if isinstance(o, torch.Tensor) else o for o in outs]
        return outs

    @property
    def seconds(self) -> float:
        """Seconds spent in calls that compiled, over every graph."""
        return sum(r.seconds for r in self.records.values())

    def report(self) -> list[dict[str, Any]]:
        return [r.to_dict() for _, r in sorted(self.records.items())]


def _is_compile_failure(e: Exception) -> bool:
    """Whether ``e`` came from dynamo or inductor (rather than from the graph's own computation)."""
    module = type(e).__module__ or ""
    return module.startswith(("torch._dynamo", "torch._inductor")) or "BackendCompilerFailed" in type(e).__name__
