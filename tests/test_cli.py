"""The CLI on the default model: sample, evaluate, show."""

from __future__ import annotations

import json

import numpy as np

from harmonica_compile.cli import main


def test_sample_writes_npz_and_grid_then_evaluate_reads_them(tmp_path, capsys):
    out, grid = tmp_path / "s.npz", tmp_path / "s.png"
    assert main(["sample", "--num", "10", "--steps", "8", "--out", str(out), "--grid", str(grid), "--quiet"]) == 0
    data = np.load(out)
    assert data["images"].shape == (10, 1, 16, 16) and data["images"].dtype == np.float32
    assert data["images"].min() >= -1 and data["images"].max() <= 1
    assert data["labels"].tolist() == list(range(10))
    assert json.loads(str(data["meta"]))["cfg_scale"] == 1.5
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert main(["evaluate", str(out), "--reference", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["mse"] == 0 and 0 <= result["accuracy"] <= 1 and "frechet" in result


def test_show_prints_sites_and_the_pipeline(capsys):
    assert main(["show", "--passes"]) == 0
    assert "specialize" in capsys.readouterr().out
    assert main(["show"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in info["sites"]][:2] == ["blocks.0.attn", "blocks.0.mlp"] and len(info["sites"]) == 12


def test_show_dumps_the_graph_around_a_pass(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HARMONICA_DUMP_DIR", str(tmp_path))
    assert main(["show", "--model", "helpers:tiny_spec", "--dump-after", "remove_assertions"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["01-after-remove_assertions.txt"]


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "optimize" in capsys.readouterr().out
