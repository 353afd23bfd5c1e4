"""The parity gate of an ONNX export: the exported graphs must compute what the torch graphs do.

:func:`onnx_parity_gate` returns the gate that :func:`~harmonica_compile.exporters.onnx.export_onnx`
runs on a finished folder before moving it into place (the CLI always passes it):

- every graph in ONNX Runtime's **CPU provider** with graph optimizations off, against its
  specialized torch graph, on the inputs and caches the graph gets in a real trajectory of the
  torch CachedModel (random inputs when no model spec is given), with optimum's tolerance (atol
  1e-5, rtol 1e-5) taken relative to the output's scale: ``|ort - torch| <= 1e-5 * max(1,
  max|torch|) + 1e-5 * |torch|``. Rounding error in fp32 is relative to the magnitude of the values
  a result was computed from, not to the result itself, so an element near zero carries the error
  of the whole tensor's scale: measured on tiny-dit-digits' learned schedule, an element of a
  cached graph's output (scale ~3) differed by 1.12e-5, which the plain elementwise check failed;
  a wiring or weight mistake moves outputs by 1e-2 or more, and TF32 (never used here) by ~1e-3
  relative, both far outside the scaled check;
- a whole trajectory of the ONNX Runtime runner against the torch CachedModel, with the
  deployment stacks' whole-pipeline tolerance for fp32 latents (atol 1e-4, rtol 1e-2).

The CPU provider whatever the machine offers: the CUDA and TensorRT providers compute fp32
matmuls in TF32 by default (~1e-4 relative error), which no 1e-5 gate can pass. The graph inputs
are recorded through the step engine's hook (``cached.engine.add_hook``), not by patching the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cached_model import CachedModel
from ..errors import ExportError
from .ort import CPU_PROVIDER, OrtRunner

__all__ = [
    "GRAPH_ATOL",
    "GRAPH_RTOL",
    "TRAJECTORY_ATOL",
    "TRAJECTORY_RTOL",
    "check_parity",
    "onnx_parity_gate",
    "output_scale",
    "outputs_agree",
]

GRAPH_ATOL, GRAPH_RTOL = 1e-5, 1e-5
TRAJECTORY_ATOL, TRAJECTORY_RTOL = 1e-4, 1e-2


def onnx_parity_gate(spec: Any = None, sampler: Any = None, *, progress: bool = False) -> Any:
    """The gate to hand to ``export_onnx(check=...)``: ``gate(folder, cached) -> report``."""

    def gate(folder: Path, cached: CachedModel) -> dict[str, Any]:
        return check_parity(folder, cached, spec=spec, sampler=sampler, progress=progress)

    return gate


def output_scale(reference: np.ndarray) -> float:
    """``max(1, max|reference|)``: the magnitude a graph output's rounding error is relative to."""
    return max(1.0, float(np.abs(reference).max())) if reference.size else 1.0


def outputs_agree(got: np.ndarray, reference: np.ndarray) -> bool:
    """The per-graph check: ``|got - ref| <= 1e-5 * scale + 1e-5 * |ref|`` everywhere (see above)."""
    bound = GRAPH_ATOL * output_scale(reference) + GRAPH_RTOL * np.abs(reference)
    return bool(np.all(np.abs(got - reference) <= bound))


def _recorded_trajectory(
    cached: CachedModel, spec: Any, sampler: Any, seed: int
) -> tuple[dict[int, list[torch.Tensor]], torch.Tensor]:
    """One trajectory of the torch CachedModel: its final images, and the inputs (model inputs and
    cache values) each graph gets the first time it runs: the activations the graph will see."""
    from ..sampling import generate

    records: dict[int, list[torch.Tensor]] = {}

    def record(step: int, graph: int, model_inputs: Any, cache_inputs: Any) -> None:
        if graph not in records:
            records[graph] = [t.detach().clone() for t in (*model_inputs, *cache_inputs)]

    remove = cached.engine.add_hook(record)
    try:
        images, _ = generate(
            spec, spec.denoiser(cached), num=2, steps=sampler.num_steps, seed=seed, sampler=sampler, clamp=False
        )
    finally:
        remove()
    return records, images


def check_parity(
    folder: Path, cached: CachedModel, *, spec: Any = None, sampler: Any = None, progress: bool = False
) -> dict[str, Any]:
    """Run the gate (see the module docstring); raise ExportError naming the graph on failure."""
    from tqdm import tqdm

    runner = OrtRunner(folder, providers=[CPU_PROVIDER], optimization="disabled")  # verifies the manifest
    cm = cached.cacheable
    gen = torch.Generator().manual_seed(0)
    trajectory = spec is not None and sampler is not None
    bar = tqdm(total=len(runner.manifest.graphs) + 2 * trajectory, desc="parity gate", disable=not progress)
    recorded, torch_images = _recorded_trajectory(cached, spec, sampler, seed=123) if trajectory else ({}, None)
    bar.update(trajectory)
    worst_graph = 0.0
    for g in runner.manifest.graphs:
        bar.update()
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
        # in the graph's input dtypes (the torch runtime may hold the forecast weights in float64)
        arrays = [t.numpy().astype(e["dtype"], copy=False) for e, t in zip(g["inputs"], inputs, strict=True)]
        got = runner.run_graph(gid, arrays)
        for entry, w, o in zip(g["outputs"], want, got, strict=True):
            diff = float(np.abs(w - o).max()) if w.size else 0.0
            worst_graph = max(worst_graph, diff)
            scale = output_scale(w)
            if not outputs_agree(o, w):
                raise ExportError(
                    f"parity gate: graph {gid} ({g['file']}) output '{entry['name']}' differs from the torch graph by "
                    f"{diff:.2e} in ONNX Runtime (atol {GRAPH_ATOL:g} x output scale {scale:.3g}, rtol "
                    f"{GRAPH_RTOL:g}); the export is not kept"
                )
    out: dict[str, Any] = {"graph_atol": GRAPH_ATOL, "graph_rtol": GRAPH_RTOL, "graph_max_abs_diff": worst_graph}
    if trajectory:
        from ..sampling import generate

        ort_images, _ = generate(spec, runner, num=2, steps=sampler.num_steps, seed=123, sampler=sampler, clamp=False)
        bar.update()
        diff = float((ort_images - torch_images).abs().max())
        out.update(
            {"trajectory_atol": TRAJECTORY_ATOL, "trajectory_rtol": TRAJECTORY_RTOL, "trajectory_max_abs_diff": diff}
        )
        if not torch.allclose(ort_images, torch_images, atol=TRAJECTORY_ATOL, rtol=TRAJECTORY_RTOL):
            raise ExportError(
                f"parity gate: the ONNX Runtime trajectory differs from the torch CachedModel by {diff:.2e} "
                f"(atol {TRAJECTORY_ATOL:g}, rtol {TRAJECTORY_RTOL:g}); the export is not kept"
            )
    bar.close()
    return out


def _random_like(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    if x.is_floating_point():
        return torch.randn(x.shape, generator=gen, dtype=x.dtype)
    return x.clone()
