"""The Triton Python-backend model of a served schedule (``harmonica_sampler``).

A generated repository's ``<model>/1/model.py`` puts the building environment's packages on
``sys.path`` and imports :class:`TritonPythonModel` from here. Each model instance opens the
exported folder ``<model>/1/engine`` once (its manifest checked against the digest recorded in
``config.pbtxt``, every graph file against the manifest) and then, per batch that Triton's dynamic
batcher hands it, runs :class:`~harmonica_compile.serving.service.SamplerService`: one denoising
loop for all valid requests of a guidance scale, caches carried inside the batch, and a one-line
Triton error for each bad request.

With the ``bls`` layout, the graphs are the repository's other models (``onnxruntime`` or
``tensorrt`` backends) and each step calls its graph through business logic scripting.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError, HarmonicaError, RuntimeBackendError
from ..exporters.manifest import load_manifest
from ..io import sha256_file
from ..runtime.base import EngineRunner
from .service import INPUTS, OUTPUT, SamplerService, check_manifest_digest

__all__ = ["BlsRunner", "TritonPythonModel"]


def _parameters(model_config: dict[str, Any]) -> dict[str, str]:
    return {k: str(v.get("string_value", "")) for k, v in model_config.get("parameters", {}).items()}


class BlsRunner(EngineRunner):
    """Runs each step's graph as another Triton model (``<prefix><graph id>``) through BLS."""

    def __init__(self, folder: str | os.PathLike[str], prefix: str, pb_utils: Any, repository: str | os.PathLike[str]):
        manifest = load_manifest(folder, verify=False)  # the graph files are the other models' files
        super().__init__(folder, manifest)
        self._prefix = prefix
        self._pb = pb_utils
        target = "model.plan" if manifest.kind == "tensorrt" else "model.onnx"
        for g in manifest.graphs:
            path = Path(repository) / f"{prefix}{g['id']}" / "1" / target
            if not path.is_file():
                raise ArtifactError(
                    f"graph {g['id']} file {path} is missing; build the repository again with serve-repo"
                )
            if sha256_file(path) != g["sha256"]:
                raise ArtifactError(
                    f"graph {g['id']} file {path} fails its checksum against the manifest; it was changed after the "
                    "repository was built; build it again with serve-repo"
                )

    def describe(self) -> str:
        return f"Triton BLS over models {self._prefix}0..{len(self._graphs) - 1}"

    def _run(self, graph_id: int, feeds: dict[str, Any]) -> list[Any]:
        graph = self._graphs[graph_id]
        inputs = [self._pb.Tensor(name, np.ascontiguousarray(_numpy(value))) for name, value in feeds.items()]
        names = [o["name"] for o in graph["outputs"]]
        request = self._pb.InferenceRequest(
            model_name=f"{self._prefix}{graph_id}", requested_output_names=names, inputs=inputs
        )
        response = request.exec()
        if response.has_error():
            raise RuntimeBackendError(f"graph model {self._prefix}{graph_id}: {response.error().message()}")
        return [self._pb.get_output_tensor_by_name(response, n).as_numpy() for n in names]

    def _to_torch(self, value: Any) -> Any:
        import torch

        return torch.from_numpy(np.asarray(value))


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _threads_per_instance(config: dict[str, Any]) -> int:
    """The cores this server may use, shared by the model's instances (each runs its own ORT sessions)."""
    from ..threads import available_cores

    count = sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or 1
    return max(1, available_cores() // count)


class TritonPythonModel:
    """Triton's Python-backend interface: ``initialize``, ``execute``, ``finalize``."""

    def initialize(self, args: dict[str, Any]) -> None:
        import triton_python_backend_utils as pb_utils

        self._pb = pb_utils
        config = json.loads(args["model_config"])
        params = _parameters(config)
        version_dir = Path(args["model_repository"]) / str(args["model_version"])
        engine = version_dir / params.get("engine", "engine")
        threads = int(params["threads"]) if params.get("threads") else _threads_per_instance(config)
        layout = params.get("layout", "python")
        try:
            check_manifest_digest(engine, params.get("manifest_sha256") or None)
            runner = None
            if layout == "bls":
                runner = BlsRunner(
                    engine, params["graph_model_prefix"], pb_utils, Path(args["model_repository"]).parent
                )
            service = SamplerService(
                engine,
                threads=threads,
                max_images=int(config.get("max_batch_size", 0)) or None,
                runner=runner,
            )
        except HarmonicaError as e:
            # Triton marks the model UNAVAILABLE with this message; the server keeps its other models.
            raise pb_utils.TritonModelException(f"{args['model_name']}: {' '.join(str(e).split())}") from None
        import torch

        torch.set_num_threads(threads)  # the sampler's own steps (noise, scheduler) stay off the others' cores
        self.service = service
        self.name = args["model_name"]

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = self._pb
        parsed = []
        for request in requests:
            inputs: dict[str, Any] = {}
            for name in INPUTS:
                tensor = pb.get_input_tensor_by_name(request, name)
                if tensor is not None:
                    inputs[name] = tensor.as_numpy()
            parsed.append(inputs)
        responses = []
        for result in self.service.run(parsed):
            if isinstance(result, HarmonicaError):
                message = f"{self.name}: {' '.join(str(result).split())}"
                responses.append(pb.InferenceResponse(output_tensors=[], error=pb.TritonError(message)))
            else:
                responses.append(pb.InferenceResponse(output_tensors=[pb.Tensor(OUTPUT, result.astype(np.float32))]))
        return responses

    def finalize(self) -> None:
        self.service = None
