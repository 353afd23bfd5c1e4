"""The built-in site rules: our reference DiT, diffusers' ``BasicTransformerBlock`` (DiT, PixArt),
and what the generic rule recognises as attention and feed-forward sub-layers by class and name.

Example:
    >>> sorted(BUILTIN_RULES)
    ['diffusers-basic-transformer-block', 'reference-dit']
"""

from __future__ import annotations

import re

from .sites import SiteRule

__all__ = ["ATTENTION_CLASS", "BUILTIN_RULES", "CROSS_NAMES", "MLP_CLASS", "MLP_NAMES"]

_REFERENCE_DIT = (
    SiteRule(r"(?:.*\.)?blocks\.\d+\.attn", "attention", block_class="DiTBlock"),
    SiteRule(r"(?:.*\.)?blocks\.\d+\.mlp", "mlp", block_class="DiTBlock"),
)
_BASIC_TRANSFORMER_BLOCK = (
    SiteRule(r"(?:.*\.)?transformer_blocks\.\d+\.attn1", "attention", block_class="BasicTransformerBlock"),
    SiteRule(r"(?:.*\.)?transformer_blocks\.\d+\.attn2", "cross_attention", block_class="BasicTransformerBlock"),
    SiteRule(r"(?:.*\.)?transformer_blocks\.\d+\.ff", "mlp", block_class="BasicTransformerBlock"),
)
#: Rule sets tried in order before the generic rule; the first that matches anything is used.
BUILTIN_RULES: dict[str, tuple[SiteRule, ...]] = {
    "reference-dit": _REFERENCE_DIT,
    "diffusers-basic-transformer-block": _BASIC_TRANSFORMER_BLOCK,
}

ATTENTION_CLASS = re.compile(r"attention|attn", re.IGNORECASE)
MLP_CLASS = re.compile(r"(FeedForward|Mlp|MLP|FFN|FeedForwardNetwork)", re.IGNORECASE)
MLP_NAMES = {"ff", "mlp", "ff_context", "feed_forward", "ffn", "ff_context_mlp"}
CROSS_NAMES = {"attn2", "cross_attn", "cross_attention", "encoder_attn"}
