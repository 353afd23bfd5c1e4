"""The bad-input catalog: every public entry point with wrong input gets a HarmonicaError that names
the thing and the fix; the CLI prints one line and exits 2, and leaves no partial output."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable

import pytest
import torch
from helpers import ref_inputs, tiny_reference_dit, tiny_spec, tiny_spec_no_null
from torch import nn

import harmonica_compile as hc
from harmonica_compile import errors
from harmonica_compile.cli import main


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


class _NoSites(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(2)])

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


@pytest.fixture(scope="module")
def small():
    model = tiny_reference_dit(depth=1)
    cm = hc.prepare(model, ref_inputs())
    return model, cm


@pytest.fixture(scope="module")
def files(tmp_path_factory, small):
    _, cm = small
    d = tmp_path_factory.mktemp("files")
    good = hc.CacheSchedule.fora(cm.site_names, 4, 2)
    good.save(d / "good.json")
    (d / "empty.json").write_text("")
    (d / "trunc.json").write_text(json.dumps(good.to_json())[:40])
    (d / "array.json").write_text("[true, false]")
    (d / "nomask.json").write_text(json.dumps({"sites": list(cm.site_names)}))
    (d / "v7.json").write_text(json.dumps({**good.to_json(), "version": 7}))
    tampered = good.to_json()
    tampered["mask"][1] = [True, True]
    (d / "tampered.json").write_text(json.dumps(tampered))
    (d / "notnpz.npz").write_bytes(b"not a zip")
    with open(d / "evil.pt", "wb") as f:
        pickle.dump({"pos_embed": _Evil()}, f)
    torch.save(tiny_reference_dit().state_dict(), d / "dit.pt")
    (d / "dit_trunc.pt").write_bytes((d / "dit.pt").read_bytes()[:300])
    return d


def _sched(cm, mask):
    return hc.CacheSchedule(mask, cm.site_names)


def _cases(small, files) -> list[tuple[str, Callable[[], object], type, str]]:
    model, cm = small
    x, t, y = ref_inputs()
    spec = tiny_spec()
    from harmonica_compile.metrics import DigitsEvaluator, fidelity
    from harmonica_compile.models import load_dit_checkpoint, load_pretrained
    from harmonica_compile.models.registry import load_model
    from harmonica_compile.passes import SiteRule
    from harmonica_compile.sampling import DDIMSampler, generate, respace_timesteps, sample
    from harmonica_compile.training import TrainConfig, load_routers, train_schedule

    def batch_change():
        cached = hc.optimize(cm, schedule=hc.CacheSchedule.fora(cm.site_names, 3, 2))
        cached(x, t, y)
        x4, t4, y4 = ref_inputs(4)
        cached(x4, t4, y4)

    def unknown_timestep():
        cached = hc.optimize(cm, schedule=hc.CacheSchedule.fora(cm.site_names, 2, 2, timesteps=[500, 0]))
        cached(x, torch.full((2,), 7), y)

    def nan_site():
        bad = tiny_reference_dit(depth=1)
        with torch.no_grad():
            bad.blocks[0].mlp.fc1.weight[0, 0] = float("nan")
        c = hc.optimize(bad, ref_inputs(), schedule=hc.CacheSchedule.all_compute(cm.site_names, 2), check_finite=True)
        c(x, t, y)

    def tampered_routers(tmp=files):
        from harmonica_compile.training import TrainResult

        s = hc.CacheSchedule.fora(cm.site_names, 2, 2)
        TrainResult(s, TrainConfig(target_cur=0.25, num_steps=2), torch.zeros(2, 2), torch.zeros(2)).save_routers(
            tmp / "routers.safetensors"
        )
        from safetensors.torch import load_file, save_file

        data = load_file(tmp / "routers.safetensors")
        from safetensors import safe_open

        with safe_open(str(tmp / "routers.safetensors"), "pt") as f:
            meta = f.metadata()
        data["logits"][0, 0] = 9.0
        save_file(data, tmp / "routers.safetensors", metadata=meta)
        load_routers(tmp / "routers.safetensors")

    def resume_truncated(tmp=files):
        ckpt = tmp / "ckpt.safetensors"
        train_schedule(
            spec,
            num_steps=3,
            target_cur=0.3,
            iterations=1,
            batch_size=1,
            checkpoint=ckpt,
            checkpoint_every=1,
            progress=False,
        )
        ckpt.write_bytes(ckpt.read_bytes()[:-50])
        train_schedule(
            spec, num_steps=3, target_cur=0.3, iterations=2, batch_size=1, checkpoint=ckpt, resume=True, progress=False
        )

    return [
        ("capture-not-a-module", lambda: hc.capture(lambda a: a, (x,)), errors.CaptureError, "torch.nn.Module"),
        (
            "capture-rejected-inputs",
            lambda: hc.capture(model, (torch.randn(2, 3, 8, 8), t, y)),
            errors.CaptureError,
            "rejected the example inputs",
        ),
        ("capture-no-tensor", lambda: hc.capture(_NoSites(), ((), {})), errors.HarmonicaError, "forward"),
        (
            "call-wrong-shape",
            lambda: cm.captured(torch.randn(2, 4, 9, 9), t, y),
            errors.InputError,
            r"input 'x' has shape \[2, 4, 9, 9\], expected \[batch, 4, 8, 8\]",
        ),
        ("call-wrong-dtype", lambda: cm.captured(x.double(), t, y), errors.InputError, "convert it with"),
        ("call-missing-arg", lambda: cm.captured(x, t), errors.InputError, "missing a required argument"),
        ("call-not-a-tensor", lambda: cm.captured(x, t, 5), errors.InputError, "must be a tensor"),
        (
            "no-sites",
            lambda: hc.find_cache_sites(_NoSites(), (torch.randn(2, 4),)),
            errors.SiteError,
            "no cache sites found.*site_rules=",
        ),
        ("bad-site-rule", lambda: SiteRule("blocks.("), errors.SiteError, "not a valid regular expression"),
        (
            "schedule-first-step-caches",
            lambda: _sched(cm, [[False, True], [True, True]]),
            errors.ScheduleError,
            "first step must compute every site",
        ),
        ("schedule-ragged", lambda: _sched(cm, [[True, True], [True]]), errors.ScheduleError, "mask row 1 has 1"),
        ("schedule-not-bool", lambda: _sched(cm, [[True, "yes"]]), errors.ScheduleError, "must be true or false"),
        (
            "schedule-other-model",
            lambda: hc.optimize(cm, schedule=hc.CacheSchedule.all_compute(["a", "b"], 2)),
            errors.ScheduleError,
            "made for another model",
        ),
        (
            "optimize-unknown-method",
            lambda: hc.optimize(spec.model, spec.example_inputs(), method="magic", target_cur=0.5),
            errors.ConfigError,
            "method must be one of",
        ),
        ("target-cur-too-big", lambda: TrainConfig(target_cur=1.5), errors.ConfigError, r"in \(0, 1\), got 1.5"),
        (
            "target-cur-unreachable",
            lambda: TrainConfig(target_cur=0.97, num_steps=20),
            errors.ConfigError,
            "unreachable",
        ),
        ("batch-size-zero", lambda: TrainConfig(batch_size=0), errors.ConfigError, "batch_size must be an integer"),
        (
            "cfg-without-null-class",
            lambda: train_schedule(
                tiny_spec_no_null(), num_steps=3, target_cur=0.3, cfg_scale=3.0, iterations=1, progress=False
            ),
            errors.ConfigError,
            "needs a null class",
        ),
        ("batch-change-in-run", batch_change, errors.InputError, "call reset\\(\\)"),
        ("unknown-timestep", unknown_timestep, errors.ScheduleError, "timestep 7 is not one of"),
        (
            "nan-noise",
            lambda: sample(lambda a, b, c: a, torch.full((1, 1, 2, 2), float("nan")), None, DDIMSampler(2)),
            errors.InputError,
            "NaN",
        ),
        ("nan-in-a-site", nan_site, errors.NumericalError, "step 0: NaN or Inf appeared first in site 'blocks.0.mlp'"),
        (
            "evaluator-wrong-shape",
            lambda: DigitsEvaluator().accuracy(torch.zeros(2, 1, 8, 8), torch.zeros(2)),
            errors.InputError,
            r"must be \[N, 1, 16, 16\]",
        ),
        (
            "evaluator-nan",
            lambda: DigitsEvaluator().frechet(torch.full((3, 1, 16, 16), float("nan"))),
            errors.InputError,
            "NaN",
        ),
        (
            "fidelity-shapes",
            lambda: fidelity(torch.zeros(2, 1, 4, 4), torch.zeros(3, 1, 4, 4)),
            errors.InputError,
            "must be equal",
        ),
        ("unknown-model", lambda: load_model("dit-huge"), errors.InputError, "known models: tiny-dit-digits"),
        ("unknown-pretrained", lambda: load_pretrained("sdxl"), errors.ConfigError, "known models"),
        ("steps-zero", lambda: respace_timesteps(0), errors.ConfigError, "between 1 and 1000"),
        ("steps-too-many", lambda: respace_timesteps(1001), errors.ConfigError, "between 1 and 1000"),
        (
            "generate-cfg-no-null",
            lambda: generate(tiny_spec_no_null(), num=1, steps=2, cfg_scale=2.0),
            errors.ConfigError,
            "needs a null class",
        ),
        ("generate-num-zero", lambda: generate(spec, num=0, steps=2), errors.ConfigError, "num must be"),
        (
            "checkpoint-pickle",
            lambda: load_dit_checkpoint(files / "evil.pt"),
            errors.ArtifactError,
            "refuse to unpickle",
        ),
        (
            "checkpoint-truncated",
            lambda: load_dit_checkpoint(files / "dit_trunc.pt"),
            errors.ArtifactError,
            "dit_trunc.pt cannot be loaded",
        ),
        (
            "schedule-missing",
            lambda: hc.CacheSchedule.load(files / "nope.json"),
            errors.ArtifactError,
            "does not exist",
        ),
        ("schedule-empty", lambda: hc.CacheSchedule.load(files / "empty.json"), errors.ArtifactError, "is empty"),
        (
            "schedule-truncated",
            lambda: hc.CacheSchedule.load(files / "trunc.json"),
            errors.ArtifactError,
            "not valid JSON",
        ),
        (
            "schedule-not-object",
            lambda: hc.CacheSchedule.load(files / "array.json"),
            errors.ScheduleError,
            "expected a JSON object",
        ),
        (
            "schedule-wrong-schema",
            lambda: hc.CacheSchedule.load(files / "nomask.json"),
            errors.ScheduleError,
            "'mask' is missing",
        ),
        ("schedule-other-version", lambda: hc.CacheSchedule.load(files / "v7.json"), errors.ScheduleError, "version 7"),
        (
            "schedule-tampered",
            lambda: hc.CacheSchedule.load(files / "tampered.json"),
            errors.ArtifactError,
            "checksum mismatch",
        ),
        ("routers-tampered", tampered_routers, errors.ArtifactError, "fails its checksum"),
        ("resume-truncated-checkpoint", resume_truncated, errors.TrainingError, "damaged"),
    ]


CASE_IDS = [
    "capture-not-a-module",
    "capture-rejected-inputs",
    "capture-no-tensor",
    "call-wrong-shape",
    "call-wrong-dtype",
    "call-missing-arg",
    "call-not-a-tensor",
    "no-sites",
    "bad-site-rule",
    "schedule-first-step-caches",
    "schedule-ragged",
    "schedule-not-bool",
    "schedule-other-model",
    "optimize-unknown-method",
    "target-cur-too-big",
    "target-cur-unreachable",
    "batch-size-zero",
    "cfg-without-null-class",
    "batch-change-in-run",
    "unknown-timestep",
    "nan-noise",
    "nan-in-a-site",
    "evaluator-wrong-shape",
    "evaluator-nan",
    "fidelity-shapes",
    "unknown-model",
    "unknown-pretrained",
    "steps-zero",
    "steps-too-many",
    "generate-cfg-no-null",
    "generate-num-zero",
    "checkpoint-pickle",
    "checkpoint-truncated",
    "schedule-missing",
    "schedule-empty",
    "schedule-truncated",
    "schedule-not-object",
    "schedule-wrong-schema",
    "schedule-other-version",
    "schedule-tampered",
    "routers-tampered",
    "resume-truncated-checkpoint",
]


@pytest.mark.parametrize("case", CASE_IDS)
def test_api_case(case, small, files, capsys):
    table = {c[0]: c[1:] for c in _cases(small, files)}
    assert set(table) == set(CASE_IDS)
    fn, exc, message = table[case]
    with pytest.raises(exc, match=message) as info:
        fn()
    assert isinstance(info.value, errors.HarmonicaError)
    assert "pwned" not in capsys.readouterr().out  # nothing was unpickled


CLI_CASES = [
    ("sample-unknown-model", ["sample", "--model", "nope", "--out", "{d}/o.npz"], "unknown model 'nope'"),
    (
        "sample-cfg-no-null",
        ["sample", "--model", "helpers:tiny_spec_no_null", "--cfg-scale", "3", "--steps", "2", "--out", "{d}/o.npz"],
        "needs a null class",
    ),
    (
        "sample-schedule-other-steps",
        [
            "sample",
            "--model",
            "helpers:tiny_spec",
            "--steps",
            "7",
            "--schedule",
            "{d}/sched.json",
            "--out",
            "{d}/o.npz",
        ],
        "the schedule has 4 steps but sampling uses 7",
    ),
    (
        "sample-schedule-other-model",
        ["sample", "--steps", "4", "--schedule", "{d}/sched.json", "--out", "{d}/o.npz"],
        "has 4 sites and the model",
    ),
    ("sample-engine-missing", ["sample", "--engine", "{d}/no-engine", "--out", "{d}/o.npz"], "does not exist"),
    (
        "optimize-target-cur",
        ["optimize", "--model", "helpers:tiny_spec", "--target-cur", "1.5", "--out", "{d}/run"],
        "target_cur must be in (0, 1)",
    ),
    (
        "optimize-resume-without-checkpoint",
        ["optimize", "--model", "helpers:tiny_spec", "--steps", "3", "--resume", "--out", "{d}/run"],
        "no checkpoint",
    ),
    ("export-missing-schedule", ["export", "{d}/none.json", "--out", "{d}/eng"], "does not exist"),
    (
        "export-tensorrt-without-it",
        ["export", "{d}/sched.json", "--model", "helpers:tiny_spec", "--format", "tensorrt", "--out", "{d}/eng"],
        "TensorRT is not installed",
    ),
    ("bench-missing-engine", ["bench", "{d}/no-engine"], "does not exist"),
    ("evaluate-not-npz", ["evaluate", "{d}/bad.npz"], "not a readable .npz"),
    ("show-truncated-schedule", ["show", "--schedule", "{d}/trunc.json"], "not valid JSON"),
]


@pytest.fixture(scope="module")
def cli_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    spec = tiny_spec()
    hc.CacheSchedule.fora(
        spec.cacheable().site_names, 4, 2, timesteps=[float(t) for t in spec.sampler(4).timesteps]
    ).save(d / "sched.json")
    (d / "bad.npz").write_bytes(b"junk")
    (d / "trunc.json").write_text('{"sites": ["a"], "mask": [[tr')
    return d


@pytest.mark.parametrize(("case", "argv", "message"), CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_case_prints_one_line_and_exits_2(case, argv, message, cli_dir, capsys):
    import importlib.util

    if case == "export-tensorrt-without-it" and importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed")
    before = sorted(p.name for p in cli_dir.iterdir())
    code = main([a.format(d=cli_dir) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"harmonica-compile {argv[0]}: error: ")
    assert message in err
    assert sorted(p.name for p in cli_dir.iterdir()) == before  # no partial output


def test_argparse_errors_exit_2(capsys):
    for argv in (
        ["sample", "--steps", "0", "--out", "x.npz"],
        ["sample", "--num", "many", "--out", "x.npz"],
        ["optimize", "--method", "magic", "--out", "x"],
        ["frobnicate"],
    ):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    assert "expected an integer >= 1, got 0" in capsys.readouterr().err


def test_debug_prints_the_traceback(capsys):
    assert main(["--debug", "sample", "--model", "nope", "--out", "x.npz"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "unknown model 'nope'" in err


def test_catalog_size():
    assert len(CASE_IDS) + len(CLI_CASES) >= 30


def test_model_construction_and_condition_errors_are_harmonica_errors():
    from harmonica_compile.models import DiT_models
    from harmonica_compile.sampling.guidance import cat_conditions

    with pytest.raises(errors.ConfigError, match="not divisible by patch_size 2"):
        DiT_models["DiT-S/2"](input_size=7)
    with pytest.raises(errors.InputError, match="conditions must be tensors"):
        cat_conditions([1, 2], [3, 4])
