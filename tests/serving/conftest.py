"""An exported 4-step FORA schedule of the tiny test DiT, shared by the serving tests."""

from __future__ import annotations

import pytest
from helpers import fora_schedule_dir

from harmonica_compile.cli import main


@pytest.fixture(scope="session")
def served_engine(tmp_path_factory):
    """``export --max-batch 8``: 4 images per loop with guidance (the tiny spec guides at 2.0)."""
    root = tmp_path_factory.mktemp("serving")
    fora_schedule_dir(root / "sched")
    eng = root / "eng"
    argv = ["export", str(root / "sched"), "--model", "helpers:tiny_spec", "--out", str(eng), "--max-batch", "8"]
    assert main(argv) == 0
    return eng
