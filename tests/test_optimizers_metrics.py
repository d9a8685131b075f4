"""Optimizer arguments reach the optimizer; metrics agree with scikit-learn batch by batch."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, matthews_corrcoef, recall_score, top_k_accuracy_score
from torch import nn

from phd_lab.registry import Registries
from registries import optimizers

REG = Registries()

OVERRIDES = {
    "adam": {"lr": 0.003, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6, "weight_decay": 0.1, "amsgrad": True,
             "step_size": 3, "gamma": 0.5},
    "adamw": {"lr": 0.003, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6, "weight_decay": 0.2, "amsgrad": True,
              "step_size": 3, "gamma": 0.5},
    "radam": {"lr": 0.003, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6, "weight_decay": 0.1, "step_size": 3,
              "gamma": 0.5},
    "sgd": {"lr": 0.05, "momentum": 0.5, "weight_decay": 0.1, "nesterov": True, "step_size": 3, "gamma": 0.5},
}


def test_every_optimizer_argument_is_tested():
    assert sorted(REG.optimizers.names()) == sorted(OVERRIDES)
    for name, overrides in OVERRIDES.items():
        params = set(inspect.signature(REG.optimizers.get(name)).parameters) - {"model", "epochs"}
        assert params == set(overrides), name


@pytest.mark.parametrize("name", sorted(OVERRIDES))
def test_optimizer_arguments_reach_the_optimizer(name):
    args = OVERRIDES[name]
    optimizer, scheduler = REG.optimizers.get(name)(nn.Linear(3, 2), epochs=10, **args)
    group = optimizer.param_groups[0]
    assert group["lr"] == args["lr"] and group["weight_decay"] == args["weight_decay"]
    if "beta1" in args:
        assert group["betas"] == (args["beta1"], args["beta2"]) and group["eps"] == args["eps"]
    for key in ("momentum", "nesterov", "amsgrad"):
        if key in args:
            assert group[key] == args[key]
    assert isinstance(scheduler, torch.optim.lr_scheduler.StepLR)
    assert (scheduler.step_size, scheduler.gamma) == (3, 0.5)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(args["lr"] * 0.5)


def test_thesis_defaults():
    adam, schedule = optimizers.adam(nn.Linear(3, 2), epochs=5)
    group = adam.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"]) == (1e-4, (0.9, 0.999), 1e-8) and schedule is None
    sgd, step = optimizers.sgd(nn.Linear(3, 2), epochs=60)
    assert (sgd.param_groups[0]["lr"], sgd.param_groups[0]["momentum"], sgd.param_groups[0]["weight_decay"]) == \
        (0.1, 0.9, 0.0)
    assert (step.step_size, step.gamma) == (20, 0.1)


def test_bad_schedule_is_rejected():
    with pytest.raises(ValueError, match="step_size"):
        optimizers.sgd(nn.Linear(3, 2), epochs=5, step_size=0)
    with pytest.raises(ValueError, match="gamma"):
        optimizers.adam(nn.Linear(3, 2), epochs=5, step_size=2, gamma=2.0)


def test_gamma_one_keeps_the_learning_rate():
    """gamma may be 1 (documented range (0, 1]): a step schedule that keeps the rate, e.g. a grid point of a
    sweep over gamma that turns the decay off, is accepted and leaves lr as it is."""
    for gamma in (1, 1.0):
        sgd, step = optimizers.sgd(nn.Linear(3, 2), epochs=5, lr=0.05, step_size=1, gamma=gamma)
        for _ in range(3):
            sgd.step()
            step.step()
        assert step.gamma == 1.0 and sgd.param_groups[0]["lr"] == 0.05


def run_batches(name, labels, logits, batch=7):
    metric = REG.metrics.get(name)()
    metric.update(torch.tensor([0]), torch.zeros(1, logits.shape[1]))  # stale state must be reset
    metric.reset()
    for start in range(0, len(labels), batch):
        metric.update(torch.tensor(labels[start:start + batch]), torch.tensor(logits[start:start + batch]))
    return metric.value


@pytest.fixture()
def predictions():
    rng = np.random.default_rng(3)
    labels = rng.choice(4, size=61, p=[0.55, 0.25, 0.15, 0.05])
    logits = rng.normal(size=(61, 5)).astype(np.float32)
    logits[np.arange(61), labels] += rng.normal(1.0, 1.0, size=61).astype(np.float32)  # better than chance
    return labels, logits


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_metrics_match_scikit_learn(predictions):
    labels, logits = predictions
    predicted = logits.argmax(axis=1)
    assert run_batches("Accuracy", labels, logits) == pytest.approx((predicted == labels).mean())
    assert run_batches("BalancedAccuracy", labels, logits) == pytest.approx(balanced_accuracy_score(labels, predicted))
    assert run_batches("MCC", labels, logits) == pytest.approx(matthews_corrcoef(labels, predicted))
    recalls = run_batches("PerClassRecall", labels, logits)
    expected = recall_score(labels, predicted, labels=[0, 1, 2, 3], average=None, zero_division=0)
    assert [recalls[str(i)] for i in range(4)] == pytest.approx(list(expected))
    assert set(recalls) == {"0", "1", "2", "3", "4"} and np.isnan(recalls["4"])   # class 4 never occurs


def test_top5_accuracy_matches_scikit_learn_and_is_one_below_five_classes():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 12, size=83)
    logits = rng.normal(size=(83, 12)).astype(np.float32)
    logits[np.arange(83), labels] += 0.7
    expected = top_k_accuracy_score(labels, logits, k=5, labels=np.arange(12))
    assert 0.5 < expected < 0.9  # neither trivial nor top-1
    assert run_batches("Top5Accuracy", labels, logits) == pytest.approx(expected)
    assert run_batches("Top5Accuracy", labels[:20] % 3, logits[:20, :3]) == 1.0  # every label is in the top 3


def test_perfect_and_constant_predictions():
    labels = np.array([0, 1, 2, 2])
    perfect = np.eye(3, dtype=np.float32)[labels]
    assert run_batches("MCC", labels, perfect) == pytest.approx(1.0)
    assert run_batches("BalancedAccuracy", labels, perfect) == pytest.approx(1.0)
    constant = np.tile(np.array([[1.0, 0.0, 0.0]], dtype=np.float32), (4, 1))
    assert run_batches("MCC", labels, constant) == 0.0
    assert run_batches("BalancedAccuracy", labels, constant) == pytest.approx(1 / 3)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("name", ["BalancedAccuracy", "MCC", "PerClassRecall"])
def test_confusion_metrics_grow_with_labels_beyond_the_logits_width(name):
    """Labels 3 and 4 first show in a later batch of a 3-way model: the confusion matrix grows to 5 classes and
    keeps the counts of the earlier batches, so the metrics still equal scikit-learn's over all samples."""
    rng = np.random.default_rng(11)
    labels = np.concatenate([rng.integers(0, 3, size=14), rng.integers(0, 5, size=30)])
    logits = rng.normal(size=(44, 3)).astype(np.float32)
    logits[labels < 3, labels[labels < 3]] += 1.0
    predicted = logits.argmax(axis=1)
    assert labels[:7].max() < 3 and {3, 4} <= set(labels[14:])
    got = run_batches(name, labels, logits)
    if name == "BalancedAccuracy":
        assert got == pytest.approx(balanced_accuracy_score(labels, predicted))
    elif name == "MCC":
        assert got == pytest.approx(matthews_corrcoef(labels, predicted))
    else:
        expected = recall_score(labels, predicted, labels=[0, 1, 2, 3, 4], average=None, zero_division=0)
        assert [got[str(i)] for i in range(5)] == pytest.approx(list(expected))
