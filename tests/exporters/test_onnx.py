"""ONNX export: graph signatures follow the masks, one weights file, manifest, parity gate, refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from helpers import tiny_spec

from harmonica_compile import CacheSchedule
from harmonica_compile.api import cached_for_spec
from harmonica_compile.errors import ArtifactError, ExportError, HarmonicaError, InputError, RuntimeBackendError
from harmonica_compile.exporters import onnx as onnx_exporter
from harmonica_compile.exporters.manifest import load_manifest
from harmonica_compile.exporters.onnx import export_onnx
from harmonica_compile.runtime.ort import OrtRunner
from harmonica_compile.runtime.parity import onnx_parity_gate
from harmonica_compile.sampling import generate

STEPS = 5


@pytest.fixture(scope="module")
def spec():
    return tiny_spec()


@pytest.fixture(scope="module")
def schedule(spec):
    sites = spec.cacheable().site_names  # 4 sites
    mask = [[1, 1, 1, 1], [0, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 1]]
    return CacheSchedule(mask, sites, [float(t) for t in spec.sampler(STEPS).timesteps], meta={"model": spec.name})


@pytest.fixture(scope="module")
def exported(spec, schedule, tmp_path_factory):
    out = tmp_path_factory.mktemp("eng") / "eng"
    cached = cached_for_spec(spec, schedule)
    sampler = spec.sampler(STEPS)
    gate = onnx_parity_gate(spec, sampler)
    manifest = export_onnx(cached, out, model_name=spec.name, sampler=sampler, spec=spec, max_batch=8, check=gate)
    return out, manifest, cached


def test_graph_inputs_and_outputs_follow_the_masks(exported, schedule):
    out, manifest, cached = exported
    sites = schedule.sites
    assert len(manifest.graphs) == len(set(schedule.mask)) == cached.num_graphs
    for step in manifest.steps:
        g = manifest.graphs[step["graph"]]
        mask = g["mask"]
        assert mask == step["mask"]
        inputs = [i["name"] for i in g["inputs"]]
        assert inputs[:3] == ["x", "t", "y"]
        assert inputs[3:] == [f"cache.{s}" for s, m in zip(sites, mask, strict=True) if not m]
        outputs = [o["name"] for o in g["outputs"]]
        assert outputs[0] == "output"
        refreshed = [o[len("new_cache.") :] for o in outputs[1:]]
        assert all(mask[sites.index(s)] for s in refreshed)  # only computed sites are refreshed
        model = onnx.load(str(out / g["file"]), load_external_data=False)
        assert [i.name for i in model.graph.input] == inputs and [o.name for o in model.graph.output] == outputs
        assert not any(n.op_type == "Where" for n in model.graph.node)  # no routing left
    roles = {i["name"]: i["role"] for g in manifest.graphs for i in g["inputs"] + g["outputs"]}
    assert roles["x"] == "latent" and roles["t"] == "timestep" and roles["y"] == "condition"
    assert roles["output"] == "output"
    assert {r for n, r in roles.items() if n.startswith("cache.")} == {"cache_in"}
    assert {r for n, r in roles.items() if n.startswith("new_cache.")} == {"cache_out"}
    g0 = manifest.graphs[0]["inputs"][0]
    assert g0["shape"][0] == "batch" and g0["dtype"] == "float32"


def test_every_new_cache_output_is_read_later(exported, schedule):
    _, manifest, _ = exported
    for step in manifest.steps:
        g = manifest.graphs[step["graph"]]
        for o in g["outputs"][1:]:
            site = schedule.sites.index(o["name"][len("new_cache.") :])
            steps_with_graph = [s["index"] for s in manifest.steps if s["graph"] == g["id"]]
            assert any(i + 1 < STEPS and not schedule.mask[i + 1][site] for i in steps_with_graph)


def test_one_shared_weights_file(exported, spec):
    out, manifest, _ = exported
    weights = sum(p.numel() * p.element_size() for p in spec.model.state_dict().values())
    files = {p.name: p.stat().st_size for p in out.iterdir()}
    expected = ["manifest.json", "weights.bin", "example_inputs.safetensors"] + [g["file"] for g in manifest.graphs]
    assert sorted(files) == sorted(expected)
    total = sum(files.values())
    assert files["weights.bin"] <= weights * 1.01
    assert total <= 1.2 * weights
    for g in manifest.graphs:
        model = onnx.load(str(out / g["file"]), load_external_data=False)
        locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
        assert locations <= {"weights.bin"}


def test_manifest_records_the_facts(exported, schedule):
    _, manifest, _ = exported
    data = manifest.data
    assert data["format"] == "harmonica-compile/engine" and data["format_version"] == 1
    assert data["opset"] == 18 and data["kind"] == "onnx"
    assert {"harmonica_compile", "torch", "onnx", "onnxruntime"} <= set(data["tools"])
    assert data["model"]["name"] == "tiny-test-dit"
    assert data["sampler"]["name"] == "ddim" and data["sampler"]["timesteps"] == [800, 600, 400, 200, 0]
    assert [s["timestep"] for s in data["steps"]] == list(schedule.timesteps)
    # the export passing means the gate's checks held; the manifest records them with their tolerances
    parity = data["parity"]
    assert (parity["graph_atol"], parity["graph_rtol"]) == (1e-5, 1e-5)
    assert (parity["trajectory_atol"], parity["trajectory_rtol"]) == (1e-4, 1e-2)
    assert parity["graph_max_abs_diff"] >= 0 and parity["trajectory_max_abs_diff"] >= 0
    assert all(len(g["sha256"]) == 64 for g in data["graphs"])


def test_ort_sampling_matches_the_torch_cached_model(exported, spec):
    """Two runtimes' fp32 kernels over a whole trajectory: the whole-pipeline tolerance of the
    deployment stacks (atol 1e-4, rtol 1e-2; see the parity gate), not a measured value."""
    out, _, cached = exported
    runner = OrtRunner(out, optimization="disabled")
    a, la = generate(spec, runner, num=3, steps=STEPS, seed=7)
    b, lb = generate(spec, spec.denoiser(cached), num=3, steps=STEPS, seed=7)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-2)
    assert torch.equal(la, lb)


def _copy(out, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(out, dst)
    return dst


def test_damaged_folders_are_refused(exported, tmp_path):
    out, _, _ = exported
    bad = _copy(out, tmp_path)
    (bad / "graph_001.onnx").write_bytes((bad / "graph_001.onnx").read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ArtifactError, match=r"graph 1 file .*graph_001.onnx fails its checksum"):
        load_manifest(bad)
    (bad / "graph_001.onnx").unlink()
    with pytest.raises(ArtifactError, match=r"graph_001.onnx is missing"):
        load_manifest(bad)
    shutil.rmtree(bad)
    bad = _copy(out, tmp_path)
    data = json.loads((bad / "manifest.json").read_text())
    data["graphs"][0]["file"] = "../outside.onnx"
    (bad / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="not a plain file name inside"):
        load_manifest(bad)
    (bad / "manifest.json").write_text("{")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_manifest(bad)
    with pytest.raises(ArtifactError, match="does not exist"):
        load_manifest(tmp_path / "nothing")


def test_folder_for_another_model_or_step_count(exported):
    out, _, _ = exported
    runner = OrtRunner(out)
    with pytest.raises(RuntimeBackendError, match="exported for model 'tiny-test-dit', not 'tiny-dit-digits'"):
        runner.check_model("tiny-dit-digits")
    with pytest.raises(RuntimeBackendError, match="holds a 5-step schedule; sampling with 20 steps"):
        runner.check_steps(20)
    with pytest.raises(HarmonicaError, match="timestep 950 is not one of the 5 timesteps"):
        runner(torch.randn(2, 2, 8, 8), torch.full((2,), 950), torch.tensor([1, 2]))


def test_cpu_sessions_do_not_spin(exported):
    # A schedule alternates between sessions; idle pools that spin steal the running one's cores.
    out, _, _ = exported
    key = "session.intra_op.allow_spinning"
    quiet = OrtRunner(out, threads=2).session(0).get_session_options()
    assert quiet.get_session_config_entry(key) == "0"
    spinning = OrtRunner(out, threads=2, spinning=True).session(0).get_session_options()
    assert spinning.get_session_config_entry(key) == "1"


def test_batch_outside_the_built_range(exported):
    out, _, _ = exported
    runner = OrtRunner(out)
    with pytest.raises(InputError, match=r"input 'latent' has batch 9, outside the range \[1, 8\]"):
        runner(torch.randn(9, 2, 8, 8), torch.full((9,), 800), torch.zeros(9, dtype=torch.long))


def test_failed_parity_gate_leaves_nothing_behind(spec, schedule, tmp_path, monkeypatch):
    real = onnx_exporter._externalize

    def corrupt(model, folder):
        refs = real(model, folder)
        data = bytearray((folder / "weights.bin").read_bytes())
        data[:400] = np.full(100, 3.0, dtype=np.float32).tobytes()
        (folder / "weights.bin").write_bytes(bytes(data))
        return refs

    previous = tmp_path / "eng"
    previous.mkdir()
    (previous / "old.txt").write_text("an earlier export")
    monkeypatch.setattr(onnx_exporter, "_externalize", corrupt)
    with pytest.raises(ExportError, match=r"parity gate: graph 0 \(graph_000.onnx\) output 'output' differs"):
        export_onnx(
            cached_for_spec(spec, schedule),
            previous,
            model_name=spec.name,
            sampler=spec.sampler(STEPS),
            check=onnx_parity_gate(),
        )
    assert [p.name for p in previous.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["eng"]  # no temporary folder left


def test_export_time_is_one_export_plus_milliseconds(exported):
    _, manifest, _ = exported
    timing = manifest.data["timing"]
    # the graphs are specialized in ONNX, not re-exported: specialization is a small part of the export
    assert timing["specialize_seconds"] < timing["export_seconds"]


def test_manifest_entries_are_typed_and_round_trip(exported):
    from harmonica_compile.exporters.manifest import GraphEntry, IOEntry

    _, manifest, _ = exported
    entries = manifest.graph_entries()
    assert [e.to_json() for e in entries] == manifest.graphs
    assert all(isinstance(i, IOEntry) for e in entries for i in e.inputs)
    assert GraphEntry.from_json(entries[0].to_json()) == entries[0]
    with pytest.raises(ArtifactError, match="role 'weights'"):
        IOEntry("w", "float32", (), "weights")
