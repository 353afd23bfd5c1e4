"""ONNX export: one graph per distinct step mask, all sharing one external weights file.

1. the *hard-routed* graph (every site as ``where(mask[k], fresh, cache)``) is exported once
   (:func:`~harmonica_compile.exporters.torch_onnx.export_routed`), the batch dimension dynamic;
2. its weights go to one file, ``weights.bin``, that every graph references (external data);
3. for each distinct mask, a copy is specialized by onnx-ir passes
   (:mod:`~harmonica_compile.exporters.onnx_passes`): each ``Where`` becomes its fresh or its cache
   input, dead nodes, unused inputs and initializers go, and the fresh value of every site a later
   step reads becomes the output ``new_cache.<site>``;
4. the manifest records every step and graph (:func:`~harmonica_compile.exporters.manifest.build_manifest`).

Settings (opset, batch profile) come from one :class:`~harmonica_compile.exporters.config.ExportConfig`.
The folder also holds ``example_inputs.safetensors``: the model inputs of the capture (latent,
timestep, conditions at the capture batch), valid by construction, from which tools that need
real input values (``trtexec --loadInputs``, warm-up) build theirs.

A parity gate is handed in (``check=``; the runtime's
:func:`~harmonica_compile.runtime.parity.onnx_parity_gate` is the standard one, and the CLI always
passes it): it runs on the finished folder before it is moved into place, and a folder that fails
is never left behind. Exporters do not import runtimes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..cached_model import CachedModel
from ..errors import ExportError
from ..io import atomic_dir, save_safetensors, sha256_file
from ..names import CACHE, FORECAST_WEIGHTS, HISTORY, INPUT_NAMES, KINDS, MASK, NEW_CACHE, OUTPUT_NAMES, REFRESH
from .config import DEFAULT_OPSET, ExportConfig
from .manifest import GraphEntry, IOEntry, Manifest, StepEntry, build_manifest, load_manifest
from .onnx_passes import specialize_passes
from .torch_onnx import export_routed

__all__ = ["DEFAULT_OPSET", "EXAMPLE_INPUTS_FILE", "ParityGate", "export_onnx"]

WEIGHTS_FILE = "weights.bin"
EXAMPLE_INPUTS_FILE = "example_inputs.safetensors"
_INLINE_BYTES = 64  # initializers smaller than this (shape constants) stay inside each graph file
_ALIGN = 64

#: ``gate(folder, cached) -> report``: raises ExportError when the folder fails; the report goes
#: into the manifest under ``parity``.
ParityGate = Callable[[Path, CachedModel], dict[str, Any]]


def _externalize(model: Any, folder: Path) -> Any:
    """Move the large initializers of ``model`` into ``folder/weights.bin``; return the model whose
    initializers now reference that file."""
    import onnx_ir as ir

    # onnx-ir aligns tensors above its threshold (1 MiB) to ``alignment`` and packs the small ones
    return ir.external_data.unload_from_model(
        model, folder, WEIGHTS_FILE, size_threshold_bytes=_INLINE_BYTES, alignment=_ALIGN
    )


def _io_entries(values: Sequence[Any], roles: dict[str, tuple[str, str | None]]) -> tuple[IOEntry, ...]:
    out = []
    for v in values:
        shape: list[int | str] = []
        for d in v.shape or ():
            if isinstance(d, int):
                shape.append(d)
            else:  # a symbolic dimension: the dynamic batch
                shape.append("batch" if getattr(d, "value", None) else "?")
        role, site = roles.get(v.name, ("output", None))
        out.append(IOEntry(v.name, str(v.dtype.numpy()) if v.dtype is not None else "?", tuple(shape), role, site))
    return tuple(out)


def _roles(cached: CachedModel) -> dict[str, tuple[str, str | None]]:
    captured = cached.cacheable.captured
    roles: dict[str, tuple[str, str | None]] = {}
    for name, role in zip(captured.input_names, captured.input_roles(), strict=True):
        roles[name] = (role, None)
    for name in captured.output_names:
        roles[name] = ("output", None)
    for site in cached.site_info:
        for c, n in zip(site.cache_names(CACHE), site.cache_names(NEW_CACHE), strict=True):
            roles[c] = ("cache_in", site.name)
            roles[n] = ("cache_out", site.name)
        for prefix in HISTORY[1:]:
            for h in site.cache_names(prefix):
                roles[h] = ("cache_in", site.name)
    roles[FORECAST_WEIGHTS] = ("forecast_weights", None)
    return roles


def export_onnx(
    cached: CachedModel,
    out: str | os.PathLike[str],
    *,
    model_name: str,
    sampler: Any,
    spec: Any = None,
    config: ExportConfig | None = None,
    check: ParityGate | None = None,
    **overrides: Any,
) -> Manifest:
    """Export ``cached``'s schedule as an ONNX folder at ``out`` (atomically); return its manifest.

    ``config`` (or keyword ``overrides`` of its fields, e.g. ``max_batch=16``) sets the opset and
    the batch range; ``check`` is the parity gate to run before the folder is kept (none: no gate).
    """
    import onnx_ir as ir

    config = (config or ExportConfig()).replace(**overrides)
    if cached.dtype != torch.float32:
        raise ExportError(
            f"this CachedModel computes its token matmuls in {cached.dtype} (dtype=), but the ONNX export is of "
            "the fp32 graphs, so the folder would not match it; export a CachedModel made without dtype= "
            "(TensorRT: ExportConfig(fp16=True) / --fp16 sets the engine's precision)"
        )
    schedule = cached.schedule
    timesteps = [float(t) for t in sampler.timesteps]
    if len(timesteps) != schedule.num_steps:
        raise ExportError(f"the sampler has {len(timesteps)} steps, the schedule {schedule.num_steps}")
    t0 = time.perf_counter()
    routed = export_routed(cached, config)
    export_seconds = time.perf_counter() - t0
    roles = _roles(cached)
    captured = cached.cacheable.captured
    with atomic_dir(out) as tmp:
        routed = _externalize(routed, tmp)
        external = sum(isinstance(v.const_value, ir.ExternalTensor) for v in routed.graph.initializers.values())
        base = ir.to_proto(routed)  # every graph starts from this one serialized routed model
        save_safetensors(
            tmp / EXAMPLE_INPUTS_FILE,
            {
                n: t.detach().cpu().contiguous()
                for n, t in zip(captured.input_names, captured.example_inputs, strict=True)
            },
            metadata={"format": "harmonica-compile/example-inputs", "batch": str(captured.batch_size)},
        )
        graphs = []
        t1 = time.perf_counter()
        for gid in range(cached.num_graphs):
            gm = cached.graphs[gid]
            mask = list(gm.meta[MASK])
            kinds = list(gm.meta[KINDS])
            passes = specialize_passes(mask, cached.site_info, gm.meta[REFRESH], captured.input_names, kinds)
            model = passes(ir.from_proto(base)).model
            name = f"graph_{gid:03d}.onnx"
            ir.save(model, tmp / name)
            got_in, got_out = [v.name for v in model.graph.inputs], [v.name for v in model.graph.outputs]
            want_in, want_out = list(gm.meta[INPUT_NAMES]), list(gm.meta[OUTPUT_NAMES])
            if got_in != want_in or got_out != want_out:
                raise ExportError(
                    f"graph {gid}: ONNX inputs/outputs {got_in} -> {got_out} differ from the torch graph's "
                    f"{want_in} -> {want_out}"
                )
            graphs.append(
                GraphEntry(
                    id=gid,
                    file=name,
                    sha256=sha256_file(tmp / name),
                    bytes=(tmp / name).stat().st_size,
                    mask=tuple(mask),
                    inputs=_io_entries(model.graph.inputs, roles),
                    outputs=_io_entries(model.graph.outputs, roles),
                    nodes=model.graph.num_nodes(),
                    flops=cached.graph_flops(gid),
                    external_data=(WEIGHTS_FILE,),
                )
            )
        specialize_seconds = time.perf_counter() - t1
        steps = [
            StepEntry(
                i,
                timesteps[i],
                cached.graph_of_step(i),
                tuple(schedule.mask[i]),
                tuple(schedule.branches[i]) if schedule.uses_forecast else None,
                tuple(schedule.forecast_weights(i)) if schedule.uses_forecast else None,
            )
            for i in range(schedule.num_steps)
        ]
        model_facts: dict[str, Any] = {"name": model_name, "class": captured.model_class}
        if spec is not None:
            model_facts.update(spec=spec.describe(), source=spec.extra.get("source"))
        data = build_manifest(
            kind="onnx",
            model=model_facts,
            sampler=sampler.config() if hasattr(sampler, "config") else {"name": type(sampler).__name__},
            schedule={
                "sites": list(schedule.sites),
                "cur": schedule.cur,
                "history": schedule.history_depth,
                "meta": dict(schedule.meta),
                "theoretical_speedup": cached.theoretical_speedup,
            },
            steps=steps,
            graphs=graphs,
            files={
                WEIGHTS_FILE: sha256_file(tmp / WEIGHTS_FILE),
                EXAMPLE_INPUTS_FILE: sha256_file(tmp / EXAMPLE_INPUTS_FILE),
            },
            opset=config.opset,
            exporter="torch.onnx.export(dynamo=True) of the hard-routed graph, specialized per mask by onnx-ir passes",
            batch=config.batch,
            export_config=config.to_json(),
            weights={"file": WEIGHTS_FILE, "tensors": external},
            example_inputs=EXAMPLE_INPUTS_FILE,
            timing={"export_seconds": round(export_seconds, 3), "specialize_seconds": round(specialize_seconds, 3)},
        )
        manifest = Manifest(tmp, data)
        manifest.write()
        if check:  # a gate (None or False: none)
            t2 = time.perf_counter()
            report = check(tmp, cached)
            data["parity"] = {**report, "seconds": round(time.perf_counter() - t2, 3)}
            manifest.write()
    return load_manifest(out)
