"""The manifest of an exported folder: what every step runs, and what every graph file is.

``ENG/manifest.json`` records the format version, tool versions, opset, model, sampler and
timesteps, each step (index, timestep, graph id, mask) and each graph (file, sha256, inputs and
outputs with dtype, symbolic shape, role and site). File names are plain names inside ``ENG``;
:func:`load_manifest` refuses anything else and verifies every checksum.

Roles: ``latent``, ``timestep``, ``condition`` (model inputs), ``cache_in`` / ``cache_out``
(site values), ``output`` (the model's prediction).

The ONNX and TensorRT exporters write their manifests through one builder,
:func:`build_manifest`, from typed entries (:class:`IOEntry`, :class:`GraphEntry`,
:class:`StepEntry`); a TensorRT manifest is its ONNX manifest with engine facts added to each
graph entry.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ArtifactError
from ..io import atomic_write_json, load_json, sha256_file
from ..names import ROLES

__all__ = [
    "MANIFEST_FORMAT",
    "MANIFEST_VERSION",
    "GraphEntry",
    "IOEntry",
    "Manifest",
    "StepEntry",
    "build_manifest",
    "load_manifest",
    "tool_versions",
]

MANIFEST_FORMAT = "harmonica-compile/engine"
MANIFEST_VERSION = 1
MANIFEST_NAME = "manifest.json"
_PLAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def tool_versions(extra: dict[str, str] | None = None) -> dict[str, str]:
    import numpy
    import onnx
    import torch

    from .._version import __version__

    out = {
        "harmonica_compile": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "numpy": numpy.__version__,
    }
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:  # pragma: no cover - onnxruntime is a dependency
        pass
    out.update(extra or {})
    return out


def check_plain_name(name: Any, folder: Path, what: str) -> str:
    """A file name must be a plain name inside the folder: no separators, no ``..``, no absolute path."""
    if not isinstance(name, str) or not _PLAIN.match(name) or name in (".", ".."):
        raise ArtifactError(
            f"{folder / MANIFEST_NAME}: {what} {name!r} is not a plain file name inside {folder}; "
            "a manifest may only name files next to it"
        )
    return name


@dataclass(frozen=True)
class IOEntry:
    """One input or output of a graph: name, dtype, shape (``"batch"`` for the batch dimension),
    role (see the module docstring) and the site it belongs to."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    role: str
    site: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ArtifactError(f"input/output '{self.name}' has role {self.role!r}; roles are {list(ROLES)}")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "role": self.role, "site": self.site}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> IOEntry:
        return cls(data["name"], data["dtype"], tuple(data["shape"]), data["role"], data.get("site"))


@dataclass(frozen=True)
class GraphEntry:
    """One graph file of a folder, with what it computes. TensorRT folders add the engine facts."""

    id: int
    file: str
    sha256: str
    bytes: int
    mask: tuple[bool, ...]
    inputs: tuple[IOEntry, ...]
    outputs: tuple[IOEntry, ...]
    nodes: int
    flops: int
    external_data: tuple[str, ...] = ()
    onnx_file: str | None = None
    onnx_sha256: str | None = None
    engine_bytes: int | None = None
    build_seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if f.name in ("inputs", "outputs"):
                value = [e.to_json() for e in value]
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GraphEntry:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["inputs"] = tuple(IOEntry.from_json(e) for e in data["inputs"])
        values["outputs"] = tuple(IOEntry.from_json(e) for e in data["outputs"])
        values["mask"] = tuple(bool(m) for m in data["mask"])
        values["external_data"] = tuple(data.get("external_data", ()))
        return cls(**values)


@dataclass(frozen=True)
class StepEntry:
    """One sampling step: its timestep, the graph it runs and its mask; with forecast branches also
    each site's branch kind and the ``forecast.weights`` the step feeds its graph."""

    index: int
    timestep: float
    graph: int
    mask: tuple[bool, ...]
    branches: tuple[str, ...] | None = None
    forecast_weights: tuple[tuple[float, ...], ...] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "index": self.index,
            "timestep": self.timestep,
            "graph": self.graph,
            "mask": list(self.mask),
        }
        if self.branches is not None:
            out["branches"] = list(self.branches)
        if self.forecast_weights is not None:
            out["forecast_weights"] = [list(w) for w in self.forecast_weights]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StepEntry:
        weights = data.get("forecast_weights")
        return cls(
            int(data["index"]),
            float(data["timestep"]),
            int(data["graph"]),
            tuple(bool(m) for m in data["mask"]),
            tuple(data["branches"]) if data.get("branches") is not None else None,
            tuple(tuple(float(v) for v in w) for w in weights) if weights is not None else None,
        )


def build_manifest(
    *,
    kind: str,
    model: Mapping[str, Any],
    sampler: Mapping[str, Any],
    schedule: Mapping[str, Any],
    steps: Sequence[StepEntry],
    graphs: Sequence[GraphEntry],
    files: Mapping[str, str],
    tools: Mapping[str, str] | None = None,
    **facts: Any,
) -> dict[str, Any]:
    """The manifest of a folder of ``kind`` (``onnx``, ``tensorrt``); ``facts`` are added as they are
    (opset, batch, export config, weights, timing, precision, ...)."""
    return {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "kind": kind,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tools": dict(tools or tool_versions()),
        "model": dict(model),
        "sampler": dict(sampler),
        "schedule": dict(schedule),
        **facts,
        "files": dict(files),
        "steps": [s.to_json() for s in steps],
        "graphs": [g.to_json() for g in graphs],
    }


@dataclass
class Manifest:
    """The parsed ``manifest.json`` of a folder."""

    folder: Path
    data: dict[str, Any] = field(repr=False)

    @property
    def kind(self) -> str:
        return str(self.data["kind"])

    @property
    def model_name(self) -> str:
        return str(self.data["model"]["name"])

    @property
    def model_source(self) -> str:
        """How to load the model (``load_model`` argument): the source recorded at export, or the name."""
        return str(self.data["model"].get("source") or self.data["model"]["name"])

    @property
    def num_steps(self) -> int:
        return len(self.data["steps"])

    @property
    def steps(self) -> list[dict[str, Any]]:
        return list(self.data["steps"])

    @property
    def graphs(self) -> list[dict[str, Any]]:
        return list(self.data["graphs"])

    def graph_entries(self) -> list[GraphEntry]:
        """The graphs as typed entries."""
        return [GraphEntry.from_json(g) for g in self.data["graphs"]]

    @property
    def sites(self) -> list[str]:
        return list(self.data["schedule"]["sites"])

    @property
    def timesteps(self) -> list[float]:
        return [float(s["timestep"]) for s in self.data["steps"]]

    def graph_path(self, graph_id: int) -> Path:
        return self.folder / self.data["graphs"][graph_id]["file"]

    def write(self) -> Path:
        return atomic_write_json(self.folder / MANIFEST_NAME, self.data)


_REQUIRED = {
    "format": str,
    "format_version": int,
    "kind": str,
    "tools": dict,
    "model": dict,
    "sampler": dict,
    "schedule": dict,
    "steps": list,
    "graphs": list,
}


def load_manifest(folder: str | os.PathLike[str], *, verify: bool = True) -> Manifest:
    """Read and check ``folder/manifest.json``: schema, plain file names, checksums of every file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"engine folder {folder} does not exist or is not a folder")
    data = load_json(folder / MANIFEST_NAME, what="manifest")
    path = folder / MANIFEST_NAME
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: expected a JSON object, got {type(data).__name__}")
    if data.get("format") != MANIFEST_FORMAT:
        raise ArtifactError(f"{path}: format is {data.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    if data.get("format_version") != MANIFEST_VERSION:
        raise ArtifactError(
            f"{path}: manifest version {data.get('format_version')!r}, this harmonica-compile reads "
            f"{MANIFEST_VERSION}; export the folder again"
        )
    for key, typ in _REQUIRED.items():
        if not isinstance(data.get(key), typ):
            raise ArtifactError(f"{path}: '{key}' is missing or not a {typ.__name__}")
    graphs = data["graphs"]
    for i, g in enumerate(graphs):
        if not isinstance(g, dict) or g.get("id") != i:
            raise ArtifactError(f"{path}: graph entry {i} is malformed (expected 'id': {i})")
        for key in ("file", "sha256", "inputs", "outputs", "mask"):
            if key not in g:
                raise ArtifactError(f"{path}: graph {i} has no '{key}'")
        check_plain_name(g["file"], folder, f"graph {i} file")
        for extra in g.get("external_data", []):
            check_plain_name(extra, folder, f"graph {i} external data file")
    for i, s in enumerate(data["steps"]):
        if not isinstance(s, dict) or s.get("index") != i or not (0 <= int(s.get("graph", -1)) < len(graphs)):
            raise ArtifactError(f"{path}: step entry {i} is malformed or names a graph that does not exist")
    files = dict(data.get("files", {}))
    for name in files:
        check_plain_name(name, folder, "file")
    if verify:
        for g in graphs:
            _verify(folder / g["file"], g["sha256"], f"graph {g['id']}")
        for name, digest in files.items():
            _verify(folder / name, digest, "file")
    return Manifest(folder, data)


def _verify(path: Path, digest: str, what: str) -> None:
    if not path.is_file():
        raise ArtifactError(f"{what} file {path} is missing; export the folder again")
    actual = sha256_file(path)
    if actual != digest:
        raise ArtifactError(
            f"{what} file {path} fails its checksum (sha256 {actual[:12]}..., manifest {str(digest)[:12]}...); "
            "it was changed or damaged after export"
        )
