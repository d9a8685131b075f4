"""The fused CPU covariance kernel (numba) against numpy and against the torch path it replaces."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from phd_lab.tracking import SaturationTracker, fused_gram, openmp_team
from phd_lab.tracking.covariance import CovarianceAccumulator


def relu_maps(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Post-ReLU-like maps: many exact zeros, a mean of the order of the spread, per-channel scales."""
    generator = torch.Generator().manual_seed(seed)
    scales = torch.rand(shape[1], generator=generator)[None, :, None, None] * 3 + 0.1
    return (torch.randn(shape, generator=generator) * scales + 0.5).relu().to(dtype)


def np_cov(batches: list[torch.Tensor]) -> np.ndarray:
    rows = torch.cat([b.permute(0, 2, 3, 1).reshape(-1, b.shape[1]) for b in batches]).double().numpy()
    return np.cov(rows, rowvar=False, bias=True)


def accumulated(batches: list[torch.Tensor], use_fused: bool = True) -> CovarianceAccumulator:
    accumulator = CovarianceAccumulator(batches[0].shape[1])
    with fused_gram.switched(use_fused):
        for maps in batches:
            accumulator.update_maps(maps)
    return accumulator


def rel_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(64, 16, 32, 32), (25, 13, 32, 32), (64, 30, 16, 16), (64, 128, 4, 4),
                                   (64, 256, 2, 2)])
def test_fused_updates_equal_np_cov(shape: tuple[int, int, int, int], dtype: torch.dtype) -> None:
    """Channel counts that are not a multiple of the 4-row register block (13, 30) included; several
    batches: the first one's mean becomes the shift of all of them."""
    batches = [relu_maps(shape, seed, dtype) for seed in range(3)]
    assert fused_gram.applies(batches[1])
    accumulator = accumulated(batches)
    expected = np_cov(batches)
    covariance = accumulator.covariance().numpy()
    assert rel_error(covariance, expected) <= 1e-10
    assert np.array_equal(covariance, covariance.T)
    mean = torch.cat([b.double().mean(dim=(0, 2, 3))[None] for b in batches]).mean(0)
    assert torch.allclose(accumulator.mean, mean, rtol=1e-12, atol=1e-12)
    assert accumulator.n == 3 * shape[0] * shape[2] * shape[3]


@pytest.mark.parametrize("shape", [(65, 128, 4, 4), (8, 16, 17, 17), (3, 6, 1, 1), (1, 5, 9, 9), (2, 7, 300, 1),
                                   (5, 3, 16, 16)])
def test_partly_filled_tiles_and_groups_of_maps(shape: tuple[int, int, int, int], monkeypatch) -> None:
    """Shapes whose positions do not fill the last tile, or whose maps do not fill the last group of
    small maps in a tile (a kernel that counted the full tile passed every evenly dividing shape)."""
    monkeypatch.setattr(fused_gram, "MIN_WORK", 0)  # small shapes on the kernel too
    batches = [relu_maps(shape, seed) for seed in range(3)]
    assert fused_gram.applies(batches[0])
    assert rel_error(accumulated(batches).covariance().numpy(), np_cov(batches)) <= 1e-10


def test_a_full_torch_gram_then_fused_updates() -> None:
    """The first batch is too small for the kernel (torch path, full Gram); the later ones add to the
    lower triangle only."""
    batches = [relu_maps((1, 16, 8, 8), 0)] + [relu_maps((64, 16, 32, 32), seed) for seed in range(1, 3)]
    assert not fused_gram.applies(batches[0]) and fused_gram.applies(batches[1])
    assert rel_error(accumulated(batches).covariance().numpy(), np_cov(batches)) <= 1e-10


def test_fused_and_torch_paths_agree_and_mix() -> None:
    """A short last batch below the work threshold takes the torch path in the same accumulator;
    both paths keep the Gram's lower triangle, which is all that is read."""
    batches = [relu_maps((64, 16, 32, 32), seed) for seed in range(2)] + [relu_maps((2, 16, 32, 32), 7)]
    assert fused_gram.applies(batches[1]) and not fused_gram.applies(batches[2])
    with_kernel, without = accumulated(batches, True), accumulated(batches, False)
    expected = np_cov(batches)
    assert rel_error(with_kernel.covariance().numpy(), expected) <= 1e-10
    assert rel_error(without.covariance().numpy(), expected) <= 1e-10
    assert not torch.equal(with_kernel.covariance(), without.covariance())  # two paths, two summation orders
    assert fused_gram._compiled is not None  # the kernel really ran


def test_large_mean_and_drifting_batches_stay_exact() -> None:
    """The shift of the first batch is what keeps the float64 sums exact when the mean is far larger
    than the spread; the fused kernel subtracts it in float64 before any product."""
    generator = torch.Generator().manual_seed(3)
    batches = [(torch.randn(64, 16, 16, 16, generator=generator, dtype=torch.float64) + 1e6 + 0.5 * i)
               for i in range(4)]
    assert fused_gram.applies(batches[1])
    assert rel_error(accumulated(batches).covariance().numpy(), np_cov(batches)) <= 1e-10


def test_result_does_not_depend_on_the_thread_count() -> None:
    batches = [relu_maps((64, 32, 16, 16), seed) for seed in range(3)]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = accumulated(batches).covariance()
        torch.set_num_threads(2)
        two = accumulated(batches).covariance()
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


def test_strided_maps_and_non_finite_values() -> None:
    """channels_last maps give the same sums; a NaN or inf reaches the covariance as NaN (the tracker
    then reports NaN saturation with a warning), never as a finite wrong number."""
    batches = [relu_maps((64, 16, 32, 32), seed) for seed in range(2)]
    strided = [b.contiguous(memory_format=torch.channels_last) for b in batches]
    assert torch.equal(accumulated(batches).covariance(), accumulated(strided).covariance())
    for bad in (float("nan"), float("inf")):
        broken = batches[1].clone()
        broken[3, 5, 7, 9] = bad
        covariance = accumulated([batches[0], broken]).covariance()
        assert torch.isnan(covariance[5]).any() and torch.isfinite(covariance[:5, :5]).all()


def test_paths_the_kernel_leaves_to_torch() -> None:
    maps = torch.zeros(64, 16, 32, 32)
    assert fused_gram.applies(maps)
    assert not fused_gram.applies(maps.bfloat16())  # no bfloat16 in numpy: the torch path converts
    assert not fused_gram.applies(torch.zeros(64, fused_gram.MAX_CHANNELS + 4, 4, 4))
    assert not fused_gram.applies(torch.zeros(8, 8, 8, 8))  # too little work to compile for
    with fused_gram.switched(False):
        assert not fused_gram.applies(maps)


def test_tracker_on_a_real_conv_layer_uses_the_kernel_and_equals_np_cov() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 24, 3, padding=1)).eval()
    data = [relu_maps((16, 3, 32, 32), seed) for seed in range(3)]
    outputs: dict[str, list[torch.Tensor]] = {"0": [], "2": []}
    handles = [model[int(name)].register_forward_hook(lambda m, i, o, n=name: outputs[n].append(o.clone()))
               for name in outputs]
    tracker = SaturationTracker(model, 0.99)
    with torch.no_grad():
        for batch in data:
            model(batch)
    for handle in handles:
        handle.remove()
    assert all(fused_gram.applies(parts[0]) for parts in outputs.values())
    for name, parts in outputs.items():
        assert rel_error(tracker.covariance(name).numpy(), np_cov(parts)) <= 1e-10
    tracker.close()


def test_without_numba_tracking_takes_the_torch_path_with_one_warning() -> None:
    """A Python that numba does not support yet must still track: a real interpreter in which
    ``import numba`` fails, tracking a layer that would otherwise take the kernel."""
    script = (
        "import logging, sys, numpy as np, torch\n"
        "sys.modules['numba'] = None  # import numba now raises ImportError\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "from phd_lab.tracking import fused_gram\n"
        "from phd_lab.tracking.covariance import CovarianceAccumulator\n"
        "maps = [torch.randn(64, 16, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)]\n"
        "acc = CovarianceAccumulator(16)\n"
        "for m in maps: acc.update_maps(m)\n"
        "rows = torch.cat([m.permute(0, 2, 3, 1).reshape(-1, 16) for m in maps]).double().numpy()\n"
        "err = np.abs(acc.covariance().numpy() - np.cov(rows, rowvar=False, bias=True)).max()\n"
        "assert err < 1e-10, err\n"
        "assert fused_gram._compiled is None and not fused_gram.applies(maps[0])\n"
        "print('tracked')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "tracked"
    assert done.stderr.count("fused CPU covariance kernel is off") == 1, done.stderr


@pytest.mark.parametrize("delta", [0.9, 0.99, 0.999])
def test_saturations_with_and_without_the_kernel_are_identical(delta: float) -> None:
    """What the analysis reads: intrinsic dimension and saturation of every layer, tracked over the same
    batches once with the kernel and once on the torch path."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1)).eval()
    data = [relu_maps((16, 3, 32, 32), seed) for seed in range(3)]
    frames = []
    for use_fused in (True, False):
        tracker = SaturationTracker(model, delta)
        with fused_gram.switched(use_fused), torch.no_grad():
            for batch in data:
                model(batch)
        frames.append(tracker.compute())
        tracker.close()
    assert fused_gram.applies(torch.zeros(16, 64, 16, 16))  # every layer here takes the kernel
    for column in ("intrinsic_dimension", "saturation", "feature_dimension", "n"):
        assert frames[0][column].tolist() == frames[1][column].tolist(), column
    assert np.allclose(frames[0]["trace"], frames[1]["trace"], rtol=1e-12)


KERNEL_CACHE_SCRIPT = (
    "import hashlib, torch\n"
    "from phd_lab.tracking import fused_gram\n"
    "from phd_lab.tracking.covariance import CovarianceAccumulator\n"
    "acc = CovarianceAccumulator(16)\n"
    "for i in range(2): acc.update_maps(torch.randn(64, 16, 32, 32, generator=torch.Generator().manual_seed(i)))\n"
    "assert fused_gram._compiled is not None  # the kernel really ran\n"
    "stats = fused_gram._compiled.stats\n"
    "print(sum(stats.cache_hits.values()), sum(stats.cache_misses.values()),\n"
    "      hashlib.sha256(acc.covariance().numpy().tobytes()).hexdigest())\n")


def test_the_compiled_kernel_is_cached_on_disk_for_the_next_process(tmp_path: Path) -> None:
    """Every process that tracked on the CPU compiled the kernel again (2-3 s of each run of a grid or
    SLURM array): the second of two real interpreters now loads the first one's machine code from
    numba's disk cache, and sums to the same bits."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    done = [subprocess.run([sys.executable, "-c", KERNEL_CACHE_SCRIPT], capture_output=True, text=True,
                           timeout=120, env=env, cwd=Path(__file__).resolve().parents[1]) for _ in range(2)]
    assert all(run.returncode == 0 for run in done), [run.stderr for run in done]
    (first_hits, first_misses, first_sum), (second_hits, second_misses, second_sum) = (
        run.stdout.split() for run in done)
    assert (first_hits, first_misses) == ("0", "1")
    assert (second_hits, second_misses) == ("1", "0")
    assert first_sum == second_sum


INTERRUPTED_IMPORT = ("try:\n"
                      "    raise KeyboardInterrupt  # where a Ctrl-C lands in a compiled module's initialisation\n"
                      "except KeyboardInterrupt as landed:\n"
                      "    raise ImportError('initialization failed') from landed\n")


def test_a_ctrl_c_as_numba_is_first_imported_stops_tracking_instead_of_turning_the_kernel_off(tmp_path) -> None:
    """numba is imported as the first layer is tracked (a second or more): a Ctrl-C that its compiled modules'
    import turned into "ImportError: initialization failed" was taken for a Python without numba, so the kernel was
    off for the rest of the process with a warning, and the run went on training. A real interpreter whose
    ``import numba`` raises what such an import raises (a stand-in module first on its path)."""
    (tmp_path / "numba.py").write_text(INTERRUPTED_IMPORT)
    script = (
        "import torch\n"
        "from phd_lab.tracking import fused_gram\n"
        "try:\n"
        "    fused_gram.applies(torch.zeros(64, 16, 32, 32))\n"
        "except KeyboardInterrupt:\n"
        "    print('stopped', fused_gram._numba_missing)\n")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=root,
                          env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{root}"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "stopped None", done.stdout  # not remembered as missing: tried again later
    assert "fused CPU covariance kernel is off" not in done.stderr, done.stderr


@pytest.mark.skipif(openmp_team._gomp_parallel() is None, reason="torch's threads are no OpenMP team here")
@pytest.mark.parametrize("shape", [(64, 16, 32, 32), (64, 13, 32, 32), (40, 30, 16, 16), (64, 256, 2, 2)])
def test_torch_s_threads_share_an_update_with_the_bits_of_one_thread(shape: tuple[int, int, int, int]) -> None:
    """On two intra-op threads, a large float32 update runs on torch's OpenMP team: each thread sums a chunk
    of the positions (or a run of the triangle's register blocks of one chunk) into the chunk's own sums,
    which are added in chunk order; so the Gram and the totals have the bits of the chunks summed one after
    the other on one thread, also when the chunks are cut into more parts than threads (each thread claims
    work until none is left: what a team smaller than asked for, e.g. under OMP_THREAD_LIMIT, relies on)."""
    maps = relu_maps(shape, 5)
    values = maps.reshape(shape[0], shape[1], -1).numpy()
    shift = values[:8].mean(axis=(0, 2), dtype=np.float64)  # not the overall mean: the totals are not zero
    tile = 256 if shape[1] <= 128 else 128

    def update(parts: int | None, team: bool = True) -> tuple[np.ndarray, np.ndarray]:
        gram, total = torch.zeros(shape[1], shape[1], dtype=torch.float64), torch.zeros(shape[1], dtype=torch.float64)
        if parts is None:  # the public entry: chunks on the team, or one after the other on the calling thread
            with fused_gram.switched(True, team=team):
                fused_gram.accumulate(maps, torch.from_numpy(shift), gram, total)
        else:
            grams, totals = np.zeros((fused_gram.CHUNKS, shape[1], shape[1])), np.zeros((fused_gram.CHUNKS, shape[1]))
            tiles = fused_gram._kernel_module().tile_count(shape[0], values.shape[2], tile)
            fused_gram._on_team(values, shift, grams, totals, tile, tiles, 2, parts)
            gram, total = torch.from_numpy(grams.sum(axis=0)), torch.from_numpy(totals.sum(axis=0))
        return np.tril(gram.numpy()), total.numpy()

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert openmp_team.team_size() == 2 and fused_gram._chunked(values)
        assert not fused_gram._chunked(values.astype(np.float64))  # float64 maps stay on the calling thread
        assert not fused_gram._chunked(values[:1, :, :4])  # too little work to wake the team for
        alone, *shared = [update(None, team=False)] + [update(None)] + [update(parts) for parts in (1, 2, 3, 7, 1000)]
        torch.set_num_threads(1)
        shared.append(update(None))
    finally:
        torch.set_num_threads(threads)
    for gram, total in shared:
        assert np.array_equal(gram, alone[0]) and np.array_equal(total, alone[1])
    rows = values.transpose(0, 2, 1).reshape(-1, shape[1]).astype(np.float64)
    gram = alone[0] + np.tril(alone[0], -1).T
    expected = (rows - shift).T @ (rows - shift)
    assert rel_error(gram, expected) <= 1e-10
    assert np.allclose(alone[1], (rows - shift).sum(axis=0), rtol=1e-9, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_first_batch_s_channel_sums_are_float64_sums_of_every_position(dtype: torch.dtype) -> None:
    """The shift's sums (numba, one thread) equal numpy's float64 sums; channels_last maps included."""
    maps = relu_maps((9, 7, 13, 11), 3, dtype) * 1e4
    expected = maps.double().sum(dim=(0, 2, 3)).numpy()
    for layout in (maps, maps.to(memory_format=torch.channels_last)):
        sums = fused_gram.channel_sums(layout)
        assert sums.dtype == torch.float64 and np.allclose(sums.numpy(), expected, rtol=1e-13, atol=0)
