"""diffusers: accelerated DiT / PixArt pipelines equal forward-hook caching of the same schedule."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from helpers import fp32_atol, output_tensor, randomize_, tiny_roundings

import harmonica_compile as hc
from harmonica_compile.errors import ConfigError, ScheduleError
from harmonica_compile.integrations.diffusers import accelerate, spec_from_folder, spec_from_module
from harmonica_compile.reference import HookCachedModel
from harmonica_compile.training import train_schedule

diffusers = pytest.importorskip("diffusers")


def _vae():
    return diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(8,),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=8,
    ).eval()


def _dit_pipe(seed=0):
    torch.manual_seed(seed)
    transformer = diffusers.DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=1000,
        norm_num_groups=1,
    )
    randomize_(transformer, seed).eval()
    return diffusers.DiTPipeline(transformer=transformer, vae=_vae(), scheduler=diffusers.DDIMScheduler())


def _schedule(pipe, steps, sites, seed=0):
    pipe.scheduler.set_timesteps(steps)
    ts = [float(t) for t in pipe.scheduler.timesteps]
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(steps, len(sites), generator=gen) > 0.4
    mask[0] = True
    return hc.CacheSchedule(mask.tolist(), sites, ts)


def _sites(transformer, inputs):
    return hc.find_cache_sites(transformer, inputs)


DIT_INPUTS = {
    "hidden_states": torch.randn(2, 4, 8, 8),
    "timestep": torch.tensor([500, 500]),
    "class_labels": torch.tensor([1, 1000]),
}


def _run_dit(pipe, labels, steps=4, seed=0, **kw):
    return pipe(
        class_labels=labels,
        num_inference_steps=steps,
        guidance_scale=4.0,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
        **kw,
    ).images


@contextlib.contextmanager
def _transformer_calls(pipe, feed=None):
    """Record every call of ``pipe.transformer`` as (latent input, other inputs, output). Given
    ``feed`` (an earlier recording), call k is fed ``feed[k]``'s latent instead of the pipeline's
    own (teacher forcing): two transformers then see the same inputs at every step, and their
    outputs differ by their own roundings only, not by trajectories that drifted apart through the
    sampler, guidance and the VAE (which are the pipeline's own code, unchanged by ``accelerate``)."""
    calls = []

    def pre(module, args, kwargs):
        return None if feed is None else ((feed[len(calls)][0], *args[1:]), kwargs)

    def post(module, args, kwargs, out):
        calls.append((args[0].clone(), dict(kwargs), output_tensor(out).detach().clone()))

    handles = [
        pipe.transformer.register_forward_pre_hook(pre, with_kwargs=True),
        pipe.transformer.register_forward_hook(post, with_kwargs=True),
    ]
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


def _same(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _assert_same_calls(ref, got, rounds, steps):
    """The pipeline made the same calls (the same latents, timesteps and conditions, exactly), and
    call k, step ``k % steps`` of its run, gave the same output: it reads values cached in earlier
    steps of the run, so its chain is at most ``k % steps + 1`` forwards of ``rounds`` roundings:
    within ``fp32_atol(out, (k % steps + 1) * rounds)``. Returns those tolerances."""
    assert len(got) == len(ref)
    atols = []
    for k, ((x, kw, a), (x_got, kw_got, b)) in enumerate(zip(ref, got, strict=True)):
        assert torch.equal(x, x_got) and _same(kw, kw_got)
        atols.append(fp32_atol(a, (k % steps + 1) * rounds))
        assert (a - b).abs().max() <= atols[-1], k
    return atols


def _assert_caching_matters(transformer, ref, atols):
    """Full compute on the same inputs differs from the cached outputs by more than the tolerance
    somewhere (so the comparison above can fail)."""
    with torch.no_grad():
        full = [output_tensor(transformer(x, **kw)) for x, kw, _ in ref]
    assert any((f - a).abs().max() > atol for f, (_, _, a), atol in zip(full, ref, atols, strict=True))


def test_accelerated_dit_pipeline_equals_forward_hooks():
    """Per transformer call, teacher-forced (see _transformer_calls and _assert_same_calls), with
    one diffusers-DiT forward at 4859 roundings (helpers.dit_roundings: hidden 16, 16 tokens)."""
    pipe = _dit_pipe()
    schedule = _schedule(pipe, 4, _sites(pipe.transformer, DIT_INPUTS))
    assert 0 < schedule.cur < 1
    hooks = HookCachedModel(pipe.transformer, schedule)
    with _transformer_calls(pipe) as ref:
        _run_dit(pipe, [1, 2, 3])
        _run_dit(pipe, [4], seed=1)
    hooks.close()
    full = _run_dit(pipe, [1, 2, 3])
    handle = accelerate(pipe, schedule)
    assert pipe.transformer.config.in_channels == 4 and pipe.transformer.dtype == torch.float32
    with _transformer_calls(pipe, feed=ref) as got:
        _run_dit(pipe, [1, 2, 3])
        _run_dit(pipe, [4], seed=1)  # two consecutive calls
    atols = _assert_same_calls(ref, got, tiny_roundings("diffusers-dit"), steps=4)
    assert pipe.transformer is handle.original  # accelerated in place: the pipeline keeps its module
    handle.undo()
    _assert_caching_matters(handle.original, ref, atols)  # the schedule really caches
    assert isinstance(pipe.transformer, diffusers.DiTTransformer2DModel)
    assert "forward" not in vars(pipe.transformer) and "set_timesteps" not in vars(pipe.scheduler)
    # exact: the restored pipeline runs the same ops on the same inputs in this process as `full`
    np.testing.assert_array_equal(_run_dit(pipe, [1, 2, 3]), full)


def test_schedule_for_another_step_count_fails_before_denoising():
    pipe = _dit_pipe()
    schedule = _schedule(pipe, 4, _sites(pipe.transformer, DIT_INPUTS))
    calls = []
    pipe.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    message = "asks for 5 denoising steps but the schedule was made for 4"
    with accelerate(pipe, schedule), pytest.raises(ScheduleError, match=message):
        _run_dit(pipe, [1], steps=5)
    assert calls == []


def test_schedule_without_timesteps_is_refused():
    pipe = _dit_pipe()
    sites = _sites(pipe.transformer, DIT_INPUTS)
    with pytest.raises(ScheduleError, match="must carry its timesteps"):
        accelerate(pipe, hc.CacheSchedule.fora(sites, 4, 2))


# ---------------------------------------------------------------------------------------------- PixArt
def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "</s>", "<unk>", "a", "red", "blue", "cat", "dog", "photo", "of"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=16
    )


def _pixart_pipe(seed=0, kind="alpha"):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    encoder = T5EncoderModel(T5Config(vocab_size=10, d_model=12, d_kv=4, d_ff=16, num_layers=1, num_heads=2)).eval()
    transformer = diffusers.PixArtTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        cross_attention_dim=16,
        caption_channels=12,
        norm_num_groups=1,
    )
    randomize_(transformer, seed).eval()
    pipeline = diffusers.PixArtAlphaPipeline if kind == "alpha" else diffusers.PixArtSigmaPipeline
    return pipeline(
        tokenizer=_tokenizer(),
        text_encoder=encoder,
        vae=_vae(),
        transformer=transformer,
        scheduler=diffusers.DPMSolverMultistepScheduler(),
    )


def _run_pixart(pipe, prompts, steps=4, seed=0, n=1, height=8, width=8):
    return pipe(
        prompts,
        num_inference_steps=steps,
        guidance_scale=4.5,
        num_images_per_prompt=n,
        height=height,
        width=width,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
        clean_caption=False,
        max_sequence_length=16,
        use_resolution_binning=False,
    ).images


PIXART_INPUTS = {
    "hidden_states": torch.randn(2, 4, 8, 8),
    "encoder_hidden_states": torch.randn(2, 16, 12),
    "timestep": torch.tensor([500, 500]),
    "added_cond_kwargs": {"resolution": None, "aspect_ratio": None},
}


@pytest.mark.parametrize("kind", ["alpha", "sigma"])
def test_accelerated_pixart_pipeline_equals_forward_hooks(kind):
    """Per transformer call, teacher-forced (see _transformer_calls and _assert_same_calls), with
    one PixArt forward at 5049 roundings (helpers.dit_roundings: hidden 16, 16 image and 16 text
    tokens)."""
    pipe = _pixart_pipe(kind=kind)
    sites = _sites(pipe.transformer, PIXART_INPUTS)
    assert len(sites) == 6  # attn1, attn2, ff per block
    schedule = _schedule(pipe, 4, sites, seed=3)
    hooks = HookCachedModel(pipe.transformer, schedule)
    with _transformer_calls(pipe) as ref:
        _run_pixart(pipe, ["a red cat"], n=2)
        _run_pixart(pipe, ["a blue dog", "a photo of a cat"], seed=1)
    hooks.close()
    with accelerate(pipe, schedule) as handle, _transformer_calls(pipe, feed=ref) as got:
        _run_pixart(pipe, ["a red cat"], n=2)
        _run_pixart(pipe, ["a blue dog", "a photo of a cat"], seed=1)
    atols = _assert_same_calls(ref, got, tiny_roundings("pixart-alpha"), steps=4)
    _assert_caching_matters(handle.original, ref, atols)


def test_training_through_diffusers_with_precomputed_prompt_embeddings():
    pipe = _pixart_pipe()
    prompts = ["a red cat", "a blue dog"]
    embeds = []
    for p in [*prompts, ""]:
        e, m, _, _ = pipe.encode_prompt(
            p, do_classifier_free_guidance=False, max_sequence_length=16, clean_caption=False
        )
        embeds.append((e, m))
    spec = spec_from_module(pipe.transformer, scheduler=pipe.scheduler, conditions=embeds[:2], null_condition=embeds[2])
    result = train_schedule(
        spec, num_steps=4, target_cur=0.25, iterations=2, batch_size=2, lambda_every=1, progress=False
    )
    assert result.schedule.cur == 0.25
    pipe.scheduler.set_timesteps(4)
    assert list(result.schedule.timesteps) == [float(t) for t in pipe.scheduler.timesteps]
    with accelerate(pipe, result.schedule):  # the trained schedule runs in the pipeline
        images = _run_pixart(pipe, ["a red cat"])
    assert images.shape == (1, 8, 8, 3)


def test_training_a_diffusers_dit_with_its_ddim_scheduler():
    pipe = _dit_pipe()
    spec = spec_from_module(pipe.transformer, scheduler=pipe.scheduler)
    assert spec.num_classes == 1000 and spec.null_class == 1000
    result = train_schedule(spec, method="l2c", num_steps=4, target_cur=0.5, iterations=2, batch_size=2, progress=False)
    with accelerate(pipe, result.schedule):
        assert _run_dit(pipe, [3]).shape == (1, 8, 8, 3)


def test_text_model_without_conditions_says_what_to_pass():
    pipe = _pixart_pipe()
    with pytest.raises(ConfigError, match="text-conditioned: pass conditions="):
        spec_from_module(pipe.transformer)


def test_local_folder_loads_without_network(tmp_path):
    pipe = _dit_pipe()
    pipe.save_pretrained(tmp_path / "dit")
    spec = spec_from_folder(tmp_path / "dit")
    assert spec.kind == "diffusers-dit" and spec.latent_shape == (4, 8, 8)
    from harmonica_compile.models.registry import load_model

    assert load_model(str(tmp_path / "dit")).num_classes == 1000
