"""FindCacheSites: built-in rules, the generic rule, user rules, and the errors."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    diffusers_dit_inputs,
    pixart_inputs,
    randomize_,
    ref_inputs,
    tiny_diffusers_dit,
    tiny_pixart,
    tiny_reference_dit,
)
from torch import nn

import harmonica_compile as hc
from harmonica_compile.capture import capture
from harmonica_compile.errors import SiteError
from harmonica_compile.passes import FindCacheSites, SiteRule, find_sites


def test_reference_dit_sites():
    cm = hc.prepare(tiny_reference_dit(depth=3), ref_inputs())
    assert cm.site_names == tuple(f"blocks.{i}.{k}" for i in range(3) for k in ("attn", "mlp"))
    assert [s.kind for s in cm.sites] == ["attention", "mlp"] * 3
    assert all(s.gated for s in cm.sites)
    assert all(s.num_outputs == 1 and s.shapes[0] == (-1, 4, 384) for s in cm.sites)


def test_diffusers_dit_sites():
    names = hc.find_cache_sites(tiny_diffusers_dit(), diffusers_dit_inputs())
    assert names == [
        "transformer_blocks.0.attn1",
        "transformer_blocks.0.ff",
        "transformer_blocks.1.attn1",
        "transformer_blocks.1.ff",
    ]


def test_pixart_sites_include_cross_attention():
    cm = hc.prepare(tiny_pixart(), pixart_inputs())
    assert cm.site_names == tuple(f"transformer_blocks.{i}.{k}" for i in range(2) for k in ("attn1", "attn2", "ff"))
    assert [s.kind for s in cm.sites] == ["attention", "cross_attention", "mlp"] * 2
    # PixArt's cross-attention joins the residual stream without a gate
    assert [s.gated for s in cm.sites] == [True, False, True] * 2


def test_site_order_is_stable_across_captures():
    a = hc.find_cache_sites(tiny_pixart(seed=1), pixart_inputs())
    b = hc.find_cache_sites(tiny_pixart(seed=2), pixart_inputs())
    assert a == b


# ---------------------------------------------------------------- generic rule
class JointAttention(nn.Module):
    """Attention over image and text tokens that returns both streams (as in SD3 / FLUX)."""

    def __init__(self, dim):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out_img = nn.Linear(dim, dim)
        self.out_txt = nn.Linear(dim, dim)

    def forward(self, img, txt):
        n = img.shape[1]
        q, k, v = self.qkv(torch.cat([img, txt], 1)).chunk(3, -1)
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.out_img(o[:, :n]), self.out_txt(o[:, n:])


class FeedForward(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.up, self.down = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x):
        return self.down(torch.nn.functional.gelu(self.up(x)))


class JointBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.mod = nn.Linear(dim, 3 * dim)
        self.attn = JointAttention(dim)
        self.ff = FeedForward(dim)
        self.ff_context = FeedForward(dim)

    def forward(self, img, txt, c):
        g1, g2, g3 = self.mod(c).unsqueeze(1).chunk(3, -1)
        a_img, a_txt = self.attn(img, txt)
        img = img + g1 * a_img
        txt = txt + g1 * a_txt
        img = img + g2 * self.ff(img)
        txt = txt + g3 * self.ff_context(txt)
        return img, txt


class SingleBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, x):
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return x + self.mlp(x)


class TwoListTransformer(nn.Module):
    """Joint blocks, then single blocks: two block lists, like FLUX."""

    def __init__(self, dim=8):
        super().__init__()
        self.cond = nn.Linear(1, dim)
        self.joint_blocks = nn.ModuleList([JointBlock(dim) for _ in range(2)])
        self.single_blocks = nn.ModuleList([SingleBlock(dim) for _ in range(2)])
        self.out = nn.Linear(dim, dim)

    def forward(self, img, txt, t):
        c = self.cond(t[:, None].float())
        for b in self.joint_blocks:
            img, txt = b(img, txt, c)
        x = torch.cat([img, txt], 1)
        for b in self.single_blocks:
            x = b(x)
        return self.out(x)


def _two_list_inputs(batch=2):
    return (torch.randn(batch, 4, 8), torch.randn(batch, 3, 8), torch.full((batch,), 3))


def test_generic_rule_finds_joint_attention_and_several_block_lists():
    cm = hc.prepare(randomize_(TwoListTransformer()).eval(), _two_list_inputs())
    assert cm.site_names == (
        "joint_blocks.0.attn",
        "joint_blocks.0.ff",
        "joint_blocks.0.ff_context",
        "joint_blocks.1.attn",
        "joint_blocks.1.ff",
        "joint_blocks.1.ff_context",
        "single_blocks.0.attn",
        "single_blocks.0.mlp",
        "single_blocks.1.attn",
        "single_blocks.1.mlp",
    )
    joint = cm.sites[0]
    assert joint.num_outputs == 2 and joint.cache_names() == [
        "cache.joint_blocks.0.attn.0",
        "cache.joint_blocks.0.attn.1",
    ]
    assert joint.shapes == ((-1, 4, 8), (-1, 3, 8))


def test_user_rules_replace_the_builtins():
    model = tiny_reference_dit(depth=2)
    cm = hc.prepare(model, ref_inputs(), site_rules=[SiteRule(r"blocks\.\d+\.mlp", "mlp")])
    assert cm.site_names == ("blocks.0.mlp", "blocks.1.mlp")


def test_user_rule_that_matches_nothing_lists_module_paths():
    with pytest.raises(
        SiteError,
        match=r"none of the site rules .* matches .*look like: blocks\.0, blocks\.0\.adaLN_modulation, "
        r"blocks\.0\.norm1, blocks\.0\.attn",
    ):
        hc.prepare(tiny_reference_dit(), ref_inputs(), site_rules=[SiteRule(r"layers\.\d+")])


def test_bad_rule_is_rejected_early():
    with pytest.raises(SiteError, match="not a valid regular expression"):
        SiteRule("blocks.(")
    with pytest.raises(SiteError, match="kind must be one of"):
        SiteRule("blocks", kind="conv")


class ConvBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.norm = nn.GroupNorm(1, 4)

    def forward(self, x):
        return x + self.conv(self.norm(x))


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([ConvBlock() for _ in range(3)])

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


def test_model_without_sites_says_what_was_examined_and_how_to_describe_it():
    with pytest.raises(SiteError) as info:
        hc.prepare(ConvNet(), (torch.randn(2, 4, 8, 8),))
    msg = str(info.value)
    assert "no cache sites found" in msg
    assert "'blocks' (3 x ConvBlock: norm GroupNorm, conv Conv2d)" in msg
    assert "site_rules=" in msg


class SharedMlpNet(nn.Module):
    """One MLP module called by two blocks: not cacheable as one site."""

    def __init__(self):
        super().__init__()
        self.mlp = FeedForward(8)
        self.blocks = nn.ModuleList([nn.Identity(), nn.Identity()])

    def forward(self, x):
        x = x + self.mlp(x)
        return x + self.mlp(x)


def test_site_called_twice_is_an_error():
    with pytest.raises(SiteError, match="called 2 times"):
        hc.prepare(SharedMlpNet(), (torch.randn(2, 3, 8),), site_rules=[SiteRule("mlp", "mlp")])


def test_find_cache_sites_pass_tags_outputs_and_changes_nothing():
    cap = capture(tiny_reference_dit(), ref_inputs())
    before = str(cap.graph_module.graph)
    finder = FindCacheSites()
    result = finder(cap.graph_module)
    assert result.modified is False
    assert str(result.graph_module.graph) == before
    tagged = {n.meta["harmonica_site"] for n in cap.graph_module.graph.nodes if "harmonica_site" in n.meta}
    assert tagged == {(s.name, 0) for s in finder.sites}
    assert [s.name for s in find_sites(cap.graph_module)] == [s.name for s in finder.sites]
