"""torch -> ONNX: the hard-routed graph of a CachedModel, exported once with ``torch.onnx.export``.

The hard-routed graph computes every site and mixes each with ``where(mask[k], fresh, cache)``;
its inputs are the model inputs, ``cache.<site>`` and ``mask``, its outputs the model outputs and
``fresh.<site>``. Exporting it once (dynamo exporter, the batch dimension dynamic) and specializing
that one ONNX graph per step mask (:mod:`harmonica_compile.exporters.onnx_passes`) is how every
step graph shares one set of weights: measured on tiny-dit-digits, exporting each specialized
graph through ``torch.onnx.export`` costs a full export, ~5 s, per graph; specializing at the ONNX
level costs milliseconds.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch

from ..errors import ExportError
from ..names import INPUT_NAMES, OUTPUT_NAMES
from .config import ExportConfig

__all__ = ["export_routed"]


def export_routed(cached: Any, config: ExportConfig) -> Any:
    """The hard-routed graph of ``cached`` (a CachedModel) as an ``onnx_ir.Model``, weights inside."""
    cm = cached.cacheable
    hard = cm.routed("hard")
    example = list(cm.captured.example_inputs)
    batch = cm.captured.batch_size
    cache = cm.example_cache(batch)
    mask = torch.ones(cm.num_sites, dtype=torch.bool)
    args = (*example, *cache.values(), mask)
    # The graph is traced at the capture batch; the exported dimension is symbolic either way, and
    # the manifest's batch range (checked by every runner) is what limits the calls.
    dim = torch.export.Dim("batch", min=1, max=max(config.max_batch, batch))
    dynamic = [({0: dim} if spec.batched else None) for spec in cm.captured.tensor_inputs]
    dynamic += [{0: dim}] * len(cache) + [None]
    # torch.onnx logs one warning per torchvision op it cannot register when torchvision is
    # absent (it is kept out of our dependencies on purpose): noise for every export.
    registration_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    previous_level = registration_log.level
    registration_log.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                hard,
                args,
                dynamo=True,
                opset_version=config.opset,
                input_names=list(hard.meta[INPUT_NAMES]),
                output_names=list(hard.meta[OUTPUT_NAMES]),
                dynamic_shapes=tuple(dynamic),
                optimize=True,
                verbose=False,
                report=False,
            )
        except Exception as e:
            raise ExportError(
                f"torch.onnx.export could not export {cm.captured.model_class}: {type(e).__name__}: "
                f"{str(e).strip().splitlines()[0][:300]}"
            ) from e
        finally:
            registration_log.setLevel(previous_level)
    return program.model
