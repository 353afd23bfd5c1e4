#!/usr/bin/env bash
# The GPU check of the exporters issue: installs nothing. On a machine with an NVIDIA GPU, the
# tensorrt Python package, trtexec and this repository installed (pip install -e ".[gpu,tensorrt]"):
#   1. trains nothing: it takes FORA(2) and, if present, a HarmoniCa schedule of tiny-dit-digits;
#   2. exports each to ONNX and builds TensorRT engines (one per distinct graph);
#   3. times them with trtexec (per graph) and with the runtime (per image, cached vs full);
#   4. prints one table.
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]
set -euo pipefail
OUT=${1:-${OUT:-gpu-check}}
mkdir -p "$OUT"
python - "$OUT" <<'PY'
import json, subprocess, sys, time
from pathlib import Path
out = Path(sys.argv[1])
import torch
assert torch.cuda.is_available(), "no CUDA device"
from harmonica_compile.cli import main
rows = []
for name, args in [("fora2", ["--method", "fora", "--target-cur", "0.5"]),
                   ("harmonica50", ["--method", "harmonica", "--target-cur", "0.5", "--iterations", "300"])]:
    sched = out / f"sched_{name}"
    if not (sched / "schedule.json").exists():
        main(["optimize", "--model", "tiny-dit-digits", "--steps", "20", *args, "--out", str(sched), "--quiet", "--no-eval"])
    onnx_dir, trt_dir = out / f"onnx_{name}", out / f"trt_{name}"
    t0 = time.time(); main(["export", str(sched), "--format", "onnx", "--out", str(onnx_dir), "--max-batch", "64"]); onnx_s = time.time() - t0
    t0 = time.time(); main(["export", str(sched), "--format", "tensorrt", "--out", str(trt_dir), "--onnx-dir", str(onnx_dir), "--max-batch", "64"]); trt_s = time.time() - t0
    manifest = json.loads((trt_dir / "manifest.json").read_text())
    trtexec_ms = []
    for g in manifest["graphs"]:
        shapes = ",".join(f"{i['name']}:" + "x".join(str(32 if d == "batch" else d) for d in i["shape"]) for i in g["inputs"])
        log = subprocess.run(["trtexec", f"--loadEngine={trt_dir / g['file']}", f"--shapes={shapes}", "--useCudaGraph",
                              "--separateProfileRun", "--iterations=200"], capture_output=True, text=True).stdout
        line = [l for l in log.splitlines() if "GPU Compute Time" in l and "mean" in l]
        trtexec_ms.append(float(line[-1].split("mean =")[1].split()[0]) if line else float("nan"))
    for runtime in ("ort", "trt"):
        folder = onnx_dir if runtime == "ort" else trt_dir
        main(["bench", str(folder), "--runtime", runtime, "--images", "16", "--repeat", "10"])
        b = json.loads((folder / "bench.json").read_text())
        rows.append((name, runtime, b["full_ms_per_image"], b["cached_ms_per_image"], b["real_speedup"],
                     b["theoretical_speedup"], manifest["engine_bytes_total"], onnx_s, trt_s,
                     ",".join(f"{v:.3f}" for v in trtexec_ms)))
print("\n| schedule | runtime | full ms/img | cached ms/img | real x | theor. x | engine bytes | onnx s | trt build s | trtexec ms/graph (batch 32) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r) + " |")
(out / "gpu_check.json").write_text(json.dumps(rows, indent=1))
PY
