"""Prototype (issue 3, GPU): the covariance update of bf16 feature maps on bf16 tensor cores, split exactly.

The exact update writes every activation once more as float64 and reads it twice; on an H200 that traffic is
the tracked pass' extra GPU time (sessions 26 and 49), and Triton cannot multiply float64 loaded from 16-bit
maps (``triton_gram.py``). Here each bf16 value x minus a bf16 shift m is d = x - m, exact in float32 while x
and m lie within 2**16 of each other, and is split in registers into bfloat16 slices d = hi + mid (+ lo).
A product of two bfloat16 is exact in float32, so the Gram of d over BLOCK_N positions is the sum of the slice
products hi.hi + (hi.mid + mid.hi + mid.mid [+ hi.lo + lo.hi]): bf16 tensor-core dots accumulating in float32
(two accumulators, the large hi.hi apart), added into float64 after every block. The maps are read once.
Splits of the positions write their own partials, added in a fixed order (deterministic).

What is left of rounding: float32 accumulation within one block, the slice products left out (of order
2**-24 with three slices), and d's own rounding where x and m lie more than 2**16 apart. Session 50 measured it
on the CPU (benchmarks/RESULTS.md): a numpy emulation with the tensor cores modelled as rounding toward zero every
64 positions, and this kernel in Triton's interpreter, put the relative covariance error of ReLU, offset and
ResNet18 conv maps at <= 4.0e-8 with three slices, intrinsic dimensions identical (issue 3 allows 1e-7). Two
slices (four dots) are not enough where a channel's mean is small against its values (3.6e-6 on the stem conv).
How real tensor cores round is what the GPU check measures: ``python benchmarks/triton_split_gram.py``.

    python benchmarks/triton_split_gram.py                      # CUDA: error, saturations, ms per update
    python benchmarks/triton_split_gram.py --check-interpreted [--model] [--slices 2]  # CPU: Triton's interpreter
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

if "--check-interpreted" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton_tiles import TiledMapsUpdate, observation_block, store_partials, tile_pair  # noqa: E402 - beside it

BOUND = 1e-7  # issue 3: relative covariance error a faster path may reach
DELTAS = (0.9, 0.99, 0.999, 0.9999)


@triton.jit
def _bf16_slices(values, SLICES: tl.constexpr):
    """bfloat16 hi, mid, lo with hi + mid + lo == values (float32) up to 2**-24 of |values|; lo is zero-free
    only for SLICES 3."""
    hi = values.to(tl.bfloat16)
    rest = values - hi.to(tl.float32)  # exact: the rounding error of a float32 to bfloat16
    mid = rest.to(tl.bfloat16)
    if SLICES == 3:
        lo = (rest - mid.to(tl.float32)).to(tl.bfloat16)
    else:
        lo = tl.zeros_like(mid)
    return hi, mid, lo


@triton.jit
def _dot(a, b, acc, INTERPRETED: tl.constexpr):
    """acc + a bᵀ for bfloat16 a, b, accumulated in float32: on bf16 tensor cores, or (Triton's interpreter, whose
    dot misreads bfloat16) as IEEE float32 products of the same values, which are exact too."""
    if INTERPRETED:
        return tl.dot(a.to(tl.float32), tl.trans(b.to(tl.float32)), acc, input_precision="ieee")
    return tl.dot(a, tl.trans(b), acc, out_dtype=tl.float32)


@triton.jit
def _split_gram_kernel(maps_ptr, shift_ptr, pairs_ptr, partial_gram_ptr, partial_sum_ptr,
                       count, positions, channels,
                       ROWS_PER_SPLIT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
                       SLICES: tl.constexpr, INTERPRETED: tl.constexpr):
    """Program (split, pair): Σ (x − m)(x − m)ᵀ over the split's observations for one channel tile pair (i ≥ j),
    and for diagonal pairs Σ (x − m). Observation n is position n % positions of image n // positions."""
    split = tl.program_id(0)
    tile_i, tile_j, ci, cj, in_i, in_j, shift_i, shift_j = tile_pair(pairs_ptr, shift_ptr, channels, BLOCK_C)
    gram = tl.zeros((BLOCK_C, BLOCK_C), dtype=tl.float64)
    sums = tl.zeros((BLOCK_C,), dtype=tl.float64)
    start = split * ROWS_PER_SPLIT
    for step in range(0, ROWS_PER_SPLIT, BLOCK_N):  # the last split ends at ``count``
        pointers_i, mask_i, pointers_j, mask_j = observation_block(maps_ptr, start + step, count, positions,
                                                                   channels, ci, cj, in_i, in_j, BLOCK_N)
        x_i = tl.load(pointers_i, mask=mask_i, other=0.0)
        x_j = tl.load(pointers_j, mask=mask_j, other=0.0)
        d_i = tl.where(mask_i, x_i.to(tl.float32) - shift_i[:, None], 0.0)
        d_j = tl.where(mask_j, x_j.to(tl.float32) - shift_j[:, None], 0.0)
        hi_i, mid_i, lo_i = _bf16_slices(d_i, SLICES)
        hi_j, mid_j, lo_j = _bf16_slices(d_j, SLICES)
        large = _dot(hi_i, hi_j, tl.zeros((BLOCK_C, BLOCK_C), dtype=tl.float32), INTERPRETED)
        small = _dot(hi_i, mid_j, tl.zeros((BLOCK_C, BLOCK_C), dtype=tl.float32), INTERPRETED)
        small = _dot(mid_i, hi_j, small, INTERPRETED)
        small = _dot(mid_i, mid_j, small, INTERPRETED)
        if SLICES == 3:
            small = _dot(hi_i, lo_j, small, INTERPRETED)
            small = _dot(lo_i, hi_j, small, INTERPRETED)
        gram += large.to(tl.float64) + small.to(tl.float64)
        sums += tl.sum(d_i, axis=1).to(tl.float64)
    store_partials(partial_gram_ptr, partial_sum_ptr, split, channels, tile_i, tile_j, ci, cj, in_i, in_j, gram,
                   sums)


class SplitMapsUpdate(TiledMapsUpdate):
    """Adds Σ (x − a) and Σ (x − a)(x − a)ᵀ of bf16 (B, C, H, W) maps to float64 running sums, for the tracker's
    float64 shift a: the kernel shifts by a rounded to bfloat16 (b), and the sums are moved from b to a in float64
    (Σ (x−a)(x−a)ᵀ = G_b + δ s_bᵀ + s_b δᵀ + n δ δᵀ with δ = b − a, s_b = Σ (x − b))."""

    def __init__(self, channels: int, device: torch.device, block_c: int = 64, block_n: int = 64,
                 num_warps: int = 8, slices: int = 3, target_programs: int | None = None) -> None:
        self.slices = slices
        super().__init__(channels, device, block_c, block_n, num_warps, target_programs)

    def __call__(self, maps: torch.Tensor, shift: torch.Tensor, gram: torch.Tensor, sums: torch.Tensor) -> None:
        if maps.dtype != torch.bfloat16:
            raise TypeError(f"the split update takes bfloat16 maps, not {maps.dtype}")
        maps = maps.contiguous()
        batch, channels, height, width = maps.shape
        count, positions = batch * height * width, height * width
        coarse = shift.to(torch.bfloat16).to(torch.float32)
        splits, rows_per_split = self._splits(count)
        partial_gram, partial_sum = self._partials(splits, maps.device)
        _split_gram_kernel[(splits, self.pair_count)](
            maps, coarse, self.pairs, partial_gram, partial_sum, count, positions, channels,
            ROWS_PER_SPLIT=rows_per_split, BLOCK_C=self.block_c, BLOCK_N=self.block_n, SLICES=self.slices,
            INTERPRETED=os.environ.get("TRITON_INTERPRET") == "1",
            num_warps=self.num_warps)
        lower = torch.tril(partial_gram.sum(dim=0))  # a diagonal tile pair fills its whole tile
        shifted_sum = partial_sum.sum(dim=0)
        step = coarse.to(torch.float64) - shift
        moved = torch.outer(step, shifted_sum)
        gram += lower + torch.tril(lower, -1).T + moved + moved.T + count * torch.outer(step, step)
        sums += shifted_sum + count * step


def install(slices: int = 3) -> None:
    """From now on every CovarianceAccumulator adds bf16 CUDA feature maps with the split kernel (after its first
    batch, which sets the shift on the tracker's own path); other maps keep the tracker's path."""
    from phd_lab.tracking.covariance import CovarianceAccumulator
    from tracking_overhead import replace_cuda_maps_update  # benchmarks/, beside this script

    exact = CovarianceAccumulator.update_maps

    def split(accumulator: CovarianceAccumulator, maps: torch.Tensor) -> None:
        if maps.dtype != torch.bfloat16:
            exact(accumulator, maps)
            return
        update = getattr(accumulator, "_split_update", None)
        if update is None:
            update = accumulator._split_update = SplitMapsUpdate(accumulator.dim, maps.device, slices=slices)
        update(maps, accumulator._shift, accumulator._gram, accumulator._sum)
        accumulator.n += maps.shape[0] * maps.shape[2] * maps.shape[3]
    replace_cuda_maps_update(split)


def split_covariance(batches: list[torch.Tensor], **options: int) -> np.ndarray:
    """Population covariance of the maps' channels from the split kernel, shifted by the first batch's mean."""
    channels = batches[0].shape[1]
    device = batches[0].device
    shift = batches[0].double().mean(dim=(0, 2, 3))
    gram = torch.zeros(channels, channels, dtype=torch.float64, device=device)
    sums = torch.zeros(channels, dtype=torch.float64, device=device)
    update = SplitMapsUpdate(channels, device, **options)
    count = 0
    for maps in batches:
        update(maps, shift, gram, sums)
        count += maps.shape[0] * maps.shape[2] * maps.shape[3]
    return ((gram - torch.outer(sums, sums) / count) / count).cpu().numpy()


def exact_covariance(batches: list[torch.Tensor]) -> np.ndarray:
    rows = np.concatenate([maps.double().permute(0, 2, 3, 1).reshape(-1, maps.shape[1]).cpu().numpy()
                           for maps in batches])
    return np.cov(rows, rowvar=False, bias=True)


def compare(name: str, batches: list[torch.Tensor], **options: int) -> bool:
    """Prints the relative covariance error and whether every delta's intrinsic dimension is the exact one's."""
    from phd_lab.tracking.saturation import intrinsic_dimension, sorted_eigenvalues
    exact = exact_covariance(batches)
    split = split_covariance(batches, **options)
    error = float(np.linalg.norm(split - exact) / np.linalg.norm(exact))
    dims = [(intrinsic_dimension(sorted_eigenvalues(split), delta), intrinsic_dimension(sorted_eigenvalues(exact),
                                                                                        delta)) for delta in DELTAS]
    same = all(a == b for a, b in dims)
    print(f"{name:<34} {str(tuple(batches[0].shape)):<20} error {error:.1e}  dims "
          f"{'identical' if same else 'DIFFER ' + str(dims)}")
    return error <= BOUND and same


def synthetic_batches(shape: tuple[int, int, int, int], kind: str, device: torch.device,
                      batches: int = 2) -> list[torch.Tensor]:
    """bf16 maps with correlated channels: ReLU outputs, ReLU + 3, or Gaussian + 10 (a large offset)."""
    generator = torch.Generator().manual_seed(0)
    mix = torch.randn(shape[1], shape[1], generator=generator) / shape[1] ** 0.5
    out = []
    for _ in range(batches):
        base = torch.einsum("bchw,cd->bdhw", torch.randn(shape, generator=generator), mix)
        maps = {"relu": base.relu(), "relu+3": base.relu() + 3, "gauss+10": base + 10}[kind]
        out.append(maps.to(torch.bfloat16).to(device))
    return out


def model_batches(device: torch.device, batch: int, batches: int = 2) -> dict[str, list[torch.Tensor]]:
    """Every Conv2d output of the benchmark's ResNet18 (3×3 stem, 32×32) under bf16 autocast, by layer."""
    from tracking_overhead import resnet18_cifar  # benchmarks/, beside this script
    torch.manual_seed(0)
    model = resnet18_cifar().to(device).eval()
    found: dict[str, list[torch.Tensor]] = {}
    hooks = [module.register_forward_hook(lambda m, i, o, name=name: found.setdefault(name, []).append(o.detach()))
             for name, module in model.named_modules() if isinstance(module, torch.nn.Conv2d)]
    with torch.no_grad(), torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        for _ in range(batches):
            model(torch.randn(batch, 3, 32, 32, device=device))
    for hook in hooks:
        hook.remove()
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check-interpreted", action="store_true",
                        help="check the kernel's arithmetic on the CPU in Triton's interpreter (no GPU needed)")
    parser.add_argument("--slices", type=int, choices=(2, 3), default=3,
                        help="bf16 slices per value (default 3: six dots; 2: four, too few on centred maps)")
    parser.add_argument("--model", action="store_true", help="--check-interpreted: also ResNet18's conv maps")
    args = parser.parse_args()
    if args.check_interpreted:
        device = torch.device("cpu")
        options = {"block_c": 16, "block_n": 16, "slices": args.slices, "target_programs": 4}
        ok = all([compare(f"{kind} (interpreted)", synthetic_batches(shape, kind, device), **options)
                  for shape in ((2, 5, 3, 3), (3, 20, 2, 3), (4, 16, 4, 4)) for kind in ("relu", "relu+3", "gauss+10")])
        if args.model:  # the benchmark's block sizes on every conv layer's maps, at batch 16 (1.5 min)
            options = {"block_c": 64, "block_n": 64, "slices": args.slices, "target_programs": 8}
            ok &= all([compare(f"resnet18 {name}", [maps.to(torch.bfloat16) for maps in batches], **options)
                       for name, batches in model_batches(device, 16).items()])
        print("accuracy ok" if ok else "ACCURACY FAILED")
        return 0 if ok else 1
    if not torch.cuda.is_available():
        sys.stderr.write("CUDA is not available here; --check-interpreted checks the kernel's arithmetic on the CPU\n")
        return 2
    from phd_lab.tracking.covariance import CovarianceAccumulator
    from tracking_overhead import cuda_ms  # benchmarks/, beside this script
    device = torch.device("cuda")
    ok = True
    for kind in ("relu", "relu+3", "gauss+10"):
        for shape in ((256, 64, 32, 32), (256, 512, 4, 4)):
            ok &= compare(kind, synthetic_batches(shape, kind, device), slices=args.slices)
    for name, batches in model_batches(device, 256).items():
        ok &= compare(f"resnet18 {name}", batches, slices=args.slices)
    print("accuracy ok" if ok else "ACCURACY FAILED")
    configs = ((64, 64, 8), (64, 64, 4), (64, 32, 4), (32, 64, 4))  # (channels, positions) per block, warps
    print(f"\n{'maps (bf16)':<22}{'tracker':>9}" + "".join(f"{f'C{c} N{n} w{w}':>14}" for c, n, w in configs)
          + "   ms per update")
    for shape in ((256, 64, 32, 32), (256, 128, 16, 16), (256, 256, 8, 8), (256, 512, 4, 4)):
        maps = torch.randn(shape, device=device).to(torch.bfloat16)
        accumulator = CovarianceAccumulator(shape[1], device)
        accumulator.update_maps(maps)  # the first batch sets the shift; later ones take the timed path
        gram = torch.zeros(shape[1], shape[1], dtype=torch.float64, device=device)
        sums = torch.zeros(shape[1], dtype=torch.float64, device=device)
        times = [cuda_ms(lambda: accumulator.update_maps(maps))]
        for block_c, block_n, warps in configs:
            update = SplitMapsUpdate(shape[1], device, block_c, block_n, warps, slices=args.slices)
            times.append(cuda_ms(lambda: update(maps, accumulator._shift, gram, sums)))
        print(f"{str(shape):<22}{times[0]:>9.3f}" + "".join(f"{t:>14.3f}" for t in times[1:]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
