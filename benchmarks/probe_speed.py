"""Probe job speed: runner overhead, solver CPU time and agreement, 2-worker speed-up (issue 5).

Data sets (written as latents folders with manifests, like the extraction step does):
  (a) quickstart-sized latents: Digits (1,437 train / 360 eval) through a stack of random ReLU
      projections with the feature widths of the quickstart's VGG11 at ¼ width pooled to 4×4
      (256 … 2,048 features). Real extraction (issue 4) is not used, so the data is synthetic.
  (b) a generated, not linearly separable set: N × D (default 20,000 × 4,096 at --scale 1),
      10 classes, Gaussian class clusters whose separation grows from layer to layer, 10 %
      random labels. --scale s multiplies N and D by s (--scale 0.25: 5,000 × 1,024).

For each set, in one process: bare scikit-learn SAGA fits (max_iter 100, raw features, one
thread) vs the runner with the same fits (-mp 1 and -mp 2), and the runner with lbfgs and
lbfgs-torch in-process (CPU time). Targets: runner overhead ≤ 5 %, lbfgs ≥ 20× less CPU time
than saga, per-layer eval accuracies within 1.5 pp of saga and Spearman ≥ 0.9, speed-up of 2
workers over 1 ≥ 1.7×.

  python benchmarks/probe_speed.py                 # (a) and (b) at --scale 0.25 (a few minutes, 2 cores)
  python benchmarks/probe_speed.py --only b --scale 1 --layers 3   # the stated size (slow: saga)
  python benchmarks/probe_speed.py --gpu           # lbfgs-torch on cuda, 50,000 × 8,192 (lead, on a GPU)
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from phd_lab.probes.job import jobs_from_latents, run_jobs  # noqa: E402
from phd_lab.probes.settings import ProbeSettings  # noqa: E402
from phd_lab.probes.synthetic import write_latents  # noqa: E402

QUICKSTART_WIDTHS = (16, 32, 64, 64, 128, 128, 128, 128)  # VGG11 conv channels at width 0.25


def quickstart_latents(folder: Path) -> Path:
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    rng = np.random.default_rng(1)
    layers, h = {}, x
    for i, channels in enumerate(QUICKSTART_WIDTHS):
        width = channels * 16
        h = np.maximum(h @ (rng.standard_normal((h.shape[1], width)) / np.sqrt(h.shape[1])).astype(np.float32), 0.0)
        noisy = h + rng.normal(0.0, 0.3 * h.std(), h.shape).astype(np.float32)
        layers[f"features.{i}"] = (noisy[:1437], noisy[1437:])
    run = folder / "quickstart"
    run.mkdir(parents=True)
    return write_latents(run / "latents", layers, y[:1437], y[1437:], run, 0.95)


def hard_labels(n: int, seed: int, classes: int = 10, label_noise: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """True classes (they place the samples) and observed labels (10 % replaced at random)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    observed = y.copy()
    flip = rng.random(n) < label_noise
    observed[flip] = rng.integers(0, classes, int(flip.sum()))
    return y, observed


def hard_layer(y: np.ndarray, d: int, separation: float, seed: int, classes: int = 10, rank: int = 64) -> np.ndarray:
    """Overlapping Gaussian class clusters in a ``rank``-dimensional subspace of R^d plus weak
    isotropic noise: classes overlap, so no linear probe separates the training set, and larger
    ``separation`` makes the layer more linearly decodable."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((classes, rank), dtype=np.float32) * np.float32(separation / np.sqrt(rank) * 3)
    z = rng.standard_normal((len(y), rank), dtype=np.float32)
    z += centers[y]
    x = z @ (rng.standard_normal((rank, d), dtype=np.float32) / np.float32(np.sqrt(rank)))
    x += rng.standard_normal(x.shape, dtype=np.float32) * np.float32(0.05)
    return x


def hard_arrays(n: int, n_eval: int, d: int, separation: float, seed: int):
    y, observed = hard_labels(n + n_eval, seed)
    x = hard_layer(y, d, separation, seed + 1)
    return x[:n], observed[:n], x[n:], observed[n:]


def hard_latents(folder: Path, n: int, d: int, layers: int) -> Path:
    run = folder / f"hard-{n}x{d}"
    run.mkdir(parents=True)
    n_eval = n // 4
    y, observed = hard_labels(n + n_eval, seed=7)
    arrays = {}
    for i in range(layers):
        x = hard_layer(y, d, separation=0.6 + 0.35 * i, seed=100 + i)
        arrays[f"layer{i}"] = (x[:n], x[n:])
    return write_latents(run / "latents", arrays, observed[:n], observed[n:], run, None)


def bare_saga(latents: Path) -> tuple[float, float, list[float]]:
    """The same SAGA fits as the runner's, on in-memory arrays, one thread: fit wall and CPU seconds, eval accuracy."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits
    from phd_lab.probes.manifest import read_manifest
    manifest = read_manifest(latents)
    y_train = np.load(manifest.train_labels)
    y_eval = np.load(manifest.eval_labels)
    total, cpu, accuracies = 0.0, 0.0, []
    for layer in manifest.layers:
        x_train, x_eval = np.load(layer.train), np.load(layer.eval)
        with threadpool_limits(1), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start, start_cpu = time.perf_counter(), time.process_time()
            model = LogisticRegression(solver="saga", max_iter=100, tol=1e-4, random_state=0).fit(x_train, y_train)
            total += time.perf_counter() - start
            cpu += time.process_time() - start_cpu
        accuracies.append(model.score(x_eval, y_eval))
    return total, cpu, accuracies


def timed_runner(latents: Path, solver: str, workers: int, cache: Path) -> tuple[float, float, list]:
    """Wall and CPU seconds (this process and its reaped workers) of a complete probe job."""
    jobs, _ = jobs_from_latents(latents, {"solver": solver})
    cpu = time.process_time()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    records = run_jobs(jobs, cache, workers=workers, progress=False)[0]
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time() - cpu + (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    return wall, cpu, records


def compare(name: str, latents: Path, scratch: Path) -> list[str]:
    from scipy.stats import spearmanr
    lines = [f"### {name}", ""]
    bare, bare_cpu, bare_acc = bare_saga(latents)
    runs = {}
    for solver, workers in (("saga", 1), ("saga", 2), ("lbfgs", 0), ("lbfgs-torch", 0)):
        runs[(solver, workers)] = timed_runner(latents, solver, workers, scratch / f"cache-{name[:3]}-{solver}-{workers}")
    saga1, saga2 = runs[("saga", 1)], runs[("saga", 2)]
    acc = {solver: [r.eval_acc for r in runs[(solver, w)][2]] for solver, w in runs if w != 2}
    lines.append("| | wall s | CPU s | eval accuracy per layer |")
    lines.append("|---|---:|---:|---|")
    lines.append(f"| bare sklearn saga fits | {bare:.2f} | {bare_cpu:.2f} | {' '.join(f'{a:.3f}' for a in bare_acc)} |")
    for (solver, workers), (wall, cpu, records) in runs.items():
        lines.append(f"| runner {solver} -mp {workers} | {wall:.2f} | {cpu:.2f} | "
                     f"{' '.join(f'{r.eval_acc:.3f}' for r in records)} |")
    overhead = saga1[0] / bare - 1
    overhead_cpu = saga1[1] / bare_cpu - 1
    cpu_ratio = runs[("saga", 1)][1] / runs[("lbfgs", 0)][1]
    lbfgs_gap = max(abs(a - b) for a, b in zip(acc["saga"], acc["lbfgs"])) * 100
    torch_gap = max(abs(a - b) for a, b in zip(acc["saga"], acc["lbfgs-torch"])) * 100
    rho = spearmanr(acc["saga"], acc["lbfgs"]).statistic
    rho_torch = spearmanr(acc["saga"], acc["lbfgs-torch"]).statistic
    speedup = saga1[0] / saga2[0]
    same = [r.eval_acc for r in saga1[2]] == bare_acc
    lines += ["",
              f"- runner overhead (-mp 1 / bare fits - 1): wall {overhead * 100:+.1f} %, CPU {overhead_cpu * 100:+.1f} % "
              f"(target ≤ 5 %)",
              f"- runner saga accuracies identical to the bare fits: {same}",
              f"- saga CPU / lbfgs CPU: {cpu_ratio:.1f}× (target ≥ 20×); saga / lbfgs-torch CPU: "
              f"{runs[('saga', 1)][1] / runs[('lbfgs-torch', 0)][1]:.1f}×",
              f"- max |saga − lbfgs| eval accuracy: {lbfgs_gap:.2f} pp (target ≤ 1.5), Spearman {rho:.3f} (≥ 0.9); "
              f"lbfgs-torch: {torch_gap:.2f} pp, Spearman {rho_torch:.3f}",
              f"- speed-up -mp 2 over -mp 1: {speedup:.2f}× (target ≥ 1.7×)",
              f"- saga converged in {sum(r.converged for r in saga1[2])}/{len(saga1[2])} layers within 100 epochs", ""]
    return lines


def gpu_mode(device: str, n: int, d: int, layers: int) -> list[str]:
    import torch
    from phd_lab.probes.fit import probe_arrays
    lines = [f"### lbfgs-torch on {torch.cuda.get_device_name(device) if device.startswith('cuda') else device}, "
             f"{n:,} × {d:,}, 10 classes", "", "| layer | seconds | n_iter | converged | eval acc |", "|---|---:|---:|---|---:|"]
    settings = ProbeSettings(solver="lbfgs-torch", device=device)
    probe_arrays(0, "warm-up", *_small(), settings)
    for i in range(layers):
        x_train, y_train, x_eval, y_eval = hard_arrays(n, n // 5, d, separation=0.6 + 0.35 * i, seed=200 + i)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        record = probe_arrays(i, f"layer{i}", x_train, y_train, x_eval, y_eval, settings)
        lines.append(f"| layer{i} | {record.seconds:.2f} | {record.n_iter} | {record.converged} | {record.eval_acc:.3f} |")
    return lines + ["", "seconds include standardisation on the CPU, the host→GPU copy and evaluation.", ""]


def _small():
    x_train, y_train, x_eval, y_eval = hard_arrays(512, 128, 64, 1.0, 0)
    return x_train, y_train, x_eval, y_eval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("a", "b"), help="run only data set (a) or (b)")
    parser.add_argument("--scale", type=float, default=0.25, help="(b): multiply 20,000 × 4,096 by this (default 0.25)")
    parser.add_argument("--layers", type=int, default=5, help="(b): number of layers (default 5)")
    parser.add_argument("--gpu", action="store_true", help="only lbfgs-torch on --device, 50,000 × 8,192")
    parser.add_argument("--device", default="cuda", help="device of --gpu (default cuda)")
    parser.add_argument("--gpu-layers", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.gpu:
        print("\n".join(gpu_mode(args.device, 50_000, 8_192, args.gpu_layers)))
        return
    lines = []
    with tempfile.TemporaryDirectory(prefix="probe_speed_") as tmp:
        scratch = Path(tmp)
        if args.only in (None, "a"):
            lines += compare("(a) quickstart-sized latents (Digits, random ReLU projections, 256–2,048 features)",
                             quickstart_latents(scratch), scratch)
            print("\n".join(lines), flush=True)
        if args.only in (None, "b"):
            n, d = int(20_000 * args.scale), int(4_096 * args.scale)
            start = time.perf_counter()
            latents = hard_latents(scratch, n, d, args.layers)
            more = compare(f"(b) generated {n:,} × {d:,}, {n // 4:,} eval, 10 classes, {args.layers} layers, "
                           f"not linearly separable", latents, scratch)
            more.insert(2, f"(generating and writing the latents: {time.perf_counter() - start:.1f} s)\n")
            print("\n".join(more), flush=True)


if __name__ == "__main__":
    main()
