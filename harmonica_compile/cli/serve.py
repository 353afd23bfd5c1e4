"""``harmonica-compile serve-repo`` and ``serve``: a Triton model repository, and the real server on it."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .common import positive_int


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve-repo",
        help="write a Triton Inference Server model repository for an exported folder",
        description="Write (or replace) one sampler model of a Triton model repository; other models stay.",
    )
    p.add_argument("engine", help="an exported folder (harmonica-compile export)")
    p.add_argument("--out", required=True, help="the model repository folder (created or added to)")
    _add_repo_args(p)
    p.set_defaults(func=run_repo)

    s = sub.add_parser(
        "serve",
        help="start tritonserver on an exported folder or a model repository (loopback by default)",
        description="Start the real tritonserver, wait until its models have loaded, print the endpoints; "
        "Ctrl-C stops it. An exported folder is first written to a temporary repository.",
    )
    s.add_argument("source", help="an exported folder or a model repository written by serve-repo")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    s.add_argument("--http-port", type=positive_int, default=8000)
    s.add_argument("--grpc-port", type=positive_int, default=8001)
    s.add_argument("--metrics-port", type=positive_int, default=8002)
    s.add_argument("--timeout", type=positive_int, default=180, help="seconds to wait for the models to load")
    _add_repo_args(s)
    s.set_defaults(func=run_serve)


def _add_repo_args(p: argparse.ArgumentParser) -> None:
    from ..serving import DEFAULT_NAME, LAYOUTS

    p.add_argument("--name", default=DEFAULT_NAME, help=f"the sampler model's name (default {DEFAULT_NAME})")
    p.add_argument(
        "--max-batch",
        type=positive_int,
        default=None,
        help="images per loop (default: what the export's profile takes)",
    )
    p.add_argument("--instances", type=positive_int, default=1, help="model instances running loops side by side")
    p.add_argument(
        "--layout",
        default="python",
        choices=LAYOUTS,
        help="python: the sampler runs the graphs itself (CPU server here); bls: each graph is an onnxruntime or "
        "tensorrt backend model the sampler calls (NVIDIA's server containers)",
    )
    p.add_argument(
        "--max-queue-delay-us", type=int, default=2000, help="dynamic batching: longest wait to fill a batch"
    )
    p.add_argument(
        "--threads", type=positive_int, default=None, help="CPU threads per instance (default: cores / instances)"
    )
    p.add_argument("--python-path", action="append", default=[], help="another folder the server's Python needs")
    p.add_argument(
        "--portable",
        action="store_true",
        help="do not point the server at this environment's packages (the server's Python has harmonica-compile)",
    )


def _build(args: argparse.Namespace, engine: str, out: Path) -> Any:
    from ..serving import build_repository

    return build_repository(
        engine,
        out,
        name=args.name,
        max_batch=args.max_batch,
        instances=args.instances,
        layout=args.layout,
        max_queue_delay_us=args.max_queue_delay_us,
        threads=args.threads,
        extra_python_path=args.python_path,
        portable=args.portable,
    )


def run_repo(args: argparse.Namespace) -> int:
    facts = _build(args, args.engine, Path(args.out))
    print(facts.summary())
    print(f"serve it: harmonica-compile serve {args.out}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from ..serving import TritonServer

    source = Path(args.source)
    if not source.is_dir():
        raise ConfigError(f"{source} is not a folder; pass an exported folder or a model repository")
    with tempfile.TemporaryDirectory(prefix="harmonica-repo-") as tmp:
        repository = source
        if (source / "manifest.json").is_file():
            repository = Path(tmp) / "repo"
            print(_build(args, str(source), repository).summary())
        server = TritonServer(
            repository,
            host=args.host,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
        )
        print(f"starting tritonserver on {repository} ...", flush=True)
        with server:
            ready = 0
            for m in server.models():
                state = m.get("state")
                ready += state == "READY"
                reason = f": {' '.join(str(m['reason']).split())}" if m.get("reason") else ""
                print(f"  model {m['name']}: {state}{reason}")
            if not ready:
                raise ConfigError(f"no model of {repository} loaded; see the reasons above")
            print(f"HTTP {server.http_url}  gRPC {server.grpc_url}  metrics {server.metrics_url}")
            print("serving; Ctrl-C stops", flush=True)
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            try:
                while server.process is not None and server.process.poll() is None:
                    time.sleep(0.5)
            except KeyboardInterrupt:
                print("stopping tritonserver", flush=True)
                return 0
            code = server.process.returncode if server.process else 0
            print(f"tritonserver exited with code {code}", file=sys.stderr)
            return 1
