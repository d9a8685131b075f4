"""Logistic-regression probes on extracted latents (thesis §4.3, §6.2.5, §8.3).

``fit`` holds the pure functions (arrays → ``ProbeRecord``), ``settings`` the settings that change a result,
``manifest`` reads and checks a latents folder, ``cache`` memoises records by content, ``runner`` runs layers in
single-threaded worker processes (as many as ``memory`` says fit), ``discovery`` finds the latents to probe,
``job`` is the driver, ``outputs`` writes a run's results and ``probe_log`` its ``probe.log``, ``synthetic``
writes arrays as a latents folder, and ``cli`` is the command line of ``probe_main.py``. Nothing here imports
torch models (torch itself only for the ``lbfgs-torch`` solver).
"""

from phd_lab.file_hash import sha256_file
from phd_lab.probes.cache import ResultCache, cache_key
from phd_lab.probes.discovery import jobs_from_config, jobs_from_latents
from phd_lab.probes.fit import ProbeRecord, probe_arrays, probe_layer
from phd_lab.probes.job import run_jobs
from phd_lab.probes.manifest import Manifest, read_manifest, verify_hashes
from phd_lab.probes.outputs import CSV_COLUMNS
from phd_lab.probes.settings import SOLVERS, ProbeSettings

__all__ = ["CSV_COLUMNS", "SOLVERS", "Manifest", "ProbeRecord", "ProbeSettings", "ResultCache", "cache_key",
           "jobs_from_config", "jobs_from_latents", "probe_arrays", "probe_layer", "read_manifest", "run_jobs",
           "sha256_file", "verify_hashes"]
