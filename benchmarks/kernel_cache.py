"""Start-up cost of the fused CPU tracking kernel: compiled in every process, or loaded from numba's cache.

Before, every process that tracked saturation on the CPU compiled the numba kernel (``cache=False``):
2-3 s of each run of a grid or SLURM array. Now the machine code is cached on disk. For each of
``--rounds`` rounds this script starts two interpreters, in alternating order, that each make the
first two tracked covariance updates of 64 VGG-sized maps:
  - "compile": an empty ``NUMBA_CACHE_DIR`` (what every process did before);
  - "cached": a ``NUMBA_CACHE_DIR`` that an earlier process filled.
It prints the medians of the wall time of those updates (imports excluded), their paired ratio, and
checks that both processes summed to the same bits.

  python benchmarks/kernel_cache.py --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = (
    "import hashlib, time, torch\n"
    "from phd_lab.tracking.covariance import CovarianceAccumulator\n"
    "maps = [torch.randn(64, 64, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)]\n"
    "start = time.perf_counter()\n"
    "acc = CovarianceAccumulator(64)\n"
    "for m in maps: acc.update_maps(m)\n"
    "print(time.perf_counter() - start, hashlib.sha256(acc.covariance().numpy().tobytes()).hexdigest())\n")


def first_updates(cache_dir: Path) -> tuple[float, str]:
    """Seconds of the first two updates in a fresh interpreter, and the covariance's sha256."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, check=True,
                          cwd=ROOT)
    seconds, digest = done.stdout.split()
    return float(seconds), digest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    compile_times, cached_times, digests = [], [], set()
    with tempfile.TemporaryDirectory() as folder:
        warm = Path(folder) / "warm"
        first_updates(warm)  # fills the cache
        for round_ in range(args.rounds):
            order = ("compile", "cached") if round_ % 2 == 0 else ("cached", "compile")
            for kind in order:
                cache = warm if kind == "cached" else Path(folder) / f"cold{round_}"
                seconds, digest = first_updates(cache)
                (cached_times if kind == "cached" else compile_times).append(seconds)
                digests.add(digest)
    assert len(digests) == 1, "the cached kernel summed to other bits"
    ratios = [c / w for c, w in zip(compile_times, cached_times)]
    print(f"  first two tracked updates in a new process ({args.rounds} rounds, medians)")
    print(f"  compile every process  {statistics.median(compile_times):8.3f} s")
    print(f"  cached kernel          {statistics.median(cached_times):8.3f} s")
    print(f"  saved per process      {statistics.median(compile_times) - statistics.median(cached_times):8.3f} s"
          f"   paired ratio {statistics.median(ratios):.1f}x; same covariance bits: yes")


if __name__ == "__main__":
    main()
