"""The sampler behind a served model: a batch of image requests -> one denoising loop per guidance scale.

:class:`SamplerService` is what the Triton model runs, kept free of Triton so that it can be tested
and benchmarked on its own. A request is a mapping of input names to numpy arrays, each with a
leading batch dimension (Triton's convention when ``max_batch_size > 0``):

    ``seed`` INT64 ``[k, 1]`` (required), ``class_label`` INT64 ``[k, 1]`` (class-conditional
    models), ``cfg_scale`` FP32 ``[k, 1]`` and ``num_steps`` INT64 ``[k, 1]`` (optional).

The image for ``(seed, class_label, cfg_scale)`` is the image ``harmonica-compile sample --engine
ENG --seed SEED --num 1 --labels LABEL --cfg-scale CFG`` writes: the same noise (the first row of
``spec.noise(1, seed)``), the same conditions and the same sampling loop
(:func:`~harmonica_compile.sampling.sample`), only batched with the other requests of the batch.
Requests are validated one by one; a bad request gets its own one-line error and the others in
the same batch still run.

Example (with a folder written by ``harmonica-compile export``)::

    service = SamplerService("engines/tiny")
    out = service.run([{"seed": np.array([[3]]), "class_label": np.array([[7]])}])
    out[0].shape  # (1, C, H, W), or an InputError for a bad request
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ArtifactError, ConfigError, HarmonicaError, InputError
from ..exporters.manifest import MANIFEST_NAME, load_manifest
from ..io import sha256_file

__all__ = ["INPUTS", "OUTPUT", "SamplerService", "check_manifest_digest"]

#: The sampler's inputs: name -> (Triton dtype, numpy dtype, required).
INPUTS: dict[str, tuple[str, Any, bool]] = {
    "seed": ("TYPE_INT64", np.int64, True),
    "class_label": ("TYPE_INT64", np.int64, True),
    "cfg_scale": ("TYPE_FP32", np.float32, False),
    "num_steps": ("TYPE_INT64", np.int64, False),
}
OUTPUT = "image"


def check_manifest_digest(folder: str | os.PathLike[str], digest: str | None) -> None:
    """Refuse a manifest that is not the one the repository was built from (``digest`` recorded then)."""
    if not digest:
        return
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(f"manifest {path} is missing; build the repository again with serve-repo")
    actual = sha256_file(path)
    if actual != digest:
        raise ArtifactError(
            f"manifest {path} fails its checksum (sha256 {actual[:12]}..., repository {digest[:12]}...); it was "
            "changed after the repository was built; build it again with serve-repo"
        )


class SamplerService:
    """Runs whole denoising loops for batches of requests over an exported folder; see the module docstring.

    ``max_images`` caps the images of one loop (the Triton model's ``max_batch_size``; default: what
    the folder's batch profile takes with guidance on, when the model guides). ``runner`` replaces
    the folder's own runtime (the BLS layout calls the graphs as other Triton models).
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        runtime: str = "auto",
        threads: int | None = None,
        manifest_sha256: str | None = None,
        model: str | None = None,
        max_images: int | None = None,
        runner: Any = None,
    ):
        from ..models.registry import load_model
        from ..runtime import open_engine

        self.folder = Path(folder)
        check_manifest_digest(self.folder, manifest_sha256)
        if runner is None:
            manifest = load_manifest(self.folder)
            options: dict[str, Any] = {"threads": threads} if threads else {}
            runner = open_engine(self.folder, runtime=runtime, manifest=manifest, **options)
        self.runner = runner
        manifest = runner.manifest
        self.spec = load_model(manifest.model_source if model is None else model)
        self.runner.check_model(self.spec.name)
        if self.spec.num_classes is None or self.spec.cond_fn is not None:
            raise ConfigError(
                f"{self.folder}: model {self.spec.name!r} is not class-conditional; the served sampler takes a seed "
                "and a class label per image"
            )
        self.num_steps = self.runner.num_steps
        self.sampler = self.spec.sampler(self.num_steps)
        self.runner.check_sampler(self.sampler)
        self.default_cfg_scale = float(self.spec.default_cfg_scale)
        self.max_images = self.images_per_loop(self.runner.max_batch, self.spec.supports_cfg)
        if max_images is not None:
            if not 1 <= max_images <= self.max_images:
                raise ConfigError(
                    f"{self.folder}: max_batch_size {max_images} does not fit the folder's batch profile (at most "
                    f"{self.max_images} images per loop); build the repository again with serve-repo"
                )
            self.max_images = int(max_images)

    @staticmethod
    def images_per_loop(model_batch: int, guides: bool) -> int:
        """Images one loop can take: guidance doubles the model batch."""
        return max(1, int(model_batch) // (2 if guides else 1))

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.spec.latent_shape)

    # ------------------------------------------------------------------ requests
    def parse(self, request: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, float]:
        """``(seeds, labels, cfg_scale)`` of one request, or an InputError saying what is wrong with it."""
        unknown = sorted(set(request) - set(INPUTS))
        if unknown:
            raise InputError(f"unknown inputs {unknown}; the sampler takes {list(INPUTS)}")
        values: dict[str, np.ndarray] = {}
        batch = None
        for name, (triton_dtype, dtype, required) in INPUTS.items():
            if name not in request or request[name] is None:
                if required:
                    raise InputError(
                        f"input '{name}' is missing; every request needs '{name}' {triton_dtype[5:]} [1] per image"
                    )
                continue
            value = np.asarray(request[name])
            if value.dtype != dtype:
                raise InputError(
                    f"input '{name}' has dtype {value.dtype}, expected {np.dtype(dtype).name} ({triton_dtype[5:]})"
                )
            if value.ndim != 2 or value.shape[1] != 1 or value.shape[0] < 1:
                raise InputError(f"input '{name}' has shape {list(value.shape)}, expected [batch, 1]")
            if batch is not None and value.shape[0] != batch:
                raise InputError(f"input '{name}' has batch {value.shape[0]}, the request's other inputs {batch}")
            batch = value.shape[0]
            values[name] = value[:, 0]
        assert batch is not None  # 'seed' is required
        if batch > self.max_images:
            raise InputError(
                f"the request holds {batch} images, more than the {self.max_images} one loop takes; send fewer per "
                "request or export with a larger --max-batch"
            )
        seeds = values["seed"]
        if (seeds < 0).any():
            raise InputError(f"input 'seed' must be >= 0, got {int(seeds.min())}")
        labels = values["class_label"]
        classes = int(self.spec.num_classes)
        bad = labels[(labels < 0) | (labels >= classes)]
        if bad.size:
            raise InputError(f"input 'class_label' is {int(bad[0])}, outside [0, {classes - 1}] of {self.spec.name!r}")
        if "num_steps" in values:
            steps = values["num_steps"]
            if (steps != self.num_steps).any():
                other = int(steps[steps != self.num_steps][0])
                raise InputError(
                    f"input 'num_steps' is {other}, but the served schedule has {self.num_steps} steps; send "
                    f"{self.num_steps} or leave it out (serve another export for {other} steps)"
                )
        cfg = self.default_cfg_scale
        if "cfg_scale" in values:
            scales = values["cfg_scale"]
            if not np.isfinite(scales).all() or len(set(scales.tolist())) != 1:
                raise InputError(f"input 'cfg_scale' must be one finite number per request, got {scales.tolist()}")
            cfg = float(scales[0])
            if cfg != 1.0 and not self.spec.supports_cfg:
                raise InputError(f"input 'cfg_scale' is {cfg:g}, but {self.spec.name!r} has no null class; send 1")
            if cfg < 0:
                raise InputError(f"input 'cfg_scale' must be >= 0, got {cfg:g}")
        return seeds, labels, cfg

    def images(self, seeds: Sequence[int], labels: Sequence[int], cfg_scale: float) -> torch.Tensor:
        """``[n, C, H, W]`` images in [-1, 1] for these seeds and labels, in loops of at most ``max_images``."""
        from ..sampling import sample

        out = []
        for start in range(0, len(seeds), self.max_images):
            stop = min(start + self.max_images, len(seeds))
            noise = torch.cat([self.spec.noise(1, seed=int(s)) for s in seeds[start:stop]])
            cond, null = self.spec.conditions(
                stop - start, labels=torch.as_tensor(labels[start:stop], dtype=torch.long)
            )
            x = sample(self.runner, noise, cond, self.sampler, cfg_scale=cfg_scale, null_cond=null)
            out.append(x.float().clamp(-1, 1))
        return torch.cat(out)

    def run(self, requests: Sequence[Mapping[str, Any]]) -> list[np.ndarray | HarmonicaError]:
        """One result per request: its images ``[k, C, H, W]`` float32, or the error that refused it.

        Valid requests with the same guidance scale share loops (a loop's batch is what dynamic
        batching gathered, up to ``max_images``).
        """
        results: list[np.ndarray | HarmonicaError] = [InputError("not run")] * len(requests)
        groups: dict[float, list[tuple[int, np.ndarray, np.ndarray]]] = {}
        for i, request in enumerate(requests):
            try:
                seeds, labels, cfg = self.parse(request)
            except HarmonicaError as e:
                results[i] = e
                continue
            groups.setdefault(cfg, []).append((i, seeds, labels))
        for cfg, members in groups.items():
            seeds = np.concatenate([m[1] for m in members])
            labels = np.concatenate([m[2] for m in members])
            try:
                images = self.images(seeds.tolist(), labels.tolist(), cfg).numpy()
            except HarmonicaError as e:
                for i, _, _ in members:
                    results[i] = e
                continue
            start = 0
            for i, s, _ in members:
                results[i] = images[start : start + len(s)]
                start += len(s)
        return results
