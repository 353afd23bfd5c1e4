"""Learning-to-Cache (L2C, Ma et al., NeurIPS 2024), the baseline HarmoniCa improves on.

One iteration: the same router and loss as SDT without lambda, but ``x_t`` comes from the
full-compute (teacher) trajectory and the cache from the full-compute previous step, and the steps
are visited in random (uniform) order. It never sees a cache filled by a cached step, the
"prior timestep disregard" the HarmoniCa paper names. (The original trains on noised real images;
this image-free variant takes ``x_t`` from the teacher's own trajectory.)
"""

from __future__ import annotations

from typing import Any

import torch

from .controller import CurController
from .distributed import Comm
from .router import Router
from .runner import StepRunner
from .sdt import IterationStats, router_step

__all__ = ["l2c_iteration"]


def l2c_iteration(
    runner: StepRunner,
    router: Router,
    opt: torch.optim.Optimizer,
    controller: CurController,
    comm: Comm,
    mask: torch.Tensor,
    noise: torch.Tensor,
    cond: Any,
    null: Any,
    ste: bool,
    generator: torch.Generator,
) -> IterationStats:
    sampler = runner.sampler
    sampler.start()
    x = noise * sampler.init_noise_sigma
    channels = x.shape[1]
    all_compute = torch.ones(runner.num_sites, dtype=torch.bool)
    states = []  # (flat inputs, teacher eps, fresh site values) of every full-compute step
    cache = None
    for i in range(sampler.num_steps):
        flat = runner.flat_inputs(x, i, cond, null)
        cache = runner.empty_cache(flat) if cache is None else cache
        out, fresh = runner.hard_step(flat, cache, all_compute)
        eps = runner.eps(out, channels)
        states.append((flat, eps, [f.detach() for f in fresh]))
        x = sampler.step(eps, i, x)
    losses, mses = [], []
    order = (torch.randperm(sampler.num_steps - 1, generator=generator) + 1).tolist()
    for i in order:
        flat, teacher, _ = states[i]
        prev_fresh = list(states[i - 1][2])
        hard = mask[i] if ste else (router.prob(i).detach() > router.tau)
        _, _, mse = router_step(runner, router, opt, controller, comm, i, flat, prev_fresh, teacher, hard, 1.0, ste)
        mses.append(mse)
        losses.append(mse + controller.beta * float(router.prob(i).detach().sum()))
    return IterationStats(sum(losses) / len(losses), sum(mses) / len(mses), float("nan"))
