"""Prototype (issue 3, GPU): the exact covariance update of feature maps as one fused Triton kernel.

The tracker's CUDA path writes every activation once more as float64 (4× its bf16 bytes), reads it
back for the sums and again for the cuBLAS Gram: at batch 256 that memory traffic is what a tracked
ResNet18 forward pass spends its extra GPU time on (``tracking_breakdown.py``). This kernel reads
the maps once, converts and shifts them in registers and multiplies in float64 (``tl.dot`` with IEEE
float64), computing only the Gram's lower-triangle tiles. The positions are split over programs;
each split writes its own partial Gram and sums, which are then added in a fixed order, so the result
is deterministic (no atomics). The arithmetic is exact float64, as on the tracker's path; only the
order of the additions differs.

    python benchmarks/triton_gram.py [--variant V]                      # CUDA: accuracy, ms per update
    python benchmarks/triton_gram.py --check-interpreted [--variant V]  # CPU: TRITON_INTERPRET=1, accuracy

Measured on an H200 (session 26, Triton 3.6, benchmarks/RESULTS.md): not worth wiring into the tracker.
Triton cannot yet multiply float64 operands that it converts from a 16-bit load (its MMA lowering
asserts "fp64 don't support largeK MMA"; variants ``native``, ``via-float32`` and ``bits``), so the
maps must come as float32 (variant ``float32``: torch converts them first). That variant is exact
(≤ 6e-14 against plain float64 torch) but only 1.0-1.6× faster per update than the tracker's path;
without ``tl.dot`` (``fma``) it is 5× slower.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

if "--check-interpreted" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton_tiles import TiledMapsUpdate, observation_block, store_partials, tile_pair  # noqa: E402 - beside it


@triton.jit
def _load_float64(pointers, mask, LOAD: tl.constexpr):
    """float64 values of the maps: LOAD 0 converts what it loads; 1 goes through float32 (bf16 and
    float32 convert exactly); 2 reads bfloat16 maps as int16 bit patterns and rebuilds the float32."""
    if LOAD == 2:
        bits = tl.load(pointers, mask=mask, other=0).to(tl.int32) & 0xFFFF
        return (bits << 16).to(tl.float32, bitcast=True).to(tl.float64)
    elif LOAD == 1:
        return tl.load(pointers, mask=mask, other=0.0).to(tl.float32).to(tl.float64)
    else:
        return tl.load(pointers, mask=mask, other=0.0).to(tl.float64)


@triton.jit
def _shifted_gram_kernel(maps_ptr, shift_ptr, pairs_ptr, partial_gram_ptr, partial_sum_ptr,
                         count, positions, channels,
                         ROWS_PER_SPLIT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
                         LOAD: tl.constexpr, USE_DOT: tl.constexpr):
    """Program (split, pair): Σ (x − s)(x − s)ᵀ over the split's observations for one channel tile pair
    (i ≥ j), and for diagonal pairs also Σ (x − s). Observation n is position n % positions of image
    n // positions; channel c of it lies at image·channels·positions + c·positions + position."""
    split = tl.program_id(0)
    tile_i, tile_j, ci, cj, in_i, in_j, shift_i, shift_j = tile_pair(pairs_ptr, shift_ptr, channels, BLOCK_C)
    gram = tl.zeros((BLOCK_C, BLOCK_C), dtype=tl.float64)
    sums = tl.zeros((BLOCK_C,), dtype=tl.float64)
    start = split * ROWS_PER_SPLIT
    for step in range(0, ROWS_PER_SPLIT, BLOCK_N):  # the last split ends at ``count``
        pointers_i, mask_i, pointers_j, mask_j = observation_block(maps_ptr, start + step, count, positions,
                                                                   channels, ci, cj, in_i, in_j, BLOCK_N)
        x_i = _load_float64(pointers_i, mask_i, LOAD)
        x_j = _load_float64(pointers_j, mask_j, LOAD)
        x_i = tl.where(mask_i, x_i - shift_i[:, None], 0.0)
        x_j = tl.where(mask_j, x_j - shift_j[:, None], 0.0)
        if USE_DOT:
            gram += tl.dot(x_i, tl.trans(x_j), input_precision="ieee")
        else:
            gram += tl.sum(x_i[:, None, :] * x_j[None, :, :], axis=2)
        sums += tl.sum(x_i, axis=1)
    store_partials(partial_gram_ptr, partial_sum_ptr, split, channels, tile_i, tile_j, ci, cj, in_i, in_j, gram,
                   sums)


# name: (LOAD, USE_DOT); "float32" converts the maps to float32 in torch first
VARIANTS = {"native": (0, True), "via-float32": (1, True), "bits": (2, True), "float32": (0, True),
            "fma": (0, False)}


class FusedMapsUpdate(TiledMapsUpdate):
    """Adds shifted sums and the lower-triangle Gram of (B, C, H, W) maps to float64 running sums."""

    def __init__(self, channels: int, device: torch.device, block_c: int = 64, block_n: int = 32,
                 num_warps: int = 4, target_programs: int | None = None, variant: str | None = None) -> None:
        self.variant = variant or os.environ.get("TRITON_GRAM_VARIANT", "float32")
        super().__init__(channels, device, block_c, block_n, num_warps, target_programs)

    def __call__(self, maps: torch.Tensor, shift: torch.Tensor, gram: torch.Tensor, sums: torch.Tensor) -> None:
        maps = maps.contiguous()
        batch, channels, height, width = maps.shape
        load, use_dot = VARIANTS[self.variant]
        if self.variant == "float32":
            maps = maps.float()
        elif load == 2:
            maps = maps.view(torch.int16) if maps.dtype == torch.bfloat16 else maps.float()
            load = 2 if maps.dtype == torch.int16 else 0
        count, positions = batch * height * width, height * width
        splits, rows_per_split = self._splits(count)
        partial_gram, partial_sum = self._partials(splits, maps.device)
        _shifted_gram_kernel[(splits, self.pair_count)](
            maps, shift, self.pairs, partial_gram, partial_sum, count, positions, channels,
            ROWS_PER_SPLIT=rows_per_split, BLOCK_C=self.block_c, BLOCK_N=self.block_n, LOAD=load, USE_DOT=use_dot,
            num_warps=self.num_warps)
        gram += partial_gram.sum(dim=0)
        sums += partial_sum.sum(dim=0)


def reference(maps: torch.Tensor, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shifted Gram (lower triangle) and sums in plain float64 torch."""
    x = maps.double().transpose(0, 1).reshape(maps.shape[1], -1) - shift[:, None]
    return torch.tril(x @ x.T), x.sum(dim=1)


def relative_error(value: torch.Tensor, exact: torch.Tensor, scale: float) -> float:
    """Frobenius error relative to the exact value's norm, or to ``scale`` where that is (near) zero."""
    return float((value - exact).norm() / max(float(exact.norm()), scale))


def install() -> None:
    """From now on every CovarianceAccumulator adds CUDA feature maps with the fused kernel (after its
    first batch, which sets the shift on the tracker's own path)."""
    from tracking_overhead import replace_cuda_maps_update  # benchmarks/, beside this script

    def fused(accumulator, maps: torch.Tensor) -> None:
        update = getattr(accumulator, "_fused_update", None)  # one per accumulator (an id() is reused once freed)
        if update is None:
            update = accumulator._fused_update = FusedMapsUpdate(accumulator.dim, maps.device)
        update(maps, accumulator._shift, accumulator._gram, accumulator._sum)
        accumulator.n += maps.shape[0] * maps.shape[2] * maps.shape[3]
    replace_cuda_maps_update(fused)


def check(shapes: list[tuple[int, int, int, int]], device: torch.device, dtype: torch.dtype,
          configs: list[tuple[int, int, int]]) -> bool:
    ok = True
    generator = torch.Generator().manual_seed(0)
    for shape in shapes:
        maps = (torch.randn(shape, generator=generator) * 3 + 5).relu().to(dtype).to(device)
        shift = maps[:1].double().mean(dim=(0, 2, 3))
        exact_gram, exact_sum = reference(maps, shift)
        for block_c, block_n, warps in configs:
            gram = torch.zeros(shape[1], shape[1], dtype=torch.float64, device=device)
            sums = torch.zeros(shape[1], dtype=torch.float64, device=device)
            FusedMapsUpdate(shape[1], device, block_c, block_n, warps)(maps, shift, gram, sums)
            scale = float(exact_gram.diagonal().sum().sqrt())  # the sums' scale: √(n · variance)
            errors = (relative_error(torch.tril(gram), exact_gram, 1e-300),
                      relative_error(sums, exact_sum, scale))
            ok &= all(error <= 1e-12 for error in errors)
            print(f"{str(shape):<22} C{block_c} N{block_n} w{warps}  gram {errors[0]:.1e}  sums {errors[1]:.1e}")
    return ok


CONFIGS = {True: [(64, 32, 4), (64, 16, 4)], False: [(32, 8, 4), (16, 16, 4)]}  # by USE_DOT: (C, N, warps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check-interpreted", action="store_true")
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="float32")
    args = parser.parse_args()
    os.environ["TRITON_GRAM_VARIANT"] = args.variant
    configs = CONFIGS[VARIANTS[args.variant][1]]
    if args.check_interpreted:
        small = [(16, 16, 4), (32, 16, 4)] if VARIANTS[args.variant][1] else [(16, 4, 4), (32, 8, 4)]
        ok = check([(2, 5, 3, 3), (3, 70, 2, 3), (1, 16, 4, 4)], torch.device("cpu"), torch.bfloat16, small)
        print("accuracy ok" if ok else "ACCURACY FAILED")
        return 0 if ok else 1
    from phd_lab.tracking.covariance import CovarianceAccumulator
    from tracking_overhead import cuda_ms  # benchmarks/, beside this script
    device = torch.device("cuda")
    shapes = [(256, 64, 32, 32), (256, 128, 16, 16), (256, 256, 8, 8), (256, 512, 4, 4)]
    print(f"variant {args.variant}")
    ok = check(shapes, device, torch.bfloat16, configs[:1]) & check(shapes[:1], device, torch.float32, configs[:1])
    print("accuracy ok" if ok else "ACCURACY FAILED")
    print(f"\n{'maps (bf16)':<22}{'tracker':>9}" + "".join(f"{f'C{c} N{n} w{w}':>14}" for c, n, w in configs)
          + "   ms per update")
    for shape in shapes:
        maps = torch.randn(shape, device=device).to(torch.bfloat16)
        accumulator = CovarianceAccumulator(shape[1], device)
        accumulator.update_maps(maps)
        times = [cuda_ms(lambda: accumulator.update_maps(maps))]
        gram = torch.zeros(shape[1], shape[1], dtype=torch.float64, device=device)
        sums = torch.zeros(shape[1], dtype=torch.float64, device=device)
        shift = accumulator._shift
        for block_c, block_n, warps in configs:
            update = FusedMapsUpdate(shape[1], device, block_c, block_n, warps)
            times.append(cuda_ms(lambda: update(maps, shift, gram, sums)))
        print(f"{str(shape):<22}{times[0]:>9.3f}" + "".join(f"{t:>14.3f}" for t in times[1:]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
