"""Measure the shipped tiny-dit-digits and write its model card next to the weights.

Full-compute DDIM, 20 steps, 500 digits (50 per class), at several guidance scales: the
evaluator's class accuracy and Frechet distance. The card records the training recipe (from the
weights file), these measurements, and the sampling defaults (the smallest scale with accuracy
>= 0.99).

    python benchmarks/tiny_dit_quality.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result

from harmonica_compile.io import atomic_write_json, load_safetensors, sha256_file
from harmonica_compile.metrics import DigitsEvaluator
from harmonica_compile.models.pretrained import pretrained_info
from harmonica_compile.models.registry import load_model
from harmonica_compile.sampling import generate


def main() -> None:
    torch.set_num_threads(2)
    info = pretrained_info("tiny-dit-digits")
    _, meta = load_safetensors(info.weights_path())
    spec = load_model("tiny-dit-digits")
    ev = DigitsEvaluator()
    rows = []
    for cfg in (1.0, 1.5, 2.0, 3.0, 4.0):
        t0 = time.perf_counter()
        images, labels = generate(spec, num=500, steps=20, cfg_scale=cfg, seed=0, batch_size=100)
        rows.append(
            {
                "cfg_scale": cfg,
                "accuracy": ev.accuracy(images, labels),
                "frechet": round(ev.frechet(images), 3),
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
        print(rows[-1])
    default = next((r["cfg_scale"] for r in rows if r["accuracy"] >= 0.99), 1.0)
    card = {
        "name": "tiny-dit-digits",
        "architecture": "reference DiT (harmonica_compile.models.dit.DiT)",
        "config": json.loads(meta["config"]),
        "parameters": sum(p.numel() for p in spec.model.parameters()),
        "weights_sha256": sha256_file(info.weights_path()),
        "recipe": json.loads(meta["recipe"]),
        "trained_by": "python -m harmonica_compile.models.train_tiny_dit "
        "--out harmonica_compile/models/weights/tiny-dit-digits.safetensors",
        "evaluation": {
            "protocol": "full-compute DDIM, 20 steps, 500 digits (50 per class), seed 0; "
            "harmonica_compile.metrics.DigitsEvaluator",
            "real_digits_reference": {"classifier_held_out_accuracy": ev.classifier_accuracy},
            "by_cfg_scale": rows,
        },
        "sampling_defaults": {"steps": 20, "cfg_scale": default},
        "measured_by": "python benchmarks/tiny_dit_quality.py",
    }
    atomic_write_json(info.card_path(), card)
    write_result("tiny_dit_quality", card)
    print(f"wrote {info.card_path()} (default cfg {default})")


if __name__ == "__main__":
    main()
