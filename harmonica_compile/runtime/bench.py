"""``harmonica-compile bench``: latency of a cached schedule against full compute, same run.

Each repeat samples the images with full compute and then with the cached schedule (round-robin,
so machine load affects both alike) through the one sampling loop, timing every step with its
callback; work is split into calls that fit the folder's batch profile. Reported: per-image and
per-step latency (median over repeats), ``real_speedup`` = full / cached per image, and the
``theoretical_speedup`` of the schedule (FLOPs).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..exporters.manifest import load_manifest
from ..io import atomic_write_json
from ..sampling.guidance import uses_cfg
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


def _timed_run(
    denoise: Any, sampler: Any, noise: torch.Tensor, cond: Any, null: Any, cfg: float, per_call: int
) -> list[float]:
    """Sample every image through the one sampling loop, ``per_call`` images per call, and return
    the seconds of every step (model call + sampler update), summed over the calls."""
    from ..sampling import sample, slice_conditions

    times = [0.0] * sampler.num_steps
    marks: list[float] = []

    def tick(_step: int, x: torch.Tensor) -> None:
        if x.is_cuda:  # GPU work is asynchronous: a step ends when its kernels do
            torch.cuda.synchronize(x.device)
        marks.append(time.perf_counter())

    for start in range(0, len(noise), per_call):
        stop = min(start + per_call, len(noise))
        marks.clear()
        begin = time.perf_counter()
        sample(
            denoise,
            noise[start:stop],
            slice_conditions(cond, start, stop),
            sampler,
            cfg_scale=cfg,
            null_cond=slice_conditions(null, start, stop),
            callback=tick,
        )
        for i, mark in enumerate(marks):
            times[i] += mark - begin
            begin = mark
    return times


def bench_engine(
    folder: str | os.PathLike[str],
    *,
    runtime: str = "ort",
    images: int = 8,
    repeat: int = 5,
    warmup: int = 1,
    threads: int | None = None,
    cfg_scale: float | None = None,
    model: str | None = None,
    providers: Sequence[str] | None = None,
    write: bool = True,
    out: str | os.PathLike[str] | None = None,
    progress: bool = False,
    compile: bool = False,
    dtype: str | torch.dtype | None = None,
) -> dict[str, Any]:
    """Benchmark an exported folder; writes ``folder/bench-<runtime>.json`` (or ``out``) and returns it.

    Work is split into calls that fit the folder's batch profile (``max_batch`` counts the model
    batch, twice the images with guidance), so any ``images`` works with any export. Full compute
    and the schedule run the same code path (for ``torch``: a CachedModel of the all-compute
    schedule) with the same warm-up; a measured speedup above the FLOP bound by more than the
    run-to-run noise is flagged (``plausible``, ``warning``).

    ``compile=True`` (torch only) runs both sides through ``torch.compile``; every graph is compiled
    before the warm-up, and the compile seconds are reported apart (``compile_seconds``), never in
    the timed runs. ``dtype="bf16"``/``"fp16"`` (torch only) runs both sides' token matmuls in that
    dtype (CachedModel's ``dtype=``).
    """
    from ..models.registry import load_model
    from ..passes.lower_precision import resolve_dtype
    from ..sampling import fit_batch

    if runtime not in ("torch", "ort", "trt"):
        raise ConfigError(f"runtime must be torch, ort or trt, got {runtime!r}")
    if images < 1 or repeat < 1:
        raise ConfigError(f"images and repeat must be >= 1, got {images} and {repeat}")
    if providers is not None and runtime != "ort":
        raise ConfigError(f"providers choose ONNX Runtime execution providers; runtime {runtime!r} takes none")
    if compile and runtime != "torch":
        raise ConfigError(f"compile runs the torch step graphs through torch.compile; runtime {runtime!r} has its own")
    compute_dtype = resolve_dtype(dtype)
    if compute_dtype != torch.float32 and runtime != "torch":
        raise ConfigError(
            f"dtype lowers the torch step graphs; runtime {runtime!r} runs the exported fp32 graphs "
            "(TensorRT: export with --fp16)"
        )
    from ..threads import choose_threads

    threads, _ = choose_threads(threads)
    torch.set_num_threads(threads)
    folder = Path(folder)
    manifest = load_manifest(folder)
    spec = load_model(model or manifest.model_source)
    schedule = schedule_of_manifest(manifest)
    sampler = spec.sampler(schedule.num_steps)
    cfg = spec.default_cfg_scale if cfg_scale is None else cfg_scale
    compiled: dict[str, Any] = {}
    if runtime == "torch":
        cached_model = spec.cached(schedule, compile=compile, dtype=compute_dtype)
        everything = CacheSchedule.all_compute(schedule.sites, schedule.num_steps, timesteps=schedule.timesteps)
        full_model = spec.cached(everything, compile=compile, dtype=compute_dtype)
        compiled = {"full": full_model, "cached": cached_model} if compile else {}
        cached, full = spec.denoiser(cached_model), spec.denoiser(full_model)
    else:
        from . import open_engine

        options: dict[str, Any] = {"threads": threads, "providers": providers} if runtime == "ort" else {}
        cached = open_engine(folder, runtime, manifest=manifest, **options)
        full = open_engine(folder, runtime, manifest=manifest, full_compute=True, **options)
        for runner in (cached, full):
            runner.check_model(spec.name)
            runner.check_sampler(sampler)
    per_call = fit_batch(cached, images, cfg)  # runners have a max_batch; torch modules none
    model_batch = per_call * (2 if uses_cfg(cfg) else 1)
    compile_seconds: dict[str, float] | None = None
    if compiled:  # compiled at the batch the runs call with, before the warm-up
        example = spec.example_inputs(model_batch)
        compile_seconds = {side: sum(m.warmup(example).values()) for side, m in compiled.items()}
    noise = spec.noise(images, seed=0)
    cond, null = spec.conditions(images, seed=0)
    from tqdm import tqdm

    bar = tqdm(total=2 * (warmup + repeat), desc=f"bench {runtime}", unit="run", disable=not progress)
    for _ in range(warmup):
        for denoise in (full, cached):
            _timed_run(denoise, sampler, noise, cond, null, cfg, per_call)
            bar.update()
    full_runs, cached_runs = [], []
    for _ in range(repeat):
        full_runs.append(_timed_run(full, sampler, noise, cond, null, cfg, per_call))
        bar.update()
        cached_runs.append(_timed_run(cached, sampler, noise, cond, null, cfg, per_call))
        bar.update()
    bar.close()
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
    noise = _relative_spread([sum(r) for r in full_runs]) + _relative_spread([sum(r) for r in cached_runs])
    plausible = real <= theoretical * (1 + noise) if repeat > 1 else None
    result = {
        "runtime": runtime,
        "model": manifest.model_name,
        "images": images,
        "cfg_scale": cfg,
        "model_batch": model_batch,
        "images_per_call": per_call,
        "repeat": repeat,
        "threads": threads,
        "providers": _providers_used(runtime, cached, compile, compute_dtype),
        "dtype": str(compute_dtype).removeprefix("torch."),
        "compile_seconds": compile_seconds,
        "full_ms_per_image": round(full_img, 4),
        "cached_ms_per_image": round(cached_img, 4),
        "real_speedup": real,
        "theoretical_speedup": theoretical,
        "ratio_real_over_theoretical": real / theoretical,
        "noise": noise,
        "plausible": plausible,
        "warning": _warning(real, theoretical, noise, repeat),
        "warmup": warmup,
        "cur": manifest.data["schedule"]["cur"],
        "per_step": per_step,
    }
    if write:
        path = Path(out) if out is not None else folder / f"bench-{runtime}.json"
        atomic_write_json(path, result)
        result["file"] = str(path)
    return result


def _relative_spread(totals: list[float]) -> float:
    """(max - min) / median of one side's run times: the run-to-run noise of its median."""
    return (max(totals) - min(totals)) / statistics.median(totals) if len(totals) > 1 else 0.0


def _warning(real: float, theoretical: float, noise: float, repeat: int) -> str | None:
    """Why a measured speedup cannot be trusted, or ``None``."""
    if repeat < 2:
        return "one repeat: the run-to-run noise is unknown, so the speedup cannot be checked against the FLOP bound"
    if real <= theoretical * (1 + noise):
        return None
    return (
        f"the measured speedup {real:.2f}x exceeds the FLOP bound {theoretical:.2f}x by more than the run-to-run "
        f"noise (+-{noise:.0%}); suspect too little warm-up (first-call costs landing on one side), the two sides "
        "running different code, or inputs cached between repeats, and note that the bound counts matmul, "
        "convolution and attention FLOPs only: on a model this small the norms, activations and copies a cached "
        "site also skips can be a large share of a step; rerun with more --repeat and --warmup on an idle machine"
    )


def _providers_used(runtime: str, runner: Any, compiled: bool = False, dtype: torch.dtype = torch.float32) -> list[str]:
    """What really ran: the providers ONNX Runtime's sessions report, TensorRT's version, or torch."""
    if runtime == "torch":
        low = f", {str(dtype).removeprefix('torch.')} matmuls" if dtype != torch.float32 else ""
        return [f"torch {torch.__version__} {'compiled (inductor)' if compiled else 'eager'}{low}"]
    return list(getattr(runner, "active_providers", None) or runner.providers)


def format_bench(result: dict[str, Any]) -> str:
    lines = [
        f"{result['model']} on {result['runtime']} ({', '.join(result['providers'])}): {result['images']} images "
        f"(model batch {result['model_batch']} per call), {result['repeat']} repeats, {result['threads']} threads",
        f"full   {result['full_ms_per_image']:.3f} ms/image",
        f"cached {result['cached_ms_per_image']:.3f} ms/image  (CUR {result['cur']:.2f})",
        f"real speedup {result['real_speedup']:.2f}x, theoretical {result['theoretical_speedup']:.2f}x, "
        f"ratio {result['ratio_real_over_theoretical']:.2f} (run-to-run noise +-{result['noise']:.0%})",
        *([f"warning: {result['warning']}"] if result.get("warning") else []),
        *(
            [
                f"compile (not timed above): full {result['compile_seconds']['full']:.1f} s, cached "
                f"{result['compile_seconds']['cached']:.1f} s"
            ]
            if result.get("compile_seconds")
            else []
        ),
        "",
        "step  timestep  graph  cached  full ms  cached ms",
    ]
    for r in result["per_step"]:
        lines.append(
            f"{r['step']:4d}  {r['timestep']:8g}  {r['graph']:5d}  {r['cached_sites']:6d}  "
            f"{r['full_ms']:7.3f}  {r['cached_ms']:9.3f}"
        )
    return "\n".join(lines)
