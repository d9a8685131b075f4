"""Model errors that only a forward pass, a truncation or the trainer's single output reveal are refused before any
grid point trains: exit 2, a message naming the config, the key and what it takes, and no run folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import main_in_process, run_folders, write_config


def refused(capsys: pytest.CaptureFixture, tmp_path: Path, config: Path) -> str:
    """The message of a config a dry run and a real run both refuse (exit 2) without creating a run folder."""
    messages = []
    for extra in (("--dry-run",), ()):
        code, err = main_in_process(capsys, "--config", str(config), *extra)
        assert code == 2, err
        assert str(config) in err
        messages.append(" ".join(err.split()))
    assert run_folders(tmp_path / "logs") == []
    assert "Traceback" not in messages[1]
    return messages[1]


@pytest.mark.parametrize("resolution", [16, 64])
def test_a_resolution_the_model_cannot_take_without_a_size_message_is_refused_up_front(tmp_path, capsys,
                                                                                        resolution):
    # MaxViT's window partition fails with a reshape error, not one of torch's "too small" messages
    config = write_config(tmp_path, model="tv:maxvit_t", model_args={}, resolution=resolution, batch_size=2)
    message = refused(capsys, tmp_path, config)
    assert f"'resolution' {resolution} does not suit model 'tv:maxvit_t'" in message
    assert "is invalid for input of size" in message
    assert "runs at 224x224 px" in message


def test_truncating_where_no_feature_map_is_left_is_refused_before_any_point_trains(tmp_path, capsys):
    # the valid point comes first: it must not train before the bad one is found
    config = write_config(tmp_path, model_args=[{"width": 0.0625, "truncate": "features.10"},
                                                {"width": 0.0625, "truncate": "classifier.2"}])
    message = refused(capsys, tmp_path, config)
    assert "model_args 'truncate'" in message
    assert "Cannot truncate at 'classifier.2'" in message and "2-d tensor, not a (N, C, H, W) feature map" in message
    assert "Layers it can be truncated at" in message and "features.1, features.2" in message


@pytest.mark.parametrize("model", ["tv:googlenet", "tv:inception_v3"])
def test_auxiliary_classifiers_are_refused_up_front(tmp_path, capsys, model):
    config = write_config(tmp_path, model=model, model_args={"aux_logits": True}, resolution=96)
    message = refused(capsys, tmp_path, config)
    assert f"model {model!r} cannot be built with model_args" in message
    assert "the trainer uses a single output" in message and "'aux_logits' must be false" in message


@pytest.mark.parametrize("training", [True, False])
def test_the_checks_leave_the_shared_meta_model_in_the_mode_they_found_it(tmp_path, training):
    """The meta model is shared by the checks of every grid point; each forward pass sets the mode it needs and
    restores the one it found."""
    import torch

    from phd_lab.grid import Grid
    from phd_lab.model_checks import check_input_size, check_single_sample_batches
    from registries.models import resnet18
    cfg = Grid({"model": "resnet18", "dataset": "Digits", "batch_size": 1, "resolution": 32,
                "logs_dir": str(tmp_path)}, "test.json")[0]
    with torch.device("meta"):
        model = resnet18(num_classes=10, width=0.125, stem="cifar").train(training)
    for check in (check_input_size, check_single_sample_batches):
        check(cfg, model)
        assert all(m.training == training for m in model.modules()), check.__name__
