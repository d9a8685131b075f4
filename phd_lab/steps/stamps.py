"""Which post-processing results are up to date: a rerun skips a step whose inputs did not change.

A rerun of a finished run (a grid extended by one value, a step added to the config) used to run
every step again; ``project`` alone is a pass over the training set plus two test evaluations per
delta. A step with declared outputs records a stamp after it ran: its version, its resolved
parameters and the fingerprint (size, modification time, sha256) of the checkpoint it analysed. The
stamps of a run live in one file, ``.steps.json`` in its folder, written atomically by the
process that holds the run's lock.

Deliberately not in the stamp, as they are not in a run's identity either (a finished run is not
trained again when they change): the device (results differ in the last bits at most), ``data_dir``
and the code of the registry modules. After changing a dataset's files or code, delete the step's
outputs (or ``.steps.json``) to have it run again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phd_lab import atomic

if TYPE_CHECKING:
    from phd_lab.rundir import RunDir
    from phd_lab.steps import Step

STAMPS = ".steps.json"


def step_stamp(step: "Step", params: dict[str, Any], rundir: "RunDir") -> dict[str, Any]:
    """What a step's results depend on beyond the run's identity (which names the folder)."""
    checkpoint = rundir.checkpoint.stat()
    return json.loads(json.dumps({"version": step.version, "params": params,
                                  "checkpoint": [checkpoint.st_size, checkpoint.st_mtime_ns]}))


class StepStamps:
    """The stamps file of one run folder. A stamp also records the checkpoint's sha256, so that a copied
    run folder (``cp -r`` gives every file a new modification time) keeps its results."""

    def __init__(self, rundir: "RunDir") -> None:
        self.rundir = rundir
        self.path = Path(rundir.root) / STAMPS
        try:
            stamps = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stamps = {}
        self.stamps: dict[str, Any] = stamps if isinstance(stamps, dict) else {}
        self._checkpoint_sha256: str | None = None

    def checkpoint_sha256(self) -> str:
        """sha256 of the run's checkpoint (read once per instance: post-processing does not change it)."""
        if self._checkpoint_sha256 is None:
            from phd_lab.probes.manifest import sha256_file
            self._checkpoint_sha256 = sha256_file(self.rundir.checkpoint)
        return self._checkpoint_sha256

    def up_to_date(self, step: "Step", stamp: dict[str, Any], rundir: "RunDir", refresh: bool = True) -> bool:
        """The step ran on this checkpoint with these parameters, and every output it writes is there. A
        checkpoint of the same size and content under another modification time is the same checkpoint;
        with ``refresh`` its stamp is then rewritten, so the next check needs no hashing."""
        old = self.stamps.get(step.name)
        if not isinstance(old, dict) or not all(path.exists() for path in step.outputs(rundir)):
            return False
        recorded = {key: value for key, value in old.items() if key != "checkpoint_sha256"}
        if recorded == stamp:
            return True
        def without_time(entries: dict[str, Any]) -> dict[str, Any]:  # the checkpoint's size is kept
            return {**entries, "checkpoint": entries["checkpoint"][:1]}
        if not isinstance(recorded.get("checkpoint"), list) or without_time(recorded) != without_time(stamp):
            return False
        if not old.get("checkpoint_sha256") or old["checkpoint_sha256"] != self.checkpoint_sha256():
            return False
        if refresh:
            self.record(step, stamp)
        return True

    def record(self, step: "Step", stamp: dict[str, Any]) -> None:
        self.stamps[step.name] = {**stamp, "checkpoint_sha256": self.checkpoint_sha256()}
        atomic.write_json(self.path, self.stamps)

    def forget(self, step: "Step") -> None:
        """Before a step runs again: a crash half-way must not leave the old stamp beside new files."""
        if self.stamps.pop(step.name, None) is not None:
            atomic.write_json(self.path, self.stamps)
