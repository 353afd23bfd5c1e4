"""Reaching a target Cache Usage Ratio.

Users think in speed, not in ``beta``. With ``target_cur`` the trainer

1. decides the hard mask by rank: the ``round(target * T * S)`` learned entries with the lowest
   logits read the cache (ties: the least important first), so every forward of training, the
   cache refresh and the final schedule use the same mask, and the CUR is the target exactly;
2. sets ``beta`` each iteration to the quantile of the entries' importance (the running average
   of ``|d lambda_t MSE_t / d r|``) at the cached share: under Adam, whose step has the sign of the
   gradient, entries less important than ``beta`` drift towards caching and the others towards
   computing, so the logits rank the entries by importance instead of all saturating at the clamp;
3. ramps the target up from 0 over the first ``ramp`` share of the iterations, so the router first
   learns which entries matter while the trajectory is still nearly exact.

A multiplicative controller on ``beta`` (the obvious alternative) overshoots: ``beta`` integrates
the CUR error while the logits lag behind, and the logits end pinned at the clamp.
Without a target, the mask is ``sigmoid(logit) > tau`` and ``beta`` stays fixed (the paper).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .router import Router

__all__ = ["CurController"]


class CurController:
    def __init__(
        self,
        num_steps: int,
        num_sites: int,
        *,
        target_cur: float | None,
        beta: float | None,
        iterations: int,
        ramp: float,
        decay: float,
    ):
        self.T = num_steps
        self.S = num_sites
        self.target_cur = target_cur
        self.fixed_beta = beta
        self.ramp_iters = round(ramp * iterations)
        self.decay = decay
        self.importance = torch.zeros(num_steps, num_sites, dtype=torch.float64)
        self.seen = torch.zeros(num_steps, num_sites, dtype=torch.bool)
        self.beta = 0.0 if target_cur is not None else float(beta or 0.0)

    def target_at(self, iteration: int) -> float | None:
        if self.target_cur is None:
            return None
        if self.ramp_iters <= 0 or iteration >= self.ramp_iters:
            return self.target_cur
        return self.target_cur * (iteration + 1) / self.ramp_iters

    def num_cached(self, target: float) -> int:
        return min(round(target * self.T * self.S), (self.T - 1) * self.S)

    def mask(self, router: Router, iteration: int) -> torch.Tensor:
        """The hard mask ``[T, S]`` (True = compute) for this iteration."""
        target = self.target_at(iteration)
        if target is None:
            return router.mask()
        logits = router.logits().detach()[1:].double().cpu().numpy().ravel()
        importance = self.importance[1:].numpy().ravel()
        order = np.lexsort((importance, logits))  # lowest logit first; ties: least important first
        cached = order[: self.num_cached(target)]
        flat = np.ones(logits.shape, dtype=bool)
        flat[cached] = False
        mask = torch.ones(self.T, self.S, dtype=torch.bool)
        mask[1:] = torch.from_numpy(flat.reshape(self.T - 1, self.S))
        return mask

    def threshold_logit(self, router: Router, mask: torch.Tensor) -> float:
        """A logit between the highest cached and the lowest computed entry (the effective tau)."""
        logits = router.logits().detach()[1:]
        m = mask[1:]
        hi_cached = float(logits[~m].max()) if (~m).any() else -math.inf
        lo_computed = float(logits[m].min()) if m.any() else math.inf
        if math.isinf(hi_cached):
            return lo_computed - 1.0
        if math.isinf(lo_computed):
            return hi_cached + 1.0
        return (hi_cached + lo_computed) / 2

    def update(self, step: int, grad_r: torch.Tensor, which: torch.Tensor | None = None) -> None:
        """Record ``d(lambda MSE)/dr`` of one step (positive importance = computing helps), for the
        entries in ``which`` (default: all)."""
        imp = (-grad_r.detach().double().cpu()).clamp(min=0)
        which = torch.ones(self.S, dtype=torch.bool) if which is None else which.cpu()
        new = which & ~self.seen[step]
        old = which & self.seen[step]
        self.importance[step][new] = imp[new]
        self.importance[step][old] = self.decay * self.importance[step][old] + (1 - self.decay) * imp[old]
        self.seen[step] |= which

    def update_beta(self, iteration: int) -> float:
        """Set beta for the coming iteration (fixed without a target)."""
        target = self.target_at(iteration)
        if target is None:
            return self.beta
        if not self.seen[1:].any():
            self.beta = 0.0
            return self.beta
        share = self.num_cached(target) / ((self.T - 1) * self.S)
        values = self.importance[1:][self.seen[1:]]
        self.beta = float(torch.quantile(values, min(max(share, 0.0), 1.0))) if share > 0 else 0.0
        return self.beta

    def state(self) -> dict[str, torch.Tensor]:
        return {
            "importance": self.importance.clone(),
            "seen": self.seen.clone(),
            "beta": torch.tensor(self.beta, dtype=torch.float64),
        }

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.importance = state["importance"].clone()
        self.seen = state["seen"].clone().reshape(self.T, self.S)
        self.beta = float(state["beta"])
