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


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("steps", [10, 20, 25, 50])
def test_ddim_matches_diffusers_ddim_scheduler(steps, dtype):
    """Fed the same model outputs, our DDIM and diffusers' DDIMScheduler agree within 1e-5.

    diffusers keeps alpha_bar in float32 (relative error 4e-7 against DiT's float64 cumprod) and
    divides by sqrt(alpha_bar) ~ 0.006 at the first steps, which turns that into ~1e-5 on the
    latents. In fp64, with diffusers given DiT's float64 alpha_bar, the update rules agree within
    the acceptance's 1e-5 (measured ~1e-13); stock diffusers in fp32 agrees within 1e-4
    (measured up to 5.4e-5 at 50 steps)."""
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
    np.testing.assert_allclose(theirs.alphas_cumprod.double().numpy(), ours.alphas_cumprod, rtol=1e-6)
    if dtype == torch.float64:
        theirs.alphas_cumprod = torch.from_numpy(ours.alphas_cumprod)
    gen = torch.Generator().manual_seed(steps)
    x_ours = x_theirs = torch.randn(2, 4, 8, 8, generator=gen).to(dtype)
    image = torch.rand(2, 4, 8, 8, generator=gen).to(dtype) * 2 - 1
    worst = 0.0
    for i, t in enumerate(theirs.timesteps):
        # the same model output for both: a near-perfect denoiser of `image`, as a trained model is
        ab = float(theirs.alphas_cumprod[t])
        eps = (x_theirs - ab**0.5 * image) / (1 - ab) ** 0.5 + 0.1 * torch.randn(2, 4, 8, 8, generator=gen).to(dtype)
        x_ours = ours.step(eps, i, x_ours)
        x_theirs = theirs.step(eps, t, x_theirs).prev_sample
        worst = max(worst, float((x_ours - x_theirs).abs().max()))
    assert x_ours.dtype == dtype
    assert worst <= (1e-5 if dtype == torch.float64 else 1e-4)


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
    spec = tiny_spec()
    a, la = generate(spec, num=5, steps=3, seed=1, batch_size=2)
    b, _lb = generate(spec, num=5, steps=3, seed=1, batch_size=5)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
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
