"""The thread default: the available cores less the busy ones, stated, overridable."""

from __future__ import annotations

import pytest

from harmonica_compile import threads as th


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """A fake machine: ``machine(cores, load, runnable)``, with an empty cgroup folder."""
    monkeypatch.setattr(th, "CGROUP", tmp_path / "cgroup")
    monkeypatch.setattr(th, "LOADAVG", tmp_path / "loadavg")
    (tmp_path / "cgroup" / "cpu").mkdir(parents=True)

    def set_(cores=2, load=0.0, runnable=1):
        monkeypatch.setattr(th.os, "sched_getaffinity", lambda pid: set(range(cores)))
        monkeypatch.setattr(th.os, "getloadavg", lambda: (load, load, load))
        th.LOADAVG.write_text(f"{load:.2f} {load:.2f} {load:.2f} {runnable}/100 123\n")

    return set_


def test_idle_machine_uses_every_core(machine):
    machine(cores=2, load=0.1, runnable=1)
    n, why = th.choose_threads()
    assert n == 2 and "2 cores available, idle" in why


def test_one_other_cpu_bound_job_leaves_one_core(machine):
    """Two threads on two cores that another job keeps busy oversubscribe them (34.2 s against 4.7 s
    an iteration, measured): the default must step back to one."""
    machine(cores=2, load=1.1, runnable=2)
    n, why = th.choose_threads()
    assert n == 1 and "1 busy" in why and "--threads N overrides" in why


def test_the_load_average_lags_after_a_job_ends(machine):
    machine(cores=2, load=1.6, runnable=1)  # the average still remembers a job that is gone
    assert th.choose_threads()[0] == 2


def test_a_cgroup_quota_caps_the_cores(machine):
    machine(cores=8, load=0.0, runnable=1)
    (th.CGROUP / "cpu.max").write_text("150000 100000\n")
    assert th.cpu_quota() == 1.5 and th.choose_threads()[0] == 1
    (th.CGROUP / "cpu.max").write_text("max 100000\n")
    assert th.cpu_quota() is None and th.choose_threads()[0] == 8
    (th.CGROUP / "cpu.max").unlink()
    (th.CGROUP / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (th.CGROUP / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert th.cpu_quota() == 2.0 and th.choose_threads()[0] == 2


def test_the_user_overrides_and_is_told(machine):
    machine(cores=2, load=1.5, runnable=3)
    assert th.choose_threads(2) == (2, "2 threads (--threads)")


def test_commands_state_the_choice_first(capsys, tmp_path):
    from harmonica_compile.cli import main

    out = str(tmp_path / "s.npz")
    assert main(["sample", "--model", "helpers:tiny_spec", "--num", "2", "--quiet", "--out", out]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("using ") and "thread" in first
