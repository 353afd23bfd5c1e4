"""How many CPU threads to compute with: the cores this process may use, less the ones busy.

Two torch threads on two cores that another job keeps busy oversubscribe them: measured on a
shared 2-core machine, a training iteration took 34.2 s with 2 threads and 4.7 s with 1. So the
default is not the core count but what is free:

- cores this process may run on: the CPU affinity mask (``os.sched_getaffinity``), capped by a
  cgroup CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``) when one is set;
- minus the cores other processes keep busy: the 1-minute load average (``os.getloadavg``), but
  no more than the processes runnable right now besides this one (``/proc/loadavg``), so the
  average's minute of lag after a job ends does not count;
- at least 1.

:func:`choose_threads` returns the number and a sentence saying why; the CLI prints it as the
first line of every command that computes, and ``--threads N`` overrides it.

Example:
    >>> n, why = choose_threads(3)
    >>> n, why
    (3, '3 threads (--threads)')
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["available_cores", "choose_threads", "cpu_quota"]

CGROUP = Path("/sys/fs/cgroup")
LOADAVG = Path("/proc/loadavg")


def cpu_quota(root: Path | None = None) -> float | None:
    """The cgroup CPU quota in cores, or ``None`` when there is none (or it cannot be read)."""
    root = CGROUP if root is None else root
    try:
        text = (root / "cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def available_cores() -> int:
    """Cores this process may run on: its affinity mask, capped by a cgroup quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = cpu_quota()
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    return max(1, cores)


def _runnable_others() -> int | None:
    """Processes runnable now, besides this one (the 4th field of /proc/loadavg is runnable/total)."""
    try:
        runnable = int(LOADAVG.read_text().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0, runnable - 1)


def choose_threads(requested: int | None = None) -> tuple[int, str]:
    """``(threads, reason)``: ``requested`` when given, else the available cores not busy with
    other work (see the module docstring)."""
    if requested is not None:
        return int(requested), f"{int(requested)} thread{'s' if requested != 1 else ''} (--threads)"
    cores = available_cores()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return cores, f"{cores} threads ({cores} cores available; load unknown)"
    running = _runnable_others()
    seen = f"load average {load:.1f}" + ("" if running is None else f", runnable now besides us: {running}")
    busy = min(cores - 1, max(0, round(load if running is None else min(load, running))))
    threads = cores - busy
    noun = "thread" if threads == 1 else "threads"
    state = f"{busy} busy" if busy else "idle"
    return threads, f"{threads} {noun} ({cores} cores available, {state}: {seen}; --threads N overrides)"
