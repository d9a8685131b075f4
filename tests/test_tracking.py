"""SaturationTracker against numpy on fully materialised activations (real torch models)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from phd_lab.tracking import SaturationTracker, TrackerOptions, intrinsic_dimension, run_pass
from phd_lab.tracking.saturation import sorted_eigenvalues


class SmallNet(nn.Module):
    """Conv → ReLU(inplace) → strided conv → pool → Linear; ``head`` is defined before ``body``
    but runs after it, so definition order differs from forward order."""

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        self.head = nn.Linear(12, 5)
        self.body = nn.Sequential(nn.Conv2d(in_channels, 6, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(6, 12, 3, stride=2, padding=1), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.adaptive_avg_pool2d(self.body(x), 1).flatten(1))


def seeded_model(seed: int = 0) -> SmallNet:
    torch.manual_seed(seed)
    return SmallNet().eval()


def digits_images(count: int = 300) -> torch.Tensor:
    images = torch.tensor(load_digits().images[:count], dtype=torch.float32).unsqueeze(1)
    return images / 4.0 + 2.0  # a large common offset stresses the mean subtraction


def materialised(model: nn.Module, data: torch.Tensor, batch: int) -> dict[str, np.ndarray]:
    """Every tracked layer's output over the whole pass as an (observations, features) array."""
    outputs: dict[str, list[torch.Tensor]] = {}
    handles = [module.register_forward_hook(lambda m, i, o, n=name: outputs.setdefault(n, []).append(o.clone()))
               for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for chunk in data.split(batch):
            model(chunk)
    for handle in handles:
        handle.remove()
    return {name: observation_rows(parts) for name, parts in outputs.items()}


def observation_rows(parts: list[torch.Tensor]) -> np.ndarray:
    """Recorded outputs of one layer as float64 (observations, features); conv maps: one row per position."""
    acts = torch.cat(parts).double().cpu()
    if acts.dim() == 4:
        acts = acts.permute(0, 2, 3, 1).reshape(-1, acts.shape[1])
    return acts.numpy()


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def track(model: nn.Module, data: torch.Tensor, batch: int, **options: object) -> SaturationTracker:
    tracker = SaturationTracker(model, **options)
    with torch.no_grad():
        for chunk in data.split(batch):
            model(chunk)
    return tracker


def brute_force_k(eigenvalues: np.ndarray, delta: float) -> int:
    """Literal definition: the first k whose top-k sum reaches delta × total (sequential sums)."""
    total = 0.0
    for value in eigenvalues:
        total += value
    if total <= 0:
        return 0
    running = 0.0
    for k, value in enumerate(eigenvalues, start=1):
        running += value
        if running >= delta * total:
            return k
    raise AssertionError("unreachable")


def test_exact_covariance_equals_np_cov_on_the_whole_pass() -> None:
    model, data = seeded_model(), digits_images()
    reference = materialised(model, data, batch=64)
    tracker = track(model, data, batch=64)
    assert tracker.layer_names == ["body.0", "body.2", "head"]  # forward order, not definition order
    for name, acts in reference.items():
        expected = np.cov(acts, rowvar=False, bias=True)
        assert rel_error(tracker.covariance(name).numpy(), expected) <= 1e-10, name
    frame = tracker.compute()
    assert list(frame.columns[:6]) == ["saturation", "intrinsic_dimension", "feature_dimension", "trace", "log_det",
                                       "n"]
    assert frame.loc["body.0", "n"] == 300 * 8 * 8 and frame.loc["body.2", "n"] == 300 * 4 * 4
    assert frame.loc["head", "n"] == 300 and frame.loc["head", "feature_dimension"] == 5
    cov = np.cov(reference["body.2"], rowvar=False, bias=True)
    assert frame.loc["body.2", "trace"] == pytest.approx(np.trace(cov), rel=1e-10)
    assert frame.loc["body.2", "log_det"] == pytest.approx(np.linalg.slogdet(cov)[1], rel=1e-8)
    tracker.close()


@pytest.mark.parametrize("delta", [0.5, 0.9, 0.95, 0.99, 0.999, 1.0])
def test_intrinsic_dimension_and_saturation_equal_brute_force(delta: float) -> None:
    model, data = seeded_model(1), digits_images()
    reference = materialised(model, data, batch=100)
    frame = track(model, data, batch=100, delta=delta).compute()
    for name, acts in reference.items():
        eigenvalues = np.clip(np.linalg.eigvalsh(np.cov(acts, rowvar=False, bias=True))[::-1], 0, None)
        k = brute_force_k(eigenvalues, delta)
        assert frame.loc[name, "intrinsic_dimension"] == k, name
        assert frame.loc[name, "saturation"] == k / acts.shape[1]


def test_random_spectra_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        values = np.sort(rng.exponential(size=rng.integers(1, 40)) ** 3)[::-1]
        for delta in (0.3, 0.9, 0.99, 1.0):
            assert intrinsic_dimension(values, delta) == brute_force_k(values, delta)


def test_intrinsic_dimension_of_eigenvalues_in_numpys_ascending_order() -> None:
    """np.linalg.eigvalsh returns its eigenvalues ascending: passed as they came, the smallest were counted first
    and k was as large as the layer (4 instead of 1 here), without a word."""
    values = np.array([1.0, 2.0, 3.0, 94.0])
    assert intrinsic_dimension(values, 0.9) == intrinsic_dimension(values[::-1], 0.9) == 1
    rng = np.random.default_rng(1)
    spectrum = rng.exponential(size=30) ** 3
    for delta in (0.3, 0.9, 0.99, 1.0):
        expected = brute_force_k(np.sort(spectrum)[::-1], delta)
        assert intrinsic_dimension(np.sort(spectrum), delta) == intrinsic_dimension(spectrum, delta) == expected


def test_eigenvalues_do_not_depend_on_the_blas_thread_count() -> None:
    """OpenBLAS' threaded reduction changes the last bits of eigvalsh from 256 features on; layers up to
    ONE_THREAD_MAX_DIM are decomposed on one thread, so a node's core count does not enter the saturation."""
    from threadpoolctl import threadpool_limits
    rng = np.random.default_rng(3)
    for dim in (300, 1024):
        a = rng.standard_normal((dim, dim + 7))
        cov = a @ a.T / dim
        with threadpool_limits(1, user_api="blas"):
            one = sorted_eigenvalues(cov)
        with threadpool_limits(2, user_api="blas"):
            two = sorted_eigenvalues(cov)
            assert np.array_equal(one, two), dim
            assert not np.array_equal(np.linalg.eigvalsh(cov), np.sort(one)), "expected a thread-dependent eigvalsh"


def hadamard_data() -> torch.Tensor:
    """16 observations whose covariance is exactly diag(16, 4, 4, 4, 4): orthogonal ±1 columns."""
    h = np.array([[1.0]])
    for _ in range(4):
        h = np.block([[h, h], [h, -h]])
    return torch.tensor(h[:, 1:6] * np.array([4.0, 2.0, 2.0, 2.0, 2.0]), dtype=torch.float32)


@pytest.mark.parametrize("delta, expected", [(0.5, 1), (0.5 + 1e-12, 2), (0.625, 2), (0.75, 3), (0.875, 4),
                                             (0.875 - 1e-12, 4), (1.0, 5)])
def test_threshold_exactly_on_an_eigenvalue_boundary(delta: float, expected: int) -> None:
    layer = nn.Linear(5, 5, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(5))
    tracker = track(layer.eval(), hadamard_data(), batch=8, delta=delta)
    cov = tracker.covariance("<model>").numpy()
    assert np.array_equal(cov, np.diag([16.0, 4.0, 4.0, 4.0, 4.0]))
    assert np.array_equal(sorted_eigenvalues(cov), [16.0, 4.0, 4.0, 4.0, 4.0])
    row = tracker.compute().loc["<model>"]
    assert row["intrinsic_dimension"] == expected == brute_force_k(np.array([16.0, 4, 4, 4, 4]), delta)
    assert row["saturation"] == expected / 5


def test_multi_batch_equals_single_batch() -> None:
    model, data = seeded_model(2), digits_images(256)
    single = track(model, data, batch=256)
    single.close()
    multi = track(model, data, batch=7)
    for name in single.layer_names:
        assert rel_error(multi.covariance(name).numpy(), single.covariance(name).numpy()) <= 1e-12
    pd_single, pd_multi = single.compute(), multi.compute()
    assert pd_single[["intrinsic_dimension", "saturation", "n"]].equals(pd_multi[["intrinsic_dimension",
                                                                                  "saturation", "n"]])


def realistic_maps(kind: str, shape: tuple[int, int, int, int], generator: torch.Generator) -> torch.Tensor:
    """Activations whose rounding errors do not cancel: many repeated values (ReLU zeros, bfloat16)."""
    spread = torch.linspace(0.1, 2.0, shape[1]).view(1, -1, 1, 1)
    maps = torch.randn(shape, generator=generator) * spread
    if kind == "relu":
        return torch.relu(maps)
    if kind == "relu+offset":
        return torch.relu(maps) + 3.0
    return maps.bfloat16().float()  # a bf16 layer output, as under mixed precision


@pytest.mark.parametrize("kind", ["relu", "relu+offset", "bfloat16"])
@pytest.mark.parametrize("shape", [(64, 16, 32, 32), (64, 128, 4, 4)])
def test_exact_path_on_realistic_batches(kind: str, shape: tuple[int, int, int, int]) -> None:
    """The first and a late layer of the benchmark's VGG11 at batch 64, on activations where a float32
    Gram's rounding errors would not cancel (it reached 1.3e-7 with 64 and 3.4e-7 with 128 observations
    per product here, which is why there is no float32 path): float64 stays within 1e-10."""
    from phd_lab.tracking.covariance import CovarianceAccumulator
    generator = torch.Generator().manual_seed(shape[1])
    batches = [realistic_maps(kind, shape, generator) for _ in range(3)]
    exact = CovarianceAccumulator(shape[1])
    for maps in batches:
        exact.update_maps(maps)
    rows = torch.cat([maps.permute(0, 2, 3, 1).reshape(-1, shape[1]) for maps in batches]).double().numpy()
    assert rel_error(exact.covariance().numpy(), np.cov(rows, rowvar=False, bias=True)) <= 1e-10


def test_mixed_precision_forward_passes_are_tracked_at_full_precision() -> None:
    """Under bf16 autocast the layers emit bf16; the sums must still be those of the float64
    definition on exactly those activations (autocast would run a float32 Gram in bf16)."""
    model, data = seeded_model(8), digits_images(200)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = materialised(model, data, batch=40)
        tracker = track(model, data, batch=40)
    for name, acts in reference.items():
        expected = np.cov(acts, rowvar=False, bias=True)
        assert rel_error(tracker.covariance(name).numpy(), expected) <= 1e-10, name


def test_non_finite_activations_give_nan_saturation_and_a_warning_not_a_crash(caplog) -> None:
    """float16 overflow or a diverged run puts inf/NaN into a layer's sums; eigvalsh then raised
    LinAlgError and took the epoch down. The other layers keep their statistics."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 3))
    data = torch.randn(20, 4)
    data[3, 0] = float("inf")
    tracker = track(model, data, batch=10)
    with caplog.at_level("WARNING", logger="phd_lab.tracking.tracker"):
        frame = tracker.compute()
    assert frame["n"].tolist() == [20, 20]
    assert frame["saturation"].isna().all() and frame["intrinsic_dimension"].isna().all()
    assert "0, 1" in caplog.text and "were not finite" in caplog.text
    tracker.reset()
    model(torch.randn(8, 4))
    assert frame.shape == tracker.compute().shape and tracker.compute()["saturation"].notna().all()


def test_a_finite_covariance_whose_eigenvalues_overflow_gives_a_nan_row_not_an_error() -> None:
    """eigvalsh of a finite covariance near float64's limit returns an inf eigenvalue: such a layer's row is NaN,
    like one of non-finite activations, and neither an error (intrinsic_dimension refuses inf) nor k = 0."""
    from phd_lab.tracking.saturation import layer_statistics
    with np.errstate(over="ignore"):  # its trace is inf
        statistics = layer_statistics(np.full((4, 4), 1.7e308), 0.99, 3)
    assert np.isnan(statistics["saturation"]) and np.isnan(statistics["intrinsic_dimension"])
    assert statistics["n"] == 3


def test_reset_and_close() -> None:
    model, data = seeded_model(4), digits_images(128)
    tracker = track(model, data[:64], batch=32)
    tracker.reset()
    assert tracker.compute()["n"].tolist() == [0, 0, 0]
    assert tracker.compute()["saturation"].isna().all()
    with torch.no_grad():
        model(data[64:])
    second_only = track(seeded_model(4), data[64:], batch=64)
    for name in tracker.layer_names:
        assert torch.equal(tracker.covariance(name), second_only.covariance(name))
    tracker.close()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with torch.no_grad():
        model(data[:64])
    assert tracker.compute()["n"].tolist() == [64 * 64, 64 * 16, 64]  # unchanged after close
    tracker.close()  # idempotent


def test_reset_starts_the_batch_selection_of_a_new_pass() -> None:
    """The trainer resets between the training and the test pass: with max_batches and every_n, the second pass
    must select its own first batches, not go on counting from the first pass (and record nothing)."""
    model, data = seeded_model(4), digits_images(96)
    first, second = data[:48].split(16), data[48:].split(16)
    tracker = SaturationTracker(model, max_batches=2, every_n=2)
    with torch.no_grad():
        for batch in first:  # batches 0 and 2 recorded
            model(batch)
        tracker.reset()
        for batch in second:  # again batches 0 and 2 of this pass
            model(batch)
    alone = track(seeded_model(4), torch.cat([second[0], second[2]]), batch=16)
    for name in tracker.layer_names:
        assert torch.equal(tracker.covariance(name), alone.covariance(name))
    assert tracker.compute()["n"].tolist() == alone.compute()["n"].tolist() == [32 * 64, 32 * 16, 32]


def test_rounding_never_gives_negative_eigenvalues_and_a_singular_layer_warns_nothing() -> None:
    """A rank-deficient covariance (dead units, more features than observations) has eigenvalues that rounding
    makes slightly negative: they are reported as 0, and its log det is -inf without a divide-by-zero warning
    in every epoch's log."""
    import warnings

    from phd_lab.tracking.saturation import layer_statistics
    rng = np.random.default_rng(1)
    rank_two = np.cov(rng.normal(size=(200, 2)) @ rng.normal(size=(2, 12)), rowvar=False, bias=True)
    assert np.linalg.eigvalsh(rank_two).min() < 0.0  # what rounding gives here
    values = sorted_eigenvalues(rank_two)
    assert values.min() == 0.0 and np.all(np.diff(values) <= 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        statistics = layer_statistics(rank_two, 0.99, 200)
        assert layer_statistics(np.zeros((4, 4)), 0.99, 10)["log_det"] == -np.inf
    assert statistics["log_det"] == -np.inf and statistics["intrinsic_dimension"] <= 2


def test_a_layer_without_variance_has_intrinsic_dimension_and_saturation_zero() -> None:
    """The module's definition: no variance at all (a dead layer, constant activations) is k = 0, saturation 0,
    which the analysis reads as 'no variance' (not k = d, a fully saturated layer)."""
    assert intrinsic_dimension(np.zeros(4), 0.99) == 0 == brute_force_k(np.zeros(4), 0.99)
    dead = nn.Linear(8, 3)
    with torch.no_grad():
        dead.weight.zero_()
        dead.bias.copy_(torch.tensor([0.3, -1.0, 2.0]))
    tracker = track(dead.eval(), torch.randn(40, 8, generator=torch.Generator().manual_seed(0)), batch=16)
    assert torch.equal(tracker.covariance("<model>"), torch.zeros(3, 3, dtype=torch.float64))
    row = tracker.compute().loc["<model>"]
    assert row["intrinsic_dimension"] == 0 and row["saturation"] == 0.0 and row["n"] == 40


def test_include_exclude_patterns() -> None:
    model = seeded_model()
    names = SaturationTracker(model, include=["body.*"], exclude=["*.2"]).layer_names
    assert names == ["body.0"]
    assert SaturationTracker(model, exclude=["head"]).layer_names == ["body.0", "body.2"]
    # one string is one pattern: tuple("head") would have been four one-letter patterns that match nothing
    assert SaturationTracker(model, exclude="head").layer_names == ["body.0", "body.2"]
    assert SaturationTracker(model, include="body.*", exclude="*.2").layer_names == ["body.0"]
    with pytest.raises(TypeError, match="exclude"):
        TrackerOptions(exclude=["head", 3])


class Prefixes(nn.Module):
    """Layers whose names are prefixes of each other's (``fc`` and ``fc2``), in one Sequential."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.fc2, self.block = nn.Linear(4, 4), nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.fc2(self.fc(x)))


def test_include_patterns_match_whole_names_with_wildcards_anywhere() -> None:
    """fnmatch over the whole qualified name: 'fc' is not 'fc2', and a wildcard may lead ('*.0') or sit inside."""
    model = Prefixes()
    assert SaturationTracker(model, include=["fc"]).layer_names == ["fc"]
    assert SaturationTracker(model, include=["*.0"]).layer_names == ["block.0"]
    assert SaturationTracker(model, include=["f?2", "b*0"]).layer_names == ["fc2", "block.0"]
    assert SaturationTracker(model, include=["fc*"], exclude=["fc"]).layer_names == ["fc2"]


class TwiceCalled(nn.Module):
    """Calls ``shared`` twice per forward pass, so a direct call of it is easy to tell apart."""

    def __init__(self) -> None:
        super().__init__()
        self.shared, self.out = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.shared(self.shared(x)))


def test_a_submodule_called_on_its_own_after_a_forward_pass_is_not_recorded() -> None:
    """The batch selection holds for the model's forward passes only: ``model.shared(x)`` after one recorded
    pass was accumulated too, past max_batches and every_n."""
    torch.manual_seed(0)
    model, data = TwiceCalled(), torch.randn(50, 4)
    with SaturationTracker(model, max_batches=1) as tracker, torch.no_grad():
        model(data)
        model.shared(data)
        model(data)  # beyond max_batches
        model.shared(data)
        assert tracker.compute()["n"].tolist() == [100, 50]


def test_max_batches_and_every_n_select_the_right_batches() -> None:
    model, data = seeded_model(5), digits_images(160)
    batches = list(data.split(16))  # 10 batches
    tracker = SaturationTracker(model, every_n=3, max_batches=3)
    run = run_pass(tracker, model, batches, torch.device("cpu"))
    assert run == 3
    chosen = torch.cat([batches[0], batches[3], batches[6]])
    reference = materialised(model, chosen, batch=16)
    for name, acts in reference.items():
        assert rel_error(tracker.covariance(name).numpy(), np.cov(acts, rowvar=False, bias=True)) <= 1e-10
    tracker.close()
    # the same selection when every batch is forwarded by the caller (hooks gate themselves)
    gated = track(model, data, batch=16, every_n=3, max_batches=3)
    for name in reference:
        assert torch.equal(gated.covariance(name), tracker.covariance(name))


def test_run_pass_forwards_every_batch_of_a_loader_including_a_short_last_one() -> None:
    """The trainer's covariance passes go through run_pass with (inputs, labels) batches; with the default options
    every batch counts, the short last one too (150 images in batches of 64: 64, 64, 22)."""
    model, data = seeded_model(7), digits_images(150)
    batches = [(chunk, torch.zeros(len(chunk), dtype=torch.long)) for chunk in data.split(64)]
    tracker = SaturationTracker(model)
    assert run_pass(tracker, model, batches, torch.device("cpu")) == 3
    assert tracker.compute().loc["head", "n"] == 150
    for name, acts in materialised(model, data, batch=64).items():
        assert rel_error(tracker.covariance(name).numpy(), np.cov(acts, rowvar=False, bias=True)) <= 1e-10, name
    tracker.close()


def test_passes_the_when_condition_refuses_do_not_count_towards_every_n() -> None:
    """Inline tracking: the test set's tracker (``when``: eval mode) sees the epoch's training passes first. Its
    every-n-th selection starts at the first pass it accepts, as in a separate pass over the test set: eval batches
    0 and 2 of 4 after 3 training passes (counting those, it took batches 1 and 3)."""
    model, data = seeded_model(6), digits_images(64)
    batches = list(data.split(16))
    tracker = SaturationTracker(model, every_n=2, when=lambda m: not m.training)
    with torch.no_grad():
        model.train()
        for batch in batches[:3]:
            model(batch)
        model.eval()
        for batch in batches:
            model(batch)
    tracker.close()
    reference = materialised(model, torch.cat([batches[0], batches[2]]), batch=16)
    for name, acts in reference.items():
        assert rel_error(tracker.covariance(name).numpy(), np.cov(acts, rowvar=False, bias=True)) <= 1e-10, name


@pytest.mark.parametrize("method", ["adaptive_avg", "nearest", "bilinear"])
def test_downsampling_equals_np_cov_of_downsampled_maps(method: str) -> None:
    model, data = seeded_model(6), digits_images(64)
    conv = model.body[0]
    maps = []
    handle = conv.register_forward_hook(lambda m, i, o: maps.append(o.clone()))
    tracker = track(model, data, batch=32, resolution=4, downsampling=method)
    handle.remove()
    full = torch.cat(maps)
    small = (F.adaptive_avg_pool2d(full, 4) if method == "adaptive_avg"
             else F.interpolate(full, size=(4, 4), mode=method, **({"align_corners": False}
                                                                    if method == "bilinear" else {})))
    acts = small.permute(0, 2, 3, 1).reshape(-1, 6).double().numpy()
    assert rel_error(tracker.covariance("body.0").numpy(), np.cov(acts, rowvar=False, bias=True)) <= 1e-10
    assert tracker.compute().loc["body.2", "n"] == 64 * 16  # 4×4 maps are left alone


@pytest.mark.parametrize("method", ["adaptive_avg", "nearest", "bilinear"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_downsampling_of_odd_non_square_maps_keeps_the_models_precision(method: str, dtype: torch.dtype) -> None:
    """7×5 maps to at most 3×6: adaptive pooling's general kernel (not the avg_pool shortcut), a side that
    is already small enough, and float64 models, whose maps must not pass through float32."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(2, 5, 1)).to(dtype)
    data = torch.randn(40, 2, 7, 5, dtype=dtype)
    tracker = track(model, data, batch=20, resolution=(3, 6), downsampling=method)
    with torch.no_grad():
        full = model(data)
    small = (F.adaptive_avg_pool2d(full, (3, 5)) if method == "adaptive_avg"
             else F.interpolate(full, size=(3, 5), mode=method, **({"align_corners": False}
                                                                    if method == "bilinear" else {})))
    acts = small.permute(0, 2, 3, 1).reshape(-1, 5).double().numpy()
    assert rel_error(tracker.covariance("0").numpy(), np.cov(acts, rowvar=False, bias=True)) <= 1e-10


def test_unbatched_conv_input_is_tracked_as_one_image() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 4, 3))
    image = torch.randn(1, 9, 9)
    with SaturationTracker(model, resolution=4) as tracker, torch.no_grad():
        model(image)  # nn.Conv2d accepts (C, H, W); tracking must not break that
        frame = tracker.compute()
    assert frame["n"].tolist() == [16, 16]  # 7×7 and 5×5 maps, each reduced to 4×4


def test_delta_accepts_numpy_numbers_and_an_empty_selection_names_its_patterns(caplog) -> None:
    from phd_lab.tracking.saturation import check_delta
    assert check_delta(np.float32(0.5)) == 0.5 and check_delta(np.float64(0.99)) == 0.99
    with pytest.raises(ValueError, match="delta"):
        check_delta(np.bool_(True))
    with caplog.at_level("WARNING"):
        SaturationTracker(seeded_model(), include=["nothing*"]).close()
    assert "the include patterns ['nothing*'] and exclude patterns [] leave no" in caplog.text


def test_lstm_outputs_are_tracked() -> None:
    torch.manual_seed(0)
    lstm = nn.LSTM(input_size=4, hidden_size=6, batch_first=True, bidirectional=True)
    data = torch.randn(40, 7, 4)
    outputs = []
    handle = lstm.register_forward_hook(lambda m, i, o: outputs.append(o[0].clone()))
    tracker = track(lstm, data, batch=10)
    handle.remove()
    acts = torch.cat(outputs).reshape(-1, 12).double().numpy()
    assert rel_error(tracker.covariance("<model>").numpy(), np.cov(acts, rowvar=False, bias=True)) <= 1e-10
    assert tracker.compute().loc["<model>", "feature_dimension"] == 12


def test_invalid_options_are_rejected() -> None:
    model = seeded_model()
    with pytest.raises(ValueError, match="delta"):
        SaturationTracker(model, delta=0.0)
    with pytest.raises(ValueError, match="downsampling"):
        SaturationTracker(model, downsampling="cubic")
    with pytest.raises(ValueError, match="every_n"):
        TrackerOptions(every_n=0)
    with pytest.raises(ValueError, match="max_batches"):
        TrackerOptions(max_batches=0)
    with pytest.raises(ValueError, match="max_batches must be an integer"):
        TrackerOptions(max_batches=2.5)  # recorded 3 batches before
    for bad in (0, True, 2.5, (8,), (8, 8, 8), (8, "8"), "8"):
        with pytest.raises(ValueError, match="resolution must be"):
            TrackerOptions(resolution=bad)


def test_options_take_numpy_integers_as_python_ints() -> None:
    """Sizes taken from an array's shape or a numpy grid (np.int64) were refused as no integers."""
    options = TrackerOptions(resolution=np.int64(4), max_batches=np.int32(3), every_n=np.int64(2))
    assert options.resolution == (4, 4) and options.max_batches == 3 and options.every_n == 2
    assert all(type(value) is int for value in (*options.resolution, options.max_batches, options.every_n))
    assert TrackerOptions(resolution=[np.int64(4), 6]).resolution == (4, 6)
    with pytest.raises(ValueError, match="every_n"):
        TrackerOptions(every_n=np.bool_(True))


def test_tracking_never_changes_the_model_output() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten(), nn.Linear(3 * 6 * 6, 1)).eval()
    data = digits_images(32)
    with torch.no_grad():
        plain = model(data)
        with SaturationTracker(model):
            tracked = model(data)
    assert torch.equal(plain, tracked)


@pytest.mark.parametrize("as_maps", [False, True])
def test_accumulator_with_a_large_mean_and_drifting_batches_equals_numpy(as_maps: bool) -> None:
    """The running sums are taken around the first batch's mean: a mean 1e6 times the spread,
    and batch means that drift away from the first one, must not cost float64 digits."""
    from phd_lab.tracking.covariance import CovarianceAccumulator
    generator = np.random.default_rng(5)
    mixing = generator.normal(size=(4, 4))
    batches = [1e4 + 0.05 * i + generator.normal(size=(96, 4)) @ mixing * 1e-2 for i in range(40)]
    everything = np.concatenate(batches)  # a copy: an update that wrote into its input would show below
    accumulator = CovarianceAccumulator(4)
    for rows in batches:
        tensor = torch.from_numpy(rows)
        if as_maps:  # (B, C, H, W) with B·H·W = 96 positions
            accumulator.update_maps(tensor.reshape(6, 4, 4, 4).permute(0, 3, 1, 2))
        else:
            accumulator.update(tensor)
    expected = np.cov(everything, rowvar=False, bias=True)
    assert rel_error(accumulator.covariance().numpy(), expected) <= 1e-10
    assert np.abs(accumulator.mean.numpy() - everything.mean(axis=0)).max() <= 1e-9
    assert accumulator.n == everything.shape[0]


@pytest.mark.parametrize("as_maps", [False, True])
def test_a_mean_a_billion_times_the_spread_keeps_the_covariance_to_rounding_level(as_maps: bool) -> None:
    """The first batch's rounded mean is the shift, so that batch's Σ (a − shift) is n₁ times the rounding error
    of the mean, not 0: taken as 0, the covariance of these batches (mean 1e6, spread 1e-3) was off by 2e-9."""
    from phd_lab.tracking.covariance import CovarianceAccumulator
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(16, 3, generator=generator, dtype=torch.float64) * 1e-3
    batches = [torch.randn(96, 3, generator=generator, dtype=torch.float64) @ mixing.T + 1e6 for _ in range(3)]
    accumulator = CovarianceAccumulator(16)
    for rows in batches:  # as maps: (B, C, H, W) with B·H·W = 96 positions, on the torch path (little work)
        accumulator.update_maps(rows.reshape(6, 4, 4, 16).permute(0, 3, 1, 2)) if as_maps else accumulator.update(rows)
    expected = np.cov(torch.cat(batches).numpy(), rowvar=False, bias=True)
    assert rel_error(accumulator.covariance().numpy(), expected) <= 1e-12


@pytest.mark.parametrize("conv", [False, True])
def test_a_float64_layer_with_one_constant_output_has_no_variance(conv: bool) -> None:
    """Constant float64 outputs whose mean rounds: every shifted value is the same tiny residue r, so the covariance
    is Σr²/n − (Σr/n)² = 0 only when the first batch's Σr is kept; taken as 0, the layer had saturation 1/d."""
    layer = nn.Conv2d(3, 16, 3).double() if conv else nn.Linear(3, 64).double()
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.copy_(torch.rand(layer.bias.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    data = torch.randn(67, 3, 9, 9, dtype=torch.float64) if conv else torch.randn(607, 3, dtype=torch.float64)
    tracker = track(layer.eval(), data, batch=300 if not conv else 30)
    assert torch.equal(tracker.covariance("<model>"), torch.zeros((layer.bias.numel(),) * 2, dtype=torch.float64))
    assert tracker.compute().loc["<model>", "saturation"] == 0.0


@pytest.mark.parametrize("layer, shape", [(nn.Linear(6, 5), (40, 6)), (nn.Conv2d(3, 8, 3), (4, 3, 9, 9)),
                                          (nn.Conv2d(3, 32, 3, padding=1), (16, 3, 16, 16))])  # the fused kernel
def test_a_pass_that_begins_under_inference_mode_goes_on_outside_it(layer: nn.Module, shape: tuple[int, ...]) -> None:
    """An evaluation under torch.inference_mode, then training batches: the sums the first batch made were
    inference tensors, and the next batch's in-place update raised a RuntimeError inside the forward hook."""
    data = torch.randn(3, *shape, generator=torch.Generator().manual_seed(0))
    with SaturationTracker(layer) as tracker:
        with torch.inference_mode():
            layer(data[0])
        with torch.no_grad():
            layer(data[1])
        layer(data[2])
    expected = np.cov(observation_rows([layer(batch).detach() for batch in data]), rowvar=False, bias=True)
    assert rel_error(tracker.covariance("<model>").numpy(), expected) <= 1e-12


def test_log_det_of_singular_and_regular_covariances_matches_slogdet() -> None:
    from phd_lab.tracking.saturation import layer_statistics
    rng = np.random.default_rng(0)
    regular = np.cov(rng.normal(size=(200, 6)), rowvar=False, bias=True)
    assert layer_statistics(regular, 0.99, 200)["log_det"] == pytest.approx(np.linalg.slogdet(regular)[1],
                                                                           rel=1e-12)
    rank_two = np.cov(rng.normal(size=(200, 2)) @ rng.normal(size=(2, 6)), rowvar=False, bias=True)
    # rank 2 of 6: the four remaining eigenvalues are rounding noise, clipped to 0 (-inf) or tiny
    assert layer_statistics(rank_two, 0.99, 200)["log_det"] < np.linalg.slogdet(regular)[1] - 50
    assert layer_statistics(np.zeros((4, 4)), 0.99, 10)["log_det"] == -np.inf  # a layer without variance


class AttentionNet(nn.Module):
    """Linear → MultiheadAttention → mean over the sequence → Linear (whose out_proj is never called)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 8)
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        return self.head(self.attention(h, h, h, need_weights=False)[0].mean(1))


def test_attentions_out_proj_is_not_tracked_as_it_is_never_called() -> None:
    """nn.MultiheadAttention reads out_proj's weight in a functional kernel: a hook on it gave an empty row."""
    torch.manual_seed(0)
    tracker = track(AttentionNet(), torch.randn(30, 5, 6), batch=10)
    frame = tracker.compute()
    assert list(frame.index) == ["embed", "head"] and frame["n"].tolist() == [150, 30]


def test_a_pattern_error_offers_only_layers_that_can_be_tracked(tmp_path) -> None:
    """The "leave no layer" error lists the names a pattern can select: attention's out_proj is never hooked,
    so naming it would give the same error again."""
    from phd_lab.errors import ConfigError
    from phd_lab.grid import Grid
    from phd_lab.model_checks import check_tracked_layers
    cfg = Grid({"model": "vgg11", "dataset": "Digits", "tracking_include": ["nothing"],
                "logs_dir": str(tmp_path)}, "test.json")[0]
    with pytest.raises(ConfigError) as error:
        check_tracked_layers(cfg, AttentionNet())
    assert "layers: embed, head." in str(error.value) and "out_proj" not in str(error.value)


def test_exclude_patterns_alone_that_leave_no_layer_are_refused(tmp_path) -> None:
    """tracking_exclude without tracking_include is checked too: excluding every layer is an error, excluding
    some is not."""
    from phd_lab.errors import ConfigError
    from phd_lab.grid import Grid
    from phd_lab.model_checks import check_tracked_layers
    every, some = (Grid({"model": "vgg11", "dataset": "Digits", "tracking_exclude": exclude, "logs_dir": str(tmp_path)},
                        "test.json")[0] for exclude in (["embed", "head"], ["embed"]))
    with pytest.raises(ConfigError, match=r"tracking_include \[\] and tracking_exclude \['embed', 'head'\] leave "
                                          r"no layer of 'vgg11' to track. Its Conv2d, Linear and LSTM layers: embed"):
        check_tracked_layers(every, AttentionNet())
    check_tracked_layers(some, AttentionNet())


class _ToChannelsLast(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)


def test_tracking_resolution_reduces_the_maps_of_a_linear_on_a_channels_last_map() -> None:
    """ConvNeXt's Linear layers output (B, H, W, C) feature maps: tracking_resolution reduces them over H and W
    as it does the convolutions' maps beside them (they kept every position: 8×8 rows per image, not 4×4)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), _ToChannelsLast(), nn.Linear(3, 5))
    images = torch.randn(6, 1, 8, 8)
    with SaturationTracker(model, resolution=4) as tracker, torch.no_grad():
        hidden = model(images)
        frame = tracker.compute()
    assert frame["n"].tolist() == [6 * 16, 6 * 16]
    rows = F.adaptive_avg_pool2d(hidden.permute(0, 3, 1, 2), 4).permute(0, 2, 3, 1).reshape(-1, 5).double().numpy()
    assert rel_error(tracker.covariance("2").numpy(), np.cov(rows, rowvar=False, bias=True)) <= 1e-10


def test_at_delta_one_a_rank_deficient_layer_has_its_rank_not_a_count_of_rounding_noise() -> None:
    """A 64-wide Linear layer fed 2 inputs spans 2 directions; at delta = 1 its k counted the eigenvalues that
    rounding left above 0 (3 to 10 by seed), so the saturation at delta = 1 was noise, not the layer's rank."""
    for seed in range(5):
        generator = torch.Generator().manual_seed(seed)
        model = nn.Sequential(nn.Linear(2, 64))
        with torch.no_grad():
            model[0].weight.copy_(torch.randn(64, 2, generator=generator))
        tracker = SaturationTracker(model, delta=1.0)
        with torch.no_grad():
            for _ in range(4):
                model(torch.randn(250, 2, generator=generator))
        frame = tracker.compute()
        tracker.close()
        assert frame.loc["0", "intrinsic_dimension"] == 2, seed
    assert intrinsic_dimension(np.array([3.0, 1.0, 1e-17, 0.0]), 1.0) == 2  # 1e-17 < 3 · 4 · ε: rounding level


def test_a_numerically_singular_layer_has_a_log_det_of_minus_infinity_not_one_of_rounding_noise() -> None:
    """A covariance of rank d - 1 whose last eigenvalue rounding left at +1e-17 had a finite log det (that of the
    noise), one rounded to -1e-17 had -inf: the same layer either way."""
    from phd_lab.tracking.saturation import layer_statistics
    basis = np.linalg.qr(np.random.default_rng(0).standard_normal((3, 3)))[0]
    for noise in (1e-17, 0.0, -1e-17):
        cov = basis @ np.diag([2.0, 1.0, noise]) @ basis.T
        assert layer_statistics(cov, 0.99, 100)["log_det"] == -np.inf, noise
    assert layer_statistics(np.diag([2.0, 1.0, 1e-3]), 0.99, 100)["log_det"] == pytest.approx(np.log(2e-3))


def test_a_tracking_pattern_that_matches_no_layer_of_a_model_is_warned_of_once_per_model(tmp_path, capsys) -> None:
    """A typo in tracking_exclude ('classifer.*') left the layers it meant tracked, in the saturation mean and the
    tails, and an include pattern naming a ReLU ('features.1') was dropped, each with exit 0 and no word. Each is
    warned of, once per model of the grid (not per learning rate), and not refused: a grid over several models may
    share patterns that only some of them match (VGG's 'classifier.*' is no layer of a ResNet)."""
    from tests.conftest import main_in_process
    config = tmp_path / "exp.json"
    config.write_text(json.dumps({"model": ["vgg11", "resnet18"], "model_args": {"width": 0.125}, "dataset": "Digits",
                                  "resolution": 8, "epoch": 1, "optimizer_args": {"lr": [0.1, 0.01]},
                                  "tracking_include": ["features.*", "layer*", "features.1"],
                                  "tracking_exclude": ["classifier.*", "classifer.*"],
                                  "logs_dir": str(tmp_path / "logs")}))
    code, err = main_in_process(capsys, "--config", str(config), "--dry-run")
    said = " ".join(err.split())
    assert code == 0, said
    warned = re.findall(r"the (tracking_\w+) pattern '([^']+)' matches no Conv2d, Linear or LSTM layer of '(\w+)'",
                        said)
    assert sorted(warned) == sorted([
        ("tracking_include", "features.1", "vgg11"), ("tracking_exclude", "classifer.*", "vgg11"),  # a ReLU; a typo
        ("tracking_include", "layer*", "vgg11"),
        ("tracking_include", "features.*", "resnet18"), ("tracking_include", "features.1", "resnet18"),
        ("tracking_exclude", "classifier.*", "resnet18"), ("tracking_exclude", "classifer.*", "resnet18")])
