"""`harmonica-compile optimize` end to end on a tiny model, and its refusals."""

from __future__ import annotations

import json

import pytest
from helpers import tiny_spec

import harmonica_compile as hc
from harmonica_compile.cli import main
from harmonica_compile.errors import ConfigError

BASE = [
    "optimize",
    "--model",
    "helpers:tiny_spec",
    "--steps",
    "4",
    "--iterations",
    "2",
    "--batch-size",
    "2",
    "--lambda-every",
    "1",
    "--eval-num",
    "8",
    "--quiet",
]


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_optimize_writes_the_four_files(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = _run(capsys, *BASE, "--target-cur", "0.5", "--out", str(out))
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.safetensors",
        "report.json",
        "routers.safetensors",
        "schedule.json",
        "schedule.png",
    ]
    report = json.loads((out / "report.json").read_text())
    for key in [
        "method",
        "num_steps",
        "num_sites",
        "cur",
        "flops_full",
        "flops_cached",
        "theoretical_speedup",
        "final_mse",
        "psnr_db",
        "train_seconds",
    ]:
        assert key in report, key
    assert report["cur"] == 0.5 and report["theoretical_speedup"] > 1
    assert json.loads(stdout[stdout.index("{") : stdout.rindex("}") + 1])["method"] == "harmonica"
    schedule = hc.CacheSchedule.load(out / "schedule.json")
    assert schedule.meta["model"] == "tiny-test-dit"


def test_fora_picks_the_interval_closest_to_the_target(tmp_path, capsys):
    code, _, _ = _run(capsys, *BASE, "--method", "fora", "--target-cur", "0.7", "--out", str(tmp_path / "f"))
    assert code == 0
    s = hc.CacheSchedule.load(tmp_path / "f" / "schedule.json")
    assert s.meta["interval"] == 4 and s.cur == 0.75  # intervals 2, 3, 4 give CUR 0.5, 0.5, 0.75 at 4 steps


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target-cur", "1.5"], "target_cur must be in (0, 1), got 1.5"),
        (["--target-cur", "0"], "target_cur must be in (0, 1), got 0.0"),
        (["--target-cur", "0.9"], "unreachable with 4 steps"),
    ],
)
def test_bad_targets_exit_2_with_one_line(tmp_path, capsys, args, message):
    code, _, err = _run(capsys, *BASE, *args, "--out", str(tmp_path / "x"))
    assert code == 2
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_unknown_method(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main([*BASE, "--method", "magic", "--out", str(tmp_path / "x")])
    assert info.value.code == 2
    assert "invalid choice: 'magic'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="method must be one of harmonica, l2c, fora"):
        hc.optimize(tiny_spec().model, tiny_spec().example_inputs(), method="magic", target_cur=0.5)


def test_cfg_on_a_model_without_null_class(tmp_path, capsys):
    code, _, err = _run(
        capsys, *BASE[:2], "helpers:tiny_spec_no_null", *BASE[3:], "--cfg-scale", "3", "--out", str(tmp_path / "x")
    )
    assert code == 2 and "needs a null class" in err


def test_resume_with_a_corrupt_checkpoint_keeps_the_existing_outputs(tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(capsys, *BASE, "--out", str(out))[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "checkpoint.safetensors"}
    (out / "checkpoint.safetensors").write_bytes(b"garbage")
    code, _, err = _run(capsys, *BASE, "--resume", "--out", str(out))
    assert code == 2 and "checkpoint" in err and "damaged" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != "checkpoint.safetensors"} == before
    # a new run without --resume or --overwrite refuses to replace the schedule
    code, _, err = _run(capsys, *BASE, "--out", str(out))
    assert code == 2 and "--overwrite" in err


def test_resume_with_other_settings(tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(capsys, *BASE, "--no-eval", "--out", str(out))[0] == 0
    code, _, err = _run(capsys, *BASE, "--no-eval", "--resume", "--lr", "0.3", "--out", str(out))
    assert code == 2 and "other settings (['lr'])" in err


def test_optimize_api_trains_when_no_schedule_is_given():
    spec = tiny_spec()
    cached = hc.optimize(
        spec.model,
        spec.example_inputs(),
        method="harmonica",
        target_cur=0.5,
        num_steps=4,
        iterations=2,
        batch_size=2,
        progress=False,
    )
    assert isinstance(cached, hc.CachedModel) and cached.schedule.cur == 0.5
