"""The tiling the two covariance-update prototypes share (``triton_gram.py``, ``triton_split_gram.py``).

Both kernels run one program per (split of the positions, lower-triangle pair of channel tiles): program (split,
pair) adds Σ (x − s)(x − s)ᵀ over the split's observations for its tile pair (i ≥ j), and for a diagonal pair also
Σ (x − s), into the split's own partial Gram and sums, which the host adds in a fixed order (deterministic, no
atomics). What differs between the two is only how a block of maps becomes the float64 Gram; the tile pairs, the
addressing of the maps, the partial buffers and the number of splits are here. Imported by the two scripts from
beside them, after they have set ``TRITON_INTERPRET`` (which must precede the import of triton).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def tile_pair(pairs_ptr, shift_ptr, channels, BLOCK_C: tl.constexpr):
    """Program axis 1's pair of channel tiles: their numbers, their channels, which of those exist, their shifts."""
    pair = tl.program_id(1)
    tile_i = tl.load(pairs_ptr + 2 * pair)
    tile_j = tl.load(pairs_ptr + 2 * pair + 1)
    ci = tile_i * BLOCK_C + tl.arange(0, BLOCK_C)
    cj = tile_j * BLOCK_C + tl.arange(0, BLOCK_C)
    in_i = ci < channels
    in_j = cj < channels
    shift_i = tl.load(shift_ptr + ci, mask=in_i, other=0.0)
    shift_j = tl.load(shift_ptr + cj, mask=in_j, other=0.0)
    return tile_i, tile_j, ci, cj, in_i, in_j, shift_i, shift_j


@triton.jit
def observation_block(maps_ptr, first, count, positions, channels, ci, cj, in_i, in_j, BLOCK_N: tl.constexpr):
    """Pointers to channels ci and cj of observations first .. first + BLOCK_N − 1, and their masks (the channel
    exists, the observation is below ``count``). Observation n is position n % positions of image n // positions;
    channel c of it lies at image·channels·positions + c·positions + position."""
    n = (first + tl.arange(0, BLOCK_N)).to(tl.int64)
    in_n = n < count
    offset = (n // positions) * channels * positions + n % positions
    mask_i = in_i[:, None] & in_n[None, :]
    mask_j = in_j[:, None] & in_n[None, :]
    pointers_i = maps_ptr + offset[None, :] + ci[:, None].to(tl.int64) * positions
    pointers_j = maps_ptr + offset[None, :] + cj[:, None].to(tl.int64) * positions
    return pointers_i, mask_i, pointers_j, mask_j


@triton.jit
def store_partials(partial_gram_ptr, partial_sum_ptr, split, channels, tile_i, tile_j, ci, cj, in_i, in_j, gram,
                   sums):
    """The split's Gram tile into its partial Gram; for a diagonal tile pair its sums into its partial sums."""
    out = partial_gram_ptr + split * channels * channels + ci[:, None] * channels + cj[None, :]
    tl.store(out, gram, mask=in_i[:, None] & in_j[None, :])
    if tile_i == tile_j:
        tl.store(partial_sum_ptr + split * channels + ci, sums, mask=in_i)


class TiledMapsUpdate:
    """The host side: the lower-triangle tile pairs, the programs to aim at, the partial buffers, the splits."""

    def __init__(self, channels: int, device: torch.device, block_c: int, block_n: int, num_warps: int,
                 target_programs: int | None) -> None:
        self.channels, self.block_c, self.block_n, self.num_warps = channels, block_c, block_n, num_warps
        tiles = triton.cdiv(channels, block_c)
        pairs = [(i, j) for i in range(tiles) for j in range(i + 1)]
        self.pairs = torch.tensor(pairs, dtype=torch.int32, device=device).reshape(-1)
        self.pair_count = len(pairs)
        if target_programs is None:
            target_programs = 4 * torch.cuda.get_device_properties(device).multi_processor_count \
                if device.type == "cuda" else 8
        self.target_programs = target_programs
        self._buffers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _partials(self, splits: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # zeroed once: the upper-triangle tiles are never written and must stay zero
        if splits not in self._buffers:
            self._buffers[splits] = (torch.zeros(splits, self.channels, self.channels, dtype=torch.float64,
                                                 device=device),
                                     torch.zeros(splits, self.channels, dtype=torch.float64, device=device))
        return self._buffers[splits]

    def _splits(self, count: int) -> tuple[int, int]:
        """How many splits ``count`` observations go into, and the observations per split (whole BLOCK_Ns): enough
        for about ``target_programs`` programs over the tile pairs, at least one."""
        splits = max(1, min(triton.cdiv(count, self.block_n), self.target_programs // self.pair_count))
        rows_per_split = triton.cdiv(triton.cdiv(count, splits), self.block_n) * self.block_n
        return triton.cdiv(count, rows_per_split), rows_per_split
