"""§7.2's convolutional autoencoder: Table 1's layers, training on the reconstruction loss, the project step's
loss per delta and reconstructions, unnormalised images, and the checks that keep class metrics away from it."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from phd_lab.datasets.digits import digits_tensors
from phd_lab.datasets.transforms import RGB_NORMALISATIONS, make_preprocessing
from phd_lab.objectives import OBJECTIVES, objective_of
from phd_lab.registry import Registries
from tests.conftest import main_in_process, read_metrics, run_folders, write_config

PNG = b"\x89PNG\r\n\x1a\n"
MODELS = Registries({}).models
AUTOENCODER = {"model": "conv_autoencoder", "model_args": {}, "metrics": [], "seed": 0, "epoch": 3,
               "dataset_args": {"normalization": "none"}}


def test_the_layers_are_those_of_table_1():
    model = MODELS.get("conv_autoencoder")(num_classes=10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (3, 16, (3, 3), (1, 1)), (16, 8, (3, 3), (1, 1)), (8, 8, (3, 3), (1, 1)),
        (8, 8, (3, 3), (1, 1)), (8, 8, (3, 3), (1, 1)), (8, 16, (3, 3), (1, 1)), (16, 3, (3, 3), (1, 1))]
    pools = [m for m in model.encoder if isinstance(m, nn.MaxPool2d)]
    ups = [m for m in model.decoder if isinstance(m, nn.Upsample)]
    assert [(p.kernel_size, p.stride) for p in pools] == [(2, 2)] * 3
    assert [(u.scale_factor, u.mode) for u in ups] == [(2.0, "nearest")] * 3
    assert isinstance(model.decoder[-1], nn.ReLU) and not any(isinstance(m, nn.Linear) for m in model.modules())
    encoding = model.encoder(torch.zeros(2, 3, 224, 224))
    assert encoding.shape == (2, 8, 28, 28) and model(torch.zeros(2, 3, 224, 224)).shape == (2, 3, 224, 224)
    gray = MODELS.get("conv_autoencoder")(num_classes=10, in_channels=1, output_activation="sigmoid")
    out = gray(torch.randn(4, 1, 16, 16))
    assert out.shape == (4, 1, 16, 16) and bool(((out > 0) & (out < 1)).all())
    assert isinstance(MODELS.get("conv_autoencoder")(num_classes=2, output_activation=None).decoder[-1], nn.Identity)
    with pytest.raises(ValueError, match="output_activation must be"):
        MODELS.get("conv_autoencoder")(num_classes=2, output_activation="tanh")


def test_the_reconstruction_loss_is_the_mean_squared_pixel_error_per_sample():
    model = MODELS.get("conv_autoencoder")(num_classes=10, in_channels=1)
    objective = objective_of(model)
    assert objective.name == "reconstruction" and not objective.uses_labels
    assert objective_of(nn.Linear(2, 2)) is OBJECTIVES["classification"]
    inputs, outputs = torch.rand(5, 1, 8, 8), torch.rand(5, 1, 8, 8)
    labels = torch.zeros(5, dtype=torch.long)
    per_sample = ((outputs - inputs) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(objective.loss(outputs, inputs, labels), per_sample.mean())
    torch.testing.assert_close(objective.loss(outputs, inputs, labels, reduction="sum"), per_sample.sum())


def test_unnormalised_images_lie_in_0_1_for_digits_and_the_image_datasets():
    raw, _ = digits_tensors(16, standardise=False)
    standardised, _ = digits_tensors(16)
    assert float(raw.tensors[0].min()) >= 0.0 and float(raw.tensors[0].max()) <= 1.0
    assert abs(float(standardised.tensors[0].mean())) < 1e-4
    rgb = make_preprocessing("Cifar10", resolution=32, normalisations=dict(RGB_NORMALISATIONS), normalization="none",
                             native=32, augment=False, canvas=False, downsample_then_upsample=None)
    assert tuple(rgb.mean) == (0.0, 0.0, 0.0) and tuple(rgb.std) == (1.0, 1.0, 1.0)
    gray = make_preprocessing("MNIST", resolution=28, normalisations={"mnist": ((0.1307,), (0.3081,))},
                              normalization="none", native=28, augment=False, canvas=False,
                              downsample_then_upsample=None)
    assert tuple(gray.mean) == (0.0,) and tuple(gray.std) == (1.0,)


def test_an_autoencoder_trains_on_its_reconstruction_and_its_projections_show_the_loss(tmp_path, capsys):
    config = write_config(tmp_path, resolution=16, **AUTOENCODER, post_processing=[
        "flops", {"name": "project", "deltas": [0.5, 0.9, 0.999]}, "extract", "analysis"])
    code, err = main_in_process(capsys, "--config", str(config))
    assert code == 0, err
    assert "no truncation cost measured" not in err  # it is not truncated: no receptive-field error to quote
    [run] = run_folders(tmp_path / "logs")
    metrics = read_metrics(run)
    assert not any("accuracy" in column for column in metrics.columns)
    assert {"features.0_train_saturation", "encoder.0_train_saturation"} & set(metrics.columns) == {
        "encoder.0_train_saturation"} and "decoder.9_test_saturation" in metrics.columns
    images = digits_tensors(16, standardise=False)[1].tensors[0]
    baseline = float((images ** 2).mean())  # the loss of an output that stays 0 (a dead ReLU output)
    losses = list(metrics["test_loss"])
    assert losses[-1] < losses[0] < baseline, (losses, baseline)

    table = pd.read_csv(run / "projections.csv")
    assert table["accuracy"].isna().all()
    unprojected = table[table["basis"] == "none"]["loss"].item()
    assert unprojected == pytest.approx(losses[-1], rel=1e-5)  # the trainer's evaluation, summed another way
    pca = table[table["basis"] == "pca"].set_index("delta")["loss"]
    random = table[table["basis"] == "random"].set_index("delta")["loss"]
    assert pca[0.999] < random[0.999] and pca[0.999] < pca[0.5]  # the thesis' ch. 7 on a trained model
    layers = pd.read_csv(run / "projections_layers.csv")
    assert list(layers.columns) == ["delta", "layer", "k", "features"] and len(layers) == 3 * 7
    encoding = layers[layers["layer"] == "encoder.6"]
    assert list(encoding["features"]) == [8, 8, 8] and list(encoding["k"]) == sorted(encoding["k"])
    assert (layers["k"] <= layers["features"]).all() and (layers["k"] >= 1).all()
    for name in ("projections.png", "projections_reconstructions.png"):
        assert (run / name).read_bytes().startswith(PNG)
    manifest = json.loads((run / "latents" / "manifest.json").read_text())
    assert manifest["model_test_accuracy"] is None and len(manifest["layers"]) == 7


@pytest.mark.parametrize("overrides, message", [
    ({**AUTOENCODER, "metrics": ["Accuracy"]},
     "model 'conv_autoencoder' is trained to reconstruct its input .* set \"metrics\": \\[\\]"),
    ({**AUTOENCODER, "resolution": 20}, "reconstructs 20x20 px inputs as 16x16 px.* a multiple of 8"),
    ({**AUTOENCODER, "model_args": {"output_activation": "tanh"}}, "output_activation must be"),
    ({"metrics": []}, "the key 'metrics' is an empty list; give at least one metric for classifier 'vgg11'"),
    ({**AUTOENCODER, "dataset_args": {"normalization": "mnist"}},
     "'normalization' of dataset 'Digits' must be null .* or \"none\""),
])
def test_settings_that_cannot_work_are_refused_before_training(tmp_path, capsys, overrides, message):
    config = write_config(tmp_path, **{"resolution": 16, **overrides})
    code, err = main_in_process(capsys, "--config", str(config), "--dry-run")
    said = " ".join(err.split())
    assert code == 2 and "Traceback" not in said, said
    assert re.search(message, said), said
    assert not (tmp_path / "logs").exists()


def test_classifiers_lose_nothing_by_the_objective(tmp_path, capsys):
    """The trainer's loss now comes from the model's objective: a classifier's CSV equals the cross-entropy of
    its logits, as before, and its projections keep an accuracy."""
    config = write_config(tmp_path, epoch=1, post_processing=[{"name": "project", "deltas": [0.9]}])
    code, err = main_in_process(capsys, "--config", str(config))
    assert code == 0, err
    [run] = run_folders(tmp_path / "logs")
    table = pd.read_csv(run / "projections.csv")
    assert table["accuracy"].notna().all()
    unprojected = table[table["basis"] == "none"]
    assert unprojected["loss"].item() == pytest.approx(read_metrics(run)["test_loss"].item(), rel=1e-5)
    assert unprojected["accuracy"].item() == pytest.approx(read_metrics(run)["test_accuracy"].item(), abs=1e-9)
    assert np.isfinite(pd.read_csv(run / "projections_layers.csv")["k"]).all()


def test_a_classifier_the_meta_device_cannot_build_still_needs_a_metric(tmp_path, capsys):
    """The metrics check moved to the model checks, which a model the meta device cannot build skipped: a
    torchvision RegNet with metrics [] passed the dry run and failed after its data were loaded."""
    config = write_config(tmp_path, model="tv:regnet_x_400mf", model_args={}, resolution=32, metrics=[])
    code, err = main_in_process(capsys, "--config", str(config), "--dry-run")
    assert code == 2 and "give at least one metric for classifier 'tv:regnet_x_400mf'" in " ".join(err.split())


@pytest.mark.parametrize("truncate", ["encoder.6", "border"])
def test_an_autoencoder_is_not_truncated(tmp_path, capsys, truncate):
    config = write_config(tmp_path, resolution=16, **{**AUTOENCODER, "model_args": {"truncate": truncate}})
    code, err = main_in_process(capsys, "--config", str(config), "--dry-run")
    said = " ".join(err.split())
    assert code == 2 and "'truncate' cuts a classifier" in said and "Traceback" not in said, said


MODELS_FILE = '''
import torch
from torch import nn


class ThreeChannels(nn.Module):
    """Declares a reconstruction but always gives 3 channels: on 1-channel images its loss would broadcast."""
    phd_lab_objective = "reconstruction"

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(x.expand(-1, 3, -1, -1))


class WithALossAttribute(nn.Module):
    """A classifier whose own attribute 'objective' means something else."""

    def __init__(self, num_classes):
        super().__init__()
        self.objective = nn.CrossEntropyLoss(label_smoothing=0.1)
        self.features = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


def three_channels(*, num_classes, in_channels=3):
    return ThreeChannels()


def with_a_loss_attribute(*, num_classes, in_channels=3):
    return WithALossAttribute(num_classes)


def bogus(*, num_classes, in_channels=3):
    model = WithALossAttribute(num_classes)
    model.phd_lab_objective = ["ce"]
    return model
'''


def test_models_of_a_users_registry_declare_their_objective_by_its_own_name(tmp_path, capsys):
    models = tmp_path / "my_models.py"
    models.write_text(MODELS_FILE)
    registries = {"models": str(models)}
    config = write_config(tmp_path, model="with_a_loss_attribute", model_args={}, epoch=1, registries=registries)
    code, err = main_in_process(capsys, "--config", str(config))
    assert code == 0, err  # its 'objective' attribute is its own business
    bogus = write_config(tmp_path, "bogus.json", model="bogus", model_args={}, registries=registries)
    code, err = main_in_process(capsys, "--config", str(bogus), "--dry-run")
    said = " ".join(err.split())
    assert code == 2 and "declares phd_lab_objective ['ce']; known objectives" in said and "Traceback" not in said
    shape = write_config(tmp_path, "shape.json", model="three_channels", model_args={}, metrics=[],
                         registries=registries)
    code, err = main_in_process(capsys, "--config", str(shape))
    said = " ".join(err.split())
    assert code == 1 and "reconstructs inputs of shape (128, 1, 16, 16) as outputs of shape (128, 3, 16, 16)" in said


DECLARED_BY_ITS_FUNCTION = '''
from torch import nn


class Plain(nn.Module):
    """An autoencoder whose class declares nothing: its registry function says what it is trained for."""

    def __init__(self, in_channels):
        super().__init__()
        self.encode = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.decode = nn.Conv2d(4, in_channels, 3, padding=1)

    def forward(self, x):
        return self.decode(self.encode(x).relu())


def plain_autoencoder(*, num_classes, in_channels=3):
    return Plain(in_channels)


plain_autoencoder.phd_lab_objective = "reconstruction"
'''


def test_a_reconstruction_declared_by_its_registry_function_alone_trains_on_its_reconstruction(tmp_path, capsys):
    """README: a model says it reconstructs 'on its class or its registry function'. Said on the function alone,
    the checks took it for a reconstruction (metrics []), but the trainer read the model's class and trained it on
    cross-entropy: a RuntimeError in its first batch."""
    models = tmp_path / "my_models.py"
    models.write_text(DECLARED_BY_ITS_FUNCTION)
    config = write_config(tmp_path, model="plain_autoencoder", model_args={}, metrics=[], epoch=1,
                          track_saturation=False, registries={"models": str(models)})
    code, err = main_in_process(capsys, "--config", str(config))
    assert code == 0, err
    [run] = run_folders(tmp_path / "logs")
    assert json.loads(next(run.glob("*_config.json")).read_text())["_meta"]["objective"] == "reconstruction"
    state = torch.load(next(run.glob("*-e1.pt")), weights_only=True)
    model = Registries({"models": str(models)}).models.get("plain_autoencoder")(num_classes=10, in_channels=1)
    model.load_state_dict(state["model"])
    _, test = digits_tensors(16)
    with torch.no_grad():
        error = float(((model(test.tensors[0]) - test.tensors[0]) ** 2).mean())
    assert read_metrics(run)["test_loss"].iloc[-1] == pytest.approx(error, rel=1e-5)


KEEPS_ITS_LAYERS_AS_MODULE = '''
from torch import nn


class KeepsItsLayersAsModule(nn.Module):
    """A reconstruction that keeps its layers in a submodule named ``module``, as a DataParallel keeps its model."""
    phd_lab_objective = "reconstruction"

    def __init__(self, in_channels):
        super().__init__()
        self.module = nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(),
                                    nn.Conv2d(4, in_channels, 3, padding=1))

    def forward(self, x):
        return self.module(x)


def module_autoencoder(*, num_classes, in_channels=3):
    return KeepsItsLayersAsModule(in_channels)
'''


def test_a_model_with_a_submodule_named_module_is_no_wrapper_and_keeps_its_own_objective(tmp_path, capsys):
    """objective_of took any model with a ``module`` attribute for a DataParallel and read the submodule's objective:
    this reconstruction was refused as a 'classifier' whose metrics must not be empty."""
    models = tmp_path / "my_models.py"
    models.write_text(KEEPS_ITS_LAYERS_AS_MODULE)
    config = write_config(tmp_path, model="module_autoencoder", model_args={}, metrics=[], epoch=1,
                          track_saturation=False, registries={"models": str(models)})
    code, err = main_in_process(capsys, "--config", str(config), "--dry-run")
    assert code == 0 and "classifier" not in err, err
    model = Registries({"models": str(models)}).models.get("module_autoencoder")(num_classes=10, in_channels=1)
    assert objective_of(model).name == objective_of(nn.DataParallel(model)).name == "reconstruction"
    assert objective_of(nn.DataParallel(nn.Linear(2, 2))).name == "classification"


def test_the_analysis_gives_a_reconstruction_none_of_the_classifier_guidelines(tmp_path, capsys):
    config = write_config(tmp_path, resolution=16, **{**AUTOENCODER, "epoch": 1}, post_processing=["analysis"])
    code, err = main_in_process(capsys, "--config", str(config))
    assert code == 0, err
    [run] = run_folders(tmp_path / "logs")
    logged = json.loads(next(run.glob("*_config.json")).read_text())
    assert logged["_meta"]["objective"] == "reconstruction"
    analysis = json.loads((run / "analysis.json").read_text())
    assert analysis["run"]["objective"] == "reconstruction"
    assert [advice["kind"] for advice in analysis["recommendations"]] == ["objective"]


def test_a_factory_argument_added_with_a_null_default_is_no_setup_difference(tmp_path, capsys):
    """Digits gained 'normalization' (null: standardised, as before): every earlier Digits run warned on a rerun
    that its default 'may not be the one that was trained'."""
    config = write_config(tmp_path, epoch=1)
    assert main_in_process(capsys, "--config", str(config))[0] == 0
    [run] = run_folders(tmp_path / "logs")
    logged_path = next(run.glob("*_config.json"))
    logged = json.loads(logged_path.read_text())
    del logged["_meta"]["defaults_in_effect"]["dataset_args"]["normalization"]  # as an earlier version logged it
    logged_path.write_text(json.dumps(logged))
    code, err = main_in_process(capsys, "--config", str(logged_path))
    assert code == 0 and "normalization" not in err, err
    logged["_meta"]["defaults_in_effect"]["dataset_args"]["normalization"] = "none"  # a real difference is said
    logged_path.write_text(json.dumps(logged))
    code, err = main_in_process(capsys, "--config", str(logged_path))
    assert code == 0 and "the dataset_args default normalization: \"none\" (now null)" in " ".join(err.split()), err


class _GrayReconstruction(nn.Module):
    """Reconstructs an image at its size but with one channel: the channels, not the resolution, are wrong."""
    phd_lab_objective = "reconstruction"

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_a_reconstruction_with_other_channels_is_refused_for_its_channels_not_its_resolution(tmp_path):
    from phd_lab.errors import ConfigError
    from phd_lab.grid import Grid
    from phd_lab.model_checks import check_objective
    cfg = Grid({"model": "vgg11", "dataset": "Digits", "metrics": [], "resolution": 16, "logs_dir": str(tmp_path)},
               "test.json")[0]
    with pytest.raises(ConfigError) as error:
        check_objective(cfg, _GrayReconstruction())
    message = " ".join(str(error.value).split())
    assert ("reconstructs inputs of shape (3, 16, 16) (channels, height, width) as outputs of shape (1, 16, 16)"
            in message)
    assert "use another 'resolution'" not in message and "16x16 px" not in message
