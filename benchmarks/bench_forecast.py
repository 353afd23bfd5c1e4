"""What a forecast read branch costs in ONNX Runtime, against a plain reuse branch with the same mask.

tiny-dit-digits, 20 steps, the FORA(2) mask exported three times: every cached site reusing its
last value (FORA), forecasting to first order (TaylorSeer 1) and to second order (TaylorSeer 2).
Two measurements, each interleaved round-robin so that machine drift hits every variant alike:

- one cached step's graph (step 3, where order 2 has its full history), ``session.run`` on the
  same inputs, batch 2 x images;
- the whole sampling loop (``bench_engine``'s path: the runner, its history shifting and the
  per-step forecast weights), ``images`` images per run.

The forecast adds ``order + 1`` multiply-adds per cached element (a few thousand FLOPs against the
step's millions) and one more cache input and output per order; the target is at most 3% over
reuse. Writes results/bench_forecast.json and .md.

    python benchmarks/bench_forecast.py [--images 16] [--repeat 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, time_interleaved, write_result

from harmonica_compile import CacheSchedule
from harmonica_compile.api import cached_for_spec
from harmonica_compile.exporters.onnx import export_onnx
from harmonica_compile.models.registry import load_model
from harmonica_compile.runtime.ort import OrtRunner
from harmonica_compile.sampling import generate

STEP = 3
VARIANTS = {"reuse": None, "taylor1": 1, "taylor2": 2}


def _feeds(runner: OrtRunner, graph_id: int, batch: int) -> dict[str, np.ndarray]:
    """Inputs of the graph's own shapes and dtypes (random values: latency does not depend on them)."""
    rng = np.random.default_rng(0)
    feeds = {}
    for entry in runner.manifest.graphs[graph_id]["inputs"]:
        shape = [batch if d == "batch" else int(d) for d in entry["shape"]]
        dtype = np.dtype(entry["dtype"])
        if dtype.kind in "iu":
            feeds[entry["name"]] = rng.integers(0, 10, size=shape).astype(dtype)
        else:
            feeds[entry["name"]] = rng.standard_normal(shape).astype(dtype)
    return feeds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=30, help="timed rounds per variant (graph); a fifth for loops")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = load_model("tiny-dit-digits")
    steps = 20
    sites = spec.cacheable().site_names
    ts = [float(t) for t in spec.sampler(steps).timesteps]
    with tempfile.TemporaryDirectory() as tmp:
        runners: dict[str, OrtRunner] = {}
        for name, order in VARIANTS.items():
            if order is None:
                schedule = CacheSchedule.fora(sites, steps, 2, ts, model=spec.name)
            else:
                schedule = CacheSchedule.taylorseer(sites, steps, 2, order, ts, model=spec.name)
            folder = Path(tmp) / name
            export_onnx(
                cached_for_spec(spec, schedule),
                folder,
                model_name=spec.name,
                sampler=spec.sampler(steps),
                spec=spec,
                max_batch=2 * args.images,
                check=False,
            )
            runners[name] = OrtRunner(folder, threads=args.threads)
        masks = {n: r.manifest.steps[STEP]["graph"] for n, r in runners.items()}
        graph_facts = {}
        graph_fns = {}
        for name, runner in runners.items():
            gid = int(masks[name])
            entry = runner.manifest.graphs[gid]
            feeds = _feeds(runner, gid, 2 * args.images)
            sess = runner.session(gid)
            graph_fns[name] = lambda sess=sess, feeds=feeds: sess.run(None, feeds)
            graph_facts[name] = {
                "graph": gid,
                "inputs": len(entry["inputs"]),
                "outputs": len(entry["outputs"]),
                "computed_sites": int(sum(entry["mask"])),
            }
        graph_ms = time_interleaved(graph_fns, warmup=5, repeat=args.repeat)
        loop_fns = {
            name: (lambda r=runner: generate(spec, r, num=args.images, steps=steps, seed=0))
            for name, runner in runners.items()
        }
        loop_ms = time_interleaved(loop_fns, warmup=2, repeat=max(3, args.repeat // 5))
    base_graph, base_loop = graph_ms["reuse"]["median_ms"], loop_ms["reuse"]["median_ms"]
    rows = []
    for name in VARIANTS:
        rows.append(
            {
                "variant": name,
                **graph_facts[name],
                "graph_ms": graph_ms[name]["median_ms"],
                "graph_ms_min": graph_ms[name]["min_ms"],
                "graph_overhead": graph_ms[name]["median_ms"] / base_graph - 1,
                "loop_ms_per_image": loop_ms[name]["median_ms"] / args.images,
                "loop_overhead": loop_ms[name]["median_ms"] / base_loop - 1,
            }
        )
    result: dict[str, Any] = {
        "rows": rows,
        "step": STEP,
        "images": args.images,
        "repeat": args.repeat,
        "threads": args.threads,
        "target_overhead": 0.03,
        "command": "python benchmarks/bench_forecast.py " + " ".join(argv or sys.argv[1:]),
    }
    write_result("bench_forecast", result, markdown=to_markdown(result))
    print(to_markdown(result))


def to_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"| read branch | graph inputs / outputs | step {result['step']} graph ms (median) | vs reuse "
        "| loop ms per image | vs reuse |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['variant']} | {r['inputs']} / {r['outputs']} | {r['graph_ms']:.3f} | {r['graph_overhead']:+.1%} | "
            f"{r['loop_ms_per_image']:.2f} | {r['loop_overhead']:+.1%} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    environment()
    main()
