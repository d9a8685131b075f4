"""SaturationTracker.compute() of a registry model against numpy on explicitly collected activations.

The small hand-written net of test_tracking covers the options one at a time; here a registry ResNet18 (Cifar
stem, ½ width, one input channel) sees the digits (8×8, scaled to 32×32) in several batches, and one tracker
combines the sampling options: every second batch, at most three of them, maps larger than 12×12 reduced by each
downsampling method, an include and an exclude pattern. The oracle collects the selected batches' outputs with
its own hooks, reduces them with torch's reference functions, and forms the float64 population covariance, its
eigenvalues, k by the definition (the smallest k of the largest eigenvalues whose sum is ≥ delta × total),
trace and log det with numpy. The fused CPU kernel (the fast path, taken by the wide early maps) and the torch
path must both give them.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from phd_lab.tracking import SaturationTracker, fused_gram, run_pass
from registries.models import resnet18_cifar

RESOLUTION = 12  # 32×32 and 16×16 maps are reduced (adaptive pooling by its general kernel), 8×8 and 4×4 are not
INCLUDE, EXCLUDE = ("layer1.*", "layer2.*", "layer3.*", "fc"), ("*.downsample.*",)
EVERY_N, MAX_BATCHES, BATCH = 2, 3, 40


def digits() -> list[torch.Tensor]:
    """The first 280 digits as 1×32×32 images (bilinear from 8×8), in batches of ``BATCH`` (7 batches)."""
    images = torch.tensor(load_digits().images[:280], dtype=torch.float32).unsqueeze(1) / 16.0
    return list(F.interpolate(images, size=32, mode="bilinear", align_corners=False).split(BATCH))


def reduced(maps: torch.Tensor, method: str) -> torch.Tensor:
    """Maps larger than ``RESOLUTION`` reduced by torch's own function for ``method``."""
    if maps.shape[2] <= RESOLUTION and maps.shape[3] <= RESOLUTION:
        return maps
    if method == "adaptive_avg":
        return F.adaptive_avg_pool2d(maps, RESOLUTION)
    return F.interpolate(maps, size=RESOLUTION, mode=method, **({"align_corners": False} if method == "bilinear"
                                                                   else {}))


@functools.cache
def model_data_and_outputs() -> tuple[nn.Module, list[torch.Tensor], dict[str, torch.Tensor]]:
    """The model, the digit batches, and each included layer's outputs on the batches the options select
    (0, 2 and 4), collected by our own hooks: computed once for the three downsampling methods."""
    torch.manual_seed(0)
    model = resnet18_cifar(num_classes=10, in_channels=1, width=0.5).eval()
    batches = digits()
    outputs: dict[str, list[torch.Tensor]] = {}
    layers = {name: module for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))
              and (name.startswith(("layer1.", "layer2.", "layer3.")) or name == "fc") and ".downsample." not in name}
    handles = [module.register_forward_hook(lambda _m, _i, out, name=name: outputs.setdefault(name, [])
                                            .append(out.detach().clone())) for name, module in layers.items()]
    with torch.no_grad():
        for batch in batches[0:EVERY_N * MAX_BATCHES:EVERY_N]:
            model(batch)
    for handle in handles:
        handle.remove()
    return model, batches, {name: torch.cat(parts) for name, parts in outputs.items()}


def observations(acts: torch.Tensor, method: str) -> np.ndarray:
    """A layer's outputs as float64 (observations, features); every (reduced) map position is one."""
    if acts.dim() == 4:
        acts = reduced(acts, method).permute(0, 2, 3, 1).reshape(-1, acts.shape[1])
    return acts.double().numpy()


def oracle(rows: np.ndarray, delta: float) -> tuple[np.ndarray, dict[str, float]]:
    """Population covariance and the tracker's numbers for it, by their definitions."""
    centred = rows - rows.mean(axis=0)
    cov = centred.T @ centred / rows.shape[0]
    eigenvalues = np.clip(np.linalg.eigvalsh(cov)[::-1], 0.0, None)
    cumulative, total = np.cumsum(eigenvalues), eigenvalues.sum()
    k = next(k for k in range(1, len(eigenvalues) + 1) if cumulative[k - 1] >= delta * total)
    return cov, {"intrinsic_dimension": k, "saturation": k / cov.shape[0], "trace": float(np.trace(cov)),
                 "log_det": float(np.sum(np.log(eigenvalues))), "n": rows.shape[0]}


@pytest.mark.parametrize("method", ["adaptive_avg", "nearest", "bilinear"])
def test_a_registry_resnets_saturations_under_combined_options_equal_numpy_on_both_paths(method):
    model, batches, outputs = model_data_and_outputs()
    reference = {name: observations(acts, method) for name, acts in outputs.items()}
    assert len(reference) == 13 and "conv1" not in reference and "layer2.0.downsample.0" not in reference
    assert fused_gram.applies(torch.zeros(BATCH, 32, RESOLUTION, RESOLUTION))  # every conv can take the fast path
    for fused in (True, False):
        tracker = SaturationTracker(model, 0.99, resolution=RESOLUTION, downsampling=method, every_n=EVERY_N,
                                    max_batches=MAX_BATCHES, include=INCLUDE, exclude=EXCLUDE)
        with fused_gram.switched(fused):
            assert run_pass(tracker, model, batches, torch.device("cpu")) == MAX_BATCHES
        tracker.close()
        assert tracker.layer_names == list(reference)  # forward order, nothing else tracked
        for delta in (0.99, 0.9):
            frame = tracker.compute(delta)
            for name, rows in reference.items():
                cov, expected = oracle(rows, delta)
                got = tracker.covariance(name).numpy()
                assert np.linalg.norm(got - cov) / np.linalg.norm(cov) <= 1e-7, (name, fused)
                row = frame.loc[name]
                assert row["intrinsic_dimension"] == expected["intrinsic_dimension"], (name, fused, delta)
                assert row["saturation"] == expected["saturation"] and row["n"] == expected["n"]
                assert row["feature_dimension"] == rows.shape[1]
                assert row["trace"] == pytest.approx(expected["trace"], rel=1e-7), (name, fused)
                assert row["log_det"] == pytest.approx(expected["log_det"], rel=1e-6, abs=1e-6), (name, fused)
