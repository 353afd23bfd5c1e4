"""The GPU check: everything harmonica-compile runs on a GPU, in one command, with honest skips.

    bash benchmarks/gpu_check.sh                 # on a CUDA machine; writes benchmarks/results/gpu/<gpu>.json|md
    bash benchmarks/gpu_check.sh --dry-run --out /tmp/gpu-check   # the same code on the CPU, small models

Parts, each reported as run or skipped with its reason:

1. ``environment``: torch, CUDA, the GPU, and which optional packages import (onnxruntime and its
   providers, tensorrt, trtexec, safetensors, onnxscript).
2. ``torch``: the torch runtime (:class:`~harmonica_compile.CachedModel`) on the device, captured
   there, in fp32 and bf16: the shipped ``tiny-dit-digits`` (FORA(2), CUR 0.5, 20 steps, guidance
   on, its default) and a DiT-XL/2-sized model with random weights (latent 32x32, batch 8, 16 steps,
   whole-step schedules at CUR 0.375, the paper's DiT-XL/2 operating point, and 0.5). For each:
   full-compute parity of a computed step against eager, and the measured speedup of the cached
   sampling loop over the full-compute one (the same captured code path, CUDA events) against the
   schedule's FLOP speedup. Then the DiT-XL/2 FORA(2) case again through ``torch.compile``
   (``CachedModel(compile=True)``: CUDA graphs on CUDA), fp32 and bf16, compile seconds apart
   (the dry run: fp32 only).
3. ``ort``: export ``tiny-dit-digits`` FORA(2) to ONNX and benchmark it in ONNX Runtime on a GPU
   provider (needs onnxruntime-gpu; on the CPU dry run, the CPU provider).
4. ``tensorrt``: build TensorRT engines for that folder and benchmark them (needs ``tensorrt``).
5. ``trtexec``: time every graph with ``trtexec`` on valid inputs (needs ``trtexec`` on PATH).

It installs nothing from the network. Packages a bare GPU machine lacks (safetensors for the
shipped weights; onnxscript, onnx-ir and ml_dtypes for ONNX export) are picked up from
``benchmarks/.gpu_wheels/`` when that folder holds their wheels (``bash benchmarks/gpu_wheels.sh``
on a machine with a package index fills it); otherwise the parts that need them are skipped.
Every command it runs through the CLI is checked for its exit code, and a part that fails is
reported as failed (exit code 1 at the end), never silently passed over.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # runs from a checkout, installed or not
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import time_interleaved  # noqa: E402

WHEELS = ROOT / "benchmarks" / ".gpu_wheels"
PARTS = ("environment", "torch", "ort", "tensorrt", "trtexec")
BUDGET_S = 7 * 60  # the check must finish within 8 minutes on an H200; later parts are skipped past this


class Skip(Exception):
    """A part cannot run on this machine; the message says why."""


# ---------------------------------------------------------------------------------------------- helpers
def run_cli(argv: Sequence[str]) -> None:
    """``harmonica-compile ARGV`` in this process; a nonzero exit code is an error, never ignored."""
    from harmonica_compile.cli import main

    code = main(list(argv))
    if code != 0:
        raise RuntimeError(f"harmonica-compile {' '.join(argv)} exited with code {code} (its message is above)")


def ensure_module(name: str) -> Any:
    """Import ``name``; if it is missing, install every wheel of ``benchmarks/.gpu_wheels`` offline
    (``--no-deps``: their own dependencies, numpy and onnx, come with the machine) and retry."""
    try:
        return importlib.import_module(name)
    except ImportError:
        pass
    wheels = _compatible_wheels(sorted(WHEELS.glob("*.whl"))) if WHEELS.is_dir() else []
    if not wheels:
        raise Skip(
            f"{name} is not importable and benchmarks/.gpu_wheels holds no wheels (bash benchmarks/gpu_wheels.sh)"
        )
    target = Path(tempfile.gettempdir()) / "harmonica-gpu-check-site"
    if str(target) not in sys.path:
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--target", str(target)]
        done = subprocess.run([*cmd, *map(str, wheels)], capture_output=True, text=True)
        if done.returncode != 0:
            raise Skip(f"{name} is not importable and the wheels did not install offline: {done.stderr.strip()[-300:]}")
        sys.path.insert(0, str(target))
        importlib.invalidate_caches()
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise Skip(f"{name} is not importable, even after installing benchmarks/.gpu_wheels offline: {e}") from e


def _compatible_wheels(wheels: Sequence[Path]) -> list[Path]:
    """The wheels this interpreter can install (their tags meet ``sys_tags()``)."""
    try:
        from packaging.tags import sys_tags
        from packaging.utils import parse_wheel_filename
    except ImportError:  # pip vendors packaging
        from pip._vendor.packaging.tags import sys_tags
        from pip._vendor.packaging.utils import parse_wheel_filename
    supported = set(sys_tags())
    return [w for w in wheels if parse_wheel_filename(w.name)[3] & supported]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


class Timer:
    """Milliseconds of a callable: CUDA events on a GPU (the work is asynchronous), wall clock on the CPU."""

    def __init__(self, device: torch.device):
        self.device = device

    def __call__(self, fn: Callable[[], Any]) -> float:
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1000


def rounding_bound(model: torch.nn.Module, dtype: torch.dtype, tokens: int) -> float:
    """Relative first-order bound on two evaluations of the same DiT forward in ``dtype``: every
    rounding along the longest dependency chain contributes at most the unit roundoff u, and a
    block's chain is at most its reduction lengths (qkv and projection: hidden; attention: head dim
    and tokens; MLP: hidden and 4x hidden) plus a few elementwise ops, so |a - b| <= 2 K u max|ref|."""
    hidden = int(model.blocks[0].attn.qkv.in_features)
    heads = int(model.blocks[0].attn.num_heads)
    mlp = int(model.blocks[0].mlp.fc1.out_features)
    per_block = 3 * hidden + hidden // heads + tokens + hidden + mlp + 16
    k = len(model.blocks) * per_block + 2 * hidden
    return 2 * k * float(torch.finfo(dtype).eps) / 2  # finfo.eps is 2u


# ---------------------------------------------------------------------------------------------- torch part
def whole_step_schedule(
    sites: Sequence[str], steps: int, cached_steps: Sequence[int], timesteps: Sequence[float]
) -> Any:
    from harmonica_compile import CacheSchedule

    mask = [[i not in set(cached_steps)] * len(sites) for i in range(steps)]
    return CacheSchedule(mask, sites, timesteps)


def torch_case(
    spec: Any,
    *,
    device: torch.device,
    dtype: torch.dtype,
    images: int,
    steps: int,
    cfg: float,
    schedules: dict[str, Sequence[int]],
    warmup: int,
    repeat: int,
    compile: bool = False,
    mixed: bool = False,
) -> list[dict[str, Any]]:
    """Capture ``spec``'s model on ``device`` in ``dtype``, then time each schedule against full compute
    (``compile``: both sides through ``torch.compile``, CUDA graphs on CUDA; compile seconds apart).
    ``mixed``: the model stays fp32 and ``CachedModel(dtype=dtype)`` lowers only the token matmuls
    (norms, softmax, adaLN, caches in fp32). Every row also reports the computed step's distance
    to fp32 eager, so whole-model bf16 and mixed bf16 can be compared."""
    from harmonica_compile import CacheSchedule, optimize, prepare
    from harmonica_compile.sampling import model_inputs, sample

    lowered = dtype if mixed else None
    sampler = spec.sampler(steps)
    noise32 = spec.noise(images, seed=0).to(device=device)
    cond32, null32 = spec.conditions(images, seed=0)
    cond32, null32 = _to(cond32, device, torch.float32), _to(null32, device, torch.float32)
    spec.model.to(device=device, dtype=torch.float32)
    x32, t32, c32 = model_inputs(
        sampler, noise32 * sampler.init_noise_sigma, 0, cond32, cfg, None if cfg == 1.0 else null32
    )
    with torch.no_grad():
        fp32_eager = spec.denoiser(spec.model.eval())(x32, t32, c32).float()
    if mixed:
        dtype = torch.float32  # the captured model and its inputs; the graphs compute in ``lowered``
    model = spec.model.to(device=device, dtype=dtype).eval()
    t0 = time.perf_counter()
    example = _to(spec.example_inputs(2), device, dtype)
    cacheable = prepare(model, example, model_name=spec.name)
    capture_s = time.perf_counter() - t0
    sites = cacheable.site_names
    timesteps = [float(t) for t in sampler.timesteps]
    everything = CacheSchedule.all_compute(sites, steps, timesteps=timesteps)
    full = optimize(cacheable, schedule=everything, compile=compile, dtype=lowered)
    batch_example = _to(spec.example_inputs(images * (1 if cfg == 1.0 else 2)), device, dtype)
    compile_s = {"full": sum(full.warmup(batch_example).values())} if compile else {}
    noise = spec.noise(images, seed=0).to(device=device, dtype=dtype)
    cond, null = spec.conditions(images, seed=0)
    cond, null = _to(cond, device, dtype), _to(null, device, dtype)
    if cfg == 1.0:
        null = None

    # full-compute parity of a computed step (step 0): the captured graph against eager, same inputs
    x_in, t_in, c_in = model_inputs(sampler, noise * sampler.init_noise_sigma, 0, cond, cfg, null)
    with torch.no_grad():
        eager = spec.denoiser(model)(x_in, t_in, c_in)
        full.reset()
        graph = spec.denoiser(full)(x_in, t_in, c_in)
    full.reset()
    parity = float((graph.float() - eager.float()).abs().max())
    vs_fp32 = float((graph.float() - fp32_eager).abs().max())
    # fp32: a first-order rounding bound; in bf16 that bound exceeds the values themselves, so
    # only exactness is reported (the graph runs eager's aten ops, so it is usually bit-identical)
    bound = None
    if dtype == torch.float32 and not mixed:  # compiled too: inductor reorders the same fp32 operations
        tokens = int(model.x_embedder.num_patches)
        bound = rounding_bound(model, dtype, tokens) * max(float(eager.float().abs().max()), 1.0)

    timer = Timer(device)
    rows = []
    for label, cached_steps in schedules.items():
        schedule = whole_step_schedule(sites, steps, cached_steps, timesteps)
        cached = optimize(cacheable, schedule=schedule, compile=compile, dtype=lowered)
        if compile:
            compile_s[label] = sum(cached.warmup(batch_example).values())

        def run(module: Any) -> Callable[[], Any]:
            denoise = spec.denoiser(module)
            return lambda: sample(denoise, noise, cond, sampler, cfg_scale=cfg, null_cond=null)

        timings = time_interleaved(
            {"full": run(full), "cached": run(cached)}, warmup=warmup, repeat=repeat, timer=timer
        )
        ms = {k: v["median_ms"] for k, v in timings.items()}
        measured = ms["full"] / ms["cached"]
        theoretical = cached.theoretical_speedup
        rows.append(
            {
                "model": spec.name,
                "dtype": str(lowered or dtype).replace("torch.", ""),
                # "model": the whole model cast to dtype; "mixed": CachedModel(dtype=), token matmuls only
                "precision": "mixed" if mixed else "model",
                "compiled": compile,
                "compile_s": round(compile_s["full"] + compile_s[label], 2) if compile else None,
                "schedule": label,
                "cur": round(schedule.cur, 4),
                "steps": steps,
                "images": images,
                "model_batch": images * (1 if cfg == 1.0 else 2),
                "graphs": cached.num_graphs,
                "capture_s": round(capture_s, 2),
                "full_ms_per_image": round(ms["full"] / images, 4),
                "cached_ms_per_image": round(ms["cached"] / images, 4),
                "measured_speedup": round(measured, 4),
                "theoretical_speedup": round(theoretical, 4),
                "ratio": round(measured / theoretical, 4),
                "parity_max_abs": parity,
                "parity_exact": parity == 0.0,
                "parity_bound": bound,
                # compiled bf16 and mixed (against fp32 eager): no useful first-order bound; reported, not judged
                "parity_ok": (None if compile or mixed else parity == 0.0) if bound is None else parity <= bound,
                "vs_fp32_eager_max_abs": vs_fp32,
            }
        )
    spec.model.to(device="cpu", dtype=torch.float32)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def _to(value: Any, device: torch.device, dtype: torch.dtype) -> Any:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
    if isinstance(value, dict):
        return {k: _to(v, device, dtype) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(_to(v, device, dtype) for v in value)
    return value


def part_torch(device: torch.device, dry_run: bool, notes: list[str]) -> list[dict[str, Any]]:
    from harmonica_compile.models.registry import load_model

    repeat, warmup = (1, 1) if dry_run else (5, 2)
    rows: list[dict[str, Any]] = []
    dtypes = [torch.float32, torch.bfloat16]
    try:
        ensure_module("safetensors")
        tiny = load_model("tiny-dit-digits")
    except Skip as e:
        notes.append(f"torch: tiny-dit-digits skipped: {e}")
        tiny = None
    if tiny is not None:
        steps = 4 if dry_run else tiny.default_steps
        for dtype in dtypes:
            rows += torch_case(
                tiny,
                device=device,
                dtype=dtype,
                images=1 if dry_run else 16,
                steps=steps,
                cfg=tiny.default_cfg_scale,
                schedules={"fora2": range(1, steps, 2)},
                warmup=warmup,
                repeat=repeat,
            )
    big = load_model("DiT-S/8@16" if dry_run else "DiT-XL/2")  # DiT-XL/2 at a 32x32 latent, random weights
    if dry_run:
        big.model.blocks = big.model.blocks[:2]  # the same code path, in seconds
    # CUR 0.375: 6 of 16 steps cached, never two in a row; CUR 0.5: FORA(2)
    both = {"cur0.375": (2, 4, 6, 10, 12, 14), "fora2": range(1, 16, 2)}
    # then compiled (torch.compile; CUDA graphs on CUDA): fp32 and bf16 on the GPU, fp32 in the dry run
    # and mixed bf16 (CachedModel(dtype=torch.bfloat16) of the fp32 model), eager and compiled
    cases = [(dtype, both, False, False) for dtype in dtypes]
    cases += [(torch.bfloat16, both, False, True)]
    compiled_dtypes = dtypes if not dry_run else [torch.float32]
    cases += [(dtype, {"fora2": both["fora2"]}, True, False) for dtype in compiled_dtypes]
    cases += [(torch.bfloat16, {"fora2": both["fora2"]}, True, True)] if not dry_run else []
    for dtype, schedules, compile, mixed in cases:
        rows += torch_case(
            big,
            device=device,
            dtype=dtype,
            images=1 if dry_run else 8,
            steps=16,
            cfg=1.0,
            schedules=schedules,
            warmup=warmup,
            repeat=repeat,
            compile=compile,
            mixed=mixed,
        )
    return rows


# ---------------------------------------------------------------------------------------------- engine parts
def _onnx_folder(work: Path, notes: list[str]) -> Path:
    """tiny-dit-digits FORA(2), 20 steps, exported to ONNX once (with the CPU parity gate)."""
    folder = work / "onnx_fora2"
    if (folder / "manifest.json").exists():
        return folder
    ensure_module("safetensors")
    ensure_module("onnxscript")  # torch.onnx's dynamo exporter
    ensure_module("onnxruntime")  # the parity gate
    from harmonica_compile import CacheSchedule
    from harmonica_compile.models.registry import load_model

    # the FORA(2) schedule written directly (optimize would also plot it, and matplotlib may be absent)
    spec = load_model("tiny-dit-digits")
    timesteps = [float(t) for t in spec.sampler(20).timesteps]
    sched = work / "sched_fora2"
    CacheSchedule.fora(spec.cacheable().site_names, 20, 2, timesteps, model=spec.name).save(sched / "schedule.json")
    run_cli(["export", str(sched), "--format", "onnx", "--out", str(folder)])
    return folder


def part_ort(device: torch.device, work: Path, dry_run: bool, notes: list[str]) -> list[dict[str, Any]]:
    ort = ensure_module("onnxruntime")
    available = ort.get_available_providers()
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise Skip(
                f"onnxruntime {ort.__version__} offers {available}: no CUDA provider (onnxruntime-gpu is not installed)"
            )
        providers = "CUDAExecutionProvider"
    else:
        providers = "CPUExecutionProvider"
    folder = _onnx_folder(work, notes)
    args = ["--images", "2", "--repeat", "1"] if dry_run else ["--images", "16", "--repeat", "5"]
    run_cli(["bench", str(folder), "--runtime", "ort", "--providers", providers, *args])
    bench = json.loads((folder / "bench-ort.json").read_text())
    return [{key: bench[key] for key in ("runtime", "providers", "images", "model_batch", "full_ms_per_image",
                                          "cached_ms_per_image", "real_speedup", "theoretical_speedup")}]  # fmt: skip


def part_tensorrt(device: torch.device, work: Path, dry_run: bool, notes: list[str]) -> list[dict[str, Any]]:
    if device.type != "cuda":
        raise Skip("TensorRT needs a CUDA GPU")
    try:
        import tensorrt  # type: ignore[import-not-found]
    except ImportError as e:
        raise Skip(
            f"tensorrt does not import ({e}); pip install 'harmonica-compile[tensorrt]' where NVIDIA's wheels are reachable"
        ) from e
    folder = _onnx_folder(work, notes)
    engines = work / "trt_fora2"
    t0 = time.perf_counter()
    run_cli(
        ["export", str(work / "sched_fora2"), "--format", "tensorrt", "--out", str(engines), "--onnx-dir", str(folder)]
    )
    build_s = time.perf_counter() - t0
    run_cli(["bench", str(engines), "--runtime", "trt", "--images", "16", "--repeat", "5"])
    bench = json.loads((engines / "bench-trt.json").read_text())
    manifest = json.loads((engines / "manifest.json").read_text())
    return [{"tensorrt": tensorrt.__version__, "precision": manifest["precision"], "build_s": round(build_s, 2),
             "engine_bytes_total": manifest["engine_bytes_total"],
             **{k: bench[k] for k in ("full_ms_per_image", "cached_ms_per_image", "real_speedup", "theoretical_speedup")}}]  # fmt: skip


def part_trtexec(device: torch.device, work: Path, dry_run: bool, notes: list[str]) -> list[dict[str, Any]]:
    exe = shutil.which("trtexec")
    if exe is None:
        raise Skip(
            "trtexec is not on PATH (the tensorrt pip wheels do not ship it; it comes with NVIDIA's TensorRT packages)"
        )
    if device.type != "cuda":
        raise Skip("trtexec needs a CUDA GPU")
    from harmonica_compile.exporters.trtexec import write_trtexec_inputs

    folder = _onnx_folder(work, notes)
    manifest = json.loads((folder / "manifest.json").read_text())
    batch = 32
    files = write_trtexec_inputs(folder, batch)
    rows = []
    for g in manifest["graphs"]:
        dynamic = [i for i in g["inputs"] if i["shape"][0] == "batch"]
        shapes = ",".join(
            f"{i['name']}:" + "x".join(str(batch if d == "batch" else d) for d in i["shape"]) for i in dynamic
        )
        load = ",".join(f"{name}:{path}" for name, path in files[g["id"]].items())
        cmd = [exe, f"--onnx={folder / g['file']}", f"--shapes={shapes}", f"--minShapes={shapes}",
               f"--optShapes={shapes}", f"--maxShapes={shapes}", f"--loadInputs={load}", "--noTF32",
               "--useCudaGraph", "--separateProfileRun", "--iterations=200"]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"trtexec failed on {g['file']} (exit {done.returncode}): {done.stdout[-400:]}")
        line = [x for x in done.stdout.splitlines() if "GPU Compute Time" in x and "mean" in x]
        mean = float(line[-1].split("mean =")[1].split()[0]) if line else float("nan")
        rows.append({"graph": g["id"], "cached_sites": g["mask"].count(False), "batch": batch, "gpu_compute_ms": mean})
    return rows


# ---------------------------------------------------------------------------------------------- report
def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": device_name(device),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    for name in ("numpy", "onnx", "onnxscript", "onnxruntime", "safetensors", "tensorrt", "diffusers"):
        try:
            module = importlib.import_module(name)
            env[name] = getattr(module, "__version__", "?")
        except ImportError:
            env[name] = None
    if env["onnxruntime"]:
        import onnxruntime

        env["onnxruntime_providers"] = onnxruntime.get_available_providers()
    env["trtexec"] = shutil.which("trtexec")
    if device.type == "cuda":  # main() turns TF32 off so that the fp32 rows are fp32
        env["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        env["tf32_cudnn"] = torch.backends.cudnn.allow_tf32
    return env


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        f"# GPU check: {env['device']}",
        "",
        f"`bash benchmarks/gpu_check.sh{' --dry-run' if report['dry_run'] else ''}` on {env['date']}: torch "
        f"{env['torch']} (CUDA {env['cuda']}), Python {env['python']}; {report['seconds']:.0f} s.",
        "",
        "| part | status |",
        "|---|---|",
    ]
    lines += [f"| {p} | {s} |" for p, s in report["parts"].items()]
    rows = report["results"].get("torch", [])
    if rows:
        lines += [
            "",
            "## torch runtime (CachedModel), cached vs full compute through the same captured graphs",
            "",
            "| model | dtype | torch | schedule | CUR | steps | model batch | full ms/img | cached ms/img | measured | "
            "theoretical | ratio | step parity max abs (bound) | step vs fp32 eager |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            how = f"compiled ({r['compile_s']:.0f} s)" if r.get("compiled") else "eager"
            verdict = {None: " (not judged)", True: "", False: " **not ok**"}[r["parity_ok"]]
            dtype = r["dtype"] + (" (dtype=, mixed)" if r.get("precision") == "mixed" else "")
            lines.append(
                f"| {r['model']} | {dtype} | {how} | {r['schedule']} | {r['cur']:.3f} | {r['steps']} | {r['model_batch']} "
                f"| {r['full_ms_per_image']:.3f} | {r['cached_ms_per_image']:.3f} | {r['measured_speedup']:.2f}x "
                f"| {r['theoretical_speedup']:.2f}x | {r['ratio']:.2f} | {r['parity_max_abs']:.1e} "
                f"({'exact only' if r['parity_bound'] is None else format(r['parity_bound'], '.1e')})"
                f"{verdict} | {r['vs_fp32_eager_max_abs']:.1e} |"
            )
    for part in ("ort", "tensorrt", "trtexec"):
        if report["results"].get(part):
            lines += ["", f"## {part}", "", "```json", json.dumps(report["results"][part], indent=1), "```"]
    if report["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="run every part on the CPU with small models")
    parser.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    parser.add_argument("--out", default=None, help="result folder (default benchmarks/results/gpu)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="skip parts that start after this many s")
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
    if args.device is None:
        args.device = "cpu" if args.dry_run or not torch.cuda.is_available() else "cuda"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(
            "--device cuda: torch sees no CUDA device; run with --dry-run (or --device cpu) to check the script"
        )
    device = torch.device(args.device)
    dry_run = args.dry_run or device.type == "cpu"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 rows are fp32 (torch's default, stated)
        torch.backends.cudnn.allow_tf32 = False
    if dry_run:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / "gpu"
    work = Path(tempfile.mkdtemp(prefix="harmonica-gpu-check-"))
    started = time.perf_counter()
    env = environment(device)  # after the TF32 settings above, so the report records them
    results: dict[str, Any] = {}
    status: dict[str, str] = {}
    notes: list[str] = []
    failed = False
    runners = {
        "torch": lambda: part_torch(device, dry_run, notes),
        "ort": lambda: part_ort(device, work, dry_run, notes),
        "tensorrt": lambda: part_tensorrt(device, work, dry_run, notes),
        "trtexec": lambda: part_trtexec(device, work, dry_run, notes),
    }
    status["environment"] = "ran"
    for part in PARTS[1:]:
        if part not in parts:
            status[part] = "skipped: not asked for (--parts)"
            continue
        if time.perf_counter() - started > args.budget_s:
            status[part] = f"skipped: past the {args.budget_s:.0f} s budget"
            continue
        print(f"[gpu-check] {part} ...", flush=True)
        t0 = time.perf_counter()
        try:
            results[part] = runners[part]()
            status[part] = f"ran ({time.perf_counter() - t0:.0f} s)"
        except Skip as e:
            status[part] = f"skipped: {e}"
        except Exception as e:  # a part that breaks is reported, and the script fails at the end
            traceback.print_exc()
            status[part] = f"FAILED: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            failed = True
        print(f"[gpu-check] {part}: {status[part]}", flush=True)
    slug = "cpu-dry-run" if dry_run else _slug(env["device"])
    report = {
        "machine": slug,
        "dry_run": dry_run,
        "environment": env,
        "parts": status,
        "results": results,
        "notes": notes,
        "seconds": round(time.perf_counter() - started, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{slug}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / f"{slug}.md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {out / (slug + '.json')} and .md")
    shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


def _slug(name: str) -> str:
    from harmonica_compile.exporters.tensorrt import slugify_gpu_name

    return slugify_gpu_name(name)


if __name__ == "__main__":
    sys.exit(main())
