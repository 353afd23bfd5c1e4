"""Serving: a Triton Inference Server model repository for an exported folder, and the server that runs it.

``build_repository`` writes the repository (``harmonica-compile serve-repo``), ``TritonServer``
starts the real ``tritonserver`` on it (``harmonica-compile serve``), and ``SamplerService`` is
the batch sampler the served model runs, usable without Triton.
"""

from __future__ import annotations

from .repository import DEFAULT_NAME, LAYOUTS, RepositoryFacts, build_repository
from .server import TritonServer, find_tritonserver
from .service import INPUTS, OUTPUT, SamplerService

__all__ = [
    "DEFAULT_NAME",
    "INPUTS",
    "LAYOUTS",
    "OUTPUT",
    "RepositoryFacts",
    "SamplerService",
    "TritonServer",
    "build_repository",
    "find_tritonserver",
]
