"""ExportConfig: the settings every exporter (ONNX, TensorRT, trtexec) shares, with one set of defaults.

Batch sizes count the **model batch**: what one graph call sees, which is twice the number of
images when classifier-free guidance is on. Every command that runs an exported folder splits its
work into calls of at most ``max_batch`` (``sample --engine``, ``bench``), so any ``--num`` works
with a folder exported at the defaults. ``opt_batch`` is the batch TensorRT tunes its kernels for;
it defaults to ``max_batch`` because split runs make most calls at the largest batch.

Example:
    >>> ExportConfig().batch
    {'min': 1, 'opt': 64, 'max': 64}
    >>> ExportConfig(max_batch=32, opt_batch=8).batch
    {'min': 1, 'opt': 8, 'max': 32}
    >>> ExportConfig(max_batch=8, opt_batch=16)
    Traceback (most recent call last):
    ...
    harmonica_compile.errors.ConfigError: need 1 <= min_batch <= opt_batch <= max_batch, got min 1, opt 16, max 8; ...
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..errors import ConfigError

__all__ = ["DEFAULT_MAX_BATCH", "DEFAULT_OPSET", "MIN_OPSET", "ExportConfig"]

#: torch's dynamo exporter targets opset 18; LayerNormalization needs 17. The ONNX ``Attention``
#: op needs opset 23 and TensorRT >= 10.14, so attention stays MatMul/Softmax, which every
#: TensorRT 10.x parser reads and fuses.
DEFAULT_OPSET = 18
MIN_OPSET = 17
DEFAULT_MAX_BATCH = 64


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    return value


@dataclass(frozen=True)
class ExportConfig:
    """Settings of an export; see the module docstring."""

    #: ONNX opset of the exported graphs.
    opset: int = DEFAULT_OPSET
    #: Largest model batch a graph takes (images x 2 with classifier-free guidance).
    max_batch: int = DEFAULT_MAX_BATCH
    #: The batch TensorRT optimizes for (``None``: ``max_batch``).
    opt_batch: int | None = None
    #: Smallest model batch a graph takes.
    min_batch: int = 1
    #: TensorRT 10: build fp16 engines (TensorRT 11 is strongly typed: precision lives in the ONNX).
    fp16: bool = False
    #: TensorRT: let fp32 layers use TF32 (10-bit mantissa products; ~1e-4 relative error). Off by
    #: default, so an "fp32" engine is fp32.
    tf32: bool = False

    def __post_init__(self) -> None:
        opset = _int("opset", self.opset)
        if opset < MIN_OPSET:
            raise ConfigError(
                f"opset {opset} is too old: LayerNormalization needs opset >= {MIN_OPSET}; use {DEFAULT_OPSET}"
            )
        lo, hi = _int("min_batch", self.min_batch), _int("max_batch", self.max_batch)
        opt = hi if self.opt_batch is None else _int("opt_batch", self.opt_batch)
        if not 1 <= lo <= opt <= hi:
            raise ConfigError(
                f"need 1 <= min_batch <= opt_batch <= max_batch, got min {lo}, opt {opt}, max {hi}; "
                "pass --opt-batch at most --max-batch"
            )

    @property
    def batch(self) -> dict[str, int]:
        """The batch profile ``{"min", "opt", "max"}`` recorded in manifests."""
        return {
            "min": self.min_batch,
            "opt": self.max_batch if self.opt_batch is None else self.opt_batch,
            "max": self.max_batch,
        }

    @property
    def precision(self) -> str:
        """What TensorRT engines built with this config compute in, named honestly."""
        base = "fp16" if self.fp16 else "fp32"
        return f"{base}+tf32" if self.tf32 else base

    def replace(self, **changes: Any) -> ExportConfig:
        """A copy with ``changes`` applied; ``None`` values leave a field as it is."""
        return ExportConfig(**{**asdict(self), **{k: v for k, v in changes.items() if v is not None}})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExportConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown export settings {unknown}; known: {sorted(known)}")
        return cls(**data)
