"""``harmonica-compile bench``: latency of a cached schedule against full compute, same run.

Each repeat samples one batch of images with full compute and then with the cached schedule
(round-robin, so machine load affects both alike), timing every step. Reported: per-image and
per-step latency (median over repeats), ``real_speedup`` = full / cached per image, and the
``theoretical_speedup`` of the schedule (FLOPs).
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..exporters.manifest import load_manifest
from ..io import atomic_write_json
from ..schedule import CacheSchedule

__all__ = ["bench_engine", "schedule_of_manifest"]


def schedule_of_manifest(manifest: Any) -> CacheSchedule:
    steps = manifest.steps
    return CacheSchedule(
        [s["mask"] for s in steps],
        manifest.sites,
        [s["timestep"] for s in steps],
        meta=dict(manifest.data["schedule"].get("meta", {})),
    )


def _timed_loop(
    denoise: Any, spec: Any, sampler: Any, noise: torch.Tensor, cond: Any, null: Any, cfg: float
) -> list[float]:
    """Run one sampling loop and return the seconds of every step (model call + sampler update)."""
    from ..sampling import guided_output, model_inputs

    if hasattr(denoise, "reset"):
        denoise.reset()
    sampler.start()
    x = noise * sampler.init_noise_sigma
    times = []
    with torch.no_grad():
        for i in range(sampler.num_steps):
            t0 = time.perf_counter()
            x_in, t_in, c_in = model_inputs(sampler, x, i, cond, cfg, null)
            out = denoise(x_in, t_in, c_in)
            x = sampler.step(guided_output(out, x.shape[1], cfg), i, x)
            times.append(time.perf_counter() - t0)
    return times


def bench_engine(
    folder: str | os.PathLike[str],
    *,
    runtime: str = "ort",
    images: int = 8,
    repeat: int = 5,
    warmup: int = 1,
    threads: int = 2,
    cfg_scale: float | None = None,
    model: str | None = None,
    write: bool = True,
) -> dict[str, Any]:
    """Benchmark an exported folder; writes ``folder/bench.json`` and returns it."""
    from ..models.registry import load_model

    if runtime not in ("torch", "ort", "trt"):
        raise ConfigError(f"runtime must be torch, ort or trt, got {runtime!r}")
    if images < 1 or repeat < 1:
        raise ConfigError(f"images and repeat must be >= 1, got {images} and {repeat}")
    torch.set_num_threads(threads)
    folder = Path(folder)
    manifest = load_manifest(folder)
    spec = load_model(model or manifest.model_source)
    schedule = schedule_of_manifest(manifest)
    sampler = spec.sampler(schedule.num_steps)
    cfg = spec.default_cfg_scale if cfg_scale is None else cfg_scale
    if runtime == "torch":
        from ..api import cached_for_spec

        cached = spec.denoiser(cached_for_spec(spec, schedule))
        full = spec.denoiser(spec.model)
    elif runtime == "ort":
        from .ort import OrtRunner

        cached = OrtRunner(folder, manifest, threads=threads)
        full = OrtRunner(folder, manifest, threads=threads, full_compute=True)
        cached.check_timesteps(sampler.timesteps)
    else:
        from .tensorrt import TensorRTRunner

        cached = TensorRTRunner(folder, manifest)
        full = TensorRTRunner(folder, manifest, full_compute=True)
    noise = spec.noise(images, seed=0)
    cond, null = spec.conditions(images, seed=0)
    for _ in range(warmup):
        _timed_loop(full, spec, sampler, noise, cond, null, cfg)
        _timed_loop(cached, spec, sampler, noise, cond, null, cfg)
    full_runs, cached_runs = [], []
    for _ in range(repeat):
        full_runs.append(_timed_loop(full, spec, sampler, noise, cond, null, cfg))
        cached_runs.append(_timed_loop(cached, spec, sampler, noise, cond, null, cfg))
    full_img = statistics.median(sum(r) for r in full_runs) * 1000 / images
    cached_img = statistics.median(sum(r) for r in cached_runs) * 1000 / images
    per_step = []
    for i, step in enumerate(manifest.steps):
        f = statistics.median(r[i] for r in full_runs) * 1000
        c = statistics.median(r[i] for r in cached_runs) * 1000
        per_step.append(
            {
                "step": i,
                "timestep": step["timestep"],
                "graph": step["graph"],
                "cached_sites": step["mask"].count(False),
                "full_ms": round(f, 4),
                "cached_ms": round(c, 4),
            }
        )
    theoretical = float(manifest.data["schedule"]["theoretical_speedup"])
    real = full_img / cached_img
    result = {
        "runtime": runtime,
        "model": manifest.model_name,
        "images": images,
        "cfg_scale": cfg,
        "model_batch": images * (2 if cfg != 1.0 else 1),
        "repeat": repeat,
        "threads": threads,
        "providers": getattr(cached, "providers", None),
        "full_ms_per_image": round(full_img, 4),
        "cached_ms_per_image": round(cached_img, 4),
        "real_speedup": real,
        "theoretical_speedup": theoretical,
        "ratio_real_over_theoretical": real / theoretical,
        "cur": manifest.data["schedule"]["cur"],
        "per_step": per_step,
    }
    if write:
        atomic_write_json(folder / "bench.json", result)
    return result


def format_bench(result: dict[str, Any]) -> str:
    lines = [
        f"{result['model']} on {result['runtime']}: {result['images']} images (model batch {result['model_batch']}), "
        f"{result['repeat']} repeats, {result['threads']} threads",
        f"full   {result['full_ms_per_image']:.3f} ms/image",
        f"cached {result['cached_ms_per_image']:.3f} ms/image  (CUR {result['cur']:.2f})",
        f"real speedup {result['real_speedup']:.2f}x, theoretical {result['theoretical_speedup']:.2f}x, "
        f"ratio {result['ratio_real_over_theoretical']:.2f}",
        "",
        "step  timestep  graph  cached  full ms  cached ms",
    ]
    for r in result["per_step"]:
        lines.append(
            f"{r['step']:4d}  {r['timestep']:8g}  {r['graph']:5d}  {r['cached_sites']:6d}  "
            f"{r['full_ms']:7.3f}  {r['cached_ms']:9.3f}"
        )
    return "\n".join(lines)
