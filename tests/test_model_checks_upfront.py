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


OWN_MODELS = '''
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes, in_channels, returns):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.fc = nn.Linear(4, num_classes)
        self.returns = returns

    def forward(self, x):
        features = self.conv(x).mean((2, 3))
        scores = self.fc(features)
        if self.returns == "dict":
            return {"logits": scores}
        if self.returns == "aux in training" and self.training:
            return scores, features
        if self.returns == "3-d scores":
            return scores[:, None, :]
        if self.returns == "features":
            return features
        return scores


def net(*, num_classes, in_channels=3, returns="scores"):
    return Net(num_classes, in_channels, returns)
'''


@pytest.mark.parametrize(("returns", "described", "mode"), [
    ("dict", "a dict (keys 'logits')", "training"),
    ("aux in training", "a tuple of 2 (a tensor of shape (2, 10), a tensor of shape (2, 4))", "training"),
    ("3-d scores", "a tensor of shape (2, 1, 10)", "training"),
])
def test_a_model_that_does_not_return_one_tensor_of_scores_is_refused_up_front(tmp_path, capsys, returns, described,
                                                                               mode):
    """Such a model failed at its first training step ('cross_entropy_loss(): argument 'input' must be Tensor, not
    dict', 'Target 6 is out of bounds') after its run folder was made."""
    (tmp_path / "my_models.py").write_text(OWN_MODELS)
    config = write_config(tmp_path, model="net", model_args={"returns": returns}, registries={"models": "my_models.py"})
    message = refused(capsys, tmp_path, config)
    assert f"model 'net' returns {described} from forward() in {mode} mode" in message
    assert "one tensor of scores of shape (batch, classes), here (2, 10)" in message
    assert "with num_classes=10 as a stand-in for the data's classes" in message  # not a class count to wonder at



def test_scores_of_another_number_than_the_data_s_classes_are_refused_before_the_run_folder(tmp_path, capsys):
    """A model returning (batch, k) scores, k not the data's classes (its features), failed at its first batch
    ('Target 6 is out of bounds'); only the data set tells the classes, so a dry run cannot refuse it."""
    (tmp_path / "my_models.py").write_text(OWN_MODELS)
    config = write_config(tmp_path, model="net", model_args={"returns": "features"},
                          registries={"models": "my_models.py"})
    code, err = main_in_process(capsys, "--config", str(config))
    message = " ".join(err.split())
    assert code == 2 and "Traceback" not in message and run_folders(tmp_path / "logs") == []
    assert "model 'net' returns a tensor of shape (2, 4) from forward() in training mode" in message
    assert "(2, 10) for a batch of 2 and the 10 classes of dataset 'Digits'" in message


def test_a_model_made_for_the_data_s_classes_is_not_refused_for_the_placeholder_s(tmp_path, capsys):
    """A factory that ignores num_classes and makes the 4 outputs of a 4-class data set was refused up front: it
    did not return the placeholder's 10 scores."""
    (tmp_path / "my_models.py").write_text(OWN_MODELS + "\n\ndef four_way(*, num_classes, in_channels=3):\n"
                                           "    return Net(4, in_channels, 'scores')\n")
    config = write_config(tmp_path, model="four_way", model_args={}, registries={"models": "my_models.py"},
                          dataset="FakeData", epoch=1,
                          dataset_args={"num_classes": 4, "train_size": 8, "test_size": 4})
    code, err = main_in_process(capsys, "--config", str(config))
    assert code == 0, err


GREY_MODELS = """
from torch import nn


def grey_flat(*, num_classes, in_channels=3):
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 32 * 32, num_classes))
"""


@pytest.mark.parametrize(("returns", "described"), [
    ("aux in training", "a tuple of 2 (a tensor of shape (2, 10), a tensor of shape (2, 4))"),
    ("3-d scores", "a tensor of shape (2, 1, 10)"),
])
def test_a_model_made_for_the_data_s_grey_channel_that_does_not_return_scores_is_refused_before_the_run_folder(
        tmp_path, capsys, returns, described):
    """The single-output check ran on placeholder RGB images alone: a model built for grey Digits whatever
    in_channels says failed there, so the tuple or 3-d scores it returns failed its first training step
    ('cross_entropy_loss(): argument 'input' must be Tensor, not tuple', exit 1) in a run folder made for it."""
    (tmp_path / "my_models.py").write_text(
        OWN_MODELS + "\n\ndef grey(*, num_classes, in_channels=3, returns='scores'):\n"
        "    return Net(num_classes, 1, returns)\n")
    config = write_config(tmp_path, model="grey", model_args={"returns": returns},
                          registries={"models": "my_models.py"})
    code, err = main_in_process(capsys, "--config", str(config))
    message = " ".join(err.split())
    assert code == 2 and "Traceback" not in message and run_folders(tmp_path / "logs") == [], err
    assert f"model 'grey' returns {described} from forward() in training mode" in message
    assert "(2, 10) for a batch of 2 and the 10 classes of dataset 'Digits'" in message


def test_a_model_made_for_the_data_s_grey_channel_at_another_resolution_is_refused_before_the_run_folder(
        tmp_path, capsys):
    """Its Linear after a Flatten, made for 32 px, failed the first batch of 16 px Digits ('mat1 and mat2 shapes
    cannot be multiplied', exit 1) in a run folder of its own: the size check ran on placeholder RGB images, which
    the grey first layer refuses. At its own 32 px it trains."""
    (tmp_path / "my_models.py").write_text(GREY_MODELS)
    config = write_config(tmp_path, model="grey_flat", model_args={}, registries={"models": "my_models.py"})
    code, err = main_in_process(capsys, "--config", str(config))
    message = " ".join(err.split())
    assert code == 2 and "Traceback" not in message and run_folders(tmp_path / "logs") == [], err
    assert "model 'grey_flat' cannot take 16x16 px inputs: a Linear layer of it gets another number of features" \
           in message
    config = write_config(tmp_path, model="grey_flat", model_args={}, registries={"models": "my_models.py"},
                          resolution=32, epoch=1)
    code, err = main_in_process(capsys, "--config", str(config))
    assert code == 0, err


def test_a_reconstruction_model_that_returns_a_tuple_is_refused_up_front(tmp_path, capsys):
    (tmp_path / "my_models.py").write_text(
        "from torch import nn\n"
        "class Coder(nn.Sequential):\n"
        "    phd_lab_objective = 'reconstruction'\n"
        "    def forward(self, x):\n"
        "        code = self[0](x)\n"
        "        return self[1](code), code\n"
        "def coder(*, num_classes, in_channels=3):\n"
        "    return Coder(nn.Conv2d(in_channels, 4, 3, padding=1), nn.Conv2d(4, in_channels, 3, padding=1))\n")
    config = write_config(tmp_path, model="coder", model_args={}, metrics=[], registries={"models": "my_models.py"})
    message = refused(capsys, tmp_path, config)
    assert "model 'coder' returns a tuple of 2 (a tensor of shape (2, 3, 16, 16), a tensor of shape (2, 4, 16, 16)) " \
           "from forward() in training mode" in message
    assert "take one tensor of the input's shape (a reconstruction)" in message

def test_every_registry_model_and_torchvision_aux_model_passes_the_single_output_check(tmp_path):
    from phd_lab.grid import Grid
    from phd_lab.model_checks import check_single_output, meta_model
    from phd_lab.objectives import declared_objective, objective_of
    from phd_lab.registry import Registries
    registries = Registries({})
    for name in [*registries.models.names(), "tv:googlenet", "tv:inception_v3"]:
        cfg = Grid({"model": name, "dataset": "Digits", "resolution": 96 if name.startswith("tv:") else 32,
                    "logs_dir": str(tmp_path)}, "test.json")[0]
        _, model = meta_model(cfg, registries, {})
        check_single_output(cfg, model, declared_objective(registries.models.get(name)) or objective_of(model))


FLATTENING_MODELS = """
from torch import nn


def flatten_linear(*, num_classes, in_channels=3, side=32):
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(4 * (side // 2) ** 2, num_classes))


def grey_mlp(*, num_classes, in_channels=3):
    # ignores in_channels: made for the one-channel 16 px digits only
    return nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, num_classes))


def rgba_mlp(*, num_classes, in_channels=3):
    # ignores in_channels: made for four-channel 16 px images only
    return nn.Sequential(nn.Flatten(), nn.Linear(4 * 16 * 16, num_classes))
"""


def test_a_linear_after_a_flatten_made_for_another_resolution_is_refused_up_front(tmp_path, capsys):
    """It failed at the first training step ('mat1 and mat2 shapes cannot be multiplied (128x256 and 1024x10)')
    after its run folder was made: the meta device's wording of the error was not taken for a verdict."""
    (tmp_path / "my_models.py").write_text(FLATTENING_MODELS)
    config = write_config(tmp_path, model="flatten_linear", model_args={}, registries={"models": "my_models.py"})
    message = refused(capsys, tmp_path, config)
    assert "model 'flatten_linear' cannot take 16x16 px inputs: a Linear layer of it gets another number of " \
           "features than it was made for" in message
    assert "[2, 256] X [1024, 10]" in message and "nn.AdaptiveAvgPool2d" in message


@pytest.mark.parametrize(("model", "model_args", "data"), [
    ("grey_mlp", {}, {}), ("flatten_linear", {"side": 16}, {}),
    ("rgba_mlp", {}, {"dataset": "FakeData", "dataset_args": {"channels": 4, "train_size": 8, "test_size": 4}})])
def test_a_flattening_model_at_its_own_size_is_not_refused(tmp_path, capsys, model, model_args, data):
    """Neither a model made for this resolution nor one that ignores in_channels (built with the placeholder 3
    channels, it reads Digits' one, or four channels of FakeData: that one was refused as made for another
    resolution, at its own) is taken for one made for another resolution."""
    (tmp_path / "my_models.py").write_text(FLATTENING_MODELS)
    config = write_config(tmp_path, model=model, model_args=model_args, registries={"models": "my_models.py"},
                          **data)
    code, err = main_in_process(capsys, "--config", str(config), "--dry-run")
    assert code == 0, err


def test_a_forward_that_requires_more_than_the_images_is_refused_up_front(tmp_path, capsys):
    """It failed at the first training step ('forward() missing 1 required positional argument: 'labels'') after
    its run folder was made; options with defaults, *args and **kwargs stay allowed."""
    (tmp_path / "my_models.py").write_text(
        "from torch import nn\n"
        "class Net(nn.Sequential):\n"
        "    def forward(self, x, labels, *args, scale=1.0, **kwargs):\n"
        "        return super().forward(x) * scale\n"
        "class Fine(nn.Sequential):\n"
        "    def forward(self, x, labels=None, *args, scale=1.0, **kwargs):\n"
        "        return super().forward(x) * scale\n"
        "def net(*, num_classes, in_channels=3, fine=False):\n"
        "    return (Fine if fine else Net)(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),\n"
        "                                   nn.Linear(4, num_classes))\n")
    config = write_config(tmp_path, model="net", model_args={}, registries={"models": "my_models.py"})
    message = refused(capsys, tmp_path, config)
    assert "model 'net' has a forward() that requires 'labels' beside its input" in message
    assert "call model(images) with one batch of images alone. Give that parameter a default." in message
    fine = write_config(tmp_path, name="fine.json", model="net", model_args={"fine": True},
                        registries={"models": "my_models.py"})
    code, err = main_in_process(capsys, "--config", str(fine), "--dry-run")
    assert code == 0, err


def test_a_model_that_ignores_in_channels_is_refused_before_its_run_folder_is_made(tmp_path, capsys):
    """A first Conv2d of 3 input channels failed at the first batch of grey Digits ('expected input[128, 1, 16,
    16] to have 3 channels, but got 1 channels instead') in a run folder of its own, with a traceback."""
    (tmp_path / "my_models.py").write_text(
        "from torch import nn\n"
        "def rgb_only(*, num_classes, in_channels=3):\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),\n"
        "                         nn.Linear(4, num_classes))\n")
    config = write_config(tmp_path, model="rgb_only", model_args={}, registries={"models": "my_models.py"})
    code, err = main_in_process(capsys, "--config", str(config))
    message = " ".join(err.split())
    assert code == 2, err
    assert "(run 0): model 'rgb_only' built with in_channels=1 (the channels of dataset 'Digits') cannot take " \
           "1-channel images" in message
    assert "but takes 3-channel ones: its factory ignores in_channels" in message and "Traceback" not in message
    assert run_folders(tmp_path / "logs") == []


NUMPY_EXTRA_STATE = '''
import numpy as np
import torch
from torch import nn


class Normalised(nn.Module):
    """Keeps the input statistics it normalises with as extra state, numpy numbers."""

    def __init__(self, in_channels, num_classes, mean):
        super().__init__()
        self.mean, self.std = np.float64(mean), np.float64(1.0)
        self.body = nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(4, num_classes))

    def get_extra_state(self):
        return {"mean": self.mean, "std": self.std}

    def set_extra_state(self, state):
        self.mean, self.std = state["mean"], state["std"]

    def forward(self, x):
        return self.body((x - float(self.mean)) / float(self.std))


def normalised(*, num_classes, in_channels=3):
    return Normalised(in_channels, num_classes, 0.0)


def measured(*, num_classes, in_channels=3):
    """Its mean is read from a tensor's value, which the meta device does not have: built for the run only."""
    return Normalised(in_channels, num_classes, torch.zeros(1).item())
'''


@pytest.mark.parametrize("model", ["normalised", "measured"])
def test_a_model_whose_extra_state_no_checkpoint_restores_is_refused_before_its_run_folder(tmp_path, capsys, model):
    """A model keeping numpy numbers in its get_extra_state() trained and wrote a checkpoint every epoch, but
    torch.load(weights_only=True) refuses numpy scalars: a resume (or the rerun of the finished run for a new step)
    said 'Every checkpoint ... is damaged (UnpicklingError)', the run lost. Refused up front where the meta device
    builds the model, else when the run builds it, before its folder is made."""
    (tmp_path / "my_models.py").write_text(NUMPY_EXTRA_STATE)
    config = write_config(tmp_path, model=model, model_args={}, epoch=1, track_saturation=False,
                          registries={"models": "my_models.py"})
    code, err = main_in_process(capsys, "--config", str(config))
    message = " ".join(err.split())
    assert code == 2, err
    assert f"the model factory '{model}'" in message and "state_dict() holds '_extra_state'" in message, message
    assert "torch.load(weights_only=True)" in message and "Traceback" not in message
    assert run_folders(tmp_path / "logs") == []


def test_a_model_made_for_grey_images_is_refused_on_three_channel_data_before_its_run_folder(tmp_path, capsys):
    """A first Conv2d of 1 input channel on three-channel data (every folder: dataset is read as RGB) passed the
    checks, as 3 is the placeholder's channel count, and failed at the first batch ('expected input[8, 3, 8, 8] to
    have 1 channels') in a run folder of its own; the same model on grey Digits trains."""
    (tmp_path / "my_models.py").write_text(
        "from torch import nn\n"
        "def grey_only(*, num_classes, in_channels=3):\n"
        "    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),\n"
        "                         nn.Linear(4, num_classes))\n")
    common = dict(model="grey_only", model_args={}, registries={"models": "my_models.py"}, resolution=8, epoch=1,
                  post_processing=[], track_saturation=False)
    config = write_config(tmp_path, dataset="FakeData", dataset_args={"train_size": 8, "test_size": 4}, **common)
    code, err = main_in_process(capsys, "--config", str(config), "--no-progress", "-q")
    message = " ".join(err.split())
    assert code == 2, err
    assert "(run 0): model 'grey_only' built with in_channels=3 (the channels of dataset 'FakeData') cannot take " \
           "3-channel images" in message
    assert "but takes 1-channel ones: its factory ignores in_channels" in message and "Traceback" not in message
    assert not (tmp_path / "logs").exists() or run_folders(tmp_path / "logs") == []
    config = write_config(tmp_path, name="digits.json", dataset="Digits", **common)
    code, err = main_in_process(capsys, "--config", str(config), "--no-progress", "-q")
    assert code == 0, err


def test_layer_patterns_of_a_truncated_run_are_checked_against_the_model_it_trains(tmp_path, capsys):
    """A cut model names the layers it keeps body.<name> (its CSV columns and latents): the steps' layer patterns
    were checked against the uncut model, so 'features.0' passed the check and failed the run after training, while
    'body.features.0', which the run's own error proposed, was refused up front."""
    cut = {"width": 0.0625, "truncate": "border"}  # at 8 px VGG11's border is features.8: features.0 and .4 stay
    config = write_config(tmp_path, model_args=cut, resolution=8,
                          post_processing=[{"name": "extract", "layers": ["features.0"]}])
    message = refused(capsys, tmp_path, config)
    assert "Step 'extract': the layer 'features.0' matches no module of TruncatedModel" in message
    assert "'body.features.0'" in message
    config = write_config(tmp_path, model_args=cut, resolution=8, tracking_exclude=["body.features.0"],
                          post_processing=[{"name": "extract", "layers": ["body.features.0"]},
                                           {"name": "project", "exclude": ["body.features.0"]}])
    code, err = main_in_process(capsys, "--config", str(config), "--dry-run")
    assert code == 0, err


@pytest.mark.parametrize("key", ["tracking_exclude", "tracking_include"])
def test_a_tracking_pattern_with_a_layer_s_uncut_name_is_refused_for_a_truncated_run(tmp_path, capsys, key):
    """'features.0' matches no layer of the cut model (body.features.0): as tracking_exclude it was ignored without a
    word (the layer tracked after all), as tracking_include beside a pattern that matches it left it untracked."""
    patterns = ["features.0"] if key == "tracking_exclude" else ["features.0", "classifier"]
    config = write_config(tmp_path, model_args={"width": 0.0625, "truncate": "border"}, resolution=8,
                          **{key: patterns})
    message = refused(capsys, tmp_path, config)
    assert f"the {key} pattern 'features.0' matches no layer of 'vgg11' as model_args 'truncate' 'border'" in message
    assert "Write 'body.features.0'" in message


INTERRUPTED_PARTS = '''
import torch
from torch import nn


def interrupted_import():
    """What a compiled module's import raises when a Ctrl-C lands in it."""
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt as landed:
        raise ImportError("initialization failed") from landed


class LazyImport(nn.Module):
    """Imports a compiled module on its first forward pass, where the Ctrl-C lands."""

    def __init__(self, num_classes, in_channels, interrupted):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4, num_classes)
        self.calls, self.interrupted = 0, interrupted

    def forward(self, x):
        self.calls += 1
        if self.interrupted and self.calls == 1:
            interrupted_import()
        return self.fc(self.features(x))


def net(*, num_classes, in_channels=3, where="forward"):
    if where == "factory":
        interrupted_import()
    return LazyImport(num_classes, in_channels, interrupted=where == "forward")


def sgd(model, *, epochs, lr=0.01):
    interrupted_import()
'''


@pytest.mark.parametrize("where", ["forward", "factory", "optimizer"])
def test_a_ctrl_c_during_the_checks_before_training_stops_the_command(tmp_path, capsys, where):
    """The checks on the meta model took any error of its factory, forward pass or optimizer factory for one of
    the meta device or of the config: a Ctrl-C there (as a compiled module's ImportError) was swallowed, the dry run
    ending with exit 0, or read as bad input ("'resolution' 32 does not suit model 'net'", exit 2)."""
    module = tmp_path / "interrupted.py"
    module.write_text(INTERRUPTED_PARTS)
    registries = {"models": str(module), **({"optimizers": str(module)} if where == "optimizer" else {})}
    config = write_config(tmp_path, model="net", model_args={"where": "none" if where == "optimizer" else where},
                          registries=registries, **({"optimizer": "sgd"} if where == "optimizer" else {}))
    code, err = main_in_process(capsys, "--config", str(config), "--dry-run")
    assert code == 130, err
    assert "interrupted" in err and "Traceback" not in err and "does not suit" not in err


REAL_ONLY_FACTORIES = '''
import torch
from torch import nn
from phd_lab.data import make_bundle


def interrupted():
    """What a factory that wraps its library's errors raises when a Ctrl-C lands in that library."""
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt as landed:
        raise ValueError("could not read the data") from landed


def data(*, batch_size, resolution, data_dir, seed, num_workers):
    interrupted()


def net(*, num_classes, in_channels=3):
    if torch.empty(0).is_meta:  # the checks before training build it on the meta device; training for real
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))
    interrupted()


def sgd(model, *, epochs, lr=0.01):
    if not next(model.parameters()).is_meta:
        interrupted()
    return torch.optim.SGD(model.parameters(), lr=lr), None
'''


@pytest.mark.parametrize("factory", ["dataset", "model", "optimizer"])
def test_a_ctrl_c_in_a_factory_when_the_run_builds_its_parts_is_no_bad_input(tmp_path, capsys, factory):
    """A factory's TypeError or ValueError is read as a config its factory refuses ("cannot be built with
    dataset_args", exit 2): one raised from a Ctrl-C was too, where the command was stopped (exit 130)."""
    module = tmp_path / "real_only.py"
    module.write_text(REAL_ONLY_FACTORIES)
    chosen = {"dataset": {"dataset": "data", "registries": {"datasets": str(module)}},
              "model": {"model": "net", "model_args": {}, "registries": {"models": str(module)}},
              "optimizer": {"optimizer": "sgd", "registries": {"optimizers": str(module)}}}[factory]
    config = write_config(tmp_path, epoch=1, **chosen)
    code, err = main_in_process(capsys, "--config", str(config), "--no-progress", "-q")
    assert code == 130, err
    assert "interrupted" in err and "cannot be built" not in err


def test_a_dataset_error_raised_from_a_ctrl_c_stops_the_grid(tmp_path, capsys):
    """A dataset factory's DataError raised from a Ctrl-C (the factory wraps its reader's errors) was re-raised with
    the config's name but without its cause, so every point of the grid was tried and the command ended as if the
    data were missing (exit 2)."""
    module = tmp_path / "wrapping.py"
    module.write_text(
        "from phd_lab.errors import DataError\n"
        "def data(*, batch_size, resolution, data_dir, seed, num_workers):\n"
        "    try:\n"
        "        try:\n"
        "            raise KeyboardInterrupt\n"
        "        except KeyboardInterrupt as landed:\n"
        "            raise ImportError('initialization failed') from landed\n"
        "    except ImportError as error:\n"
        "        raise DataError(f'the data could not be read: {error}') from error\n")
    config = write_config(tmp_path, dataset="data", registries={"datasets": str(module)}, epoch=1, model="mlp",
                          model_args={"input_side": 4, "units": [[4], [8]]}, resolution=4)
    code, err = main_in_process(capsys, "--config", str(config), "--no-progress", "-q")
    assert code == 130, err
    assert "interrupted" in err and "could not be read" not in err


UNEXTRACTABLE_LAYERS = '''
import torch
from torch import nn


class Net(nn.Module):
    """A ReLU module used twice, an attention block (it returns a tuple), a layer never called and an LSTM."""

    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(in_channels, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.attention = nn.MultiheadAttention(4, 2, batch_first=True)
        self.unused = nn.Linear(4, 4)
        self.lstm = nn.LSTM(4, 6, batch_first=True)
        self.fc = nn.Linear(6, num_classes)

    def forward(self, x):
        rows = self.relu(self.conv2(self.relu(self.conv1(x)))).mean(3).transpose(1, 2)
        rows = rows + self.attention(rows, rows, rows)[0]
        return self.fc(self.lstm(rows)[0][:, -1])


def net(*, num_classes, in_channels=3):
    return Net(num_classes, in_channels)
'''


@pytest.mark.parametrize(("layers", "expected"), [
    (["conv1", "relu", "attention", "unused", "lstm"],
     "Step 'extract': 'layers' names layers the step cannot extract: 'relu' runs 2 times per forward pass (a module "
     "used more than once has no single output); 'attention' returns a tuple, not a tensor; 'unused' is not called in "
     "the forward pass. Leave them out of 'layers'"),
    (["conv*", "att*"], "Step 'extract': 'layers' names a layer the step cannot extract: 'attention' (matched by "
                        "'att*') returns a tuple, not a tensor. Leave it out of 'layers'"),
    (["rel*"], "Step 'extract': no layer that ['rel*'] match runs exactly once per forward pass; name the layers to "
               "extract in 'layers'."),
])
def test_extract_layers_the_step_cannot_extract_are_refused_before_training(tmp_path, capsys, layers, expected):
    """A layer the forward pass runs twice, one that returns a tuple or is never called stopped the extract step
    after training (exit 1), one layer per attempt; a forward pass on the meta device finds them all up front."""
    (tmp_path / "my_models.py").write_text(UNEXTRACTABLE_LAYERS)
    config = write_config(tmp_path, model="net", model_args={}, registries={"models": "my_models.py"},
                          track_saturation=False, post_processing=[{"name": "extract", "layers": layers}])
    message = refused(capsys, tmp_path, config)
    assert f"{config} (run 0): {expected}" in message, message


def test_extract_layers_that_run_once_and_an_lstm_pass_the_checks(tmp_path, capsys):
    (tmp_path / "my_models.py").write_text(UNEXTRACTABLE_LAYERS)
    config = write_config(tmp_path, model="net", model_args={}, registries={"models": "my_models.py"},
                          track_saturation=False, post_processing=[{"name": "extract", "layers": ["conv*", "lstm"]}])
    code, err = main_in_process(capsys, "--config", str(config), "--dry-run")
    assert code == 0, err
