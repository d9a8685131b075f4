"""Optimizer arguments reach the optimizer; metrics agree with scikit-learn batch by batch."""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
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


def _bincount_confusion(batches, classes):
    """The confusion matrix as the metric counted it before: a bincount of minlength classes² per batch."""
    matrix = torch.zeros((classes, classes), dtype=torch.int64)
    for labels, predicted in batches:
        matrix += torch.bincount(labels * classes + predicted, minlength=classes * classes).view(classes, classes)
    return matrix


@pytest.mark.parametrize("classes", [1, 2, 3, 10, 100, 1000])
def test_confusion_counts_equal_the_bincount_formula_and_repeat_exactly(classes):
    """Random batches of every size (one empty, the last one short), the first ones of a model one class narrower
    whose labels do not reach the last class, so that the matrix grows: it is the old bincount formula's, integer
    for integer, and the same on a second pass."""
    from phd_lab.metrics import ConfusionMetric
    generator = torch.Generator().manual_seed(classes)
    narrower = max(1, classes - 1)
    batches = []
    for size, width in ((64, narrower), (1, narrower), (0, classes), (64, classes), (37, classes)):
        labels = torch.randint(0, width, (size,), generator=generator)
        batches.append((labels, torch.randn(size, width, generator=generator)))
    matrices = []
    for _ in range(2):
        metric = ConfusionMetric()
        for labels, logits in batches:
            metric.update(labels, logits)
        matrices.append(metric.matrix)
    width = matrices[0].shape[0]
    expected = _bincount_confusion([(labels, logits.argmax(dim=1)) for labels, logits in batches], width)
    assert width == classes and matrices[0].dtype == torch.int64
    assert torch.equal(matrices[0], expected) and torch.equal(matrices[1], expected)
    assert int(expected.sum()) == 64 + 64 + 1 + 37


def test_a_confusion_update_allocates_nothing_of_the_matrix_size():
    """A batch of 64 samples of a 1,000-class model: no tensor an update creates is larger than the batch (the
    bincount of minlength classes² made a 1,000,000-cell one every batch: 0.6 s per batch at 10,000 classes).
    Every operator the update runs is watched through torch's dispatcher; the metric itself runs as it is."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    from phd_lab.metrics import ConfusionMetric

    class NewTensors(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.sizes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            given = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
            self.sizes += [(str(func), t.numel()) for t in tree_leaves(result)
                           if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in given]
            return result

    generator = torch.Generator().manual_seed(0)
    metric = ConfusionMetric()
    metric.update(torch.randint(0, 1000, (64,), generator=generator), torch.randn(64, 1000, generator=generator))
    labels, logits = torch.randint(0, 1000, (64,), generator=generator), torch.randn(64, 1000, generator=generator)
    with NewTensors() as watched:
        metric.update(labels, logits)
    assert watched.sizes and max(size for _, size in watched.sizes) <= 64, watched.sizes
    assert int(metric.matrix.sum()) == 128


def _list_history_frame_columns(history):
    """The column order as history_frame found it before, with a list."""
    columns = []
    for row in history:
        columns += [c for c in row if c not in columns]
    return columns


class _CountedName(str):
    """A column name that counts how often it is compared with another."""

    comparisons = 0

    def __eq__(self, other):
        _CountedName.comparisons += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_history_frame_keeps_the_first_appearance_order_and_looks_columns_up_in_constant_time():
    """Rows that add, drop and reorder columns keep the order the list gave; 3 rows × 2,000 columns (each row its
    own name objects, as rows read back from a checkpoint have) compare names a few times per cell, not once per
    pair of columns (the list's membership test: 6 million comparisons, 61 s per epoch at 20,000 columns)."""
    from phd_lab.callbacks import history_frame
    rng = np.random.default_rng(1)
    for _ in range(200):
        names = [f"c{i}" for i in range(rng.integers(1, 12))]
        history = [{name: float(value) for value, name in enumerate(rng.permutation(names)[:rng.integers(1, 12)])}
                   for _ in range(rng.integers(1, 5))]
        pd.testing.assert_frame_equal(history_frame(history),
                                      pd.DataFrame(history, columns=_list_history_frame_columns(history)))
    history = [{_CountedName(f"layer{i}_saturation"): float(row) for i in range(2000)} for row in range(3)]
    _CountedName.comparisons = 0
    frame = history_frame(history)
    assert frame.shape == (3, 2000) and list(frame.columns) == [f"layer{i}_saturation" for i in range(2000)]
    assert _CountedName.comparisons <= 4 * 3 * 2000
