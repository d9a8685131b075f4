"""A registered thesis model trains through the real CLI; dict metrics become per-class columns."""

from __future__ import annotations

import csv
import json

from phd_lab.cli import main_cli


def test_cli_run_with_zoo_model_and_per_class_metric(tmp_path):
    config = {"model": "resnet18_cifar", "model_args": {"width": 0.0625}, "dataset": "FakeData",
              "dataset_args": {"train_size": 24, "test_size": 8, "num_classes": 3}, "resolution": 16, "epoch": 1,
              "batch_size": 8, "optimizer": "sgd", "optimizer_args": {"lr": 0.01, "step_size": 1},
              "metrics": ["PerClassRecall", "BalancedAccuracy", "MCC"], "logs_dir": str(tmp_path / "logs"),
              "device": "cpu"}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert main_cli(["--config", str(path)]) == 0
    [metrics_csv] = [p for p in (tmp_path / "logs").rglob("*.csv")]
    row = next(csv.DictReader(metrics_csv.open()))
    for split in ("train", "test"):
        assert {f"{split}_perclassrecall_{i}" for i in range(3)} <= set(row)
        assert f"{split}_balancedaccuracy" in row and f"{split}_mcc" in row
