"""Benchmark of the latent extraction (issue 4).

1. Peak memory: the same extraction over 2,000 and over 8,000 samples, each in a fresh
   subprocess; peak RSS (ru_maxrss) must grow by at most 10 %. The images are generated per
   index, so the dataset itself takes no memory that grows with its size.
2. Throughput: extraction (hooks, pooling, copies, writes, hashes, manifest) against a bare
   forward pass over the same data, alternated and best of ``--repeats``; target ≥ 0.8×.
   Wall time and process CPU time are both reported: on a shared machine the wall time of
   single passes is noisy, the CPU time less so.

    python benchmarks/extraction.py [--device cuda] [--repeats 3] [--width 0.25] [--throughput-width 1.0]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from phd_lab.extraction import extract_latents  # noqa: E402
from registries.models import vgg11  # noqa: E402

RESOLUTION, CHANNELS, BATCH = 32, 3, 128


class IndexedImages(Dataset):
    """Deterministic random images generated from their index: memory independent of the count."""

    def __init__(self, count: int, offset: int = 0) -> None:
        self.count, self.offset = count, offset

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        gen = torch.Generator().manual_seed(self.offset + index)
        return torch.randn(CHANNELS, RESOLUTION, RESOLUTION, generator=gen), (self.offset + index) % 10


def make(samples: int, width: float) -> tuple[torch.nn.Module, dict[str, DataLoader]]:
    torch.manual_seed(0)
    model = vgg11(num_classes=10, in_channels=CHANNELS, width=width, batch_norm=True).eval()
    loaders = {"train": DataLoader(IndexedImages(samples), batch_size=BATCH),
               "eval": DataLoader(IndexedImages(samples // 4, offset=10**6), batch_size=BATCH)}
    return model, loaders


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(samples: int, width: float, device: str) -> None:
    """One extraction in this (fresh) process; prints peak RSS as JSON."""
    model, loaders = make(samples, width)
    model.to(device)
    with tempfile.TemporaryDirectory() as folder:
        before = rss_mib()
        started = time.perf_counter()
        manifest = extract_latents(model, loaders, folder, run_dir=folder, downsampling=4, device=device,
                                   progress=False)
        seconds = time.perf_counter() - started
        size = sum(f.stat().st_size for f in Path(folder).glob("*.npy")) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"samples": samples, "peak_rss_mib": peak, "rss_before_mib": before, "latents_mib": size,
                      "layers": len(manifest["layers"]), "seconds": seconds}))


def bare_forward(model: torch.nn.Module, loaders: dict[str, DataLoader], device: str) -> float:
    started = time.perf_counter()
    with torch.inference_mode():
        for loader in loaders.values():
            for images, _ in loader:
                model(images.to(device))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=float, default=0.25, help="VGG11 width factor")
    parser.add_argument("--throughput-width", type=float, default=1.0, help="VGG11 width for the throughput test")
    parser.add_argument("--throughput-samples", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.width, args.device)
        return

    print(f"# extraction benchmark: VGG11(width={args.width}, BN) at {RESOLUTION}x{RESOLUTION}, batch {BATCH}, "
          f"downsampling 4, float32, device {args.device}, torch threads {torch.get_num_threads()}")
    results = {}
    for samples in (2000, 8000):
        out = subprocess.run([sys.executable, __file__, "--child", str(samples), "--width", str(args.width),
                              "--device", args.device], capture_output=True, text=True, check=True)
        results[samples] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[samples]
        print(f"samples {samples:5d} (+{samples // 4} eval): peak RSS {r['peak_rss_mib']:.1f} MiB "
              f"(RSS before extraction {r['rss_before_mib']:.1f} MiB), latents written {r['latents_mib']:.1f} MiB, "
              f"{r['seconds']:.1f} s")
    growth = results[8000]["peak_rss_mib"] / results[2000]["peak_rss_mib"] - 1
    deltas = [results[n]["peak_rss_mib"] - results[n]["rss_before_mib"] for n in (2000, 8000)]
    print(f"peak RSS above the pre-extraction RSS: {deltas[0]:.1f} MiB (2,000) vs {deltas[1]:.1f} MiB (8,000)")
    print(f"peak RSS growth 2,000 -> 8,000 samples: {growth:+.1%} (target <= +10%) "
          f"{'PASS' if growth <= 0.10 else 'FAIL'}")

    model, loaders = make(args.throughput_samples, args.throughput_width)
    model.to(args.device)
    print(f"# throughput: VGG11(width={args.throughput_width}, BN), {args.throughput_samples} + "
          f"{args.throughput_samples // 4} samples, best of {args.repeats} alternated runs")
    bare_forward(model, loaders, args.device)  # warm-up
    timings: dict[str, list[tuple[float, float]]] = {"bare": [], "extract": []}
    for repeat in range(args.repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        bare_forward(model, loaders, args.device)
        timings["bare"].append((time.perf_counter() - wall, time.process_time() - cpu))
        with tempfile.TemporaryDirectory() as folder:
            wall, cpu = time.perf_counter(), time.process_time()
            extract_latents(model, loaders, folder, run_dir=folder, downsampling=4, device=args.device,
                            progress=False)
            timings["extract"].append((time.perf_counter() - wall, time.process_time() - cpu))
    for name, runs in timings.items():
        print(f"{name:8s} wall {min(w for w, _ in runs):6.2f} s (runs {[round(w, 2) for w, _ in runs]}), "
              f"cpu {min(c for _, c in runs):6.2f} s (runs {[round(c, 2) for _, c in runs]})")
    for column, label in ((0, "wall"), (1, "cpu")):
        ratio = min(r[column] for r in timings["bare"]) / min(r[column] for r in timings["extract"])
        print(f"extraction throughput relative to the bare forward pass ({label} time): {ratio:.2f}x "
              f"(target >= 0.8x) {'PASS' if ratio >= 0.8 else 'FAIL'}")


if __name__ == "__main__":
    main()
