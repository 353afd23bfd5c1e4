"""The reference DiT: public parameter names and sizes, embeddings, CFG null class, learn_sigma."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from harmonica_compile.models import DiT_models
from harmonica_compile.models.dit import TimestepEmbedder, get_2d_sincos_pos_embed


def test_all_public_configurations_exist():
    assert sorted(DiT_models) == sorted(f"DiT-{s}/{p}" for s in ("XL", "L", "B", "S") for p in (2, 4, 8))


def test_dit_xl_2_has_the_public_checkpoint_layout():
    with torch.device("meta"):
        model = DiT_models["DiT-XL/2"](input_size=32)
    state = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == 675_129_632  # DiT-XL/2's published 675M
    head = [
        "pos_embed",
        "x_embedder.proj.weight",
        "x_embedder.proj.bias",
        "t_embedder.mlp.0.weight",
        "t_embedder.mlp.0.bias",
        "t_embedder.mlp.2.weight",
        "t_embedder.mlp.2.bias",
        "y_embedder.embedding_table.weight",
    ]
    block = [
        "attn.qkv.weight",
        "attn.qkv.bias",
        "attn.proj.weight",
        "attn.proj.bias",
        "mlp.fc1.weight",
        "mlp.fc1.bias",
        "mlp.fc2.weight",
        "mlp.fc2.bias",
        "adaLN_modulation.1.weight",
        "adaLN_modulation.1.bias",
    ]
    tail = [
        "final_layer.linear.weight",
        "final_layer.linear.bias",
        "final_layer.adaLN_modulation.1.weight",
        "final_layer.adaLN_modulation.1.bias",
    ]
    assert list(state) == head + [f"blocks.{i}.{k}" for i in range(28) for k in block] + tail
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes["pos_embed"] == (1, 256, 1152)
    assert shapes["x_embedder.proj.weight"] == (1152, 4, 2, 2)
    assert shapes["y_embedder.embedding_table.weight"] == (1001, 1152)  # 1000 classes + null
    assert shapes["blocks.0.attn.qkv.weight"] == (3456, 1152)
    assert shapes["blocks.0.mlp.fc1.weight"] == (4608, 1152)
    assert shapes["blocks.0.adaLN_modulation.1.weight"] == (6912, 1152)
    assert shapes["final_layer.linear.weight"] == (32, 1152)  # 2*2 patch x 8 channels (learn_sigma)


@pytest.mark.parametrize("learn_sigma", [True, False])
def test_output_shape_and_null_class(learn_sigma):
    model = DiT_models["DiT-S/8"](input_size=16, num_classes=10, learn_sigma=learn_sigma).eval()
    out = model(torch.randn(3, 4, 16, 16), torch.tensor([1, 500, 999]), torch.tensor([0, 9, 10]))
    assert out.shape == (3, 8 if learn_sigma else 4, 16, 16)
    assert model.has_null_class
    no_cfg = DiT_models["DiT-S/8"](input_size=16, num_classes=10, class_dropout_prob=0.0)
    assert not no_cfg.has_null_class


def test_adaln_zero_init_makes_the_output_zero():
    model = DiT_models["DiT-S/8"](input_size=16, num_classes=10).eval()
    out = model(torch.randn(2, 4, 16, 16), torch.tensor([1, 2]), torch.tensor([0, 1]))
    assert torch.count_nonzero(out) == 0


def test_sincos_pos_embed_values():
    emb = get_2d_sincos_pos_embed(8, 2)
    assert emb.shape == (4, 8)
    # token (row 0, col 1): the first half encodes the column (w), the second the row (h)
    omega = 1.0 / 10000 ** (np.arange(2) / 2.0)
    np.testing.assert_allclose(emb[1, :4], np.concatenate([np.sin(omega), np.cos(omega)]), atol=1e-7)
    np.testing.assert_allclose(emb[1, 4:], [0, 0, 1, 1], atol=1e-7)


def test_timestep_embedding_values():
    emb = TimestepEmbedder.timestep_embedding(torch.tensor([0.0, 10.0]), 4)
    freqs = torch.exp(-math.log(10000) * torch.arange(2) / 2)
    torch.testing.assert_close(emb[1], torch.cat([torch.cos(10 * freqs), torch.sin(10 * freqs)]))
    torch.testing.assert_close(emb[0], torch.tensor([1.0, 1.0, 0.0, 0.0]))


def test_label_dropout_only_in_training():
    model = DiT_models["DiT-S/8"](input_size=16, num_classes=10, class_dropout_prob=1.0)
    labels = torch.arange(10)
    torch.testing.assert_close(model.y_embedder.eval()(labels), model.y_embedder.embedding_table(labels))
    dropped = model.y_embedder.train()(labels)
    torch.testing.assert_close(dropped, model.y_embedder.embedding_table(torch.full((10,), 10)))
