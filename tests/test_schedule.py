"""CacheSchedule: construction, CUR, FORA, JSON round trip, checksums, validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harmonica_compile import CacheSchedule
from harmonica_compile.errors import ArtifactError, HarmonicaError, ScheduleError

SITES = ["blocks.0.attn", "blocks.0.mlp", "blocks.1.attn"]


def test_fora_cur_matches_the_paper_numbers():
    assert CacheSchedule.fora(SITES, 20, 2).cur == 0.5
    assert CacheSchedule.fora(SITES, 20, 3).cur == 0.65
    assert CacheSchedule.all_compute(SITES, 20).cur == 0.0


def test_json_round_trip_is_exact(tmp_path):
    s = CacheSchedule([[1, 1, 1], [0, 1, 0], [1, 0, 0]], SITES, timesteps=[999, 500.5, 0], meta={"method": "x"})
    assert CacheSchedule.from_json(json.loads(json.dumps(s.to_json()))) == s
    path = s.save(tmp_path / "s.json")
    loaded = CacheSchedule.load(path)
    assert loaded == s and loaded.timesteps == (999.0, 500.5, 0.0) and loaded.meta["method"] == "x"
    data = json.loads(path.read_text())
    assert data["mask"] == [[True, True, True], [False, True, False], [True, False, False]]
    assert data["sites"] == SITES and data["format"] == "harmonica-compile/schedule" and data["version"] == 2


def test_minimal_hand_written_json_loads(tmp_path):
    path = tmp_path / "hand.json"
    path.write_text(json.dumps({"sites": SITES, "mask": [[True] * 3, [False] * 3]}))
    assert CacheSchedule.load(path).cur == 0.5


def test_tampered_file_fails_its_checksum(tmp_path):
    path = CacheSchedule.fora(SITES, 4, 2).save(tmp_path / "s.json")
    data = json.loads(path.read_text())
    data["mask"][1][0] = True
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        CacheSchedule.load(path)


@pytest.mark.parametrize(
    ("mask", "sites", "timesteps", "message"),
    [
        ([[True, False, True]], SITES, None, "first step must compute every site.*blocks.0.mlp"),
        ([[True] * 3, [True] * 2], SITES, None, "mask row 1 has 2 entries, expected one per site"),
        ([], SITES, None, "at least one step"),
        ([[True]], [], None, "at least one site"),
        ([[True, True]], ["a", "a"], None, "duplicates"),
        ([[True, 2, True]], SITES, None, r"mask\[0\]\[1\] must be true or false, got 2"),
        ([[True] * 3], SITES, [1, 2], "2 timesteps for 1 steps"),
        ("TTT", SITES, None, "list of rows"),
    ],
    ids=["first-step-caches", "ragged", "no-steps", "no-sites", "dup-sites", "not-bool", "timesteps", "string"],
)
def test_invalid_schedules(mask, sites, timesteps, message):
    with pytest.raises(ScheduleError, match=message):
        CacheSchedule(mask, sites, timesteps)


def test_wrong_files(tmp_path):
    (tmp_path / "empty.json").write_text("")
    (tmp_path / "trunc.json").write_text('{"sites": ["a"], "mask": [[tr')
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "other.json").write_text(json.dumps({"format": "harmonica-compile/manifest", "sites": [], "mask": []}))
    (tmp_path / "v9.json").write_text(json.dumps({"version": 9, "sites": ["a"], "mask": [[True]]}))
    (tmp_path / "nomask.json").write_text(json.dumps({"sites": ["a"]}))
    cases = {
        "missing.json": "does not exist",
        "empty.json": "is empty",
        "trunc.json": "not valid JSON",
        "list.json": "expected a JSON object",
        "other.json": "this is not a schedule",
        "v9.json": "version 9",
        "nomask.json": "'mask' is missing",
    }
    for name, message in cases.items():
        with pytest.raises(HarmonicaError, match=message):
            CacheSchedule.load(tmp_path / name)


def test_fora_and_all_compute_validate_their_arguments():
    with pytest.raises(ScheduleError, match="interval must be an integer >= 1, got 0"):
        CacheSchedule.fora(SITES, 10, 0)
    with pytest.raises(ScheduleError, match="num_steps must be an integer >= 1"):
        CacheSchedule.all_compute(SITES, 0)


def test_refreshed_sites_and_groups():
    s = CacheSchedule([[1, 1, 1], [0, 1, 0], [1, 0, 0], [1, 1, 1]], SITES)
    assert s.refreshed_sites(0) == {"blocks.0.attn", "blocks.1.attn"}  # read at step 1
    assert s.refreshed_sites(1) == {"blocks.0.mlp"}
    assert s.refreshed_sites(2) == set()  # the next step recomputes blocks.0.attn
    assert s.refreshed_sites(3) == set()
    assert s.step_groups() == [0, 1, 2, 0]
    np.testing.assert_array_equal(s.cache_age(), [[0, 0, 0], [1, 0, 1], [0, 1, 2], [0, 0, 0]])


def test_step_of_timestep():
    s = CacheSchedule.fora(SITES, 3, 2, timesteps=[999, 500, 0])
    assert s.step_of_timestep(500) == 1
    with pytest.raises(ScheduleError, match="timestep 42 is not one of this schedule's 3 timesteps"):
        s.step_of_timestep(42)


def test_check_sites_names_the_difference():
    s = CacheSchedule.all_compute(SITES, 2)
    s.check_sites(SITES)
    with pytest.raises(ScheduleError, match=r"not in the model: \['blocks.1.attn'\].*another model"):
        s.check_sites(SITES[:2])
    with pytest.raises(ScheduleError, match="another order"):
        s.check_sites(list(reversed(SITES)))
