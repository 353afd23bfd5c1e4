"""Train the evaluator's digit classifier and write ``digits_classifier.safetensors``.

    python -m harmonica_compile.metrics_data.make_digits_classifier

A one-hidden-layer MLP (256 -> 64 ReLU -> 10, scikit-learn's ``MLPClassifier``, fixed seed) on the
16x16 digits in [-1, 1]: 80% of the images, each also with two Gaussian-noise copies (sigma 0.1) so
that slightly noisy generated digits are classified as a human would; the other 20% measure its
accuracy, recorded in the file's metadata. Its 64 hidden activations are the feature space of the
Frechet distance. The weights ship with the package, so evaluation needs no training and gives the
same numbers on every machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..data import load_digits16
from ..io import save_safetensors

OUT = Path(__file__).resolve().parent / "digits_classifier.safetensors"


def train(seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    images, labels = load_digits16()
    x = images.reshape(len(images), -1).numpy().astype(np.float64)
    y = labels.numpy()
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    rng = np.random.default_rng(seed)
    x_aug = np.concatenate([x_tr] + [np.clip(x_tr + rng.normal(0, 0.1, x_tr.shape), -1, 1) for _ in range(2)])
    y_aug = np.concatenate([y_tr] * 3)
    clf = MLPClassifier(hidden_layer_sizes=(64,), alpha=1e-3, max_iter=600, random_state=seed)
    clf.fit(x_aug, y_aug)
    acc = float((clf.predict(x_te) == y_te).mean())
    tensors = {
        "w1": torch.from_numpy(clf.coefs_[0].T.astype(np.float32)).contiguous(),
        "b1": torch.from_numpy(clf.intercepts_[0].astype(np.float32)),
        "w2": torch.from_numpy(clf.coefs_[1].T.astype(np.float32)).contiguous(),
        "b2": torch.from_numpy(clf.intercepts_[1].astype(np.float32)),
    }
    meta = {
        "format": "harmonica-compile/digits-classifier",
        "format_version": "1",
        "held_out_accuracy": f"{acc:.4f}",
        "recipe": json.dumps(
            {
                "model": "MLPClassifier(64,), alpha 1e-3, relu, adam",
                "train_split": 0.8,
                "noise_copies": 2,
                "noise_sigma": 0.1,
                "seed": seed,
            }
        ),
    }
    return tensors, meta


def main() -> None:
    tensors, meta = train()
    save_safetensors(OUT, tensors, meta)
    print(f"wrote {OUT} (held-out accuracy {meta['held_out_accuracy']})")


if __name__ == "__main__":
    main()
