"""CacheableModel: a captured graph plus its cache sites, the input of training and specialization.

``prepare(model, example_inputs)`` = capture, then one :class:`~harmonica_compile.passes.PassManager`
over the clean-up passes, FlattenInputsOutputs and FindCacheSites (``dump_before`` / ``dump_after``
name passes to print the graph around). From a ``CacheableModel`` you get the routed graphs
training needs (``routed("soft")``) and one specialized graph per step mask (``specialize(mask,
refresh)``).

Example:
    >>> import torch
    >>> from harmonica_compile.models import DiT_models
    >>> m = DiT_models["DiT-S/8"](input_size=16, num_classes=10)
    >>> m.blocks = m.blocks[:1]
    >>> cm = prepare(m, (torch.randn(2, 4, 16, 16), torch.tensor([1, 1]), torch.tensor([0, 1])))
    >>> cm.site_names
    ('blocks.0.attn', 'blocks.0.mlp')
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from .capture import CapturedModel, capture
from .names import CACHE, FORECAST_WEIGHTS, INPUT_NAMES
from .passes import (
    CLEANUP_PIPELINE,
    CacheSite,
    FindCacheSites,
    FlattenInputsOutputs,
    InsertCacheBranches,
    PassManager,
    SiteRule,
    Specialize,
    clone_graph_module,
)

__all__ = ["CacheableModel", "count_flops", "prepare"]


@dataclass
class CacheableModel:
    """A captured model and its cache sites (in execution order)."""

    captured: CapturedModel
    sites: tuple[CacheSite, ...]
    model_name: str | None = None
    _routed: dict[str, fx.GraphModule] = field(default_factory=dict, repr=False)

    @property
    def site_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sites)

    @property
    def num_sites(self) -> int:
        return len(self.sites)

    @property
    def graph_module(self) -> fx.GraphModule:
        """The captured, cleaned-up graph with every site computed."""
        return self.captured.graph_module

    def routed(self, mode: str = "soft") -> fx.GraphModule:
        """The graph with a soft (``router``) or hard (``mask``) mix per site; see InsertCacheBranches."""
        if mode not in self._routed:
            gm = clone_graph_module(self.captured.graph_module)
            self._routed[mode] = InsertCacheBranches(self.sites, mode)(gm).graph_module
        return self._routed[mode]

    def specialize(
        self, mask: Sequence[bool], refresh: Sequence[str] = (), kinds: Sequence[str] | None = None
    ) -> fx.GraphModule:
        """The graph of one step: cached sites as ``cache.*`` inputs (with their history and the
        forecast weights for forecast ``kinds``), refreshed ones as outputs."""
        return Specialize(self.sites, mask, refresh, kinds)(self.captured.graph_module).graph_module

    def cache_shape(self, site: CacheSite, index: int, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == -1 else d for d in site.shapes[index])

    def example_cache(self, batch: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Zero tensors shaped like every site output at ``batch`` (for FLOP counting and export)."""
        out = {}
        for site in self.sites:
            for j, name in enumerate(site.cache_names()):
                dtype = getattr(torch, site.dtypes[j]) if site.dtypes[j] != "unknown" else torch.float32
                out[name] = torch.zeros(self.cache_shape(site, j, batch), dtype=dtype, device=device)
        return out

    def step_inputs(self, gm: fx.GraphModule, flat_inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Example inputs for a specialized graph: the model inputs plus zero caches."""
        batch = self.captured.batch_of(flat_inputs)
        cache = self.example_cache(batch, flat_inputs[0].device)
        names = gm.meta[INPUT_NAMES][len(flat_inputs) :]
        values = []
        for n in names:
            if n == FORECAST_WEIGHTS:
                values.append(torch.zeros(len(self.sites), 3, device=flat_inputs[0].device))
            else:  # cache_h1.* / cache_h2.* are shaped like cache.*
                values.append(cache[CACHE + n[n.index(".") :]])
        return [*flat_inputs, *values]

    @functools.cached_property
    def flops_full(self) -> int:
        """FLOPs of one full-compute call at the capture's example batch."""
        return count_flops(self.captured.graph_module, self.captured.example_inputs)


def _attention_flop_formulas() -> dict[Any, Any]:
    """FLOP formulas ``torch.utils.flop_counter`` lacks: the CPU kernel ``scaled_dot_product_attention``
    dispatches to (``_scaled_dot_product_flash_attention_for_cpu``) counts as the CUDA kernels do,
    two batched matmuls (``Q K^T`` and ``P V``). Without it a CPU count leaves attention out and a
    cached step's FLOP bound is too high (DiT-S/2 with every MLP cached: 2.98x instead of 2.49x)."""
    from torch.utils.flop_counter import sdpa_flop_count

    def cpu_flash(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return {op: cpu_flash} if op is not None else {}  # keyed by overload packet, as torch keys its own


def count_flops(gm: nn.Module, inputs: Sequence[torch.Tensor]) -> int:
    """FLOPs of one call, counted by ``torch.utils.flop_counter`` (matmuls, convolutions, attention;
    on the CPU too, see :func:`_attention_flop_formulas`)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_attention_flop_formulas()) as counter:
        gm(*inputs)
    return int(counter.get_total_flops())


def prepare(
    model: nn.Module,
    example_inputs: Any,
    *,
    site_rules: Sequence[SiteRule] | None = None,
    model_name: str | None = None,
    dynamic_batch: bool = True,
    dump_before: Sequence[str] = (),
    dump_after: Sequence[str] = (),
    dump_dir: str | None = None,
) -> CacheableModel:
    """Capture ``model`` and run the prepare pipeline on it; see the module docstring."""
    if isinstance(model, CacheableModel):
        return model
    captured = capture(model, example_inputs, dynamic_batch=dynamic_batch)
    finder = FindCacheSites(site_rules)
    pipeline = PassManager(
        [*CLEANUP_PIPELINE, FlattenInputsOutputs(captured), finder],
        name="prepare",
        dump_before=dump_before,
        dump_after=dump_after,
        dump_dir=dump_dir,
    )
    result = pipeline(captured.graph_module)
    captured.graph_module = result.graph_module
    captured.history = [(name, r.changes) for name, r in result.history]
    return CacheableModel(captured, tuple(finder.sites), model_name=model_name)
