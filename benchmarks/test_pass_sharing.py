"""Passes-mode saturation tracking: a second pass over the test set, or the test evaluation's own passes.

Before, each epoch of a run with ``tracking_mode: "passes"`` forwarded the test set twice: once for the test
metrics and once more, unchanged, in the tracking's separate passes. Now the tracker records the test split
during the trainer's own test evaluation. For each of ``--rounds`` rounds this script fits the same model
twice in one process, in alternating order:
  - "second pass": the saturation callback with ``during_test_evaluation`` switched off (the old way);
  - "shared": the callback as runs use it.
It checks that both fits give the same CSV row bits (timings aside) and prints the median CPU seconds per
fit (one torch thread, so CPU time is the work done even on a busy machine) and their paired ratio.

  python benchmarks/test_pass_sharing.py --rounds 3 --epochs 1
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from phd_lab.checkpoint import CheckpointStore  # noqa: E402
from phd_lab.seeding import seed_everything  # noqa: E402
from phd_lab.tracking.callback import SaturationCallback  # noqa: E402
from phd_lab.trainer import Trainer  # noqa: E402
from registries.datasets import Digits  # noqa: E402
from registries.metrics import Accuracy  # noqa: E402
from registries.models import vgg11  # noqa: E402
from registries.optimizers import adam  # noqa: E402


class SecondTestPass(SaturationCallback):
    """The old way: the test evaluation is not tracked, so ``measure`` forwards the test set again."""

    @contextlib.contextmanager
    def during_test_evaluation(self, trainer: Trainer) -> Iterator[None]:
        self._test_frame = None
        yield


def fit(kind: str, epochs: int, folder: Path) -> tuple[float, list[dict]]:
    """CPU seconds of one fit (VGG11 at ¼ width on Digits at 32 px, batch 64) and its history."""
    seed_everything(3)
    bundle = Digits(batch_size=64, resolution=32, data_dir="", seed=3, num_workers=0)
    seed_everything(3)
    model = vgg11(num_classes=10, in_channels=1, width=0.25)
    optimizer, scheduler = adam(model, epochs=epochs, lr=0.001)
    callback = (SecondTestPass if kind == "second pass" else SaturationCallback)(None, mode="passes")
    trainer = Trainer(model, optimizer, scheduler, metrics={"accuracy": Accuracy()}, epochs=epochs,
                      device=torch.device("cpu"), callbacks=[callback], progress=False)
    store = CheckpointStore(folder / f"{kind}.pt", folder / f"{kind}.previous.pt")
    started = time.process_time()
    history = trainer.fit(bundle, store)
    seconds = time.process_time() - started
    for path in (store.path, store.previous):  # the next round trains from scratch, not from a checkpoint
        path.unlink(missing_ok=True)
    return seconds, [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in history]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    times: dict[str, list[float]] = {"second pass": [], "shared": []}
    histories = {}
    with tempfile.TemporaryDirectory() as folder:
        fit("shared", 1, Path(folder))  # warm-up: imports, the tracking kernel's compile or cache load
        for round_ in range(args.rounds):
            order = ("second pass", "shared") if round_ % 2 == 0 else ("shared", "second pass")
            for kind in order:
                seconds, histories[kind] = fit(kind, args.epochs, Path(folder))
                times[kind].append(seconds)
    assert histories["second pass"] == histories["shared"], "the rows differ"
    ratios = [old / new for old, new in zip(times["second pass"], times["shared"])]
    print(f"  VGG11 ¼ width, Digits 32 px, {args.epochs} epoch(s), passes mode, 1 thread, {args.rounds} rounds")
    for kind, values in times.items():
        print(f"  {kind:12s} {statistics.median(values):8.2f} CPU s per fit")
    print(f"  paired ratio second pass / shared: {statistics.median(ratios):.3f}x; same CSV rows: yes")


if __name__ == "__main__":
    main()
