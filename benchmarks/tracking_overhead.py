"""Epoch wall time with saturation tracking versus without, same process, interleaved.

    python benchmarks/tracking_overhead.py                 # CPU: VGG11 at 1/4 width, 32×32, batch 64
    python benchmarks/tracking_overhead.py --device cuda   # GPU: ResNet18 (3×3 stem), 32×32, batch 256, bf16

Every repetition runs each condition once, in a rotating order, through the real Trainer
(train_epoch + evaluate) and the real SaturationCallback:

  untracked      training epoch + test evaluation (what a run without tracking costs)
  passes         + the callback's separate pass over the un-augmented training split, and the
                   test split tracked during the test evaluation (the default; exact float64)
  inline         hooks record during the training batches and the test evaluation (the
                   thesis' Delve; no extra passes), exact float64
  inline-serial  the same with the fused CPU kernel on the calling thread only (before session 55:
                   with several threads, its updates now run on torch's OpenMP team)
  inline-torch   the same with the fused CPU kernel switched off (phd_lab/tracking/fused_gram.py):
                   every layer takes the torch path (float64 copy, then BLAS Gram)

It also times one forward pass over the training split with and without a tracker
attached ("pass only"), also with the fused kernel off: the cost of the covariance arithmetic itself. Data are synthetic
tensors held in memory (on the device) so that loading does not blur the comparison.
Ratios are median tracked time / median untracked time (CPU target ≤ 1.10) and, on CUDA,
untracked / tracked throughput (target ≥ 0.90).

A shared machine's speed drifts by more than the 10 % the CPU target allows, so the script also
pairs every tracked epoch with the untracked epoch of the same round (run next to it) and reports
the median of these paired ratios with a distribution-free 95 % interval (binomial order
statistics), in wall time and in CPU time of this process; the target counts as met or missed
only when the whole interval lies on one side of it. Many short rounds (``--reps 30
--train-batches 10``) narrow the interval more than a few long ones.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from paired_stats import interval_label, median_interval, paired_verdict  # noqa: E402
from phd_lab.data import DataBundle  # noqa: E402
from phd_lab.tracking import SaturationTracker, TrackerOptions, fused_gram, run_pass  # noqa: E402
from phd_lab.tracking.callback import SaturationCallback  # noqa: E402
from phd_lab.tracking.covariance import CovarianceAccumulator  # noqa: E402
from phd_lab.trainer import Trainer  # noqa: E402
from registries.metrics import Accuracy  # noqa: E402
from registries.models import vgg11  # noqa: E402

CONDITIONS = ("untracked", "passes", "inline", "inline-serial", "inline-torch")


def resnet18_cifar(num_classes: int = 10) -> nn.Module:
    """torchvision ResNet18 with a 3×3 stride-1 stem and no max-pool (the usual 32×32 variant)."""
    from torchvision.models import resnet18
    model = resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


class BenchTrainer(Trainer):
    """The real Trainer; on CUDA with bf16 autocast as the GPU benchmark asks."""

    def __init__(self, *args: object, bf16: bool = False, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.bf16 = bf16

    def autocast(self) -> object:
        if self.bf16:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return super().autocast()


def synthetic_batches(count: int, batch: int, device: torch.device, seed: int) -> list[tuple[torch.Tensor, ...]]:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, 32, 32, generator=generator).to(device),
             torch.randint(0, 10, (batch,), generator=generator).to(device)) for _ in range(count)]


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_epoch(condition: str, trainer: BenchTrainer, bundle: DataBundle) -> Callable[[], None]:
    """One epoch of ``condition``: the Trainer's own loop plus what the callback adds."""
    callback = None
    mode, _, variant = condition.partition("-")
    if condition != "untracked":
        callback = SaturationCallback(None, delta=0.99, options=TrackerOptions(), mode=mode)
    row: dict[str, object] = {}

    def epoch() -> None:
        trainer.train_epoch(bundle, 1)
        with callback.during_test_evaluation(trainer) if callback is not None else contextlib.nullcontext():
            trainer.evaluate(bundle.test)  # passes mode tracks the test split here, as Trainer.fit does
        if callback is not None:
            callback.on_epoch_end(trainer, bundle, 1, row)

    def run() -> None:
        with fused_gram.switched(variant != "torch", team=variant != "serial"):
            if callback is not None and callback.mode == "inline":
                callback.on_fit_start(trainer, bundle)  # hooks attached only while this condition runs
                try:
                    epoch()
                finally:
                    callback.on_fit_end(trainer, bundle)
            else:
                epoch()
    return run


def cuda_ms(fn: Callable[[], object], reps: int = 20) -> float:
    """GPU milliseconds per call of ``fn`` (CUDA events, after one untimed call)."""
    fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def replace_cuda_maps_update(update: Callable[[CovarianceAccumulator, torch.Tensor], None]) -> None:
    """From now on every CovarianceAccumulator adds CUDA feature maps with ``update(accumulator, maps)`` once its
    first batch has set the shift on the tracker's own path (the experiments triton_gram.py, chunked_update.py)."""
    original = CovarianceAccumulator.update_maps

    def update_maps(self: CovarianceAccumulator, maps: torch.Tensor) -> None:
        if self._shift is None or not maps.is_cuda or maps.dim() != 4:
            original(self, maps)
        else:
            update(self, maps.detach())
    CovarianceAccumulator.update_maps = update_maps  # type: ignore[method-assign]


def profile_update(device: torch.device, batch: int, reps: int = 20) -> list[str]:
    """Milliseconds per exact covariance update of ResNet18's four feature-map shapes (bf16), by part."""
    from phd_lab.tracking.covariance import _convert_and_shift

    def ms(fn: Callable[[], object]) -> float:
        return cuda_ms(fn, reps)

    lines = [f"{'maps (bf16)':<22}{'shift':>8}{'sum':>8}{'gram':>8}{'update':>8}   ms per call"]
    for channels, size in ((64, 32), (128, 16), (256, 8), (512, 4)):
        maps = torch.randn(batch, channels, size, size, device=device, dtype=torch.bfloat16)
        shift = maps[:1].mean(dim=(0, 2, 3), dtype=torch.float32).to(torch.float64)
        x = torch.empty(channels, maps.numel() // channels, dtype=torch.float64, device=device)
        by_channel = maps.reshape(batch, channels, -1).transpose(0, 1)
        gram = torch.zeros(channels, channels, dtype=torch.float64, device=device)
        accumulator = CovarianceAccumulator(channels, device)
        accumulator.update_maps(maps)  # the first batch sets the shift; later ones take the timed path
        parts = (ms(lambda: _convert_and_shift(by_channel, shift[:, None, None], out=x.view(channels, batch, -1))),
                 ms(lambda: x.sum(dim=1)), ms(lambda: gram.addmm_(x, x.T)), ms(lambda: accumulator.update_maps(maps)))
        lines.append(f"{str(tuple(maps.shape)):<22}" + "".join(f"{p:>8.3f}" for p in parts))
    return lines


CPU_UPDATE_SHAPES = ((64, 16, 32, 32), (64, 32, 16, 16), (64, 64, 8, 8), (64, 128, 4, 4), (64, 128, 2, 2),
                     (64, 256, 4, 4), (16, 16, 16, 16))


def compare_cpu_updates(reps: int = 20) -> list[str]:
    """Milliseconds per covariance update (after the first batch) with the fused kernel and with the
    torch path, best of ``reps``, alternating, for VGG11-¼ and ResNet-sized float32 maps."""
    from phd_lab.tracking.covariance import CovarianceAccumulator

    def update_ms(accumulator: CovarianceAccumulator, maps: torch.Tensor, use_fused: bool) -> float:
        with fused_gram.switched(use_fused):
            start = time.perf_counter()
            accumulator.update_maps(maps)
            return (time.perf_counter() - start) * 1e3

    lines = [f"{'maps (float32)':<22}{'fused ms':>10}{'torch ms':>10}{'ratio':>8}"]
    for shape in CPU_UPDATE_SHAPES:
        maps = torch.randn(shape).relu_()
        accumulator = CovarianceAccumulator(shape[1])
        accumulator.update_maps(maps)
        fused_ms, torch_ms = [], []
        for _ in range(reps):
            fused_ms.append(update_ms(accumulator, maps, True))
            torch_ms.append(update_ms(accumulator, maps, False))
        ratio = min(fused_ms) / min(torch_ms)
        lines.append(f"{str(shape):<22}{min(fused_ms):>10.3f}{min(torch_ms):>10.3f}{ratio:>7.2f}x")
    return lines


def timed(fn: Callable[[], None], device: torch.device) -> tuple[float, float]:
    """Wall seconds and CPU seconds of this process (all its threads) for one call of ``fn``."""
    synchronise(device)
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    synchronise(device)
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu (VGG11/4, batch 64) or cuda (ResNet18, batch 256)")
    parser.add_argument("--reps", type=int, default=None, help="interleaved repetitions (default 3 cpu, 5 cuda)")
    parser.add_argument("--train-batches", type=int, default=None, help="training batches per epoch")
    parser.add_argument("--test-batches", type=int, default=None, help="test batches per epoch")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--profile", action="store_true", help="CUDA: also time the parts of one update; CPU: "
                        "also time one update per map shape with the fused kernel and with the torch path")
    parser.add_argument("--conditions", default=",".join(CONDITIONS), help="comma-separated subset")
    parser.add_argument("--variant", choices=("split",), default=None, help="CUDA: bf16 feature maps take the "
                        "split tensor-core prototype (triton_split_gram.py) instead of the tracker's exact update")
    args = parser.parse_args()

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.stderr.write("--device cuda asked for, but CUDA is not available here\n")
        return 2
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    unknown = sorted(set(conditions) - set(CONDITIONS))
    if unknown or "untracked" not in conditions:
        sys.stderr.write(f"--conditions must include 'untracked' and come from {CONDITIONS}; got {conditions}\n")
        return 2
    if args.variant == "split":
        if not cuda:
            sys.stderr.write("--variant split needs --device cuda\n")
            return 2
        import triton_split_gram  # beside this script
        triton_split_gram.install()
    if args.threads:
        torch.set_num_threads(args.threads)
    reps = args.reps or (5 if cuda else 3)
    batch = 256 if cuda else 64
    train_batches = args.train_batches or (100 if cuda else 40)
    test_batches = args.test_batches or max(1, train_batches // 5)
    torch.manual_seed(0)
    if cuda:
        torch.backends.cudnn.benchmark = True
        model = resnet18_cifar().to(device)
        title = f"ResNet18 (3×3 stem), 32×32, batch {batch}, bf16 autocast, {torch.cuda.get_device_name(device)}" \
            + (", bf16 maps updated by the split prototype" if args.variant else "")
    else:
        model = vgg11(num_classes=10, in_channels=3, width=0.25)
        title = f"VGG11 at 1/4 width, 32×32, batch {batch}, CPU ({torch.get_num_threads()} threads)"
    train = synthetic_batches(train_batches, batch, device, seed=1)
    test = synthetic_batches(test_batches, batch, device, seed=2)
    bundle = DataBundle(name="synthetic", train=train, test=test, train_eval=train,  # type: ignore[arg-type]
                        num_classes=10, in_channels=3, resolution=32)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    trainer = BenchTrainer(model, optimizer, None, metrics={"accuracy": Accuracy()}, epochs=1, device=device,
                           mixed_precision=cuda, progress=False, bf16=cuda)
    epochs = {c: make_epoch(c, trainer, bundle) for c in conditions}

    def forward_pass(tracked: bool, fused: bool = True, team: bool = True) -> Callable[[], None]:
        def run() -> None:
            model.eval()
            tracker = SaturationTracker(model, 0.99) if tracked else None
            try:
                with fused_gram.switched(fused, team=team):
                    pass_over_train(tracker)
            finally:
                if tracker is not None:
                    tracker.close()
        return run

    def pass_over_train(tracker: SaturationTracker | None) -> None:
        if tracker is None:
            with torch.no_grad():
                for inputs, _ in train:
                    with trainer.autocast():  # type: ignore[attr-defined]
                        model(inputs)
        else:
            run_pass(tracker, model, train, device, trainer.autocast)
            tracker.compute()
    passes = {"pass untracked": forward_pass(False), "pass tracked": forward_pass(True),
              "pass tracked (serial)": forward_pass(True, team=False),
              "pass tracked (torch)": forward_pass(True, fused=False)}

    print(title)
    if args.profile:
        print("\n".join(profile_update(device, batch) if cuda else compare_cpu_updates()) + "\n")
    print(f"{train_batches} training + {test_batches} test batches per epoch, {reps} interleaved repetitions "
          f"after one warm-up round")
    for fn in list(epochs.values()) + list(passes.values()):  # warm-up (cudnn autotune, allocator, caches)
        fn()
    times: dict[str, list[float]] = {name: [] for name in list(epochs) + list(passes)}
    cpu_times: dict[str, list[float]] = {name: [] for name in times}
    order = list(epochs)
    for rep in range(reps):
        rotated = order[rep % len(order):] + order[:rep % len(order)]
        for name in rotated:
            wall, cpu = timed(epochs[name], device)
            times[name].append(wall)
            cpu_times[name].append(cpu)
            print(f"  round {rep + 1}: {name} {wall:.3f} s", flush=True)
        pass_order = list(passes)
        for name in pass_order[rep % len(pass_order):] + pass_order[:rep % len(pass_order)]:
            wall, cpu = timed(passes[name], device)
            times[name].append(wall)
            cpu_times[name].append(cpu)

    base = statistics.median(times["untracked"])
    print(f"\n{'condition':<21}{'median s':>10}{'min s':>9}{'time ratio':>12}{'throughput':>12}")
    for name in epochs:
        med = statistics.median(times[name])
        print(f"{name:<21}{med:>10.3f}{min(times[name]):>9.3f}{med / base:>11.3f}x{base / med:>11.3f}x")
    pass_base = statistics.median(times["pass untracked"])
    for name in passes:
        med = statistics.median(times[name])
        print(f"{name:<21}{med:>10.3f}{min(times[name]):>9.3f}{med / pass_base:>11.3f}x{pass_base / med:>11.3f}x")
    print("\ntime ratio = median time / median untracked time (epoch rows) or / untracked pass (pass rows); "
          "throughput = its inverse")
    print_paired(times, cpu_times, [name for name in epochs if name != "untracked"], cuda)
    return 0


def print_paired(times: dict[str, list[float]], cpu_times: dict[str, list[float]], tracked: list[str],
                 cuda: bool) -> None:
    """Median of the per-round ratios tracked / untracked with its 95 % interval, against the target."""
    target, at_most = (0.90, False) if cuda else (1.10, True)
    kind = "throughput (untracked / tracked)" if cuda else "time (tracked / untracked)"
    rounds = len(times["untracked"])
    print(f"\npaired per round, {kind}, median [{interval_label(rounds)}] over {rounds} rounds, "
          f"target {'≥' if cuda else '≤'} {target:.2f}")
    print(f"{'condition':<21}{'wall':>27}{'verdict':>11}{'CPU time':>27}{'verdict':>11}")
    for name in tracked:
        cells = []
        for clock in (times, cpu_times):
            ratios = [(b / a if cuda else a / b) for a, b in zip(clock[name], clock["untracked"])]
            median, low, high = median_interval(ratios)
            verdict = paired_verdict(low, high, target, at_most, len(ratios))
            cells.append(f"{median:>10.3f}x [{low:.3f}, {high:.3f}]{verdict:>11}")
        print(f"{name:<21}" + "".join(cells))


if __name__ == "__main__":
    sys.exit(main())
