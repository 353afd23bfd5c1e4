"""The exception tree. Every error a user can cause derives from :class:`HarmonicaError`.

Messages follow one shape: what was found, what was expected, and what to do, naming the site,
step, input or file concerned. The CLI prints ``str(error)`` on one line and exits with code 2.
"""

from __future__ import annotations

__all__ = [
    "ArtifactError",
    "CaptureError",
    "ConfigError",
    "ExportError",
    "HarmonicaError",
    "InputError",
    "NumericalError",
    "PassError",
    "RuntimeBackendError",
    "ScheduleError",
    "SiteError",
    "TrainingError",
]


class HarmonicaError(Exception):
    """Base class of every error harmonica-compile raises on purpose."""


class ConfigError(HarmonicaError, ValueError):
    """A setting or argument is out of range or of the wrong kind."""


class InputError(HarmonicaError, ValueError):
    """Tensors passed to a model, sampler or runtime do not fit what it was built for."""


class CaptureError(HarmonicaError):
    """torch.export could not capture the model, or the model rejected the example inputs."""


class SiteError(HarmonicaError):
    """FindCacheSites found no sites, or a site rule does not fit the model."""


class PassError(HarmonicaError):
    """A graph pass failed or left the graph in a state that breaks an invariant."""


class ScheduleError(HarmonicaError, ValueError):
    """A cache schedule is malformed or was made for another model or step count."""


class ArtifactError(HarmonicaError):
    """A file we wrote is missing, damaged, of another version, or made for something else."""


class TrainingError(HarmonicaError):
    """Router training cannot start or continue (bad checkpoint, impossible target, ...)."""


class ExportError(HarmonicaError):
    """An exporter could not write a graph, or the written graph failed its parity gate."""


class RuntimeBackendError(HarmonicaError):
    """A runtime (ONNX Runtime, TensorRT) is missing or cannot run the exported folder."""


class NumericalError(HarmonicaError):
    """NaN or Inf appeared in a computation; the message names the step and site."""
