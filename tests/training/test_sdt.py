"""SDT and L2C iterations: whose trajectory they follow, the teacher, the first step, the router."""

from __future__ import annotations

import pytest
import torch
from helpers import fp32_atol, tiny_roundings, tiny_spec

from harmonica_compile.schedule import CacheSchedule
from harmonica_compile.training import Router, TrainConfig, train_schedule
from harmonica_compile.training.controller import CurController
from harmonica_compile.training.distributed import Comm
from harmonica_compile.training.l2c import l2c_iteration
from harmonica_compile.training.runner import StepRunner
from harmonica_compile.training.sdt import sdt_iteration


@pytest.fixture(scope="module")
def setup():
    spec = tiny_spec()
    sampler = spec.sampler(6)
    runner = StepRunner(spec.cacheable(), spec, sampler, cfg_scale=2.0)
    return spec, runner


def _mask(runner, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(6, runner.num_sites, generator=gen) > 0.5
    mask[0] = True
    return mask


def _parts(runner, spec):
    router = Router(6, runner.num_sites)
    opt = torch.optim.AdamW(router.parameters(), lr=0.05, weight_decay=0)
    ctl = CurController(6, runner.num_sites, target_cur=0.5, beta=None, iterations=10, ramp=0.0, decay=0.9)
    noise = spec.noise(2, seed=3)
    cond, null = spec.conditions(2, seed=3)
    return router, opt, ctl, noise, cond, null


def _record_steps(runner, monkeypatch):
    """Record (x, eps) of every sampler step."""
    seen = []
    original = runner.sampler.step

    def step(eps, i, x):
        seen.append((x.clone(), eps.detach().clone()))
        return original(eps, i, x)

    monkeypatch.setattr(runner.sampler, "step", step)
    return seen


def test_sdt_trajectory_follows_the_student(setup, monkeypatch):
    """The trajectory advances with the student's eps: at every recorded x, the eps it stepped with
    is the hard (cached) forward's eps at that x. The student's soft graph is the hard graph's
    function with, per site (4), the mix ``fresh * g + cache * (1 - g)`` (3 roundings) and the STE
    gate ``hard + r - r.detach()``, 0/1 only up to a rounding (2 more); step i reads values cached
    up to i steps before, so its chain is at most (i + 1) * (6139 + 5 * 4) roundings (6139: one
    tiny_spec forward, helpers.dit_roundings), and guidance ``u + 2 (c - u)`` (3 roundings) scales an
    output error by |1 - 2| + |2| = 3."""
    spec, runner = setup
    router, opt, ctl, noise, cond, null = _parts(runner, spec)
    mask = _mask(runner)
    seen = _record_steps(runner, monkeypatch)
    sdt_iteration(runner, router, opt, ctl, Comm(), mask, torch.ones(6), noise, cond, null, ste=True)
    monkeypatch.undo()
    assert len(seen) == 6
    rounds = tiny_roundings("tiny-spec") + 5 * runner.num_sites
    guidance = abs(1 - runner.cfg_scale) + abs(runner.cfg_scale)
    cache, beyond_tolerance_of_teacher = None, []
    for i, (x, eps) in enumerate(seen):
        flat = runner.flat_inputs(x, i, cond, null)
        cache = runner.empty_cache(flat) if cache is None else cache
        out, fresh = runner.hard_step(flat, cache, mask[i])
        runner.refresh(cache, fresh, mask[i])
        atol = guidance * fp32_atol(out, (i + 1) * rounds + 3)
        # the student's forward under STE is the hard forward: its trajectory is the cached one ...
        assert (eps - runner.eps(out, x.shape[1])).abs().max() <= atol, i
        teacher = runner.eps(runner.teacher_step(flat), x.shape[1])
        beyond_tolerance_of_teacher.append(bool((eps - teacher).abs().max() > atol))
    # ... and not the teacher's
    assert any(beyond_tolerance_of_teacher)


def test_l2c_trajectory_is_the_teachers(setup, monkeypatch):
    """Exact: L2C's teacher trajectory and runner.trajectory under the all-compute mask make the same
    hard-graph calls (``where(True, fresh, cache)`` is ``fresh``, whatever the cache), guidance and
    DDIM steps on the same tensors in this process."""
    spec, runner = setup
    router, opt, ctl, noise, cond, null = _parts(runner, spec)
    seen = _record_steps(runner, monkeypatch)
    l2c_iteration(runner, router, opt, ctl, Comm(), _mask(runner), noise, cond, null, True, torch.Generator())
    monkeypatch.undo()
    _, full_states = runner.trajectory(
        noise, cond, null, torch.ones(6, runner.num_sites, dtype=torch.bool), record=True
    )
    for (x, _), state in zip(seen, full_states, strict=True):
        assert torch.equal(x, state.x)


def test_teacher_never_touches_the_cache(setup, monkeypatch):
    spec, runner = setup
    router, opt, ctl, noise, cond, null = _parts(runner, spec)
    calls = []
    original_teacher, original_student = runner.teacher_step, runner.student_step
    last_cache = {}

    def student(flat, cache, gate):
        last_cache["value"] = [c.clone() for c in cache]
        last_cache["ref"] = cache
        return original_student(flat, cache, gate)

    def teacher(flat):
        # the teacher runs the graph without cache inputs; the cache seen by the next student
        # step must hold exactly what the previous refresh stored
        before = [c.clone() for c in last_cache.get("ref", [])]
        out = original_teacher(flat)
        after = list(last_cache.get("ref", []))
        calls.append(all(torch.equal(a, b) for a, b in zip(before, after, strict=True)))
        return out

    monkeypatch.setattr(runner, "teacher_step", teacher)
    monkeypatch.setattr(runner, "student_step", student)
    sdt_iteration(runner, router, opt, ctl, Comm(), _mask(runner), torch.ones(6), noise, cond, null, ste=True)
    assert calls and all(calls)
    names = [n.meta.get("harmonica_input") for n in runner.teacher.graph.nodes if n.op == "placeholder"]
    assert not any(str(n).startswith("cache.") for n in names)


def test_only_the_current_steps_router_row_changes(setup):
    spec, runner = setup
    router, opt, ctl, noise, cond, null = _parts(runner, spec)
    before = router.logits().detach().clone()
    mask = _mask(runner)
    sdt_iteration(runner, router, opt, ctl, Comm(), mask, torch.ones(6), noise, cond, null, ste=True)
    after = router.logits().detach()
    assert torch.equal(before[0], after[0])  # the first step is fixed
    assert (before[1:] != after[1:]).any(dim=1).all()  # every later step took its own optimizer step


def test_first_step_never_caches():
    router = Router(4, 3, init_logit=-5.0)
    assert router.mask()[0].all() and not router.mask()[1:].any()
    assert torch.equal(router.probs()[0], torch.ones(3))
    ctl = CurController(4, 3, target_cur=0.7, beta=None, iterations=1, ramp=0.0, decay=0.9)
    assert ctl.mask(router, 0)[0].all()
    with pytest.raises(Exception, match="first step"):
        CacheSchedule([[False] * 3] * 4, ["a", "b", "c"])


def test_straight_through_gate_is_hard_forward_soft_gradient():
    router = Router(3, 2, init_logit=0.3)
    hard = torch.tensor([True, False])
    g = router.gate(1, hard)
    assert torch.equal(g.detach(), torch.tensor([1.0, 0.0]))
    (g * torch.tensor([2.0, 3.0])).sum().backward()
    r = torch.sigmoid(torch.tensor(0.3))
    torch.testing.assert_close(router.rows[0].grad, torch.tensor([2.0, 3.0]) * r * (1 - r))


@pytest.mark.parametrize("method", ["harmonica", "l2c"])
def test_target_cur_is_reached_exactly(method):
    spec = tiny_spec()
    result = train_schedule(
        spec, method=method, num_steps=6, target_cur=0.5, iterations=3, batch_size=2, lambda_every=2, progress=False
    )
    assert result.schedule.cur == pytest.approx(0.5, abs=1 / (6 * result.schedule.num_sites))
    assert result.schedule.timesteps == tuple(float(t) for t in spec.sampler(6).timesteps)
    assert all(h["cur"] <= 0.5 + 1e-9 for h in result.history)


def test_seeded_runs_are_reproducible():
    spec = tiny_spec()
    a = train_schedule(spec, num_steps=5, target_cur=0.4, iterations=3, batch_size=2, lambda_every=2, progress=False)
    b = train_schedule(spec, num_steps=5, target_cur=0.4, iterations=3, batch_size=2, lambda_every=2, progress=False)
    assert a.schedule == b.schedule
    assert torch.equal(a.logits, b.logits)


def test_fixed_beta_mode_uses_the_threshold():
    spec = tiny_spec()
    result = train_schedule(
        spec,
        config=TrainConfig(num_steps=4, target_cur=None, beta=1e3, iterations=12, batch_size=2, lr=0.5, lambda_every=2),
        progress=False,
    )
    # a huge beta pushes every learned entry below tau: everything after step 0 is cached
    assert result.schedule.cur == pytest.approx(0.75)
