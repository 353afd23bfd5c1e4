"""Samplers: DiT's respacing, DDIM parity with diffusers, CFG, the diffusers adapter, one loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tiny_spec

from harmonica_compile import CacheSchedule
from harmonica_compile.api import cached_for_spec
from harmonica_compile.errors import ConfigError, HarmonicaError, InputError, ScheduleError
from harmonica_compile.sampling import (
    DDIMSampler,
    DiffusersSampler,
    generate,
    guide,
    respace_timesteps,
    sample,
    split_learned_sigma,
)


def test_respacing_follows_dit():
    assert respace_timesteps(20) == list(range(950, -1, -50))
    assert respace_timesteps(10)[:2] == [900, 800]
    assert respace_timesteps(1000) == list(range(999, -1, -1))
    assert len(respace_timesteps(999)) == 999  # no integer stride: DiT's evenly spaced fallback
    assert respace_timesteps(1) == [0]
    for bad in (0, 1001, -3, 2.5, True):
        with pytest.raises(ConfigError, match="steps must be"):
            respace_timesteps(bad)  # type: ignore[arg-type]


UNIT_ROUNDOFF_FP32 = 2.0**-24


def _ddim_coefficients(ab: float, ab_prev: float) -> tuple[float, float]:
    """DDIM's update ``x_prev = c_x * x + c_eps * eps`` (eta = 0), in float64."""
    return (ab_prev / ab) ** 0.5, (1 - ab_prev) ** 0.5 - (ab_prev * (1 - ab) / ab) ** 0.5


def _local_error_bound(
    ab: float, ab_prev: float, rel_ab: float, rel_prev: float, x: torch.Tensor, eps: torch.Tensor
) -> torch.Tensor:
    """Elementwise first-order bound on |ours(x, eps) - diffusers(x, eps)| for one fp32 DDIM step.

    Two sources, both from the arithmetic of the two implementations:
    - diffusers holds alpha_bar in float32 with relative error ``rel_ab`` / ``rel_prev`` (read off
      its own array against DiT's float64 cumprod); the coefficient error is bounded by evaluating
      the float64 coefficients at the four corners ``ab (1 +- rel_ab)``, ``ab_prev (1 +- rel_prev)``;
    - rounding: diffusers evaluates ``sqrt(ab_prev) (x - sqrt(1-ab) eps) / sqrt(ab) + sqrt(1-ab_prev) eps``
      in float32, at most 10 roundings on any operand's path (gamma_10 ~ 10 u times the sum of the
      absolute terms); ours rounds its two float64 coefficients to float32 and does 2 multiplies and
      an add (gamma_3 times ``c_x |x| + |c_eps| |eps|``)."""
    c_x, c_eps = _ddim_coefficients(ab, ab_prev)
    d_x = d_eps = 0.0
    for s_ab in (-1, 1):
        for s_prev in (-1, 1):
            cx2, ce2 = _ddim_coefficients(ab * (1 + s_ab * rel_ab), ab_prev * (1 + s_prev * rel_prev))
            d_x, d_eps = max(d_x, abs(cx2 - c_x)), max(d_eps, abs(ce2 - c_eps))
    X, E = x.double().abs(), eps.double().abs()
    terms_theirs = (ab_prev / ab) ** 0.5 * (X + (1 - ab) ** 0.5 * E) + (1 - ab_prev) ** 0.5 * E
    terms_ours = c_x * X + abs(c_eps) * E
    return d_x * X + d_eps * E + UNIT_ROUNDOFF_FP32 * (10 * terms_theirs + 3 * terms_ours)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("steps", [10, 20, 25, 50])
def test_ddim_matches_diffusers_ddim_scheduler(steps, dtype):
    """Fed the same model outputs, our DDIM and diffusers' DDIMScheduler agree.

    fp64, with diffusers given DiT's float64 alpha_bar: the two update rules are the same
    function evaluated in two algebraically equal forms, so they agree to a few float64 roundings
    amplified by the trajectory; 1e-9 leaves four orders of magnitude over that (~1e-13) and is
    still far below any wrong coefficient (a one-step-off alpha_bar moves the latents by > 1e-2).

    fp32, stock diffusers: the gap is diffusers' float32 alpha_bar plus the float32 rounding of
    both updates, accumulated over the steps. The test propagates an elementwise first-order
    forward-error bound (``_local_error_bound``) through the trajectory: an error in ``x`` is
    multiplied by ``c_x`` at every later step (the same ``eps`` is fed to both, so nothing else
    carries it), and asserts the gap stays inside it at every step. No tolerance in this test is a
    measured value."""
    from diffusers import DDIMScheduler

    ours = DDIMSampler(steps)
    theirs = DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing="leading",
        steps_offset=0,
    )
    theirs.set_timesteps(steps)
    assert ours.timesteps == theirs.timesteps.tolist()
    rel = np.abs(theirs.alphas_cumprod.double().numpy() / ours.alphas_cumprod - 1)
    # float32 cumprod over 1000 factors: a few hundred roundings at most, far below 1e-4 relative
    assert rel.max() <= 1000 * UNIT_ROUNDOFF_FP32
    if dtype == torch.float64:
        theirs.alphas_cumprod = torch.from_numpy(ours.alphas_cumprod)
    gen = torch.Generator().manual_seed(steps)
    x_ours = x_theirs = torch.randn(2, 4, 8, 8, generator=gen).to(dtype)
    image = torch.rand(2, 4, 8, 8, generator=gen).to(dtype) * 2 - 1
    bound = torch.zeros(x_ours.shape, dtype=torch.float64)
    worst = 0.0
    for i, t in enumerate(theirs.timesteps):
        # the same model output for both: a near-perfect denoiser of `image`, as a trained model is
        ab = float(theirs.alphas_cumprod[t])
        eps = (x_theirs - ab**0.5 * image) / (1 - ab) ** 0.5 + 0.1 * torch.randn(2, 4, 8, 8, generator=gen).to(dtype)
        if dtype == torch.float32:
            ab_i, ab_prev = ours.alpha_bars(i)
            rel_prev = rel[ours.timesteps[i + 1]] if i + 1 < steps else 0.0  # final alpha_bar is exactly 1
            c_x, _ = _ddim_coefficients(ab_i, ab_prev)
            bound = c_x * bound + _local_error_bound(ab_i, ab_prev, rel[int(t)], rel_prev, x_theirs, eps)
        x_ours = ours.step(eps, i, x_ours)
        x_theirs = theirs.step(eps, t, x_theirs).prev_sample
        gap = (x_ours - x_theirs).double().abs()
        worst = max(worst, float(gap.max()))
        if dtype == torch.float32:
            assert bool((gap <= bound).all()), f"step {i}: gap {float(gap.max()):.2e} above its bound"
    assert x_ours.dtype == dtype
    if dtype == torch.float64:
        assert worst <= 1e-9


def test_guidance_and_learned_sigma():
    out = torch.arange(16.0).reshape(4, 4, 1, 1)  # batch [cond; cond; null; null], 4 channels
    eps = split_learned_sigma(out, channels=2)
    assert eps.shape == (4, 2, 1, 1)
    g = guide(eps, 3.0)
    torch.testing.assert_close(g, eps[2:] + 3.0 * (eps[:2] - eps[2:]))
    assert split_learned_sigma(out, channels=4) is out


def test_loop_doubles_the_batch_for_cfg_and_passes_timesteps():
    seen = []

    def denoise(x, t, y):
        seen.append((x.shape[0], t.tolist(), y.tolist()))
        return torch.zeros_like(x)

    sample(
        denoise,
        torch.randn(2, 1, 4, 4),
        torch.tensor([3, 4]),
        DDIMSampler(2),
        cfg_scale=4.0,
        null_cond=torch.tensor([10, 10]),
    )
    assert seen == [(4, [500] * 4, [3, 4, 10, 10]), (4, [0] * 4, [3, 4, 10, 10])]
    with pytest.raises(InputError, match="needs a null condition"):
        sample(denoise, torch.randn(2, 1, 4, 4), torch.tensor([3, 4]), DDIMSampler(2), cfg_scale=4.0)
    with pytest.raises(InputError, match="NaN"):
        sample(denoise, torch.full((2, 1, 4, 4), float("nan")), torch.tensor([3, 4]), DDIMSampler(2))


@pytest.mark.parametrize("name", ["DDIMScheduler", "DPMSolverMultistepScheduler", "FlowMatchEulerDiscreteScheduler"])
def test_diffusers_schedulers_run_through_the_same_loop(name):
    import diffusers

    scheduler = getattr(diffusers, name)()
    s = DiffusersSampler(scheduler, 6)
    assert s.num_steps == 6
    calls = []

    def denoise(x, t, y):
        calls.append(float(t[0]))
        return 0.1 * x

    x0 = sample(denoise, torch.randn(1, 2, 4, 4), torch.tensor([0]), s)
    again = sample(denoise, torch.randn(1, 2, 4, 4), torch.tensor([0]), s)  # state is reset per run
    assert x0.shape == again.shape and torch.isfinite(x0).all()
    assert calls[:6] == calls[6:] and calls[:6] == [float(t) for t in s.timesteps]
    assert scheduler.timesteps is None or len(scheduler.timesteps) != 6  # the user's scheduler is untouched


def test_dpm_solver_snapshot_restores_its_history():
    from diffusers import DPMSolverMultistepScheduler

    s = DiffusersSampler(DPMSolverMultistepScheduler(), 5)
    s.start()
    x = torch.randn(1, 2, 4, 4)
    x = s.step(0.1 * x, 0, x)
    snap = s.snapshot()
    a = s.step(0.2 * x, 1, x)
    s.restore(snap)
    b = s.step(0.2 * x, 1, x)
    torch.testing.assert_close(a, b)


def test_generate_is_deterministic_per_seed_and_checks_cfg():
    """The same seeds give the same noise and labels at any batch split; the images then differ
    only by kernels blocking differently per batch size, the same kind of difference as another
    runtime's, so the whole-pipeline tolerance of the parity gate (atol 1e-4, rtol 1e-2) applies."""
    spec = tiny_spec()
    a, la = generate(spec, num=5, steps=3, seed=1, batch_size=2)
    b, _lb = generate(spec, num=5, steps=3, seed=1, batch_size=5)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-2)
    assert la.tolist() == [0, 1, 2, 3, 4] and a.abs().max() <= 1
    with pytest.raises(ConfigError, match="needs a null class"):
        from helpers import tiny_spec_no_null

        generate(tiny_spec_no_null(), num=2, steps=3, cfg_scale=3.0)


def test_schedule_for_another_step_count_or_sampler_is_refused():
    spec = tiny_spec()
    sites = spec.cacheable().site_names
    with pytest.raises(ScheduleError, match="the schedule has 5 steps but sampling uses 4"):
        cached_for_spec(spec, CacheSchedule.fora(sites, 5, 2), steps=4)
    wrong_ts = CacheSchedule.fora(sites, 4, 2, timesteps=[999, 666, 333, 0])
    with pytest.raises(ScheduleError, match="another sampler"):
        cached_for_spec(spec, wrong_ts, steps=4)
    other = CacheSchedule.fora(sites, 4, 2).with_meta(model="tiny-dit-digits")
    with pytest.raises(HarmonicaError, match="made for model 'tiny-dit-digits'"):
        cached_for_spec(spec, other, steps=4)
