"""Step-Wise Denoising Training (SDT): one training iteration, and the router step it shares with L2C.

SDT, one iteration (see ``shared/HARMONICA.md``):

1. fresh noise and conditions (no training images); step 0 computes every site and fills the cache;
2. every later step, in sampling order: the teacher computes every site at the same ``x_t`` and
   never touches the cache; the student is router-gated (soft, or hard through the straight-
   through estimator); ``L_t = lambda_t * MSE(eps_student, eps_teacher) + beta * sum_k r_{t,k}``;
   one optimizer step on that step's router row; the cache is refreshed where the hard mask says
   the site computed; the trajectory advances with the **student's** prediction.

L2C (:mod:`.l2c`) uses the same router step without lambda, on teacher-forced states.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .controller import CurController
from .distributed import Comm
from .router import Router
from .runner import StepRunner

__all__ = ["IterationStats", "router_step", "sdt_iteration"]


@dataclass
class IterationStats:
    loss: float
    mse: float
    trajectory_mse: float


def router_step(
    runner: StepRunner,
    router: Router,
    opt: torch.optim.Optimizer,
    controller: CurController,
    comm: Comm,
    step: int,
    flat: list[torch.Tensor],
    cache: list[torch.Tensor],
    teacher_eps: torch.Tensor,
    hard: torch.Tensor,
    lam: float,
    ste: bool,
) -> tuple[torch.Tensor, list[torch.Tensor], float]:
    """One optimizer step on router row ``step``; returns the student's eps, fresh values and MSE."""
    channels = teacher_eps.shape[1]
    row = router.rows[step - 1]
    with torch.enable_grad():
        gate = router.gate(step, hard if ste else None)
        out, fresh = runner.student_step(flat, cache, gate)
        eps = runner.eps(out, channels)
        mse = F.mse_loss(eps, teacher_eps)
        opt.zero_grad(set_to_none=True)
        (lam * mse).backward()
    grad = row.grad.clone() if row.grad is not None else torch.zeros_like(row)
    comm.mean_(grad)
    r = torch.sigmoid(row.detach())
    slope = (r * (1 - r)).clamp(min=1e-12)
    controller.update(step, grad / slope)
    # d(beta * sum sigmoid(logit)) / d logit, added in closed form
    row.grad = grad + controller.beta * slope
    opt.step()
    router.clamp_()
    return eps.detach(), fresh, float(mse.detach())


def sdt_iteration(
    runner: StepRunner,
    router: Router,
    opt: torch.optim.Optimizer,
    controller: CurController,
    comm: Comm,
    mask: torch.Tensor,
    lam: torch.Tensor,
    noise: torch.Tensor,
    cond: Any,
    null: Any,
    ste: bool,
) -> IterationStats:
    sampler = runner.sampler
    sampler.start()
    x = noise * sampler.init_noise_sigma
    channels = x.shape[1]
    flat = runner.flat_inputs(x, 0, cond, null)
    out, fresh = runner.hard_step(flat, runner.empty_cache(flat), mask[0])
    cache = [f.detach() for f in fresh]
    x = sampler.step(runner.eps(out, channels), 0, x)
    losses, mses = [], []
    traj = 0.0
    for i in range(1, sampler.num_steps):
        flat = runner.flat_inputs(x, i, cond, null)
        teacher = runner.eps(runner.teacher_step(flat), channels)
        hard = mask[i] if ste else (router.prob(i).detach() > router.tau)
        eps, fresh, mse = router_step(
            runner, router, opt, controller, comm, i, flat, cache, teacher, hard, float(lam[i]), ste
        )
        runner.refresh(cache, fresh, hard)
        x = sampler.step(eps, i, x).detach()
        mses.append(mse)
        losses.append(float(lam[i]) * mse + controller.beta * float(router.prob(i).detach().sum()))
        traj += float((eps - teacher).pow(2).mean())
    return IterationStats(sum(losses) / len(losses), sum(mses) / len(mses), traj / max(len(mses), 1))
