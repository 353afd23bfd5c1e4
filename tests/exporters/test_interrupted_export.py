"""Killing an export (SIGKILL, at a random moment) leaves the previous export folder intact."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import fora_schedule_dir

from harmonica_compile.cli import main
from harmonica_compile.exporters.manifest import load_manifest

TESTS = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_sigkill_during_export_keeps_the_previous_folder(tmp_path):
    fora_schedule_dir(tmp_path / "sched")
    eng = tmp_path / "eng"
    assert main(["export", str(tmp_path / "sched"), "--model", "helpers:tiny_spec", "--out", str(eng)]) == 0
    before = {p.name: p.read_bytes() for p in eng.iterdir()}
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")])
    )
    cmd = [
        sys.executable,
        "-m",
        "harmonica_compile",
        "export",
        str(tmp_path / "sched"),
        "--model",
        "helpers:tiny_spec",
        "--out",
        str(eng),
    ]
    for delay in (random.uniform(2.0, 6.0), 0.5):
        proc = subprocess.Popen(cmd, env=env)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        load_manifest(eng)  # still complete, every checksum verified
        assert {p.name: p.read_bytes() for p in eng.iterdir()} == before
    # the next export removes what the killed ones left behind and replaces the folder as a whole
    assert main(["export", str(tmp_path / "sched"), "--model", "helpers:tiny_spec", "--out", str(eng)]) == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".eng.")] == []
    load_manifest(eng)
