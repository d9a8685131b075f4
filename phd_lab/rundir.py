"""RunDir: every path of one run. Constructing it is pure; ``create()`` is the only mkdir."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from phd_lab.config import RunConfig, safe_name


@dataclass(frozen=True)
class RunDir:
    root: Path
    name: str  # file prefix: the run's critical parameters

    @classmethod
    def for_run(cls, cfg: RunConfig, logs_dir: Path | str | None = None) -> "RunDir":
        logs = Path(logs_dir if logs_dir is not None else cfg.logs_dir)
        root = (logs / safe_name(cfg.model) / f"{safe_name(cfg.dataset)}_{cfg.resolution}"
                / safe_name(cfg.run_id) / cfg.variant_slug())
        return cls(root=root, name=cfg.name)

    def file(self, suffix: str) -> Path:
        """``<root>/<name><suffix>``, e.g. ``file('.csv')``."""
        return self.root / f"{self.name}{suffix}"

    @property
    def config(self) -> Path:
        return self.file("_config.json")

    @property
    def metrics_csv(self) -> Path:
        return self.file(".csv")

    @property
    def checkpoint(self) -> Path:
        return self.file(".pt")

    @property
    def previous_checkpoint(self) -> Path:
        return self.file(".previous.pt")

    @property
    def log(self) -> Path:
        return self.file(".log")

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def analysis_json(self) -> Path:  # issue 7: written by the analysis step and the report
        return self.root / "analysis.json"

    @property
    def analysis_plot(self) -> Path:  # issue 7
        return self.root / "analysis.png"

    @property
    def receptive_field_csv(self) -> Path:
        return self.root / "receptive_field.csv"

    @property
    def receptive_field_plot(self) -> Path:
        return self.root / "receptive_field.png"

    @property
    def computational_info_json(self) -> Path:
        return self.root / "computational_info.json"

    @property
    def computational_info_csv(self) -> Path:
        return self.root / "computational_info.csv"

    def saturation_plot(self, epoch: int) -> Path:
        return self.file(f"_saturation_epoch{epoch}.png")

    @property
    def projections_csv(self) -> Path:
        return self.root / "projections.csv"

    @property
    def projections_plot(self) -> Path:
        return self.root / "projections.png"

    def latents(self, latents_dir: str | None = None) -> Path:
        """The latents folder: inside the run folder, or mirrored under ``latents_dir``."""
        if latents_dir is None:
            return self.root / "latents"
        return Path(latents_dir) / self.root.relative_to(self.root.parents[3]) / "latents"

    # --- probe job outputs (issue 5): they do not use ``name``, so the probe job can build a
    # RunDir from the manifest's run_dir alone.
    @property
    def probe_csv(self) -> Path:
        return self.root / "probe_performances.csv"

    @property
    def probe_plot(self) -> Path:
        return self.root / "probe_performances.png"

    def probe_confusion(self, index: int, layer: str, suffix: str) -> Path:
        """Confusion matrix of one layer's probe, ``suffix`` ``.npy`` or ``.png``."""
        return self.root / "probe_confusion" / f"{index:03d}-{safe_name(layer)}{suffix}"

    def create(self) -> "RunDir":
        self.root.mkdir(parents=True, exist_ok=True)
        return self
