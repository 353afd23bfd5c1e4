"""The refinement search on the true final error: never worse than its start, CUR exact, the
cache-age cap, deterministic resume, TaylorSeer, and the CLI's refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import tiny_spec

from harmonica_compile import CacheSchedule
from harmonica_compile.cli import main
from harmonica_compile.errors import ConfigError
from harmonica_compile.schedule import max_cache_age
from harmonica_compile.training import train_schedule
from harmonica_compile.training.search import CalibrationSet, refine_schedule
from harmonica_compile.training.trainer import limit_cache_age

STEPS = 6
MODEL = ["--model", "helpers:tiny_spec", "--steps", str(STEPS)]


@pytest.fixture(scope="module")
def spec():
    return tiny_spec()


@pytest.fixture(scope="module")
def calib(spec):
    return CalibrationSet(spec, STEPS, num=4, seed=1_000_000_009)


def _starts(spec):
    sites = spec.cacheable().site_names
    ts = [float(t) for t in spec.sampler(STEPS).timesteps]
    return {
        "fora": CacheSchedule.fora(sites, STEPS, 2, ts),
        "taylorseer2": CacheSchedule.taylorseer(sites, STEPS, 2, 2, ts),
    }


def test_search_is_never_worse_than_its_start_and_keeps_the_cur(spec, calib):
    starts = _starts(spec)
    result = refine_schedule(
        spec, starts, target_cur=0.5, forecast="auto", evaluations=12, calibration=calib, progress=False
    )
    assert result.error <= result.start_error <= min(result.starts.values()) + 0.0
    assert result.start_error == min(result.starts.values())
    cached = sum(row.count(False) for row in result.schedule.mask)
    assert cached == round(0.5 * STEPS * len(starts["fora"].sites)) and result.schedule.cur == 0.5
    again, _ = calib.error(result.schedule)
    assert again == pytest.approx(result.error, rel=0, abs=0)  # the reported error is the schedule's


def test_cache_age_is_capped_everywhere(spec, calib):
    result = refine_schedule(
        spec, _starts(spec), target_cur=0.5, forecast="taylor1", max_age=1, evaluations=10, calibration=calib,
        progress=False,
    )  # fmt: skip
    assert max_cache_age(result.schedule.mask) <= 1
    assert {k for row in result.schedule.branches for k in row} <= {"compute", "reuse", "taylor1"}
    mask = np.ones((8, 3), dtype=bool)
    mask[1:6, 0] = False  # site 0 cached 5 steps in a row
    mask[3, 1] = False
    logits = np.arange(24, dtype=float).reshape(8, 3)
    limited = limit_cache_age(mask, 2, logits)
    assert max_cache_age(limited) <= 2 and (~limited).sum() == (~mask).sum()


def test_a_killed_search_resumes_to_the_same_schedule(spec, calib, tmp_path):
    kwargs = {"target_cur": 0.5, "forecast": "auto", "calibration": calib, "progress": False, "dp_start": False}
    whole = refine_schedule(spec, _starts(spec), evaluations=16, **kwargs)

    class Killed(Exception):
        pass

    def kill_at(done, error):
        if done == 11:
            raise Killed

    ckpt = tmp_path / "search.json"
    with pytest.raises(Killed):
        refine_schedule(
            spec, _starts(spec), evaluations=16, checkpoint=ckpt, checkpoint_every=5, on_progress=kill_at, **kwargs
        )
    assert json.loads(ckpt.read_text())["evaluations"] == 10
    resumed = refine_schedule(
        spec, _starts(spec), evaluations=16, checkpoint=ckpt, checkpoint_every=5, resume=True, **kwargs
    )
    assert resumed.schedule == whole.schedule and resumed.error == whole.error


def test_taylorseer_and_forecast_through_training(spec):
    s = train_schedule(spec, method="taylorseer", num_steps=STEPS, target_cur=0.5, forecast="taylor1", progress=False)
    assert s.schedule.meta["method"] == "taylorseer" and "taylor1" in {k for r in s.schedule.branches for k in r}
    with pytest.raises(ConfigError, match="pass --refine search"):
        train_schedule(spec, method="fora", num_steps=STEPS, target_cur=0.5, forecast="auto", progress=False)
    with pytest.raises(ConfigError, match="caches 2 steps in a row, more than max_cache_age 1"):
        train_schedule(spec, method="fora", num_steps=STEPS, target_cur=0.65, max_cache_age=1, progress=False)


def test_optimize_refine_writes_the_report_and_the_picture(tmp_path):
    out = tmp_path / "run"
    argv = [*MODEL, "--method", "fora", "--refine", "search", "--forecast", "auto", "--target-cur", "0.5"]
    assert main(["optimize", *argv, "--search-evals", "4", "--calibration-num", "4", "--eval-num", "8",
                 "--quiet", "--out", str(out)]) == 0  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert report["calibration"] == {"seed": 1_000_000_009, "num": 4}
    assert report["evaluation"] == {"seed": 1_000_000_007, "num": 8}
    assert (
        report["start"]["name"] in report["search"]["starts"]
        and report["calibration_mse"] <= report["start"]["calibration_mse"]
    )
    assert (out / "schedule.png").is_file() and (out / "search.json").is_file()
    schedule = CacheSchedule.load(out / "schedule.json")
    assert schedule.meta["refine"] == "search" and schedule.cur == 0.5


def test_an_unknown_forecast_is_refused_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["optimize", *MODEL, "--forecast", "taylor3", "--out", str(tmp_path / "run")])
    assert info.value.code == 2 and "invalid choice: 'taylor3'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-cache-age", "0"], "max_cache_age must be an integer >= 1, got 0"),
        (["--max-cache-age", "-2"], "max_cache_age must be an integer >= 1, got -2"),
        (["--forecast", "auto"], "pass --refine search"),
    ],
)
def test_bad_search_options_fail_clearly_and_write_nothing(tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    code = main(["optimize", *MODEL, "--method", "fora", *extra, "--no-eval", "--quiet", "--out", str(out)])
    assert code == 2 and message in capsys.readouterr().err and not out.exists()


def test_a_start_schedule_of_another_model_or_step_count_is_refused(tmp_path, capsys, spec):
    sites = spec.cacheable().site_names
    other_steps = CacheSchedule.fora(sites, STEPS + 2, 2).save(tmp_path / "eight.json")
    other_model = CacheSchedule.fora(sites, STEPS, 2).with_meta(model="tiny-dit-digits").save(tmp_path / "other.json")
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier run")
    base = ["optimize", *MODEL, "--method", "fora", "--refine", "search", "--no-eval", "--quiet", "--overwrite"]
    assert main([*base, "--start", str(other_steps), "--out", str(out)]) == 2
    assert "the start schedule has 8 steps, the search is for 6" in capsys.readouterr().err
    assert main([*base, "--start", str(other_model), "--out", str(out)]) == 2
    assert "made for model 'tiny-dit-digits', not 'tiny-test-dit'" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
