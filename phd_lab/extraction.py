"""Latent extraction: layer outputs of the trained model, streamed to ``.npy`` files for the probes.

The train split (``bundle.train_eval``: no shuffling, no augmentation) and the test split
pass once through the model in eval mode. Forward hooks take each chosen layer's output,
reduce it to at most ``downsampling``×``downsampling`` by adaptive average pooling or, with
``method="nearest"``, nearest interpolation (``None`` keeps the full map), and append it,
flattened, to a ``.npy`` file (``np.lib.format`` header, then the rows).
A background thread writes and hashes each batch while the next one runs through the model;
its queue is bounded and written pages go to the page cache, so peak memory does not grow
with the dataset, and the manifest's sha256 values come without reading the files again.
The first batch of a split shows every layer's row shape, so the bytes still to write are then known exactly:
a disk without room for them stops the extraction there, naming both numbers (``space_error``), instead of
writing for hours until it is full.

Folder layout (the contract with the probe job, see DESIGN.md): ``train-<layer>.npy``,
``eval-<layer>.npy``, ``train-labels.npy``, ``eval-labels.npy`` and ``manifest.json``.
Every ``.npy`` is written under a temp name and renamed when complete; the manifest is
written last and atomically, so a folder without a valid manifest is a half-written
extraction: it is cleared and redone. A complete one with the same settings is reused.
The files are written by ``npy_writer``; the manifest and the reuse check live in ``latents_folder``.

``downsampling="pixelwise"``: every feature-map position (row, col) of a 4-D output is its
own data set of shape (samples, channels), stored as ``train-<layer>@<row>_<col>.npy``; the
manifest lists one entry per position, named ``<layer>@<row>_<col>``, sharing the layer's
``index`` and adding ``"layer"`` and ``"position": [row, col]``. Positions are first
written to a (samples, H, W, C) scratch file and then split in bounded chunks.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import shlex
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from phd_lab import atomic
from phd_lab.config_paths import safe_name
from phd_lab.errors import ConfigError, ExtractionError, storage_refusal
from phd_lab.interrupts import raise_if_stop_requested, raise_interruption_behind
from phd_lab.kept_folders import make_folder
from phd_lab.latents_folder import (MANIFEST, PREVIOUS_EXTRACTION_VERSION, SPLITS, build_manifest, clear,
                                    expected_settings, load_manifest, other_runs_latents, record_move,
                                    mark_in_progress, refuse_foreign_link, reusable, shared_latents_error,
                                    unmark_in_progress)
from phd_lab.latents_sets import DEFAULT_METHOD, DTYPES, METHODS, PIXELWISE, extraction_version, manifest_path
from phd_lab.npy_writer import BackgroundWriter, RowWriter, append_rows
from phd_lab.pooling import nearest_to, pool_to
from phd_lab.progress import bar_options
from phd_lab.registry import did_you_mean
from phd_lab.user_paths import dangling_link, gone_link_target, link_target, nearest_existing
from phd_lab.wording import byte_amount, first_names, plural

log = logging.getLogger(__name__)

# Test-only hook: seconds to sleep after every written batch, so that a fault-injection test
# can SIGKILL the process in the middle of an extraction.
PAUSE_ENV = "PHD_LAB_TEST_EXTRACT_PAUSE"
_CHUNK_BYTES = 32 * 2**20  # rows copied at once when splitting pixelwise scratch files


# ---------------------------------------------------------------------------- layer selection
def default_layers(model: nn.Module) -> list[str]:
    """Every Conv2d and Linear module (qualified names, definition order)."""
    return [name for name, module in model.named_modules() if name and isinstance(module, (nn.Conv2d, nn.Linear))]


def _called_once(model: nn.Module, names: list[str], loader: DataLoader, device: torch.device) -> list[str]:
    """The layers (the default ones, or those a wildcard matched) that a forward pass of one training sample
    calls exactly once. A shared module (CBAM's channel MLP runs on two poolings) has no single output, and a
    layer whose parent only reads its weights (attention's ``out_proj``) none: both are left out, as layers
    named exactly they are an error."""
    counts = dict.fromkeys(names, 0)

    def counter(name: str) -> Callable[..., None]:
        def count(*_: Any) -> None:
            counts[name] += 1
        return count

    _forward_one_sample(model, {name: counter(name) for name in names}, loader, device)
    shared = [name for name in names if counts[name] > 1]
    unused = [name for name in names if counts[name] == 0]
    for what, left_out in (("run more than once per forward pass (shared modules)", shared),
                           ("are never called in the forward pass", unused)):
        if left_out:
            log.info("Step 'extract': layers %s %s; not extracted (name them in 'layers' to be told why).",
                     ", ".join(left_out), what)
    return [name for name in names if counts[name] == 1]


def select_layers(model: nn.Module, patterns: list[str] | None) -> list[str]:
    """Module names matching the patterns (exact names or shell wildcards); None = default layers."""
    if patterns is None:
        chosen = default_layers(model)
    else:
        names = [name for name, _ in model.named_modules() if name]
        chosen = []
        for pattern in patterns:
            matches = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
            if not matches:
                raise ConfigError(f"Step 'extract': the layer {pattern!r} matches no module of "
                                  f"{type(model).__qualname__}.{did_you_mean(pattern, names)} Give qualified module "
                                  f"names or wildcards (e.g. 'features.*'); null extracts every Conv2d and Linear.")
            chosen += [m for m in matches if m not in chosen]
    if not chosen:  # only the default can choose nothing: a pattern that matches nothing is refused above
        names = [name for name, _ in model.named_modules() if name]
        if not names:  # nothing 'layers' could name: its forward pass uses its own parameters alone
            raise ConfigError(f"Step 'extract': {type(model).__qualname__} has no submodules (its forward pass uses "
                              f"its own parameters), so the step has no layer to extract; leave the step out, or "
                              f"build the model of modules such as Conv2d or Linear.")
        raise ConfigError(f"Step 'extract': {type(model).__qualname__} has no Conv2d or Linear module, which the "
                          f"step extracts by default; name the modules to extract in its 'layers' (qualified names "
                          f"or wildcards; this model's: {first_names(names, what='modules')}), or leave the step out.")
    check_file_names(model, chosen)
    return chosen


def check_file_names(model: nn.Module, names: list[str]) -> None:
    """Refuse layers whose files would be one file: layer names become file names through ``safe_name``, so
    "a b" and "a_b" would both be ``train-a_b.npy``, and "labels_" would be the label file ``train-labels.npy``.
    Checked before anything is written; the files of layers that do not collide keep their names."""
    owners: dict[str, str] = {}
    for name in names:
        stem = _file_stem(name)
        if stem == "labels":  # its files would be the label files, train-labels.npy and eval-labels.npy
            raise ConfigError(f"Step 'extract': {type(model).__qualname__} has a layer named {name!r}, whose latents "
                              f"(train-{stem}.npy) would overwrite the label files; leave it out with 'layers' "
                              f"(e.g. the other layers' names or wildcards).")
        if stem in owners:
            raise ConfigError(f"Step 'extract': the layers {owners[stem]!r} and {name!r} of {type(model).__qualname__} "
                              f"would both be written to train-{stem}.npy (layer names become file names with "
                              f"every character but letters, digits, '.', '_' and '-' replaced by '_'); leave one "
                              f"of them out with 'layers'.")
        owners[stem] = name


# ---------------------------------------------------------------------------- extraction
def _forward_one_sample(model: nn.Module, hooks: dict[str, Callable[..., None]], loader: DataLoader,
                        device: torch.device) -> None:
    """One eval-mode forward pass of the loader's first sample with ``hooks`` (layer name → forward hook) in
    place: a cheap look at which layers run and what they output, before a whole split is extracted."""
    _forward_hooked(model, hooks, torch.as_tensor(loader.dataset[0][0]).unsqueeze(0).to(device))


def _forward_hooked(model: nn.Module, hooks: dict[str, Callable[..., None]], inputs: torch.Tensor) -> None:
    """One eval-mode forward pass of ``inputs`` with ``hooks`` (layer name → forward hook) in place; the model is
    left in the mode it was found in and without the hooks."""
    modules = dict(model.named_modules())
    handles = [modules[name].register_forward_hook(hook) for name, hook in hooks.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            model(inputs)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()


def _channels_last_linears(model: nn.Module, names: list[str], forward: Callable[[dict[str, Any]], None]) -> list[str]:
    """The chosen Linear layers whose output is 4-D ((B, H, W, C): ConvNeXt's blocks), the only latents that
    extraction version 3 pools otherwise than the version before it; ``forward(hooks)`` makes one forward pass with
    the hooks in place."""
    modules = dict(model.named_modules())
    found: list[str] = []

    def recorder(name: str) -> Callable[..., None]:
        def record(_module: nn.Module, _args: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor) and output.dim() == 4 and name not in found:
                found.append(name)
        return record

    linears = {name: recorder(name) for name in names if isinstance(modules.get(name), nn.Linear)}
    if linears:
        forward(linears)
    return found


def _on_meta(model: nn.Module, resolution: int, look: Callable[[Callable[[dict[str, Any]], None]], Any]) -> Any:
    """What ``look(forward)`` returns, ``forward(hooks)`` making one forward pass of a placeholder image on the meta
    device with the hooks in place (no weights, no data: what ``--dry-run`` can afford); RGB first, then grey, two
    and four channels for a model that ignores its factory's ``in_channels``. None where the model runs on none of
    them there."""
    for channels in (3, 1, 2, 4):
        inputs = torch.empty(1, channels, resolution, resolution, device="meta")
        try:
            return look(lambda hooks: _forward_hooked(model, hooks, inputs))
        except Exception as error:  # noqa: BLE001 - the meta device or these channels: the next ones, or None
            raise_interruption_behind(error)
            log.debug("Meta forward pass on %d channels failed (%s: %s)", channels, type(error).__name__, error)
    return None


def meta_channels_last_linears(model: nn.Module, names: list[str], resolution: int) -> list[str] | None:
    """``_channels_last_linears`` of a model built on the meta device (``_on_meta``); None where the model runs on
    none of the placeholder images there."""
    return _on_meta(model, resolution, lambda forward: _channels_last_linears(model, names, forward))


def check_layer_outputs(model: nn.Module, names: list[str], patterns: list[str] | None, resolution: int) -> None:
    """Refuse, before training, the layers ``select_layers`` chose (``names``, for the step's ``layers``
    ``patterns``) that the extraction would stop at after it: a layer named exactly that the forward pass calls more
    than once (a shared module: which output?) or never, and a chosen layer whose output holds no tensor to extract
    (``layer_tensor``); a ConfigError names every one and why. Also where the default or the wildcards leave no
    layer that runs exactly once. One eval-mode forward pass of the model built on the meta device (``_on_meta``)
    tells it; a model that runs on none of its placeholder images there is left to the extraction."""
    outputs: dict[str, list[torch.Tensor | str]] = {}

    def recorder(name: str) -> Callable[..., None]:
        def record(module: nn.Module, _args: Any, output: Any) -> None:
            outputs[name].append(layer_tensor(module, output))
        return record

    def look(forward: Callable[[dict[str, Any]], None]) -> bool:
        outputs.clear()  # a pass on other channels before this one may have called some layers
        outputs.update({name: [] for name in names})
        forward({name: recorder(name) for name in names})
        return True

    if not _on_meta(model, resolution, look):
        return
    exact = set(patterns or ())
    problems = []
    for name in names:
        calls = outputs[name]
        if name in exact and len(calls) > 1:
            problems.append(f"{name!r} runs {len(calls)} times per forward pass (a module used more than once has "
                            f"no single output)")
        elif name in exact and not calls:
            problems.append(f"{name!r} is not called in the forward pass")
        elif len(calls) == 1 and isinstance(calls[0], str):
            pattern = next((p for p in patterns or () if fnmatch.fnmatchcase(name, p)), None)
            matched = "" if name in exact or pattern is None else f" (matched by {pattern!r})"
            problems.append(f"{name!r}{matched} returns {calls[0]}")
    if problems:
        raise ConfigError(f"Step 'extract': 'layers' names {'a layer' if len(problems) == 1 else 'layers'} the step "
                          f"cannot extract: {'; '.join(problems)}. Leave {'it' if len(problems) == 1 else 'them'} "
                          f"out of 'layers' (choose modules that run once per forward pass and return a tensor; a "
                          f"wildcard leaves out those that run more or less than once), or give null for every "
                          f"Conv2d and Linear.")
    if not any(len(outputs[name]) == 1 for name in names):
        chosen = (f"Conv2d or Linear layer of {type(model).__qualname__}" if patterns is None
                  else f"layer that {patterns} match")
        raise ConfigError(f"Step 'extract': no {chosen} runs exactly once per forward pass; name the layers to "
                          f"extract in 'layers'.")


def layer_tensor(module: nn.Module, output: Any) -> torch.Tensor | str:
    """What the step extracts of a layer's ``output``, a (batch, ...) tensor: the output itself, or for a recurrent
    layer (nn.LSTM, nn.GRU, nn.RNN), which returns (sequence, state), its output sequence, as the saturation
    tracker reads it, batch first (its features: every time step's outputs). A str says why there is none."""
    if isinstance(module, nn.RNNBase) and isinstance(output, tuple) and output:
        sequence = output[0]
        if isinstance(sequence, nn.utils.rnn.PackedSequence):
            return ("a PackedSequence as its output sequence (sequences of several lengths: no fixed number of "
                    "features per sample)")
        if isinstance(sequence, torch.Tensor) and sequence.dim() == 3:
            return sequence if module.batch_first else sequence.transpose(0, 1)
        if isinstance(sequence, torch.Tensor):
            return f"an unbatched output sequence of shape {tuple(sequence.shape)} (no sample axis)"
    if isinstance(output, torch.Tensor):
        return output
    return f"a {type(output).__name__}, not a tensor"


def _settings_to_reuse(previous: dict[str, Any] | None, settings: dict[str, Any], model: nn.Module,
                       names: list[str], loader: DataLoader, device: torch.device) -> dict[str, Any]:
    """The settings a complete extraction in the folder must have to be reused. One of the previous extraction
    version made the very latents this one makes unless a chosen Linear layer outputs a 4-D map, so it counts as
    current then: an upgrade keeps a run's latents, and the probe results fitted on them stay valid, instead of
    extracting every run again (and calling its probes stale) for a change that touched ConvNeXt-style layers only."""
    if (not isinstance(previous, dict) or extraction_version(previous) != PREVIOUS_EXTRACTION_VERSION
            or _channels_last_linears(model, names, lambda hooks: _forward_one_sample(model, hooks, loader, device))):
        return settings
    return {**settings, "extraction_version": PREVIOUS_EXTRACTION_VERSION}


def _reduce(output: torch.Tensor, downsampling: int | str | None, method: str = DEFAULT_METHOD,
            channels_last: bool = False) -> torch.Tensor:
    """(B, ...) layer output → (B, features), or (B, H, W, C) for pixelwise 4-D outputs. ``channels_last``: a
    4-D output is (B, H, W, C), as a Linear's on a channels-last map (ConvNeXt's blocks): its features are the
    last axis, as the saturation tracker and the PCA layers read them, so it is pooled over H and W, not W and C."""
    if output.dim() == 4 and channels_last:
        output = output.permute(0, 3, 1, 2)
    if output.dim() == 4:
        if downsampling == PIXELWISE:
            return output.permute(0, 2, 3, 1)
        if downsampling is not None:  # a maximum size: smaller maps are not up-sampled (thesis §8.3.1)
            size = int(downsampling)
            target = (min(size, output.shape[2]), min(size, output.shape[3]))
            output = nearest_to(output, target) if method == "nearest" else pool_to(output, target)
    return output.flatten(1)


def _file_stem(name: str) -> str:
    return safe_name(name)


def _narrowed(name: str, values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``values`` as ``dtype``, refusing finite values that float16 cannot hold: they became inf without a word,
    the step exited 0, and the probe job then refused the layer as a diverged run's, advising to retrain it."""
    narrowed = values.to(dtype)
    if dtype != torch.float16 or values.dtype == torch.float16 or not bool(torch.isinf(narrowed).any()):
        return narrowed
    overflowed = torch.isinf(narrowed) & torch.isfinite(values)
    if not bool(overflowed.any()):
        return narrowed  # inf in the layer's own output: the probe job names those (a diverged run)
    largest = float(values[overflowed].abs().max())
    raise ExtractionError(f"Step 'extract': layer {name!r} outputs finite values up to {largest:.4g} in magnitude, "
                          f"beyond float16's largest value {torch.finfo(torch.float16).max:.0f}, so its float16 "
                          f"latents would hold inf and the probe job could fit no probe on them; set the extract "
                          f"step's 'dtype' to \"float32\" (the default) and run the same command again.")


class _Capture:
    """Forward hooks that keep the current batch's reduced output of each chosen layer."""

    def __init__(self, model: nn.Module, names: list[str], downsampling: Any, dtype: torch.dtype,
                 method: str = DEFAULT_METHOD) -> None:
        modules = dict(model.named_modules())
        self.outputs: dict[str, torch.Tensor] = {}
        self.order: list[str] = []
        self.handles = [modules[name].register_forward_hook(self._hook(name, isinstance(modules[name], nn.Linear)))
                        for name in names]
        self.downsampling, self.dtype, self.method = downsampling, dtype, method

    def _hook(self, name: str, channels_last: bool):
        def hook(module: nn.Module, _args: Any, output: Any) -> None:
            output = layer_tensor(module, output)  # an LSTM's output sequence
            if isinstance(output, str):  # refused before training where the model runs on the meta device
                raise ExtractionError(f"Step 'extract': the output of layer {name!r} is {output}; choose other "
                                      f"layers.")
            if name in self.outputs:
                raise ExtractionError(f"Step 'extract': layer {name!r} runs more than once per forward pass, so its "
                                      f"output is ambiguous; choose other layers.")
            reduced = _narrowed(name, _reduce(output.detach(), self.downsampling, self.method, channels_last),
                                self.dtype)
            if reduced.untyped_storage().data_ptr() == output.untyped_storage().data_ptr():
                reduced = reduced.clone()  # a view of the output: a later in-place op (ReLU) would change it
            self.outputs[name] = reduced
            self.order.append(name)
        return hook

    def take(self) -> dict[str, np.ndarray]:
        arrays = {name: self.outputs[name].cpu().numpy() for name in self.order}
        self.outputs.clear()
        self.order.clear()
        return arrays

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _batches(loader: DataLoader, device: torch.device) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    for batch in loader:
        raise_if_stop_requested()
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ExtractionError("Step 'extract': the data loader must yield (inputs, labels) batches.")
        yield batch[0].to(device, non_blocking=True), batch[1]


def space_error(needed: int, free: int, folder: Path | str, dtype: str = "float32") -> str | None:
    """The message for latents that need more bytes than the disk of ``folder`` has free; None when they fit.
    Numbers in, message out, so that the boundary and the ways out are tested without filling a disk: the
    extraction calls it with its exact remaining total after the first batch and ``shutil.disk_usage``."""
    if needed <= free:
        return None
    half = ", or its 'dtype' \"float16\" (half the bytes)" if dtype == "float32" else ""
    return (f"Step 'extract': the latents need at least {byte_amount(needed)} more in {folder}, but its disk "
            f"has {byte_amount(free)} free; stopped after the first batch instead of writing until the disk is full "
            f"(the files begun were removed). Ways out: free space on that disk, or set 'latents_dir' to a folder on a "
            f"disk with room; or extract less per sample: a smaller 'downsampling' (feature maps pooled to at most "
            f"N×N; null and 'pixelwise' keep whole maps), fewer layers with the extract step's 'layers' (names or "
            f"wildcards){half}.")


def _bytes_to_come(arrays: dict[str, np.ndarray], downsampling: Any, dtype: str, rows_to_come: list[int]) -> int:
    """The bytes still to write once the first batch of a split shows every layer's row shape: its rows for this
    split and the later ones (``rows_to_come``), labels included, and for pixelwise layers room for the largest
    layer's scratch file beside its per-position files while it is split (npy headers left out: a few hundred
    bytes per file)."""
    itemsize = np.dtype(dtype).itemsize
    row = {name: int(np.prod(array.shape[1:], dtype=np.int64)) * itemsize for name, array in arrays.items()}
    label_row = np.dtype(np.int64).itemsize
    scratch = [row[name] for name, array in arrays.items() if downsampling == PIXELWISE and array.ndim == 4]
    return (sum(row.values()) + label_row) * sum(rows_to_come) + max(scratch, default=0) * max(rows_to_come)


def _check_space(folder: Path, needed: int, dtype: str) -> None:
    message = space_error(needed, shutil.disk_usage(folder).free, folder, dtype)
    if message is not None:
        raise ExtractionError(message)


def _row_bytes_per_set(model: nn.Module, names: list[str], loader: DataLoader, device: torch.device,
                       sets: list[tuple[Any, str]], dtype: str) -> list[int]:
    """The bytes one sample takes in each latents set of ``sets`` ((downsampling, method) pairs), its label
    included, from one forward pass of the loader's first sample (npy headers and pixelwise scratch left out)."""
    linears = {name for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    outputs: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, _args: Any, output: Any) -> None:
            output = layer_tensor(module, output)
            if isinstance(output, torch.Tensor):
                outputs[name] = output.detach().clone()
        return hook

    _forward_one_sample(model, {name: keep(name) for name in names}, loader, device)
    itemsize = np.dtype(dtype).itemsize
    label = np.dtype(np.int64).itemsize
    return [sum(_reduce(output, downsampling, method, name in linears)[0].numel() for name, output in outputs.items())
            * itemsize + label for downsampling, method in sets]


def _bytes_in(folder: Path) -> int:
    """The bytes of the files in ``folder`` (none where it is missing): an extraction replaces or reuses them."""
    with contextlib.suppress(OSError):
        return sum(entry.stat().st_size for entry in folder.iterdir() if entry.is_file())
    return 0


def check_sets_space(model: nn.Module, loaders: dict[str, DataLoader], sets: list[tuple[Path, Any, str]], *,
                     layers: list[str] | None = None, dtype: str = "float32",
                     device: torch.device | str = "cpu") -> None:
    """Before the first of several latents sets (the extract step's 'sizes' and 'methods'; ``sets`` holds each
    one's folder, downsampling and method): their disk must have room for all of them. Each extraction checks
    only its own set after its first batch, so the sets that fit were written (hours for §8.3's fourteen sets of
    a ResNet18 on Cifar-10) before a larger one, often the last, stopped the step on a disk that never had room
    for it. An ExtractionError names the total, each set's share, the folder, the free space and the keys that
    shrink them; the bytes of the sets' folders now count as free (each is reused or replaced)."""
    device = torch.device(device)
    bare = model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model
    names = _layers_to_extract(bare, layers, loaders["train"], device)
    samples = sum(len(loaders[split].dataset) for split in SPLITS)
    rows = _row_bytes_per_set(bare, names, loaders["train"], device,
                              [(downsampling, method) for _, downsampling, method in sets], dtype)
    needed = sum(row * samples for row in rows) - sum(_bytes_in(folder) for folder, _, _ in sets)
    parent = nearest_existing(sets[0][0].parent)
    free = shutil.disk_usage(parent).free
    if needed <= free:
        return
    shares = ", ".join(f"{folder.name} {byte_amount(row * samples).split(' (')[0]}"
                       for (folder, _, _), row in zip(sets, rows))
    half = ", 'dtype' \"float16\" (half the bytes)" if dtype == "float32" else ""
    raise ExtractionError(
        f"Step 'extract': its {len(sets)} latents sets need at least {byte_amount(needed)} more in "
        f"{sets[0][0].parent} ({shares}), but its disk has {byte_amount(free)} free; stopped before extracting any. "
        f"Ways out: free space on that disk, or set 'latents_dir' to a folder on a disk with room; or extract less: "
        f"fewer 'sizes' or 'methods' (a set's bytes grow with the square of its size), a smaller 'downsampling', "
        f"fewer layers with the extract step's 'layers'{half}.")


def _extract_split(model: nn.Module, loader: DataLoader, split: str, folder: Path, names: list[str],
                   downsampling: Any, dtype: str, device: torch.device, progress: bool,
                   method: str = DEFAULT_METHOD, rows_to_come: list[int] | None = None,
                   ) -> tuple[list[str], dict[str, dict[str, Any]], RowWriter]:
    """One pass over a split; returns the layers in forward order, their files and the finished labels file.
    After its first batch, before writing it, the disk of ``folder`` must have room for the rest: this split's
    rows and those of the later splits (``rows_to_come``, default this split's alone)."""
    total = len(loader.dataset)
    pause = float(os.environ.get(PAUSE_ENV, "0") or 0)
    capture = _Capture(model, names, downsampling, getattr(torch, dtype), method)
    writers: dict[str, RowWriter] = {}
    grids: dict[str, tuple[int, int]] = {}
    order: list[str] = []
    labels: RowWriter | None = None
    background = BackgroundWriter()
    try:
        with torch.inference_mode():
            for inputs, targets in tqdm(_batches(loader, device), total=len(loader), disable=not progress,
                                        desc=f"extract {split}", unit="batch", **bar_options(transient=True)):
                model(inputs)
                arrays = capture.take()
                if labels is None:  # first batch: forward order and shapes are now known
                    order = list(arrays)
                    missing = sorted(set(names) - set(order))
                    if missing:
                        raise ExtractionError(f"Step 'extract': the layers {missing} are not used in the forward "
                                              f"pass; choose layers the model runs.")
                    labels = RowWriter(folder / f"{split}-labels.npy", total, (), "int64")
                    for name in order:
                        scratch = downsampling == PIXELWISE and arrays[name].ndim == 4
                        path = folder / (f".scratch-{split}-{_file_stem(name)}.npy" if scratch
                                         else f"{split}-{_file_stem(name)}.npy")
                        writers[name] = RowWriter(path, total, arrays[name].shape[1:], dtype)
                        if scratch:
                            grids[name] = arrays[name].shape[1:3]
                    _check_space(folder, _bytes_to_come(arrays, downsampling, dtype, rows_to_come or [total]), dtype)
                rows = np.array(targets.cpu().numpy(), dtype=np.int64)  # a copy: the loader may reuse its buffer
                background.submit(append_rows, [(labels, rows), *[(writers[name], arrays[name]) for name in order]])
                if pause:
                    background.drain()
                    time.sleep(pause)
        if labels is None:
            raise ExtractionError(f"Step 'extract': the {split} split is empty.")
        background.drain()
        files: dict[str, dict[str, Any]] = {}
        positions = sum(rows * cols for rows, cols in grids.values())
        with tqdm(total=positions, desc=f"{split}: one file per position", unit="file",
                  disable=not progress or not positions,
                  **bar_options(transient=True)) as splitting:  # the long tail of a pixelwise extraction
            for name in order:
                path = writers[name].finish()
                if name in grids:
                    files.update(_split_positions(path, split, name, grids[name], dtype, splitting.update))
                    path.unlink()
                else:
                    files[name] = {"layer": name, "file": path.name, "shape": [total, *writers[name].row_shape],
                                   "sha256": writers[name].sha256}
        labels.finish()
        return order, files, labels
    finally:
        background.close()
        capture.close()
        for writer in [*writers.values(), *([labels] if labels else [])]:
            writer.close()  # no-op for finished files; releases the handles after an error


def _split_positions(scratch: Path, split: str, name: str, grid: tuple[int, int], dtype: str,
                     advance: Callable[[int], object] = lambda count: None) -> dict[str, dict[str, Any]]:
    """Turn a (N, H, W, C) scratch file into one (N, C) file per position, in bounded chunks."""
    source = np.load(scratch, mmap_mode="r", allow_pickle=False)
    samples, channels = source.shape[0], source.shape[3]
    chunk = max(1, _CHUNK_BYTES // max(1, grid[1] * channels * source.dtype.itemsize))
    files = {}
    for row in range(grid[0]):
        writers = [RowWriter(scratch.parent / f"{split}-{_file_stem(name)}@{row}_{col}.npy", samples, (channels,),
                             dtype) for col in range(grid[1])]
        try:
            for start in range(0, samples, chunk):
                block = np.asarray(source[start:start + chunk, row])  # (chunk, W, C): one strided read
                for col, writer in enumerate(writers):
                    writer.append(block[:, col])
            for col, writer in enumerate(writers):
                key = f"{name}@{row}_{col}"
                files[key] = {"layer": name, "position": [row, col], "file": writer.finish().name,
                              "shape": [samples, channels], "sha256": writer.sha256}
            advance(grid[1])
        finally:
            for writer in writers:
                writer.close()
    del source
    return files


def _check_settings(downsampling: int | str | None, dtype: str, method: str) -> None:
    """Refuse a dtype, downsampling or reduction method the extraction does not know (a ConfigError naming it)."""
    if dtype not in DTYPES:
        raise ConfigError(f"Step 'extract': dtype must be one of {list(DTYPES)}; got {dtype!r}.")
    if not (downsampling is None or downsampling == PIXELWISE
            or (isinstance(downsampling, int) and not isinstance(downsampling, bool) and downsampling >= 1)):
        raise ConfigError(f"Step 'extract': downsampling must be an integer ≥ 1, null or 'pixelwise'; got "
                          f"{downsampling!r}.")
    if method not in METHODS:
        raise ConfigError(f"Step 'extract': the method must be one of {list(METHODS)}; got {method!r}.")


def _layers_to_extract(model: nn.Module, layers: list[str] | None, loader: DataLoader,
                       device: torch.device) -> list[str]:
    """The layers ``select_layers`` picks, less those the default or a wildcard picked that do not run exactly once
    per forward pass of one of ``loader``'s samples (an ExtractionError where none is left)."""
    names = select_layers(model, layers)
    # the default, and layers a wildcard matched: only those whose output is unambiguous (a name given exactly
    # is the user's choice, refused with the reason if it is ambiguous)
    matched = names if layers is None else [name for name in names if name not in layers]
    if matched:
        kept = _called_once(model, matched, loader, device)
        names = [name for name in names if name not in matched or name in kept]
        if not names:
            chosen = (f"Conv2d or Linear layer of {type(model).__qualname__}" if layers is None
                      else f"layer that {layers} match")
            raise ExtractionError(f"Step 'extract': no {chosen} runs exactly once per forward pass; name the layers "
                                  f"to extract in 'layers'.")
    return names


def extract_latents(model: nn.Module, loaders: dict[str, DataLoader], folder: Path | str, *, run_dir: Path | str,
                    downsampling: int | str | None = 4, dtype: str = "float32", layers: list[str] | None = None,
                    device: torch.device | str = "cpu", test_accuracy: float | None = None,
                    progress: bool = True, method: str = DEFAULT_METHOD) -> dict[str, Any]:
    """Extract the chosen layers for ``loaders["train"]`` and ``loaders["eval"]`` into ``folder``.

    Returns the manifest. A complete extraction with the same settings is reused as it is;
    anything else in the folder (a half-written extraction, other settings) is replaced.
    """
    _check_settings(downsampling, dtype, method)
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    folder = Path(folder)
    device = torch.device(device)
    names = _layers_to_extract(model, layers, loaders["train"], device)
    settings = expected_settings(Path(run_dir), downsampling, dtype, model, method)
    samples = {split: len(loaders[split].dataset) for split in SPLITS}
    other = other_runs_latents(folder, run_dir)
    if other is not None:  # neither reused (its manifest rewritten to name this run) nor replaced
        raise ConfigError(shared_latents_error(folder, Path(run_dir).resolve(), other, "Step 'extract'"))
    link = dangling_link(folder)
    if link is not None:  # mkdir said 'File exists', naming neither the link nor where it leads
        raise ConfigError(f"Step 'extract': the latents folder {str(folder)!r} cannot be made: "
                          f"{gone_link_target(link, folder)}. Create the folder it points to (mkdir -p "
                          f"{shlex.quote(link_target(link))}) to extract there, or remove the link (rm "
                          f"{shlex.quote(str(link))}) to extract into the run folder; then run the same command again "
                          f"(nothing is retrained).")
    make_folder(folder)  # inside a run folder: never re-creates it after it was deleted
    previous = load_manifest(folder)
    wanted = _settings_to_reuse(previous, settings, model, names, loaders["train"], device)
    if reusable(folder, previous, wanted, names, samples):
        log.info("Latents in %s are complete; reusing them.", folder)
        # moved: no other run holds it (the same folder named by another locale's process has not moved)
        if manifest_path(str(previous["run_dir"])) != manifest_path(settings["run_dir"]):  # type: ignore[index]
            previous = record_move(folder, previous, settings["run_dir"])  # type: ignore[arg-type]
        unmark_in_progress(folder)  # one killed after its manifest was written
        return previous  # type: ignore[return-value]
    refuse_foreign_link(folder, previous, settings["run_dir"])
    if previous is not None or any(folder.iterdir()):
        log.info("Latents in %s are incomplete or were made with other settings; extracting again.", folder)
    mark_in_progress(folder, settings["run_dir"])  # before its first file goes, or an old one is removed
    clear(folder)

    was_training = model.training
    model.eval()
    try:
        results = {split: _extract_split(model, loaders[split], split, folder, names, downsampling, dtype, device,
                                         progress, method, [samples[later] for later in SPLITS[number:]])
                   for number, split in enumerate(SPLITS)}
        order = results["train"][0]
        if results["eval"][0] != order:
            raise ExtractionError("Step 'extract': the layers ran in a different order on the test split.")
    except BaseException as error:  # no half-written files left behind: finished ones, pixelwise scratch files
        with contextlib.suppress(OSError):
            clear(folder)
            unmark_in_progress(folder)
            folder.rmdir()  # and no empty latents folder (one holding files of the user's own stays)
        if isinstance(error, OSError):  # e.g. a full disk: say where, and what frees it where that is known
            refusal = storage_refusal(error)
            remedy = "" if refusal is None else f"; {refusal}, then run the same command again"
            raise ExtractionError(f"Step 'extract': writing the latents to {folder} failed ({error}); its partial "
                                  f"files were removed{remedy}.") from error
        raise
    finally:
        model.train(was_training)
    manifest = build_manifest(results, settings, test_accuracy)
    atomic.write_json(folder / MANIFEST, manifest)
    unmark_in_progress(folder)
    log.info("Extracted %s (%s per split) into %s", plural(len(order), "layer"),
             plural(len(manifest["layers"]), "file"), folder)
    return manifest
