"""The CLI on the default model: sample, evaluate, show."""

from __future__ import annotations

import json

import numpy as np
import pytest

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


def test_optimize_flags_default_to_the_train_config():
    """The training flags are TrainConfig fields: no flag means the field's own default."""
    from harmonica_compile.cli import build_parser
    from harmonica_compile.cli.optimize import train_config
    from harmonica_compile.training import TrainConfig

    args = build_parser().parse_args(["optimize", "--out", "x"])
    assert train_config(args) == TrainConfig()
    args = build_parser().parse_args(["optimize", "--out", "x", "--iterations", "7", "--beta", "0.1", "--soft"])
    assert train_config(args) == TrainConfig(iterations=7, beta=0.1, target_cur=None, ste=False)
    help_text = build_parser()._subparsers._group_actions[0].choices["optimize"].format_help()
    assert f"(default {TrainConfig().iterations})" in help_text


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    """The main job, shortened (5 iterations, 16 evaluation samples): every stage and its files."""
    argv = ["demo", "--out", str(tmp_path), "--iterations", "5", "--num", "16", "--bench-images", "2"]
    assert main([*argv, "--repeat", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "[4/4]" in out and "measured speedup, ONNX Runtime" in out
    for name in [
        "summary.json",
        "samples.png",
        "schedule/schedule.json",
        "schedule/schedule.png",
        "onnx/manifest.json",
    ]:
        assert (tmp_path / name).is_file(), name
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["cur"] == 0.5 and summary["graphs"] >= 2
