"""Probe job speed: runner overhead, solver CPU time and agreement, 2-worker speed-up (issue 5).

Data sets (latents folders with manifests):
  (a) the quickstart latents: configs/quickstart.json at width 0.25 (VGG11 ¼ on Digits, 32 px,
      3 epochs) trained and extracted by ``main.py`` into a scratch logs folder (1,437 train /
      360 eval samples, 10 layers, 10 … 2,048 features).
  (b) a generated, not linearly separable set: N × D (default 20,000 × 4,096 at --scale 1),
      10 classes, Gaussian class clusters whose separation grows from layer to layer, 10 %
      random labels. --scale s multiplies N and D by s (--scale 0.5: 10,000 × 2,048).

For each set, in one process: bare scikit-learn SAGA fits (max_iter 100, raw features, one
thread) vs the runner with the same fits (-mp 1 and -mp 2), and the runner with lbfgs and
lbfgs-torch in-process (CPU time). Targets: runner overhead ≤ 5 %, lbfgs ≥ 20× less CPU time
than saga, per-layer eval accuracies within 1.5 pp of saga and Spearman ≥ 0.9, speed-up of 2
workers over 1 ≥ 1.7×.

  python benchmarks/probe_speed.py                 # (a) and (b) at --scale 0.5 (about 15 minutes, 2 cores)
  python benchmarks/probe_speed.py --only b --scale 1 --layers 4 --runs saga2,lbfgs,torch   # stated size
  python benchmarks/probe_speed.py --only a --runs "" --pairs 9   # the runner overhead, 9 paired rounds
  python benchmarks/probe_speed.py --gpu           # lbfgs-torch on cuda, 50,000 × 8,192 (lead, on a GPU)
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from paired_stats import interval_label, median_interval, paired_verdict  # noqa: E402
from phd_lab.probes.discovery import jobs_from_latents  # noqa: E402
from phd_lab.probes.job import run_jobs  # noqa: E402
from phd_lab.probes.settings import ProbeSettings  # noqa: E402
from phd_lab.probes.synthetic import write_latents  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def quickstart_latents(folder: Path) -> Path:
    """Train and extract the quickstart's width-0.25 run with ``main.py`` into ``folder``; its latents folder."""
    config = json.loads((ROOT / "configs" / "quickstart.json").read_text())
    config.update(model_args={"width": 0.25}, logs_dir=str(folder / "logs"), post_processing=["extract"])
    path = folder / "quickstart.json"
    path.write_text(json.dumps(config))
    subprocess.run([sys.executable, str(ROOT / "main.py"), "--config", str(path)], check=True, capture_output=True)
    (manifest,) = (folder / "logs").rglob("manifest.json")
    return manifest.parent


def hard_labels(n: int, seed: int, classes: int = 10, label_noise: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """True classes (they place the samples) and observed labels (10 % replaced at random)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    observed = y.copy()
    flip = rng.random(n) < label_noise
    observed[flip] = rng.integers(0, classes, int(flip.sum()))
    return y, observed


def hard_layer(y: np.ndarray, d: int, separation: float, seed: int, classes: int = 10, rank: int = 64,
               nuisance: int = 192) -> np.ndarray:
    """Latent-like features of low rank: overlapping Gaussian class clusters in a ``rank``-dimensional
    subspace plus ``nuisance`` class-independent factors with a decaying spectrum, mapped into R^d.

    The features have rank ``rank + nuisance`` (256) whatever ``d`` is, far below n / classes, so
    with 10 % random labels no linear probe separates the training set: a probe that converges
    cannot memorise the label noise (full-rank data with d·classes > n could be fitted almost
    perfectly). Larger ``separation`` makes the layer more linearly decodable.
    """
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((classes, rank), dtype=np.float32) * np.float32(separation / np.sqrt(rank) * 3)
    z = rng.standard_normal((len(y), rank + nuisance), dtype=np.float32)
    z[:, :rank] += centers[y]
    z[:, rank:] *= np.linspace(1.0, 0.05, nuisance, dtype=np.float32)
    return z @ (rng.standard_normal((rank + nuisance, d), dtype=np.float32) / np.float32(np.sqrt(rank + nuisance)))


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


def timed_runner(latents: Path, solver: str, workers: int, cache: Path, **settings) -> tuple[float, float, list]:
    """Wall and CPU seconds (this process and its reaped workers) of a complete probe job."""
    jobs, _ = jobs_from_latents(latents, {"solver": solver, **settings})
    cpu = time.process_time()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    records = run_jobs(jobs, cache, workers=workers, progress=False)[0]
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time() - cpu + (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    return wall, cpu, records


# name -> (solver, workers, other settings); "seed1" is saga with another seed: how far saga agrees with itself
RUNS = {"saga1": ("saga", 1, {}), "saga2": ("saga", 2, {}), "seed1": ("saga", 2, {"seed": 1}),
        "lbfgs": ("lbfgs", 0, {}), "torch": ("lbfgs-torch", 0, {})}


def compare(name: str, latents: Path, scratch: Path, chosen: list[str]) -> list[str]:
    """Run the chosen measurements on one latents folder; a table and the target checks as Markdown lines."""
    from scipy.stats import spearmanr
    lines = [f"### {name}", "", "| | wall s | CPU s | eval accuracy per layer |", "|---|---:|---:|---|"]
    results: dict[str, tuple[float, float, list[float], list]] = {}
    if "bare" in chosen:
        wall, cpu, accuracies = bare_saga(latents)
        results["bare"] = (wall, cpu, accuracies, [])
        shown = " ".join(f"{a:.3f}" for a in accuracies)
        lines.append(f"| bare sklearn saga fits | {wall:.2f} | {cpu:.2f} | {shown} |")
    for run in (r for r in RUNS if r in chosen):
        solver, workers, settings = RUNS[run]
        wall, cpu, records = timed_runner(latents, solver, workers, scratch / f"cache-{name[:3]}-{run}", **settings)
        results[run] = (wall, cpu, [r.eval_acc for r in records], records)
        extra = "".join(f" {k} {v}" for k, v in settings.items())
        lines.append(f"| runner {solver}{extra} -mp {workers} | {wall:.2f} | {cpu:.2f} | "
                     f"{' '.join(f'{r.eval_acc:.3f}' for r in records)} |")
    lines.append("")
    saga = next((results[r] for r in ("saga1", "saga2", "bare") if r in results), None)
    if "bare" in results and "saga1" in results:
        bare, saga1 = results["bare"], results["saga1"]
        lines.append(f"- runner overhead (-mp 1 / bare fits - 1): wall {(saga1[0] / bare[0] - 1) * 100:+.1f} %, "
                     f"CPU {(saga1[1] / bare[1] - 1) * 100:+.1f} % (target ≤ 5 %)")
    for run in ("saga1", "saga2"):
        if run in results and "bare" in results:
            same = results[run][2] == results["bare"][2]
            lines.append(f"- runner {run} accuracies identical to the bare fits: {same}")
    if saga is not None:
        for run, label in (("seed1", "saga seed 1"), ("lbfgs", "lbfgs"), ("torch", "lbfgs-torch")):
            if run not in results:
                continue
            other = results[run]
            gap = max(abs(a - b) for a, b in zip(saga[2], other[2])) * 100
            rho = spearmanr(saga[2], other[2]).statistic if len(saga[2]) > 2 else float("nan")
            iters = " ".join(str(r.n_iter) for r in other[3])
            target = " (target ≥ 20×)" if run != "seed1" else ""
            lines.append(f"- saga CPU / {label} CPU: {saga[1] / other[1]:.1f}×{target}; max |saga − {label}| "
                         f"eval accuracy {gap:.2f} pp (target ≤ 1.5), Spearman {rho:.3f} (target ≥ 0.9); "
                         f"iterations {iters}")
    if "saga1" in results and "saga2" in results:
        lines.append(f"- speed-up -mp 2 over -mp 1: {results['saga1'][0] / results['saga2'][0]:.2f}× (target ≥ 1.7×)")
    records = next((results[r][3] for r in ("saga1", "saga2") if r in results), [])
    if records:
        lines.append(f"- saga converged in {sum(r.converged for r in records)}/{len(records)} layers within 100 epochs")
    return lines + [""]


def paired_overhead(latents: Path, scratch: Path, rounds: int) -> list[str]:
    """The runner overhead as paired rounds: each round times the bare fits and the runner with -mp 1 next to
    each other, in alternating order; the median of the rounds' ratios with its 95 % interval."""
    ratios: dict[str, list[float]] = {"wall": [], "CPU": []}
    lines = ["| round | bare wall s | runner wall s | bare CPU s | runner CPU s |", "|---:|---:|---:|---:|---:|"]
    for round_ in range(rounds):
        timings = {}
        for which in (("bare", "runner") if round_ % 2 == 0 else ("runner", "bare")):
            if which == "bare":
                timings[which] = bare_saga(latents)[:2]
            else:
                timings[which] = timed_runner(latents, "saga", 1, scratch / f"cache-pair-{round_}")[:2]
        (bare_wall, bare_cpu), (runner_wall, runner_cpu) = timings["bare"], timings["runner"]
        ratios["wall"].append(runner_wall / bare_wall)
        ratios["CPU"].append(runner_cpu / bare_cpu)
        lines.append(f"| {round_ + 1} | {bare_wall:.2f} | {runner_wall:.2f} | {bare_cpu:.2f} | {runner_cpu:.2f} |")
    lines.append("")
    for kind, values in ratios.items():
        median, low, high = median_interval(values)
        lines.append(f"- runner -mp 1 / bare fits, {kind}, median of {rounds} paired rounds: {median:.3f}× "
                     f"[{low:.3f}, {high:.3f}] ({interval_label(len(values))}; target ≤ 1.05: "
                     f"{paired_verdict(low, high, 1.05, at_most=True, n=len(values))})")
    return lines + [""]


def gpu_mode(device: str, n: int, d: int, layers: int) -> list[str]:
    import torch
    from phd_lab.probes.fit import probe_arrays
    lines = [f"### lbfgs-torch on {torch.cuda.get_device_name(device) if device.startswith('cuda') else device}, "
             f"{n:,} × {d:,}, 10 classes", "", "| layer | seconds | n_iter | converged | eval acc |",
             "|---|---:|---:|---|---:|"]
    settings = ProbeSettings(solver="lbfgs-torch", device=device)
    probe_arrays(0, "warm-up", *_small(), settings)
    for i in range(layers):
        x_train, y_train, x_eval, y_eval = hard_arrays(n, n // 5, d, separation=0.6 + 0.35 * i, seed=200 + i)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        record = probe_arrays(i, f"layer{i}", x_train, y_train, x_eval, y_eval, settings)
        lines.append(f"| layer{i} | {record.seconds:.2f} | {record.n_iter} | {record.converged} "
                     f"| {record.eval_acc:.3f} |")
    return lines + ["", "seconds include the host→GPU copy, standardisation on the GPU and evaluation.", ""]


def _small():
    x_train, y_train, x_eval, y_eval = hard_arrays(512, 128, 64, 1.0, 0)
    return x_train, y_train, x_eval, y_eval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("a", "b"), help="run only data set (a) or (b)")
    parser.add_argument("--scale", type=float, default=0.5, help="(b): multiply 20,000 × 4,096 by this (default 0.5)")
    parser.add_argument("--layers", type=int, default=4, help="(b): number of layers (default 4)")
    parser.add_argument("--runs", default="bare,saga1,saga2,lbfgs,torch",
                        help="measurements, comma-separated from bare,saga1,saga2,seed1,lbfgs,torch (default: "
                             "all but seed1)")
    parser.add_argument("--pairs", type=int, default=0,
                        help="(a): also this many paired rounds of bare fits and runner -mp 1, for the overhead's "
                             "median and 95 %% interval (each round about a minute on 2 cores)")
    parser.add_argument("--gpu", action="store_true", help="only lbfgs-torch on --device, 50,000 × 8,192")
    parser.add_argument("--device", default="cuda", help="device of --gpu (default cuda)")
    parser.add_argument("--gpu-layers", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.gpu:
        print("\n".join(gpu_mode(args.device, 50_000, 8_192, args.gpu_layers)))
        return
    chosen = [run for run in args.runs.split(",") if run]
    unknown = sorted(set(chosen) - {"bare", *RUNS})
    if unknown:
        parser.error(f"unknown --runs {unknown}; choose from bare,{','.join(RUNS)}")
    with tempfile.TemporaryDirectory(prefix="probe_speed_") as tmp:
        scratch = Path(tmp)
        if args.only in (None, "a"):
            start = time.perf_counter()
            latents = quickstart_latents(scratch)
            made = time.perf_counter() - start
            title = "(a) quickstart latents (VGG11 ¼ on Digits, 10 layers, 10–2,048 features)"
            lines = compare(title, latents, scratch, chosen) if chosen else [f"### {title}", ""]
            lines.insert(2, f"(training and extracting the quickstart run: {made:.1f} s)\n")
            if args.pairs:
                lines += paired_overhead(latents, scratch, args.pairs)
            print("\n".join(lines), flush=True)
        if args.only in (None, "b"):
            n, d = int(20_000 * args.scale), int(4_096 * args.scale)
            start = time.perf_counter()
            latents = hard_latents(scratch, n, d, args.layers)
            made = time.perf_counter() - start
            lines = compare(f"(b) generated {n:,} × {d:,}, {n // 4:,} eval, 10 classes, {args.layers} layers, "
                            f"not linearly separable", latents, scratch, chosen)
            lines.insert(2, f"(generating and writing the latents: {made:.1f} s)\n")
            print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
