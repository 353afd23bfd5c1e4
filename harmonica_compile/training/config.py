"""TrainConfig: every setting of router training in one documented, validated, versioned dataclass.

Example:
    >>> cfg = TrainConfig(method="harmonica", target_cur=0.5)
    >>> TrainConfig.from_json(cfg.to_json()) == cfg
    True
    >>> TrainConfig(target_cur=1.5)
    Traceback (most recent call last):
    ...
    harmonica_compile.errors.ConfigError: target_cur must be in (0, 1), got 1.5
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

__all__ = ["FORECASTS", "METHODS", "REFINES", "TRAIN_CONFIG_VERSION", "TrainConfig"]

METHODS = ("harmonica", "l2c", "fora", "taylorseer")
FORECASTS = ("none", "taylor1", "taylor2", "auto")
REFINES = ("none", "search")
TRAIN_CONFIG_VERSION = 1


@dataclass(frozen=True)
class TrainConfig:
    #: ``harmonica`` (SDT + IEPO), ``l2c`` (Learning-to-Cache), ``fora`` (static interval, no training)
    #: or ``taylorseer`` (FORA's interval with finite-difference forecasts, order from ``forecast``).
    method: str = "harmonica"
    #: Sampling steps the schedule is for.
    num_steps: int = 20
    #: Cache Usage Ratio to reach (0..1, exclusive). ``None`` trains with a fixed ``beta`` instead.
    target_cur: float | None = 0.5
    #: L1 weight on the router values when ``target_cur`` is None (the paper's beta / ``--l1``).
    beta: float | None = None
    #: Training iterations (each one a whole trajectory for SDT).
    iterations: int = 300
    #: Images per iteration (the model sees twice as many with classifier-free guidance).
    batch_size: int = 8
    #: Guidance scale during training; ``None`` = the model's default sampling scale.
    cfg_scale: float | None = None
    #: AdamW learning rate on the router logits (weight decay 0).
    lr: float = 0.05
    #: Router threshold: a site computes where ``sigmoid(logit) > tau`` (reference: 0.1).
    tau: float = 0.1
    #: Logits are clamped to ``[-clamp, clamp]`` after every optimizer step (reference: 5).
    clamp: float = 5.0
    #: Initial logit of every learned entry (sigmoid(2) = 0.88: start by computing).
    init_logit: float = 2.0
    #: Straight-through estimator: hard 0/1 forward with the sigmoid's gradient (reference: on).
    ste: bool = True
    #: IEPO proxy: ``paper`` (x0 with step t fully computed vs the current masks), ``incremental``
    #: (the reference code's variant), or ``none`` (every step weighted 1).
    lambda_mode: str = "paper"
    #: Recompute lambda every C iterations (reference: 500 of 20k).
    lambda_every: int = 50
    #: Images used to compute lambda (fixed noise for the whole run).
    lambda_batch: int = 8
    #: Lambda is normalised to mean 1 over the steps and floored at this value, so a step that
    #: currently computes everything (lambda 0 by definition) still resists caching.
    lambda_floor: float = 0.1
    #: With ``target_cur``: share of the iterations over which the CUR target ramps up from 0.
    ramp: float = 0.3
    #: With ``target_cur``: decay of the per-entry importance average that sets beta.
    importance_decay: float = 0.9
    #: FORA's interval; ``None`` picks the one whose CUR is closest to ``target_cur``.
    fora_interval: int | None = None
    seed: int = 0
    #: Write a checkpoint every N iterations (0: never).
    checkpoint_every: int = 50
    #: Read branch of cached entries: ``none`` (reuse), ``taylor1`` / ``taylor2`` (forecast), or
    #: ``auto`` (the search picks per step and site; needs ``refine="search"``). TaylorSeer uses
    #: order 1 for ``taylor1`` and order 2 otherwise.
    forecast: str = "none"
    #: ``search``: refine the schedule on the true final-image error of a calibration set.
    refine: str = "none"
    #: At most this many consecutive cached steps per site (``None``: no cap).
    max_cache_age: int | None = None
    #: Evaluations of the refinement search (each a calibration-set sampling run, or part of one).
    search_evaluations: int = 300
    #: Calibration images of the search, and their noise seed (disjoint from the evaluation seeds).
    calibration_num: int = 32
    calibration_seed: int = 1_000_000_009
    version: int = TRAIN_CONFIG_VERSION

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        _int_at_least("num_steps", self.num_steps, 2)
        if self.num_steps > 1000:
            raise ConfigError(f"num_steps must be <= 1000, got {self.num_steps}")
        if self.target_cur is not None:
            if isinstance(self.target_cur, bool) or not isinstance(self.target_cur, int | float):
                raise ConfigError(f"target_cur must be a number, got {self.target_cur!r}")
            if not 0.0 < self.target_cur < 1.0:
                raise ConfigError(f"target_cur must be in (0, 1), got {self.target_cur}")
            if self.target_cur > (self.num_steps - 1) / self.num_steps:
                raise ConfigError(
                    f"target_cur {self.target_cur} is unreachable with {self.num_steps} steps: the first step always "
                    f"computes, so at most {(self.num_steps - 1) / self.num_steps:.3f} of the decisions can cache"
                )
        elif self.beta is None and self.method != "fora":
            raise ConfigError("give target_cur, or beta (the L1 weight) to train without a CUR target")
        elif self.method in ("fora", "taylorseer") and self.fora_interval is None:
            raise ConfigError(f"{self.method} needs target_cur (to pick the interval) or fora_interval")
        if self.beta is not None and not self.beta >= 0:
            raise ConfigError(f"beta must be >= 0, got {self.beta}")
        _int_at_least("iterations", self.iterations, 1)
        _int_at_least("batch_size", self.batch_size, 1)
        _int_at_least("lambda_every", self.lambda_every, 1)
        _int_at_least("lambda_batch", self.lambda_batch, 1)
        _int_at_least("checkpoint_every", self.checkpoint_every, 0)
        if self.fora_interval is not None:
            _int_at_least("fora_interval", self.fora_interval, 1)
        if self.cfg_scale is not None and not self.cfg_scale >= 0:
            raise ConfigError(f"cfg_scale must be >= 0, got {self.cfg_scale}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0.0 < self.tau < 1.0:
            raise ConfigError(f"tau must be in (0, 1), got {self.tau}")
        if not self.clamp > 0:
            raise ConfigError(f"clamp must be > 0, got {self.clamp}")
        if self.lambda_mode not in ("paper", "incremental", "none"):
            raise ConfigError(f"lambda_mode must be 'paper', 'incremental' or 'none', got {self.lambda_mode!r}")
        if not 0.0 <= self.lambda_floor <= 1.0:
            raise ConfigError(f"lambda_floor must be in [0, 1], got {self.lambda_floor}")
        if not 0.0 <= self.ramp < 1.0:
            raise ConfigError(f"ramp must be in [0, 1), got {self.ramp}")
        if not 0.0 <= self.importance_decay < 1.0:
            raise ConfigError(f"importance_decay must be in [0, 1), got {self.importance_decay}")
        if self.forecast not in FORECASTS:
            raise ConfigError(f"forecast must be one of {', '.join(FORECASTS)}, got {self.forecast!r}")
        if self.refine not in REFINES:
            raise ConfigError(f"refine must be one of {', '.join(REFINES)}, got {self.refine!r}")
        if self.forecast == "auto" and self.refine != "search":
            raise ConfigError(
                "forecast 'auto' lets the search pick each branch: pass --refine search (refine='search')"
            )
        if self.max_cache_age is not None:
            _int_at_least("max_cache_age", self.max_cache_age, 1)
        _int_at_least("search_evaluations", self.search_evaluations, 0)
        _int_at_least("calibration_num", self.calibration_num, 1)
        if self.refine == "search" and self.target_cur is None:
            raise ConfigError("the search keeps the CUR at its target: give target_cur")
        if self.version != TRAIN_CONFIG_VERSION:
            raise ConfigError(f"train config version {self.version} is not {TRAIN_CONFIG_VERSION}; re-create it")

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: Any) -> TrainConfig:
        if not isinstance(obj, dict):
            raise ConfigError(f"a train config is a JSON object, got {type(obj).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(obj) - known)
        if unknown:
            raise ConfigError(f"unknown train config keys {unknown}; known: {sorted(known)}")
        return cls(**obj)


def _int_at_least(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
