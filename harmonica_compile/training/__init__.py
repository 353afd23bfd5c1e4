"""Router training: HarmoniCa (SDT + IEPO), the L2C and FORA baselines."""

from __future__ import annotations

from .config import METHODS, TrainConfig
from .router import Router
from .trainer import TrainResult, fora_interval_for, load_routers, train_schedule

__all__ = ["METHODS", "Router", "TrainConfig", "TrainResult", "fora_interval_for", "load_routers", "train_schedule"]
