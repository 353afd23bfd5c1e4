"""Training checkpoints: one safetensors file (tensors) with a JSON header (everything else).

Written atomically (temporary file, then rename), so a run killed while writing leaves the
previous checkpoint intact. Noise and labels are drawn from ``(seed, iteration)``, so a checkpoint
needs no random-generator state for a resumed run to repeat the uninterrupted one exactly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import TrainingError
from ..io import canonical_checksum, load_safetensors, save_safetensors, tensors_checksum

__all__ = ["CHECKPOINT_FORMAT", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "harmonica-compile/train-checkpoint"
CHECKPOINT_VERSION = 1


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"opt.{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("opt."):
            continue
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for name, value in meta.get("scalars", {}).items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    iteration: int,
    logits: torch.Tensor,
    optimizer: dict[str, Any],
    controller: dict[str, torch.Tensor],
    lam: torch.Tensor,
    config: dict[str, Any],
    fingerprint: dict[str, Any],
    history: list[dict[str, Any]],
    seconds: float,
) -> Path:
    opt_tensors, opt_meta = _flatten_optimizer(optimizer)
    tensors = {"logits": logits.detach().cpu(), "lambda": lam.detach().cpu(), **opt_tensors}
    tensors.update({f"controller.{k}": v for k, v in controller.items()})
    header = {
        "iteration": iteration,
        "config": config,
        "fingerprint": fingerprint,
        "optimizer": opt_meta,
        "history": history,
        "seconds": seconds,
    }
    meta = {
        "format": CHECKPOINT_FORMAT,
        "version": str(CHECKPOINT_VERSION),
        "state": json.dumps(header),
        "checksum": canonical_checksum(header),
        "tensors_checksum": tensors_checksum(tensors),
    }
    return save_safetensors(path, tensors, meta)


def load_checkpoint(
    path: str | os.PathLike[str], *, config: dict[str, Any], fingerprint: dict[str, Any]
) -> dict[str, Any]:
    """Read a checkpoint and check it belongs to this run (same config and model); errors name the file."""
    path = Path(path)
    if not path.exists():
        raise TrainingError(f"--resume: no checkpoint at {path}; start without --resume")
    try:
        tensors, meta = load_safetensors(path, what="checkpoint")
    except Exception as e:
        raise TrainingError(f"--resume: checkpoint {path} is damaged ({e}); delete it to start over") from e
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"--resume: {path} is not a training checkpoint (format {meta.get('format')!r})")
    if meta.get("version") != str(CHECKPOINT_VERSION):
        raise TrainingError(
            f"--resume: checkpoint {path} has version {meta.get('version')}, expected {CHECKPOINT_VERSION}"
        )
    try:
        header = json.loads(meta["state"])
    except (KeyError, json.JSONDecodeError) as e:
        raise TrainingError(f"--resume: checkpoint {path} has a damaged header ({e}); delete it to start over") from e
    if meta.get("checksum") != canonical_checksum(header) or meta.get("tensors_checksum") != tensors_checksum(tensors):
        raise TrainingError(f"--resume: checkpoint {path} fails its checksum; delete it to start over")
    if header.get("fingerprint") != fingerprint:
        raise TrainingError(
            f"--resume: checkpoint {path} was made for another model or sampler ({header.get('fingerprint')}, "
            f"this run: {fingerprint}); use another output folder"
        )
    saved = dict(header.get("config", {}))
    now = dict(config)
    for key in ("checkpoint_every",):  # may change on resume (iterations may not: it sets the ramp)
        saved.pop(key, None)
        now.pop(key, None)
    if saved != now:
        diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        raise TrainingError(f"--resume: checkpoint {path} was made with other settings ({diff}); use the same ones")
    controller = {k[len("controller.") :]: v for k, v in tensors.items() if k.startswith("controller.")}
    return {
        "iteration": int(header["iteration"]),
        "logits": tensors["logits"],
        "lambda": tensors["lambda"],
        "optimizer": _unflatten_optimizer(tensors, header["optimizer"]),
        "controller": controller,
        "history": header.get("history", []),
        "seconds": float(header.get("seconds", 0.0)),
    }
