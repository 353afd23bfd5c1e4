"""The ``harmonica-compile`` command line.

    harmonica-compile demo --out DIR                 train, export, benchmark the default model
    harmonica-compile optimize --model M --steps 20 --method harmonica --target-cur 0.5 --out DIR
    harmonica-compile sample --model M --num 16 [--schedule DIR/schedule.json | --engine ENG] --out s.npz
    harmonica-compile export DIR --format onnx|tensorrt --out ENG
    harmonica-compile bench ENG --runtime torch|ort|trt
    harmonica-compile evaluate samples.npz [--reference full.npz]
    harmonica-compile show [--model M] [--passes] [--schedule S]

Every error we raise on purpose is printed on one line and exits with code 2; ``--debug`` prints the
traceback as well.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from unittest import mock

from .errors import ConfigError, HarmonicaError

__all__ = ["build_parser", "main"]

DEFAULT_MODEL = "tiny-dit-digits"
_PROVIDERS_HELP = (
    "ONNX Runtime execution providers in order, comma-separated (default: CUDAExecutionProvider when "
    "offered, else CPUExecutionProvider; TensorrtExecutionProvider only when named)"
)


# ---------------------------------------------------------------------------------------------- helpers
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _save_npz(path: Path, **arrays: Any) -> Path:
    import numpy as np

    from .io import atomic_write_bytes

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def load_samples(path: str | Path) -> dict[str, Any]:
    """Read a ``.npz`` written by ``harmonica-compile sample`` (no pickled objects allowed)."""
    import numpy as np

    from .errors import ArtifactError

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"samples file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {k: data[k] for k in data.files}
    except Exception as e:
        raise ArtifactError(f"samples file {path} is not a readable .npz ({type(e).__name__}: {e})") from e
    if "images" not in out:
        raise ArtifactError(f"samples file {path} holds no 'images' array (found {sorted(out)})")
    return out


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


# ---------------------------------------------------------------------------------------------- commands
def cmd_show(args: argparse.Namespace) -> int:
    from .passes import describe_pipeline

    if args.passes:
        print(describe_pipeline())
    if args.schedule:
        from .schedule import CacheSchedule

        print(CacheSchedule.load(args.schedule).summary())
    if args.model or not (args.passes or args.schedule):
        from .models.registry import load_model
        from .passes import graph_text

        spec = load_model(args.model or DEFAULT_MODEL)
        dumps = [f"before:{n}" for n in args.dump_before] + [f"after:{n}" for n in args.dump_after]
        env = {"HARMONICA_DUMP": ",".join(dumps)} if dumps else {}
        with mock.patch.dict(os.environ, env):  # the pass managers read the dump request from here
            cm = spec.cacheable()
        info = spec.describe()
        info["sites"] = [{"name": s.name, "kind": s.kind, "outputs": s.num_outputs, "gated": s.gated} for s in cm.sites]
        info["capture"] = [{"pass": n, **c} for n, c in cm.captured.history]
        _print_json(info)
        if args.graph:
            print(graph_text(cm.graph_module))
    return 0


def _schedule_and_cached(spec: Any, schedule_path: str | None, steps: int) -> Any:
    if schedule_path is None:
        return None
    from .api import cached_for_spec

    path = Path(schedule_path)
    if path.is_dir():
        path = path / "schedule.json"
    return cached_for_spec(spec, str(path), steps=steps)


def cmd_sample(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from .models.registry import load_model
    from .sampling import generate

    torch.set_num_threads(args.threads)
    if args.engine:
        from .runtime import open_engine

        options = {} if args.providers is None else {"providers": args.providers.split(",")}
        if options and args.runtime == "trt":
            raise ConfigError("--providers chooses ONNX Runtime execution providers; --runtime trt takes none")
        runner = open_engine(args.engine, runtime=args.runtime, **options)
        spec = load_model(runner.manifest.model_source if args.model is None else args.model)
        runner.check_model(spec.name)
        steps = runner.num_steps if args.steps is None else args.steps
        runner.check_steps(steps)
        denoise = runner
        note = getattr(runner, "provider_note", None)
        if note:
            print(f"note: {note}", file=sys.stderr)
    else:
        spec = load_model(args.model or DEFAULT_MODEL)
        steps = spec.default_steps if args.steps is None else args.steps
        cached = _schedule_and_cached(spec, args.schedule, steps)
        denoise = None if cached is None else spec.denoiser(cached)
    cfg = spec.default_cfg_scale if args.cfg_scale is None else args.cfg_scale
    images, labels = generate(
        spec,
        denoise,
        num=args.num,
        steps=steps,
        cfg_scale=cfg,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    if args.engine:
        print(f"ran on {denoise.describe()}")
    meta = {
        "model": spec.name,
        "steps": steps,
        "cfg_scale": cfg,
        "seed": args.seed,
        "num": args.num,
        "schedule": args.schedule,
        "engine": args.engine,
    }
    arrays: dict[str, Any] = {"images": images.numpy().astype(np.float32), "meta": np.array(json.dumps(meta))}
    if labels is not None:
        arrays["labels"] = labels.numpy()
    out = _save_npz(Path(args.out), **arrays)
    if args.grid:
        from .plots import save_grid

        save_grid(images[: min(len(images), 100)], args.grid, ncol=10, title=f"{spec.name}, {steps} steps, cfg {cfg:g}")
    print(f"wrote {len(images)} samples to {out}" + (f" and a grid to {args.grid}" if args.grid else ""))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from .metrics import DigitsEvaluator, fidelity

    data = load_samples(args.samples)
    images = torch.from_numpy(data["images"])
    result: dict[str, Any] = {"num": len(images)}
    if args.reference:
        ref = load_samples(args.reference)
        result.update(fidelity(images, torch.from_numpy(ref["images"])))
    if images.shape[1:] == (1, 16, 16) and "labels" in data:
        ev = DigitsEvaluator()
        result["accuracy"] = ev.accuracy(images, torch.from_numpy(data["labels"]))
        result["frechet"] = ev.frechet(images)
    _print_json(result)
    return 0


def run_optimize(args: argparse.Namespace) -> dict[str, Any]:
    """The work of ``harmonica-compile optimize``; returns the report."""
    import time

    import torch

    from .io import atomic_write_json
    from .metrics import evaluate_schedule
    from .models.registry import load_model
    from .training import TrainConfig, train_schedule
    from .training.distributed import init_from_env

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    ckpt = out / "checkpoint.safetensors"
    if not args.resume and not args.overwrite and (out / "schedule.json").exists():
        raise ConfigError(f"{out} already holds a schedule; pass --overwrite to replace it or --resume to continue")
    options = {
        k: v
        for k, v in {
            "method": args.method,
            "num_steps": args.steps,
            "target_cur": args.target_cur,
            "beta": args.beta,
            "iterations": args.iterations,
            "batch_size": args.batch_size,
            "cfg_scale": args.cfg_scale,
            "lr": args.lr,
            "tau": args.tau,
            "lambda_mode": args.lambda_mode,
            "lambda_every": args.lambda_every,
            "fora_interval": args.interval,
            "seed": args.seed,
            "checkpoint_every": args.checkpoint_every,
            "ste": not args.soft,
        }.items()
        if v is not None
    }
    if args.target_cur is None:
        options["target_cur"] = None if args.beta is not None else 0.5
    config = TrainConfig(**options)
    comm = init_from_env()
    spec = load_model(args.model)
    t0 = time.perf_counter()
    result = train_schedule(
        spec,
        config=config,
        checkpoint=ckpt if config.method != "fora" else None,
        resume=args.resume,
        progress=not args.quiet,
        comm=comm,
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
    }
    if not comm.is_main:
        return report
    if not args.no_eval:
        report.update(evaluate_schedule(spec, result.schedule, num=args.eval_num, seed=args.eval_seed))
    out.mkdir(parents=True, exist_ok=True)
    from .plots import save_schedule_heatmap

    result.schedule.save(out / "schedule.json")
    result.save_routers(out / "routers.safetensors")
    report["history"] = result.history
    atomic_write_json(out / "report.json", report)
    save_schedule_heatmap(
        result.schedule,
        out / "schedule.png",
        title=f"{spec.name}: {config.method}, {config.num_steps} steps, CUR {result.schedule.cur:.2f}",
    )
    return report


def cmd_optimize(args: argparse.Namespace) -> int:
    report = run_optimize(args)
    keys = [
        "method",
        "num_steps",
        "num_sites",
        "cur",
        "theoretical_speedup",
        "final_mse",
        "psnr_db",
        "accuracy",
        "accuracy_full",
        "frechet",
        "frechet_full",
        "train_seconds",
    ]
    summary = {k: report[k] for k in keys if k in report}
    _print_json(summary)
    print(f"wrote {args.out}/schedule.json, routers.safetensors, report.json, schedule.png")
    return 0


def _schedule_source(path_text: str) -> Path:
    path = Path(path_text)
    return path / "schedule.json" if path.is_dir() else path


def cmd_export(args: argparse.Namespace) -> int:
    import time

    import torch

    from .api import cached_for_spec
    from .exporters.config import ExportConfig
    from .models.registry import load_model
    from .schedule import CacheSchedule

    torch.set_num_threads(args.threads)
    schedule = CacheSchedule.load(_schedule_source(args.schedule))
    name = args.model or schedule.meta.get("model_source") or schedule.meta.get("model")
    if not name:
        raise ConfigError(f"{args.schedule} does not say which model it is for; pass --model")
    spec = load_model(name)
    cached = cached_for_spec(spec, schedule)
    sampler = spec.sampler(schedule.num_steps)
    config = ExportConfig(
        opset=args.opset, max_batch=args.max_batch, opt_batch=args.opt_batch, fp16=args.fp16, tf32=args.tf32
    )
    t0 = time.perf_counter()
    if args.format == "onnx":
        from .exporters.onnx import export_onnx

        if args.fp16 or args.tf32:
            raise ConfigError("--fp16 and --tf32 set TensorRT engine precision; pass them with --format tensorrt")
        manifest = export_onnx(
            cached, args.out, model_name=spec.name, sampler=sampler, spec=spec, config=config, check=not args.no_check
        )
    else:
        from .exporters.tensorrt import export_tensorrt

        manifest = export_tensorrt(
            cached,
            args.out,
            model_name=spec.name,
            sampler=sampler,
            spec=spec,
            config=config,
            onnx_dir=args.onnx_dir,
            check=not args.no_check,
        )
    seconds = time.perf_counter() - t0
    total = sum(p.stat().st_size for p in Path(args.out).iterdir() if p.is_file())
    print(
        f"wrote {len(manifest.graphs)} graphs for {manifest.num_steps} steps to {args.out} "
        f"({total / 1e6:.2f} MB, {seconds:.1f} s)"
    )
    if "parity" in manifest.data:
        p = manifest.data["parity"]
        print(
            f"parity gate passed: graphs max |diff| {p['graph_max_abs_diff']:.1e}, "
            f"trajectory max |diff| {p.get('trajectory_max_abs_diff', float('nan')):.1e}"
        )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .runtime.bench import bench_engine, format_bench

    result = bench_engine(
        args.engine,
        runtime=args.runtime,
        images=args.images,
        repeat=args.repeat,
        threads=args.threads,
        cfg_scale=args.cfg_scale,
        model=args.model,
        providers=None if args.providers is None else args.providers.split(","),
    )
    print(format_bench(result))
    print(f"wrote {Path(args.engine) / 'bench.json'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Train a HarmoniCa schedule for the default model, export it, benchmark it, compare quality."""
    import time

    import torch

    from .api import cached_for_spec
    from .exporters.onnx import export_onnx
    from .io import atomic_write_json
    from .metrics import DigitsEvaluator, fidelity
    from .models.registry import load_model
    from .plots import save_side_by_side
    from .runtime.bench import bench_engine
    from .sampling import generate

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    print(f"[1/4] training a HarmoniCa schedule: {args.model}, {args.steps} steps, target CUR {args.target_cur}")
    opt_args = build_parser().parse_args(
        [
            "optimize",
            "--model",
            args.model,
            "--steps",
            str(args.steps),
            "--method",
            "harmonica",
            "--target-cur",
            str(args.target_cur),
            "--iterations",
            str(args.iterations),
            "--eval-num",
            str(args.num),
            "--out",
            str(out / "schedule"),
            "--overwrite",
            "--threads",
            str(args.threads),
        ]
        + (["--quiet"] if args.quiet else [])
    )
    report = run_optimize(opt_args)
    spec = load_model(args.model)
    schedule_path = out / "schedule" / "schedule.json"
    cached = cached_for_spec(spec, str(schedule_path))
    print("[2/4] exporting one ONNX graph per distinct step mask (with the parity gate)")
    t0 = time.perf_counter()
    manifest = export_onnx(cached, out / "onnx", model_name=spec.name, sampler=spec.sampler(args.steps), spec=spec)
    export_s = time.perf_counter() - t0
    print("[3/4] benchmarking cached against full compute (same run)")
    bench = {
        rt: bench_engine(out / "onnx", runtime=rt, images=args.bench_images, repeat=args.repeat, threads=args.threads)
        for rt in ("ort", "torch")
    }
    atomic_write_json(out / "onnx" / "bench.json", bench["ort"])
    print("[4/4] samples from the same noise: full compute and cached, side by side")
    full, labels = generate(spec, num=20, steps=args.steps, seed=args.seed)
    fast, _ = generate(spec, spec.denoiser(cached), num=20, steps=args.steps, seed=args.seed)
    save_side_by_side(
        {"full compute": full, f"HarmoniCa, CUR {report['cur']:.2f}": fast},
        out / "samples.png",
        ncol=10,
        suptitle=f"{spec.name}: {args.steps} DDIM steps, same noise and labels",
    )
    summary = {
        "model": spec.name,
        "steps": args.steps,
        "cur": report["cur"],
        "theoretical_speedup": report.get("theoretical_speedup"),
        "ort_real_speedup": bench["ort"]["real_speedup"],
        "torch_real_speedup": bench["torch"]["real_speedup"],
        "ort_cached_ms_per_image": bench["ort"]["cached_ms_per_image"],
        "torch_cached_ms_per_image": bench["torch"]["cached_ms_per_image"],
        "final_mse": report.get("final_mse"),
        "psnr_db": report.get("psnr_db"),
        "accuracy_cached": report.get("accuracy"),
        "accuracy_full": report.get("accuracy_full"),
        "frechet_cached": report.get("frechet"),
        "frechet_full": report.get("frechet_full"),
        "train_seconds": report["train_seconds"],
        "export_seconds": round(export_s, 2),
        "graphs": len(manifest.graphs),
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "sample_psnr_db_20": fidelity(fast, full)["psnr_db"],
    }
    if spec.evaluator == "digits":
        summary["sample_accuracy_20"] = DigitsEvaluator().accuracy(fast, labels)
    atomic_write_json(out / "summary.json", summary)
    rows = [
        ("cache usage ratio (CUR)", f"{summary['cur']:.2f}"),
        ("theoretical speedup (FLOPs)", f"{summary['theoretical_speedup']:.2f}x"),
        ("measured speedup, ONNX Runtime", f"{summary['ort_real_speedup']:.2f}x"),
        ("measured speedup, torch eager", f"{summary['torch_real_speedup']:.2f}x"),
        (
            "ms per image, ORT cached / torch cached",
            f"{summary['ort_cached_ms_per_image']:.2f} / {summary['torch_cached_ms_per_image']:.2f}",
        ),
        ("final-image PSNR vs full compute", f"{summary['psnr_db']} dB (MSE {summary['final_mse']:.2e})"),
    ]
    if summary.get("accuracy_cached") is not None:
        acc = f"{summary['accuracy_cached']:.3f} / {summary['accuracy_full']:.3f}"
        fd = f"{summary['frechet_cached']:.2f} / {summary['frechet_full']:.2f}"
        rows += [("digit accuracy, cached / full", acc), ("Frechet distance, cached / full", fd)]
    rows.append(
        (
            "train / export / total seconds",
            f"{summary['train_seconds']:.0f} / {summary['export_seconds']:.0f} / {summary['total_seconds']:.0f}",
        )
    )
    width = max(len(k) for k, _ in rows)
    print()
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    print(f"\nwrote {out}/summary.json, samples.png, schedule/ (schedule.json, schedule.png, report.json), onnx/")
    return 0


# ---------------------------------------------------------------------------------------------- parser
def _add_common_sampling(p: argparse.ArgumentParser, *, model_default: str | None = DEFAULT_MODEL) -> None:
    p.add_argument(
        "--model",
        default=model_default,
        help=f"model name, checkpoint, diffusers folder or pkg.mod:factory (default {DEFAULT_MODEL})",
    )
    p.add_argument("--steps", type=_positive_int, default=None, help="sampling steps (default: the model's)")
    p.add_argument("--cfg-scale", type=_float, default=None, help="classifier-free guidance scale; 1 disables it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=_positive_int, default=2, help="torch CPU threads (default 2)")


def build_parser() -> argparse.ArgumentParser:
    from .exporters.config import DEFAULT_MAX_BATCH, DEFAULT_OPSET

    parser = argparse.ArgumentParser(
        prog="harmonica-compile",
        description="Learned feature caching (HarmoniCa) for Diffusion Transformers, compiled per step.",
    )
    parser.add_argument("--debug", action="store_true", help="print tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("show", help="print a model's cache sites, the pass pipeline, or a schedule")
    p.add_argument("--model", default=None)
    p.add_argument("--passes", action="store_true", help="print the pass pipeline")
    p.add_argument("--schedule", default=None, help="print a schedule.json as a text picture")
    p.add_argument("--graph", action="store_true", help="print the captured graph")
    p.add_argument("--dump-before", action="append", default=[], metavar="PASS", help="dump the graph before PASS")
    p.add_argument("--dump-after", action="append", default=[], metavar="PASS", help="dump the graph after PASS")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("sample", help="generate samples (full compute, a schedule, or an exported engine)")
    _add_common_sampling(p, model_default=None)
    p.add_argument("--num", type=_positive_int, default=16, help="number of samples")
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--schedule", default=None, help="schedule.json (or its folder) to sample through a CachedModel")
    p.add_argument("--engine", default=None, help="an exported folder (ONNX or TensorRT) to sample with")
    p.add_argument("--runtime", default="auto", choices=["auto", "ort", "trt"], help="runtime for --engine")
    p.add_argument("--providers", default=None, help=_PROVIDERS_HELP)
    p.add_argument("--out", required=True, help="output .npz with images (N x C x H x W in [-1, 1]) and labels")
    p.add_argument("--grid", default=None, help="also write a PNG grid of the samples")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("optimize", help="learn a cache schedule (HarmoniCa, L2C) or pick FORA's")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--steps", type=_positive_int, default=20, help="sampling steps of the schedule (default 20)")
    p.add_argument("--method", default="harmonica", choices=["harmonica", "l2c", "fora"])
    p.add_argument(
        "--target-cur", type=_float, default=None, help="cache usage ratio to reach, in (0, 1) (default 0.5)"
    )
    p.add_argument("--beta", type=_float, default=None, help="train with this fixed L1 weight instead of a CUR target")
    p.add_argument(
        "--interval", type=_positive_int, default=None, help="FORA interval (default: closest to the target)"
    )
    p.add_argument("--iterations", type=_positive_int, default=None, help="training iterations (default 300)")
    p.add_argument("--batch-size", type=_positive_int, default=None, help="images per iteration (default 8)")
    p.add_argument("--cfg-scale", type=_float, default=None, help="guidance during training (default: the model's)")
    p.add_argument("--lr", type=_float, default=None)
    p.add_argument("--tau", type=_float, default=None)
    p.add_argument("--lambda-mode", default=None, choices=["paper", "incremental", "none"])
    p.add_argument(
        "--lambda-every", type=_positive_int, default=None, help="recompute IEPO's lambda every C iterations"
    )
    p.add_argument("--soft", action="store_true", help="soft mixing instead of the straight-through estimator")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")
    p.add_argument("--overwrite", action="store_true", help="replace an existing schedule in OUT")
    p.add_argument("--eval-num", type=_positive_int, default=256, help="samples for the report (default 256)")
    p.add_argument("--eval-seed", type=int, default=0)
    p.add_argument("--no-eval", action="store_true", help="skip the quality evaluation")
    p.add_argument("--threads", type=_positive_int, default=2)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_optimize)

    p = sub.add_parser("export", help="export a schedule as per-step ONNX graphs or TensorRT engines")
    p.add_argument("schedule", help="an optimize output folder or a schedule.json")
    p.add_argument("--format", default="onnx", choices=["onnx", "tensorrt"])
    p.add_argument("--out", required=True, help="the folder to write (replaced as a whole, atomically)")
    p.add_argument("--model", default=None, help="the model (default: the one the schedule names)")
    p.add_argument("--opset", type=_positive_int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument(
        "--max-batch",
        type=_positive_int,
        default=DEFAULT_MAX_BATCH,
        help=f"largest model batch a graph takes, i.e. images x2 with guidance (default {DEFAULT_MAX_BATCH}); "
        "sample --engine and bench split larger runs to fit",
    )
    p.add_argument(
        "--opt-batch", type=_positive_int, default=None, help="batch TensorRT optimizes for (default: --max-batch)"
    )
    p.add_argument("--fp16", action="store_true", help="TensorRT 10: build fp16 engines (TensorRT 11: see README)")
    p.add_argument("--tf32", action="store_true", help="TensorRT: let fp32 layers use TF32 (off: fp32 means fp32)")
    p.add_argument("--onnx-dir", default=None, help="TensorRT: reuse an ONNX export instead of exporting again")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime parity gate")
    p.add_argument("--threads", type=_positive_int, default=2)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", help="latency of an exported schedule against full compute, in one run")
    p.add_argument("engine", help="an exported folder")
    p.add_argument("--runtime", default="ort", choices=["torch", "ort", "trt"])
    p.add_argument("--providers", default=None, help=_PROVIDERS_HELP)
    p.add_argument("--images", type=_positive_int, default=8, help="images per sampling run (default 8)")
    p.add_argument("--model", default=None, help="the model (default: the one the folder was exported from)")
    p.add_argument("--repeat", type=_positive_int, default=5)
    p.add_argument("--cfg-scale", type=_float, default=None)
    p.add_argument("--threads", type=_positive_int, default=2)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("demo", help="train, export and benchmark a schedule for the default model, end to end")
    p.add_argument("--out", required=True)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--steps", type=_positive_int, default=20)
    p.add_argument("--target-cur", type=_float, default=0.5)
    p.add_argument("--iterations", type=_positive_int, default=300)
    p.add_argument("--num", type=_positive_int, default=256, help="samples for the quality report")
    p.add_argument("--bench-images", type=_positive_int, default=16)
    p.add_argument("--repeat", type=_positive_int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=_positive_int, default=2)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("evaluate", help="quality of a samples .npz (PSNR vs a reference, digits accuracy, Frechet)")
    p.add_argument("samples")
    p.add_argument("--reference", default=None, help="full-compute samples from the same seed")
    p.set_defaults(func=cmd_evaluate)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except HarmonicaError as e:
        if args.debug:
            traceback.print_exc()
        message = " ".join(str(e).split())
        print(f"harmonica-compile {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("harmonica-compile: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
