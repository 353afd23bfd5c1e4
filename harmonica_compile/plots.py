"""Pictures: sample grids, the schedule heatmap (steps x sites, as in the L2C and HarmoniCa papers).

Every function writes a PNG atomically and returns its path. matplotlib runs headless (Agg).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .io import atomic_write_bytes
from .schedule import CacheSchedule

__all__ = ["save_grid", "save_pareto", "save_schedule_heatmap", "save_side_by_side"]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    _plt().close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _tile(images: torch.Tensor, ncol: int) -> np.ndarray:
    """``[N, C, H, W]`` in [-1, 1] to one ``[rows*H, ncol*W, 3]`` array in [0, 1] (1-pixel gaps)."""
    x = images.detach().float().clamp(-1, 1).add(1).div(2).cpu()
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    elif x.shape[1] != 3:
        x = x[:, :3] if x.shape[1] > 3 else torch.cat([x, x[:, :1].expand(-1, 3 - x.shape[1], -1, -1)], 1)
    n, _, h, w = x.shape
    rows = (n + ncol - 1) // ncol
    grid = np.ones((rows * (h + 1) + 1, ncol * (w + 1) + 1, 3), dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, ncol)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = (
            x[i].permute(1, 2, 0).numpy()
        )
    return grid


def save_grid(
    images: torch.Tensor,
    path: str | os.PathLike[str],
    *,
    ncol: int = 10,
    title: str | None = None,
    labels: Sequence[int] | None = None,
) -> Path:
    """A grid of samples (one column per class when ``labels`` cycle over 10 classes)."""
    plt = _plt()
    grid = _tile(images, ncol)
    fig, ax = plt.subplots(figsize=(max(3.0, grid.shape[1] / 18), max(2.0, grid.shape[0] / 18)))
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def save_side_by_side(
    panels: Mapping[str, torch.Tensor], path: str | os.PathLike[str], *, ncol: int = 10, suptitle: str | None = None
) -> Path:
    """Grids next to each other, one per entry (e.g. ``{"full compute": a, "HarmoniCa (CUR 0.5)": b}``)."""
    plt = _plt()
    grids = {k: _tile(v, ncol) for k, v in panels.items()}
    h, w = next(iter(grids.values())).shape[:2]
    fig, axes = plt.subplots(1, len(grids), figsize=(len(grids) * max(3.0, w / 18), max(2.4, h / 18) + 0.4))
    axes = np.atleast_1d(axes)
    for ax, (name, grid) in zip(axes, grids.items(), strict=True):
        ax.imshow(grid, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return _save(fig, path)


def save_schedule_heatmap(schedule: CacheSchedule, path: str | os.PathLike[str], *, title: str | None = None) -> Path:
    """Steps (rows, first step at the top) x sites (columns), one colour per read branch: computed
    (dark), reused (light), forecast with order 1 or 2 (greens)."""
    plt = _plt()
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    kinds = ("reuse", "taylor1", "taylor2", "compute")
    colours = ("#f3d9a4", "#a8d5a2", "#4f9a5a", "#1f4e79")
    labels_of = {
        "reuse": "cached: reuse",
        "taylor1": "cached: forecast, order 1",
        "taylor2": "cached: forecast, order 2",
    }
    grid = np.array([[kinds.index(k) for k in row] for row in schedule.branches], dtype=float)
    steps, sites = grid.shape
    fig, ax = plt.subplots(figsize=(min(18, 2 + sites * 0.28), min(14, 1.5 + steps * 0.22)))
    ax.imshow(grid, cmap=ListedColormap(colours), vmin=0, vmax=3, aspect="auto", interpolation="nearest")
    labels = list(schedule.sites)
    ax.set_xticks(range(sites))
    ax.set_xticklabels(labels, rotation=90, fontsize=max(4, min(8, 400 // max(sites, 1))))
    ts = schedule.timesteps
    ax.set_yticks(range(steps))
    ax.set_yticklabels(
        [f"{i} (t={ts[i]:g})" if ts else str(i) for i in range(steps)], fontsize=max(4, min(8, 300 // steps))
    )
    ax.set_xlabel("cache site")
    ax.set_ylabel("denoising step")
    ax.set_title(title or f"read branch per step and site; CUR {schedule.cur:.2f}", fontsize=9)
    used = {k for row in schedule.branches for k in row}
    handles = [Patch(color=colours[3], label="computed")]
    handles += [Patch(color=colours[i], label=labels_of[k]) for i, k in enumerate(kinds[:3]) if k in used]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    return _save(fig, path)


def save_pareto(
    series: Mapping[str, Sequence[tuple[float, float]]],
    path: str | os.PathLike[str],
    *,
    xlabel: str = "measured speedup (x)",
    ylabel: str = "PSNR vs full compute (dB)",
    title: str | None = None,
) -> Path:
    """One line per method through its (speedup, quality) points."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for i, (name, points) in enumerate(series.items()):
        pts = sorted(points)
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="os^Dv"[i % 5], label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)
