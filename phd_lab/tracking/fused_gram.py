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

The kernel runs on the calling thread and the first batch's mean (the shift) is summed by numpy, so
a layer on this path has sums that do not depend on torch's thread count. Like BLAS, the compiled
code follows the host CPU (vector width, FMA), so the last bits may differ between CPU models.
``CovarianceAccumulator`` reads the Gram's lower triangle, which every update path keeps.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from typing import Callable, Iterator

import numpy as np
import torch

from phd_lab.interrupts import raise_interruption_behind

MAX_CHANNELS = 256  # wider layers keep BLAS (multithreaded), which caught up at 512 channels on 2 threads
MIN_WORK = 1 << 22  # observations × channels² per update; smaller updates are not worth compiling for
_BLOCK = 4  # rows of one register block: the buffer is padded to a multiple
_MAX_TILE = 256  # positions per tile
_TILE_BYTES = 256 * 1024  # float64 tile of (channels, positions), kept in the L2 cache
_DTYPES = (torch.float32, torch.float64)

log = logging.getLogger(__name__)

enabled = True  # off: every update takes the torch path (see ``switched``)

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
def switched(on: bool) -> Iterator[None]:
    """The kernel on or off while the block runs: the benchmark compares both paths side by side,
    and tests pin one of them."""
    global enabled
    previous, enabled = enabled, on
    try:
        yield
    finally:
        enabled = previous


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
    contiguous, and updated in place.
    """
    batch, channels = maps.shape[:2]
    values = maps.reshape(batch, channels, -1).contiguous().numpy()
    kernel = _kernel()
    tile = int(min(_MAX_TILE, max(16, _TILE_BYTES // (8 * _padded(channels)))))
    kernel(values, shift.numpy(), gram.numpy(), total.numpy(), tile)


def channel_sums(maps: torch.Tensor) -> torch.Tensor:
    """Σ over batch and positions per channel, in float64, by numpy on one thread (deterministic)."""
    values = maps.reshape(maps.shape[0], maps.shape[1], -1).numpy()
    return torch.from_numpy(values.sum(axis=(0, 2), dtype=np.float64))


def _padded(channels: int) -> int:
    return -(-channels // _BLOCK) * _BLOCK


def _kernel() -> Callable[..., None]:
    """The compiled kernel. numba compiles it at the first call for the arguments' types, under its
    own lock, so threads that race here at most build two dispatchers of the same function.

    The machine code is cached on disk (numba's cache: ``__pycache__`` beside this file, else the
    user's cache folder, or ``NUMBA_CACHE_DIR``), keyed by the source, the argument types and the host
    CPU: compiling took 2-3 s of every process that tracks on the CPU (each run of a SLURM array),
    more than a small run's saturation passes. The cached code is the code a fresh
    compile makes on that CPU, so the sums are the same bits. Where no cache folder is writable, it
    compiles in every process as before."""
    global _compiled
    if _compiled is None:
        import numba  # imported here: only CPU runs with large enough maps pay for it
        # reassoc lets the reductions vectorise; NaN and inf keep their IEEE meaning (no nnan/ninf).
        options = {"nogil": True, "fastmath": {"reassoc", "contract"}}
        try:
            _compiled = numba.njit(cache=True, **options)(_gram_update)
        except RuntimeError as error:  # "cannot cache function ...: no locator available" (read-only places)
            log.debug("The fused CPU covariance kernel is compiled without a disk cache: %s", error)
            _compiled = numba.njit(cache=False, **options)(_gram_update)
    return _compiled


def _gram_update(values: np.ndarray, shift: np.ndarray, gram: np.ndarray, total: np.ndarray,
                 tile: int) -> None:  # pragma: no cover - runs compiled; tested through accumulate()
    """The kernel numba compiles. values (B, C, P); a tile holds up to ``tile`` positions of one map,
    or several whole maps when they are smaller. Register blocks of 4 rows × 2 columns."""
    batch, channels, positions = values.shape
    padded = (channels + 3) // 4 * 4
    width_max = min(tile, positions)
    maps_per_tile = max(1, tile // positions) if positions < tile else 1
    buffer = np.zeros((padded, maps_per_tile * width_max))  # rows beyond ``channels`` stay zero
    for first in range(0, batch, maps_per_tile):
        maps = min(maps_per_tile, batch - first)
        for start in range(0, positions, width_max):
            width = min(width_max, positions - start)
            count = maps * width
            for m in range(maps):
                base = m * width
                for c in range(channels):
                    offset = shift[c]
                    row_sum = 0.0
                    source = values[first + m, c, start:start + width]
                    target = buffer[c, base:base + width]
                    for t in range(width):
                        value = np.float64(source[t]) - offset
                        target[t] = value
                        row_sum += value
                    total[c] += row_sum
            for r in range(0, padded, 4):
                for s in range(0, r + 4, 2):
                    a00 = a01 = a10 = a11 = a20 = a21 = a30 = a31 = 0.0
                    for t in range(count):
                        x0, x1, x2, x3 = buffer[r, t], buffer[r + 1, t], buffer[r + 2, t], buffer[r + 3, t]
                        y0, y1 = buffer[s, t], buffer[s + 1, t]
                        a00 += x0 * y0
                        a01 += x0 * y1
                        a10 += x1 * y0
                        a11 += x1 * y1
                        a20 += x2 * y0
                        a21 += x2 * y1
                        a30 += x3 * y0
                        a31 += x3 * y1
                    first_column, second_column = (a00, a10, a20, a30), (a01, a11, a21, a31)
                    for i in range(4):  # skip the zero padding rows and columns
                        if r + i < channels:
                            if s < channels:
                                gram[r + i, s] += first_column[i]
                            if s + 1 < channels:
                                gram[r + i, s + 1] += second_column[i]

