"""Where a tracked forward pass spends its time on a GPU: launching work, or the GPU doing it.

    python benchmarks/tracking_breakdown.py --device cuda    # ResNet18 (3×3 stem), 32×32, batch 256, bf16
    python benchmarks/tracking_breakdown.py --device cpu     # eager rows only (a smoke run)

Milliseconds per forward pass (eval, no gradients) of the benchmark model of issue 3, four ways:

  untracked         the model alone
  hooks only        a SaturationTracker attached whose accumulators do nothing: the Python cost of
                    the hooks and the tracker's batch bookkeeping, without a single extra kernel
  tracked           the exact float64 tracker (what ``tracking_overhead.py`` measures)

each run eagerly (the CPU launches every kernel, as in training) and, on CUDA, replayed from a CUDA
graph of the same pass, which launches nothing from Python: its time is what the GPU itself needs.
If eager ≫ graph, the pass is bound by launching (CPU); if they are close, by the GPU's work. The
covariance arithmetic a tracked pass adds is then split into GPU time (graph tracked − graph
untracked) and launch time. Same process, conditions interleaved, medians over ``--reps`` rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable

import torch

from phd_lab.tracking import SaturationTracker
from tracking_overhead import resnet18_cifar  # benchmarks/, beside this script


def silence(tracker: SaturationTracker) -> None:
    """Every accumulator of ``tracker`` ignores its input: the hooks still run, no kernel does."""
    for layer in tracker.layers.values():
        layer.accumulator.update_maps = lambda maps: None  # type: ignore[method-assign]
        layer.accumulator.update = lambda rows: None  # type: ignore[method-assign]


def per_pass_ms(step: Callable[[], object], device: torch.device, passes: int) -> float:
    """Wall milliseconds per call of ``step`` over ``passes`` calls, the device drained before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(passes):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1e3 / passes


def graphed(step: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """``step`` captured into a CUDA graph (after warm-up calls on a side stream, as the CUDA graph
    documentation asks); the returned callable replays it."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=None, help="default 256 on cuda, 32 on cpu")
    parser.add_argument("--passes", type=int, default=None, help="forward passes per timing (default 50 cuda, 3 cpu)")
    parser.add_argument("--reps", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--variant", choices=("triton", "chunked", "split"), default=None,
                        help="CUDA feature maps take an experimental update: the fused Triton prototype "
                        "(triton_gram.py), L2-sized chunks (chunked_update.py) or bf16 slices on tensor cores "
                        "(triton_split_gram.py)")
    parser.add_argument("--chunk-mb", type=float, default=16.0, help="--variant chunked: float64 MB per chunk")
    args = parser.parse_args()
    if args.variant == "triton":
        import triton_gram  # benchmarks/, beside this script
        triton_gram.install()
    elif args.variant == "chunked":
        import chunked_update  # benchmarks/, beside this script
        chunked_update.install(int(args.chunk_mb * 2**20))
    elif args.variant == "split":
        import triton_split_gram  # benchmarks/, beside this script
        triton_split_gram.install()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.stderr.write("--device cuda asked for, but CUDA is not available here\n")
        return 2
    batch = args.batch or (256 if cuda else 32)
    passes = args.passes or (50 if cuda else 3)
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    model = resnet18_cifar().to(device).eval()
    inputs = torch.randn(batch, 3, 32, 32, device=device)

    def forward() -> None:
        # cache_enabled=False: the autocast weight cache must not outlive a graph capture
        with torch.no_grad(), torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cuda,
                                             cache_enabled=False):
            model(inputs)

    def tracker_for(label: str) -> SaturationTracker | None:
        if label == "untracked":
            return None
        tracker = SaturationTracker(model, 0.99)
        if label == "hooks only":
            silence(tracker)
        return tracker

    def eager(label: str) -> Callable[[], float]:
        def timing() -> float:
            tracker = tracker_for(label)
            try:
                forward()  # a tracker's first batch sets its shift: not the path of later batches
                return per_pass_ms(forward, device, passes)
            finally:
                if tracker is not None:
                    tracker.close()
        return timing

    def replayed(label: str) -> Callable[[], float]:
        tracker = tracker_for(label)  # its hooks fire while the graph is captured; replays repeat their kernels
        try:
            replay = graphed(forward, device)
        finally:
            if tracker is not None:
                tracker.close()
        return lambda: per_pass_ms(replay, device, passes)

    timings = {f"{label}, eager": eager(label) for label in ("untracked", "hooks only", "tracked")}
    if cuda:
        timings.update({f"{label}, graph": replayed(label) for label in ("untracked", "tracked")})
    for timing in timings.values():  # warm-up: cudnn autotuning, the allocator's pools
        timing()
    times: dict[str, list[float]] = {name: [] for name in timings}
    names = list(timings)
    for rep in range(args.reps):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            times[name].append(timings[name]())
    title = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"ResNet18 (3×3 stem), 32×32, batch {batch}, forward passes (eval, no gradients), {title}")
    print(f"{passes} passes per timing, median of {args.reps} interleaved rounds"
          + {None: "", "triton": ", maps updated by the fused Triton prototype",
             "chunked": f", maps updated in chunks of {args.chunk_mb:g} MB",
             "split": ", bf16 maps updated by the split tensor-core prototype"}[args.variant])
    print(f"{'condition':<22}{'ms per pass':>12}")
    median = {name: statistics.median(values) for name, values in times.items()}
    for name, value in median.items():
        print(f"{name:<22}{value:>12.3f}")
    added = median["tracked, eager"] - median["untracked, eager"]
    print(f"\ntracking adds {added:.3f} ms per pass eagerly; the hooks' Python alone "
          f"{median['hooks only, eager'] - median['untracked, eager']:.3f} ms")
    if cuda:
        gpu = median["tracked, graph"] - median["untracked, graph"]
        print(f"GPU time of the covariance updates (graph tracked - graph untracked): {gpu:.3f} ms per pass; "
              f"launch-bound share of what tracking adds: {max(0.0, added - gpu):.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
