"""ONNX export: one graph per distinct step mask, all sharing one external weights file.

How (measured on tiny-dit-digits: exporting each specialized graph through ``torch.onnx.export``
costs a full export, ~5 s, per graph; specializing at the ONNX level costs milliseconds):

1. the *hard-routed* graph (every site as ``where(mask[k], fresh, cache)``, with ``cache.<site>``
   inputs and ``fresh.<site>`` outputs) is exported once with ``torch.onnx.export(dynamo=True)``,
   opset 18, the batch dimension dynamic;
2. its weights go to one file, ``weights.bin``, that every graph references (external data);
3. for each distinct mask, a copy of the ONNX graph is specialized: each ``Where`` is replaced by
   its fresh or its cache input, dead nodes and unused inputs and initializers are pruned, and the
   ``fresh`` value of every site a later step reads becomes the output ``new_cache.<site>``.

Settings (opset, batch profile) come from one :class:`~harmonica_compile.exporters.config.ExportConfig`.
Opset 18 (what torch's dynamo exporter targets): attention is exported as MatMul/Softmax, which
every TensorRT 10.x parser reads and fuses; the ONNX ``Attention`` op needs opset 23 and
TensorRT >= 10.14, so it is not used.

The folder also holds ``example_inputs.safetensors``: the model inputs of the capture (latent,
timestep, conditions at the capture batch), valid by construction, from which tools that need
real input values (``trtexec --loadInputs``, warm-up) build theirs.

The parity gate (:func:`check_parity`) runs before the folder is moved into place: every graph in
ONNX Runtime's **CPU provider** with graph optimizations off against its specialized torch graph
(atol 1e-5), and a whole trajectory against the torch :class:`~harmonica_compile.CachedModel`
(atol 1e-4, rtol 1e-2). Graphs are checked on the inputs and caches they get in a real
trajectory, with optimum's tolerance (atol 1e-5, and numpy's default rtol 1e-5). The CPU provider
whatever the machine: the CUDA and TensorRT providers compute fp32 matmuls in TF32 by default
(~1e-4 relative error), which no 1e-5 gate can pass. A folder that fails is never left behind.
"""

from __future__ import annotations

import copy
import logging
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cached_model import CachedModel
from ..errors import ExportError
from ..io import atomic_dir, save_safetensors, sha256_file
from .config import DEFAULT_OPSET, ExportConfig
from .manifest import MANIFEST_FORMAT, MANIFEST_VERSION, Manifest, load_manifest, tool_versions

__all__ = ["DEFAULT_OPSET", "EXAMPLE_INPUTS_FILE", "check_parity", "export_onnx", "specialize_onnx"]

WEIGHTS_FILE = "weights.bin"
EXAMPLE_INPUTS_FILE = "example_inputs.safetensors"
_INLINE_BYTES = 64  # initializers smaller than this (shape constants) stay inside each graph file
_ALIGN = 64

_ONNX_DTYPES = {
    1: "float32",
    2: "uint8",
    3: "int8",
    5: "int16",
    6: "int32",
    7: "int64",
    9: "bool",
    10: "float16",
    11: "float64",
    16: "bfloat16",
}


def _export_routed(cached: CachedModel, opset: int, max_batch: int) -> Any:
    """The hard-routed graph as an ONNX ModelProto (weights still inside)."""
    cm = cached.cacheable
    hard = cm.routed("hard")
    example = list(cm.captured.example_inputs)
    batch = cm.captured.batch_size
    cache = cm.example_cache(batch)
    mask = torch.ones(cm.num_sites, dtype=torch.bool)
    args = (*example, *cache.values(), mask)
    names = list(hard.meta["harmonica_input_names"])
    outputs = list(hard.meta["harmonica_output_names"])
    # The graph is traced at the capture batch; the exported dimension is symbolic either way, and
    # the manifest's batch range (checked by every runner) is what limits the calls.
    dim = torch.export.Dim("batch", min=1, max=max(max_batch, batch))
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
                opset_version=opset,
                input_names=names,
                output_names=outputs,
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
    model = program.model_proto
    # The exporter annotates every node with its FX node, module path and Python stack trace:
    # ~90% of a graph file, and local paths a user should not ship. Only the node names stay.
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    model.graph.doc_string = ""
    # Shapes of intermediate values are re-inferred by every runtime; keeping them would add
    # ~50 KB to each of up to num_steps graph files.
    del model.graph.value_info[:]
    return model


def _externalize(model: Any, folder: Path) -> dict[str, dict[str, Any]]:
    """Move large initializers of ``model`` into ``folder/weights.bin``; return their external refs."""
    from onnx import numpy_helper
    from onnx.external_data_helper import set_external_data

    refs: dict[str, dict[str, Any]] = {}
    offset = 0
    with open(folder / WEIGHTS_FILE, "wb") as f:
        for tensor in model.graph.initializer:
            data = numpy_helper.to_array(tensor).tobytes() if not tensor.raw_data else tensor.raw_data
            if len(data) < _INLINE_BYTES:
                continue
            pad = (-offset) % _ALIGN
            f.write(b"\0" * pad)
            offset += pad
            f.write(data)
            for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
                tensor.ClearField(field)
            tensor.raw_data = data
            set_external_data(tensor, location=WEIGHTS_FILE, offset=offset, length=len(data))
            tensor.ClearField("raw_data")
            refs[tensor.name] = {"offset": offset, "length": len(data)}
            offset += len(data)
    return refs


def specialize_onnx(
    model: Any, mask: Sequence[bool], sites: Sequence[Any], refresh: set[str], num_model_inputs: int
) -> Any:
    """A copy of the hard-routed ONNX ``model`` specialized to one mask (see the module docstring)."""
    graph = model.graph
    for node in graph.node:
        if any(a.type in (5, 10) for a in node.attribute):  # GRAPH / GRAPHS: If, Loop, Scan
            raise ExportError(f"ONNX specialization does not handle subgraphs (node {node.name}, {node.op_type})")
    out = copy.deepcopy(model)
    g = out.graph
    replace: dict[str, str] = {}
    keep_inputs = [i.name for i in graph.input[:num_model_inputs]]
    new_outputs: list[tuple[str, str]] = []  # (value name, output name)
    for site, compute in zip(sites, mask, strict=True):
        for cache_name, new_name in zip(site.cache_names("cache"), site.cache_names("new_cache"), strict=True):
            where = [n for n in g.node if n.op_type == "Where" and len(n.input) == 3 and n.input[2] == cache_name]
            if len(where) != 1:
                raise ExportError(f"ONNX graph: expected one Where reading '{cache_name}', found {len(where)}")
            replace[where[0].output[0]] = where[0].input[1] if compute else cache_name
            if compute and site.name in refresh:
                new_outputs.append((where[0].input[1], new_name))
            if not compute:
                keep_inputs.append(cache_name)
    # rewire every use of a Where output
    for node in g.node:
        for i, name in enumerate(node.input):
            if name in replace:
                node.input[i] = replace[name]
    model_outputs = [o for o in g.output][: len(g.output) - sum(s.num_outputs for s in sites)]
    # graph outputs: the model outputs, then new_cache.* (renaming the fresh values)
    renames = {value: name for value, name in new_outputs}
    for node in g.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
        for i, name in enumerate(node.output):
            if name in renames:
                node.output[i] = renames[name]
    fresh_infos = {o.name: o for o in graph.output}
    del g.output[:]
    for o in model_outputs:
        g.output.append(o)
    for value, name in new_outputs:
        info = copy.deepcopy(fresh_infos[value])
        info.name = name
        g.output.append(info)
    # prune: keep what the outputs need
    needed = {o.name for o in g.output}
    kept = []
    for node in reversed(list(g.node)):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    kept.reverse()
    del g.node[:]
    g.node.extend(kept)
    inputs = {i.name: i for i in graph.input}
    del g.input[:]
    for name in keep_inputs:
        g.input.append(copy.deepcopy(inputs[name]))
    inits = [t for t in g.initializer if t.name in needed]
    del g.initializer[:]
    g.initializer.extend(inits)
    infos = [v for v in g.value_info if v.name in needed]
    del g.value_info[:]
    g.value_info.extend(infos)
    return out


def _io_entries(values: Any, roles: dict[str, tuple[str, str | None]]) -> list[dict[str, Any]]:
    out = []
    for v in values:
        t = v.type.tensor_type
        shape = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in t.shape.dim]
        shape = ["batch" if isinstance(s, str) and s not in ("?",) else s for s in shape]
        role, site = roles.get(v.name, ("output", None))
        out.append(
            {
                "name": v.name,
                "dtype": _ONNX_DTYPES.get(t.elem_type, str(t.elem_type)),
                "shape": shape,
                "role": role,
                "site": site,
            }
        )
    return out


def _roles(cached: CachedModel) -> dict[str, tuple[str, str | None]]:
    captured = cached.cacheable.captured
    roles: dict[str, tuple[str, str | None]] = {}
    for name, role in zip(captured.input_names, captured.input_roles(), strict=True):
        roles[name] = (role, None)
    for name in captured.output_names:
        roles[name] = ("output", None)
    for site in cached.site_info:
        for c, n in zip(site.cache_names("cache"), site.cache_names("new_cache"), strict=True):
            roles[c] = ("cache_in", site.name)
            roles[n] = ("cache_out", site.name)
    return roles


def export_onnx(
    cached: CachedModel,
    out: str | os.PathLike[str],
    *,
    model_name: str,
    sampler: Any,
    spec: Any = None,
    config: ExportConfig | None = None,
    check: bool = True,
    progress: bool = True,
    **overrides: Any,
) -> Manifest:
    """Export ``cached``'s schedule as an ONNX folder at ``out`` (atomically); return its manifest.

    ``config`` (or keyword ``overrides`` of its fields, e.g. ``max_batch=16``) sets the opset and
    the batch range; ``check=False`` skips the parity gate.
    """
    import onnx

    config = (config or ExportConfig()).replace(**overrides)
    opset, max_batch = config.opset, config.max_batch
    schedule = cached.schedule
    timesteps = [float(t) for t in sampler.timesteps]
    if len(timesteps) != schedule.num_steps:
        raise ExportError(f"the sampler has {len(timesteps)} steps, the schedule {schedule.num_steps}")
    t0 = time.perf_counter()
    base = _export_routed(cached, opset, max_batch)
    export_seconds = time.perf_counter() - t0
    roles = _roles(cached)
    num_model_inputs = len(cached.cacheable.captured.input_names)
    with atomic_dir(out) as tmp:
        refs = _externalize(base, tmp)
        captured = cached.cacheable.captured
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
            mask = list(gm.meta["harmonica_mask"])
            refresh = set(gm.meta["harmonica_refresh"])
            spec_model = specialize_onnx(base, mask, cached.site_info, refresh, num_model_inputs)
            name = f"graph_{gid:03d}.onnx"
            onnx.save_model(spec_model, str(tmp / name))
            want_in = list(gm.meta["harmonica_input_names"])
            want_out = list(gm.meta["harmonica_output_names"])
            got_in = [i.name for i in spec_model.graph.input]
            got_out = [o.name for o in spec_model.graph.output]
            if got_in != want_in or got_out != want_out:
                raise ExportError(
                    f"graph {gid}: ONNX inputs/outputs {got_in} -> {got_out} differ from the torch graph's "
                    f"{want_in} -> {want_out}"
                )
            graphs.append(
                {
                    "id": gid,
                    "file": name,
                    "sha256": sha256_file(tmp / name),
                    "bytes": (tmp / name).stat().st_size,
                    "mask": mask,
                    "external_data": [WEIGHTS_FILE],
                    "inputs": _io_entries(spec_model.graph.input, roles),
                    "outputs": _io_entries(spec_model.graph.output, roles),
                    "nodes": len(spec_model.graph.node),
                    "flops": cached._graph_flops(gid),
                }
            )
        specialize_seconds = time.perf_counter() - t1
        steps = [
            {"index": i, "timestep": timesteps[i], "graph": cached.graph_of_step(i), "mask": list(schedule.mask[i])}
            for i in range(schedule.num_steps)
        ]
        data = {
            "format": MANIFEST_FORMAT,
            "format_version": MANIFEST_VERSION,
            "kind": "onnx",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "tools": tool_versions(),
            "opset": opset,
            "exporter": "torch.onnx.export(dynamo=True) of the hard-routed graph, specialized per mask in ONNX",
            "model": {
                "name": model_name,
                "class": captured.model_class,
                **({} if spec is None else {"spec": spec.describe(), "source": spec.extra.get("source")}),
            },
            "sampler": sampler.config() if hasattr(sampler, "config") else {"name": type(sampler).__name__},
            "schedule": {
                "sites": list(schedule.sites),
                "cur": schedule.cur,
                "meta": dict(schedule.meta),
                "theoretical_speedup": cached.theoretical_speedup,
            },
            "batch": config.batch,
            "export_config": config.to_json(),
            "weights": {"file": WEIGHTS_FILE, "tensors": len(refs)},
            "example_inputs": EXAMPLE_INPUTS_FILE,
            "files": {
                WEIGHTS_FILE: sha256_file(tmp / WEIGHTS_FILE),
                EXAMPLE_INPUTS_FILE: sha256_file(tmp / EXAMPLE_INPUTS_FILE),
            },
            "steps": steps,
            "graphs": graphs,
            "timing": {"export_seconds": round(export_seconds, 3), "specialize_seconds": round(specialize_seconds, 3)},
        }
        manifest = Manifest(tmp, data)
        manifest.write()
        if check:
            t2 = time.perf_counter()
            report = check_parity(tmp, cached, spec=spec, sampler=sampler)
            data["parity"] = {**report, "seconds": round(time.perf_counter() - t2, 3)}
            manifest.write()
    return load_manifest(out)


def _recorded_trajectory(
    cached: CachedModel, spec: Any, sampler: Any, seed: int
) -> tuple[dict[int, list[torch.Tensor]], torch.Tensor]:
    """One trajectory of the torch CachedModel: its final images, and the inputs (model inputs and
    cache values) each graph gets the first time it runs: the activations the graph will see."""
    from ..sampling import generate

    records: dict[int, list[torch.Tensor]] = {}
    run_step = cached.run_step

    def recording(step: int, flat: Any) -> list[torch.Tensor]:
        gid = cached.graph_of_step(step)
        if gid not in records:
            gm = cached.graphs[gid]
            names = gm.meta["harmonica_input_names"][len(flat) :]
            records[gid] = [t.detach().clone() for t in flat] + [cached._cache[n].clone() for n in names]
        return run_step(step, flat)

    cached.run_step = recording  # type: ignore[method-assign]
    try:
        images, _ = generate(
            spec, spec.denoiser(cached), num=2, steps=sampler.num_steps, seed=seed, sampler=sampler, clamp=False
        )
    finally:
        del cached.run_step
    return records, images


def check_parity(folder: Path, cached: CachedModel, *, spec: Any = None, sampler: Any = None) -> dict[str, Any]:
    """Every graph in ONNX Runtime (optimizations off) against its torch graph (atol 1e-5) on the
    inputs it gets in a real trajectory (random inputs when no model spec is given), then a whole
    trajectory against the torch CachedModel (atol 1e-4, rtol 1e-2); raise ExportError naming the
    graph on failure."""
    from ..runtime.ort import CPU_PROVIDER, OrtRunner

    # the CPU provider, whatever this machine offers: see the module docstring
    runner = OrtRunner(folder, providers=[CPU_PROVIDER], optimization="disabled")  # verifies the manifest
    manifest = runner.manifest
    cm = cached.cacheable
    gen = torch.Generator().manual_seed(0)
    trajectory = spec is not None and sampler is not None
    recorded, torch_images = _recorded_trajectory(cached, spec, sampler, seed=123) if trajectory else ({}, None)
    worst_graph = 0.0
    for g in manifest.graphs:
        gid = g["id"]
        gm = cached.graphs[gid]
        if gid in recorded:
            inputs = recorded[gid]
        else:
            flat = [_random_like(x, gen) for x in cm.captured.example_inputs]
            inputs = cm.step_inputs(gm, flat)
            for i in range(len(flat), len(inputs)):
                inputs[i] = torch.randn(inputs[i].shape, generator=gen, dtype=inputs[i].dtype)
        with torch.no_grad():
            want = [t.numpy() for t in gm(*inputs)]
        got = runner.run_graph(gid, [t.numpy() for t in inputs])
        for name, w, o in zip(gm.meta["harmonica_output_names"], want, got, strict=True):
            diff = float(np.abs(w - o).max()) if w.size else 0.0
            worst_graph = max(worst_graph, diff)
            # optimum's check: np.allclose with atol 1e-5 (and numpy's default rtol 1e-5)
            if not np.allclose(o, w, atol=1e-5):
                raise ExportError(
                    f"parity gate: graph {gid} ({g['file']}) output '{name}' differs from the torch graph by "
                    f"{diff:.2e} in ONNX Runtime (atol 1e-5, rtol 1e-5); the export is not kept"
                )
    out: dict[str, Any] = {"graph_atol": 1e-5, "graph_rtol": 1e-5, "graph_max_abs_diff": worst_graph}
    if trajectory:
        from ..sampling import generate

        ort_images, _ = generate(spec, runner, num=2, steps=sampler.num_steps, seed=123, sampler=sampler, clamp=False)
        diff = float((ort_images - torch_images).abs().max())
        out.update({"trajectory_atol": 1e-4, "trajectory_rtol": 1e-2, "trajectory_max_abs_diff": diff})
        if not torch.allclose(ort_images, torch_images, atol=1e-4, rtol=1e-2):
            raise ExportError(
                f"parity gate: the ONNX Runtime trajectory differs from the torch CachedModel by {diff:.2e} "
                "(atol 1e-4, rtol 1e-2); the export is not kept"
            )
    return out


def _random_like(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    if x.is_floating_point():
        return torch.randn(x.shape, generator=gen, dtype=x.dtype)
    return x.clone()
