"""The report's figure of a run's training: saturation per layer and epoch beside the losses (appendix B).

The thesis observes that the saturation pattern converges with the loss and that tails show early in
training; the per-epoch PNGs of a run show one epoch each, this figure all of them at once.
"""

from __future__ import annotations

from typing import Mapping

from phd_lab.analysis.run_summary import saturation_history
from phd_lab.report.collect import RunEntry
from phd_lab.report.figure_reuse import KeyedFigure, figure_key, keyed_figure

LOSS_COLUMNS = ("epoch", "train_loss", "test_loss", "test_accuracy")


def training_figure(entry: RunEntry, previous: Mapping[str, bytes]) -> KeyedFigure | None:
    """The run's saturation-during-training figure, or None below two epochs with saturations (nothing
    evolves in one)."""
    from phd_lab.plots import saturation as drawing

    split = (entry.summary.get("settings") or {}).get("analysis_split", "train")
    history = saturation_history(entry.tables.metrics, split)
    if history is None or len(history) < 2:
        return None
    metrics = entry.tables.metrics
    assert metrics is not None
    losses = metrics[[c for c in LOSS_COLUMNS if c in metrics.columns]].sort_values("epoch") \
        .drop_duplicates("epoch", keep="last")
    title = f"{entry.summary['run']['name']}: {split} saturation during training"
    key = figure_key(drawing, "evolution", title, history.reset_index(), losses)
    return keyed_figure(f"Saturation during training of {entry.summary['run']['name']}", key, previous=previous,
                        draw=lambda: drawing.evolution_figure(history, losses, title))
