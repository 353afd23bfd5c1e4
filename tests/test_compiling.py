"""CachedModel(compile=True): the same trajectory as eager through torch.compile'd step graphs,
compile cost recorded per graph apart from the runs, and an eager fallback when compiling fails."""

from __future__ import annotations

import pytest
import torch
from helpers import fp32_atol, ref_inputs, tiny_reference_dit, tiny_roundings
from torch import fx

import harmonica_compile as hc
from harmonica_compile import CacheSchedule
from harmonica_compile.compiling import StepCompiler
from harmonica_compile.sampling.ddim import DDIMSampler


def _trajectory(model, x, y, sampler, xs=None):
    """DDIM from ``x``; given ``xs``, step i is fed ``xs[i]`` (teacher forcing, as in
    test_cached_model): two models then differ by their own roundings, not by a drifted latent."""
    outs, seen = [], []
    with torch.no_grad():
        for i, t in enumerate(sampler.timesteps):
            x = x if xs is None else xs[i]
            seen.append(x)
            out = model(x, torch.full((x.shape[0],), int(t), dtype=torch.long), y)
            outs.append(out)
            x = sampler.step(out[:, : x.shape[1]], i, x)
    return outs, seen


def test_compiled_schedule_follows_the_eager_trajectory():
    """FORA(2) over 4 DDIM steps, eager against compiled, both fed eager's latents. Inductor fuses
    and reorders the same float32 operations, so a forward's output differs by at most
    ``fp32_atol(out, R)`` (R = one forward's roundings); a step reading the cache extends its chain
    by the forwards before it, so step i is within ``fp32_atol(out, (i + 1) * R)``."""
    model = tiny_reference_dit()
    x, t, y = ref_inputs(2)
    cm = hc.prepare(model, (x, t, y))
    schedule = CacheSchedule.fora(cm.site_names, 4, 2)
    eager = hc.optimize(cm, schedule=schedule)
    compiled = hc.optimize(cm, schedule=schedule, compile=True)
    assert "compiled" in repr(compiled) and compiled.compile_seconds == 0.0

    seconds = compiled.warmup((x, t, y))
    assert sorted(seconds) == [0, 1] and all(s > 0 for s in seconds.values())
    sampler = DDIMSampler(4)
    ref, xs = _trajectory(eager, x, y, sampler)
    ran, run = [], compiled.compiler.run
    compiled.compiler.run = lambda g, gm, inputs: ran.append(g) or run(g, gm, inputs)
    got, _ = _trajectory(compiled, x, y, sampler, xs=xs)
    assert ran == [0, 1, 0, 1], "every step ran its graph through the compiler"
    r = tiny_roundings("reference-dit")
    for i, (a, b) in enumerate(zip(ref, got, strict=True)):
        assert (a - b).abs().max() <= fp32_atol(a, (i + 1) * r), f"step {i}"

    report = compiled.compile_report()
    assert [(r["graph"], r["device"], r["compiles"], r["fell_back"]) for r in report] == [
        (0, "cpu", 1, None),
        (1, "cpu", 1, None),
    ], "warm-up compiled each graph once; the run at the same batch compiled nothing more"
    assert compiled.compile_seconds == pytest.approx(sum(seconds.values()))


class _TupleOut(torch.nn.Module):
    """Returns a tuple, as every step graph does."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x):
        return (torch.nn.functional.gelu(self.lin(x)),)


def test_a_graph_whose_compile_fails_runs_eagerly_and_says_why():
    """A C++ compiler that does not exist makes inductor fail on the CPU: the graph runs eagerly
    (the same function: bit-identical outputs), one warning names the graph, the record keeps why."""
    gm = fx.symbolic_trace(_TupleOut())
    x = torch.randn(3, 8)
    compiler = StepCompiler(options={"cpp.cxx": ("no-such-c++-compiler",)})
    with pytest.warns(RuntimeWarning, match="step graph 5.*running it eagerly"):
        out = compiler.run(5, gm, [x])
    assert torch.equal(out[0], gm(x)[0])
    record = compiler.records[(5, "cpu")]
    assert record.fell_back and record.compiles == 0
    assert torch.equal(compiler.run(5, gm, [x])[0], gm(x)[0])  # stays eager, no second attempt
