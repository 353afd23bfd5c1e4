"""``serve-repo``: a Triton Inference Server model repository for an exported folder.

A cached schedule is a loop over several graphs whose caches carry from step to step; Triton's
ensembles have no loops, so the loop runs in a Python-backend model, ``harmonica_sampler``. Two
layouts:

``python`` (default; what the CPU server in the ``nvidia-pytriton`` wheel runs)::

    REPO/harmonica_sampler/config.pbtxt        backend "python", dynamic batching
    REPO/harmonica_sampler/1/model.py          imports harmonica_compile.serving.triton_model
    REPO/harmonica_sampler/1/python_path.json  where the server's Python finds our packages
    REPO/harmonica_sampler/1/engine/           the exported folder (manifest, graphs, weights)

    The sampler runs every step's graph in ONNX Runtime (or TensorRT for an engine folder)
    inside its own process.

``bls`` (for NVIDIA's server containers, which have the ``onnxruntime`` and ``tensorrt``
backends)::

    REPO/harmonica_sampler/...                 as above, with engine/ holding the manifest only
    REPO/harmonica_sampler_g<k>/config.pbtxt   backend "onnxruntime" (or platform "tensorrt_plan")
    REPO/harmonica_sampler_g<k>/1/model.onnx   distinct graph k (model.plan for TensorRT), weights beside it

    The sampler calls graph ``k`` through business logic scripting; the graph models take the
    whole batch the sampler gathered (``max_batch_size: 0``, batch as the first dimension).

``config.pbtxt`` records the manifest's sha256; the sampler refuses to load when the manifest or
any graph file differs from what the repository was built from, naming the file, and Triton keeps
serving its other models.

Example (with a folder written by ``harmonica-compile export``)::

    build_repository("engines/tiny", "repo")
    # then: harmonica-compile serve repo
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import site
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..exporters.manifest import MANIFEST_NAME, Manifest, load_manifest
from ..io import atomic_dir, atomic_write_json, sha256_file
from .service import INPUTS, OUTPUT, SamplerService

__all__ = ["DEFAULT_NAME", "LAYOUTS", "RepositoryFacts", "build_repository", "python_path", "triton_dtype"]

DEFAULT_NAME = "harmonica_sampler"
LAYOUTS = ("python", "bls")
PYTHON_PATH_FILE = "python_path.json"
ENGINE_DIR = "engine"

_DTYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "bfloat16": "TYPE_BF16",
    "float64": "TYPE_FP64",
    "int64": "TYPE_INT64",
    "int32": "TYPE_INT32",
    "int8": "TYPE_INT8",
    "uint8": "TYPE_UINT8",
    "bool": "TYPE_BOOL",
}

MODEL_PY = '''"""Triton Python-backend entry of a schedule served by harmonica-compile (written by serve-repo).

The server's Python does not inherit PYTHONPATH, so the packages of the environment that built this
repository are put first on sys.path from python_path.json (an empty list when the server's own
Python has harmonica-compile installed, as in a container).
"""

import json
import os
import site
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(_HERE, "python_path.json")) as _f:
    for _path in json.load(_f):
        if os.path.isdir(_path):
            _before = list(sys.path)
            site.addsitedir(_path)
            sys.path[:] = [p for p in sys.path if p not in _before] + _before

try:
    from harmonica_compile.serving.triton_model import TritonPythonModel  # noqa: F401
except ImportError as _e:
    raise ImportError(
        f"the server's Python ({sys.version.split()[0]}) cannot import harmonica_compile ({_e}); install "
        f"harmonica-compile[cpu] into it, or list the site-packages that hold it in {_HERE}/python_path.json"
    ) from None
'''


def triton_dtype(dtype: str) -> str:
    """The Triton ``data_type`` of a manifest dtype (``float32`` -> ``TYPE_FP32``)."""
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype {dtype!r} has no Triton type; known: {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def python_path(extra: Sequence[str] = (), model_source: str | None = None) -> list[str]:
    """The folders the server's Python needs: this environment's site-packages, the folder holding
    ``harmonica_compile`` when it is not in one (a source checkout), the folder of a ``module:factory``
    model source, then ``extra``."""
    out: list[str] = []

    def add(path: str | os.PathLike[str] | None) -> None:
        if path and os.path.isdir(path) and str(Path(path).resolve()) not in out:
            out.append(str(Path(path).resolve()))

    for p in site.getsitepackages():
        add(p)
    if site.ENABLE_USER_SITE:
        add(site.getusersitepackages())
    package_root = Path(__file__).resolve().parents[2]
    if not any(package_root.is_relative_to(p) for p in out):
        add(package_root)
    if model_source and ":" in model_source and not Path(model_source.split(":")[0]).suffix:
        spec = importlib.util.find_spec(model_source.split(":")[0].split(".")[0])
        if spec is not None and spec.origin:
            origin = Path(spec.origin).resolve()
            add(origin.parent.parent if origin.name == "__init__.py" else origin.parent)
    for p in extra:
        if not os.path.isdir(p):
            raise ConfigError(f"--python-path {p} is not a folder")
        add(p)
    return out


def _tensor(name: str, dtype: str, dims: Sequence[int], *, optional: bool = False) -> str:
    """One entry of a pbtxt ``input`` / ``output`` list."""
    opt = " optional: true" if optional else ""
    return f"  {{ name: {json.dumps(name)} data_type: {dtype} dims: [ {', '.join(str(d) for d in dims)} ]{opt} }}"


def _dims(shape: Sequence[Any]) -> list[int]:
    """Triton dims of a manifest shape, the batch dimension as -1 (graph models take explicit batches)."""
    return [-1 if d == "batch" else int(d) for d in shape]


def _config_text(
    name: str,
    header: Sequence[str],
    inputs: Sequence[str],
    outputs: Sequence[str],
    tail: Sequence[str],
    params: dict[str, str],
) -> str:
    lines = [f"name: {json.dumps(name)}", *header]
    lines += ["input [", ",\n".join(inputs), "]", "output [", ",\n".join(outputs), "]", *tail]
    for key, value in params.items():
        lines.append(f"parameters: {{ key: {json.dumps(key)} value: {{ string_value: {json.dumps(value)} }} }}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class RepositoryFacts:
    """What :func:`build_repository` wrote."""

    repository: Path
    models: tuple[str, ...]
    layout: str
    max_batch_size: int
    instances: int
    bytes: int

    def summary(self) -> str:
        return (
            f"wrote Triton model repository {self.repository} ({self.layout} layout): models {', '.join(self.models)}; "
            f"max_batch_size {self.max_batch_size} images, {self.instances} instance(s), {self.bytes / 1e6:.2f} MB"
        )


def _copy(src: Path, dst: Path) -> None:
    # A copy, not a hard link: a link would let a change to the repository's file change the export too.
    shutil.copy2(src, dst)


def _engine_files(manifest: Manifest) -> list[str]:
    names = [MANIFEST_NAME]
    for g in manifest.graphs:
        names += [g["file"], *g.get("external_data", [])]
        if g.get("onnx_file"):
            names.append(g["onnx_file"])
    names += list(manifest.data.get("files", {}))
    return list(dict.fromkeys(names))


def sampler_config(
    name: str,
    manifest: Manifest,
    *,
    max_batch_size: int,
    instances: int,
    layout: str,
    max_queue_delay_us: int,
    threads: int | None,
    image_shape: Sequence[int],
) -> str:
    """The sampler model's ``config.pbtxt``."""
    # Optional and [-1], though each is [1] per image: a missing input or a wrong shape then reaches
    # the sampler, whose error says what each input must be; Triton's own message would not.
    inputs = [_tensor(n, dtype, [-1], optional=True) for n, (dtype, _np, _req) in INPUTS.items()]
    outputs = [_tensor(OUTPUT, "TYPE_FP32", list(image_shape))]
    kind = "KIND_GPU" if manifest.kind == "tensorrt" else "KIND_CPU"
    params = {
        "manifest_sha256": sha256_file(manifest.folder / MANIFEST_NAME),
        "engine": ENGINE_DIR,
        "layout": layout,
        "threads": str(threads or ""),
        "num_steps": str(manifest.num_steps),
        "model": manifest.model_name,
    }
    if layout == "bls":
        params["graph_model_prefix"] = f"{name}_g"
    return _config_text(
        name,
        ['backend: "python"', f"max_batch_size: {max_batch_size}"],
        inputs,
        outputs,
        [
            f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us} }}",
            f"instance_group [ {{ count: {instances} kind: {kind} }} ]",
        ],
        params,
    )


def graph_config(name: str, manifest: Manifest, graph: dict[str, Any]) -> str:
    """``config.pbtxt`` of one graph model (bls layout): ORT or TensorRT backend, batch as dimension 0."""
    inputs = [_tensor(e["name"], triton_dtype(e["dtype"]), _dims(e["shape"])) for e in graph["inputs"]]
    outputs = [_tensor(e["name"], triton_dtype(e["dtype"]), _dims(e["shape"])) for e in graph["outputs"]]
    if manifest.kind == "tensorrt":
        header, kind = ['platform: "tensorrt_plan"', "max_batch_size: 0"], "KIND_GPU"
    else:
        header, kind = ['backend: "onnxruntime"', "max_batch_size: 0"], "KIND_AUTO"
    return _config_text(
        name,
        header,
        inputs,
        outputs,
        [f"instance_group [ {{ count: 1 kind: {kind} }} ]"],
        {"sha256": str(graph["sha256"]), "harmonica_graph": str(graph["id"])},
    )


def build_repository(
    engine: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    name: str = DEFAULT_NAME,
    max_batch: int | None = None,
    instances: int = 1,
    layout: str = "python",
    max_queue_delay_us: int = 2000,
    threads: int | None = None,
    extra_python_path: Sequence[str] = (),
    portable: bool = False,
) -> RepositoryFacts:
    """Write (or replace) model ``name`` of the Triton repository ``out`` for the exported folder ``engine``.

    Other models already in ``out`` are left as they are. ``max_batch`` (images per loop; default
    what the folder's batch profile takes) becomes ``max_batch_size``; ``instances`` model
    instances run loops side by side. ``portable`` leaves ``python_path.json`` empty, for a server
    whose own Python has harmonica-compile installed.
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
    if not name or not all(c.isalnum() or c in "_-" for c in name):
        raise ConfigError(f"model name {name!r} must be letters, digits, '_' or '-'")
    if isinstance(instances, bool) or not isinstance(instances, int) or instances < 1:
        raise ConfigError(f"instances must be an integer >= 1, got {instances!r}")
    if not isinstance(max_queue_delay_us, int) or max_queue_delay_us < 0:
        raise ConfigError(f"max_queue_delay_us must be an integer >= 0, got {max_queue_delay_us!r}")
    manifest = load_manifest(engine)  # checksums of every file, before anything is written
    # The service is what the server will run: opening it here checks the model, sampler and batch
    # profile now, with the builder's error, rather than at the server's load.
    service = SamplerService(engine, max_images=max_batch)
    max_images = service.max_images
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stale = [p for p in out.glob(f"{name}_g*") if p.is_dir()]
    paths = [] if portable else python_path(extra_python_path, manifest.model_source)
    written = 0
    models = [name]
    with atomic_dir(out / name) as tmp:
        version = tmp / "1"
        engine_dir = version / ENGINE_DIR
        engine_dir.mkdir(parents=True)
        files = [MANIFEST_NAME] if layout == "bls" else _engine_files(manifest)
        for f in files:
            _copy(manifest.folder / f, engine_dir / f)
            written += (engine_dir / f).stat().st_size
        (version / "model.py").write_text(MODEL_PY)
        atomic_write_json(version / PYTHON_PATH_FILE, paths)
        (tmp / "config.pbtxt").write_text(
            sampler_config(
                name,
                manifest,
                max_batch_size=max_images,
                instances=instances,
                layout=layout,
                max_queue_delay_us=max_queue_delay_us,
                threads=threads,
                image_shape=service.image_shape,
            )
        )
    for old in stale:
        shutil.rmtree(old)
    if layout == "bls":
        for graph in manifest.graphs:
            gname = f"{name}_g{graph['id']}"
            with atomic_dir(out / gname) as tmp:
                version = tmp / "1"
                version.mkdir()
                target = "model.plan" if manifest.kind == "tensorrt" else "model.onnx"
                _copy(manifest.folder / graph["file"], version / target)
                written += (version / target).stat().st_size
                for extra in graph.get("external_data", []):
                    _copy(manifest.folder / extra, version / extra)
                    written += (version / extra).stat().st_size
                (tmp / "config.pbtxt").write_text(graph_config(gname, manifest, graph))
            models.append(gname)
    return RepositoryFacts(out, tuple(models), layout, max_images, instances, written)
