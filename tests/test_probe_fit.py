"""The pure probe functions against direct scikit-learn fits, and the solvers against each other."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix
from sklearn.preprocessing import StandardScaler

from phd_lab.errors import ConfigError
from phd_lab.probes.fit import (fit_torch_lbfgs, probe_arrays, probe_layer, standardize, standardize_tensors,
                                stratified_subsample)
from phd_lab.probes.settings import ProbeSettings
from tests.probe_latents import blob_layers, digits_layers, make_latents


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("solver, scaled, C, max_iter, tol", [
    ("saga", False, 1.0, 100, 1e-4), ("saga", True, 0.3, 15, 1e-4), ("lbfgs", True, 2.0, 1000, 1e-4),
    ("lbfgs", False, 1.0, 7, 1e-4), ("saga", False, 1.0, 100, 0.05)])
def test_probe_equals_direct_sklearn_fit(tmp_path, solver, scaled, C, max_iter, tol):
    layers, y_train, y_eval = digits_layers(n_layers=1, width=24)
    _, folder = make_latents(tmp_path, layers, y_train, y_eval)
    x_train, x_eval = layers["features.0"]
    settings = ProbeSettings(solver=solver, C=C, max_iter=max_iter, tol=tol, standardize=scaled, seed=3)
    record = probe_layer(1, "features.0", folder / "train-features.0.npy", folder / "eval-features.0.npy",
                         folder / "train-labels.npy", folder / "eval-labels.npy", settings)

    if scaled:  # the runner's standardisation (equal to StandardScaler's, tested below) to the last bit:
        # lbfgs' iteration count moves with the last bits of its input, and rounding differs between CPUs
        x_train, x_eval = standardize(np.array(x_train), np.array(x_eval))
    direct = LogisticRegression(solver=solver, C=C, max_iter=max_iter, tol=tol, random_state=3).fit(x_train, y_train)
    assert record.train_acc == pytest.approx(direct.score(x_train, y_train), abs=1 / len(y_train) + 1e-12)
    assert record.eval_acc == pytest.approx(direct.score(x_eval, y_eval), abs=1 / len(y_eval) + 1e-12)
    assert record.n_iter == int(direct.n_iter_[0])
    assert record.converged == (direct.n_iter_[0] < max_iter)
    expected = confusion_matrix(y_eval, direct.predict(x_eval), normalize="true")
    np.testing.assert_allclose(record.confusion_matrix(), expected, atol=2 / 30)
    assert (record.n_train, record.n_eval, record.n_features) == (1200, 300, 24)
    assert record.classes == list(range(10))


def test_unstandardised_saga_is_bit_identical_to_sklearn():
    layers, y_train, y_eval = digits_layers(n_layers=1, width=16)
    x_train, x_eval = layers["features.0"]
    record = probe_arrays(1, "l", x_train, y_train, x_eval, y_eval, ProbeSettings(max_iter=30, seed=5))
    direct = LogisticRegression(solver="saga", max_iter=30, random_state=5).fit(x_train, y_train)
    assert record.train_acc == direct.score(x_train, y_train)
    assert record.eval_acc == direct.score(x_eval, y_eval)
    np.testing.assert_array_equal(record.confusion_matrix(),
                                  confusion_matrix(y_eval, direct.predict(x_eval), normalize="true"))


def test_solvers_agree_on_separable_data():
    layers, y_train, y_eval = blob_layers(n_layers=2)
    for name, (x_train, x_eval) in layers.items():
        accuracies = {solver: probe_arrays(1, name, x_train, y_train, x_eval, y_eval, ProbeSettings(solver=solver))
                      for solver in ("saga", "lbfgs", "lbfgs-torch")}
        evals = [r.eval_acc for r in accuracies.values()]
        assert min(evals) > 0.95
        assert max(evals) - min(evals) <= 0.02
        assert accuracies["lbfgs"].converged and accuracies["lbfgs-torch"].converged


def test_torch_lbfgs_matches_sklearn_lbfgs_on_hard_data():
    """Same objective: on overlapping classes both optimisers land on (nearly) the same predictions."""
    layers, y_train, y_eval = digits_layers(n_layers=1, width=20, seed=4)
    x_train, x_eval = layers["features.0"]
    sk = probe_arrays(1, "l", x_train, y_train, x_eval, y_eval, ProbeSettings(solver="lbfgs", C=0.5))
    th = probe_arrays(1, "l", x_train, y_train, x_eval, y_eval, ProbeSettings(solver="lbfgs-torch", C=0.5))
    assert sk.eval_acc < 0.99  # not trivially separable
    assert abs(sk.eval_acc - th.eval_acc) <= 0.01
    assert abs(sk.train_acc - th.train_acc) <= 0.01
    np.testing.assert_allclose(sk.confusion_matrix(), th.confusion_matrix(), atol=0.1)


@pytest.mark.parametrize("left_out", [1, 5, 9])
def test_a_subsample_that_leaves_out_fewer_samples_than_classes_keeps_each_class_share(left_out):
    """--train-samples 1430 of 1,437 Digits samples (10 classes) was refused: scikit-learn's stratified split needs
    every class in the part left out too. Each class keeps its share rounded by largest remainders, seeded."""
    y = np.repeat(np.arange(10), [143, 144, 145, 140, 150, 139, 146, 141, 144, 145])
    n = len(y) - left_out
    chosen = stratified_subsample(y, n, seed=3)
    assert len(chosen) == n and len(np.unique(chosen)) == n and np.all(np.diff(chosen) > 0)
    kept = np.bincount(y[chosen], minlength=10)
    counts = np.bincount(y)
    assert np.all(np.abs(kept - counts * n / len(y)) < 1) and np.all(kept <= counts)
    np.testing.assert_array_equal(chosen, stratified_subsample(y, n, seed=3))
    assert not np.array_equal(chosen, stratified_subsample(y, n, seed=4))


def test_stratified_subsample_keeps_class_proportions_and_is_seeded():
    y = np.repeat(np.arange(4), [100, 200, 300, 400])
    chosen = stratified_subsample(y, 100, seed=1)
    assert len(chosen) == 100 and np.all(np.diff(chosen) > 0)
    assert np.bincount(y[chosen]).tolist() == [10, 20, 30, 40]
    np.testing.assert_array_equal(chosen, stratified_subsample(y, 100, seed=1))
    assert not np.array_equal(chosen, stratified_subsample(y, 100, seed=2))
    assert stratified_subsample(y, None, 0) is None and stratified_subsample(y, 1000, 0) is None


def test_probe_with_train_subsample_fits_on_the_subsample_only():
    layers, y_train, y_eval = digits_layers(n_layers=1, width=16)
    x_train, x_eval = layers["features.0"]
    settings = ProbeSettings(solver="lbfgs", train_samples=300, seed=2)
    record = probe_arrays(1, "l", x_train, y_train, x_eval, y_eval, settings)
    chosen = stratified_subsample(y_train, 300, 2)
    scaler = StandardScaler().fit(x_train[chosen])
    direct = LogisticRegression(max_iter=1000).fit(scaler.transform(x_train[chosen]), y_train[chosen])
    assert record.n_train == 300
    assert record.eval_acc == pytest.approx(direct.score(scaler.transform(x_eval), y_eval), abs=2 / 300)


def test_a_training_subsample_leaves_the_eval_set_whole():
    """train_samples draws from the training split only: every eval sample is scored, also where the subsample is
    smaller than the eval set (200 of 1,200 training samples, 300 eval samples)."""
    layers, y_train, y_eval = digits_layers(n_layers=1, width=16)
    x_train, x_eval = layers["features.0"]
    record = probe_arrays(1, "l", x_train, y_train, x_eval, y_eval,
                          ProbeSettings(solver="lbfgs", train_samples=200, seed=2))
    chosen = stratified_subsample(y_train, 200, 2)
    scaler = StandardScaler().fit(x_train[chosen])
    direct = LogisticRegression(max_iter=1000).fit(scaler.transform(x_train[chosen]), y_train[chosen])
    predicted = direct.predict(scaler.transform(x_eval))
    assert (record.n_train, record.n_eval) == (200, 300)
    assert record.eval_acc == pytest.approx(np.mean(predicted == y_eval), abs=2 / 300)
    np.testing.assert_allclose(record.confusion_matrix(), confusion_matrix(y_eval, predicted, normalize="true"),
                               atol=0.1)


@pytest.mark.parametrize("solver", ["saga", "lbfgs", "lbfgs-torch"])
def test_class_labels_that_are_not_0_to_k_minus_1_are_predicted_as_themselves(solver):
    """Labels as a dataset may have them (a subset of classes: 5, 7 and 11): every solver predicts those labels,
    so its accuracy is that of the same data labelled 0, 1, 2, and the record names the classes."""
    layers, y_train, y_eval = blob_layers(n_layers=1)
    x_train, x_eval = layers["block0.conv"]
    labels = np.array([5, 7, 11])
    settings = ProbeSettings(solver=solver)
    record = probe_arrays(1, "l", x_train, labels[y_train], x_eval, labels[y_eval], settings)
    plain = probe_arrays(1, "l", x_train, y_train, x_eval, y_eval, settings)
    assert plain.eval_acc > 0.9
    assert (record.train_acc, record.eval_acc) == (plain.train_acc, plain.eval_acc)
    assert record.classes == [5, 7, 11]
    np.testing.assert_array_equal(record.confusion_matrix(), plain.confusion_matrix())


def test_settings_from_config_values_and_overrides():
    settings = ProbeSettings.from_mapping({"probe_solver": "lbfgs", "probe_C": 2}, {"C": 0.5, "tol": None})
    assert (settings.solver, settings.C, settings.tol) == ("lbfgs", 0.5, 1e-4)
    assert settings.resolved().max_iter == 1000 and settings.resolved().standardize is True
    assert ProbeSettings().resolved().max_iter == 100 and ProbeSettings().resolved().standardize is False
    assert "device" not in ProbeSettings().key() and ProbeSettings(solver="lbfgs-torch").key()["device"] == "cpu"
    with pytest.raises(ConfigError, match="'probe_C' must be a number ≥ 1e-30"):
        ProbeSettings.from_mapping({"probe_C": 0})
    with pytest.raises(ConfigError, match="probe_solver.*got \"sgd\""):
        ProbeSettings.from_mapping({}, {"solver": "sgd"})
    with pytest.raises(ConfigError, match="only the lbfgs-torch solver runs on a GPU"):
        ProbeSettings.from_mapping({"probe_device": "cuda"})
    # the command line's half of a pair that does not go together is named, not blamed on the config
    with pytest.raises(ConfigError, match=r"^q.json \(run 0\) with the command line's --probe-device: 'probe_device' "
                                          r"is 'cuda:1', but only the lbfgs-torch solver"):
        ProbeSettings.from_mapping({"probe_solver": "saga"}, {"device": "cuda:1"}, "q.json (run 0)")
    with pytest.raises(ConfigError, match=r"^q.json \(run 0\) with the command line's --solver: 'probe_device'"):
        ProbeSettings.from_mapping({"probe_solver": "lbfgs-torch", "probe_device": "cuda"}, {"solver": "saga"},
                                   "q.json (run 0)")
    # a false or zero value on the command line overrides the config as any other value does
    assert ProbeSettings.from_mapping({"probe_standardize": True}, {"standardize": False}).standardize is False
    assert ProbeSettings.from_mapping({"probe_seed": 5}, {"seed": 0}).seed == 0
    for device in ("cuda:0x", "cpu ", "cuda:"):
        with pytest.raises(ConfigError, match="must be cpu, cuda or cuda:N"):
            ProbeSettings.from_mapping({"probe_solver": "lbfgs-torch", "probe_device": device})


def test_the_card_a_torch_probe_ran_on_is_no_part_of_its_key():
    """cuda, cuda:0 and cuda:1 fit the same probe: a job rerun on another card (or named otherwise) reuses the
    cache; the kind of device still tells a GPU fit from a CPU one, and the job's log line names the card."""
    keys = {device: ProbeSettings(solver="lbfgs-torch", device=device).key() for device in ("cuda", "cuda:0", "cuda:1")}
    assert keys["cuda"] == keys["cuda:0"] == keys["cuda:1"] and keys["cuda"]["device"] == "cuda"
    assert ProbeSettings(solver="lbfgs-torch", device="cpu").key() != keys["cuda"]
    assert "device=cuda:1" in ProbeSettings(solver="lbfgs-torch", device="cuda:1").describe()
    assert "device" not in ProbeSettings(solver="saga").describe()


def test_the_seed_keys_an_lbfgs_probe_only_when_it_draws_a_subsample():
    """lbfgs starts from zeros, so its seed changes nothing, unless it draws a training subsample: then two
    seeds are two different probes and must not share a cache entry."""
    assert "seed" not in ProbeSettings(solver="lbfgs", seed=1).key()
    assert ProbeSettings(solver="lbfgs", seed=1).key() == ProbeSettings(solver="lbfgs", seed=2).key()
    assert ProbeSettings(solver="lbfgs", train_samples=100, seed=1).key()["seed"] == 1
    assert ProbeSettings(solver="saga", seed=1).key() != ProbeSettings(solver="saga", seed=2).key()


@pytest.mark.parametrize("implementation", ["numpy", "torch"])
def test_standardize_equals_standard_scaler_including_constant_features(implementation):
    rng = np.random.default_rng(0)
    spread, offset = [1, 10, 0.01, 3, 1, 1, 1], [5, -2, 100, 0, 7, 0, 1e4]
    x_train = (rng.standard_normal((1000, 7)) * spread + offset).astype(np.float32)
    x_train[:, 4] = 7.0  # constant: scale 1, as StandardScaler does
    x_train[:, 5] = 0.0  # a dead ReLU unit: zero variance around a zero mean is constant too, not 0 / 0
    # two values 1 ulp apart around 1e4: not constant by StandardScaler's rule, so scaled to ±1
    x_train[:, 6] = np.float32(1e4) + np.float32(1e4) * np.finfo(np.float32).eps * (np.arange(1000) % 2)
    x_eval = (rng.standard_normal((300, 7)) * 2).astype(np.float32)
    # float64 reference: StandardScaler on float32 data subtracts a float32 mean, which loses digits
    # on a feature like column 2 (mean 100, spread 0.01); the float64 statistics here do not
    scaler = StandardScaler().fit(x_train.astype(np.float64))
    if implementation == "torch":
        train_t, eval_t = torch.from_numpy(x_train.copy()), torch.from_numpy(x_eval.copy())
        standardize_tensors(train_t, eval_t, rows=64)  # several blocks
        train, evaluation = train_t.numpy(), eval_t.numpy()
    else:
        train, evaluation = standardize(x_train.copy(), x_eval.copy(), rows=64)
    assert train.dtype == evaluation.dtype == np.float32
    np.testing.assert_allclose(train, scaler.transform(x_train.astype(np.float64)), rtol=0, atol=1e-6)
    np.testing.assert_allclose(evaluation, scaler.transform(x_eval.astype(np.float64)), rtol=1e-6, atol=1e-6)
    assert np.all(train[:, 4] == 0.0) and np.all(train[:, 5] == 0.0)
    np.testing.assert_array_equal(evaluation[:, 5], x_eval[:, 5])  # centred on 0, scaled by 1


def test_lbfgs_torch_minimises_scikit_learns_objective_on_two_classes():
    """With two classes scikit-learn fits one binomial vector with ||w||²/2; two softmax rows with the
    same penalty would be the binomial problem at 2·C. C is chosen where C and 2·C predict differently."""
    rng = np.random.default_rng(1)
    y = (rng.random(300) < 0.3).astype(int)
    x = (rng.standard_normal((300, 10)) + y[:, None] * 0.8).astype(np.float32)
    C = 0.005
    at_c = LogisticRegression(C=C, tol=1e-10, max_iter=5000).fit(x, y).predict(x)
    at_2c = LogisticRegression(C=2 * C, tol=1e-10, max_iter=5000).fit(x, y).predict(x)
    assert (at_c != at_2c).sum() >= 10
    # tol 1e-5: at 1e-7 its float32 fit stalls with a largest gradient entry of 3.7e-6 (not converged by that tol)
    result = fit_torch_lbfgs(x.copy(), y, x.copy(), ProbeSettings(solver="lbfgs-torch", standardize=False, C=C,
                                                                  tol=1e-5))
    np.testing.assert_array_equal(result.train_pred, at_c)
    assert result.converged


def test_lbfgs_torch_fits_inside_a_callers_inference_mode_as_outside_it():
    """A probe job started from a notebook inside ``with torch.inference_mode():`` failed every lbfgs-torch layer
    ('element 0 of tensors does not require grad'): the weights it made there are tensors autograd refuses."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 120)
    x = (rng.standard_normal((3, 8))[y] + rng.standard_normal((120, 8))).astype(np.float32)
    settings = ProbeSettings(solver="lbfgs-torch", standardize=True)
    outside = fit_torch_lbfgs(x.copy(), y, x[:30].copy(), settings)
    with torch.inference_mode():
        inside = fit_torch_lbfgs(x.copy(), y, x[:30].copy(), settings)
        assert torch.is_inference_mode_enabled()
    np.testing.assert_array_equal(inside.train_pred, outside.train_pred)
    np.testing.assert_array_equal(inside.eval_pred, outside.eval_pred)
    assert (inside.n_iter, inside.converged) == (outside.n_iter, outside.converged)


def test_lbfgs_torch_is_not_converged_when_it_runs_out_of_evaluations():
    """max_iter 10 allows 20 loss evaluations; badly scaled raw features use them up in fewer iterations."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    centres = rng.standard_normal((3, 50))
    x = ((centres[y] + rng.standard_normal((200, 50))) * 1e6 * np.logspace(-2, 2, 50)).astype(np.float32)
    result = fit_torch_lbfgs(x.copy(), y, x[:20].copy(), ProbeSettings(solver="lbfgs-torch", standardize=False,
                                                                       max_iter=10))
    assert result.n_iter < 10
    assert not result.converged


def test_lbfgs_torch_that_stalls_in_float32_far_from_the_optimum_is_not_converged():
    """On raw Digits pixels times 1e8 (--no-standardize) torch's LBFGS stopped after 2 iterations on its absolute
    float32 step tolerance, the largest gradient entry 2.3e7 where scikit-learn's lbfgs accepts 1e-4, eval accuracy
    0.84 against lbfgs' 0.90, and said converged. Converged is lbfgs' gradient test now; a standardised fit meets it."""
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    x_train, y_train, x_eval = x[:1400] * 1e8, y[:1400], x[1400:] * 1e8
    raw = fit_torch_lbfgs(x_train, y_train, x_eval, ProbeSettings(solver="lbfgs-torch", standardize=False))
    assert raw.n_iter < 1000 and not raw.converged
    assert np.mean(raw.train_pred == y_train) < 0.95  # far from the optimum (lbfgs: 1.0, converged)
    scaled = fit_torch_lbfgs(x_train, y_train, x_eval, ProbeSettings(solver="lbfgs-torch"))
    assert scaled.converged and np.mean(scaled.train_pred == y_train) == 1.0


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("solver", ["lbfgs", "lbfgs-torch"])
def test_a_fit_stopped_by_max_iter_is_not_converged_for_either_lbfgs(solver):
    """A fit that used all its iterations stopped, it did not converge: scikit-learn warns there, and the torch solver
    must say the same (its loss evaluations are not used up after 5 iterations here, so only the count tells)."""
    layers, y_train, y_eval = digits_layers(n_layers=1, width=20, seed=4)
    x_train, x_eval = layers["features.0"]
    record = probe_arrays(1, "l", x_train, y_train, x_eval, y_eval, ProbeSettings(solver=solver, max_iter=5))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        direct = LogisticRegression(max_iter=5).fit(StandardScaler().fit_transform(x_train), y_train)
    assert direct.n_iter_[0] == 5 and any(issubclass(w.category, ConvergenceWarning) for w in caught)
    assert record.n_iter == 5
    assert not record.converged


@pytest.mark.parametrize("power", [520, 1000, 1019])
def test_float64_latents_beyond_1e154_standardise_to_the_bits_of_unscaled_ones(power):
    """Finite float64 latents beyond about 1e154 overflowed the sums of squares: lbfgs failed with scikit-learn's
    "Input X contains NaN". Scaling a feature by a power of two is exact, so the standardised values of latents
    scaled by 2**power are those of the unscaled latents, bit for bit, the untouched features' included."""
    rng = np.random.default_rng(power)
    x_train, x_eval = rng.normal(3.0, 2.0, (300, 6)), rng.normal(3.0, 2.0, (70, 6))
    x_train[:, 1] = 5.0  # constant: scale 1, centred on 5
    expected = standardize(x_train.copy(), x_eval.copy(), rows=64)
    big = np.where(np.arange(6) == 4, 1.0, 2.0 ** power)  # feature 4 keeps its scale and its results
    got = standardize(x_train * big, x_eval * big, rows=64)
    for standardised, wanted in zip(got, expected):
        assert np.isfinite(standardised).all()
        np.testing.assert_array_equal(standardised, wanted * np.where(np.arange(6) == 1, big, 1.0))


def test_float64_features_at_float64_s_largest_standardise_without_inf_or_warnings():
    """A feature of about 2**1023 and more (a constant one, or beside one of subnormal values) was scaled by 2**-1024,
    a subnormal whose inverse overflows: the constant feature standardised to NaN (lbfgs failed with
    "Input X contains NaN") and the factor left unused for the subnormal feature overflowed with a
    RuntimeWarning. The factor is the smallest normal power of two at most, and the values are those of the
    unscaled latents, bit for bit."""
    rng = np.random.default_rng(7)
    x_train, x_eval = rng.normal(3.0, 2.0, (300, 4)), rng.normal(3.0, 2.0, (70, 4))
    x_train[:, 1], x_eval[:, 1] = 1.5, rng.uniform(1.0, 1.9, 70)  # constant: 1.5 * 2**1023 is 1.35e308
    x_train[:, 3] *= 1e-320  # subnormal values: never scaled
    x_eval[:, 3] *= 1e-320
    expected = standardize(x_train.copy(), x_eval.copy(), rows=64)
    big = np.array([2.0 ** 1019, 2.0 ** 1023, 1.0, 1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = standardize(x_train * big, x_eval * big, rows=64)
    for standardised, wanted in zip(got, expected):
        assert np.isfinite(standardised).all()
        np.testing.assert_array_equal(standardised, wanted * np.where(np.arange(4) == 1, big, 1.0))

def test_an_lbfgs_probe_of_float64_latents_near_float64_s_largest_equals_the_unscaled_probe():
    layers, y_train, y_eval = blob_layers(n_layers=2)
    x_train, x_eval = (x.astype(np.float64) for x in layers["block1.conv"])
    settings = ProbeSettings(solver="lbfgs")
    expected = probe_arrays(0, "l", x_train, y_train, x_eval, y_eval, settings)
    for scale in (1e200, 1e306):
        got = probe_arrays(0, "l", x_train * scale, y_train, x_eval * scale, y_eval, settings)
        assert (got.train_acc, got.eval_acc, got.converged) == (expected.train_acc, expected.eval_acc, True)
        np.testing.assert_array_equal(got.confusion_matrix(), expected.confusion_matrix())


@pytest.mark.parametrize("implementation", ["numpy", "torch"])
def test_float32_latents_near_float32_s_largest_standardise_in_float64_without_overflow(implementation):
    """The float32 squares go to float64 before they are summed: 3e38 squared is far inside float64."""
    rng = np.random.default_rng(5)
    x_train = (rng.uniform(-1, 1, (200, 3)) * [3e38, 1e30, 1.0]).astype(np.float32)
    x_eval = (rng.uniform(-1, 1, (50, 3)) * [3e38, 1e30, 1.0]).astype(np.float32)
    scaler = StandardScaler().fit(x_train.astype(np.float64))
    if implementation == "torch":
        train_t, eval_t = torch.from_numpy(x_train.copy()), torch.from_numpy(x_eval.copy())
        standardize_tensors(train_t, eval_t, rows=64)
        train, evaluation = train_t.numpy(), eval_t.numpy()
    else:
        train, evaluation = standardize(x_train.copy(), x_eval.copy(), rows=64)
    np.testing.assert_allclose(train, scaler.transform(x_train.astype(np.float64)), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(evaluation, scaler.transform(x_eval.astype(np.float64)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("train_rows", [1, 30, 63, 64, 65])
def test_standardize_with_fewer_training_rows_than_eval_rows(train_rows):
    rng = np.random.default_rng(train_rows)
    x_train = (rng.standard_normal((train_rows, 5)) * 3 + 7).astype(np.float32)
    x_eval = (rng.standard_normal((200, 5)) * 3 + 7).astype(np.float32)
    scaler = StandardScaler().fit(x_train.astype(np.float64))
    train, evaluation = standardize(x_train.copy(), x_eval.copy())
    np.testing.assert_allclose(train, scaler.transform(x_train.astype(np.float64)), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(evaluation, scaler.transform(x_eval.astype(np.float64)), rtol=1e-6, atol=1e-5)


def test_lbfgs_torch_reads_memory_mapped_latents_in_blocks_without_changing_them(tmp_path):
    """lbfgs-torch takes the memory-mapped files as they are (no whole in-memory float copy first) and
    uploads them block by block; the result equals a fit on an in-memory float32 copy."""
    from phd_lab.probes.fit import load_array, to_device_float32
    from phd_lab.file_hash import sha256_file
    layers, y_train, y_eval = digits_layers(n_layers=1, width=20, seed=4)
    x_train, x_eval = layers["features.0"]
    np.save(tmp_path / "train.npy", x_train.astype(np.float16))
    np.save(tmp_path / "eval.npy", x_eval.astype(np.float16))
    before = sha256_file(tmp_path / "train.npy")
    mapped = load_array(tmp_path / "train.npy")
    assert isinstance(mapped, np.memmap)
    blocks = to_device_float32(mapped, "cpu", block_bytes=7 * 20 * 2)  # 7 rows per block, a short last block
    assert blocks.dtype == torch.float32 and torch.equal(blocks, torch.from_numpy(x_train.astype(np.float16)
                                                                                  .astype(np.float32)))
    settings = ProbeSettings(solver="lbfgs-torch", C=0.5)
    from_files = probe_layer(0, "l", tmp_path / "train.npy", tmp_path / "eval.npy", _labels(tmp_path, y_train, "y"),
                             _labels(tmp_path, y_eval, "ye"), settings)
    in_memory = probe_arrays(0, "l", x_train.astype(np.float16).astype(np.float32), y_train,
                             x_eval.astype(np.float16).astype(np.float32), y_eval, settings)
    assert (from_files.train_acc, from_files.eval_acc, from_files.n_iter) == (in_memory.train_acc, in_memory.eval_acc,
                                                                              in_memory.n_iter)
    np.testing.assert_array_equal(from_files.confusion_matrix(), in_memory.confusion_matrix())
    assert sha256_file(tmp_path / "train.npy") == before  # standardised on the device copy, the file untouched


def _labels(folder, y, name):
    np.save(folder / f"{name}.npy", y)
    return folder / f"{name}.npy"


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_saga_fits_memory_mapped_latents_in_place_and_copies_only_to_standardise(tmp_path):
    """The default saga only reads its layer: the memory map is fitted as it is (the file's pages stay
    reclaimable cache; a private copy of a 6 GB layer per worker used to be made), with the same record as on an
    in-memory copy. Standardising works in place, so then the caller's arrays are copied first."""
    from phd_lab.probes.fit import as_float, load_array
    layers, y_train, y_eval = digits_layers(n_layers=1, width=20, seed=2)
    x_train, x_eval = layers["features.0"]
    np.save(tmp_path / "train.npy", x_train)
    mapped = load_array(tmp_path / "train.npy")
    assert isinstance(mapped, np.memmap) and not mapped.flags.writeable
    assert np.shares_memory(as_float(mapped, copy=False), mapped)
    assert not np.shares_memory(as_float(mapped, copy=True), mapped)
    widened = as_float(mapped.astype(np.float16), copy=False)
    assert widened.dtype == np.float32
    settings = ProbeSettings(max_iter=15, seed=1)
    from_map = probe_arrays(0, "l", mapped, y_train, x_eval, y_eval, settings)
    in_memory = probe_arrays(0, "l", np.array(x_train), y_train, x_eval, y_eval, settings)
    assert (from_map.train_acc, from_map.eval_acc, from_map.n_iter) == (
        in_memory.train_acc, in_memory.eval_acc, in_memory.n_iter)
    np.testing.assert_array_equal(from_map.confusion_matrix(), in_memory.confusion_matrix())
    own = np.array(x_train)
    probe_arrays(0, "l", own, y_train, x_eval, y_eval, ProbeSettings(max_iter=15, seed=1, standardize=True))
    np.testing.assert_array_equal(own, x_train)  # standardised on a copy, the caller's array untouched


def one_layer_files(folder: Path, x_train: np.ndarray, x_eval: np.ndarray, y_train: np.ndarray,
                    y_eval: np.ndarray) -> tuple[Path, Path, Path, Path]:
    """Latents of one layer, block0.conv, written with their manifest: its train, eval, train-labels and
    eval-labels files, as probe_layer takes them."""
    _, latents = make_latents(folder, {"block0.conv": (x_train, x_eval)}, y_train, y_eval)
    return (latents / "train-block0.conv.npy", latents / "eval-block0.conv.npy", latents / "train-labels.npy",
            latents / "eval-labels.npy")


def test_latents_with_inf_in_the_eval_file_name_that_file(tmp_path):
    """A float16 overflow leaves inf, not NaN; the evaluation file is checked as well as the training file, and
    the message names the file that holds them."""
    from phd_lab.probes.fit import NonFiniteLatents
    layers, y_train, y_eval = blob_layers(n_layers=1)
    x_train, x_eval = layers["block0.conv"]
    x_eval = x_eval.copy()
    x_eval[3, 1] = -np.inf
    paths = one_layer_files(tmp_path, x_train, x_eval, y_train, y_eval)
    with pytest.raises(NonFiniteLatents) as error:
        probe_layer(1, "block0.conv", *paths, ProbeSettings(solver="lbfgs"))
    assert f"Latents file {str(paths[1])!r}" in str(error.value)
    assert "hold 1 NaN or infinite value(s)" in str(error.value) and error.value.split == "eval"


@pytest.mark.parametrize("dtype, scale", [(np.float32, 1e20), (np.float64, 1e200), (np.float64, 1e306)])
def test_saga_on_raw_latents_too_large_for_its_step_size_names_the_file_instead_of_an_untrained_probe(
        tmp_path, dtype, scale):
    """scikit-learn's saga takes 1 / (largest squared row norm) as its step, in the latents' dtype: float32 values
    of 1e20 made it 0, and saga returned a probe that predicts one class, reported as converged after one epoch
    (float64 near its largest failed with saga's own overflow instead). Standardised, the same latents fit."""
    from phd_lab.errors import DataError
    layers, y_train, y_eval = blob_layers(n_layers=1)
    x_train, x_eval = ((x.astype(np.float64) * scale).astype(dtype) for x in layers["block0.conv"])
    paths = one_layer_files(tmp_path, x_train, x_eval, y_train, y_eval)
    with pytest.raises(DataError) as error:
        probe_layer(1, "block0.conv", *paths, ProbeSettings(solver="saga"))
    message = " ".join(str(error.value).split())
    assert message.startswith(f"Latents file {str(paths[0])!r}: the train latents of layer 'block0.conv' are too "
                              f"large for saga on raw features") and "--standardize" in message
    assert f"overflows {np.dtype(dtype).name}" in message
    standardised = probe_layer(1, "block0.conv", *paths, ProbeSettings(solver="saga", standardize=True))
    unscaled = probe_arrays(1, "block0.conv", *layers["block0.conv"][:1], y_train, layers["block0.conv"][1], y_eval,
                            ProbeSettings(solver="saga", standardize=True))
    assert standardised.eval_acc == unscaled.eval_acc > 0.9


def test_lbfgs_torch_names_float64_latents_that_its_float32_copy_cannot_hold(tmp_path):
    """lbfgs-torch checks its own float32 copy for NaN/inf (on its device, not by another pass over the files
    on the host), so finite float64 latents beyond float32's range are named like a diverged run's, not a
    RuntimeError 'value cannot be converted to type float without overflow' from the worker."""
    from phd_lab.probes.fit import NonFiniteLatents
    layers, y_train, y_eval = blob_layers(n_layers=1)
    x_train, x_eval = (x.astype(np.float64) for x in layers["block0.conv"])
    x_eval[2, 0] = 1e300  # finite in the file
    paths = one_layer_files(tmp_path, x_train, x_eval, y_train, y_eval)
    with pytest.raises(NonFiniteLatents) as error:
        probe_layer(1, "block0.conv", *paths, ProbeSettings(solver="lbfgs-torch"))
    assert f"Latents file {str(paths[1])!r}" in str(error.value)
    assert f"hold 1 NaN or infinite value(s) of {x_eval.size}" in str(error.value) and error.value.split == "eval"
    # the file holds no NaN or inf, and extracting as float32 (the advice for a float16 overflow) would not help
    message = " ".join(str(error.value).split())
    assert "in lbfgs-torch's float32 copy of them" in message and "finite float64 values beyond float32's" in message
    assert "probe it with lbfgs, which standardises float64 latents of any finite size" in message
    assert "overflowed float16" not in message


def test_a_class_seen_only_in_the_eval_set_gets_its_row_and_column_in_the_confusion_matrix(tmp_path):
    """The probe cannot predict a class it never saw; its eval samples count as errors in a row of their own
    (normalised to 1), so the matrix shows the class instead of silently dropping it."""
    layers, y_train, y_eval = blob_layers(n_layers=1, classes=4)
    x_train, x_eval = layers["block0.conv"]
    seen = y_train != 3
    record = probe_arrays(1, "block0.conv", x_train[seen], y_train[seen], x_eval, y_eval, ProbeSettings())
    matrix = record.confusion_matrix()
    assert matrix.shape == (4, 4) and (y_eval == 3).any()
    assert matrix[3].sum() == pytest.approx(1.0) and matrix[3, 3] == 0.0 and np.all(matrix[:, 3] == 0.0)
    assert record.eval_acc == pytest.approx(np.mean(y_eval != 3), abs=0.05)  # the unseen class: all wrong


def test_a_probe_of_no_eval_samples_is_cached_as_strict_json_and_read_back(tmp_path):
    """Its eval accuracy (NaN) was written into the cache entry as ``NaN``, which strict JSON readers refuse."""
    from phd_lab.probes.cache import ResultCache, cache_key
    from phd_lab.probes.fit import ProbeRecord
    record = ProbeRecord(index=0, layer="conv1", solver="saga", train_acc=0.75, eval_acc=float("nan"), n_iter=3,
                         converged=True, seconds=0.5, n_train=4, n_eval=0, n_features=2, classes=[0, 1],
                         confusion=np.zeros((2, 2)))
    cache = ResultCache(tmp_path)
    key = cache_key({"train": "a" * 64, "eval": "b" * 64}, ProbeSettings(), {"numpy": np.__version__})
    assert cache.put(key, record) is record

    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")
    entry = json.loads(cache.path(key).read_text(), parse_constant=refuse)
    assert entry["record"]["eval_acc"] is None
    stored = ResultCache(tmp_path).get(key)
    assert math.isnan(stored.eval_acc) and stored.train_acc == 0.75 and stored.n_eval == 0


@pytest.mark.parametrize("solver, dtype, tiny, far", [("lbfgs", np.float32, 1e-30, 1e10),
                                                      ("lbfgs", np.float64, 1e-150, 1e160),
                                                      ("lbfgs-torch", np.float32, 1e-30, 1e10)])
def test_an_eval_value_whose_standardised_value_is_beyond_the_dtype_names_the_eval_file(tmp_path, solver, dtype, tiny,
                                                                                        far):
    """An eval value 1e40 training standard deviations out overflowed the standardised copy: lbfgs failed in the
    worker with scikit-learn's "Input X contains infinity", lbfgs-torch predicted with the inf silently."""
    from phd_lab.probes.fit import StandardisedBeyondRange
    layers, y_train, y_eval = blob_layers(n_layers=1)
    x_train, x_eval = (x.astype(dtype) for x in layers["block0.conv"])
    x_train[:, 2] *= tiny
    x_eval[:, 2] *= tiny
    x_eval[4, 2] = far
    paths = one_layer_files(tmp_path, x_train, x_eval, y_train, y_eval)
    with pytest.raises(StandardisedBeyondRange) as error:
        probe_layer(1, "block0.conv", *paths, ProbeSettings(solver=solver))
    message = " ".join(str(error.value).split())
    assert message.startswith(f"Latents file {str(paths[1])!r}: standardised with the statistics of the train "
                              f"latents, the eval latents of layer 'block0.conv' hold values beyond "
                              f"{np.dtype(dtype).name}'s range") and error.value.split == "eval"
    assert "first sample 4's feature 2, whose train values have mean " in message and "--no-standardize" in message
    raw = probe_layer(1, "block0.conv", *paths, ProbeSettings(solver=solver, standardize=False))
    assert raw.n_eval == len(y_eval)  # the advice holds: on raw features the layer is probed


@pytest.mark.parametrize("solver", ["lbfgs", "lbfgs-torch"])
def test_an_eval_value_beyond_the_dtype_on_a_constant_training_feature_is_not_given_a_standard_deviation_of_1(
        tmp_path, solver):
    """A feature constant in training is centred only (scale 1 in its own units); the message said its train values
    had standard deviation 1 and that the eval value lay 3.4e38 standard deviations out."""
    from phd_lab.probes.fit import StandardisedBeyondRange
    layers, y_train, y_eval = blob_layers(n_layers=1)
    x_train, x_eval = (x.astype(np.float32) for x in layers["block0.conv"])
    x_train[:, 2] = 3e38
    x_eval[4, 2] = -3e38  # -6e38 once centred: beyond float32
    paths = one_layer_files(tmp_path, x_train, x_eval, y_train, y_eval)
    with pytest.raises(StandardisedBeyondRange) as error:
        probe_layer(1, "block0.conv", *paths, ProbeSettings(solver=solver))
    message = " ".join(str(error.value).split())
    assert "first sample 4's feature 2, whose train values are all 3e+38 (a constant feature, centred but not " \
           "scaled): it lies more than 3.4e+38 from that value" in message
    assert "standard deviation" not in message and error.value.split == "eval"


def test_standardised_bfloat16_tensors_beyond_their_range_name_bfloat16():
    """standardize_tensors took the range of a bfloat16 tensor from numpy, which has no bfloat16: a ValueError
    'data type <class 'numpy.str_'> not inexact' instead of the error naming the sample and feature."""
    import torch

    from phd_lab.probes.fit import StandardisedBeyondRange, standardize_tensors
    x_train = torch.tensor([[0.0, 1.0], [0.01, 2.0], [0.02, 3.0]], dtype=torch.bfloat16)
    x_eval = torch.tensor([[0.0, 1.0], [3e38, 2.0]], dtype=torch.bfloat16)
    with pytest.raises(StandardisedBeyondRange) as error:
        standardize_tensors(x_train, x_eval, layer="fc")
    message = str(error.value)
    assert "the eval latents of layer 'fc' hold values beyond bfloat16's range (about ±3.4e+38), first sample 1's " \
           "feature 0, whose train values have mean 0.01 and standard deviation" in message


@pytest.mark.parametrize("dtype, scale", [(np.float64, 1e150), (np.float64, 1e300), (np.float32, 1e32)])
def test_lbfgs_on_raw_latents_too_large_for_its_line_search_names_the_file_instead_of_an_untrained_probe(
        tmp_path, dtype, scale):
    """lbfgs with --no-standardize on raw latents of 1e150 took 0 iterations and kept every weight 0: a probe that
    predicts one class (accuracy 0.317 on three classes), converged False, and no cause named."""
    from phd_lab.probes.fit import LatentsTooLarge
    layers, y_train, y_eval = blob_layers(n_layers=1)
    x_train, x_eval = ((x.astype(np.float64) * scale).astype(dtype) for x in layers["block0.conv"])
    paths = one_layer_files(tmp_path, x_train, x_eval, y_train, y_eval)
    with pytest.raises(LatentsTooLarge) as error:
        probe_layer(1, "block0.conv", *paths, ProbeSettings(solver="lbfgs", standardize=False))
    message = " ".join(str(error.value).split())
    peak = float(np.abs(x_train).max())
    assert message.startswith(f"Latents file {str(paths[0])!r}: scikit-learn's lbfgs took no step on the raw train "
                              f"latents of layer 'block0.conv' (their largest |value| is {peak:.3g})")
    assert "--standardize" in message and "probe with lbfgs" not in message  # it is lbfgs already
    standardised = probe_layer(1, "block0.conv", *paths, ProbeSettings(solver="lbfgs"))
    assert standardised.converged and standardised.eval_acc > 0.9


@pytest.mark.parametrize("standardize", [True, False])
def test_lbfgs_torch_weights_gone_nan_under_a_tiny_c_name_c_not_the_latents(tmp_path, standardize):
    """C = 1e-25 (the schema allows 1e-30) overflowed lbfgs-torch's float32 line search: standardised, the untrained
    probe (one class predicted) was reported as a result, converged False; raw, the error blamed 'raw latents this
    large' (|value| about 5) and advised to standardise them."""
    from phd_lab.errors import DataError
    from phd_lab.probes.fit import LatentsTooLarge
    layers, y_train, y_eval = blob_layers(n_layers=1)
    x_train, x_eval = (x.astype(np.float32) for x in layers["block0.conv"])
    paths = one_layer_files(tmp_path, x_train, x_eval, y_train, y_eval)
    with pytest.raises(DataError) as error:
        probe_layer(1, "block0.conv", *paths, ProbeSettings(solver="lbfgs-torch", C=1e-25, standardize=standardize))
    message = " ".join(str(error.value).split())
    assert not isinstance(error.value, LatentsTooLarge)
    assert message.startswith("lbfgs-torch's weights became NaN or infinite on layer 'block0.conv': its penalty "
                              "||W||²/(2·C·n), with C = 1e-25 and n = ") and "Use a larger C (--C" in message
    n = len(y_train)
    weighs = f"{1 / (2 * 1e-25 * n):.3g} per squared weight"  # as the formula says (it said 1/(C·n), twice that)
    assert f"n = {n} training samples, weighs {weighs}" in message, message
    float64 = probe_layer(1, "block0.conv", *paths, ProbeSettings(solver="lbfgs", C=1e-25, standardize=standardize))
    assert float64.converged  # the advice holds: lbfgs fits it (every weight about 0 under such a penalty)


def test_lbfgs_torch_on_raw_latents_too_large_for_float32_names_the_file_instead_of_nan_weights(tmp_path):
    """lbfgs-torch with --no-standardize on raw float32 latents of 1e11 ended with NaN weights after its first line
    search, and the argmax of NaN logits predicted class 0 for every sample: accuracy 0.3, no cause named."""
    from phd_lab.probes.fit import LatentsTooLarge
    layers, y_train, y_eval = blob_layers(n_layers=1)
    x_train, x_eval = ((x * np.float32(1e10)) for x in layers["block0.conv"])
    paths = one_layer_files(tmp_path, x_train, x_eval, y_train, y_eval)
    with pytest.raises(LatentsTooLarge) as error:
        probe_layer(1, "block0.conv", *paths, ProbeSettings(solver="lbfgs-torch", standardize=False))
    message = " ".join(str(error.value).split())
    assert message.startswith(f"Latents file {str(paths[0])!r}: lbfgs-torch's weights became NaN or infinite on the "
                              f"raw train latents of layer 'block0.conv' (their largest |value| is "
                              f"{float(np.abs(x_train).max()):.3g})") and "--standardize" in message
    standardised = probe_layer(1, "block0.conv", *paths, ProbeSettings(solver="lbfgs-torch"))
    assert standardised.converged and standardised.eval_acc > 0.9


def test_nonfinite_count_of_a_cpu_tensor_is_numpys_count_without_torch_kernels():
    """lbfgs-torch on the CPU counted NaN/inf of its float32 copy with torch's isfinite, 11x numpy's time; a CPU
    tensor is counted by numpy through a view of its memory (the same counts, no torch kernel runs), a tensor of
    another device still on its device."""
    from torch.overrides import TorchFunctionMode

    from phd_lab.probes.fit import nonfinite_count, nonfinite_count_tensor

    class Recorded(TorchFunctionMode):
        """The torch functions called in the block, by name."""
        names: list[str] = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.names.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    x = torch.randn(50, 7)
    x[3, 1], x[40, 6], x[49, 0] = float("nan"), float("inf"), -float("inf")
    with Recorded():
        counted = nonfinite_count_tensor(x, rows=16)
    assert counted == nonfinite_count(x.numpy()) == 3
    assert not {"isfinite", "count_nonzero", "__invert__"} & set(Recorded.names), Recorded.names
    assert nonfinite_count_tensor(x[:, 1:]) == 2  # a strided view
    assert nonfinite_count_tensor(torch.zeros(0, 4)) == 0
    assert nonfinite_count_tensor(torch.randn(8, 3, dtype=torch.float64)) == 0
    assert nonfinite_count_tensor(x.to(torch.bfloat16)) == 3  # which numpy cannot view: counted by torch


@pytest.mark.parametrize("value", [7e307, 1e200, 0.1])
def test_a_constant_float64_feature_standardises_to_exactly_0(value):
    """A constant float64 feature of 7e307 standardised to about ±2e292 instead of 0 (1e200: ±5e184; 0.1: ±1e-16):
    the float64 mean of many copies of it is a few ulps off, and the feature keeps scale 1 in its own units, so it
    was that rounding error, a huge constant input that lbfgs fitted on. It standardises to exactly 0 now (train,
    and eval values equal to it), and an lbfgs probe with it is the probe without it."""
    layers, y_train, y_eval = blob_layers(n_layers=1, n=300)
    x_train, x_eval = (x.astype(np.float64) for x in layers["block0.conv"])
    with_constant = [np.hstack([x, np.full((len(x), 1), value)]) for x in (x_train, x_eval)]
    train, evaluation = standardize(with_constant[0].copy(), with_constant[1].copy(), rows=64)
    assert np.all(train[:, -1] == 0.0) and np.all(evaluation[:, -1] == 0.0)
    np.testing.assert_array_equal(train[:, :-1], standardize(x_train.copy(), x_eval.copy(), rows=64)[0])
    settings = ProbeSettings(solver="lbfgs")
    expected = probe_arrays(0, "l", x_train, y_train, x_eval, y_eval, settings)
    got = probe_arrays(0, "l", *with_constant[:1], y_train, with_constant[1], y_eval, settings)
    assert (got.train_acc, got.eval_acc, got.n_iter, got.converged) == (
        expected.train_acc, expected.eval_acc, expected.n_iter, expected.converged)
