"""Saturation and PCA layers on seeded random layers: what must not change the intrinsic dimension does not.

Each case is a real Conv2d or Linear layer with a random, often ill-conditioned output spectrum (eigenvalues
over 8–10 decades, a mean far from zero). The brute force is the thesis' definition (§6.1.4, §8.1) on numpy's
covariance of the layer's outputs. Metamorphic variants transform the layer itself: an orthogonal rotation,
a scaling or an offset of its outputs, every channel duplicated; the batches are reordered and re-split.
Cases whose cumulative spectrum comes within 1e-6 of a threshold are skipped: there, rounding may rightly
decide either way.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from phd_lab.tracking import SaturationTracker, fused_gram
from phd_lab.tracking.covariance import CovarianceAccumulator
from phd_lab.tracking.pca import Conv2dPCA, LinearPCA, insert_pca_layers
from phd_lab.tracking.saturation import sorted_eigenvalues

DELTAS = (0.5, 0.9, 0.99, 0.999)


def brute_k(rows: np.ndarray, delta: float) -> int | None:
    """Smallest k whose k largest eigenvalues of the population covariance reach delta of their sum; None when
    a cumulative sum lies within 1e-6 of the threshold (the case is left out)."""
    values = np.sort(np.linalg.eigvalsh(np.cov(rows, rowvar=False, bias=True)))[::-1].clip(0)
    cumulative = np.cumsum(values) / values.sum()
    if np.min(np.abs(cumulative - delta)) < 1e-6:
        return None
    return int(np.argmax(cumulative >= delta)) + 1


def random_layer(generator: torch.Generator, conv: bool) -> nn.Module:
    """A float64 layer whose outputs have eigenvalues spread over many decades and a large mean."""
    channels = int(torch.randint(2, 9, (1,), generator=generator))
    layer = nn.Conv2d(3, channels, 3) if conv else nn.Linear(6, channels)
    layer = layer.double()
    decades = torch.rand(channels, generator=generator, dtype=torch.float64) * 10 - 7
    with torch.no_grad():
        layer.weight.mul_(torch.pow(10.0, decades / 2).view(-1, *[1] * (layer.weight.dim() - 1)))
        layer.bias.copy_(torch.randn(channels, generator=generator, dtype=torch.float64) * 1e3)
    return layer


def batches_for(layer: nn.Module, generator: torch.Generator) -> list[torch.Tensor]:
    shape = (5, 3, 6, 6) if isinstance(layer, nn.Conv2d) else (40, 6)
    return [torch.randn(shape, generator=generator, dtype=torch.float64) for _ in range(3)]


def outputs(layer: nn.Module, batches: list[torch.Tensor]) -> np.ndarray:
    """Every observation of the layer's outputs as a row (each position of a feature map is one)."""
    with torch.no_grad():
        out = torch.cat([layer(b) for b in batches])
    if out.dim() == 4:
        out = out.permute(0, 2, 3, 1).reshape(-1, out.shape[1])
    return out.numpy()


def tracked(layer: nn.Module, batches: list[torch.Tensor]) -> dict[float, tuple[int, int]]:
    """(intrinsic dimension, feature dimension) per delta, from the saturation tracker on the real layer."""
    model = nn.Sequential(layer)
    with SaturationTracker(model) as tracker, torch.no_grad():
        for batch in batches:
            model(batch)
    return {delta: tuple(tracker.compute(delta).loc["0", ["intrinsic_dimension", "feature_dimension"]])
            for delta in DELTAS}


def transformed(layer: nn.Module, matrix: torch.Tensor, offset: torch.Tensor) -> nn.Module:
    """The layer followed by y ↦ matrix·y + offset on its channels, folded into its own weight and bias."""
    rows = matrix.shape[0]
    new = (nn.Conv2d(layer.in_channels, rows, layer.kernel_size) if isinstance(layer, nn.Conv2d)
           else nn.Linear(layer.in_features, rows)).double()
    with torch.no_grad():
        new.weight.copy_(torch.einsum("oc,c...->o...", matrix, layer.weight))
        new.bias.copy_(matrix @ layer.bias + offset)
    return new


def test_k_is_the_definition_and_invariant_under_rotation_scaling_offset_duplication_order_and_splitting():
    generator = torch.Generator().manual_seed(0)
    checked = 0
    for case in range(16):
        layer = random_layer(generator, conv=case % 2 == 0)
        batches = batches_for(layer, generator)
        rows = outputs(layer, batches)
        expected = {delta: brute_k(rows, delta) for delta in DELTAS}
        channels = rows.shape[1]
        rotation = torch.linalg.qr(torch.randn(channels, channels, generator=generator, dtype=torch.float64)).Q
        eye, zero = torch.eye(channels, dtype=torch.float64), torch.zeros(channels, dtype=torch.float64)
        shuffled = torch.cat(batches)[torch.randperm(sum(len(b) for b in batches), generator=generator)]
        variants = {
            "as is": (layer, batches, 1),
            "rotated": (transformed(layer, rotation, zero), batches, 1),
            "scaled": (transformed(layer, 37.5 * eye, zero), batches, 1),
            "offset": (transformed(layer, eye, torch.full((channels,), -4e4, dtype=torch.float64)), batches, 1),
            "duplicated": (transformed(layer, torch.cat([eye, eye]), torch.cat([zero, zero])), batches, 2),
            "reordered and re-split": (layer, list(shuffled.split(7)), 1),
        }
        for name, (variant, inputs, width) in variants.items():
            for delta, (k, dim) in tracked(variant, inputs).items():
                assert dim == width * channels, (case, name)
                if expected[delta] is not None:
                    checked += 1
                    assert k == expected[delta], (case, name, delta)
    assert checked > 16 * 6 * len(DELTAS) // 2  # most cases are far from a threshold


def test_the_fused_kernel_and_the_exact_path_agree_on_ill_conditioned_maps():
    generator = torch.Generator().manual_seed(1)
    channels = 64
    decades = torch.linspace(-5, 3, channels, dtype=torch.float64)
    mixing = torch.linalg.qr(torch.randn(channels, channels, generator=generator, dtype=torch.float64)).Q
    scales = (mixing * torch.pow(10.0, decades / 2)).float()
    batches = [(torch.einsum("oc,bchw->bohw", scales, torch.randn(4, channels, 16, 16, generator=generator))
                + 300.0) for _ in range(2)]
    assert fused_gram.applies(batches[0])
    covariances = []
    for fused in (True, False):
        with fused_gram.switched(fused):
            accumulator = _accumulate(batches)
        covariances.append(accumulator.covariance().numpy())
    fast, exact = covariances
    rows = torch.cat([b.permute(0, 2, 3, 1).reshape(-1, channels) for b in batches]).double().numpy()
    reference = np.cov(rows, rowvar=False, bias=True)
    assert np.abs(fast - reference).max() <= 1e-9 * np.abs(reference).max()
    assert np.abs(exact - reference).max() <= 1e-9 * np.abs(reference).max()
    for delta in DELTAS:
        expected = brute_k(rows, delta)
        assert expected is None or _k(fast, delta) == _k(exact, delta) == expected


def _accumulate(batches: list[torch.Tensor]) -> CovarianceAccumulator:
    accumulator = CovarianceAccumulator(batches[0].shape[1])
    for batch in batches:
        accumulator.update_maps(batch)
    return accumulator


def _variance(x: torch.Tensor) -> float:
    """Total variance of the observations of x (every position of a feature map is one)."""
    rows = x.detach().movedim(1, -1).reshape(-1, x.shape[1]) if x.dim() == 4 else x.detach()
    return float(rows.var(dim=0, unbiased=False).sum())


def _k(covariance: np.ndarray, delta: float) -> int:
    values = sorted_eigenvalues(covariance)
    return int(np.argmax(np.cumsum(values) >= delta * values.sum())) + 1


@pytest.mark.parametrize("centered", [False, True])
def test_pca_layers_project_idempotently_keep_the_trackers_k_and_are_the_identity_at_delta_one(centered):
    generator = torch.Generator().manual_seed(2)
    for case in range(4):
        conv = random_layer(generator, conv=True)
        model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(conv.out_channels * 16, 5).double())
        inputs = batches_for(conv, generator)
        projected, layers = insert_pca_layers(model, delta=0.99, centered=centered)
        projected.train()
        with SaturationTracker(model) as tracker, torch.no_grad():
            for batch in inputs:
                model(batch)
                projected(batch)
        projected.eval()
        test = torch.randn(3, 3, 6, 6, generator=generator, dtype=torch.float64)
        for delta in (*DELTAS, 1.0):
            ks = tracker.compute(delta)["intrinsic_dimension"]
            for name, pca in layers.items():
                pca.set_delta(delta)
                if delta < 1.0:
                    assert pca.k == ks[name], (case, name, delta)
                x = model[int(name)](test if name == "0" else model[:3](test)).detach()
                once = pca(x)
                assert torch.allclose(pca(once), once, rtol=1e-9, atol=1e-9 * float(x.abs().max())), (case, delta)
                if delta == 1.0:
                    assert torch.equal(once, x)
                else:  # the k leading directions: they keep delta of the collected variance, k − 1 would not
                    seen = torch.cat([model[int(name)](b if name == "0" else model[:3](b)) for b in inputs]).detach()
                    kept = _variance(pca(seen)) / _variance(seen)
                    assert delta - 1e-9 <= kept, (case, name, delta)
            if delta == 1.0:
                with torch.no_grad():
                    assert torch.equal(projected(test), model(test))
        assert sum(isinstance(m, (Conv2dPCA, LinearPCA)) for m in projected.modules()) == 2
