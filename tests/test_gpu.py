"""CUDA-only checks: mixed-precision training with checkpoints, the tracker and lbfgs-torch on a GPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from phd_lab.cli import main_cli
from tests.conftest import read_metrics, run_folders, run_name, write_config

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="Requires: [cuda]")]


def test_cuda_training_with_mixed_precision_checkpoints_and_resume(tmp_path):
    config = write_config(tmp_path, dataset="FakeData", device="cuda", resolution=32, epoch=2,
                          model="resnet18_cifar", model_args={"width": 0.25}, batch_size=64,
                          post_processing=["receptive_field", "flops", "extract"])
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [folder] = run_folders(tmp_path / "logs")
    state = torch.load(folder / f"{run_name(folder)}.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 2 and state["scaler"]  # the grad scaler is part of the checkpoint
    assert "cuda" in state["rng"]
    metrics = read_metrics(folder)
    assert len(metrics) == 2 and np.isfinite(metrics["train_loss"]).all()
    assert "conv1_train_saturation" in metrics.columns
    manifest = json.loads((folder / "latents" / "manifest.json").read_text())
    assert manifest["layers"]
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0  # finished: skips to post-processing


def test_cuda_run_with_a_border_measures_its_truncation_savings(tmp_path):
    """VGG11 at 32 px has a border layer: the flops step truncates the trained (CUDA) model there."""
    config = write_config(tmp_path, device="cuda", resolution=32, epoch=1, model_args={"width": 0.125},
                          post_processing=["receptive_field", "flops"])
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [folder] = run_folders(tmp_path / "logs")
    [info] = folder.glob("*computational_info.json")
    assert json.loads(info.read_text())["truncation"]["border"] == "features.18"


def test_lbfgs_torch_on_cuda_matches_cpu(tmp_path):
    from phd_lab.probes.fit import probe_layer
    from phd_lab.probes.settings import ProbeSettings
    from tests.probe_latents import blob_layers, make_latents
    layers, y_train, y_eval = blob_layers(n_layers=1, n=400, d=16, classes=4)
    _, latents = make_latents(tmp_path, layers, y_train, y_eval)
    manifest = json.loads((latents / "manifest.json").read_text())
    entry = manifest["layers"][0]
    args = (entry["index"], entry["name"], str(latents / entry["train"]), str(latents / entry["eval"]),
            str(latents / manifest["labels"]["train"]), str(latents / manifest["labels"]["eval"]))
    cpu = probe_layer(*args, ProbeSettings(solver="lbfgs-torch", device="cpu").resolved())
    gpu = probe_layer(*args, ProbeSettings(solver="lbfgs-torch", device="cuda").resolved())
    assert abs(cpu.eval_acc - gpu.eval_acc) <= 0.01


@pytest.mark.parametrize("dtype", ["<f4", "<f2", "<f8", ">f4", ">f2"])
def test_latents_reach_the_gpu_unchanged(tmp_path, dtype):
    """The upload (float16/float64 blocks converted on the GPU) gives the float32 values the CPU path gives, for
    float16/32/64 and big-endian files, over many blocks and a short last one."""
    from phd_lab.probes.fit import load_array, to_device_float32
    values = np.random.default_rng(1).standard_normal((203, 48)) * 300
    np.save(tmp_path / "x.npy", values.astype(dtype))
    mapped = load_array(tmp_path / "x.npy")
    expected = to_device_float32(mapped, "cpu")
    for block_bytes in (1, 48 * 8 * 10, 1 << 25):  # one row per block, ten, all
        uploaded = to_device_float32(mapped, "cuda", block_bytes=block_bytes)
        assert uploaded.dtype == torch.float32 and uploaded.is_cuda
        assert torch.equal(uploaded.cpu(), expected), block_bytes
    assert to_device_float32(mapped[:0], "cuda").shape == (0, 48)


def test_cuda_covariance_of_large_feature_maps_equals_numpy():
    from phd_lab.tracking.covariance import CovarianceAccumulator
    torch.manual_seed(0)
    maps = torch.randn(16, 24, 40, 40, dtype=torch.float32) * 3 + 5  # 25,600 positions, large mean
    accumulator = CovarianceAccumulator(24, "cuda")
    accumulator.update_maps(maps.cuda())
    rows = maps.permute(0, 2, 3, 1).reshape(-1, 24).double().numpy()
    expected = np.cov(rows, rowvar=False, bias=True)
    got = accumulator.covariance().cpu().numpy()
    assert np.abs(got - expected).max() / np.abs(expected).max() <= 1e-10


def _training_steps_with_tracker(steps: int, **options: object) -> tuple[dict[str, torch.Tensor], object]:
    """bf16-autocast training steps of a small CUDA ResNet with an inline tracker (training batches)."""
    from phd_lab.tracking import SaturationTracker
    from registries.models import resnet18_cifar
    from tests.test_tracking import observation_rows
    torch.manual_seed(0)
    model = resnet18_cifar(num_classes=10, in_channels=3, width=0.25).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(1)
    tracker = SaturationTracker(model, 0.99, when=lambda m: m.training, **options)
    outputs: dict[str, list[torch.Tensor]] = {}
    probes = [module.register_forward_hook(lambda m, i, o, n=name: outputs.setdefault(n, []).append(o.detach().clone()))
              for name, module in model.named_modules() if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear))]
    model.train()
    for _ in range(steps):
        inputs = torch.randn(64, 3, 32, 32, generator=generator).cuda()
        labels = torch.randint(0, 10, (64,), generator=generator).cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for probe in probes:
        probe.remove()
    covariances = {name: tracker.covariance(name).cpu() for name in tracker.layer_names}
    frame = tracker.compute()
    tracker.close()
    return covariances, (frame, {name: observation_rows(parts) for name, parts in outputs.items()})


def test_tracking_bf16_training_on_cuda_equals_the_float64_definition():
    """Inline tracking of bf16-autocast training steps on the GPU equals np.cov of the bf16
    activations the layers really produced (≤ 1e-10), and a second run gives the same bits."""
    exact, (frame, acts) = _training_steps_with_tracker(6)
    again, (again_frame, _) = _training_steps_with_tracker(6)
    assert list(exact) == list(again) and len(exact) == 21
    for name, cov in exact.items():
        expected = np.cov(acts[name], rowvar=False, bias=True)
        assert torch.equal(cov, again[name]), name
        assert np.linalg.norm(cov.numpy() - expected) <= 1e-10 * np.linalg.norm(expected), name
    assert frame.equals(again_frame)


def test_a_cuda_run_leaves_the_callers_cudnn_autotuner_setting(tmp_path):
    """A CUDA run turns cuDNN's autotuner on for itself; it stayed on in the calling process (a notebook) after."""
    torch.backends.cudnn.benchmark = False
    config = write_config(tmp_path, device="cuda", epoch=1, track_saturation=False)
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    assert torch.backends.cudnn.benchmark is False
