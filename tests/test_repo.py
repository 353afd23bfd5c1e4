"""Repository contracts: the README's two set-up commands, and CI running the same test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)


def test_readme_has_exactly_two_setup_commands():
    commands = _readme_commands()
    assert len(commands) == 2, commands
    assert all("\n" not in c for c in commands)
    assert all("pip install torch==2.13.0" in c for c in commands)
    assert "harmonica-compile" in commands[0]
    assert "pytest" in commands[1] and '".[dev]"' in commands[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == _readme_commands()[1]


def test_no_forbidden_dependencies():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert "torchvision" not in pyproject and "timm" not in pyproject
    assert re.search(r'"torch>=[\d.]+,<[\d.]+"', pyproject)  # a range that the CPU build satisfies


def test_readme_results_are_generated_from_benchmark_files():
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "make_readme.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
