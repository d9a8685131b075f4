"""Test helpers: small synthetic latents folders with valid manifests (sha256 included)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

from phd_lab.probes.synthetic import write_latents


def digits_layers(n_layers: int = 3, width: int = 32, seed: int = 0) -> tuple[dict, np.ndarray, np.ndarray]:
    """Random ReLU projections of the Digits pixels: a stack of 'layers' that are not separable."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    layers, h = {}, x
    for i in range(n_layers):
        h = np.maximum(h @ (rng.standard_normal((h.shape[1], width)) / np.sqrt(h.shape[1])).astype(np.float32), 0)
        h = h + rng.normal(0, 0.05 * (i + 1), h.shape).astype(np.float32)
        layers[f"features.{i}"] = (h[:1200], h[1200:1500])
    return layers, y[:1200], y[1200:1500]


def blob_layers(n_layers: int = 2, n: int = 300, d: int = 8, classes: int = 3, seed: int = 0):
    """Well separated Gaussian blobs: every solver reaches (nearly) the same, high accuracy."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 6.0, (classes, d))
    y = rng.integers(0, classes, 2 * n)
    layers = {}
    for i in range(n_layers):
        x = (centers[y] + rng.normal(0, 1.0, (2 * n, d))).astype(np.float32)
        layers[f"block{i}.conv"] = (x[:n], x[n:])
    return layers, y[:n], y[n:]


def make_latents(root: Path, layers=None, y_train=None, y_eval=None, accuracy: float | None = 0.9,
                 name: str = "run") -> tuple[Path, Path]:
    """Create ``root/<name>`` (the run folder) with ``latents/`` inside; returns (run folder, latents)."""
    if layers is None:
        layers, y_train, y_eval = digits_layers()
    run_dir = root / name
    run_dir.mkdir(parents=True, exist_ok=True)
    latents = write_latents(run_dir / "latents", layers, y_train, y_eval, run_dir, accuracy)
    return run_dir, latents
