"""Library workflows: what the CLI's commands do, as functions (the CLI parses flags and prints).

- :func:`optimize_to_folder`: train (or pick) a schedule for a model and write the folder of
  artifacts (``schedule.json``, ``routers.safetensors``, ``report.json``, ``schedule.png``);
- :func:`export_schedule`: a schedule (or its folder) to an exported folder (ONNX or TensorRT),
  through the parity gate.

Example::

    from harmonica_compile.training import TrainConfig
    from harmonica_compile.workflows import export_schedule, optimize_to_folder

    report = optimize_to_folder("tiny-dit-digits", "runs/fora", config=TrainConfig(method="fora"))
    manifest = export_schedule("runs/fora", "engines/fora")
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .exporters.config import ExportConfig
from .exporters.manifest import Manifest
from .io import atomic_write_json
from .models.registry import load_model
from .schedule import CacheSchedule
from .training import TrainConfig, train_schedule

__all__ = ["export_schedule", "optimize_to_folder", "schedule_file"]


def schedule_file(path: str | os.PathLike[str]) -> Path:
    """``path`` itself, or ``path/schedule.json`` for a folder written by :func:`optimize_to_folder`."""
    path = Path(path)
    return path / "schedule.json" if path.is_dir() else path


def optimize_to_folder(
    model: Any,
    out: str | os.PathLike[str],
    *,
    config: TrainConfig,
    resume: bool = False,
    overwrite: bool = False,
    evaluate: bool = True,
    eval_num: int = 256,
    eval_seed: int | None = None,
    progress: bool = True,
    comm: Any = None,
    start: CacheSchedule | str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Train ``config``'s schedule for ``model`` (a name or a ModelSpec) into the folder ``out``;
    return the report (also written as ``report.json``). ``comm`` is the process group of a
    ``torchrun`` run (only the main process writes). ``start`` (a schedule or its file / folder) is
    one more start for ``refine="search"``; it must be for this model and step count."""
    from .evaluation import EVAL_SEED
    from .training.distributed import init_from_env

    out = Path(out)
    eval_seed = EVAL_SEED if eval_seed is None else eval_seed
    trained = config.method in ("harmonica", "l2c")
    if not resume and not overwrite and (out / "schedule.json").exists():
        hint = " or --resume to continue" if trained or config.refine == "search" else ""
        raise ConfigError(f"{out} already holds a schedule; pass --overwrite to replace it{hint}")
    comm = comm or init_from_env()
    spec = load_model(model)
    extra = {}
    if start is not None:
        if config.refine != "search":
            raise ConfigError("a start schedule is a start of the search: pass --refine search")
        extra["start"] = _start_schedule(start, spec, config)
    t0 = time.perf_counter()
    result = train_schedule(
        spec,
        config=config,
        checkpoint=out / "checkpoint.safetensors" if trained else None,
        resume=resume,
        progress=progress,
        comm=comm,
        search_checkpoint=out / "search.json" if config.refine == "search" else None,
        extra_starts=extra,
    )
    report: dict[str, Any] = {
        "method": config.method,
        "model": spec.name,
        "num_steps": config.num_steps,
        "num_sites": result.schedule.num_sites,
        "cur": result.schedule.cur,
        "target_cur": config.target_cur,
        "train_seconds": round(result.train_seconds, 2),
        "wall_seconds": round(time.perf_counter() - t0, 2),
        "iterations": config.iterations if config.method != "fora" else 0,
        "processes": comm.world_size,
        "resumed_from": result.resumed_from,
        "config": config.to_json(),
        "forecast": config.forecast,
        "branches_used": sorted({k for row in result.schedule.branches for k in row} - {"compute"}),
    }
    if result.search is not None:
        report["search"] = {k: v for k, v in result.search.items() if k != "history"}
        report["calibration"] = result.search["calibration"]
        report["start"] = {"name": result.search["start"], "calibration_mse": result.search["start_error"]}
        report["calibration_mse"] = result.search["final_error"]
    if not comm.is_main:
        return report
    if evaluate:
        from .evaluation import evaluate_schedule

        report["evaluation"] = {"seed": eval_seed, "num": eval_num}
        report.update(evaluate_schedule(spec, result.schedule, num=eval_num, seed=eval_seed, progress=progress))
    out.mkdir(parents=True, exist_ok=True)
    result.schedule.save(out / "schedule.json")
    result.save_routers(out / "routers.safetensors")
    report["history"] = result.history
    if result.search is not None:
        report["search_history"] = result.search["history"]
    atomic_write_json(out / "report.json", report)
    from .plots import save_schedule_heatmap

    save_schedule_heatmap(
        result.schedule,
        out / "schedule.png",
        title=f"{spec.name}: {config.method}{' + search' if config.refine == 'search' else ''}, "
        f"{config.num_steps} steps, CUR {result.schedule.cur:.2f}",
    )
    return report


def _start_schedule(start: Any, spec: Any, config: TrainConfig) -> CacheSchedule:
    schedule = start if isinstance(start, CacheSchedule) else CacheSchedule.load(schedule_file(start))
    if schedule.num_steps != config.num_steps:
        raise ConfigError(
            f"the start schedule has {schedule.num_steps} steps, the search is for {config.num_steps}; "
            f"give a {config.num_steps}-step schedule or --steps {schedule.num_steps}"
        )
    made_for = schedule.meta.get("model")
    if made_for and made_for != spec.name:
        raise ConfigError(f"the start schedule was made for model {made_for!r}, not {spec.name!r}")
    schedule.check_sites(spec.cacheable().site_names, what=f"model {spec.name!r}")
    return schedule


def export_schedule(
    schedule: CacheSchedule | str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    format: str = "onnx",
    model: Any = None,
    config: ExportConfig | None = None,
    check: bool = True,
    onnx_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> Manifest:
    """Export a schedule (a CacheSchedule, a ``schedule.json`` or its folder) for ``model`` (default:
    the model the schedule names) to the folder ``out``, through the ONNX parity gate unless
    ``check=False``. ``format`` is ``onnx`` or ``tensorrt``."""
    from .runtime.parity import onnx_parity_gate

    if format not in ("onnx", "tensorrt"):
        raise ConfigError(f"format must be 'onnx' or 'tensorrt', got {format!r}")
    source = schedule if isinstance(schedule, CacheSchedule) else CacheSchedule.load(schedule_file(schedule))
    name = model or source.meta.get("model_source") or source.meta.get("model")
    if not name:
        raise ConfigError(f"{schedule} does not say which model it is for; pass --model")
    spec = load_model(name)
    cached = spec.cached(source)
    sampler = spec.sampler(source.num_steps)
    config = config or ExportConfig()
    gate = onnx_parity_gate(spec, sampler, progress=progress) if check else None
    if format == "onnx":
        from .exporters.onnx import export_onnx

        if config.fp16 or config.tf32:
            raise ConfigError("--fp16 and --tf32 set TensorRT engine precision; pass them with --format tensorrt")
        return export_onnx(cached, out, model_name=spec.name, sampler=sampler, spec=spec, config=config, check=gate)
    from .exporters.tensorrt import export_tensorrt

    return export_tensorrt(
        cached, out, model_name=spec.name, sampler=sampler, spec=spec, config=config, onnx_dir=onnx_dir, check=gate
    )
