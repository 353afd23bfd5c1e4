"""Serving under load: the real tritonserver on a served schedule against in-process ONNX Runtime.

One run, on the machine it runs on: a 20-step schedule of tiny-dit-digits (FORA(2), CUR 0.5) is
exported with a batch profile of ``--images`` images (guidance doubles the model batch), written
to a Triton model repository (python layout, one instance) and served by the server of the
``nvidia-pytriton`` wheel on loopback. Clients send one image per request over gRPC, from 1, 4
and 16 threads at once; each figure is images/s over all requests of that concurrency and the
p50/p99 request latency. The in-process figure is :class:`SamplerService` (the code the served
model runs, the loop ``sample --engine`` runs) at the profile's batch size and at batch 1, in the
same process as the benchmark, with the same thread count. What dynamic batching recovers is the
ratio of served images/s at concurrency 16 to in-process images/s at the same batch size.

    python benchmarks/serve_load.py            # ~3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, write_result

from harmonica_compile import CacheSchedule
from harmonica_compile.api import cached_for_spec
from harmonica_compile.exporters.onnx import export_onnx
from harmonica_compile.models.registry import load_model
from harmonica_compile.serving import SamplerService, TritonServer, build_repository


def in_process(service: SamplerService, batch: int, repeat: int) -> dict:
    seeds, labels = list(range(batch)), [i % 10 for i in range(batch)]
    cfg = service.default_cfg_scale
    service.images(seeds, labels, cfg)  # warm-up: sessions, allocations
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        service.images(seeds, labels, cfg)
        times.append(time.perf_counter() - t0)
    return {
        "batch": batch,
        "images_per_s": batch / statistics.median(times),
        "seconds_per_loop": statistics.median(times),
    }


def served(server: TritonServer, concurrency: int, requests: int) -> dict:
    import tritonclient.grpc as grpc

    def one(seed: int) -> float:
        client = clients[seed % concurrency]
        inputs = []
        for name, value in (("seed", seed), ("class_label", seed % 10)):
            t = grpc.InferInput(name, [1, 1], "INT64")
            t.set_data_from_numpy(np.array([[value]], np.int64))
            inputs.append(t)
        t0 = time.perf_counter()
        client.infer("harmonica_sampler", inputs)
        return time.perf_counter() - t0

    clients = [grpc.InferenceServerClient(server.grpc_url) for _ in range(concurrency)]
    before = server.statistics("harmonica_sampler")
    for c in range(concurrency):
        one(c)  # warm-up connection
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(max_workers=concurrency) as pool:
        latencies = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - t0
    for client in clients:
        client.close()
    after = server.statistics("harmonica_sampler")
    executions = after["execution_count"] - before["execution_count"] - concurrency
    inferences = after["inference_count"] - before["inference_count"] - concurrency
    ms = sorted(1000 * x for x in latencies)
    return {
        "concurrency": concurrency,
        "requests": requests,
        "images_per_s": requests / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_batch": inferences / max(executions, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="images per loop (the batch profile)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = load_model("tiny-dit-digits")
    steps = 20
    ts = [float(t) for t in spec.sampler(steps).timesteps]
    schedule = CacheSchedule.fora(spec.cacheable().site_names, steps, 2, ts, model=spec.name)
    guides = spec.supports_cfg and spec.default_cfg_scale != 1.0
    with tempfile.TemporaryDirectory() as tmp:
        eng = Path(tmp) / "eng"
        export_onnx(
            cached_for_spec(spec, schedule),
            eng,
            model_name=spec.name,
            sampler=spec.sampler(steps),
            spec=spec,
            max_batch=args.images * (2 if guides else 1),
            check=False,
        )
        service = SamplerService(eng, threads=args.threads)
        local = [in_process(service, b, args.repeat) for b in (1, service.max_images)]
        print("in-process:", local, flush=True)
        del service
        repo = Path(tmp) / "repo"
        build_repository(eng, repo, threads=args.threads, max_queue_delay_us=5000)
        rows = []
        with TritonServer(repo) as server:
            for concurrency in (1, 4, 16):
                n = args.requests if concurrency > 1 else max(8, args.requests // 4)
                rows.append(served(server, concurrency, n))
                print(rows[-1], flush=True)
    best_local = local[-1]["images_per_s"]
    ratio = rows[-1]["images_per_s"] / best_local
    md = [
        f"tiny-dit-digits, {steps} steps, FORA(2) CUR {schedule.cur:.2f}, cfg {spec.default_cfg_scale:g}, "
        f"{args.threads} threads, batch profile {local[-1]['batch']} images",
        "",
        "| where | concurrency / batch | images/s | p50 ms | p99 ms | mean batch |",
        "|---|---|---|---|---|---|",
    ]
    for r in local:
        md.append(
            f"| in-process ORT | batch {r['batch']} | {r['images_per_s']:.1f} | {1000 * r['seconds_per_loop']:.0f} (loop) | | {r['batch']} |"
        )
    for r in rows:
        md.append(
            f"| tritonserver (gRPC) | {r['concurrency']} | {r['images_per_s']:.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['mean_batch']:.1f} |"
        )
    md += ["", f"served at concurrency 16 / in-process at batch {local[-1]['batch']}: **{ratio:.2f}**"]
    write_result(
        "serve_load",
        {
            "in_process": local,
            "served": rows,
            "ratio_served16_over_in_process": ratio,
            "threads": args.threads,
            "environment": environment(),
            "command": "python benchmarks/serve_load.py",
        },
        "\n".join(md),
    )
    print("\n".join(md))


if __name__ == "__main__":
    main()
