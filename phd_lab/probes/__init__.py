"""Logistic-regression probes on extracted latents (thesis §4.3, §6.2.5, §8.3).

``fit`` holds the pure functions (arrays → ``ProbeRecord``), ``settings`` the settings that change a result,
``manifest`` reads and checks a latents folder, ``cache`` memoises records by content, ``runner`` runs layers in
single-threaded worker processes (as many as ``memory`` says fit), ``discovery`` finds the latents to probe,
``job`` is the driver, ``outputs`` writes a run's results and ``probe_log`` its ``probe.log``, ``synthetic``
writes arrays as a latents folder, and ``cli`` is the command line of ``probe_main.py``. Nothing here imports
torch models (torch itself only for the ``lbfgs-torch`` solver).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from phd_lab.file_hash import sha256_file
    from phd_lab.probes.cache import ResultCache, cache_key
    from phd_lab.probes.discovery import jobs_from_config, jobs_from_latents
    from phd_lab.probes.fit import ProbeRecord, probe_arrays, probe_layer
    from phd_lab.probes.job import run_jobs
    from phd_lab.probes.manifest import Manifest, read_manifest, verify_hashes
    from phd_lab.probes.outputs import CSV_COLUMNS
    from phd_lab.probes.settings import SOLVERS, ProbeSettings

# where each name of the package lives, imported when first asked for: ``probe_main.py --help``, its usage errors
# and each spawned worker (``runner``) imported pandas, numpy and the whole job for names they never use
_HOMES = {"sha256_file": "phd_lab.file_hash", "ResultCache": "phd_lab.probes.cache",
          "cache_key": "phd_lab.probes.cache", "jobs_from_config": "phd_lab.probes.discovery",
          "jobs_from_latents": "phd_lab.probes.discovery", "ProbeRecord": "phd_lab.probes.fit",
          "probe_arrays": "phd_lab.probes.fit", "probe_layer": "phd_lab.probes.fit", "run_jobs": "phd_lab.probes.job",
          "Manifest": "phd_lab.probes.manifest", "read_manifest": "phd_lab.probes.manifest",
          "verify_hashes": "phd_lab.probes.manifest", "CSV_COLUMNS": "phd_lab.probes.outputs",
          "SOLVERS": "phd_lab.probes.settings", "ProbeSettings": "phd_lab.probes.settings"}


def __getattr__(name: str) -> Any:
    """A name of ``__all__`` from its module, imported on first use (PEP 562); anything else is no attribute, so
    that ``from phd_lab.probes import runner`` imports the submodule."""
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's names and those of ``__all__`` not imported yet: dir() (a notebook's tab completion) listed only
    the names used so far."""
    return sorted(set(globals()) | set(_HOMES))


__all__ = ["CSV_COLUMNS", "SOLVERS", "Manifest", "ProbeRecord", "ProbeSettings", "ResultCache", "cache_key",
           "jobs_from_config", "jobs_from_latents", "probe_arrays", "probe_layer", "read_manifest", "run_jobs",
           "sha256_file", "verify_hashes"]
