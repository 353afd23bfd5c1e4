"""CachedModel: the stateful drop-in module that runs a cache schedule over specialized graphs.

A sampling run is a sequence of calls: the i-th call runs step i's specialized graph, feeding it the
cached site values it reads and storing the ones it refreshes. A run ends after ``num_steps``
calls or on :meth:`CachedModel.reset`. If the schedule carries timesteps, the step is found from
the timestep passed in (an unknown timestep is an error, and the first timestep starts a new run).
That state machine is the :class:`~harmonica_compile.engine.StepEngine` every runtime shares
(``cached.engine``; observers subscribe with ``cached.engine.add_hook``).

``compile=True`` runs every step graph through ``torch.compile`` (see
:mod:`harmonica_compile.compiling`): ``warmup()`` compiles them all up front, ``compile_seconds``
and ``compile_report()`` say what it cost and where it fell back.

``dtype="bf16"`` (or ``"fp16"``) runs every graph's token matmuls (linears, convolutions,
attention) in that dtype and keeps norms, softmax, the adaLN modulation and the caches in fp32
(see :mod:`harmonica_compile.passes.lower_precision`); it combines with ``compile=True``.

Example:
    >>> import torch
    >>> from harmonica_compile import CacheSchedule, optimize
    >>> from harmonica_compile.models import DiT_models
    >>> m = DiT_models["DiT-S/8"](input_size=16, num_classes=10).eval()
    >>> m.blocks = m.blocks[:2]
    >>> x, y = torch.randn(2, 4, 16, 16), torch.tensor([1, 10])
    >>> sites = ["blocks.0.attn", "blocks.0.mlp", "blocks.1.attn", "blocks.1.mlp"]
    >>> cached = optimize(m, (x, torch.tensor([9, 9]), y), schedule=CacheSchedule.fora(sites, 4, 2))
    >>> outs = [cached(x, torch.full((2,), t), y) for t in (999, 666, 333, 0)]
    >>> cached.num_graphs, round(cached.schedule.cur, 2)
    (2, 0.5)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import fx, nn

from .cacheable import CacheableModel, count_flops
from .compiling import StepCompiler
from .engine import GraphIO, StepEngine
from .errors import NumericalError, ScheduleError
from .names import FORECAST_WEIGHTS, INPUT_NAMES, KINDS, OUTPUT_NAMES
from .passes import CacheSite
from .passes.lower_precision import LowerPrecision, resolve_dtype
from .schedule import CacheSchedule

__all__ = ["CachedModel"]


class CachedModel(nn.Module):
    """Runs ``schedule`` over ``cacheable``'s specialized graphs; see the module docstring."""

    def __init__(
        self,
        cacheable: CacheableModel,
        schedule: CacheSchedule,
        *,
        check_finite: bool = False,
        compile: bool = False,
        compile_mode: str | None = None,
        dtype: str | torch.dtype | None = None,
    ):
        super().__init__()
        schedule.check_sites(cacheable.site_names, what=f"the model ({cacheable.captured.model_class})")
        self.cacheable = cacheable
        self.schedule = schedule
        self.check_finite = check_finite
        groups = schedule.step_groups()
        refresh: dict[int, set[str]] = {}
        for step, g in enumerate(groups):
            refresh.setdefault(g, set()).update(schedule.refreshed_sites(step))
        first = {g: step for step, g in reversed(list(enumerate(groups)))}
        graphs = [
            cacheable.specialize(schedule.mask[first[g]], sorted(refresh[g]), schedule.branches[first[g]])
            for g in range(len(first))
        ]
        #: The dtype of the token matmuls: fp32 unless ``dtype=`` (see :mod:`..passes.lower_precision`).
        self.dtype = resolve_dtype(dtype)
        if self.dtype != torch.float32:
            lower = LowerPrecision(self.dtype, {})  # one table: every graph reads the same low-precision weights
            graphs = [lower(gm).graph_module for gm in graphs]
        self.graphs = nn.ModuleList(graphs)
        self._num_model_inputs = len(cacheable.captured.input_names)
        self._num_model_outputs = len(cacheable.captured.output_names)
        self._timestep_index = cacheable.captured.timestep_input()
        io = [
            GraphIO(
                tuple(gm.meta[INPUT_NAMES][self._num_model_inputs :]),
                tuple(gm.meta[OUTPUT_NAMES][self._num_model_outputs :]),
            )
            for gm in self.graphs
        ]
        timesteps = schedule.timesteps if self._timestep_index is not None else None
        step_inputs = None
        if schedule.uses_forecast:
            step_inputs = [
                {FORECAST_WEIGHTS: torch.tensor(schedule.forecast_weights(i), dtype=torch.float64)}
                for i in range(schedule.num_steps)
            ]
        #: The run's state: step from timestep, the cache and its refresh rule (shared by every runtime).
        self.engine = StepEngine(io, groups, timesteps, history=schedule.history_depth, step_inputs=step_inputs)
        self._flops: dict[int, int] = {}
        #: ``torch.compile`` of the step graphs when ``compile=True`` (see :mod:`harmonica_compile.compiling`).
        self.compiler = StepCompiler(compile_mode) if compile or compile_mode is not None else None

    # ------------------------------------------------------------------ facts
    @property
    def sites(self) -> tuple[str, ...]:
        """Site names, in the schedule's (and every graph's input) order."""
        return self.cacheable.site_names

    @property
    def site_info(self) -> tuple[CacheSite, ...]:
        return self.cacheable.sites

    @property
    def num_steps(self) -> int:
        return self.schedule.num_steps

    @property
    def num_graphs(self) -> int:
        return len(self.graphs)

    @property
    def step(self) -> int:
        """The step the next call will run (when steps are counted by calls)."""
        return self.engine.next_step

    def graph_of_step(self, step: int) -> int:
        self._check_step(step)
        return self.engine.step_graph[step]

    def step_module(self, step: int) -> fx.GraphModule:
        """The specialized graph that runs at ``step``."""
        return self.graphs[self.graph_of_step(step)]  # type: ignore[return-value]

    def _check_step(self, step: int) -> None:
        if not isinstance(step, int) or not 0 <= step < self.num_steps:
            raise ScheduleError(f"step must be an integer in [0, {self.num_steps}), got {step!r}")

    def graph_flops(self, graph: int) -> int:
        """FLOPs of graph ``graph`` at the capture's example batch: ``torch.utils.flop_counter``'s
        (matmuls, convolutions, attention), plus a forecast branch's multiply-adds, which it skips."""
        if graph not in self._flops:
            gm = self.graphs[graph]
            inputs = self.cacheable.step_inputs(gm, self.cacheable.captured.example_inputs)  # type: ignore[arg-type]
            self._flops[graph] = count_flops(gm, inputs) + self._forecast_flops(gm)
        return self._flops[graph]

    def _forecast_flops(self, gm: fx.GraphModule) -> int:
        batch = self.cacheable.captured.batch_size
        orders = {"taylor1": 1, "taylor2": 2}
        total = 0
        for site, kind in zip(self.site_info, gm.meta.get(KINDS, ()), strict=False):
            order = orders.get(kind, 0)
            for j in range(site.num_outputs if order else 0):
                numel = 1
                for d in self.cacheable.cache_shape(site, j, batch):
                    numel *= max(int(d), 1)
                total += numel * (2 * (order + 1) - 1)  # order + 1 multiplies, order adds
        return total

    def flops(self, step: int) -> int:
        """FLOPs of ``step``'s graph at the capture's example batch (``torch.utils.flop_counter``)."""
        return self.graph_flops(self.graph_of_step(step))

    @property
    def flops_full(self) -> int:
        """FLOPs of one full-compute step at the same batch."""
        return self.cacheable.flops_full

    @property
    def theoretical_speedup(self) -> float:
        """Full-compute FLOPs of the whole schedule over its cached FLOPs."""
        cached = sum(self.flops(i) for i in range(self.num_steps))
        return self.flops_full * self.num_steps / max(cached, 1)

    def extra_repr(self) -> str:
        return (
            f"model={self.cacheable.captured.model_class}, steps={self.num_steps}, sites={len(self.sites)}, "
            f"graphs={self.num_graphs}, cur={self.schedule.cur:.3f}"
            + (f", dtype={str(self.dtype).removeprefix('torch.')}" if self.dtype != torch.float32 else "")
            + (", compiled" if self.compiler else "")
        )

    @property
    def compile_seconds(self) -> float:
        """Seconds spent compiling so far (0 when not compiled); run time excludes them."""
        return self.compiler.seconds if self.compiler is not None else 0.0

    def compile_report(self) -> list[dict[str, Any]]:
        """Per compiled graph and device: seconds, recompiles, cache hits, graph breaks, fallback."""
        return self.compiler.report() if self.compiler is not None else []

    def warmup(self, example_inputs: Any = None) -> dict[int, float]:
        """Compile every step graph now (when compiled) by running each once on ``example_inputs``
        (default: the capture's) with a zero cache; returns the compile seconds per graph. The
        run's state is left as it was."""
        if self.compiler is None:
            return {}
        captured = self.cacheable.captured
        if example_inputs is None:
            flat = list(captured.example_inputs)
        elif isinstance(example_inputs, dict):
            flat = captured.flatten_inputs((), example_inputs)
        else:
            flat = captured.flatten_inputs(tuple(example_inputs), {})
        before = {g: self._graph_seconds(g) for g in range(self.num_graphs)}
        first = {g: step for step, g in reversed(list(enumerate(self.engine.step_graph)))}
        with torch.no_grad():
            for g, gm in enumerate(self.graphs):
                inputs = self.cacheable.step_inputs(gm, flat)  # type: ignore[arg-type]
                if gm.meta[INPUT_NAMES][-1] == FORECAST_WEIGHTS:  # the dtype real steps feed (no recompile)
                    inputs[-1] = self.engine.step_inputs[first[g]][FORECAST_WEIGHTS]  # type: ignore[index]
                self.compiler.run(g, gm, [t.to(flat[0].device) for t in inputs])
        return {g: self._graph_seconds(g) - before[g] for g in range(self.num_graphs)}

    def _graph_seconds(self, graph: int) -> float:
        assert self.compiler is not None
        return sum(r.seconds for (g, _), r in self.compiler.records.items() if g == graph)

    # ------------------------------------------------------------------ running
    def reset(self) -> None:
        """Forget the cache and start a new sampling run at step 0."""
        self.engine.reset()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        captured = self.cacheable.captured
        flat = captured.flatten_inputs(args, kwargs)
        timestep = None
        if self._timestep_index is not None:
            t = flat[self._timestep_index]
            timestep = float(t.reshape(-1)[0].item()) if t.numel() else float("nan")
        outs = self.engine.step(timestep, captured.batch_of(flat), flat, self._run_graph)
        return captured.unflatten_outputs(outs)

    def _run_graph(self, graph: int, flat: Sequence[torch.Tensor], cache_in: Sequence[torch.Tensor]) -> list[Any]:
        gm = self.graphs[graph]
        if cache_in and gm.meta[INPUT_NAMES][-1] == FORECAST_WEIGHTS:  # the schedule's weights, on the inputs' device
            cache_in = [*cache_in[:-1], cache_in[-1].to(flat[0].device)]
        if self.compiler is not None:
            outs = self.compiler.run(graph, gm, [*flat, *cache_in])
        else:
            outs = list(gm(*flat, *cache_in))
        if self.check_finite:
            names = gm.meta[INPUT_NAMES][self._num_model_inputs :]
            out_names = gm.meta[OUTPUT_NAMES][self._num_model_outputs :]
            refreshed = list(zip(out_names, outs[self._num_model_outputs :], strict=True))
            step = int(self.engine.current)  # type: ignore[arg-type]
            self._check_finite(step, flat, cache_in, names, outs[: self._num_model_outputs], refreshed)
        return outs

    def _check_finite(
        self,
        step: int,
        flat: Sequence[torch.Tensor],
        cache_in: Sequence[torch.Tensor],
        cache_names: Sequence[str],
        model_outs: Sequence[torch.Tensor],
        refreshed: Sequence[tuple[str, torch.Tensor]],
    ) -> None:
        """Raise :class:`NumericalError` naming the step and the site where NaN/Inf first appears."""
        for name, x in zip(self.cacheable.captured.input_names, flat, strict=True):
            if x.is_floating_point() and not torch.isfinite(x).all():
                raise NumericalError(f"step {step}: input '{name}' holds NaN or Inf before the model ran")
        for name, x in zip(cache_names, cache_in, strict=True):
            if not torch.isfinite(x).all():
                raise NumericalError(
                    f"step {step}: cached '{name}' (from step {self.engine.filled_at.get(name)}) holds NaN or Inf"
                )
        bad_refresh = any(not torch.isfinite(x).all() for _, x in refreshed)
        bad_output = any(not torch.isfinite(x).all() for x in model_outs)
        if not (bad_refresh or bad_output):
            return
        site = self._first_non_finite_site(step, flat, cache_in, cache_names)
        where = f"first in site '{site}'" if site else "outside every cache site (embeddings or final layer)"
        if self.dtype != torch.float32:
            where += f" (site found by re-running in fp32; this model computes in {self.dtype})"
        raise NumericalError(
            f"step {step}: NaN or Inf appeared {where}, with finite inputs and cache; check the model's "
            "weights and dtype (fp16 overflow is the usual cause)"
        )

    def _first_non_finite_site(
        self, step: int, flat: Sequence[torch.Tensor], cache_in: Sequence[torch.Tensor], cache_names: Sequence[str]
    ) -> str | None:
        """Re-run the step on the hard-routed graph, which returns every site's fresh value, and
        return the first site (in execution order) whose value is not finite."""
        cm = self.cacheable
        hard = cm.routed("hard")
        given = dict(zip(cache_names, cache_in, strict=True))
        cache = [given.get(n, z) for n, z in cm.example_cache(cm.captured.batch_of(flat), flat[0].device).items()]
        mask = torch.tensor(self.schedule.mask[step], device=flat[0].device)
        with torch.no_grad():
            outs = hard(*flat, *cache, mask)
        fresh = outs[len(cm.captured.output_names) :]
        slots = [(s, m) for s, m in zip(cm.sites, self.schedule.mask[step], strict=True) for _ in range(s.num_outputs)]
        for (site, computed), value in zip(slots, fresh, strict=True):
            if computed and not torch.isfinite(value).all():
                return site.name
        return None
