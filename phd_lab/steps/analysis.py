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
from typing import Any

from phd_lab.config import RunConfig
from phd_lab.errors import ConfigError
from phd_lab.rundir import RunDir
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
        from phd_lab.analysis.run_summary import AnalysisSettings  # imports pandas: --list steps does not
        AnalysisSettings.from_config(config.values, where)

    def done(self, rundir: RunDir, params: dict[str, Any], stamps: Any = None, meta: Any = None) -> bool | None:
        """None (it reads the other steps' latest tables, so a rerun writes it again) once analysis.json and its
        figure are there; False while one is missing: a kill as they were written left a run that --dry-run
        called finished and that a Dask rerun did not submit, so the analysis was never written."""
        return None if rundir.analysis_json.is_file() and rundir.analysis_plot.is_file() else False

    def run(self, ctx: StepContext, **params: Any) -> None:
        """Write the analysis; the probe results it read are noted in ``ctx.notes`` (``ANALYSED_PROBES``): a probe
        job that finishes while this process still holds the run folder leaves the analysis to it, so the run
        reads them again once it lets the folder go (``TrainTestExecutor``). The analysis' problems (a table that
        cannot be read or used) are logged as warnings, not only written into analysis.json."""
        from phd_lab.analysis.run_summary import AnalysisSettings
        from phd_lab.report.collect import analyse_run
        entry = analyse_run(ctx.rundir, write=True, settings=AnalysisSettings.from_config(ctx.config.values),
                            skip_active=False, last_step=True)
        ctx.notes[ANALYSED_PROBES] = entry.probe_stamp if entry.written else "not written"
        _pause_for_tests()
        for problem in entry.summary["problems"]:  # a damaged table costs the analysis its conclusions: said here
            log.warning("Analysis of %s: %s", ctx.config.name, problem)
        for advice in entry.summary["recommendations"]:
            log.info("Analysis of %s: %s", ctx.config.name, advice["text"])


ANALYSED_PROBES = "analysed_probes"
PAUSE_ENV = "PHD_LAB_TEST_ANALYSIS_PAUSE"  # tests: seconds to wait after writing, or a file to wait for


def _pause_for_tests() -> None:
    """Tests only: hold the run folder after its analysis is written, for ``PAUSE_ENV`` seconds or, where it names
    a file, until that file exists (at most 120 s), so that a test's probe job finishes meanwhile and then ends the
    pause at once instead of sleeping out a margin."""
    value = os.environ.get(PAUSE_ENV, "")
    try:
        time.sleep(float(value or 0))
    except ValueError:
        deadline = time.monotonic() + 120
        while not os.path.exists(value) and time.monotonic() < deadline:
            time.sleep(0.02)
