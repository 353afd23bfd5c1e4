"""CacheSchedule: which site each step computes (True) or reads from the cache (False).

A schedule is a boolean mask ``[num_steps, num_sites]`` over named sites, optionally with the
timestep of each step (then the step a model call belongs to is found from its timestep value).
The first step must compute every site: the cache is empty before it.

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

__all__ = ["SCHEDULE_FORMAT", "SCHEDULE_VERSION", "TIMESTEP_RTOL", "CacheSchedule", "find_step", "same_timestep"]

SCHEDULE_FORMAT = "harmonica-compile/schedule"
SCHEDULE_VERSION = 1


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

    def __init__(
        self,
        mask: Any,
        sites: Sequence[str],
        timesteps: Sequence[float] | None = None,
        meta: Mapping[str, Any] | None = None,
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

    # ------------------------------------------------------------------ constructors
    @classmethod
    def all_compute(
        cls, sites: Sequence[str], num_steps: int, timesteps: Sequence[float] | None = None, **meta: Any
    ) -> CacheSchedule:
        """Every site computed at every step (the full-compute reference)."""
        _check_steps(num_steps)
        return cls([[True] * len(sites)] * num_steps, sites, timesteps, {"method": "full", **meta})

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

    def step_groups(self) -> list[int]:
        """For each step, the index of its distinct mask (steps with equal masks share a graph)."""
        ids: dict[tuple[bool, ...], int] = {}
        return [ids.setdefault(row, len(ids)) for row in self.mask]

    def refreshed_sites(self, step: int) -> set[str]:
        """Sites computed at ``step`` whose value a later step reads from the cache."""
        out = set()
        for k, site in enumerate(self.sites):
            if not self.mask[step][k]:
                continue
            for later in range(step + 1, self.num_steps):
                if self.mask[later][k]:
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
        return CacheSchedule(self.mask, self.sites, timesteps, self.meta)

    def with_meta(self, **meta: Any) -> CacheSchedule:
        return CacheSchedule(self.mask, self.sites, self.timesteps, {**self.meta, **meta})

    def summary(self) -> str:
        """A short text picture: one line per step, ``#`` computed and ``.`` cached."""
        lines = [f"{self.num_steps} steps x {self.num_sites} sites, CUR {self.cur:.3f}"]
        for i, row in enumerate(self.mask):
            t = f" t={self.timesteps[i]:g}" if self.timesteps else ""
            lines.append(f"step {i:3d}{t:>8}  " + "".join("#" if m else "." for m in row))
        return "\n".join(lines)

    # ------------------------------------------------------------------ JSON
    def _payload(self) -> dict[str, Any]:
        return {
            "sites": list(self.sites),
            "mask": [list(row) for row in self.mask],
            "timesteps": None if self.timesteps is None else list(self.timesteps),
            "meta": _jsonable(self.meta),
        }

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
        if version != SCHEDULE_VERSION:
            raise ScheduleError(
                f"{source}: schedule format version {version!r}, this harmonica-compile reads version "
                f"{SCHEDULE_VERSION}; re-create the schedule with this version"
            )
        for key in ("sites", "mask"):
            if key not in obj:
                raise ScheduleError(f"{source}: the key '{key}' is missing; a schedule holds 'sites' and 'mask'")
        meta = obj.get("meta") or {}
        if not isinstance(meta, Mapping):
            raise ScheduleError(f"{source}: 'meta' must be an object, got {type(meta).__name__}")
        schedule = cls(obj["mask"], obj["sites"], obj.get("timesteps"), meta)
        checksum = obj.get("checksum")
        if checksum is not None and checksum != canonical_checksum(schedule._payload()):
            raise ArtifactError(
                f"{source}: checksum mismatch, the file was changed after it was written; restore it, or "
                "delete its 'checksum' entry if you edited it on purpose"
            )
        return schedule

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the schedule as JSON (atomically)."""
        return atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CacheSchedule:
        """Read a schedule written by :meth:`save` (or any JSON with ``sites`` and ``mask``)."""
        return cls.from_json(load_json(path, what="schedule"), source=str(path))


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
