"""The served sampler without a server: request checks, and images equal to ``sample --engine``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tiny_spec

from harmonica_compile.cli import main
from harmonica_compile.errors import ArtifactError, ConfigError, InputError
from harmonica_compile.runtime import open_engine
from harmonica_compile.sampling import generate
from harmonica_compile.serving import SamplerService
from harmonica_compile.serving.service import check_manifest_digest


def _req(seeds, labels, **extra):
    out = {
        "seed": np.array(seeds, dtype=np.int64).reshape(-1, 1),
        "class_label": np.array(labels, dtype=np.int64).reshape(-1, 1),
    }
    out.update(extra)
    return out


@pytest.fixture(scope="module")
def service(served_engine):
    return SamplerService(served_engine)


def _reference(engine, seed, label, cfg=None):
    """What ``sample --engine ENG --num 1 --seed S --labels L`` computes (its run() calls generate)."""
    images, _ = generate(
        tiny_spec(), open_engine(engine), num=1, steps=4, seed=seed, labels=torch.tensor([label]), cfg_scale=cfg
    )
    return images[0].numpy()


def test_profile_gives_four_images_per_loop_with_guidance(service):
    assert service.max_images == 4 and service.num_steps == 4 and service.image_shape == (2, 8, 8)


def test_batched_requests_equal_one_image_runs(service, served_engine):
    """Same graphs, same rows, only the batch differs (7 images: loops of 4 and 3; two guidance
    groups). ONNX Runtime's CPU kernels compute each row in the same order whatever the batch, so
    the images agree exactly here; 1e-5 is the serving acceptance bound."""
    requests = [_req([0, 1], [3, 4]), _req([2], [5]), _req([3], [6], cfg_scale=np.array([[1.0]], np.float32))]
    requests += [_req([4, 5, 6], [7, 8, 9])]
    out = service.run(requests)
    assert [o.shape for o in out] == [(2, 2, 8, 8), (1, 2, 8, 8), (1, 2, 8, 8), (3, 2, 8, 8)]
    got = np.concatenate(out)
    for i, (seed, label, cfg) in enumerate(
        [(0, 3, None), (1, 4, None), (2, 5, None), (3, 6, 1.0), (4, 7, None), (5, 8, None), (6, 9, None)]
    ):
        np.testing.assert_allclose(got[i], _reference(served_engine, seed, label, cfg), atol=1e-5, rtol=0)
    assert np.abs(got).max() <= 1.0


def test_equal_to_the_sample_command(service, served_engine, tmp_path):
    out = tmp_path / "s.npz"
    argv = ["sample", "--engine", str(served_engine), "--model", "helpers:tiny_spec", "--num", "1", "--seed", "11"]
    assert main([*argv, "--labels", "6", "--quiet", "--out", str(out)]) == 0
    with np.load(out) as data:
        assert data["labels"].tolist() == [6]
        np.testing.assert_allclose(service.run([_req([11], [6])])[0][0], data["images"][0], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "request_, message",
    [
        ({"class_label": np.array([[1]])}, "input 'seed' is missing"),
        ({"seed": np.array([[1]])}, "input 'class_label' is missing"),
        (_req([1], [1]) | {"seed": np.array([[1]], dtype=np.int32)}, "input 'seed' has dtype int32, expected int64"),
        (
            _req([1], [1]) | {"seed": np.array([1, 2], dtype=np.int64)},
            "input 'seed' has shape [2], expected [batch, 1]",
        ),
        (_req([1, 2], [1]), "input 'class_label' has batch 1, the request's other inputs 2"),
        (_req([1], [10]), "input 'class_label' is 10, outside [0, 9]"),
        (_req([1], [-1]), "input 'class_label' is -1, outside [0, 9]"),
        (_req([-3], [1]), "input 'seed' must be >= 0"),
        (_req([1], [1], num_steps=np.array([[20]])), "input 'num_steps' is 20, but the served schedule has 4 steps"),
        (_req([1], [1], cfg_scale=np.array([[np.nan]], np.float32)), "input 'cfg_scale' must be one finite number"),
        (_req([1], [1], cfg_scale=np.array([[-2.0]], np.float32)), "input 'cfg_scale' must be >= 0"),
        (_req([1, 2, 3, 4, 5], [1, 2, 3, 4, 5]), "the request holds 5 images, more than the 4 one loop takes"),
        (_req([1], [1]) | {"prompt": np.array([[1]])}, "unknown inputs ['prompt']"),
    ],
    ids=[
        "no-seed",
        "no-label",
        "dtype",
        "shape",
        "batch-mismatch",
        "label-high",
        "label-low",
        "seed",
        "steps",
        "cfg-nan",
        "cfg-neg",
        "too-many",
        "unknown",
    ],
)
def test_bad_request_gets_its_error_and_the_others_run(service, request_, message):
    out = service.run([_req([5], [2]), request_, _req([6], [3], num_steps=np.array([[4]]))])
    assert isinstance(out[1], InputError) and message in str(out[1]), out[1]
    assert "\n" not in str(out[1])
    assert out[0].shape == out[2].shape == (1, 2, 8, 8)


def test_max_images_beyond_the_profile_is_refused(served_engine):
    with pytest.raises(ConfigError, match="does not fit the folder's batch profile"):
        SamplerService(served_engine, max_images=5)


def test_manifest_digest(served_engine):
    check_manifest_digest(served_engine, None)
    with pytest.raises(ArtifactError, match=r"manifest .*manifest.json fails its checksum"):
        check_manifest_digest(served_engine, "0" * 64)
