"""Refinement on the true final-image error: improve a schedule's mask and read branches against
the final-image MSE of cached vs full-compute sampling on a fixed calibration noise set.

The proxies of SDT/IEPO measure one step at a time, and cache error is strongly super-additive in
cache age; this search measures what matters, the final image, and keeps only what improves it:

1. **starts**: the given schedules (the trained one; FORA; TaylorSeer of order 1 and 2), brought
   to exactly the target number of cached entries, and a whole-step schedule found by dynamic
   programming over refresh points (LeMiCa / DPCache style: the cost of caching steps i+1..j-1
   from a refresh at step i is that segment's final error, measured); the best on the calibration
   set is the start;
2. **local search**: moves that keep the CUR exact (swap a computed and a cached entry, swap two
   steps' rows, move a refresh by one step) or change a cached entry's read branch (reuse,
   forecast order 1 or 2, when ``forecast="auto"``); a move is kept only if the calibration error
   goes down, so the result is never worse than its start on the calibration set;
3. ``max_cache_age`` caps the consecutive cached steps of every site in every start and move.

Evaluations reuse the trajectory prefix a move does not change (the states before every step of
the current best schedule are kept), and specialized graphs are kept per distinct step row. The
search checkpoints its state every few evaluations (atomically) and resumes deterministically.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..engine import GraphIO, StepEngine
from ..errors import ConfigError, ScheduleError, TrainingError
from ..io import atomic_write_json, load_json
from ..names import FORECAST_WEIGHTS, INPUT_NAMES, OUTPUT_NAMES
from ..sampling import generate, sample_set
from ..schedule import CacheSchedule, max_cache_age
from .runner import StepRunner

__all__ = ["CalibrationSet", "SearchResult", "refine_schedule"]

SEARCH_FORMAT = "harmonica-compile/search"
FORECASTS = ("none", "taylor1", "taylor2", "auto")
_KIND_OF = {"none": "reuse", "taylor1": "taylor1", "taylor2": "taylor2"}


class CalibrationSet:
    """The final-image error of schedules on fixed calibration noise, against full compute.

    ``error(schedule)`` samples the calibration images through the schedule (every step's
    specialized graph, driven by the step engine) and returns their MSE to the full-compute images
    of the same noise (both clamped to [-1, 1], as the evaluation compares them).
    """

    def __init__(self, spec: Any, num_steps: int, *, num: int, seed: int, cfg_scale: float | None = None):
        self.spec = spec
        self.cm = spec.cacheable()
        self.num_steps = num_steps
        self.sampler = spec.sampler(num_steps)
        self.cfg = spec.default_cfg_scale if cfg_scale is None else float(cfg_scale)
        self.runner = StepRunner(self.cm, spec, self.sampler, self.cfg)
        self.num, self.seed = num, seed
        self.noise, labels = sample_set(spec, num, seed)
        cond, null = spec.conditions(num, labels=labels) if labels is not None else spec.conditions(num, seed=seed)
        self.cond, self.null = cond, null
        self.reference, _ = generate(spec, num=num, steps=num_steps, cfg_scale=self.cfg, seed=seed, batch_size=num)
        self.timesteps = [float(t) for t in self.sampler.timesteps]
        self.sites = self.cm.site_names
        self._graphs: dict[tuple[Any, ...], tuple[Any, GraphIO]] = {}
        self.evaluations = 0

    def _graph(self, mask: tuple[bool, ...], kinds: tuple[str, ...]) -> tuple[Any, GraphIO]:
        """The step graph of one (mask, kinds) row, handing on every computed site (so that the
        history of every site is complete whatever later rows do)."""
        key = (mask, kinds)
        if key not in self._graphs:
            refresh = [s for s, m in zip(self.sites, mask, strict=True) if m]
            gm = self.cm.specialize(mask, refresh, kinds)
            n_in, n_out = len(self.cm.captured.input_names), len(self.cm.captured.output_names)
            io = GraphIO(tuple(gm.meta[INPUT_NAMES][n_in:]), tuple(gm.meta[OUTPUT_NAMES][n_out:]))
            self._graphs[key] = (gm, io)
        return self._graphs[key]

    def error(
        self, schedule: CacheSchedule, *, start: int = 0, states: list[Any] | None = None
    ) -> tuple[float, list[Any]]:
        """``(mse, states)``: the final-image MSE and the state before every step (from ``start``
        on, given the ``states`` of a schedule whose rows before ``start`` are the same)."""
        rows = list(zip(schedule.mask, schedule.branches, strict=True))
        keys: dict[tuple[Any, ...], int] = {}
        step_graph = [keys.setdefault(r, len(keys)) for r in rows]
        built = [self._graph(*r) for r in keys]
        weights = [{FORECAST_WEIGHTS: torch.tensor(schedule.forecast_weights(i))} for i in range(self.num_steps)]
        engine = StepEngine([io for _, io in built], step_graph, self.timesteps, history=2, step_inputs=weights)
        kept: list[Any] = list(states[:start]) if states is not None else []
        if start > 0:
            x, cache, filled, sampler_state = states[start]  # type: ignore[index]
            engine.cache, engine.filled_at, engine.next_step = dict(cache), dict(filled), start
            engine.batch = 2 * self.num if self.cfg != 1 else self.num
            self.sampler.restore(sampler_state)
        else:
            x = self.noise * self.sampler.init_noise_sigma
            self.sampler.start()
        channels = x.shape[1]

        def run(graph: int, flat: Sequence[torch.Tensor], cache_in: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            return list(built[graph][0](*flat, *cache_in))

        with torch.no_grad():
            for i in range(start, self.num_steps):
                kept.append((x, dict(engine.cache), dict(engine.filled_at), self.sampler.snapshot()))
                flat = self.runner.flat_inputs(x, i, self.cond, self.null)
                out = engine.step(self.timesteps[i], self.cm.captured.batch_of(flat), flat, run)[0]
                x = self.sampler.step(self.runner.eps(out, channels), i, x)
        self.evaluations += 1
        images = x.float().clamp(-1, 1)
        return float((images.double() - self.reference.double()).pow(2).mean()), kept


@dataclass
class SearchResult:
    schedule: CacheSchedule
    error: float
    start_name: str
    start_error: float
    starts: dict[str, float]
    evaluations: int
    accepted: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)


def _exact(mask: np.ndarray, n_cached: int, max_age: int | None, rng: np.random.Generator) -> np.ndarray:
    """``mask`` with exactly ``n_cached`` cached entries (never in step 0), within ``max_age``."""
    mask = mask.copy()
    steps, sites = mask.shape
    for _ in range(4 * steps * sites):
        cached = int((~mask).sum())
        if cached == n_cached:
            return mask
        if cached < n_cached:  # cache a computed entry, in the step that computes most
            cand = [(i, k) for i in range(1, steps) for k in range(sites) if mask[i, k]]
            order = sorted(cand, key=lambda e: (-int(mask[e[0]].sum()), rng.random()))
        else:  # compute a cached entry, in the step that caches most
            cand = [(i, k) for i in range(1, steps) for k in range(sites) if not mask[i, k]]
            order = sorted(cand, key=lambda e: (-int((~mask[e[0]]).sum()), rng.random()))
        for i, k in order:
            mask[i, k] = not mask[i, k]
            if max_age is None or max_cache_age(mask) <= max_age:
                break
            mask[i, k] = not mask[i, k]
        else:
            break
    if int((~mask).sum()) != n_cached:
        raise ConfigError(f"no mask caches exactly {n_cached} entries within max cache age {max_age}")
    return mask


def _schedule(template: CacheSchedule, mask: np.ndarray, kinds: np.ndarray, meta: dict[str, Any]) -> CacheSchedule:
    branches = [
        ["compute" if m else str(k) for m, k in zip(mrow, krow, strict=True)]
        for mrow, krow in zip(mask, kinds, strict=True)
    ]
    return CacheSchedule(mask.tolist(), template.sites, template.timesteps, meta, branches)


def _first_difference(a: CacheSchedule, b: CacheSchedule) -> int:
    for i, (ra, rb) in enumerate(
        zip(zip(a.mask, a.branches, strict=True), zip(b.mask, b.branches, strict=True), strict=True)
    ):
        if ra != rb:
            return i
    return len(a.mask)


def refine_schedule(
    spec: Any,
    starts: dict[str, CacheSchedule],
    *,
    target_cur: float,
    forecast: str = "auto",
    max_age: int | None = None,
    evaluations: int = 300,
    calibration: CalibrationSet | None = None,
    calibration_num: int = 32,
    calibration_seed: int = 0,
    seed: int = 0,
    dp_start: bool = True,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 25,
    resume: bool = False,
    progress: bool = True,
    on_progress: Callable[[int, float], None] | None = None,
) -> SearchResult:
    """Improve the best of ``starts`` on the calibration set; see the module docstring."""
    if forecast not in FORECASTS:
        raise ConfigError(f"forecast must be one of {', '.join(FORECASTS)}, got {forecast!r}")
    if max_age is not None and (isinstance(max_age, bool) or not isinstance(max_age, int) or max_age < 1):
        raise ConfigError(f"max cache age must be an integer >= 1, got {max_age!r}")
    if not starts:
        raise ConfigError("the search needs at least one start schedule")
    template = next(iter(starts.values()))
    for name, s in starts.items():
        if s.num_steps != template.num_steps or s.sites != template.sites:
            raise ScheduleError(f"start {name!r} has {s.num_steps} steps / {s.num_sites} sites, not the others'")
    steps, sites = template.num_steps, template.num_sites
    n_cached = round(target_cur * steps * sites)
    calib = calibration or CalibrationSet(spec, steps, num=calibration_num, seed=calibration_seed)
    fingerprint = {
        "model": spec.name,
        "sites": list(template.sites),
        "steps": steps,
        "target_cached": n_cached,
        "forecast": forecast,
        "max_age": max_age,
        "calibration": [calib.num, calib.seed],
        "seed": seed,
    }
    meta = {**dict(template.meta), "refine": "search", "forecast": forecast, "max_cache_age": max_age}
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    history: list[dict[str, Any]] = []
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if resume and ckpt is not None and ckpt.exists():
        state = load_json(ckpt, what="search checkpoint")
        if state.get("format") != SEARCH_FORMAT or state.get("fingerprint") != fingerprint:
            raise TrainingError(f"{ckpt} is a checkpoint of another search (model, steps, target or settings differ)")
        best = CacheSchedule.from_json(state["best"])
        best_err, start_name, start_err = float(state["best_error"]), state["start"], float(state["start_error"])
        start_errors, done, accepted = dict(state["starts"]), int(state["evaluations"]), int(state["accepted"])
        history = list(state["history"])
        rng.bit_generator.state = state["rng"]
        seconds_before = float(state["seconds"])
        _, best_states = calib.error(best)
    else:
        seconds_before, done, accepted = 0.0, 0, 0
        candidates: dict[str, CacheSchedule] = {}
        for name, s in starts.items():
            kinds_options = ["reuse", "taylor1", "taylor2"] if forecast == "auto" else [_KIND_OF[forecast]]
            if name.startswith("taylorseer"):
                kinds_options = [None]  # keep its own kinds
            for kind in kinds_options:
                mask = _exact(s.array(), n_cached, max_age, rng)
                kinds = (
                    np.array(s.branches, dtype=object) if kind is None else np.full((steps, sites), kind, dtype=object)
                )
                label = name if kind is None or len(kinds_options) == 1 else f"{name}+{kind}"
                candidates[label] = _schedule(template, mask, kinds, meta)
        if dp_start:
            candidates["dp"] = _dp_start(calib, template, n_cached, forecast, max_age, rng, meta)
        start_errors = {}
        best, best_err, best_states, start_name = None, float("inf"), None, ""
        for name, s in candidates.items():
            err, states = calib.error(s)
            start_errors[name] = err
            if err < best_err:
                best, best_err, best_states, start_name = s, err, states, name
        start_err = best_err
        history.append({"evaluation": calib.evaluations, "error": best_err, "move": f"start {start_name}"})
    assert best is not None and best_states is not None
    from tqdm import tqdm

    bar = tqdm(total=evaluations, initial=done, desc="refine (calibration MSE)", unit="eval", disable=not progress)
    while done < evaluations:
        move, candidate = _propose(best, forecast, max_age, rng, meta)
        done += 1
        bar.update(1)
        start = steps if candidate is None else _first_difference(best, candidate)
        if candidate is not None and start < steps:  # an unchanged or invalid candidate costs nothing
            err, states = calib.error(candidate, start=start, states=best_states)
            if err < best_err:
                best, best_err, best_states, accepted = candidate, err, states, accepted + 1
                history.append({"evaluation": done, "error": err, "move": move})
                bar.set_postfix(mse=f"{best_err:.3g}", kept=accepted)
        if on_progress is not None:
            on_progress(done, best_err)
        if ckpt is not None and (done % checkpoint_every == 0 or done == evaluations):
            atomic_write_json(
                ckpt,
                {
                    "format": SEARCH_FORMAT,
                    "version": 1,
                    "fingerprint": fingerprint,
                    "best": best.to_json(),
                    "best_error": best_err,
                    "start": start_name,
                    "start_error": start_err,
                    "starts": start_errors,
                    "evaluations": done,
                    "accepted": accepted,
                    "history": history,
                    "rng": rng.bit_generator.state,
                    "seconds": seconds_before + time.perf_counter() - t0,
                },
            )
    bar.close()
    final = best.with_meta(
        start=start_name, start_error=start_err, calibration_error=best_err, calibration_seed=calib.seed,
        calibration_num=calib.num,
    )  # fmt: skip
    return SearchResult(
        final, best_err, start_name, start_err, start_errors, done, accepted,
        seconds_before + time.perf_counter() - t0, history,
    )  # fmt: skip


def _propose(
    best: CacheSchedule, forecast: str, max_age: int | None, rng: np.random.Generator, meta: dict[str, Any]
) -> tuple[str, CacheSchedule | None]:
    """One random move that keeps the number of cached entries; ``None`` when it breaks a rule."""
    mask = best.array()
    kinds = np.array([["reuse" if k == "compute" else k for k in row] for row in best.branches], dtype=object)
    steps = mask.shape[0]
    r = rng.random()
    if forecast == "auto" and r < 0.25:
        cached = np.argwhere(~mask)
        i, k = cached[rng.integers(len(cached))]
        options = [o for o in ("reuse", "taylor1", "taylor2") if o != best.branches[i][k]]
        kinds[i, k] = options[rng.integers(len(options))]
        move = f"branch ({i}, {k}) -> {kinds[i, k]}"
    elif r < 0.6:
        computed = [tuple(e) for e in np.argwhere(mask) if e[0] > 0]
        cached = [tuple(e) for e in np.argwhere(~mask)]
        if not computed or not cached:
            return "swap", None
        a = computed[rng.integers(len(computed))]
        b = cached[rng.integers(len(cached))]
        mask[a], mask[b] = False, True
        kinds[a] = kinds[b] if forecast == "auto" else _KIND_OF.get(forecast, "reuse")
        move = f"swap {a} <-> {b}"
    elif r < 0.8:
        i, j = rng.choice(np.arange(1, steps), size=2, replace=False)
        mask[[i, j]] = mask[[j, i]]
        kinds[[i, j]] = kinds[[j, i]]
        move = f"rows {i} <-> {j}"
    else:
        i = int(rng.integers(1, steps - 1))
        mask[[i, i + 1]] = mask[[i + 1, i]]
        kinds[[i, i + 1]] = kinds[[i + 1, i]]
        move = f"shift {i} <-> {i + 1}"
    if max_age is not None and max_cache_age(mask) > max_age:
        return move, None
    return move, _schedule(best, mask, kinds, meta)


def _dp_start(
    calib: CalibrationSet,
    template: CacheSchedule,
    n_cached: int,
    forecast: str,
    max_age: int | None,
    rng: np.random.Generator,
    meta: dict[str, Any],
) -> CacheSchedule:
    """Whole-step caching by dynamic programming over refresh points: the cost of a segment (steps
    i+1..j-1 cached after a refresh at i) is the final error of caching only that segment; the DP
    picks the refresh points with the least total cost for ``n_cached // num_sites`` cached steps,
    and the remainder is filled entry by entry."""
    steps, sites = template.num_steps, template.num_sites
    kind = "taylor2" if forecast in ("auto", "taylor2") else _KIND_OF[forecast]
    longest = min(max_age or 4, steps - 1)
    full = np.ones((steps, sites), dtype=bool)
    base = _schedule(template, full, np.full((steps, sites), kind, dtype=object), meta)
    _, full_states = calib.error(base)
    cost: dict[tuple[int, int], float] = {}
    for i in range(steps):
        for length in range(1, longest + 1):
            j = i + length + 1
            if j > steps:
                break
            mask = full.copy()
            mask[i + 1 : j] = False
            s = _schedule(template, mask, np.full((steps, sites), kind, dtype=object), meta)
            cost[(i, j)], _ = calib.error(s, start=i + 1, states=full_states)
    m = n_cached // sites
    inf = float("inf")
    # dp[j][c]: least cost with step j computed, c cached steps before it
    dp = [[inf] * (m + 1) for _ in range(steps + 1)]
    back: dict[tuple[int, int], tuple[int, int]] = {}
    dp[0][0] = 0.0
    for j in range(1, steps + 1):
        for c in range(m + 1):
            best_v, best_b = inf, None
            for length in range(0, longest + 1):
                i = j - length - 1
                if i < 0 or c - length < 0 or dp[i][c - length] == inf:
                    continue
                v = dp[i][c - length] + (cost.get((i, j), inf) if length else 0.0)
                if v < best_v:
                    best_v, best_b = v, (i, c - length)
            dp[j][c] = best_v
            if best_b is not None:
                back[(j, c)] = best_b
    mask = full.copy()
    if dp[steps][m] < inf:
        j, c = steps, m
        while j > 0:
            i, c_prev = back[(j, c)]
            mask[i + 1 : j] = False
            j, c = i, c_prev
    mask = _exact(mask, n_cached, max_age, rng)
    return _schedule(template, mask, np.full((steps, sites), kind, dtype=object), {**meta, "dp": True})
