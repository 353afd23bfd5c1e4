"""Train ``tiny-dit-digits``: the reference DiT on scikit-learn's digits, 16x16, class-conditional.

This script produced the weights shipped in ``harmonica_compile/models/weights/``. It runs on two
CPU cores in under an hour and needs no network::

    python -m harmonica_compile.models.train_tiny_dit --out harmonica_compile/models/weights/tiny-dit-digits.safetensors

Recipe (also written into the weights file's metadata and the model card next to it):
DDPM eps-prediction MSE over the 1000-step linear-beta schedule, timesteps uniform; label dropout
0.1 for classifier-free guidance; AdamW (lr 1e-3, no weight decay), 250 warm-up steps then cosine
decay to 5%; gradient clipping at 1.0; EMA of the weights with decay 0.999, and the EMA weights are
the ones saved. ``learn_sigma`` is off: DDIM only reads the noise prediction, and training the
variance channels would need DiT's hybrid VLB loss for no gain in this project.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch

from ..data import load_digits16
from ..io import save_safetensors
from ..sampling.ddim import DDIMSampler
from .dit import DiT

TINY_DIT_DIGITS_CONFIG: dict[str, int | float | bool] = {
    "input_size": 16,
    "patch_size": 2,
    "in_channels": 1,
    "hidden_size": 128,
    "depth": 6,
    "num_heads": 4,
    "mlp_ratio": 4.0,
    "class_dropout_prob": 0.1,
    "num_classes": 10,
    "learn_sigma": False,
}


def train(
    steps: int = 6000,
    batch_size: int = 128,
    lr: float = 1e-3,
    warmup: int = 250,
    ema_decay: float = 0.999,
    seed: int = 0,
    threads: int = 2,
    progress: bool = True,
) -> tuple[DiT, dict[str, object]]:
    """Train the model and return ``(ema_model, recipe)``."""
    from tqdm import tqdm

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    images, labels = load_digits16()
    model = DiT(**TINY_DIT_DIGITS_CONFIG)  # type: ignore[arg-type]
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    diffusion = DDIMSampler(1000)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        progress_ = (step - warmup) / max(1, steps - warmup)
        return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress_)))

    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    bar = tqdm(range(steps), desc="train tiny-dit-digits", disable=not progress)
    running = None
    model.train()
    for step in bar:
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=gen)
        x0, y = images[idx], labels[idx]
        t = torch.randint(0, diffusion.num_train_timesteps, (batch_size,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        xt = diffusion.add_noise(x0, noise, t)
        loss = torch.nn.functional.mse_loss(model(xt, t, y), noise)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1 - ema_decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.set_postfix(loss=f"{running:.4f}")
    seconds = time.perf_counter() - start
    recipe: dict[str, object] = {
        "data": "sklearn.datasets.load_digits, 1797 images, bilinear 8x8 -> 16x16, scaled to [-1, 1]",
        "objective": "DDPM eps-prediction MSE, linear betas 1e-4..0.02 over 1000 steps, uniform t",
        "steps": steps,
        "batch_size": batch_size,
        "optimizer": f"AdamW lr {lr}, weight decay 0, {warmup} warm-up steps, cosine to 5%, grad clip 1.0",
        "ema_decay": ema_decay,
        "label_dropout": TINY_DIT_DIGITS_CONFIG["class_dropout_prob"],
        "seed": seed,
        "threads": threads,
        "train_seconds": round(seconds, 1),
        "final_loss_ema": round(float(running or 0.0), 5),
        "torch": torch.__version__,
    }
    return ema, recipe


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the .safetensors file")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    model, recipe = train(steps=args.steps, batch_size=args.batch_size, seed=args.seed, threads=args.threads)
    metadata = {
        "format": "harmonica-compile/pretrained",
        "format_version": "1",
        "name": "tiny-dit-digits",
        "architecture": "DiT",
        "config": json.dumps(TINY_DIT_DIGITS_CONFIG),
        "recipe": json.dumps(recipe),
    }
    save_safetensors(args.out, model.state_dict(), metadata)
    print(json.dumps(recipe, indent=2))


if __name__ == "__main__":
    main()
