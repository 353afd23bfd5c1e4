"""Samplers and the one sampling loop: DDIM with DiT's respacing, CFG, diffusers schedulers, sample files."""

from __future__ import annotations

from .ddim import DDIMSampler, linear_betas, respace_timesteps
from .diffusers_adapter import DiffusersSampler
from .files import load_samples, save_samples
from .generate import fit_batch, generate, sample_set
from .guidance import cat_conditions, guide, slice_conditions, split_learned_sigma, uses_cfg
from .loop import Sampler, guided_output, model_inputs, sample

__all__ = [
    "DDIMSampler",
    "DiffusersSampler",
    "Sampler",
    "cat_conditions",
    "fit_batch",
    "generate",
    "guide",
    "guided_output",
    "linear_betas",
    "load_samples",
    "model_inputs",
    "respace_timesteps",
    "sample",
    "sample_set",
    "save_samples",
    "slice_conditions",
    "split_learned_sigma",
    "uses_cfg",
]
