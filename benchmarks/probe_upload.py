"""Issue 5 (GPU): where lbfgs-torch's second per layer goes, and the latents' upload to the GPU.

    python benchmarks/probe_upload.py                     # cuda, 50,000 × 8,192 (the issue's record size)
    python benchmarks/probe_upload.py --rows 5000 --reps 5

The latents are a memory-mapped .npy file in the page cache, as a probe job reads them. Side by side, in
interleaved rounds, with identical results checked, for float32 and float16 files:

  before   blocks of 32 MB copied from the memory map to the GPU by one converting copy (phd_lab before
           session 49; torch converts a float16 block to float32 on the host first)
  pinned   two pinned float32/float16 buffers in turn, the next block read while one is in flight (tried)
  now      ``to_device_float32``: a block that is not float32 travels as it is and the GPU converts it

Then one lbfgs-torch fit of the float32 layer split into its parts (upload, the NaN/inf check on the GPU,
standardisation on the GPU, the rest: L-BFGS and evaluation), beside the host pass over the files that the
NaN/inf check took before.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from phd_lab.probes.fit import ProbeSettings, fit_torch_lbfgs, load_array, nonfinite_count  # noqa: E402
from phd_lab.probes.fit import nonfinite_count_tensor, standardize_tensors, to_device_float32  # noqa: E402


def before(x: np.ndarray, device: torch.device, block_bytes: int = 1 << 25) -> torch.Tensor:
    """The upload as it was: one converting copy per block from (pageable) host memory."""
    out = torch.empty(x.shape, dtype=torch.float32, device=device)
    rows = max(1, block_bytes // (x.itemsize * int(np.prod(x.shape[1:]))))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")  # only read
        for start in range(0, x.shape[0], rows):
            out[start:start + rows].copy_(torch.from_numpy(np.ascontiguousarray(x[start:start + rows])))
    return out


def pinned(x: np.ndarray, device: torch.device, block_bytes: int = 1 << 25) -> torch.Tensor:
    """Two pinned buffers used in turn: the host fills one while the other's block is copied asynchronously."""
    out = torch.empty(x.shape, dtype=torch.float32, device=device)
    rows = min(x.shape[0], max(1, block_bytes // (x.itemsize * int(np.prod(x.shape[1:])))))
    dtype = torch.from_numpy(np.empty(0, dtype=x.dtype.newbyteorder("="))).dtype
    buffers = [torch.empty((rows, *x.shape[1:]), dtype=dtype, pin_memory=True) for _ in range(2)]
    stream = torch.cuda.current_stream(device)
    copied: list[torch.cuda.Event | None] = [None, None]
    for index, start in enumerate(range(0, x.shape[0], rows)):
        slot = index % 2
        if copied[slot] is not None:
            copied[slot].synchronize()
        count = min(rows, x.shape[0] - start)
        staged = buffers[slot][:count]
        np.copyto(staged.numpy(), x[start:start + count])
        out[start:start + count].copy_(staged, non_blocking=True)
        copied[slot] = torch.cuda.Event()
        copied[slot].record(stream)
    stream.synchronize()
    return out


def timed(fn, device: torch.device) -> tuple[float, object]:
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn()
    torch.cuda.synchronize(device)
    return time.perf_counter() - start, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=8_192)
    parser.add_argument("--reps", type=int, default=3, help="interleaved rounds (after one warm-up)")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type != "cuda" or not torch.cuda.is_available():
        print("needs a CUDA device")
        return 2
    uploads = {"before": before, "pinned": pinned, "now": to_device_float32}
    generator = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        mapped = {}
        for dtype in (np.float32, np.float16):
            path = Path(folder) / f"{np.dtype(dtype).name}.npy"
            np.save(path, generator.standard_normal((args.rows, args.dim), dtype=np.float32).astype(dtype))
            mapped[np.dtype(dtype).name] = load_array(path)
            np.asarray(mapped[np.dtype(dtype).name]).sum()  # into the page cache
        print(f"# upload of a memory-mapped {args.rows:,} × {args.dim:,} layer to "
              f"{torch.cuda.get_device_name(device)}, seconds, medians of {args.reps} interleaved rounds after "
              f"one warm-up")
        print(f"{'file':8} {'before':>8} {'pinned':>8} {'now':>8} {'now GB/s':>9} {'before/now':>11}  identical")
        for name, x in mapped.items():
            times: dict[str, list[float]] = {key: [] for key in uploads}
            reference = before(x, device).cpu()
            identical = True
            for round_ in range(args.reps + 1):
                for key, upload in uploads.items():
                    seconds, result = timed(functools.partial(upload, x, device), device)
                    identical = identical and torch.equal(result.cpu(), reference)
                    del result
                    if round_:
                        times[key].append(seconds)
            median = {key: statistics.median(values) for key, values in times.items()}
            print(f"{name:8} {median['before']:8.3f} {median['pinned']:8.3f} {median['now']:8.3f} "
                  f"{x.nbytes / median['now'] / 1e9:9.1f} {median['before'] / median['now']:10.2f}x  {identical}")

        x = mapped["float32"]
        labels = generator.integers(0, 10, args.rows)
        settings = ProbeSettings(solver="lbfgs-torch", device=str(device), max_iter=100)
        fit_torch_lbfgs(x[:512], labels[:512], x[:128], settings)  # warm-up: CUDA context, kernels
        host_check = time.perf_counter()
        nonfinite_count(x)
        host_check = time.perf_counter() - host_check
        upload, tensor = timed(functools.partial(to_device_float32, x, device), device)
        check, _ = timed(functools.partial(nonfinite_count_tensor, tensor), device)
        standardise, _ = timed(functools.partial(standardize_tensors, tensor, tensor[:0]), device)
        tensor = None  # the fit below uploads its own copy
        whole, result = timed(functools.partial(fit_torch_lbfgs, x, labels, x[: args.rows // 5], settings), device)
        print(f"\n# one lbfgs-torch fit of the float32 layer (random labels, max_iter 100): {whole:.3f} s in all, "
              f"{result.n_iter} iterations")
        print(f"training split: upload {upload:.3f} s, NaN/inf check on the GPU {check:.3f} s (on the host, as "
              f"before: {host_check:.3f} s), standardisation {standardise:.3f} s; the rest (eval split, L-BFGS, "
              f"evaluation) {whole - upload - check - standardise:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
