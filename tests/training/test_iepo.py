"""IEPO's lambda against a brute-force computation (full regenerations, no shared prefixes)."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_spec

from harmonica_compile.training.iepo import compute_lambda, normalize_lambda
from harmonica_compile.training.runner import StepRunner


@pytest.fixture(scope="module")
def toy():
    spec = tiny_spec(seed=4)
    runner = StepRunner(spec.cacheable(), spec, spec.sampler(3), cfg_scale=2.0)
    noise = spec.noise(2, seed=5)
    cond, null = spec.conditions(2, seed=5)
    mask = torch.tensor([[True] * 4, [False, True, False, False], [True, False, False, True]])
    return runner, mask, noise, cond, null


def _generate(runner, mask, noise, cond, null):
    """x0 under a mask, written out step by step without TrajectoryState."""
    sampler = runner.sampler
    sampler.start()
    x, cache = noise.clone(), None
    for i in range(sampler.num_steps):
        flat = runner.flat_inputs(x, i, cond, null)
        cache = runner.empty_cache(flat) if cache is None else cache
        out, fresh = runner.hard_step(flat, cache, mask[i])
        for slot, (k, _) in enumerate(runner.slots):
            if mask[i][k]:
                cache[slot] = fresh[slot]
        x = sampler.step(runner.eps(out, x.shape[1]), i, x)
    return x.double()


def test_paper_lambda_matches_brute_force(toy):
    """An identity, so exact: both sides make the same hard-graph calls, guidance and DDIM steps on
    bit-identical tensors in this process (compute_lambda restarts from recorded states, which hold
    the very x and cache tensors), then the same float64 sum of squares. Only the bookkeeping
    differs, and that is what this checks; a tolerance would hide a wrong state for the tiny
    lambdas (lambda_2 is about 1e-7)."""
    runner, mask, noise, cond, null = toy
    lam = compute_lambda(runner, mask, noise, cond, null, "paper")
    x0 = _generate(runner, mask, noise, cond, null)
    want = [0.0]
    for t in (1, 2):
        variant = mask.clone()
        variant[t] = True
        want.append(float((_generate(runner, variant, noise, cond, null) - x0).pow(2).sum()))
    assert torch.equal(lam, torch.tensor(want, dtype=torch.float64)), (lam, want)
    assert (lam[1:] > 0).all()


def test_incremental_lambda_matches_brute_force(toy):
    """Exact, for the same reason as the paper variant: the same calls on the same tensors."""
    runner, mask, noise, cond, null = toy
    lam = compute_lambda(runner, mask, noise, cond, null, "incremental")
    full = torch.ones_like(mask)
    m1 = full.clone()
    m1[:2] = mask[:2]
    x_full = _generate(runner, full, noise, cond, null)
    x_1 = _generate(runner, m1, noise, cond, null)
    x_2 = _generate(runner, mask, noise, cond, null)
    want = torch.tensor([0.0, float((x_1 - x_full).pow(2).sum()), float((x_2 - x_1).pow(2).sum())], dtype=torch.float64)
    assert torch.equal(lam, want), (lam, want)


def test_a_fully_computed_step_has_zero_paper_lambda(toy):
    runner, mask, noise, cond, null = toy
    m = mask.clone()
    m[2] = True
    assert float(compute_lambda(runner, m, noise, cond, null, "paper")[2]) == 0.0


def test_normalisation():
    lam = normalize_lambda(torch.tensor([0.0, 2.0, 0.0, 6.0], dtype=torch.float64), floor=0.1)
    torch.testing.assert_close(lam, torch.tensor([0.0, 0.75, 0.1, 2.25], dtype=torch.float64))
    torch.testing.assert_close(
        normalize_lambda(torch.zeros(3), 0.1), torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)
    )
