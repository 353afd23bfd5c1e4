"""Checkpoint loading on files the tests write: public layout, training checkpoints, refusals."""

from __future__ import annotations

import argparse
import pickle

import pytest
import torch
from helpers import randomize_

from harmonica_compile.errors import ArtifactError
from harmonica_compile.io import save_safetensors
from harmonica_compile.models import DiT_models, load_dit_checkpoint


def _model():
    return randomize_(DiT_models["DiT-S/8"](input_size=16, num_classes=10)).eval()


def _same(a, b):
    x, t, y = torch.randn(2, 4, 16, 16), torch.tensor([3, 800]), torch.tensor([1, 10])
    return torch.equal(a(x, t, y), b(x, t, y))


def test_public_style_state_dict_loads_strict(tmp_path):
    model = _model()
    path = tmp_path / "DiT-S-8-128x128.pt"
    torch.save(model.state_dict(), path)
    loaded = load_dit_checkpoint(path)
    assert _same(model, loaded)
    assert loaded.blocks[0].attn.num_heads == 6 and loaded.learn_sigma and loaded.num_classes == 10


def test_training_checkpoint_with_args_namespace_uses_ema(tmp_path):
    model, other = _model(), randomize_(_model(), seed=5)
    ckpt = {"model": other.state_dict(), "ema": model.state_dict(), "opt": {}, "args": argparse.Namespace(lr=1e-4)}
    path = tmp_path / "0400000.pt"
    torch.save(ckpt, path)
    assert _same(model, load_dit_checkpoint(path))


def test_ddp_prefixes_are_stripped(tmp_path):
    model = _model()
    path = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)
    assert _same(model, load_dit_checkpoint(path))


def test_safetensors_with_config_metadata(tmp_path):
    import json

    model = randomize_(DiT_models["DiT-S/8"](input_size=16, num_classes=10, learn_sigma=False))
    config = {
        "input_size": 16,
        "patch_size": 8,
        "in_channels": 4,
        "hidden_size": 384,
        "depth": 12,
        "num_heads": 6,
        "num_classes": 10,
        "learn_sigma": False,
    }
    path = save_safetensors(tmp_path / "m.safetensors", model.state_dict(), {"config": json.dumps(config)})
    assert _same(model.eval(), load_dit_checkpoint(path))


class _Evil:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"pos_embed": _Evil()}, f)
    with pytest.raises(ArtifactError, match="cannot be loaded as weights only"):
        load_dit_checkpoint(path)


def test_truncated_and_empty_files(tmp_path):
    path = tmp_path / "m.pt"
    torch.save(_model().state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="m.pt cannot be loaded"):
        load_dit_checkpoint(path)
    (tmp_path / "e.pt").write_bytes(b"")
    with pytest.raises(ArtifactError, match="is empty"):
        load_dit_checkpoint(tmp_path / "e.pt")
    with pytest.raises(ArtifactError, match="does not exist"):
        load_dit_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "t.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ArtifactError, match="not a readable safetensors file"):
        load_dit_checkpoint(tmp_path / "t.safetensors")


def test_not_a_dit_and_mismatched_weights(tmp_path):
    path = tmp_path / "lin.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(ArtifactError, match="not a DiT checkpoint: key 'pos_embed' is missing"):
        load_dit_checkpoint(path)
    state = _model().state_dict()
    del state["blocks.3.mlp.fc1.bias"]
    torch.save(state, path)
    with pytest.raises(ArtifactError, match=r"missing keys: \['blocks.3.mlp.fc1.bias'\]"):
        load_dit_checkpoint(path)


def test_unknown_width_needs_num_heads(tmp_path):
    from harmonica_compile.models.dit import DiT

    model = randomize_(DiT(input_size=8, patch_size=2, hidden_size=64, depth=2, num_heads=4, num_classes=5)).eval()
    path = tmp_path / "w64.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(ArtifactError, match="hidden size 64 is not one of the public DiT sizes.*num_heads"):
        load_dit_checkpoint(path)
    loaded = load_dit_checkpoint(path, num_heads=4)
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 5])
    assert torch.equal(model(x, t, y), loaded(x, t, y))
