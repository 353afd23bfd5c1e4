"""The package is a picture of the pipeline: every import points down it, and no import cycles.

Reads every import statement of ``harmonica_compile/`` (module level and inside functions) with
``ast`` and checks them against the stages in order:

    base (errors, names, io, threads, version) -> models and samplers -> capture -> passes
    -> cacheable / schedule -> step engine (CachedModel, compiling) -> specs and integrations
    -> training | exporters -> runtime -> api / workflows / serving -> CLI

A module may import its own stage or a lower one. Beyond the order, some arrows are forbidden
outright: passes know no model definitions; training and exporters know nothing of each other;
runtimes and serving never train.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "harmonica_compile"
PKG = "harmonica_compile"

#: (module or package prefix, stage); the longest matching prefix wins.
STAGES: tuple[tuple[str, int], ...] = (
    ("_version", 0),
    ("errors", 0),
    ("names", 0),
    ("io", 0),
    ("threads", 0),
    ("data", 1),
    ("metrics", 1),
    ("metrics_data", 1),
    ("models", 1),
    ("sampling", 1),
    ("capture", 2),
    ("passes", 3),
    ("cacheable", 4),
    ("schedule", 4),
    ("plots", 4),
    ("reference", 4),
    ("engine", 5),
    ("compiling", 5),
    ("cached_model", 5),
    ("models.spec", 6),
    ("models.registry", 6),
    ("integrations", 6),
    ("evaluation", 6),
    ("training", 7),
    ("exporters", 7),
    ("runtime", 8),
    ("api", 9),
    ("serving", 9),
    ("workflows", 9),
    ("cli", 10),
    ("__main__", 10),
    ("", 10),  # the package itself: the public API re-exports
)
#: (importer prefix, imported prefix): never, whatever the stages say.
FORBIDDEN = (
    ("passes", "models"),
    ("passes", "training"),
    ("passes", "exporters"),
    ("passes", "runtime"),
    ("passes", "cli"),
    ("capture", "passes"),
    ("exporters", "runtime"),
    ("exporters", "training"),
    ("runtime", "training"),
    ("serving", "training"),
    ("runtime", "api"),
    ("training", "exporters"),
    ("training", "runtime"),
)


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The package modules ``name`` imports (relative names, '' for the package itself)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                head = ".".join([*base, *([node.module] if node.module else [])])
                targets = [PKG + ("." + head if head else "")]
                targets += [f"{targets[0]}.{a.name}" for a in node.names]
            else:
                targets = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            if target != PKG and not target.startswith(PKG + "."):
                continue
            rel = target[len(PKG) + 1 :] if target != PKG else ""
            while rel not in MODULES and rel:  # an attribute of a module: the module itself
                rel = rel.rpartition(".")[0]
            if rel != name:
                found.add(rel)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _matches(name: str, prefix: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def stage(name: str) -> int:
    best = max((p for p, _ in STAGES if _matches(name, p)), key=len)
    return dict(STAGES)[best]


def test_every_module_has_a_stage():
    assert "" in dict(STAGES) and all(stage(m) >= 0 for m in MODULES)


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m))
def test_imports_point_down_the_pipeline(name):
    up = sorted(t for t in GRAPH[name] if t and stage(t) > stage(name))
    assert not up, f"{name} (stage {stage(name)}) imports later stages: {[(t, stage(t)) for t in up]}"
    banned = sorted(t for t in GRAPH[name] for a, b in FORBIDDEN if _matches(name, a) and _matches(t, b) and t)
    assert not banned, f"{name} imports {banned}, which its stage must not know"


def test_no_import_cycles():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(GRAPH.get(m, ())):
            if state.get(t) == 1:
                cycle = [*stack[stack.index(t) :], t]
                raise AssertionError(f"import cycle: {' -> '.join(x or PKG for x in cycle)}")
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(MODULES):
        if m not in state:
            visit(m)


def test_the_checker_sees_what_it_checks():
    """The reader must find real arrows, or every check above would pass vacuously."""
    assert "engine" in GRAPH["cached_model"] and "passes" in GRAPH["cacheable"]
    assert "runtime" in GRAPH["cli.sample"]  # imported inside run(): function-level imports count too
    assert "sampling.loop" in GRAPH["sampling.generate"]
