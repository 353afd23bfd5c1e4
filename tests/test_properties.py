"""Property tests: random tiny DiTs and random valid schedules."""

from __future__ import annotations

import json

import torch
from helpers import dit_roundings, fp32_atol, randomize_
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import harmonica_compile as hc
from harmonica_compile.models.dit import DiT
from harmonica_compile.passes import check_graph
from harmonica_compile.reference import HookCachedModel
from harmonica_compile.sampling import DDIMSampler
from harmonica_compile.training import TrainConfig

SETTINGS = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


@st.composite
def configs(draw):
    heads = draw(st.sampled_from([1, 2, 4]))
    return {
        "input_size": 8,
        "patch_size": draw(st.sampled_from([2, 4])),
        "in_channels": draw(st.integers(1, 3)),
        "hidden_size": heads * draw(st.sampled_from([8, 16])),
        "depth": draw(st.integers(1, 3)),
        "num_heads": heads,
        "mlp_ratio": draw(st.sampled_from([1.0, 2.0, 4.0])),
        "num_classes": draw(st.integers(2, 5)),
        "learn_sigma": draw(st.booleans()),
    }


@st.composite
def masks(draw, num_sites):
    steps = draw(st.integers(2, 5))
    rows = [[True] * num_sites]
    rows += [draw(st.lists(st.booleans(), min_size=num_sites, max_size=num_sites)) for _ in range(steps - 1)]
    return rows


@SETTINGS
@given(config=configs(), data=st.data(), batch=st.integers(1, 3), seed=st.integers(0, 1000))
def test_cached_model_equals_forward_hooks(config, data, batch, seed):
    """Both models are fed the hooks' latents. One forward rounds at most R times along its longest
    chain (helpers.dit_roundings of this config); step i also reads values cached in earlier steps,
    each the end of an earlier forward's chain, so it is within ``fp32_atol(out, (i + 1) * R)``."""
    model = randomize_(DiT(**config), seed).eval()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config["in_channels"], 8, 8, generator=gen)
    y = torch.randint(0, config["num_classes"] + 1, (batch,), generator=gen)
    cm = hc.prepare(model, (x, torch.full((batch,), 10), y))
    assert cm.num_sites == 2 * config["depth"]
    mask = data.draw(masks(cm.num_sites))
    schedule = hc.CacheSchedule(mask, cm.site_names)
    cached = hc.optimize(cm, schedule=schedule)
    for g in cached.graphs:  # every specialized graph passes lint and our invariants
        check_graph(g, pass_name="property-test")
    hidden, patch = config["hidden_size"], config["patch_size"]
    rounds = dit_roundings(
        hidden=hidden,
        depth=config["depth"],
        mlp_hidden=int(hidden * config["mlp_ratio"]),
        tokens=(8 // patch) ** 2,
        head_dim=hidden // config["num_heads"],
        patch_in=config["in_channels"] * patch**2,
    )
    sampler = DDIMSampler(schedule.num_steps)
    hooks = HookCachedModel(model, schedule)
    xa = x
    try:
        for i, t in enumerate(sampler.timesteps):
            tt = torch.full((batch,), t)
            with torch.no_grad():
                a, b = model(xa, tt, y), cached(xa, tt, y)
            assert (a - b).abs().max() <= fp32_atol(a, (i + 1) * rounds)
            xa = sampler.step(a[:, : config["in_channels"]], i, xa)
    finally:
        hooks.close()


@SETTINGS
@given(
    sites=st.lists(
        st.from_regex(r"[a-z]{1,6}(\.[0-9]{1,2}\.[a-z]{1,5})?", fullmatch=True), min_size=1, max_size=6, unique=True
    ),
    data=st.data(),
    with_ts=st.booleans(),
)
def test_schedule_json_round_trip_is_exact(sites, data, with_ts):
    mask = data.draw(masks(len(sites)))
    ts = (
        data.draw(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=len(mask), max_size=len(mask)))
        if with_ts
        else None
    )
    s = hc.CacheSchedule(mask, sites, ts, meta={"method": "x", "n": data.draw(st.integers())})
    back = hc.CacheSchedule.from_json(json.loads(json.dumps(s.to_json())))
    assert back == s and back.meta == s.meta and back.timesteps == s.timesteps


@SETTINGS
@given(target=st.floats(0.01, 0.9), lr=st.floats(1e-4, 1.0), steps=st.integers(11, 50), seed=st.integers(0, 99))
def test_train_config_json_round_trip(target, lr, steps, seed):
    cfg = TrainConfig(target_cur=target, lr=lr, num_steps=steps, seed=seed)
    assert TrainConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
