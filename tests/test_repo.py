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
    assert '".[cpu]"' in commands[0]
    assert "pytest" in commands[1] and '".[cpu,dev,serve]"' in commands[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == _readme_commands()[1]


def test_no_forbidden_dependencies():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert "torchvision" not in pyproject and "timm" not in pyproject
    assert re.search(r'"torch>=[\d.]+,<[\d.]+"', pyproject)  # a range that the CPU build satisfies


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~ \[;]", r, maxsplit=1)[0].strip().lower() for r in requirements}


def test_onnxruntime_flavours_never_install_over_each_other():
    """onnxruntime and onnxruntime-gpu ship the same module: the base install has neither, the
    `cpu` and `gpu` extras one each, and no other extra brings either, so `.[gpu]` (and
    `.[gpu,dev]`, `.[gpu,tensorrt]`) gives working GPU providers."""
    project = _pyproject()["project"]
    flavours = {"onnxruntime", "onnxruntime-gpu"}
    assert not _names(project["dependencies"]) & flavours
    extras = project["optional-dependencies"]
    assert _names(extras["cpu"]) & flavours == {"onnxruntime"}
    assert _names(extras["gpu"]) & flavours == {"onnxruntime-gpu"}
    for name, requirements in extras.items():
        if name not in ("cpu", "gpu"):
            assert not _names(requirements) & flavours, name


def test_numerics_dependencies_have_tested_upper_bounds_listed_in_the_readme():
    """Every dependency whose numerics a test depends on carries an upper bound, and the README's
    tested-versions list names each of them."""
    project = _pyproject()["project"]
    requirements = project["dependencies"] + [r for reqs in project["optional-dependencies"].values() for r in reqs]
    numerics = {"torch", "numpy", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "diffusers", "transformers"}
    for requirement in requirements:
        if _names([requirement]) & numerics:
            assert "<" in requirement, f"{requirement} has no upper bound"
    tested = (ROOT / "README.md").read_text().split("### Tested versions", 1)[1].split("\n## ", 1)[0]
    for name in numerics - {"onnxruntime-gpu"}:
        assert re.search(rf"\b{re.escape(name)} \d", tested), f"README does not list the tested {name}"


def test_readme_results_are_generated_from_benchmark_files():
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "make_readme.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_readme_api_example_runs_as_written(tmp_path):
    """The README's API section, executed exactly as shown, in a fresh interpreter."""
    import subprocess
    import sys

    section = (ROOT / "README.md").read_text().split("## The API\n", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.*?)\n```", section, flags=re.S)[0]
    script = tmp_path / "api_example.py"
    script.write_text(code + "\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "fewer FLOPs, measured" in done.stdout
