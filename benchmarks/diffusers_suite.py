"""diffusers' own fast tests for DiTPipeline, PixArtAlphaPipeline and PixArtSigmaPipeline, with and
without our acceleration: which tests pass in each run.

Needs a checkout of diffusers' repository (its ``tests/`` folder is not part of the wheel) and the
packages those tests import (``accelerate``, ``parameterized``, ``requests-mock``); it is a check
to run by hand, not part of the suite:

    python benchmarks/diffusers_suite.py /path/to/diffusers

The accelerated run loads a pytest plugin (written next to the results) that installs, before
each call of these pipelines, an :class:`AcceleratedTransformer` whose schedule computes every
site at every step of that call's timesteps. Full compute through the captured graphs gives
diffusers' own images exactly, so every test that passes plainly must pass accelerated;
``serialization``, moves, dtype casts, callbacks and batch-size changes all go through the live
transformer. The results name every test whose outcome differs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result

FILES = [
    "tests/pipelines/dit/test_dit.py",
    "tests/pipelines/pixart_alpha/test_pixart.py",
    "tests/pipelines/pixart_sigma/test_pixart.py",
]

#: Both runs: the tiny T5 the PixArt tests download from the hub, built locally instead (no hub
#: access here). Same shapes as hf-internal-testing/tiny-random-t5 (d_model 32, 5 layers, 4 heads),
#: random weights and a word-level tokenizer: the tests' expected pixel slices fail in both runs,
#: everything else runs.
OFFLINE = """
import transformers

TINY = "hf-internal-testing/tiny-random-t5"
_config = transformers.AutoConfig.from_pretrained.__func__
_tokenizer = transformers.AutoTokenizer.from_pretrained.__func__


def _local_config(cls, name, *args, **kwargs):
    if name == TINY:
        return transformers.T5Config(vocab_size=1000, d_model=32, d_kv=8, d_ff=37, num_layers=5, num_heads=4)
    return _config(cls, name, *args, **kwargs)


def _local_tokenizer(cls, name, *args, **kwargs):
    if name != TINY:
        return _tokenizer(cls, name, *args, **kwargs)
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<pad>", "</s>", "<unk>"] + "a an of the photo painting squirrel eating burger cat dog".split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )


transformers.AutoConfig.from_pretrained = classmethod(_local_config)
transformers.AutoTokenizer.from_pretrained = classmethod(_local_tokenizer)
"""

PLUGIN = '''
"""pytest plugin: every DiT / PixArt pipeline call runs through harmonica-compile (full compute)."""
import functools
import weakref

import diffusers

from harmonica_compile.integrations.diffusers import AcceleratedTransformer
from harmonica_compile.schedule import CacheSchedule

ATTR = "_harmonica_acceleration"
CALLS = {"accelerated": 0}


class FullCompute(AcceleratedTransformer):
    """Every site computed at every step of the pipeline's current timesteps."""

    def __init__(self, pipe):
        self._pipe = weakref.ref(pipe)
        self._timesteps = None
        super().__init__(pipe.transformer, CacheSchedule([[True]], ["placeholder"], [0.0]))

    def _cached(self, args, kwargs):
        timesteps = [float(t) for t in self._pipe().scheduler.timesteps]
        if timesteps != self._timesteps:
            self._captures.clear()
            self._timesteps = timesteps
        return super()._cached(args, kwargs)

    def _capture(self, args, kwargs):
        from harmonica_compile.cacheable import prepare
        from harmonica_compile.cached_model import CachedModel

        with self._bare() as module:
            cm = prepare(module, (args, kwargs))
        mask = [[True] * len(cm.site_names)] * len(self._timesteps)
        CALLS["accelerated"] += 1
        return CachedModel(cm, CacheSchedule(mask, cm.site_names, self._timesteps))


def _wrap(cls):
    original = cls.__call__

    @functools.wraps(original)
    def __call__(self, *args, **kwargs):
        transformer = getattr(self, "transformer", None)
        if transformer is not None and getattr(transformer, ATTR, None) is None:
            FullCompute(self)
        return original(self, *args, **kwargs)

    cls.__call__ = __call__


for _cls in (diffusers.DiTPipeline, diffusers.PixArtAlphaPipeline, diffusers.PixArtSigmaPipeline):
    _wrap(_cls)


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"harmonica-compile: {CALLS['accelerated']} captures")
'''


def run(repo: Path, out: Path, plugin: str | None) -> tuple[dict[str, str], str]:
    junit = out / f"{'accelerated' if plugin else 'plain'}.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "harmonica_offline_plugin"]
    cmd += [f"--junitxml={junit}", *FILES]
    if plugin:
        cmd[3:3] = ["-p", plugin]
    env_path = str(out)
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env={**_env(), "PYTHONPATH": env_path})
    outcomes = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kids = [c.tag for c in case]
        outcomes[name] = "failed" if {"failure", "error"} & set(kids) else "skipped" if "skipped" in kids else "passed"
    return outcomes, proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-500:]


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("diffusers_repo", type=Path, help="a checkout of github.com/huggingface/diffusers")
    args = parser.parse_args(argv)
    import diffusers

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "harmonica_accel_plugin.py").write_text(PLUGIN)
        (out / "harmonica_offline_plugin.py").write_text(OFFLINE)
        plain, plain_line = run(args.diffusers_repo, out, None)
        accel, accel_line = run(args.diffusers_repo, out, "harmonica_accel_plugin")
    differ = sorted(n for n in plain if accel.get(n) != plain[n])
    count = lambda d, s: sum(v == s for v in d.values())
    md = [
        f"diffusers {diffusers.__version__}, tests from the checkout's {', '.join(FILES)}",
        "",
        "| run | passed | failed | skipped |",
        "|---|---|---|---|",
        f"| plain | {count(plain, 'passed')} | {count(plain, 'failed')} | {count(plain, 'skipped')} |",
        f"| accelerated (full compute) | {count(accel, 'passed')} | {count(accel, 'failed')} | {count(accel, 'skipped')} |",
        "",
        "Tests whose outcome differs: "
        + (", ".join(f"`{n}` ({plain[n]} -> {accel.get(n)})" for n in differ) or "none"),
    ]
    write_result(
        "diffusers_suite",
        {
            "diffusers": diffusers.__version__,
            "plain": plain,
            "accelerated": accel,
            "differ": differ,
            "summary": {"plain": plain_line, "accelerated": accel_line},
            "command": "python benchmarks/diffusers_suite.py DIFFUSERS_REPO",
        },
        "\n".join(md),
    )
    print("\n".join(md))


if __name__ == "__main__":
    main()
