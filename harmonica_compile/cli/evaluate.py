"""``harmonica-compile evaluate``: quality of a samples file (against full compute, digits metrics)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .common import print_json


def register(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="quality of a samples .npz (PSNR vs a reference, digits accuracy, Frechet)")
    p.add_argument("samples")
    p.add_argument("--reference", default=None, help="full-compute samples from the same seed")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..metrics import DigitsEvaluator, fidelity, frechet_note
    from ..sampling import load_samples

    data = load_samples(args.samples)
    images = torch.from_numpy(data["images"])
    result: dict[str, Any] = {"num": len(images)}
    if args.reference:
        ref = load_samples(args.reference)
        result.update(fidelity(images, torch.from_numpy(ref["images"])))
    if images.shape[1:] == (1, 16, 16) and "labels" in data:
        ev = DigitsEvaluator()
        result["accuracy"] = ev.accuracy(images, torch.from_numpy(data["labels"]))
        result["frechet"] = ev.frechet(images)
        note = frechet_note(len(images))
        if note:
            result["frechet_note"] = note
            print(f"warning: {note}", file=sys.stderr)
    print_json(result)
    return 0
