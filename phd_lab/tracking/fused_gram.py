"""Fused CPU covariance update: convert, shift, sum and Gram of feature maps in one pass.

On the CPU, torch can form the float64 Gram of float32 activations only from a float64 copy of
them: one pass writes the copy (twice the activations' bytes), one subtracts the shift, one sums
and one multiplies, and BLAS computes both triangles of the symmetric product. This kernel
(compiled with numba on first use, its machine code cached on disk) reads the maps once: a tile of
up to 256 positions is converted and shifted into a cache-resident float64 buffer and summed, and
the tile's Gram is accumulated in 4 × 2 register blocks over the lower triangle only. The
arithmetic is exact float64, as on the torch path; only the order of the additions differs. It was
2–7× faster per update than the torch path for VGG- and ResNet-sized maps of 16–256 channels, on
one thread and on two (benchmarks/RESULTS.md, issue 3).

A float32 update with enough work is summed in ``CHUNKS`` chunks of positions, each into sums of its
own that are then added in chunk order. With more than one intra-op thread the chunks (and, with more
threads than chunks, contiguous runs of the triangle's blocks within a chunk) run on torch's own OpenMP
team (``openmp_team``): a second thread pool of our own had competed with torch's spinning workers and
measured slower, and each thread of two reads only its own share of the maps (splitting the triangle
alone had both threads read every map, which right after a training convolution come from memory and
cost as much as the arithmetic saved). Whether an update is chunked depends on its shape only, and the
first batch's mean (the shift) is summed on one thread, so the sums do not depend on torch's thread
count. Like BLAS, the compiled code follows the host CPU (vector width, FMA), so the last bits may
differ between CPU models.
``CovarianceAccumulator`` reads the Gram's lower triangle, which every update path keeps.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from types import ModuleType
from typing import Callable, Iterator

import numpy as np
import torch

from phd_lab.interrupts import raise_interruption_behind
from phd_lab.tracking import openmp_team

MAX_CHANNELS = 256  # wider layers keep BLAS (multithreaded), which caught up at 512 channels on 2 threads
MIN_WORK = 1 << 22  # observations × channels² per update; smaller updates are not worth compiling for
TEAM_MIN_WORK = 1 << 23  # observations × channels² from which an update is summed in chunks torch's threads share
CHUNKS = 2  # chunks of positions: each thread of two reads only its own share of the maps
_BLOCK = 4  # rows of one register block: the buffer is padded to a multiple
_MAX_TILE = 256  # positions per tile
_TILE_BYTES = 256 * 1024  # float64 tile of (channels, positions), kept in the L2 cache
_DTYPES = (torch.float32, torch.float64)

log = logging.getLogger(__name__)

enabled = True  # off: every update takes the torch path (see ``switched``)
team_enabled = True  # off: the kernel runs on the calling thread only

_compiled: Callable[..., None] | None = None
_numba_missing: str | None = None  # None: not tried yet; "": importable; else the import error


def applies(maps: torch.Tensor) -> bool:
    """Whether the fused kernel handles these (B, C, H, W) maps: CPU, float32/float64, at most
    ``MAX_CHANNELS`` channels, and enough work to repay compiling the kernel once per process. A pure
    function of the maps' shape, dtype and device (and of numba being importable), so a resumed run
    takes the same path."""
    channels, observations = maps.shape[1], maps.shape[0] * maps.shape[2] * maps.shape[3]
    return (enabled and maps.device.type == "cpu" and maps.dtype in _DTYPES and channels <= MAX_CHANNELS
            and observations * channels * channels >= MIN_WORK and _numba_available())


@contextlib.contextmanager
def switched(on: bool, *, team: bool = True) -> Iterator[None]:
    """The kernel on or off, and torch's threads sharing its updates or not, while the block runs: the
    benchmark compares the paths side by side, and tests pin one of them."""
    global enabled, team_enabled
    previous, enabled, team_enabled = (enabled, team_enabled), on, team
    try:
        yield
    finally:
        enabled, team_enabled = previous


def _numba_available() -> bool:
    """numba is a dependency, but a Python it does not support yet must still track (on the torch path)."""
    global _numba_missing
    if _numba_missing is None:
        try:
            importlib.import_module("numba")
            _numba_missing = ""
        except ImportError as error:
            raise_interruption_behind(error)  # a Ctrl-C as its compiled modules were imported: no missing numba
            _numba_missing = str(error) or "numba cannot be imported"
            log.warning("The fused CPU covariance kernel is off (%s): saturation tracking on the CPU takes the "
                        "slower torch path, with the same exact float64 result.", _numba_missing)
    return not _numba_missing


def accumulate(maps: torch.Tensor, shift: torch.Tensor, gram: torch.Tensor, total: torch.Tensor) -> None:
    """gram += Σ (a − shift)(a − shift)ᵀ (lower triangle) and total += Σ (a − shift) over every position.

    ``maps`` (B, C, H, W) on the CPU; ``shift`` (C,), ``gram`` (C, C) and ``total`` (C,) are float64,
    contiguous, and updated in place. Float32 maps with at least ``TEAM_MIN_WORK`` are summed in
    ``CHUNKS`` chunks of positions, each into sums of its own that are then added in chunk order, whether
    the chunks run on torch's threads or one after the other: the bits depend on the shape, not on the
    thread count.
    """
    batch, channels = maps.shape[:2]
    values = maps.reshape(batch, channels, -1).contiguous().numpy()
    tile = int(min(_MAX_TILE, max(16, _TILE_BYTES // (8 * _padded(channels)))))
    kernel = _kernel_module()
    tiles = kernel.tile_count(batch, values.shape[2], tile)
    if not _chunked(values):
        _kernel()(values, shift.numpy(), gram.numpy(), total.numpy(), tile, 0, tiles, 0, 1)
        return
    grams, totals = np.zeros((CHUNKS, channels, channels)), np.zeros((CHUNKS, channels))
    threads = openmp_team.team_size() if team_enabled else 1
    if threads > 1:
        _on_team(values, shift.numpy(), grams, totals, tile, tiles, threads)
    else:
        for chunk in range(CHUNKS):
            _kernel()(values, shift.numpy(), grams[chunk], totals[chunk], tile, tiles * chunk // CHUNKS,
                      tiles * (chunk + 1) // CHUNKS, 0, 1)
    gram_values, total_values = gram.numpy(), total.numpy()
    for chunk in range(CHUNKS):
        gram_values += grams[chunk]
        total_values += totals[chunk]


def channel_sums(maps: torch.Tensor) -> torch.Tensor:
    """Σ over batch and positions per channel, in float64, on one thread (deterministic)."""
    values = maps.reshape(maps.shape[0], maps.shape[1], -1).contiguous().numpy()
    sums = np.zeros(values.shape[1])
    _kernel_module().channel_totals(values, sums)
    return torch.from_numpy(sums)


def _padded(channels: int) -> int:
    return -(-channels // _BLOCK) * _BLOCK


def _chunked(values: np.ndarray) -> bool:
    """Whether an update is summed in chunks of positions that torch's threads can share: float32 maps with
    enough work (a team wakes in microseconds, but small updates gain less than that). Never a function of
    the thread count, so that the sums are not either."""
    return values.dtype == np.float32 and values.size * values.shape[1] >= TEAM_MIN_WORK


def _on_team(values: np.ndarray, shift: np.ndarray, grams: np.ndarray, totals: np.ndarray, tile: int,
             tiles: int, threads: int, parts: int | None = None) -> None:
    """The chunks of an update (``grams`` and ``totals`` hold one row per chunk), each split into ``parts``
    runs of the triangle's blocks (default: enough for every thread), over ``threads`` of torch's OpenMP
    team: the same sums, in the same order, as the chunks one after the other on one thread."""
    kernel = _kernel_module()
    chunks = grams.shape[0]
    slots = np.zeros(kernel.SLOTS, dtype=np.int64)
    for slot, array in ((kernel.VALUES, values), (kernel.SHIFT, shift), (kernel.GRAM, grams),
                        (kernel.TOTAL, totals)):
        slots[slot] = array.ctypes.data
    slots[[kernel.BATCH, kernel.CHANNELS, kernel.POSITIONS]] = values.shape
    slots[kernel.TILE], slots[kernel.TILES] = tile, tiles
    slots[kernel.CHUNKS], slots[kernel.PARTS] = chunks, parts or -(-threads // chunks)
    openmp_team.run(kernel.team_body().address, slots.ctypes.data, threads)


def _kernel() -> Callable[..., None]:
    """The compiled kernel for the calling thread (``fused_gram_kernel.serial``).

    numba compiles it at the first call for the arguments' types, under its own lock, and caches the
    machine code on disk (numba's cache: ``__pycache__`` beside the kernel's file, else the user's cache
    folder, or ``NUMBA_CACHE_DIR``), keyed by the source, the argument types and the host CPU: compiling
    took 2-3 s of every process that tracks on the CPU (each run of a SLURM array), more than a small
    run's saturation passes. The cached code is the code a fresh compile makes on that CPU, so the sums
    are the same bits. Where no cache folder is writable, it compiles in every process as before."""
    global _compiled
    if _compiled is None:
        _compiled = _kernel_module().serial
    return _compiled


def _kernel_module() -> ModuleType:
    """Imported here: only CPU runs with large enough maps pay for importing numba."""
    return importlib.import_module("phd_lab.tracking.fused_gram_kernel")
