"""The names every stage shares: graph input/output prefixes, ``meta`` keys and manifest roles.

A site's identity is its module path everywhere. Its values travel under three prefixes:

- ``cache.<site>``: a graph input, the value a cached site reads (written by an earlier step);
- ``new_cache.<site>``: a specialized graph's output, the fresh value a later step will read;
- ``fresh.<site>``: a routed graph's output, every site's fresh value (training, parity checks).

A forecast branch also reads the site's older computed values, ``cache_h1.<site>`` (the one before
the last) and ``cache_h2.<site>``, and the step's combination weights, ``forecast.weights``
(``[num_sites, 3]``: the weight of the last, previous and the one before, per site).

A site with several outputs (joint attention) adds the output index: ``cache.<site>.0``, ...

Example:
    >>> site_value_names(CACHE, "blocks.0.attn", 1), site_value_names(NEW_CACHE, "joint.attn", 2)
    (['cache.blocks.0.attn'], ['new_cache.joint.attn.0', 'new_cache.joint.attn.1'])
    >>> cache_input_for("new_cache.blocks.0.attn")
    'cache.blocks.0.attn'
"""

from __future__ import annotations

__all__ = [
    "CACHE",
    "COMPUTE_DTYPE",
    "FORECAST_WEIGHTS",
    "FRESH",
    "HISTORY",
    "INPUT_NAME",
    "INPUT_NAMES",
    "KINDS",
    "LOWERED_FROM",
    "MASK",
    "NEW_CACHE",
    "OUTPUT_NAMES",
    "PROVENANCE",
    "REFRESH",
    "ROLES",
    "ROUTING",
    "SITES",
    "SITE_OUTPUT",
    "cache_input_for",
    "history_names",
    "site_value_names",
]

# ---------------------------------------------------------------------------------- graph I/O prefixes
CACHE = "cache"
NEW_CACHE = "new_cache"
FRESH = "fresh"
#: The last computed value and the two before it: what a cached entry of forecast order k reads.
HISTORY = (CACHE, "cache_h1", "cache_h2")
FORECAST_WEIGHTS = "forecast.weights"

# ---------------------------------------------------------------------------------- node.meta keys
#: ``{"pass", "site", "branch"}`` on every node a pass creates.
PROVENANCE = "harmonica"
#: On placeholders: the input's public name (``x``, ``cache.blocks.0.attn``).
INPUT_NAME = "harmonica_input"
#: On site output nodes: ``(site name, output index)``.
SITE_OUTPUT = "harmonica_site"
#: On LowerPrecision's weight reads: the fp32 weight (its ``get_attr`` target) the copy was made from.
LOWERED_FROM = "harmonica_lowered_from"

# ---------------------------------------------------------------------------------- gm.meta keys
#: Public names of the graph's inputs, in placeholder order.
INPUT_NAMES = "harmonica_input_names"
#: Public names of the graph's outputs, in order.
OUTPUT_NAMES = "harmonica_output_names"
#: A specialized graph's step mask (True = compute), its read-branch kinds, and the sites whose value it hands on.
MASK = "harmonica_mask"
KINDS = "harmonica_kinds"
REFRESH = "harmonica_refresh"
#: ``"soft"`` or ``"hard"`` on routed graphs.
ROUTING = "harmonica_routing"
#: The CacheSites FindCacheSites found.
SITES = "harmonica_sites"
#: A lowered graph's compute dtype (``"bfloat16"``/``"float16"``); absent on fp32 graphs.
COMPUTE_DTYPE = "harmonica_compute_dtype"

# ---------------------------------------------------------------------------------- manifest roles
#: Roles of exported graph inputs and outputs.
ROLES = ("latent", "timestep", "condition", "cache_in", "cache_out", "forecast_weights", "output")


def site_value_names(prefix: str, site: str, num_outputs: int) -> list[str]:
    """``prefix.site`` for a one-output site, ``prefix.site.i`` for each output otherwise."""
    if num_outputs == 1:
        return [f"{prefix}.{site}"]
    return [f"{prefix}.{site}.{i}" for i in range(num_outputs)]


def history_names(site: str, num_outputs: int, order: int) -> list[str]:
    """The inputs a cached entry of forecast ``order`` reads: for each output, the last computed
    value and ``order`` older ones (``cache.*``, ``cache_h1.*``, ``cache_h2.*``), output by output."""
    names = [site_value_names(prefix, site, num_outputs) for prefix in HISTORY[: order + 1]]
    return [n for per_output in zip(*names, strict=True) for n in per_output]


def cache_input_for(new_cache_name: str) -> str:
    """The ``cache.*`` input a later step reads for a ``new_cache.*`` output."""
    head = NEW_CACHE + "."
    if not new_cache_name.startswith(head):
        raise ValueError(f"{new_cache_name!r} is not a {NEW_CACHE}.* name")
    return f"{CACHE}.{new_cache_name[len(head) :]}"
