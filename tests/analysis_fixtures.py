"""A realistic fixture grid written in the documented file formats (DESIGN.md), for the analysis tests.

The runs are VGG11-style networks (8 Conv2d + 3 Linear, torchvision layer names) on 32×32 inputs.
Receptive fields and per-layer parameters/MACs are computed from the layer layout, saturations
follow the thesis' pattern: well saturated up to the border layer, a low tail after it, and a highly
saturated 10-way classifier.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from phd_lab import __version__, atomic
from phd_lab.config import resolve_point
from phd_lab.rundir import RunDir

# (name, kind, in_channels, out_channels, pool after) of a VGG11 at base width 64
VGG11 = [("features.0", "conv", 3, 64, True), ("features.3", "conv", 64, 128, True),
         ("features.6", "conv", 128, 256, False), ("features.8", "conv", 256, 256, True),
         ("features.11", "conv", 256, 512, False), ("features.13", "conv", 512, 512, True),
         ("features.16", "conv", 512, 512, False), ("features.18", "conv", 512, 512, True),
         ("classifier.0", "linear", 512, 4096, False), ("classifier.3", "linear", 4096, 4096, False),
         ("classifier.6", "linear", 4096, 10, False)]
LAYERS = [layer[0] for layer in VGG11]
BORDER = "features.13"  # first conv with input receptive field 46 > 32 (VGG11 at 32 px)


def layout(width: float) -> list[tuple[str, str, int, int, bool]]:
    """VGG11 scaled by ``width`` (the RGB input and the 10 classes stay)."""
    return [(n, k, i if i == 3 else max(1, int(i * width)), o if n == "classifier.6" else max(1, int(o * width)), p)
            for n, k, i, o, p in VGG11]


def receptive_field_table(resolution: int) -> pd.DataFrame:
    r, j, size, rows, conv_index = 1, 1, resolution, [], 0
    for name, kind, _, _, pool in VGG11:
        if kind == "conv":
            conv_index += 1
            in_r, out_r = r, r + 2 * j
            rows.append({"index": conv_index, "layer": name, "r_min": out_r, "r_max": out_r, "jump": j,
                         "in_r_min": in_r, "in_r_max": in_r})
            r = out_r
            if pool:
                r, j, size = r + j, j * 2, size // 2
        else:
            rows.append({"index": None, "layer": name, "r_min": r, "r_max": r, "jump": j, "in_r_min": r,
                         "in_r_max": r})
    frame = pd.DataFrame(rows)
    frame["index"] = frame["index"].astype("Int64")
    frame["border_min"] = frame["layer"] == BORDER
    frame["border_max"] = frame["layer"] == BORDER
    return frame


def computational_table(width: float, resolution: int) -> pd.DataFrame:
    rows, size = [], resolution
    for name, kind, c_in, c_out, pool in layout(width):
        if kind == "conv":
            params = 9 * c_in * c_out + c_out
            macs = 9 * c_in * c_out * size * size
            if pool:
                size //= 2
        else:
            params, macs = c_in * c_out + c_out, c_in * c_out
        rows.append({"layer": name, "type": "Conv2d" if kind == "conv" else "Linear", "params": params,
                     "macs": macs, "flops": 2 * macs})
    return pd.DataFrame(rows)


def saturation_profile(width: float, epoch: int) -> list[float]:
    """Per-layer saturation: lower for wider networks, a tail from the border layer on, high classifier."""
    base = 0.26 / (width / 0.25) ** 0.5 + 0.01 * epoch
    body = [base * f for f in (0.9, 1.1, 1.2, 1.0, 1.15)]
    tail = [base * f for f in (0.25, 0.18, 0.15, 0.12, 0.1)]
    return body + tail + [0.9]


def metrics_frame(width: float, epochs: int, test_accuracy: float) -> pd.DataFrame:
    rows = []
    for epoch in range(1, epochs + 1):
        row: dict[str, Any] = {"epoch": epoch, "train_loss": 1.5 / epoch, "test_loss": 1.6 / epoch,
                               "train_accuracy": min(0.99, test_accuracy + 0.02 * epoch),
                               "test_accuracy": test_accuracy - 0.05 * (epochs - epoch),
                               "epoch_seconds": 12.5}
        dims = [o for _, _, _, o, _ in layout(width)]
        # as the tracker writes them: saturation = k / d exactly
        train_k = [max(1, round(s * d)) for s, d in zip(saturation_profile(width, epoch), dims)]
        test_k = [min(d, max(1, round(s * 1.05 * d))) for s, d in zip(saturation_profile(width, epoch), dims)]
        train = [k / d for k, d in zip(train_k, dims)]
        test = [k / d for k, d in zip(test_k, dims)]
        for name, s_tr, s_te in zip(LAYERS, train, test):
            row[f"{name}_train_saturation"] = s_tr
            row[f"{name}_test_saturation"] = s_te
        for name, k_tr, k_te in zip(LAYERS, train_k, test_k):
            row[f"{name}_train_intrinsic_dimension"] = k_tr
            row[f"{name}_test_intrinsic_dimension"] = k_te
        row["train_saturation_mean"] = sum(train) / len(train)
        row["test_saturation_mean"] = sum(test) / len(test)
        rows.append(row)
    return pd.DataFrame(rows)


def probe_frame(test_accuracy: float, solver: str = "saga", skip: str | None = None) -> pd.DataFrame:
    rows = []
    curve = [0.45, 0.58, 0.7, 0.79, 0.86, test_accuracy - 0.002, test_accuracy, test_accuracy - 0.001,
             test_accuracy, test_accuracy - 0.003, test_accuracy]
    for index, (name, acc) in enumerate(zip(LAYERS, curve), 1):
        if name == skip:
            acc -= 0.12
        rows.append({"index": index, "layer": name, "train_acc": min(1.0, acc + 0.05), "eval_acc": acc,
                     "relative_acc": acc / test_accuracy, "n_iter": 100, "converged": False,
                     "seconds": 3.2, "solver": solver})
    return pd.DataFrame(rows)


def manifest(rundir: RunDir, test_accuracy: float, n_layers: int = len(LAYERS)) -> dict[str, Any]:
    return {"format": 1, "run_dir": str(rundir.root), "model_test_accuracy": test_accuracy, "downsampling": 4,
            "dtype": "float32",
            "layers": [{"index": i, "name": n, "train": f"train-{n}.npy", "eval": f"eval-{n}.npy",
                        "shape": [1437, 64], "sha256": {"train": "0" * 64, "eval": "0" * 64}}
                       for i, n in enumerate(LAYERS[:n_layers], 1)],
            "labels": {"train": "train-labels.npy", "eval": "eval-labels.npy",
                       "sha256": {"train": "0" * 64, "eval": "0" * 64}}}


def write_run(logs: Path, *, width: float, stage: str, epochs: int = 3, test_accuracy: float = 0.93,
              run_id: str = "0", skip: str | None = None, resolution: int = 32) -> RunDir:
    """Write one run folder at ``stage``: full, unprobed, trained, running (1 of ``epochs``), probes-only."""
    cfg = resolve_point({"model": "vgg11", "model_args": {"width": width}, "dataset": "Digits",
                         "resolution": resolution, "epoch": epochs, "batch_size": 64, "run_id": run_id,
                         "logs_dir": str(logs), "post_processing": ["receptive_field", "flops", "extract",
                                                                    "analysis"]}, "fixture")
    rundir = RunDir.for_run(cfg).create()
    atomic.write_json(rundir.config, {**cfg.to_dict(), "_meta": {"phd_lab": __version__}})
    if stage != "probes-only":
        done = 1 if stage == "running" else epochs
        atomic.write_csv(rundir.metrics_csv, metrics_frame(width, epochs, test_accuracy).iloc[:done])
    if stage in ("full", "unprobed"):
        atomic.write_csv(rundir.root / "receptive_field.csv", receptive_field_table(resolution))
        layers = computational_table(width, resolution)
        atomic.write_csv(rundir.root / "computational_info.csv", layers)
        atomic.write_json(rundir.root / "computational_info.json", {
            "macs": int(layers["macs"].sum()), "flops": int(layers["flops"].sum()),
            "params_total": int(layers["params"].sum()), "params_trainable": int(layers["params"].sum()),
            "resolution": resolution, "layers": layers.to_dict(orient="records")})
        atomic.write_json(rundir.latents() / "manifest.json", manifest(rundir, test_accuracy))
    if stage in ("full", "probes-only"):
        atomic.write_csv(rundir.root / "probe_performances.csv", probe_frame(test_accuracy, skip=skip))
    if stage == "full":
        atomic.write_csv(rundir.root / "projections.csv", pd.DataFrame(
            [{"delta": d, "basis": b, "accuracy": test_accuracy - (1 - d) * (3 if b == "random" else 1),
              "loss": 0.3, "dims_sum": 100, "feature_dims_sum": 500, "saturation_mean": 0.2}
             for d in (0.9, 0.99, 1.0) for b in ("pca", "random")]))
    return rundir


def with_train_saturations(rundir: RunDir, values: list[float]) -> RunDir:
    """The run's metrics CSV with these train saturations per layer, and no logged s_mu column (the analysis
    then takes the mean of the layers)."""
    metrics = pd.read_csv(rundir.metrics_csv)
    for layer, value in zip(LAYERS, values):
        metrics[f"{layer}_train_saturation"] = value
    atomic.write_csv(rundir.metrics_csv, metrics.drop(columns=["train_saturation_mean"], errors="ignore"))
    return rundir


def write_grid(logs: Path) -> dict[str, RunDir]:
    """Four runs of one grid plus one folder with only probe results."""
    return {"full": write_run(logs, width=0.25, stage="full", test_accuracy=0.94, skip="features.16"),
            "unprobed": write_run(logs, width=0.125, stage="unprobed", test_accuracy=0.9),
            "trained": write_run(logs, width=1.0, stage="trained", test_accuracy=0.95),
            "running": write_run(logs, width=0.5, stage="running", test_accuracy=0.93),
            "probes-only": write_run(logs, width=0.25, stage="probes-only", run_id="1", test_accuracy=0.94)}


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


@contextlib.contextmanager
def probe_results_replaced_again_and_again(rundir: RunDir) -> Iterator[None]:
    """While the block runs, the run's probe results are written again every 5 ms (the same rows, a new file each
    time), as by probe jobs one after another."""
    probes, stop = pd.read_csv(rundir.probe_csv), threading.Event()

    def probe_jobs_writing() -> None:
        while not stop.is_set():
            atomic.write_csv(rundir.probe_csv, probes)
            time.sleep(0.005)

    writer = threading.Thread(target=probe_jobs_writing)
    writer.start()
    try:
        yield
    finally:
        stop.set()
        writer.join()
