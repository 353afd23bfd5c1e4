"""The router: one learnable logit per (step, site), ``r = sigmoid(logit)``.

- Step 0 (pure noise, empty cache) always computes every site: its row is fixed, not learned.
- Each step's row is its own parameter, so an optimizer step on one step's loss leaves the other
  rows (and their Adam moments) untouched, exactly as with one router per step.
- ``gate(step, hard=...)`` is what the soft cache branches take: the soft value ``r``, or with the
  straight-through estimator a hard 0/1 forward whose gradient is that of ``r``.
- ``clamp_()`` keeps logits in ``[-clamp, clamp]`` after each optimizer step (reference: 5).

Example:
    >>> router = Router(num_steps=3, num_sites=2, init_logit=2.0)
    >>> router.probs().shape, bool(router.mask()[0].all())
    (torch.Size([3, 2]), True)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["Router"]


class Router(nn.Module):
    def __init__(
        self, num_steps: int, num_sites: int, *, init_logit: float = 2.0, tau: float = 0.1, clamp: float = 5.0
    ):
        super().__init__()
        if num_steps < 1 or num_sites < 1:
            raise ConfigError(f"a router needs >= 1 step and site, got {num_steps} x {num_sites}")
        if not 0.0 < tau < 1.0:
            raise ConfigError(f"tau must be in (0, 1), got {tau}")
        if clamp <= 0:
            raise ConfigError(f"clamp must be > 0, got {clamp}")
        self.num_steps = num_steps
        self.num_sites = num_sites
        self.tau = tau
        self.clamp = clamp
        self.rows = nn.ParameterList(
            [nn.Parameter(torch.full((num_sites,), float(init_logit))) for _ in range(num_steps - 1)]
        )

    @property
    def tau_logit(self) -> float:
        return math.log(self.tau / (1 - self.tau))

    def logits(self) -> torch.Tensor:
        """``[num_steps, num_sites]``; row 0 is ``+clamp`` (always compute)."""
        first = torch.full((1, self.num_sites), self.clamp, device=self._device())
        if not len(self.rows):
            return first
        return torch.cat([first, torch.stack(list(self.rows))])

    def _device(self) -> torch.device:
        return self.rows[0].device if len(self.rows) else torch.device("cpu")

    def probs(self) -> torch.Tensor:
        """``r = sigmoid(logits)``, with row 0 exactly 1."""
        r = torch.sigmoid(self.logits())
        r[0] = 1.0
        return r

    def mask(self, threshold_logit: float | None = None) -> torch.Tensor:
        """The hard mask (True = compute): ``logit > threshold`` (default ``logit(tau)``), row 0 True."""
        thr = self.tau_logit if threshold_logit is None else threshold_logit
        m = self.logits().detach() > thr
        m[0] = True
        return m

    def prob(self, step: int) -> torch.Tensor:
        if step == 0:
            return torch.ones(self.num_sites, device=self._device())
        return torch.sigmoid(self.rows[step - 1])

    def gate(self, step: int, hard_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The router input of the soft graph at ``step``: ``r``, or with ``hard_mask`` the
        straight-through value ``hard + r - r.detach()`` (exactly 0/1 forward, gradient of ``r``)."""
        r = self.prob(step)
        if hard_mask is None:
            return r
        hard = hard_mask.to(r.dtype)
        return hard + r - r.detach()

    @torch.no_grad()
    def clamp_(self) -> None:
        for row in self.rows:
            row.clamp_(-self.clamp, self.clamp)

    @torch.no_grad()
    def load_logits(self, logits: torch.Tensor) -> None:
        if tuple(logits.shape) != (self.num_steps, self.num_sites):
            raise ConfigError(
                f"router logits of shape {list(logits.shape)} do not fit "
                f"{self.num_steps} steps x {self.num_sites} sites"
            )
        for i, row in enumerate(self.rows):
            row.copy_(logits[i + 1])
