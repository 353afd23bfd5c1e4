"""``train_schedule``: learn a CacheSchedule with HarmoniCa (SDT + IEPO), L2C, or pick FORA's.

Example (a few iterations on a small random model):
    >>> from harmonica_compile.models.registry import load_model
    >>> spec = load_model("DiT-S/8@16")
    >>> spec.model.blocks = spec.model.blocks[:1]
    >>> result = train_schedule(spec, method="harmonica", num_steps=4, target_cur=0.25, iterations=2,
    ...                         batch_size=1, cfg_scale=1.0, progress=False)
    >>> result.schedule.num_steps, result.schedule.cur
    (4, 0.25)
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..cacheable import CacheableModel
from ..errors import ArtifactError, ConfigError, TrainingError
from ..io import load_safetensors, save_safetensors, tensors_checksum
from ..schedule import CacheSchedule
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .controller import CurController
from .distributed import Comm, init_from_env
from .fora import fora_interval_for
from .iepo import compute_lambda, normalize_lambda
from .l2c import l2c_iteration
from .router import Router
from .runner import StepRunner
from .sdt import sdt_iteration

__all__ = ["TrainResult", "fora_interval_for", "limit_cache_age", "load_routers", "train_schedule"]


@dataclass
class TrainResult:
    schedule: CacheSchedule
    config: TrainConfig
    logits: torch.Tensor
    lam: torch.Tensor
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    threshold_logit: float | None = None
    resumed_from: int | None = None
    #: The refinement search's facts (start, calibration set, errors), when it ran.
    search: dict[str, Any] | None = None

    def save_routers(self, path: str | os.PathLike[str]) -> Path:
        """``routers.safetensors``: the logits ``[T, S]``, lambda ``[T]`` and the settings, no pickle."""
        tensors = {"logits": self.logits, "lambda": self.lam}
        meta = {
            "format": ROUTERS_FORMAT,
            "format_version": "1",
            "checksum": tensors_checksum(tensors),
            "sites": json.dumps(list(self.schedule.sites)),
            "config": json.dumps(self.config.to_json()),
            "threshold_logit": json.dumps(self.threshold_logit),
        }
        return save_safetensors(path, tensors, meta)


ROUTERS_FORMAT = "harmonica-compile/routers"


def load_routers(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``routers.safetensors``: ``logits``, ``lambda``, ``sites``, ``config``; checks format and checksum."""
    tensors, meta = load_safetensors(path, what="routers file")
    if meta.get("format") != ROUTERS_FORMAT:
        raise ArtifactError(f"{path} is not a routers file (format {meta.get('format')!r})")
    if meta.get("format_version") != "1":
        raise ArtifactError(f"{path}: routers format version {meta.get('format_version')!r}, expected 1")
    if meta.get("checksum") != tensors_checksum(tensors):
        raise ArtifactError(f"{path} fails its checksum: the tensors were changed after they were written")
    return {
        "logits": tensors["logits"],
        "lambda": tensors["lambda"],
        "sites": json.loads(meta["sites"]),
        "config": json.loads(meta["config"]),
        "threshold_logit": json.loads(meta["threshold_logit"]),
    }


def _resolve(model: Any, spec: Any) -> tuple[CacheableModel, Any]:
    from ..models.registry import ModelSpec, load_model

    if isinstance(model, ModelSpec):
        return model.cacheable(), model
    if spec is None:
        if isinstance(model, CacheableModel):
            raise ConfigError(
                "training needs to know how to sample the model: pass spec=ModelSpec(...) "
                "(harmonica_compile.models.registry) or the model itself"
            )
        spec = load_model(model)
    spec = load_model(spec)
    return (model if isinstance(model, CacheableModel) else spec.cacheable()), spec


def _batch(spec: Any, size: int, seed: int, comm: Comm, device: torch.device) -> tuple[torch.Tensor, Any, Any]:
    """This process's share of a global batch drawn from ``seed`` (identical on every process)."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((size, *spec.latent_shape), generator=gen)
    if spec.num_classes is not None and spec.cond_fn is None:
        labels = torch.randint(0, spec.num_classes, (size,), generator=gen)
        cond, null = spec.conditions(size, labels=labels)
    else:
        cond, null = spec.conditions(size, seed=seed)
    part = comm.shard(size)

    def take(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v[part].to(device)
        if isinstance(v, dict):
            return {k: take(x) for k, x in v.items()}
        return v

    return noise[part].to(device), take(cond), take(null)


def train_schedule(
    model: Any,
    *,
    spec: Any = None,
    config: TrainConfig | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool = True,
    comm: Comm | None = None,
    stop_after: int | None = None,
    search_checkpoint: str | os.PathLike[str] | None = None,
    extra_starts: dict[str, CacheSchedule] | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train (or, for FORA, pick) a schedule for ``model``; see :class:`TrainConfig` for the options.

    ``model`` is a :class:`~harmonica_compile.models.registry.ModelSpec`, a reference DiT, or a
    :class:`CacheableModel` together with ``spec``. With ``checkpoint`` a checkpoint is written
    every ``checkpoint_every`` iterations; ``resume=True`` continues from it. ``stop_after`` ends
    this run after that many iterations (with a checkpoint), to continue later with ``resume``.

    After training: ``max_cache_age`` caps consecutive cached steps (moving the fewest entries, by
    router logit, so the CUR stays exact), ``forecast`` sets the read branch of cached entries,
    and ``refine="search"`` improves the schedule on the calibration set's true final error
    (:mod:`~harmonica_compile.training.search`), starting from the best of it, FORA, TaylorSeer,
    ``extra_starts`` and a dynamic-programming schedule (checkpointed to ``search_checkpoint``).
    """
    config = (config or TrainConfig()).replace(**overrides) if overrides else (config or TrainConfig())
    cm, spec = _resolve(model, spec)
    sampler = spec.sampler(config.num_steps)
    if sampler.num_steps != config.num_steps:
        raise ConfigError(f"the sampler gives {sampler.num_steps} steps for num_steps={config.num_steps}")
    timesteps = [float(t) for t in sampler.timesteps]
    sites = cm.site_names
    T, S = config.num_steps, len(sites)
    base_meta = {
        "method": config.method,
        "model": spec.name,
        "model_source": spec.extra.get("source", spec.name),
        "target_cur": config.target_cur,
        "tau": config.tau,
        "sampler": getattr(sampler, "name", type(sampler).__name__),
    }

    if config.method in ("fora", "taylorseer"):
        interval = config.fora_interval or fora_interval_for(T, float(config.target_cur))
        if config.max_cache_age is not None and interval - 1 > config.max_cache_age:
            raise ConfigError(
                f"{config.method} with interval {interval} caches {interval - 1} steps in a row, more than "
                f"max_cache_age {config.max_cache_age}; lower the target CUR or raise --max-cache-age"
            )
        if config.method == "fora":
            schedule = CacheSchedule.fora(sites, T, interval, timesteps=timesteps, **base_meta)
        else:
            order = 1 if config.forecast == "taylor1" else 2
            schedule = CacheSchedule.taylorseer(sites, T, interval, order, timesteps=timesteps, **base_meta)
        result = TrainResult(schedule, config, torch.zeros(T, S), torch.zeros(T))
        return _finish(result, spec, config, timesteps, search_checkpoint, resume, progress, extra_starts)

    cfg_scale = spec.default_cfg_scale if config.cfg_scale is None else config.cfg_scale
    if cfg_scale != 1.0 and not spec.supports_cfg:
        raise ConfigError(
            f"cfg_scale {cfg_scale} needs a null class, but model {spec.name!r} has none (no label dropout); "
            "train with cfg_scale=1"
        )
    comm = comm or init_from_env()
    for name in ("batch_size", "lambda_batch"):
        if getattr(config, name) % comm.world_size:
            raise ConfigError(f"{name} {getattr(config, name)} must be a multiple of the {comm.world_size} processes")
    device = next((b.device for b in cm.graph_module.buffers()), torch.device("cpu"))
    runner = StepRunner(cm, spec, sampler, cfg_scale)
    router = Router(T, S, init_logit=config.init_logit, tau=config.tau, clamp=config.clamp).to(device)
    opt = torch.optim.AdamW(router.parameters(), lr=config.lr, weight_decay=0.0)
    controller = CurController(
        T,
        S,
        target_cur=config.target_cur,
        beta=config.beta,
        iterations=config.iterations,
        ramp=config.ramp,
        decay=config.importance_decay,
    )
    lam = normalize_lambda(torch.zeros(T), config.lambda_floor) if config.method == "harmonica" else torch.ones(T)
    lam[0] = 0.0
    history: list[dict[str, Any]] = []
    fingerprint = {"model": spec.name, "sites": list(sites), "timesteps": timesteps}
    start, seconds_before, resumed = 0, 0.0, None
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    if resume:
        if ckpt_path is None:
            raise TrainingError("resume=True needs a checkpoint path")
        state = load_checkpoint(ckpt_path, config=config.to_json(), fingerprint=fingerprint)
        if state["iteration"] > config.iterations:
            raise TrainingError(
                f"--resume: checkpoint {ckpt_path} is at iteration {state['iteration']}, "
                f"past iterations={config.iterations}"
            )
        router.load_logits(state["logits"].to(device))
        opt.load_state_dict(state["optimizer"])
        controller.load_state(state["controller"])
        lam = state["lambda"].double()
        history = list(state["history"])
        start = resumed = state["iteration"]
        seconds_before = state["seconds"]

    lambda_noise, lambda_cond, lambda_null = _batch(spec, config.lambda_batch, config.seed + 7919, comm, device)
    from tqdm import tqdm

    bar = tqdm(
        total=config.iterations,
        initial=start,
        desc=f"{config.method} T={T}",
        disable=not (progress and comm.is_main),
        unit="it",
    )
    t0 = time.perf_counter()
    end = config.iterations if stop_after is None else min(config.iterations, start + stop_after)
    for it in range(start, end):
        controller.update_beta(it)
        mask = controller.mask(router, it)
        lam_seconds = 0.0
        if config.method == "harmonica" and config.lambda_mode != "none" and it > 0 and it % config.lambda_every == 0:
            tl = time.perf_counter()
            raw = comm.sum_(compute_lambda(runner, mask, lambda_noise, lambda_cond, lambda_null, config.lambda_mode))
            lam = normalize_lambda(raw, config.lambda_floor)
            lam_seconds = time.perf_counter() - tl
        noise, cond, null = _batch(spec, config.batch_size, config.seed * 1_000_003 + it, comm, device)
        if config.method == "harmonica":
            stats = sdt_iteration(runner, router, opt, controller, comm, mask, lam, noise, cond, null, config.ste)
        else:
            gen = torch.Generator().manual_seed(config.seed * 1_000_003 + it + 17)
            stats = l2c_iteration(runner, router, opt, controller, comm, mask, noise, cond, null, config.ste, gen)
        cur = 1.0 - float(mask.float().mean())
        history.append(
            {
                "iteration": it,
                "loss": stats.loss,
                "mse": stats.mse,
                "cur": cur,
                "beta": controller.beta,
                "target": controller.target_at(it),
                "lambda_seconds": lam_seconds,
            }
        )
        bar.set_postfix(loss=f"{stats.loss:.3g}", cur=f"{cur:.3f}", beta=f"{controller.beta:.2g}")
        bar.update(1)
        done = it + 1
        if ckpt_path is not None and config.checkpoint_every and (done % config.checkpoint_every == 0 or done == end):
            if comm.is_main:
                save_checkpoint(
                    ckpt_path,
                    iteration=done,
                    logits=router.logits().detach(),
                    optimizer=opt.state_dict(),
                    controller=controller.state(),
                    lam=lam,
                    config=config.to_json(),
                    fingerprint=fingerprint,
                    history=history,
                    seconds=seconds_before + time.perf_counter() - t0,
                )
            comm.barrier()
    bar.close()
    final = controller.mask(router, config.iterations)
    threshold = controller.threshold_logit(router, final) if config.target_cur is not None else router.tau_logit
    seconds = seconds_before + time.perf_counter() - t0
    meta = {
        **base_meta,
        "iterations": config.iterations,
        "cfg_scale": cfg_scale,
        "lambda_mode": config.lambda_mode,
        "beta_final": controller.beta,
        "threshold_logit": threshold,
    }
    final_mask = final.cpu().numpy()
    if config.max_cache_age is not None:
        final_mask = limit_cache_age(final_mask, config.max_cache_age, router.logits().detach().cpu().numpy())
    schedule = CacheSchedule(final_mask.tolist(), sites, timesteps=timesteps, meta=meta)
    result = TrainResult(
        schedule, config, router.logits().detach().cpu(), lam.detach().cpu(), history, seconds, threshold, resumed
    )
    if not comm.is_main:
        return result
    return _finish(result, spec, config, timesteps, search_checkpoint, resume, progress, extra_starts)


def _finish(
    result: TrainResult,
    spec: Any,
    config: TrainConfig,
    timesteps: list[float],
    search_checkpoint: str | os.PathLike[str] | None,
    resume: bool,
    progress: bool,
    extra_starts: dict[str, CacheSchedule] | None,
) -> TrainResult:
    """The read branches and the refinement search, after training (or FORA / TaylorSeer)."""
    schedule = result.schedule
    if config.forecast in ("taylor1", "taylor2") and config.method != "taylorseer":
        schedule = schedule.with_branches([["compute" if m else config.forecast for m in row] for row in schedule.mask])
    if config.refine == "search":
        from .search import refine_schedule

        sites, T = schedule.sites, schedule.num_steps
        interval = fora_interval_for(T, float(config.target_cur))
        starts = {config.method: schedule}
        if config.method != "fora":
            starts["fora"] = CacheSchedule.fora(sites, T, interval, timesteps)
        for order in (1, 2):
            starts[f"taylorseer{order}"] = CacheSchedule.taylorseer(sites, T, interval, order, timesteps)
        starts.update(extra_starts or {})
        t0 = time.perf_counter()
        found = refine_schedule(
            spec,
            starts,
            target_cur=float(config.target_cur),
            forecast=config.forecast,
            max_age=config.max_cache_age,
            evaluations=config.search_evaluations,
            calibration_num=config.calibration_num,
            calibration_seed=config.calibration_seed,
            seed=config.seed,
            checkpoint=search_checkpoint,
            resume=resume,
            progress=progress,
        )
        schedule = found.schedule.with_meta(method=config.method, refine="search")
        result.search = {
            "start": found.start_name,
            "start_error": found.start_error,
            "starts": found.starts,
            "final_error": found.error,
            "evaluations": found.evaluations,
            "accepted": found.accepted,
            "seconds": round(found.seconds, 2),
            "calibration": {"seed": config.calibration_seed, "num": config.calibration_num},
            "history": found.history,
        }
        result.train_seconds += time.perf_counter() - t0
    result.schedule = schedule
    return result


def limit_cache_age(mask: Any, max_age: int, logits: Any) -> Any:
    """``mask`` with no site cached more than ``max_age`` steps in a row and the same number of
    cached entries: each too-long run is broken at the entry with the highest router logit, and as
    many other entries are cached, lowest logit first, where that breaks no run."""
    import numpy as np

    from ..schedule import max_cache_age

    mask = np.array(mask, dtype=bool)
    logits = np.asarray(logits, dtype=np.float64)
    target = int((~mask).sum())
    steps, sites = mask.shape
    for k in range(sites):
        run: list[int] = []
        for i in range(1, steps):
            if mask[i, k]:
                run = []
                continue
            run.append(i)
            if len(run) > max_age:
                pick = max(run, key=lambda j: logits[j, k])
                mask[pick, k] = True
                run = [j for j in run if j > pick]
    order = sorted((logits[i, k], i, k) for i in range(1, steps) for k in range(sites) if mask[i, k])
    for _, i, k in order:
        if int((~mask).sum()) >= target:
            break
        mask[i, k] = False
        if max_cache_age(mask) > max_age:
            mask[i, k] = True
    return mask
