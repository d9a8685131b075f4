"""The compiled code of the fused covariance update (numba), in one file so that numba's disk cache,
which follows the source file of each cached function, never pairs a changed kernel with stale callers.

``serial`` runs one update of a run of tiles (a chunk of the maps' positions) on the calling thread.
``team_body`` is a C function for torch's OpenMP team (``openmp_team.run``): each work item is one of a
fixed number of position chunks, or a contiguous part of the lower triangle's register blocks of one
chunk; each thread claims items until none is left. Each chunk's sums go to a Gram of its own, which the
caller adds up in chunk order, and every block of a chunk is added in the order ``serial`` adds it, so
the result has the same bits on any number of threads. Each item converts the rows it reads into a
buffer of its own; the last part of a chunk, which reads all of them, sums the chunk's totals.
``channel_totals`` sums the first batch's channels on one thread.

Imported by ``fused_gram`` on first use only: importing numba takes about a second.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import llvmlite.ir
import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

log = logging.getLogger(__name__)

# reassoc lets the reductions vectorise; NaN and inf keep their IEEE meaning (no nnan/ninf).
_OPTIONS: dict[str, Any] = {"nogil": True, "fastmath": {"reassoc", "contract"}}
# The team's data: int64 slots (the claim counter first, then addresses and sizes)
CLAIMED, VALUES, SHIFT, GRAM, TOTAL, BATCH, CHANNELS, POSITIONS, TILE, TILES, CHUNKS, PARTS = range(12)
SLOTS = 12


def _compiled(compile: Callable[..., Callable[[Callable], Any]], function: Callable, *args: Any) -> Any:
    """``compile(*args, cache=True, ...)(function)``, or without the disk cache where no cache folder is
    writable ("cannot cache function ...: no locator available"): compiled in every process then."""
    try:
        return compile(*args, cache=True, **_OPTIONS)(function)
    except RuntimeError as error:
        log.debug("The fused CPU covariance kernel is compiled without a disk cache: %s", error)
        return compile(*args, cache=False, **_OPTIONS)(function)


def _pointer_at(target: types.Type) -> Any:
    """An intrinsic that turns an int64 address into a typed pointer (numba has no cast for it)."""
    @intrinsic
    def pointer_at(typingctx, address):  # noqa: ANN001, ANN202 - numba's intrinsic protocol
        def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
            return builder.inttoptr(args[0], context.get_value_type(signature.return_type))
        return types.CPointer(target)(types.int64), codegen
    return pointer_at


float32_at, float64_at = _pointer_at(types.float32), _pointer_at(types.float64)


@intrinsic
def _slots(typingctx, data):  # noqa: ANN001, ANN202
    """The team's ``void *data`` as a pointer to its int64 slots."""
    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        return builder.bitcast(args[0], context.get_value_type(signature.return_type))
    return types.CPointer(types.int64)(types.voidptr), codegen


@intrinsic
def _claim(typingctx, slots):  # noqa: ANN001, ANN202
    """Atomically take the next part number from the counter in the first slot."""
    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        return builder.atomic_rmw("add", args[0], llvmlite.ir.Constant(llvmlite.ir.IntType(64), 1), "monotonic")
    return types.int64(types.CPointer(types.int64)), codegen


def tile_count(batch: int, positions: int, tile: int) -> int:
    """How many tiles ``gram_update`` cuts (batch, channels, positions) maps into: a tile holds up to
    ``tile`` positions of one map, or several whole maps when they are smaller."""
    width = min(tile, positions)
    maps_per_tile = max(1, tile // positions) if positions < tile else 1
    return -(-batch // maps_per_tile) * -(-positions // width)


def gram_update(values: np.ndarray, shift: np.ndarray, gram: np.ndarray, total: np.ndarray, tile: int,
                first_tile: int, end_tile: int, part: int,
                parts: int) -> None:  # pragma: no cover - runs compiled; tested through accumulate()
    """Add the tiles ``first_tile`` .. ``end_tile`` - 1 of values (B, C, P) (see ``tile_count``), shifted, to
    ``gram`` and ``total``. Register blocks of 4 rows × 2 columns over the lower triangle, numbered row by
    row; this call computes the ``part``-th of ``parts`` contiguous runs of them (all of them: 0 of 1)."""
    batch, channels, positions = values.shape
    padded = (channels + 3) // 4 * 4
    blocks = padded // 4 * (padded // 4 + 1)  # row block b holds 2b + 2 column pairs
    first_block, end_block = blocks * part // parts, blocks * (part + 1) // parts
    if first_block == end_block:
        return
    row_block = 0
    while (row_block + 1) * (row_block + 2) <= end_block - 1:  # the row block of the part's last block
        row_block += 1
    rows = min(channels, 4 * row_block + 4)  # the rows (and columns) this part reads
    sums_totals = part == parts - 1  # the last part reads every row
    width_max = min(tile, positions)
    maps_per_tile = max(1, tile // positions) if positions < tile else 1
    position_tiles = (positions + width_max - 1) // width_max
    buffer = np.zeros((padded, maps_per_tile * width_max))  # rows beyond ``rows`` stay zero
    for index in range(first_tile, end_tile):
        first, start = index // position_tiles * maps_per_tile, index % position_tiles * width_max
        maps = min(maps_per_tile, batch - first)
        width = min(width_max, positions - start)
        count = maps * width
        for m in range(maps):
            base = m * width
            for c in range(rows):
                offset = shift[c]
                row_sum = 0.0
                source = values[first + m, c, start:start + width]
                target = buffer[c, base:base + width]
                for t in range(width):
                    value = np.float64(source[t]) - offset
                    target[t] = value
                    row_sum += value
                if sums_totals:
                    total[c] += row_sum
        number = 0
        for r in range(0, padded, 4):
            for s in range(0, r + 4, 2):
                if first_block <= number < end_block:
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
                number += 1


def channel_sums(values: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - runs compiled
    """out[c] += Σ over maps and positions of values (B, C, P)[:, c] in float64, map by map (one thread)."""
    batch, channels, positions = values.shape
    for b in range(batch):
        for c in range(channels):
            row_sum = 0.0
            for t in range(positions):
                row_sum += np.float64(values[b, c, t])
            out[c] += row_sum


serial = _compiled(numba.njit, gram_update)
channel_totals = _compiled(numba.njit, channel_sums)


def _team_part(data):  # noqa: ANN001, ANN202 - runs compiled
    """One team thread: claim work items (a part of a chunk) of the float32 update in ``data``'s slots until
    none is left."""
    slots = _slots(data)
    channels, chunks, parts, tiles = slots[CHANNELS], slots[CHUNKS], slots[PARTS], slots[TILES]
    values = numba.carray(float32_at(slots[VALUES]), (slots[BATCH], channels, slots[POSITIONS]))
    shift = numba.carray(float64_at(slots[SHIFT]), channels)
    grams = numba.carray(float64_at(slots[GRAM]), (chunks, channels, channels))
    totals = numba.carray(float64_at(slots[TOTAL]), (chunks, channels))
    item = _claim(slots)
    while item < chunks * parts:
        chunk, part = item // parts, item % parts
        serial(values, shift, grams[chunk], totals[chunk], slots[TILE], tiles * chunk // chunks,
               tiles * (chunk + 1) // chunks, part, parts)
        item = _claim(slots)


_team_body: Any = None


def team_body() -> Any:
    """The compiled C function ``void (void *data)`` (compiled at the first call: only runs with more than
    one intra-op thread need it)."""
    global _team_body
    if _team_body is None:
        _team_body = _compiled(numba.cfunc, _team_part, types.void(types.voidptr))
    return _team_body
