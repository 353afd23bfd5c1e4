"""DDIM (eta = 0) over the 1000-step linear-beta DDPM schedule, with DiT's timestep respacing.

This is the sampler DiT and HarmoniCa evaluate with. ``DDIMSampler(20).timesteps`` is
``[950, 900, ..., 0]``, exactly the respaced steps of DiT's ``create_diffusion("ddim20")`` and of
diffusers' ``DDIMScheduler`` with ``timestep_spacing="leading"`` and ``set_alpha_to_one=True``.

Example:
    >>> s = DDIMSampler(20)
    >>> s.timesteps[:3], s.timesteps[-1]
    ([950, 900, 850], 0)
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError

__all__ = ["DDIMSampler", "linear_betas", "respace_timesteps"]

NUM_TRAIN_TIMESTEPS = 1000


def linear_betas(
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, beta_start: float = 1e-4, beta_end: float = 0.02
) -> np.ndarray:
    """The DDPM linear beta schedule (float64), scaled as in DiT for other step counts."""
    scale = 1000 / num_train_timesteps
    return np.linspace(scale * beta_start, scale * beta_end, num_train_timesteps, dtype=np.float64)


def respace_timesteps(num_steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> list[int]:
    """The kept training timesteps for ``num_steps`` sampling steps, in sampling order.

    DiT's ``"ddimN"`` rule: the smallest integer stride ``s`` with ``len(range(0, T, s)) == N``.
    When no integer stride gives exactly N steps (e.g. N = 999), DiT's evenly spaced rule is used
    instead (fractional stride, rounded), which always exists.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int):
        raise ConfigError(f"steps must be an integer, got {num_steps!r}")
    if not 1 <= num_steps <= num_train_timesteps:
        raise ConfigError(f"steps must be between 1 and {num_train_timesteps}, got {num_steps}")
    for stride in range(1, num_train_timesteps + 1):
        kept = range(0, num_train_timesteps, stride)
        if len(kept) == num_steps:
            return sorted(kept, reverse=True)
        if len(kept) < num_steps:
            break
    if num_steps == 1:
        return [0]
    frac = (num_train_timesteps - 1) / (num_steps - 1)
    return sorted({round(i * frac) for i in range(num_steps)}, reverse=True)


class DDIMSampler:
    """Deterministic DDIM over respaced DDPM timesteps.

    ``step(eps, i, x)`` maps ``x`` at ``timesteps[i]`` to the next timestep (or to ``x_0`` after
    the last step). Coefficients are computed in float64 and applied in the dtype of ``x``.
    """

    name = "ddim"
    timestep_dtype = torch.int64
    init_noise_sigma = 1.0
    prediction_type = "epsilon"

    def __init__(
        self,
        num_steps: int,
        num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
    ):
        self.num_train_timesteps = num_train_timesteps
        self.betas = linear_betas(num_train_timesteps, beta_start, beta_end)
        self.alphas_cumprod = np.cumprod(1.0 - self.betas)
        self.timesteps: list[int] = respace_timesteps(num_steps, num_train_timesteps)
        self.num_steps = len(self.timesteps)

    def __repr__(self) -> str:
        return f"DDIMSampler(num_steps={self.num_steps})"

    def config(self) -> dict[str, object]:
        """What a manifest or report records about this sampler."""
        return {
            "name": self.name,
            "num_steps": self.num_steps,
            "num_train_timesteps": self.num_train_timesteps,
            "beta_schedule": "linear",
            "timesteps": list(self.timesteps),
        }

    def start(self) -> None:
        """DDIM keeps no state between steps; multistep solvers reset theirs here."""

    def scale_model_input(self, x: torch.Tensor, index: int) -> torch.Tensor:
        return x

    def snapshot(self) -> object:
        """The sampler's state between steps (DDIM has none), to resume a trajectory mid-way."""
        return None

    def restore(self, state: object) -> None:
        """Return to a state taken by :meth:`snapshot`."""

    def alpha_bars(self, index: int) -> tuple[float, float]:
        """``(alpha_bar_t, alpha_bar_prev)`` for step ``index`` (prev is 1 after the last step)."""
        t = self.timesteps[index]
        prev = self.alphas_cumprod[self.timesteps[index + 1]] if index + 1 < self.num_steps else 1.0
        return float(self.alphas_cumprod[t]), float(prev)

    def predict_x0(self, eps: torch.Tensor, index: int, x: torch.Tensor) -> torch.Tensor:
        ab, _ = self.alpha_bars(index)
        return (x - (1 - ab) ** 0.5 * eps) / ab**0.5

    def step(self, eps: torch.Tensor, index: int, x: torch.Tensor) -> torch.Tensor:
        """``sqrt(ab_prev) * x0 + sqrt(1 - ab_prev) * eps`` with ``x0 = (x - sqrt(1 - ab) eps) / sqrt(ab)``,
        folded into two float64 coefficients so that no large intermediate (``x0`` at high noise
        divides by ``sqrt(ab)`` ~ 0.006) is rounded to the dtype of ``x``."""
        ab, ab_prev = self.alpha_bars(index)
        c_x = (ab_prev / ab) ** 0.5
        c_eps = (1 - ab_prev) ** 0.5 - (ab_prev * (1 - ab) / ab) ** 0.5
        return c_x * x + c_eps * eps

    # Training-time helpers (the forward process), used by the tiny-DiT training script.
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``q(x_t | x_0)`` at integer training timesteps ``t`` (shape ``[B]``)."""
        ab = torch.as_tensor(self.alphas_cumprod, dtype=torch.float64, device=x0.device)[t].to(x0.dtype)
        ab = ab.view(-1, *([1] * (x0.ndim - 1)))
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise
