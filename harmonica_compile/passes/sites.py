"""Cache sites as data: a :class:`SiteRule` says which module paths are sites, a :class:`CacheSite`
is one site of a captured graph (its name is the module path, in every schedule, graph input name,
manifest and plot).

Example:
    >>> SiteRule(r"blocks\\.\\d+\\.mlp", "mlp").kind
    'mlp'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import SiteError
from ..names import CACHE, site_value_names

__all__ = ["KINDS", "CacheSite", "SiteRule"]

KINDS = ("attention", "cross_attention", "mlp", "other")


@dataclass(frozen=True)
class SiteRule:
    """A site pattern: module paths matching ``pattern`` (a regular expression, full match) are
    sites of ``kind``. ``block_class`` restricts the rule to sub-layers of blocks whose class name
    is that (e.g. ``"DiTBlock"``).

    Example: ``SiteRule(r"layers\\.\\d+\\.(self_attn|mlp)", "attention")``.
    """

    pattern: str
    kind: str = "other"
    block_class: str | None = None

    def __post_init__(self) -> None:
        try:
            re.compile(self.pattern)
        except re.error as e:
            raise SiteError(f"SiteRule pattern {self.pattern!r} is not a valid regular expression: {e}") from e
        if self.kind not in KINDS:
            raise SiteError(f"SiteRule kind must be one of {KINDS}, got {self.kind!r}")


@dataclass(frozen=True)
class CacheSite:
    """One cache site of a captured graph. Node names refer to the captured graph."""

    name: str
    kind: str
    block: str
    module_class: str
    #: Nodes whose values leave the sub-layer (one per output tensor), in graph order.
    outputs: tuple[str, ...]
    #: Nodes from outside the sub-layer that it reads.
    inputs: tuple[str, ...]
    #: Every node computed inside the sub-layer.
    nodes: tuple[str, ...]
    #: Each output's shape, ``-1`` for the batch dimension, and dtype.
    shapes: tuple[tuple[int, ...], ...] = ()
    dtypes: tuple[str, ...] = ()
    #: Whether each output is multiplied by a gate before it joins the residual stream.
    gated: bool = False

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def cache_names(self, prefix: str = CACHE) -> list[str]:
        """Graph input (or output) names for this site: ``cache.<site>`` or ``cache.<site>.<i>``
        (other prefixes: :mod:`harmonica_compile.names`)."""
        return site_value_names(prefix, self.name, self.num_outputs)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "block": self.block,
            "module_class": self.module_class,
            "num_outputs": self.num_outputs,
            "shapes": [list(s) for s in self.shapes],
            "dtypes": list(self.dtypes),
            "gated": self.gated,
        }
