"""CheckpointStore: versioned, atomic checkpoints with the previous good one kept.

Schema (format 1), a dict of tensors and plain containers readable with
``torch.load(weights_only=True)``: ``format``, ``epoch`` (completed epochs), ``model``,
``optimizer``, ``scheduler``, ``scaler``, ``rng`` (python/numpy/torch/cuda/DataLoader
generators), ``history`` (the metric rows so far), ``callbacks`` (their state), ``cpu_threads``
(torch's thread count while training; absent in checkpoints of versions before it was recorded),
``non_finite_batch`` (whether a training batch of non-finite loss held NaN or inf itself: None before any such
loss, and absent in checkpoints of versions before it was recorded).

Saving writes a temp file, fsyncs it, reads it back as a resume will (``weights_only``, memory-mapped; a state that
took a numpy scalar stops the run there, the current checkpoint kept), moves the current checkpoint to ``previous``
and renames the temp file into place. Loading falls back to ``previous`` when the current file
is missing or damaged (also a whole archive that lacks an entry a resume reads, or holds one of
another type), with a warning that says so. A checkpoint is a zip archive whose members
carry CRC-32 checksums, which ``torch.load`` does not check: a file with one flipped byte loaded
without a word. Loading checks them first (about 0.1 s per 200 MB).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
import zipfile
from pathlib import Path
from typing import Any

import torch

from phd_lab import atomic
from phd_lab.atomic import atomic_open, fsync_dir
from phd_lab.errors import CheckpointError, FolderInTheWay, NotARegularFile, storage_refusal
from phd_lab.interrupts import deferred_interrupts, raise_interruption_behind
from phd_lab.wording import byte_amount

CHECKPOINT_FORMAT = 1
# Test-only hook: seconds to sleep in the middle of writing a checkpoint, so that fault
# injection tests can kill the process while the file is half written.
PAUSE_ENV = "PHD_LAB_TEST_CHECKPOINT_PAUSE"

log = logging.getLogger(__name__)


class CheckpointStore:
    def __init__(self, path: Path, previous: Path) -> None:
        self.path = Path(path)
        self.previous = Path(previous)
        self._current_damaged = False  # set by load(): save() must not keep it as the fallback

    @property
    def staged(self) -> Path:
        """The new checkpoint while it is written, before it replaces ``path``."""
        return self.path.with_name(self.path.name + ".next")

    def generations(self) -> tuple[Path, Path, Path]:
        """The files ``load`` tries, in its order: current, staged (a save cut short between its renames), previous."""
        return self.path, self.staged, self.previous

    def exists(self) -> bool:
        """Whether any generation was saved (current, staged or previous): the run has trained."""
        return any(p.exists() for p in self.generations())

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` as the new current checkpoint; the current one becomes the previous. Ctrl-C and
        SIGTERM wait until it is done: cut short, the write was thrown away and with it the epoch that had
        just finished (the message still said training continues after it)."""
        with deferred_interrupts():
            try:
                self._save({"format": CHECKPOINT_FORMAT, **state})
            except FolderInTheWay:  # what to do is not to wait for room on the disk
                raise
            except (OSError, RuntimeError) as error:
                # torch's zip writer turns a failed write into "RuntimeError: [enforce fail at
                # inline_container.cc:672] unexpected pos", with the OSError (a full disk) only as its context
                cause = error if isinstance(error, OSError) else error.__cause__ or error.__context__
                if not isinstance(cause, OSError):
                    raise
                # the cause in words where it is known: 'once its disk has room' misled under ulimit -f or on a
                # read-only file system
                refusal = storage_refusal(cause)
                then = ("and the same command resumes from there once its disk has room" if refusal is None else
                        f"{refusal}, then run the same command again: it resumes from there")
                raise CheckpointError(
                    f"The checkpoint {str(self.path)!r} could not be written ({cause.strerror or cause}); the one "
                    f"saved before it, if any, is kept{',' if refusal is None else ';'} {then}.") from cause

    def _save(self, payload: dict[str, Any]) -> None:
        pause = float(os.environ.get(PAUSE_ENV, "0") or 0)
        with atomic_open(self.staged, "wb") as handle:
            torch.save(payload, handle)
            if pause:
                handle.flush()
                half = handle.tell() // 2
                handle.truncate(half)  # the on-disk temp file is now visibly incomplete
                handle.flush()
                time.sleep(pause)
                handle.seek(0)
                torch.save(payload, handle)
        unreadable = _unreadable_entries(self.staged, payload)
        if unreadable:
            self.staged.unlink(missing_ok=True)
            raise CheckpointError(
                f"The checkpoint of epoch {payload.get('epoch')} in {str(self.path.parent)!r} could not be saved so "
                f"that a resume can read it: {unreadable}, which torch.load(weights_only=True) refuses (checkpoints "
                f"hold tensors, Python numbers, strings and lists and dicts of them). Training stopped there; the "
                f"checkpoint saved before it, if any, is kept. Have the factory that made it keep Python numbers "
                f"(float(...) of a numpy number) and run the same command again: it resumes from the kept one.")
        if self.path.exists():
            if self._current_damaged:  # the readable fallback stays the previous generation
                atomic.replace(self.path, self.path.with_name(self.path.name + ".damaged"))
                self._current_damaged = False
            else:
                atomic.replace(self.path, self.previous)
        atomic.replace(self.staged, self.path)
        fsync_dir(self.path.parent)

    def _read(self, path: Path) -> dict[str, Any]:
        verify_checksums(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(_other_format(path, state))
        problem = content_problem(state)
        if problem is not None:  # a whole archive of other content (edited, or another program's): set aside
            raise MalformedCheckpoint(problem)
        return state

    def current_is_damaged(self) -> bool:
        """Whether ``load`` would set the current checkpoint aside as damaged (checksums, unpickling, an entry a
        resume reads missing or of another type) and go back to the previous one; False when it is absent or
        cannot be read at the moment."""
        return _is_damaged(self.path)

    def fallback(self) -> Path | None:
        """The generation ``load`` goes back to when the current checkpoint is damaged: the first of the staged
        and the previous one that exists and is not damaged, None when there is none,
        so that ``load`` stops with an error saying every checkpoint is damaged."""
        for path in self.generations()[1:]:
            if path.exists() and not _is_damaged(path):
                return path
        return None

    def peek(self, key: str) -> Any:
        """One entry of the checkpoint ``load`` would use, without reading its tensors (memory-mapped),
        or None when there is no readable checkpoint or it lacks the entry."""
        return self.peek_state().get(key)

    def peek_epochs(self) -> int | None:
        """The epochs trained by the checkpoint ``load`` would use, or None where there is none or its 'epoch' is
        no count (a damaged one, which ``load`` refuses: a str there ended the room check with a TypeError)."""
        epochs = self.peek("epoch")
        return epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else None

    def peek_state(self) -> dict[str, Any]:
        """The checkpoint ``load`` would use, memory-mapped (its tensors are read only where used); empty when
        there is no readable one, or when the file system refuses to read one (permissions, an I/O error): ``load``
        stops there instead of going back to the previous checkpoint, so that one says nothing about the run. Tried
        in ``load``'s order: after a kill between the two renames of a save, the staged file (whole) is the one
        ``load`` resumes from, not the previous one. A generation ``load`` sets aside as damaged (its checksums, an
        entry a resume reads missing) is passed over as ``load`` passes it over: peeked at, a current checkpoint with
        a flipped byte counted its epoch, which the resume from the previous one trains again. The state is shared
        with later peeks at the same unchanged file (``_peek_file``): read it, never change it."""
        for path in self.generations():
            try:
                state = _peek_file(path)  # checked and unpickled once while it stays the same file
            except Exception as error:  # noqa: BLE001 - missing or damaged: load() falls back the same way
                raise_interruption_behind(error)  # a Ctrl-C while it is read says nothing about the file
                if not _file_is_damaged(error):
                    return {}
                continue
            if not isinstance(state, dict):
                return {}
            if state.get("format") == CHECKPOINT_FORMAT and content_problem(state) is not None:
                continue  # load() takes it for a damaged file (MalformedCheckpoint) and goes on to the next
            return state
        return {}

    def load(self) -> dict[str, Any] | None:
        """The newest readable checkpoint, or None for a fresh run."""
        staged = self.staged
        candidates = [p for p in self.generations() if p.exists()]
        if not candidates:
            return None
        errors = []
        for candidate in candidates:
            try:
                state = self._read(candidate)
            except CheckpointError:
                raise
            except Exception as error:  # a truncated or corrupted file: fall back to the next one
                raise_interruption_behind(error)  # a Ctrl-C while it is read is no damage
                if isinstance(error, IsADirectoryError):  # taken for a damaged file, it was renamed *.damaged
                    raise FolderInTheWay(candidate) from None
                if isinstance(error, NotARegularFile):  # a FIFO: named with the rm that clears it, never renamed
                    raise error from None
                if not _file_is_damaged(error):
                    raise CheckpointError(
                        f"Reading the checkpoint {candidate} failed: {type(error).__name__}: {error}. That is the "
                        f"file system or the machine, not a damaged file, so every checkpoint is left as it is; "
                        f"start the run again when reading works.") from None
                later = candidates[candidates.index(candidate) + 1:]
                fallback = ("there is no other checkpoint to fall back to" if not later else
                            "falling back to the previous one" if later[0] == self.previous else
                            f"falling back to {later[0].name}, which a save cut short had written whole")
                log.warning("Checkpoint %s is damaged (%s: %s); %s.", candidate, type(error).__name__,
                            str(error).splitlines()[0] if str(error) else "", fallback)
                errors.append(f"{candidate.name}: {type(error).__name__}")
                continue
            if candidate != self.path:
                log.warning("Resuming from %s.", candidate)
                self._current_damaged = self.path.exists()
                if candidate == staged and not self.path.exists():
                    # killed between the two renames of save(): finish the second one
                    atomic.replace(staged, self.path)
                    fsync_dir(self.path.parent)
            return state
        raise CheckpointError(f"Every checkpoint in {self.path.parent} is damaged ({'; '.join(errors)}). "
                              f"Delete them to retrain this run from the start.")


def _unreadable_entries(path: Path, payload: dict[str, Any]) -> str:
    """What of the checkpoint just written to ``path`` ``torch.load(weights_only=True)`` refuses, named by its entry
    (``'scheduler' holds numpy.float64``), or '' where it reads back. Factories' results are checked before training
    (``factory_results``), but a state may take such a value only once it steps (an optimizer or scheduler of one's
    own): saved every epoch, no checkpoint of the run could be read back, and the resume after a kill lost the run.
    The written file is unpickled memory-mapped (its tensors stay unread); only on a refusal are the entries saved
    again one by one to name the culprit."""
    import pickle

    from phd_lab.factory_results import refused_entries
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        # the weights are tensors; what a module's get_extra_state() returns may not be
        entries = {key: {name: item for name, item in value.items() if not isinstance(item, torch.Tensor)}
                   if key == "model" else value for key, value in payload.items()}
        refused = refused_entries(entries, known_refused=True)
        named = [f"its entry {key!r} holds {held}" for key, held in refused.items()]
        return "; ".join(named) or "it holds what pickle refuses"
    return ""


def _other_format(path: Path, state: object) -> str:
    """Why ``state`` read from ``path`` is no checkpoint this version resumes, and what to do: another version's
    format (named as the number it is), or no phd-lab checkpoint at all (no 'format' entry: another program's)."""
    anew = "or move the run folder away to train the run anew"
    found = state.get("format") if isinstance(state, dict) else None
    if found is None:
        held = "an object without a 'format' entry" if isinstance(state, dict) else f"a {type(state).__name__}"
        return (f"The checkpoint {str(path)!r} is no phd-lab checkpoint: it holds {held} (written by another "
                f"program?). Put the run's own checkpoint back, {anew}.")
    return (f"The checkpoint {str(path)!r} has format {json.dumps(found, default=repr)}, and this version of "
            f"phd-lab reads format {CHECKPOINT_FORMAT}. Resume the run with the phd-lab version that wrote it, {anew}.")


class MalformedCheckpoint(ValueError):
    """A checkpoint that passes its checksums and says format 1 but lacks an entry the resume needs, or holds one of
    another type: ``load`` takes it for a damaged file (warns, goes back to the previous one)."""


# The entries a resume reads (Trainer.load_state_dict), with what each must be; ``scaler``, ``callbacks`` and
# ``cpu_threads`` may be absent (checkpoints of earlier versions) and are checked where present.
_ENTRIES = {"epoch": (int, "a count of epochs"), "model": (dict, "a state dict"),
            "optimizer": (dict, "a state dict"), "scheduler": ((dict, type(None)), "a state dict or None"),
            "rng": (dict, "the random states"), "history": (list, "a list of metric rows")}
_OPTIONAL = {"scaler": ((dict, type(None)), "a state dict or None"), "callbacks": (list, "a list of states"),
             "cpu_threads": (int, "a thread count")}


def content_problem(state: dict[str, Any]) -> str | None:
    """What keeps a format-1 checkpoint from being resumed (an entry missing or of another type, metric rows that
    are not one per completed epoch), or None where nothing does."""
    for name, (kind, meant) in {**_ENTRIES, **{k: v for k, v in _OPTIONAL.items() if k in state}}.items():
        if name not in state:
            return f"it has no entry {name!r} ({meant})"
        value = state[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"its entry {name!r} is a {type(value).__name__}, not {meant}"
    if state["epoch"] < 0 or len(state["history"]) != state["epoch"]:
        return f"it says {state['epoch']} completed epochs and holds {len(state['history'])} metric rows"
    if not all(isinstance(row, dict) for row in state["history"]):
        return "its metric rows are not all mappings"
    return None


# The file (device, inode, size, modification and change times) each checkpoint path had when this process last
# found its checksums whole. A rerun of a finished grid peeked at every run's checkpoint three times and loaded it
# once, reading each file four times; a file written since (a flipped byte, a new save, another file renamed into
# place) has another inode or times, and is read again. Only a file last modified a while before it was read is
# kept: file times have a clock tick's resolution, and a write within the tick of the last one may not change them
# (FAT keeps modification times in 2 s steps). The age is read on the file system's clock (``file_system_now``), which
# stamped the file: a node whose clock ran ahead of a shared file system's took a file modified a moment before for
# a settled one, and kept it as verified.
_VERIFIED: dict[str, tuple[int, ...]] = {}
_SETTLED_NS = 2_000_000_000


def verify_checksums(path: Path) -> tuple[int, ...] | None:
    """Raise ``zipfile.BadZipFile`` when the checkpoint is no whole zip archive or a member's data does not
    match its CRC-32. A file found whole is not read again while it stays the same file, unchanged. A FIFO there is
    ``NotARegularFile`` (``atomic.open_regular``): opening it waited for a writer for ever. Returns the file's
    signature where it is kept as verified (settled), else None."""
    with atomic.open_regular(path) as file:
        info = os.fstat(file.fileno())  # before the read: a write during it changes what the path says after
        signature = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        if _VERIFIED.get(os.fspath(path)) == signature:
            return signature
        settled = round(atomic.file_system_now(Path(path).parent) * 1e9) - info.st_mtime_ns > _SETTLED_NS
        with zipfile.ZipFile(file) as archive:
            bad = archive.testzip()
    if bad is not None:
        raise zipfile.BadZipFile(f"the data of {bad} does not match its CRC-32 checksum")
    if settled:
        _VERIFIED[os.fspath(path)] = signature
        return signature
    return None


# The memory-mapped states of the last few checkpoints peeked at, by path, with the signature ``verify_checksums``
# kept them under. Unpickling a checkpoint costs about 0.1 ms per tensor whatever its size (torch's weights-only
# unpickler; VGG11 with Adam: 200 tensors, 16 ms), and a finished grid point's status unpickled its checkpoint twice
# (``current_is_damaged`` and the extract step's fingerprint), its rerun four times (thread count, fit, setup, epochs
# left) before the load: half of a dry run of a 500-point grid with 320 runs trained. A file written since has another
# signature and is read again; a few entries only, so that the maps a grid leaves behind do not grow with it.
_PEEKED: dict[str, tuple[tuple[int, ...], Any]] = {}
_PEEKED_KEPT = 4


def _peek_file(path: Path) -> Any:
    """``torch.load`` of the checkpoint at ``path``, memory-mapped (its tensors stay unread), after its checksums
    (``verify_checksums``); a settled file that is still the same file is unpickled once."""
    signature = verify_checksums(path)
    key = os.fspath(path)
    kept = _PEEKED.get(key)
    if signature is not None and kept is not None and kept[0] == signature:
        return kept[1]
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if signature is not None:
        _PEEKED.pop(key, None)
        _PEEKED[key] = (signature, state)  # the newest last: the oldest goes first
        while len(_PEEKED) > _PEEKED_KEPT:
            del _PEEKED[next(iter(_PEEKED))]
    return state


# What a read error of the file system or the machine looks like (the file may be fine): such a
# checkpoint must not be set aside as damaged. torch.load reports a truncated file as EINVAL.
_TRANSIENT_ERRNOS = {errno.EIO, errno.ESTALE, errno.EACCES, errno.EPERM, errno.EAGAIN, errno.EINTR,
                     errno.ETIMEDOUT, errno.ENOTCONN, errno.EHOSTDOWN, errno.ENOMEM, errno.EMFILE, errno.ENFILE}


def _is_damaged(path: Path) -> bool:
    """Whether ``load`` sets the checkpoint at ``path`` aside as damaged: it fails its checksums or cannot be
    unpickled, or it is a format-1 checkpoint that lacks an entry a resume reads or holds one of another type
    (``content_problem``). False when it is absent or cannot be read at the moment (a read error of the file
    system, which ``load`` does not take for damage either), and for another format, which ``load`` refuses."""
    if not path.exists():
        return False
    try:
        state = _peek_file(path)  # checksums, then its tensors memory-mapped, not read
    except Exception as error:  # noqa: BLE001 - classified as load() classifies its read errors
        raise_interruption_behind(error)
        return _file_is_damaged(error) and not isinstance(error, FileNotFoundError)
    return (isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT
            and content_problem(state) is not None)


def _file_is_damaged(error: BaseException) -> bool:
    """Whether a failed read says something about the file rather than the file system. A folder in the file's place
    is no damaged file: ``load`` names it (``FolderInTheWay``) instead of going back to the previous checkpoint, nor
    is a FIFO (``NotARegularFile``)."""
    if isinstance(error, (MemoryError, IsADirectoryError, NotARegularFile)):
        return False
    return getattr(error, "errno", None) not in _TRANSIENT_ERRNOS


def misfit(store: CheckpointStore, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> str | None:
    """The first way the store's checkpoint does not fit ``model`` and ``optimizer`` (a weight the model lacks or
    has in another shape, other parameter groups), or None (no checkpoint, or it fits). Read from the memory-mapped
    file, so it is cheap before a run takes its folder: a run folder holds the run of other model code where
    another registry file builds the same model name differently (``registries`` is not part of the folder)."""
    state = store.peek_state()  # one read of the file for the weights and the optimizer
    weights = state.get("model")
    if not isinstance(weights, dict):
        return None
    own = model.state_dict()
    for name in own:
        if name not in weights:
            return f"the checkpoint has no {name!r}"
    for name in weights:
        if name not in own:
            return f"the model has no {name!r}"
    for name, tensor in own.items():
        saved = getattr(weights[name], "shape", None)
        if saved is not None and not torch.nn.parameter.is_lazy(tensor) and tuple(saved) != tuple(tensor.shape):
            return f"{name} has shape {list(saved)} in the checkpoint and {list(tensor.shape)} in the model"
    groups = (state.get("optimizer") or {}).get("param_groups")
    sizes = [len(group["params"]) for group in optimizer.param_groups]
    saved_sizes = [len(group.get("params", ())) for group in groups] if isinstance(groups, list) else sizes
    if saved_sizes != sizes:
        return (f"the optimizer's parameter groups hold {saved_sizes} parameters in the checkpoint and {sizes} in "
                f"the model")
    return None


GENERATIONS_ON_DISK = 3  # while a save writes the staged file, the current and the previous one are still there


def _tensor_bytes(tensors: Any) -> int:
    """The bytes of the tensors among ``tensors`` (other values, such as a step count, left out; so is a lazy
    module's parameter before its first forward pass, whose size is not known yet and whose numel() raises)."""
    return sum(t.numel() * t.element_size() for t in tensors
               if isinstance(t, torch.Tensor) and not torch.nn.parameter.is_lazy(t))


def checkpoint_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """The bytes of the tensors of one checkpoint of ``model`` and ``optimizer``, a lower bound of its size (RNG
    states, history and zip headers left out: 20 % more for a tiny model, little at thesis scale): the model's
    state, and the optimizer's, which before its first step holds nothing yet; then each parameter counts once per
    running buffer of the optimizer's kind (Adam's two moments, SGD's momentum)."""
    state = _tensor_bytes(model.state_dict().values())
    kept = [value for entry in optimizer.state.values() for value in entry.values()]
    if kept:
        return state + _tensor_bytes(kept)
    params = _tensor_bytes(p for group in optimizer.param_groups for p in group["params"])
    buffers = 2 if "betas" in optimizer.defaults else 1 if optimizer.defaults.get("momentum") else 0
    return state + buffers * params


def room_warning(store: CheckpointStore, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 epochs_left: int) -> str | None:
    """A warning, before training ``epochs_left`` epochs, where the disk of the run folder has less room than its
    checkpoints will take (one saved per epoch, up to three on disk at once); None where they fit. The first
    checkpoint is written after the first epoch (hours of ImageNet), so a run on a disk without room for it
    trained that epoch for nothing and then stopped with a CheckpointError."""
    one = checkpoint_bytes(model, optimizer)
    present = [path.stat().st_size for path in store.generations() if path.is_file()]
    needed = min(GENERATIONS_ON_DISK, len(present) + epochs_left) * one - sum(present)
    free = shutil.disk_usage(store.path.parent).free
    if needed <= free:
        return None
    return (f"The checkpoints of this run need at least {byte_amount(needed)} more in {store.path.parent} (one "
            f"holds at least {byte_amount(one)}: the model's and the optimizer's tensors; up to {GENERATIONS_ON_DISK} "
            f"are on disk while one is written after each epoch), but its disk has {byte_amount(free)} free: the "
            f"run will stop with a "
            f"CheckpointError once an epoch is trained and cannot be saved. Free space on that disk, or set "
            f"'logs_dir' to a folder on a disk with room.")
