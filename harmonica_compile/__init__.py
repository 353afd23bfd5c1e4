"""harmonica-compile: learned feature caching for Diffusion Transformers, done as a compiler.

The user-facing verbs:

- :func:`find_cache_sites` - the cacheable sub-layers of a model, by module path;
- :func:`optimize` - a :class:`CachedModel` for a given :class:`CacheSchedule` (or one trained
  with HarmoniCa, L2C or FORA when no schedule is given);
- :func:`prepare` / :func:`capture` - the lower-level stages.

Example:
    >>> import torch, harmonica_compile as hc
    >>> from harmonica_compile.models import DiT_models
    >>> m = DiT_models["DiT-S/8"](input_size=16, num_classes=10)
    >>> m.blocks = m.blocks[:1]
    >>> hc.find_cache_sites(m, (torch.randn(2, 4, 16, 16), torch.tensor([5, 5]), torch.tensor([0, 1])))
    ['blocks.0.attn', 'blocks.0.mlp']
"""

from __future__ import annotations

from ._version import __version__
from .api import find_cache_sites, optimize
from .cacheable import CacheableModel, prepare
from .cached_model import CachedModel
from .capture import CapturedModel, capture
from .errors import HarmonicaError
from .passes import CacheSite, SiteRule
from .schedule import CacheSchedule

__all__ = [
    "CacheSchedule",
    "CacheSite",
    "CacheableModel",
    "CachedModel",
    "CapturedModel",
    "HarmonicaError",
    "SiteRule",
    "__version__",
    "capture",
    "find_cache_sites",
    "optimize",
    "prepare",
]
