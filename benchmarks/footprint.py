"""Disk footprint of one run, per file kind (audit "footprint", session 46).

Trains a few small real runs (Digits and FakeData, VGG11/ResNet18 at reduced width) with saturation tracking and
the extract step in a temporary logs folder, then sums the bytes of every file of each run folder by kind
(checkpoints, saturation PNGs, CSV, log, latents, ...), so that the growth per epoch and per sample can be
extrapolated to the thesis configs.

    python benchmarks/footprint.py [--out /tmp/footprint] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from phd_lab.experiment import Main  # noqa: E402
from phd_lab.extraction import _layers_to_extract, _row_bytes_per_set  # noqa: E402
from phd_lab.latents_sets import extraction_sets  # noqa: E402

RUNS = {
    "vgg11/8 Digits r32": {"model": "vgg11", "model_args": {"width": 0.125}, "dataset": "Digits", "resolution": 32},
    "vgg11/4 FakeData r32": {"model": "vgg11", "model_args": {"width": 0.25}, "dataset": "FakeData",
                             "dataset_args": {"train_size": 512, "test_size": 128}, "resolution": 32},
    "resnet18/8 FakeData r64": {"model": "resnet18", "model_args": {"width": 0.125}, "dataset": "FakeData",
                                "dataset_args": {"train_size": 256, "test_size": 64}, "resolution": 64},
}
KINDS = [("checkpoint", r"\.(previous\.)?pt$"), ("saturation png", r"_saturation_epoch\d+\.png$"),
         ("csv", r"\.csv$"), ("log", r"\.log$"), ("latents .npy", r"latents.*\.npy$"),
         ("config/json", r"\.json$"), ("other png", r"\.png$")]


def kind_of(path: Path) -> str:
    """The first kind whose pattern the file's relative path matches."""
    text = path.as_posix()
    return next((kind for kind, pattern in KINDS if re.search(pattern, text)), "other")


def footprint(folder: Path) -> dict[str, tuple[int, int]]:
    """Files and bytes per kind under one run folder."""
    sizes: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for path in folder.rglob("*"):
        if path.is_file():
            entry = sizes[kind_of(path.relative_to(folder))]
            entry[0] += 1
            entry[1] += path.stat().st_size
    return {kind: (count, size) for kind, (count, size) in sizes.items()}


THESIS = [  # (label, model factory, model_args, resolution, train + test samples, extract sets: downsampling, sizes)
    ("09_2 resnet18 Cifar-10 r32", "resnet18", {}, 32, 60_000, (4, None)),
    ("09_2 vgg16 Cifar-10 r32", "vgg16", {}, 32, 60_000, (4, None)),
    ("08_3 resnet18 Cifar-10 r224 (15 sets)", "resnet18", {"stem": "imagenet"}, 224, 60_000,
     (4, [1, 2, 3, 4, 5, 6, 7])),
    ("08_3 resnet18 Cifar-10 r32 cifar stem (15 sets)", "resnet18", {"stem": "cifar"}, 32, 60_000,
     (4, [1, 2, 3, 4, 5, 6, 7])),
    ("08_5 resnet18 Cifar-10 r1024", "resnet18", {}, 1024, 60_000, (4, None)),
    ("09_3 vgg16 Cifar-10 r32 pixelwise", "vgg16", {}, 32, 60_000, ("pixelwise", None)),
    ("09_3 resnet18 Cifar-10 r32 pixelwise", "resnet18", {}, 32, 60_000, ("pixelwise", None)),
]


def thesis_estimates() -> None:
    """Checkpoint and latents bytes of full-width thesis models, from one forward pass of one random image each."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import registries.models as models
    for label, factory, model_args, resolution, samples, (downsampling, sizes) in THESIS:
        model = getattr(models, factory)(num_classes=10, **model_args).eval()
        loader = DataLoader(TensorDataset(torch.randn(1, 3, resolution, resolution), torch.zeros(1, dtype=torch.long)))
        names = _layers_to_extract(model, None, loader, torch.device("cpu"))
        methods = ["adaptive_avg", "nearest"] if sizes else None
        sets = [(s.downsampling, s.method) for s in extraction_sets(downsampling, sizes, methods)]
        rows = _row_bytes_per_set(model, names, loader, torch.device("cpu"), sets, "float32")
        weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        params = sum(p.numel() * p.element_size() for p in model.parameters())
        print(f"{label}: {len(names)} layers, weights {weights / 1e6:.1f} MB, checkpoint ≈ "
              f"{(weights + 2 * params) / 1e6:.0f} MB with Adam, {(weights + params) / 1e6:.0f} MB with SGD momentum "
              f"(x2 kept: .pt + .previous.pt); latents "
              f"{len(sets)} set(s): {sum(rows) * samples / 1e9:.1f} GB float32 "
              f"(first set {rows[0] / 1e3:.1f} kB/sample = {rows[0] * samples / 1e9:.2f} GB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--estimate", action="store_true", help="only the full-width thesis estimates")
    args = parser.parse_args()
    thesis_estimates()
    if args.estimate:
        return
    out = Path(args.out or tempfile.mkdtemp(prefix="footprint-"))
    out.mkdir(parents=True, exist_ok=True)
    for label, run in RUNS.items():
        config = {**run, "epoch": args.epochs, "batch_size": 64, "cpu_threads": 2, "metrics": ["Accuracy"],
                  "logs_dir": str(out / "logs"), "data_dir": str(out / "data"),
                  "post_processing": ["extract"]}
        path = out / (re.sub(r"\W+", "_", label) + ".json")
        path.write_text(json.dumps(config))
        [outcome] = Main(progress=False)(str(path))
        print(f"\n{label}: {outcome.status}, {outcome.folder}")
        for kind, (count, size) in sorted(footprint(Path(outcome.folder)).items(), key=lambda kv: -kv[1][1]):
            print(f"  {kind:16s} {count:5d} files {size / 1024:10.1f} KiB")


if __name__ == "__main__":
    main()
