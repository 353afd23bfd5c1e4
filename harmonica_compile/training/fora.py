"""FORA (static caching): every site recomputed every N steps and reused in between.

The schedule itself is :meth:`harmonica_compile.CacheSchedule.fora`; this module picks ``N`` for a
target Cache Usage Ratio.

Example:
    >>> fora_interval_for(20, 0.5), fora_interval_for(20, 0.65)
    (2, 3)
"""

from __future__ import annotations

import math

__all__ = ["fora_interval_for"]


def fora_interval_for(num_steps: int, target_cur: float) -> int:
    """The FORA interval whose CUR at ``num_steps`` is closest to ``target_cur`` (smaller on ties)."""
    best, best_err = 1, math.inf
    for n in range(1, num_steps + 1):
        cur = 1 - len(range(0, num_steps, n)) / num_steps
        if abs(cur - target_cur) < best_err - 1e-12:
            best, best_err = n, abs(cur - target_cur)
    return best
