"""Post-processing step ``analysis``: analysis.json + analysis.png from the run's saved tables.

It reads only what the run folder holds (metrics CSV, receptive_field.csv, computational_info,
probe results if any), so it must come last in ``post_processing``. Probes run later in a
separate job, which refreshes the analysis of every run it completes; ``python -m phd_lab report``
refreshes it too.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from phd_lab.analysis.run_summary import AnalysisSettings
from phd_lab.config import RunConfig
from phd_lab.errors import ConfigError
from phd_lab.steps import Step, StepContext, register_step

log = logging.getLogger(__name__)


@register_step
class AnalysisStep(Step):
    name = "analysis"
    summary = "tails, border layers, probes and recommendations → analysis.json + analysis.png (put it last)"
    params = ()

    def check(self, params: dict[str, Any], config: RunConfig, where: str) -> None:
        names = [entry["name"] for entry in config.post_processing]
        if names and names[-1] != self.name:
            raise ConfigError(f"{where}: the post-processing step 'analysis' reads the tables of the other steps, so "
                              f"it must come last in 'post_processing'; got the order {names}.")
        AnalysisSettings.from_config(config.values, where)

    def run(self, ctx: StepContext, **params: Any) -> None:
        """Analyse until the probe results stand still: a probe job that finishes while this process holds the
        run folder leaves the analysis to it, so results that arrived after they were read are read again."""
        from phd_lab.report.collect import analyse_run
        settings = AnalysisSettings.from_config(ctx.config.values)
        for attempt in range(MAX_ATTEMPTS):
            probes = _file_stamp(ctx.rundir.probe_csv)
            entry = analyse_run(ctx.rundir, write=True, settings=settings, skip_active=False, last_step=True)
            time.sleep(float(os.environ.get(PAUSE_ENV, "0") or 0))
            if _file_stamp(ctx.rundir.probe_csv) == probes:
                break
            log.info("Probe results of %s arrived while its analysis was written; analysing again", ctx.config.name)
        for advice in entry.summary["recommendations"]:
            log.info("Analysis of %s: %s", ctx.config.name, advice["text"])


MAX_ATTEMPTS = 3
PAUSE_ENV = "PHD_LAB_TEST_ANALYSIS_PAUSE"  # tests: seconds to wait after writing, for a probe job to finish meanwhile


def _file_stamp(path: Path) -> tuple[int, int, int] | None:
    """What tells a replaced file from the one read before (atomic writes give it a new inode)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size
