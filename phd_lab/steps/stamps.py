"""Which post-processing results are up to date: a rerun skips a step whose inputs did not change.

A rerun of a finished run (a grid extended by one value, a step added to the config) used to run
every step again; ``project`` alone is a pass over the training set plus two test evaluations per
delta. A step with declared outputs records a stamp after it ran: its version, its resolved
parameters and the fingerprint (size, modification time, sha256) of the checkpoint it analysed. The
stamps of a run live in one file, ``.steps.json`` in its folder, written atomically by the
process that holds the run's lock. The stamp also records the size and sha256 of each output the step wrote:
an output truncated or edited since (a cut copy, a full disk) is no result of the step, which runs again. A stamp
written before outputs were recorded checks their existence only, as it did.

Deliberately not in the stamp, as they are not in a run's identity either (a finished run is not
trained again when they change): the device (results differ in the last bits at most), ``data_dir``
and the code of the registry modules. After changing a dataset's files or code, delete the step's
outputs (or ``.steps.json``) to have it run again.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phd_lab import atomic
from phd_lab.file_hash import sha256_file

if TYPE_CHECKING:
    from phd_lab.rundir import RunDir
    from phd_lab.steps import Step

log = logging.getLogger(__name__)

STAMPS = ".steps.json"
OUTPUTS = "outputs"  # a stamp's {file name: [size, sha256]} of the step's outputs


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
            stamps = atomic.read_json(self.path)
        except FileNotFoundError:  # no step has run here yet
            stamps = {}
        except (OSError, ValueError) as error:
            stamps = error
        if not isinstance(stamps, dict):  # cut short, damaged, a folder in its place: it vouches for no result
            log.warning("The post-processing stamps %s cannot be read (%s), so every step of this run computes its "
                        "results again, although they may be intact.", self.path,
                        stamps if isinstance(stamps, Exception) else f"it holds a JSON {type(stamps).__name__}")
        self.stamps: dict[str, Any] = stamps if isinstance(stamps, dict) else {}
        self._checkpoint_sha256: str | None = None

    def checkpoint_sha256(self) -> str:
        """sha256 of the run's checkpoint (read once per instance: post-processing does not change it)."""
        if self._checkpoint_sha256 is None:
            self._checkpoint_sha256 = sha256_file(self.rundir.checkpoint)
        return self._checkpoint_sha256

    def up_to_date(self, step: "Step", stamp: dict[str, Any], rundir: "RunDir", refresh: bool = True) -> bool:
        """The step ran on this checkpoint with these parameters, and every output it writes is there as it wrote
        it (``_outputs_intact``). A checkpoint of the same size and content under another modification time is the
        same checkpoint; with ``refresh`` its stamp is then rewritten, so the next check needs no hashing."""
        old = self.stamps.get(step.name)
        if not isinstance(old, dict) or not all(path.exists() for path in step.outputs(rundir)):
            return False
        recorded = {key: value for key, value in old.items() if key not in ("checkpoint_sha256", OUTPUTS)}
        if recorded != stamp:
            def without_time(entries: dict[str, Any]) -> dict[str, Any]:  # the checkpoint's size is kept
                return {**entries, "checkpoint": entries["checkpoint"][:1]}
            if not isinstance(recorded.get("checkpoint"), list) or without_time(recorded) != without_time(stamp):
                return False
            if not old.get("checkpoint_sha256") or old["checkpoint_sha256"] != self.checkpoint_sha256():
                return False
        if not self._outputs_intact(step, old.get(OUTPUTS), rundir):
            return False
        if recorded != stamp and refresh:  # the outputs just checked keep their digests (an old stamp, none)
            self._store(step, {**old, **stamp})
        return True

    def _outputs_intact(self, step: "Step", recorded: Any, rundir: "RunDir") -> bool:
        """Every output whose size and sha256 the stamp records is still that file; one that is not (truncated or
        edited since) is named in a warning. A stamp of an earlier version records none: existence is all it says."""
        if not isinstance(recorded, dict):
            return True
        for path in step.outputs(rundir):
            expected = recorded.get(path.name)
            if not isinstance(expected, list) or len(expected) != 2:
                continue
            now = output_digest(path)
            if now == expected:
                continue
            how = (f"{expected[0]} bytes then, {now[0]} now" if now is not None and now[0] != expected[0]
                   else "the same size, other content" if now is not None else "it cannot be read now")
            log.warning("%s is not the file the post-processing step %s wrote (%s): it was changed or damaged since "
                        "(a copy cut short?), so the step computes its results again.", path, step.name, how)
            return False
        return True

    def record(self, step: "Step", stamp: dict[str, Any]) -> None:
        """Stamp a step that has just run: its stamp, the checkpoint's sha256 and the size and sha256 of each output
        it wrote."""
        outputs = {path.name: digest for path in step.outputs(self.rundir)
                   if (digest := output_digest(path)) is not None}
        self._store(step, {**stamp, "checkpoint_sha256": self.checkpoint_sha256(), OUTPUTS: outputs})

    def _store(self, step: "Step", entry: dict[str, Any]) -> None:
        self.stamps[step.name] = entry
        atomic.write_json(self.path, self.stamps)

    def forget(self, step: "Step") -> None:
        """Before a step runs again: a crash half-way must not leave the old stamp beside new files."""
        if self.stamps.pop(step.name, None) is not None:
            atomic.write_json(self.path, self.stamps)


def output_digest(path: Path) -> list[Any] | None:
    """``[size, sha256]`` of a step's output as a stamp records it; None where it cannot be read."""
    try:
        return [path.stat().st_size, sha256_file(path)]
    except OSError:
        return None
