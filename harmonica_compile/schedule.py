"""CacheSchedule: which site each step computes (True) or reads from the cache (False), and how.

A schedule is a boolean mask ``[num_steps, num_sites]`` over named sites, optionally with the
timestep of each step (then the step a model call belongs to is found from its timestep value).
The first step must compute every site: the cache is empty before it.

A cached entry has a read branch (``branches``, a kind per step and site):

- ``reuse``: the site's last computed value (FORA, L2C, HarmoniCa);
- ``taylor1`` / ``taylor2``: a forecast from its last two / three computed values, the polynomial
  through them (in step index) evaluated at this step: TaylorSeer's finite-difference
  extrapolation. ``taylor1`` at step i from values c1, c2 computed at steps s1 > s2 is
  ``c1 + (i - s1) / (s1 - s2) * (c1 - c2)``.

A forecast needs that many earlier computed values: where there are fewer (the first steps),
the entry falls back to the highest order there is (down to reuse), when the schedule is made.
Computed entries are ``compute``. Format version 2 stores the kinds; version-1 files (reuse only)
still load.

Example:
    >>> s = CacheSchedule.fora(["blocks.0.attn", "blocks.0.mlp"], num_steps=4, interval=2)
    >>> s.mask
    ((True, True), (False, False), (True, True), (False, False))
    >>> s.cur
    0.5
    >>> CacheSchedule.from_json(s.to_json()) == s
    True
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ArtifactError, ScheduleError
from .io import atomic_write_json, canonical_checksum, load_json

__all__ = [
    "BRANCH_KINDS",
    "FORECAST_ORDER",
    "SCHEDULE_FORMAT",
    "SCHEDULE_VERSION",
    "TIMESTEP_RTOL",
    "CacheSchedule",
    "find_step",
    "lagrange_weights",
    "max_cache_age",
    "same_timestep",
]

SCHEDULE_FORMAT = "harmonica-compile/schedule"
SCHEDULE_VERSION = 2
READABLE_VERSIONS = (1, 2)
#: Read-branch kinds of a schedule entry; a computed entry is ``compute``.
BRANCH_KINDS = ("compute", "reuse", "taylor1", "taylor2")
#: How many older values a cached entry's branch reads beyond the last one.
FORECAST_ORDER = {"reuse": 0, "taylor1": 1, "taylor2": 2}
_KIND_OF_ORDER = {v: k for k, v in FORECAST_ORDER.items()}


def max_cache_age(mask: Any) -> int:
    """The longest run of consecutive cached steps of any site in a ``[steps, sites]`` mask.

    Example:
        >>> max_cache_age([[1, 1], [0, 1], [0, 0], [1, 0]])
        2
    """
    rows = np.asarray(mask, dtype=bool)
    longest = 0
    run = np.zeros(rows.shape[1], dtype=np.int64)
    for row in rows:
        run = np.where(row, 0, run + 1)
        longest = max(longest, int(run.max(initial=0)))
    return longest


def lagrange_weights(at: int, nodes: Sequence[int]) -> tuple[float, ...]:
    """Weights ``w`` with ``p(at) = sum_j w_j p(nodes[j])`` for the polynomial ``p`` of degree
    ``len(nodes) - 1`` through the nodes (step indices, most recent first).

    Example:
        >>> lagrange_weights(5, [4, 2])  # first order: c1 + (5 - 4) / (4 - 2) * (c1 - c2)
        (1.5, -0.5)
    """
    out = []
    for j, xj in enumerate(nodes):
        w = 1.0
        for m, xm in enumerate(nodes):
            if m != j:
                w *= (at - xm) / (xj - xm)
        out.append(w)
    return tuple(out)


#: Two timesteps are the same step when they differ by at most this, relative (absolute below 1):
#: samplers hand the model integer or float timesteps, sometimes rounded differently.
TIMESTEP_RTOL = 1e-4


def same_timestep(a: float, b: float) -> bool:
    """Whether timestep ``a`` is timestep ``b`` (within :data:`TIMESTEP_RTOL`)."""
    return abs(float(a) - float(b)) <= TIMESTEP_RTOL * max(1.0, abs(float(b)))


def find_step(timesteps: Sequence[float], t: float, *, expected: int | None = None, owner: str | None = None) -> int:
    """The index of timestep ``t`` in ``timesteps``; ``expected`` wins if several match, else the
    first match from ``expected`` on. ``owner`` names what the timesteps belong to in the error
    (default: this schedule).

    Example:
        >>> find_step([999.0, 500.0, 0.0], 500)
        1
    """
    matches = [i for i, ts in enumerate(timesteps) if same_timestep(t, ts)]
    if not matches:
        n = len(timesteps)
        shown = ", ".join(f"{v:g}" for v in list(timesteps)[:8]) + (", ..." if n > 8 else "")
        whose = f"the {n} timesteps of {owner}" if owner else f"this schedule's {n} timesteps"
        raise ScheduleError(
            f"timestep {float(t):g} is not one of {whose} ({shown}); it was made for another sampler or step count"
        )
    if expected is not None and expected in matches:
        return expected
    later = [i for i in matches if expected is None or i >= expected]
    return later[0] if later else matches[0]


def _as_mask(mask: Any) -> tuple[tuple[bool, ...], ...]:
    if isinstance(mask, np.ndarray) or hasattr(mask, "tolist"):
        mask = mask.tolist()
    if not isinstance(mask, Sequence) or isinstance(mask, str | bytes):
        raise ScheduleError(f"mask must be a list of rows of booleans, got {type(mask).__name__}")
    rows = []
    for i, row in enumerate(mask):
        if not isinstance(row, Sequence) or isinstance(row, str | bytes):
            raise ScheduleError(f"mask row {i} must be a list of booleans, got {type(row).__name__}")
        out = []
        for j, v in enumerate(row):
            if isinstance(v, bool | np.bool_) or (isinstance(v, int | np.integer) and v in (0, 1)):
                out.append(bool(v))
            else:
                raise ScheduleError(f"mask[{i}][{j}] must be true or false, got {v!r}")
        rows.append(tuple(out))
    return tuple(rows)


@dataclass(frozen=True)
class CacheSchedule:
    """A per-step cache plan; see the module docstring. Instances are immutable and hashable."""

    mask: tuple[tuple[bool, ...], ...]
    sites: tuple[str, ...]
    timesteps: tuple[float, ...] | None = None
    #: Free-form facts (method, model, target CUR, ...); saved with the schedule.
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    #: Per step and site: ``compute`` where the mask computes, else the read branch (module docstring).
    branches: tuple[tuple[str, ...], ...] = ()

    def __init__(
        self,
        mask: Any,
        sites: Sequence[str],
        timesteps: Sequence[float] | None = None,
        meta: Mapping[str, Any] | None = None,
        branches: Any = None,
    ):
        mask_t = _as_mask(mask)
        if isinstance(sites, str) or not all(isinstance(s, str) for s in sites):
            raise ScheduleError(f"sites must be a list of site names, got {sites!r}")
        sites_t = tuple(sites)
        if not sites_t:
            raise ScheduleError("a schedule needs at least one site")
        if len(set(sites_t)) != len(sites_t):
            dup = sorted({s for s in sites_t if sites_t.count(s) > 1})
            raise ScheduleError(f"site names must be unique, got duplicates {dup}")
        if not mask_t:
            raise ScheduleError("a schedule needs at least one step (mask has no rows)")
        for i, row in enumerate(mask_t):
            if len(row) != len(sites_t):
                raise ScheduleError(f"mask row {i} has {len(row)} entries, expected one per site ({len(sites_t)})")
        if not all(mask_t[0]):
            cached = [s for s, m in zip(sites_t, mask_t[0], strict=True) if not m]
            raise ScheduleError(
                f"the first step must compute every site (the cache is empty before it), but it caches {cached}"
            )
        ts: tuple[float, ...] | None = None
        if timesteps is not None:
            try:
                ts = tuple(float(t) for t in timesteps)
            except (TypeError, ValueError) as e:
                raise ScheduleError(f"timesteps must be numbers, got {timesteps!r}") from e
            if len(ts) != len(mask_t):
                raise ScheduleError(f"{len(ts)} timesteps for {len(mask_t)} steps; give one timestep per step")
            if any(not np.isfinite(t) for t in ts):
                raise ScheduleError(f"timesteps must be finite, got {list(ts)}")
        object.__setattr__(self, "mask", mask_t)
        object.__setattr__(self, "sites", sites_t)
        object.__setattr__(self, "timesteps", ts)
        object.__setattr__(self, "meta", dict(meta or {}))
        object.__setattr__(self, "branches", _as_branches(branches, mask_t, sites_t))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def all_compute(
        cls, sites: Sequence[str], num_steps: int, timesteps: Sequence[float] | None = None, **meta: Any
    ) -> CacheSchedule:
        """Every site computed at every step (the full-compute reference)."""
        _check_steps(num_steps)
        return cls([[True] * len(sites)] * num_steps, sites, timesteps, {"method": "full", **meta})

    @classmethod
    def taylorseer(
        cls,
        sites: Sequence[str],
        num_steps: int,
        interval: int,
        order: int = 2,
        timesteps: Sequence[float] | None = None,
        **meta: Any,
    ) -> CacheSchedule:
        """TaylorSeer: FORA's static interval, every cached entry forecast with order ``order``
        (1 or 2) finite differences from the last computed values (lower where history is short)."""
        if order not in (1, 2):
            raise ScheduleError(f"TaylorSeer's order must be 1 or 2, got {order!r}")
        base = cls.fora(sites, num_steps, interval, timesteps)
        branches = [["compute" if m else f"taylor{order}" for m in row] for row in base.mask]
        meta = {"method": "taylorseer", "interval": interval, "order": order, **meta}
        return cls(base.mask, sites, timesteps, meta, branches)

    @classmethod
    def fora(
        cls, sites: Sequence[str], num_steps: int, interval: int, timesteps: Sequence[float] | None = None, **meta: Any
    ) -> CacheSchedule:
        """FORA: every site recomputed every ``interval`` steps (steps 0, N, 2N, ...), reused in between."""
        _check_steps(num_steps)
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ScheduleError(f"interval must be an integer >= 1, got {interval!r}")
        mask = [[i % interval == 0] * len(sites) for i in range(num_steps)]
        return cls(mask, sites, timesteps, {"method": "fora", "interval": interval, **meta})

    # ------------------------------------------------------------------ facts
    @property
    def num_steps(self) -> int:
        return len(self.mask)

    @property
    def num_sites(self) -> int:
        return len(self.sites)

    @property
    def cur(self) -> float:
        """Cache Usage Ratio: the share of (step, site) decisions that read the cache."""
        total = self.num_steps * self.num_sites
        return sum(row.count(False) for row in self.mask) / total

    def array(self) -> np.ndarray:
        """The mask as a ``[num_steps, num_sites]`` bool array."""
        return np.array(self.mask, dtype=bool)

    @property
    def uses_forecast(self) -> bool:
        return any(FORECAST_ORDER.get(k, 0) > 0 for row in self.branches for k in row)

    @property
    def history_depth(self) -> int:
        """How many older computed values the branches read beyond the last one (0, 1 or 2)."""
        return max((FORECAST_ORDER.get(k, 0) for row in self.branches for k in row), default=0)

    def with_branches(self, branches: Any) -> CacheSchedule:
        return CacheSchedule(self.mask, self.sites, self.timesteps, self.meta, branches)

    def step_groups(self) -> list[int]:
        """For each step, the index of its distinct (mask, branches) row: steps that compute and
        read alike share a graph."""
        ids: dict[tuple[tuple[bool, ...], tuple[str, ...]], int] = {}
        return [ids.setdefault(key, len(ids)) for key in zip(self.mask, self.branches, strict=True)]

    def computed_steps(self, site: int, before: int) -> list[int]:
        """The steps before ``before`` that compute site ``site``, most recent first."""
        return [i for i in range(before - 1, -1, -1) if self.mask[i][site]]

    def forecast_weights(self, step: int) -> list[tuple[float, float, float]]:
        """Per site, the weights of (last, previous, the one before) computed values that the
        step's branch combines: ``(1, 0, 0)`` for reuse, Lagrange weights for a forecast,
        zeros where the site is computed."""
        out = []
        for k, kind in enumerate(self.branches[step]):
            if kind == "compute":
                out.append((0.0, 0.0, 0.0))
                continue
            order = FORECAST_ORDER[kind]
            w = lagrange_weights(step, self.computed_steps(k, step)[: order + 1])
            out.append(tuple(list(w) + [0.0] * (3 - len(w))))  # type: ignore[arg-type]
        return out

    def refreshed_sites(self, step: int) -> set[str]:
        """Sites computed at ``step`` whose value a later step reads: from the cache before the next
        computation, or, for a site forecast at any later step, as part of its history."""
        out = set()
        for k, site in enumerate(self.sites):
            if not self.mask[step][k]:
                continue
            later = range(step + 1, self.num_steps)
            if any(FORECAST_ORDER.get(self.branches[j][k], 0) > 0 for j in later):
                out.add(site)
                continue
            for j in later:
                if self.mask[j][k]:
                    break
                out.add(site)
                break
        return out

    def cache_age(self) -> np.ndarray:
        """``[num_steps, num_sites]``: how many steps old the value used is (0 = computed now)."""
        age = np.zeros((self.num_steps, self.num_sites), dtype=np.int64)
        for i in range(1, self.num_steps):
            for k in range(self.num_sites):
                age[i, k] = 0 if self.mask[i][k] else age[i - 1, k] + 1
        return age

    def step_of_timestep(self, t: float, expected: int | None = None) -> int:
        """The step whose timestep is ``t`` (``expected`` wins if several match); see :func:`find_step`."""
        if self.timesteps is None:
            raise ScheduleError("this schedule carries no timesteps; steps are counted by calls instead")
        return find_step(self.timesteps, t, expected=expected)

    def check_sites(self, sites: Sequence[str], *, what: str = "the model") -> None:
        """Raise :class:`ScheduleError` unless this schedule's sites are exactly ``sites``, in order."""
        sites = tuple(sites)
        if sites == self.sites:
            return
        missing = [s for s in sites if s not in self.sites]
        extra = [s for s in self.sites if s not in sites]
        if not missing and not extra:
            raise ScheduleError(
                f"the schedule lists the sites of {what} in another order; re-save it with {what}'s order"
            )
        raise ScheduleError(
            f"the schedule has {self.num_sites} sites and {what} has {len(sites)}: "
            + (f"not in the model: {extra[:5]}{' ...' if len(extra) > 5 else ''}; " if extra else "")
            + (f"not in the schedule: {missing[:5]}{' ...' if len(missing) > 5 else ''}; " if missing else "")
            + "the schedule was made for another model"
        )

    def with_timesteps(self, timesteps: Sequence[float]) -> CacheSchedule:
        return CacheSchedule(self.mask, self.sites, timesteps, self.meta, self.branches)

    def with_meta(self, **meta: Any) -> CacheSchedule:
        return CacheSchedule(self.mask, self.sites, self.timesteps, {**self.meta, **meta}, self.branches)

    def summary(self) -> str:
        """A short text picture: one line per step, ``#`` computed, ``.`` reused, ``1`` / ``2``
        forecast with that order."""
        glyph = {"compute": "#", "reuse": ".", "taylor1": "1", "taylor2": "2"}
        lines = [f"{self.num_steps} steps x {self.num_sites} sites, CUR {self.cur:.3f}"]
        for i, row in enumerate(self.branches):
            t = f" t={self.timesteps[i]:g}" if self.timesteps else ""
            lines.append(f"step {i:3d}{t:>8}  " + "".join(glyph[k] for k in row))
        return "\n".join(lines)

    # ------------------------------------------------------------------ JSON
    def _payload(self, version: int = SCHEDULE_VERSION) -> dict[str, Any]:
        payload = {
            "sites": list(self.sites),
            "mask": [list(row) for row in self.mask],
            "timesteps": None if self.timesteps is None else list(self.timesteps),
            "meta": _jsonable(self.meta),
        }
        if version >= 2:
            payload["branches"] = [list(row) for row in self.branches]
        return payload

    def to_json(self) -> dict[str, Any]:
        payload = self._payload()
        return {
            "format": SCHEDULE_FORMAT,
            "version": SCHEDULE_VERSION,
            "num_steps": self.num_steps,
            "num_sites": self.num_sites,
            "cur": self.cur,
            **payload,
            "checksum": canonical_checksum(payload),
        }

    @classmethod
    def from_json(cls, obj: Any, *, source: str = "schedule") -> CacheSchedule:
        if not isinstance(obj, Mapping):
            raise ScheduleError(f"{source}: expected a JSON object with 'sites' and 'mask', got {type(obj).__name__}")
        fmt = obj.get("format", SCHEDULE_FORMAT)
        if fmt != SCHEDULE_FORMAT:
            raise ScheduleError(f"{source}: format is {fmt!r}, expected {SCHEDULE_FORMAT!r}; this is not a schedule")
        version = obj.get("version", SCHEDULE_VERSION)
        if version not in READABLE_VERSIONS:
            raise ScheduleError(
                f"{source}: schedule format version {version!r}, this harmonica-compile reads versions "
                f"{list(READABLE_VERSIONS)}; re-create the schedule with this version"
            )
        for key in ("sites", "mask"):
            if key not in obj:
                raise ScheduleError(f"{source}: the key '{key}' is missing; a schedule holds 'sites' and 'mask'")
        meta = obj.get("meta") or {}
        if not isinstance(meta, Mapping):
            raise ScheduleError(f"{source}: 'meta' must be an object, got {type(meta).__name__}")
        branches = obj.get("branches") if version >= 2 else None
        checksum = obj.get("checksum")
        if checksum is not None:  # checked on the file's own content, before anything is interpreted
            keys = ["sites", "mask", "timesteps", "meta"] + (["branches"] if version >= 2 else [])
            if checksum != canonical_checksum({k: obj.get(k) if k != "meta" else meta for k in keys}):
                raise ArtifactError(
                    f"{source}: checksum mismatch, the file was changed after it was written; restore it, or "
                    "delete its 'checksum' entry if you edited it on purpose"
                )
        return cls(obj["mask"], obj["sites"], obj.get("timesteps"), meta, branches)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the schedule as JSON (atomically)."""
        return atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CacheSchedule:
        """Read a schedule written by :meth:`save` (or any JSON with ``sites`` and ``mask``)."""
        return cls.from_json(load_json(path, what="schedule"), source=str(path))


def _as_branches(
    branches: Any, mask: tuple[tuple[bool, ...], ...], sites: tuple[str, ...]
) -> tuple[tuple[str, ...], ...]:
    """The branch kinds, checked against the mask, each forecast lowered to the order its history
    allows (a site computed only k times before a step forecasts with order at most k - 1)."""
    if branches is None:
        return tuple(tuple("compute" if m else "reuse" for m in row) for row in mask)
    if isinstance(branches, np.ndarray):
        branches = branches.tolist()
    if not isinstance(branches, Sequence) or len(branches) != len(mask):
        raise ScheduleError(f"branches must have one row per step ({len(mask)}), got {type(branches).__name__}")
    counts = [0] * len(sites)
    rows = []
    for i, (row, mrow) in enumerate(zip(branches, mask, strict=True)):
        if isinstance(row, str) or not isinstance(row, Sequence) or len(row) != len(sites):
            raise ScheduleError(f"branches row {i} must hold one kind per site ({len(sites)})")
        out = []
        for k, (kind, computed) in enumerate(zip(row, mrow, strict=True)):
            if kind not in BRANCH_KINDS:
                raise ScheduleError(f"branches[{i}][{k}] ({sites[k]}) is {kind!r}; kinds are {', '.join(BRANCH_KINDS)}")
            if computed != (kind == "compute"):
                raise ScheduleError(
                    f"step {i}, site {sites[k]}: the mask {'computes' if computed else 'caches'} it but its branch "
                    f"is {kind!r}; computed entries are 'compute', cached ones reuse / taylor1 / taylor2"
                )
            if not computed:
                kind = _KIND_OF_ORDER[min(FORECAST_ORDER[kind], counts[k] - 1)]
            out.append(kind)
        for k, computed in enumerate(mrow):
            counts[k] += computed
        rows.append(tuple(out))
    return tuple(rows)


def _check_steps(num_steps: int) -> None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ScheduleError(f"num_steps must be an integer >= 1, got {num_steps!r}")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
