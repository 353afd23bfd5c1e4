"""serve-repo's model repository, checked against Triton's own config schema (no server needed)."""

from __future__ import annotations

import json

import pytest

from harmonica_compile.cli import main
from harmonica_compile.errors import ConfigError
from harmonica_compile.exporters.manifest import load_manifest
from harmonica_compile.io import sha256_file
from harmonica_compile.serving import build_repository

model_config_pb2 = pytest.importorskip(
    "tritonclient.grpc.model_config_pb2", reason="needs the serve extra (tritonclient)"
)
text_format = pytest.importorskip("google.protobuf.text_format")


def _config(path):
    """Parse a config.pbtxt with Triton's ModelConfig protobuf: a field or value Triton does not know fails here."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_python_layout(served_engine, tmp_path, capsys):
    repo = tmp_path / "repo"
    assert main(["serve-repo", str(served_engine), "--out", str(repo), "--instances", "2"]) == 0
    assert "models harmonica_sampler; max_batch_size 4 images, 2 instance(s)" in capsys.readouterr().out
    model = repo / "harmonica_sampler"
    cfg = _config(model / "config.pbtxt")
    assert cfg.name == "harmonica_sampler" and cfg.backend == "python" and cfg.max_batch_size == 4
    assert [(i.name, model_config_pb2.DataType.Name(i.data_type), list(i.dims), i.optional) for i in cfg.input] == [
        ("seed", "TYPE_INT64", [-1], True),
        ("class_label", "TYPE_INT64", [-1], True),
        ("cfg_scale", "TYPE_FP32", [-1], True),
        ("num_steps", "TYPE_INT64", [-1], True),
    ]
    assert [(o.name, list(o.dims)) for o in cfg.output] == [("image", [2, 8, 8])]
    assert cfg.HasField("dynamic_batching") and cfg.instance_group[0].count == 2
    assert cfg.parameters["manifest_sha256"].string_value == sha256_file(served_engine / "manifest.json")
    copied = load_manifest(model / "1" / "engine")  # every checksum verified
    assert copied.data == load_manifest(served_engine).data
    paths = json.loads((model / "1" / "python_path.json").read_text())
    assert any(p.endswith("site-packages") for p in paths)
    assert "TritonPythonModel" in (model / "1" / "model.py").read_text()


def test_models_are_added_and_replaced(served_engine, tmp_path):
    repo = tmp_path / "repo"
    build_repository(served_engine, repo, layout="bls")
    build_repository(served_engine, repo, name="second", portable=True)
    assert sorted(p.name for p in repo.iterdir()) == [
        "harmonica_sampler",
        "harmonica_sampler_g0",
        "harmonica_sampler_g1",
        "second",
    ]
    assert json.loads((repo / "second" / "1" / "python_path.json").read_text()) == []
    build_repository(served_engine, repo)  # python layout again: the graph models go
    assert sorted(p.name for p in repo.iterdir()) == ["harmonica_sampler", "second"]


def test_bls_layout_has_one_backend_model_per_distinct_graph(served_engine, tmp_path):
    repo = tmp_path / "repo"
    facts = build_repository(served_engine, repo, layout="bls", max_batch=2)
    manifest = load_manifest(served_engine)
    assert facts.models == ("harmonica_sampler", "harmonica_sampler_g0", "harmonica_sampler_g1")
    sampler = _config(repo / "harmonica_sampler" / "config.pbtxt")
    assert sampler.max_batch_size == 2 and sampler.parameters["layout"].string_value == "bls"
    assert sampler.parameters["graph_model_prefix"].string_value == "harmonica_sampler_g"
    assert sorted(p.name for p in (repo / "harmonica_sampler" / "1" / "engine").iterdir()) == ["manifest.json"]
    for graph in manifest.graphs:
        folder = repo / f"harmonica_sampler_g{graph['id']}"
        cfg = _config(folder / "config.pbtxt")
        assert cfg.backend == "onnxruntime" and cfg.max_batch_size == 0
        want = [(e["name"], e["dtype"], [-1 if d == "batch" else d for d in e["shape"]]) for e in graph["inputs"]]
        got = [(i.name, model_config_pb2.DataType.Name(i.data_type)[5:].lower(), list(i.dims)) for i in cfg.input]
        assert got == [(n, {"float32": "fp32", "int64": "int64"}[d], s) for n, d, s in want]
        assert [o.name for o in cfg.output] == [e["name"] for e in graph["outputs"]]
        assert sha256_file(folder / "1" / "model.onnx") == graph["sha256"]
        for extra in graph["external_data"]:  # the weights beside the graph, where ONNX looks for them
            assert sha256_file(folder / "1" / extra) == manifest.data["files"][extra]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"layout": "ensemble"}, "layout must be one of"),
        ({"name": "a/b"}, "must be letters, digits"),
        ({"instances": 0}, "instances must be an integer >= 1"),
        ({"max_batch": 9}, "does not fit the folder's batch profile"),
        ({"extra_python_path": ["/no/such/dir"]}, "is not a folder"),
    ],
)
def test_bad_options(served_engine, tmp_path, options, message):
    with pytest.raises(ConfigError, match=message):
        build_repository(served_engine, tmp_path / "repo", **options)


def test_cli_error_is_one_line(tmp_path, capsys):
    assert main(["serve-repo", str(tmp_path / "missing"), "--out", str(tmp_path / "repo")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err
