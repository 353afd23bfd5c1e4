"""Start the real ``tritonserver`` on a model repository, on loopback, and stop it cleanly.

Where the server comes from: ``HARMONICA_TRITONSERVER`` (a path), else ``tritonserver`` on
``PATH`` (NVIDIA's server containers; their own backends are used), else the binary bundled in the
``nvidia-pytriton`` wheel (``pip install 'harmonica-compile[serve]'``; CPU, Python backend only).
The wheel's layout needs two things the server does not do by itself, both set up in a private
temporary folder removed at :meth:`TritonServer.stop`:

- the Python-backend stub built for this Python (``python_backend_stubs/3.X``) must sit in the
  backend folder the server is given (``--backend-directory``);
- the backend and the stub find the wheel's shared libraries by a path relative to their own
  folder, so the private folder mirrors that depth and links ``nvidia_pytriton.libs``.

The wheel's Python backend is built against numpy 1.x (``nvidia-pytriton`` requires
``numpy<2``): with numpy 2 its output tensors arrive empty, so :meth:`TritonServer.start` refuses
an environment with numpy 2 when it runs the wheel's server.

The server runs in its own process group, so that :meth:`~TritonServer.stop` also ends the
backend stubs it started; ``--exit-on-error=false`` keeps it serving the models that loaded when
another one fails (that model's state and reason are in :meth:`~TritonServer.models`).

Example (with a repository written by ``serve-repo``)::

    with TritonServer("repo") as server:
        print(server.http_url, server.models())
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, RuntimeBackendError

__all__ = ["TritonServer", "find_tritonserver", "free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _wheel_root() -> Path | None:
    try:
        import pytriton  # type: ignore[import-not-found]
    except ImportError:
        return None
    root = Path(pytriton.__file__).resolve().parent / "tritonserver"
    return root if (root / "bin" / "tritonserver").is_file() else None


def find_tritonserver() -> tuple[Path, Path | None]:
    """``(tritonserver binary, the pytriton wheel's tritonserver folder or None)``; see the module docstring."""
    override = os.environ.get("HARMONICA_TRITONSERVER")
    if override:
        if not Path(override).is_file():
            raise RuntimeBackendError(f"HARMONICA_TRITONSERVER={override} is not a file")
        return Path(override), None
    on_path = shutil.which("tritonserver")
    if on_path:
        return Path(on_path), None
    root = _wheel_root()
    if root is None:
        raise RuntimeBackendError(
            "no tritonserver found: pip install 'harmonica-compile[serve]' (bundles the CPU server), run in NVIDIA's "
            "tritonserver container, or set HARMONICA_TRITONSERVER to the binary"
        )
    return root / "bin" / "tritonserver", root


def _check_wheel_numpy() -> None:
    """The wheel's Python backend is built against numpy 1.x: with numpy 2 its output tensors arrive empty."""
    from importlib import metadata

    version = metadata.version("numpy")
    if int(version.split(".")[0]) >= 2:
        raise RuntimeBackendError(
            f"the tritonserver of the nvidia-pytriton wheel runs its Python backend against numpy 1.x, and this "
            f"environment has numpy {version} (its outputs would arrive empty); pip install 'numpy<2' "
            "(pip install 'harmonica-compile[serve]' resolves it), or use NVIDIA's server container"
        )


def _wheel_backends(root: Path, into: Path) -> Path:
    """A backend folder for the wheel's server with this Python's stub in it; see the module docstring."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        have = sorted(p.name for p in (root / "python_backend_stubs").iterdir())
        raise RuntimeBackendError(f"the nvidia-pytriton wheel has no Python-backend stub for Python {version} ({have})")
    libs = root.parent.parent / "nvidia_pytriton.libs"
    # backends/python/../../../../nvidia_pytriton.libs is the wheel's RPATH from the backend's folder
    backends = into / "pytriton" / "tritonserver" / "backends"
    python = backends / "python"
    python.mkdir(parents=True)
    for f in (root / "backends" / "python").iterdir():
        if f.is_file():
            shutil.copy2(f, python / f.name)
    shutil.copy2(stub, python / stub.name)
    if libs.is_dir():
        (into / "nvidia_pytriton.libs").symlink_to(libs, target_is_directory=True)
    return backends


class TritonServer:
    """A running ``tritonserver`` on ``repository``; see the module docstring.

    Ports default to free ones; ``host`` is loopback unless told otherwise. ``log`` receives the
    server's output (default: a file in the private folder; :attr:`log_text` reads it).
    """

    def __init__(
        self,
        repository: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        extra_args: Sequence[str] = (),
        log: str | os.PathLike[str] | None = None,
    ):
        self.repository = Path(repository).resolve()
        if not self.repository.is_dir():
            raise ConfigError(f"model repository {self.repository} does not exist")
        self.host = host
        self.http_port = http_port or free_port(host)
        self.grpc_port = grpc_port or free_port(host)
        self.metrics_port = metrics_port or free_port(host)
        if len({self.http_port, self.grpc_port, self.metrics_port}) != 3:
            raise ConfigError("the HTTP, gRPC and metrics ports must differ")
        self.extra_args = list(extra_args)
        self._log_path = Path(log) if log else None
        self._private: Path | None = None
        self._saved_log = ""
        self.process: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ endpoints
    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def log_text(self) -> str:
        """The server's output so far (kept after :meth:`stop` when it went to the private folder)."""
        if self._log_path and self._log_path.exists():
            return self._log_path.read_text(errors="replace")
        return self._saved_log

    def _request(self, method: str, path: str, body: Any = None, timeout: float = 5.0) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://{self.http_url}{path}", data=data, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
                return r.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            with contextlib.suppress(ValueError):
                return e.code, json.loads(raw) if raw else None
            return e.code, raw.decode(errors="replace")

    def models(self) -> list[dict[str, Any]]:
        """The repository index: each model's name, version, state and (when it failed) reason."""
        _status, index = self._request("POST", "/v2/repository/index", {})
        return list(index or [])

    def statistics(self, model: str) -> dict[str, Any]:
        """Triton's statistics of ``model`` (inference and execution counts, batch sizes)."""
        status, stats = self._request("GET", f"/v2/models/{model}/stats")
        if status != 200:
            raise RuntimeBackendError(f"no statistics for model {model!r}: {stats}")
        return dict(stats["model_stats"][0])

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 180.0) -> TritonServer:
        """Start the server and wait until every model in the repository has loaded or failed."""
        binary, wheel = find_tritonserver()
        if wheel is not None:
            _check_wheel_numpy()
        self._private = Path(tempfile.mkdtemp(prefix="harmonica-triton-"))
        if self._log_path is None:
            self._log_path = self._private / "tritonserver.log"
        cmd = [
            str(binary),
            f"--model-repository={self.repository}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--exit-on-error=false",
            "--strict-readiness=false",
            "--log-info=true",
            "--exit-timeout-secs=5",  # open client connections delay shutdown by up to this
            *self.extra_args,
        ]
        if wheel is not None:
            cmd.append(f"--backend-directory={_wheel_backends(wheel, self._private)}")
        log = open(self._log_path, "ab")  # noqa: SIM115 - the server writes to it until stop()
        try:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        try:
            self._wait_loaded(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_loaded(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        expected = {p.name for p in self.repository.iterdir() if (p / "config.pbtxt").is_file()}
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeBackendError(
                    f"tritonserver exited with code {self.process.returncode} while starting; its log ends: "
                    + " | ".join(self.log_text.strip().splitlines()[-5:])
                )
            with contextlib.suppress(OSError, ValueError):
                status, _ = self._request("GET", "/v2/health/live", timeout=1.0)
                if status == 200:
                    states = {m["name"]: m.get("state") for m in self.models()}
                    if expected <= set(states) and all(states[n] in ("READY", "UNAVAILABLE") for n in expected):
                        return
            time.sleep(0.25)
        raise RuntimeBackendError(f"tritonserver did not finish loading {sorted(expected)} within {timeout:.0f} s")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server and every process it started (the backend stubs); remove the private folder."""
        proc, self.process = self.process, None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGINT)  # the server unloads its models and ends their stubs
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            # a stub that outlived its server would keep shared memory: end the whole group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if self._private is not None:
            if self._log_path is not None and self._log_path.is_relative_to(self._private):
                self._saved_log = self.log_text
                self._log_path = None
            shutil.rmtree(self._private, ignore_errors=True)
            self._private = None

    def __enter__(self) -> TritonServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
