"""Experiment (issue 3, GPU; measured in session 49 and dropped: slower): the exact CUDA update in L2-sized chunks.

``tracking_breakdown.py`` showed that at batch 256 a tracked ResNet18 pass on an H200 spends its extra
2.3 ms on GPU work, and the per-update profile puts most of it in memory traffic: the tracker writes
each map once more as float64 (134 MB for a 256 × 64 × 32 × 32 map), reads it back for the sums and
again for the Gram product. Done in chunks of whole images whose float64 copy fits in the L2 cache
(60 MB on an H200), the copy may be read back from L2 instead of DRAM. The arithmetic is unchanged
(exact float64, the same shift); only the order of the additions differs, and each chunk costs three
launches more. On an H200 (session 49, benchmarks/RESULTS.md) it lost: 3.0 ms (24 MB chunks) and 4.3 ms (8 MB) of
GPU time per tracked pass against 2.35 ms unchunked. Kept as the record; to measure again:

    python benchmarks/tracking_breakdown.py --device cuda --variant chunked --chunk-mb 16
    python benchmarks/chunked_update.py --check          # CPU: chunked sums equal np.cov of the maps

``install(chunk_bytes)`` replaces ``CovarianceAccumulator.update_maps`` for CUDA maps after the first
batch (``tracking_overhead.replace_cuda_maps_update``); CPU maps keep the tracker's own path.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from phd_lab.tracking.covariance import CovarianceAccumulator, _convert_and_shift


def chunked_update(accumulator: CovarianceAccumulator, maps: torch.Tensor, chunk_bytes: int) -> None:
    """Add (B, C, H, W) maps to ``accumulator`` (whose shift is set) a few whole images at a time, each chunk's
    float64 copy at most ``chunk_bytes`` (at least one image)."""
    batch, channels = maps.shape[:2]
    positions = maps.shape[2] * maps.shape[3]
    images = max(1, chunk_bytes // (8 * channels * positions))
    buffer = torch.empty(channels, min(images, batch) * positions, dtype=torch.float64, device=maps.device)
    shift = accumulator._shift.view(channels, 1, 1)  # type: ignore[union-attr]
    for first in range(0, batch, images):
        part = maps[first:first + images]
        count = part.shape[0] * positions
        x = buffer[:, :count]
        _convert_and_shift(part.reshape(part.shape[0], channels, -1).transpose(0, 1), shift,
                           out=x.view(channels, part.shape[0], -1))
        accumulator._add_shifted(count, x)


def install(chunk_bytes: int) -> None:
    """From now on every CovarianceAccumulator adds CUDA feature maps in chunks of ``chunk_bytes``."""
    from tracking_overhead import replace_cuda_maps_update  # benchmarks/, beside this script
    replace_cuda_maps_update(lambda accumulator, maps: chunked_update(accumulator, maps, chunk_bytes))


def check() -> bool:
    """Chunked batches after a first batch give np.cov of all maps (float64 maps, a mean far from zero)."""
    generator = torch.Generator().manual_seed(0)
    first = torch.randn(6, 5, 3, 4, generator=generator, dtype=torch.float64) * 2 + 1e3
    later = [(torch.randn(7, 5, 3, 4, generator=generator, dtype=torch.float64) * 2 + 1e3).relu() for _ in range(3)]
    worst = 0.0
    for chunk_bytes in (1, 8 * 5 * 12 * 2, 8 * 5 * 12 * 3, 1 << 20):  # one image, two, three, all
        accumulator = CovarianceAccumulator(5)
        accumulator.update_maps(first)
        for maps in later:
            chunked_update(accumulator, maps, chunk_bytes)
        rows = torch.cat([m.permute(0, 2, 3, 1).reshape(-1, 5) for m in [first, *later]]).numpy()
        exact = np.cov(rows, rowvar=False, bias=True)
        error = float(np.linalg.norm(accumulator.covariance().numpy() - exact) / np.linalg.norm(exact))
        worst = max(worst, error)
        print(f"chunk of at most {chunk_bytes:>8} bytes: relative error {error:.1e}, n = {accumulator.n}")
    return worst <= 1e-10 and accumulator.n == len(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="check the chunked sums on the CPU")
    args = parser.parse_args()
    if not args.check:
        parser.print_help()
        return 2
    ok = check()
    print("exact" if ok else "NOT EXACT")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
