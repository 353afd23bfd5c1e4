"""capture(): one flat graph, dynamic batch, original output structure, clean errors."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    diffusers_dit_inputs,
    fp32_atol,
    output_tensor,
    pixart_inputs,
    ref_inputs,
    tiny_diffusers_dit,
    tiny_pixart,
    tiny_reference_dit,
    tiny_roundings,
)
from torch import nn

from harmonica_compile.cacheable import prepare
from harmonica_compile.capture import capture
from harmonica_compile.errors import CaptureError, HarmonicaError, InputError
from harmonica_compile.passes.remove_assertions import is_assertion


def _batched(inputs, batch):
    def grow(v):
        if isinstance(v, torch.Tensor):
            reps = [batch // v.shape[0] + 1] + [1] * (v.ndim - 1)
            return v.repeat(*reps)[:batch]
        if isinstance(v, dict):
            return {k: grow(x) for k, x in v.items()}
        return v

    if isinstance(inputs, dict):
        return grow(inputs)
    return tuple(grow(v) for v in inputs)


MODELS = {
    "reference-dit": (tiny_reference_dit, ref_inputs),
    "diffusers-dit": (tiny_diffusers_dit, diffusers_dit_inputs),
    "pixart-alpha": (tiny_pixart, pixart_inputs),
}


def _call(model, inputs):
    return model(**inputs) if isinstance(inputs, dict) else model(*inputs)


@pytest.mark.parametrize("example_batch", [1, 2], ids=["example-b1", "example-b2"])
@pytest.mark.parametrize("name", list(MODELS))
def test_capture_matches_eager_at_any_batch(name, example_batch):
    """The captured graph and eager evaluate the same function in float32: within
    ``fp32_atol(out, R)``, R = tiny_roundings(name), one forward's chain (14907 roundings for the
    reference DiT, 4859 / 5049 for the diffusers DiT / PixArt; see helpers.dit_roundings)."""
    make, make_inputs = MODELS[name]
    model = make()
    cap = capture(model, make_inputs(example_batch))
    for batch in (1, 2, 8):
        inputs = _batched(make_inputs(2, seed=batch), batch)
        with torch.no_grad():
            want = output_tensor(_call(model, inputs))
            got = _call(cap, inputs)
        assert type(got) is type(_call(model, inputs))  # the diffusers output object, a tensor, ...
        assert (output_tensor(got) - want).abs().max() <= fp32_atol(want, tiny_roundings(name))


def test_prepare_makes_the_captured_graph_flat_and_clean():
    """capture() runs no pass (torch.export only); prepare()'s pipeline cleans and flattens."""
    raw = capture(tiny_diffusers_dit(), diffusers_dit_inputs())
    assert not raw.is_flat and raw.history == []
    assert any(is_assertion(n) for n in raw.graph_module.graph.nodes)
    cap = prepare(tiny_diffusers_dit(), diffusers_dit_inputs()).captured
    assert cap.is_flat
    graph = cap.graph_module.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    assert cap.input_names == ("hidden_states", "timestep", "class_labels")
    assert len(placeholders) == 3  # cross_attention_kwargs=None, return_dict=True are constants
    assert cap.output_names == ("sample",)
    assert not any(is_assertion(n) for n in graph.nodes)
    assert not any(n.op == "call_module" for n in graph.nodes)  # export's _guards_fn is gone
    assert not any("dropout" in str(n.target) for n in graph.nodes)
    changes = dict(cap.history)
    assert changes["remove_assertions"]["removed"] > 0
    assert changes["remove_eval_dropout"]["removed"] == 4  # attention out + ff, two blocks


def test_capture_keeps_tuple_outputs_with_return_dict_false():
    """Same function, float32: within ``fp32_atol(out, 4859)`` (one diffusers-DiT forward)."""
    model = tiny_diffusers_dit()
    inputs = {**diffusers_dit_inputs(), "return_dict": False}
    cap = capture(model, inputs)
    out = cap(**inputs)
    assert isinstance(out, tuple) and len(out) == 1
    want = model(**inputs)[0]
    assert (out[0] - want).abs().max() <= fp32_atol(want, tiny_roundings("diffusers-dit"))


def test_capture_accepts_positional_keyword_and_mixed_inputs():
    """Same function, float32: within ``fp32_atol(out, 14907)`` (one reference-DiT forward)."""
    model = tiny_reference_dit()
    x, t, y = ref_inputs()
    want = model(x, t, y)
    atol = fp32_atol(want, tiny_roundings("reference-dit"))
    for example in [(x, t, y), {"x": x, "t": t, "y": y}, ((x,), {"t": t, "y": y})]:
        cap = capture(model, example)
        assert (cap(x, t=t, y=y) - want).abs().max() <= atol
        assert (cap(x, t, y) - want).abs().max() <= atol


def test_capture_does_not_touch_the_users_model():
    model = tiny_reference_dit().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {k: p.requires_grad for k, p in model.named_parameters()}
    cap = capture(model, ref_inputs())
    assert model.training  # restored after capturing in eval mode
    assert {k: p.requires_grad for k, p in model.named_parameters()} == grads
    out = cap(*ref_inputs())
    assert not out.requires_grad  # weights are held as detached buffers
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_wrong_inputs_at_call_time_name_the_input():
    cap = capture(tiny_reference_dit(), ref_inputs())
    x, t, y = ref_inputs()
    with pytest.raises(InputError, match=r"input 'x' has shape \[2, 4, 9, 9\], expected \[batch, 4, 8, 8\]"):
        cap(torch.randn(2, 4, 9, 9), t, y)
    with pytest.raises(InputError, match="input 't' has dtype torch.float32, expected torch.int64"):
        cap(x, t.float(), y)
    with pytest.raises(InputError, match="forward"):
        cap(x, t)


def test_model_rejecting_example_inputs_is_a_capture_error_with_the_cause():
    _, t, y = ref_inputs()
    with pytest.raises(CaptureError, match="rejected the example inputs") as info:
        capture(tiny_reference_dit(), (torch.randn(2, 3, 8, 8), t, y))
    assert isinstance(info.value.__cause__, RuntimeError)
    assert isinstance(info.value, HarmonicaError)


class _DataDependent(nn.Module):
    """Branches on a tensor value, like the HarmoniCa reference code's `t[0].item()`."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x, t):
        if t[0].item() > 500:
            return self.lin(x)
        return x


def test_model_export_cannot_capture_says_why():
    with pytest.raises(CaptureError, match=r"torch.export could not capture _DataDependent: .*\.item\(\)"):
        capture(_DataDependent(), (torch.randn(2, 4), torch.tensor([600, 600])))


def test_python_number_timestep_is_refused():
    model = tiny_diffusers_dit()
    inputs = {**diffusers_dit_inputs(), "timestep": 500}
    with pytest.raises(CaptureError, match="Python number 500"):
        capture(model, inputs)


def test_non_module_is_refused():
    with pytest.raises(CaptureError, match="torch.nn.Module"):
        capture(lambda x: x, (torch.randn(2),))  # type: ignore[arg-type]


def test_capture_emits_no_deprecation_warning_of_ours():
    """pytest's config hides Deprecation/FutureWarnings; users see them on every capture."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepare(tiny_diffusers_dit(), diffusers_dit_inputs())
    ours = [w for w in caught if "harmonica_compile" in w.filename]
    assert not ours, [f"{w.filename}:{w.lineno}: {w.message}" for w in ours]
