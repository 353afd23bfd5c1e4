"""diffusers: drop-in acceleration of pipelines, training through diffusers, loading local folders.

- :func:`accelerate(pipe, schedule) <accelerate>` installs a schedule on the pipeline's live
  transformer and can undo it (:class:`AcceleratedTransformer`): the pipeline keeps its own
  module, so saving, loading, moves and every attribute work as without us. The transformer's
  forward finds the step from the timestep the pipeline passes (each pipeline call is a new
  sampling run) and runs graphs captured with exactly the arguments the pipeline uses
  (``return_dict=False``, attention masks, CFG batches), per input shape, captured again when the
  model changes. The scheduler is checked as soon as the pipeline sets its timesteps, so a
  schedule made for another step count fails before any denoising step runs.
  ``hc.optimize(transformer, example, schedule=...)`` of a diffusers model installs the same way
  and returns the transformer, so ``pipe.transformer = hc.optimize(pipe.transformer, ...)`` works
  like the ``torch.compile`` form.
- :func:`spec_from_module` describes a diffusers transformer for router training: class labels
  for ``DiTTransformer2DModel``, prompt embeddings (computed once, reused) for PixArt.
- :func:`spec_from_folder` loads a local diffusers folder (a pipeline or a transformer) with
  ``local_files_only=True``: never a hub download.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, InputError, ScheduleError
from ..schedule import CacheSchedule, same_timestep

__all__ = [
    "SCHEDULE_FILE",
    "AcceleratedTransformer",
    "accelerate",
    "install",
    "remove_acceleration",
    "spec_from_folder",
    "spec_from_module",
    "text_conditions",
]


#: The schedule's file name inside a saved transformer folder (``save_pretrained`` writes it).
SCHEDULE_FILE = "harmonica_schedule.json"
#: Input shapes kept captured per model state (like a compiler's recompilation cache).
MAX_SHAPES = 4
_ATTR = "_harmonica_acceleration"

log = logging.getLogger("harmonica_compile")


def _model_state(module: nn.Module) -> tuple[Any, ...]:
    """What a capture depends on in the live model: every parameter and buffer (identity, dtype,
    device, in-place version) and the attention processors (``set_attn_processor``,
    ``fuse_qkv_projections`` and LoRA all change one of them)."""
    tensors = tuple(
        (name, id(t), t.dtype, t.device, t._version)
        for name, t in (*module.named_parameters(), *module.named_buffers())
    )
    processors = tuple(
        (name, type(m.processor).__name__, id(m.processor))
        for name, m in module.named_modules()
        if getattr(m, "processor", None) is not None
    )
    return tensors, processors


def _what_changed(old: tuple[Any, ...], new: tuple[Any, ...]) -> str:
    if old[1] != new[1]:
        return "its attention processors changed"
    before = {n: (d, dev) for n, _i, d, dev, _v in old[0]}
    after = {n: (d, dev) for n, _i, d, dev, _v in new[0]}
    if before.keys() != after.keys():
        return f"its parameters changed ({len(before)} -> {len(after)} tensors: modules added or fused)"
    moved = {after[n] for n in after if after[n] != before[n]}
    if moved:
        return "it moved to " + ", ".join(f"{d} on {dev}" for d, dev in sorted(moved, key=str))
    return "its parameters were edited or replaced"


@contextlib.contextmanager
def _layerwise_casting_off(module: nn.Module) -> Any:
    """diffusers' layerwise casting (``enable_layerwise_casting``) casts each layer's weights to the
    compute dtype in a hook around its forward, which torch.export cannot trace. For a capture the
    hooked layers are cast to the compute dtype once and the hooks do nothing; afterwards the layers
    go back to the storage dtype. The graphs keep their weights in the compute dtype (the cast is
    the one the hook makes, so the values are the same), so fp8 storage saves no memory while
    accelerated."""
    hooked = []
    for sub in module.modules():
        registry = getattr(sub, "_diffusers_hook", None)
        hook = registry.get_hook("layerwise_casting") if registry is not None else None
        if hook is not None and getattr(hook, "fn_ref", None) is not None:
            hooked.append((sub, hook, hook.fn_ref.pre_forward, hook.fn_ref.post_forward))
    try:
        for sub, hook, _pre, _post in hooked:
            # the registry calls these references around the layer's forward
            hook.fn_ref.pre_forward = lambda m, *args, **kwargs: (args, kwargs)
            hook.fn_ref.post_forward = lambda m, output: output
            sub.to(dtype=hook.compute_dtype)
        yield
    finally:
        for sub, hook, pre, post in hooked:
            hook.fn_ref.pre_forward, hook.fn_ref.post_forward = pre, post
            sub.to(dtype=hook.storage_dtype)


def _shapes_text(key: Any) -> str:
    """The tensor inputs' shapes of an input key, batch left out: ``[4x16x16, 16x12, -, -]``."""
    parts = ["x".join(str(d) for d in e[0]) or "scalar" for e in key[1] if isinstance(e, tuple) and len(e) == 3]
    return "[" + ", ".join(parts) + "] per sample"


class AcceleratedTransformer:
    """A cache schedule installed on a live diffusers transformer.

    The transformer stays the pipeline's own module (so ``save_pretrained``, ``from_pretrained``,
    ``.to()``, ``config``, ``dtype``, ``device`` and every other pipeline API see the real model);
    its ``forward`` runs the schedule over graphs captured from it on first use, one set per input
    shape (at most :data:`MAX_SHAPES`, least recently used dropped), and captured again whenever the
    model changes (a move to another dtype or device, new attention processors, fused projections,
    LoRA or parameter edits), with a log line naming the change. ``save_pretrained`` of the
    transformer also writes the schedule beside its weights (:data:`SCHEDULE_FILE`).
    """

    def __init__(
        self,
        transformer: nn.Module,
        schedule: CacheSchedule,
        *,
        site_rules: Any = None,
        max_shapes: int = MAX_SHAPES,
        compile: bool = False,
        dtype: str | torch.dtype | None = None,
    ):
        if schedule.timesteps is None:
            raise ScheduleError(
                "a schedule for a pipeline must carry its timesteps (the step is found from the timestep the "
                "pipeline passes); train it with the pipeline's scheduler or use schedule.with_timesteps(...)"
            )
        if getattr(transformer, _ATTR, None) is not None:
            raise ConfigError(
                f"this {type(transformer).__name__} is already accelerated; call undo() (or remove_acceleration) first"
            )
        self.transformer = transformer
        self.schedule = schedule
        self.site_rules = site_rules
        self.max_shapes = max_shapes
        #: Whether each capture's step graphs run through ``torch.compile`` (compiled on first use).
        self.compile = compile
        #: The token matmuls' dtype in each capture's graphs (``None``: fp32; see CachedModel's ``dtype=``).
        self.dtype = dtype
        self._captures: OrderedDict[Any, Any] = OrderedDict()
        self._state: tuple[Any, ...] | None = None
        #: Captures made so far (each one a torch.export of the transformer and its passes).
        self.captures = 0
        object.__setattr__(transformer, _ATTR, self)
        object.__setattr__(transformer, "forward", self.forward)
        object.__setattr__(transformer, "save_pretrained", self.save_pretrained)

    # ------------------------------------------------------------------ capture
    _HOOKS = ("_forward_pre_hooks", "_forward_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks_with_kwargs")

    @contextlib.contextmanager
    def _bare(self) -> Any:
        """The transformer with its own forward and without the hooks on it, for torch.export to
        trace: hooks registered on the transformer run around the accelerated call, not inside it."""
        module = self.transformer
        saved = module.__dict__.pop("forward")
        hooks = {name: getattr(module, name).copy() for name in self._HOOKS}
        for name in self._HOOKS:
            getattr(module, name).clear()
        try:
            with _layerwise_casting_off(module):
                yield module
        finally:
            object.__setattr__(module, "forward", saved)
            for name, value in hooks.items():
                getattr(module, name).update(value)

    @staticmethod
    def _input_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        import torch.utils._pytree as pytree

        leaves, spec = pytree.tree_flatten((args, kwargs))
        shapes = tuple(
            (tuple(x.shape[1:]) if x.ndim else (), x.dtype, x.device) if isinstance(x, torch.Tensor) else x
            for x in leaves
        )
        return str(spec), shapes

    def _cached(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        state = _model_state(self.transformer)
        if state != self._state:
            if self._state is not None and self._captures:
                log.info("harmonica-compile: %s since capture; capturing again", _what_changed(self._state, state))
            self._captures.clear()
            self._state = state
        key = self._input_key(args, kwargs)
        cached = self._captures.get(key)
        if cached is not None:
            self._captures.move_to_end(key)
            return cached
        if self._captures:
            log.info("harmonica-compile: new input shapes %s; capturing graphs for them", _shapes_text(key))
        cached = self._capture(args, kwargs)
        self._state = _model_state(self.transformer)  # capture casts layerwise-cast layers and back
        self.captures += 1
        self._captures[key] = cached
        while len(self._captures) > self.max_shapes:
            dropped, _ = self._captures.popitem(last=False)
            log.info(
                "harmonica-compile: keeping %d input shapes; dropped the graphs for %s",
                self.max_shapes,
                _shapes_text(dropped),
            )
        return cached

    def _capture(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A CachedModel of the schedule over graphs captured with these inputs."""
        from ..cacheable import prepare
        from ..cached_model import CachedModel

        with self._bare() as module:
            cacheable = prepare(module, (args, kwargs), site_rules=self.site_rules)
            return CachedModel(cacheable, self.schedule, compile=self.compile, dtype=self.dtype)

    def seed(self, example_inputs: Any, cached: Any) -> None:
        """Keep ``cached`` (captured by ``optimize`` from ``example_inputs``) as the first capture."""
        if isinstance(example_inputs, dict):
            args, kwargs = (), example_inputs
        elif (
            isinstance(example_inputs, tuple)
            and len(example_inputs) == 2
            and isinstance(example_inputs[0], tuple)
            and isinstance(example_inputs[1], dict)
        ):
            args, kwargs = example_inputs
        else:
            args, kwargs = tuple(example_inputs), {}
        self._state = _model_state(self.transformer)
        self._captures[self._input_key(args, kwargs)] = cached
        self.captures += 1

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._cached(args, kwargs)(*args, **kwargs)

    def reset(self) -> None:
        """Start a new sampling run in every captured shape."""
        for cached in self._captures.values():
            cached.reset()

    def save_pretrained(self, save_directory: str | os.PathLike[str], *args: Any, **kwargs: Any) -> Any:
        """The transformer's own ``save_pretrained``, then the schedule beside its weights."""
        result = type(self.transformer).save_pretrained(self.transformer, save_directory, *args, **kwargs)
        self.schedule.save(Path(save_directory) / SCHEDULE_FILE)
        return result

    def remove(self) -> None:
        """Give the transformer back its own forward and save_pretrained; drop the captured graphs."""
        for name in ("forward", "save_pretrained", _ATTR):
            self.transformer.__dict__.pop(name, None)
        self._captures.clear()


def install(
    transformer: nn.Module,
    schedule: CacheSchedule | str,
    *,
    site_rules: Any = None,
    compile: bool = False,
    dtype: str | torch.dtype | None = None,
) -> AcceleratedTransformer:
    """Install ``schedule`` on a live diffusers transformer (see :class:`AcceleratedTransformer`)."""
    return AcceleratedTransformer(
        transformer, _load_schedule(schedule, None), site_rules=site_rules, compile=compile, dtype=dtype
    )


def remove_acceleration(transformer: nn.Module) -> None:
    """Undo :func:`install` (or ``hc.optimize`` of a diffusers model); a no-op on a plain model."""
    acc = getattr(transformer, _ATTR, None)
    if acc is not None:
        acc.remove()


def _load_schedule(schedule: CacheSchedule | str | os.PathLike[str] | None, pipe: Any) -> CacheSchedule:
    if isinstance(schedule, CacheSchedule):
        return schedule
    if schedule is None:
        root = getattr(pipe, "name_or_path", None) or getattr(getattr(pipe, "config", None), "_name_or_path", None)
        path = Path(str(root)) / "transformer" / SCHEDULE_FILE if root else None
        if path is None or not path.is_file():
            raise ConfigError(
                f"no schedule given and none saved with this pipeline ({path or 'it was not loaded from a folder'}); "
                "pass accelerate(pipe, schedule)"
            )
        return CacheSchedule.load(path)
    path = Path(schedule)
    if path.is_dir():
        path = next((p for p in (path / SCHEDULE_FILE, path / "schedule.json") if p.is_file()), path / SCHEDULE_FILE)
    return CacheSchedule.load(path)


class _Handle:
    """What :func:`accelerate` returns: ``undo()`` restores the pipeline (also as a context manager)."""

    def __init__(self, pipe: Any, acceleration: AcceleratedTransformer, set_timesteps: Any):
        self.pipe = pipe
        self.acceleration = acceleration
        self.original = acceleration.transformer
        self._set_timesteps = set_timesteps

    @property
    def module(self) -> AcceleratedTransformer:
        return self.acceleration

    def undo(self) -> None:
        self.acceleration.remove()
        self.pipe.scheduler.__dict__.pop("set_timesteps", None)

    def __enter__(self) -> _Handle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.undo()


def accelerate(
    pipe: Any,
    schedule: CacheSchedule | str | os.PathLike[str] | None = None,
    *,
    site_rules: Any = None,
    compile: bool = False,
    dtype: str | torch.dtype | None = None,
) -> _Handle:
    """Run ``schedule`` in ``pipe``'s transformer, in place; ``undo()`` on the result removes it.

    ``schedule`` is a :class:`CacheSchedule`, a schedule file or folder, or ``None`` for the one a
    saved accelerated pipeline wrote beside its transformer (``transformer/harmonica_schedule.json``
    of the folder ``from_pretrained`` read). The scheduler is checked as soon as the pipeline sets
    its timesteps, so a schedule for another step count or scheduler fails before any step runs.
    ``compile=True`` runs the step graphs through ``torch.compile`` (each compiled on its first
    call; see :mod:`harmonica_compile.compiling`); ``dtype="bf16"`` runs the transformer's token
    matmuls in bf16 with norms, softmax and adaLN in fp32 (of an fp32 transformer; one already in
    fp16 or bf16 stays as it is).
    """
    schedule = _load_schedule(schedule, pipe)
    transformer = getattr(pipe, "transformer", None)
    if not isinstance(transformer, nn.Module):
        raise ConfigError(f"{type(pipe).__name__} has no transformer module to accelerate")
    if getattr(transformer, _ATTR, None) is not None:
        raise ConfigError("this pipeline is already accelerated; call undo() on the first handle")
    scheduler = pipe.scheduler
    original = scheduler.set_timesteps
    expected = list(schedule.timesteps or ())
    acceleration = AcceleratedTransformer(transformer, schedule, site_rules=site_rules, compile=compile, dtype=dtype)

    def set_timesteps(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        got = [float(t) for t in scheduler.timesteps]
        if len(got) != schedule.num_steps:
            raise ScheduleError(
                f"the pipeline asks for {len(got)} denoising steps but the schedule was made for "
                f"{schedule.num_steps}; pass num_inference_steps={schedule.num_steps} or train a schedule for "
                f"{len(got)} steps"
            )
        if not all(same_timestep(a, b) for a, b in zip(got, expected, strict=True)):
            raise ScheduleError(
                f"the pipeline's scheduler uses timesteps {got[:4]}..., the schedule was made for {expected[:4]}...; "
                "train the schedule with this scheduler"
            )
        acceleration.reset()
        return result

    object.__setattr__(scheduler, "set_timesteps", set_timesteps)
    return _Handle(pipe, acceleration, original)


# ---------------------------------------------------------------------------------------------- training
def text_conditions(
    embeddings: Sequence[tuple[torch.Tensor, torch.Tensor]] | Callable[[int, torch.Generator], Any],
    null: tuple[torch.Tensor, torch.Tensor] | None,
) -> Callable[[int, torch.Generator], tuple[dict[str, Any], dict[str, Any] | None]]:
    """A ``cond_fn`` drawing ``(encoder_hidden_states, encoder_attention_mask)`` pairs from a bank of
    prompt embeddings computed once (or from a callable returning such a pair for a batch)."""

    def pack(pair: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
        # embeddings from a text encoder carry its autograd graph; the router must not see it
        return {"encoder_hidden_states": pair[0].detach(), "encoder_attention_mask": pair[1].detach()}

    def cond_fn(batch: int, gen: torch.Generator) -> tuple[dict[str, Any], dict[str, Any] | None]:
        if callable(embeddings):
            cond = embeddings(batch, gen)
        else:
            idx = torch.randint(0, len(embeddings), (batch,), generator=gen)
            cond = (torch.cat([embeddings[i][0] for i in idx]), torch.cat([embeddings[i][1] for i in idx]))
        nul = (
            None
            if null is None
            else (null[0].expand(batch, *null[0].shape[1:]), null[1].expand(batch, *null[1].shape[1:]))
        )
        return pack(cond), (None if nul is None else pack(nul))

    return cond_fn


def spec_from_module(
    module: nn.Module,
    *,
    name: str | None = None,
    scheduler: Any = None,
    conditions: Any = None,
    null_condition: Any = None,
    cfg_scale: float | None = None,
    steps: int = 20,
) -> Any:
    """A ModelSpec for a diffusers transformer (``DiTTransformer2DModel`` with class labels, or a
    text-conditioned one such as ``PixArtTransformer2DModel`` with ``conditions``)."""
    from ..models.spec import ModelSpec
    from ..sampling import DDIMSampler, DiffusersSampler

    config = getattr(module, "config", None)
    if config is None:
        raise ConfigError(
            f"{type(module).__name__} is neither a reference DiT nor a diffusers model; describe it with "
            "harmonica_compile.models.registry.ModelSpec(...)"
        )
    size = int(config.sample_size)
    latent = (int(config.in_channels), size, size)
    make = None if scheduler is None else (lambda n: DiffusersSampler(scheduler, n))
    cls = type(module).__name__
    if cls == "DiTTransformer2DModel":
        num = int(config.num_embeds_ada_norm)
        return ModelSpec(
            name=name or cls,
            model=module.eval(),
            latent_shape=latent,
            num_classes=num,
            null_class=num,
            kind="diffusers-dit",
            default_steps=steps,
            default_cfg_scale=cfg_scale or 1.5,
            make_sampler=make or DDIMSampler,
        )
    if conditions is None:
        raise ConfigError(
            f"{cls} is text-conditioned: pass conditions= (a list of (embeddings, attention mask) pairs computed "
            "once from your prompts, or a callable) and null_condition= (the empty prompt's pair) for CFG"
        )
    if make is None:
        from diffusers import DPMSolverMultistepScheduler

        make = lambda n: DiffusersSampler(DPMSolverMultistepScheduler(), n)
    return ModelSpec(
        name=name or cls,
        model=module.eval(),
        latent_shape=latent,
        kind="diffusers-text",
        default_steps=steps,
        default_cfg_scale=cfg_scale or (4.5 if null_condition is not None else 1.0),
        make_sampler=make,
        cond_fn=text_conditions(conditions, null_condition),
        extra={"call_kwargs": {"added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}},
    )


def spec_from_folder(path: str | os.PathLike[str]) -> Any:
    """A ModelSpec from a local diffusers folder: a pipeline (``model_index.json``) or a transformer
    (``config.json``). Only files on disk are read."""
    path = Path(path)
    try:
        import diffusers
    except ImportError as e:
        raise ConfigError(
            "loading a diffusers folder needs diffusers: pip install 'harmonica-compile[diffusers]'"
        ) from e
    if (path / "model_index.json").is_file():
        pipe = diffusers.DiffusionPipeline.from_pretrained(path, local_files_only=True)
        if not hasattr(pipe, "transformer"):
            raise InputError(f"{path}: the pipeline {type(pipe).__name__} has no transformer")
        if type(pipe.transformer).__name__ != "DiTTransformer2DModel":
            raise InputError(
                f"{path}: {type(pipe.transformer).__name__} is text-conditioned; use the Python API with "
                "spec_from_module(transformer, conditions=...) (prompts must be encoded first)"
            )
        return spec_from_module(pipe.transformer, name=str(path), scheduler=pipe.scheduler)
    if (path / "config.json").is_file():
        import json

        cls_name = json.loads((path / "config.json").read_text()).get("_class_name")
        cls = getattr(diffusers, str(cls_name), None)
        if cls is None:
            raise InputError(f"{path}/config.json names class {cls_name!r}, which diffusers does not have")
        return spec_from_module(cls.from_pretrained(path, local_files_only=True), name=str(path))
    raise InputError(
        f"{path} is a folder but neither a diffusers pipeline (model_index.json) nor a model (config.json)"
    )
