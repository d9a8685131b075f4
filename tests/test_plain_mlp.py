"""The plain MLP of appendix B.1 (``mlp``): its layers, its argument checks, and a run that tracks saturation.

configs/thesis/B_saturation_evolution_mlp.json is dry-run by tests/test_thesis_configs.py with every thesis config.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from phd_lab.factory_args import SUPPLIED_ARGS, check_factory_args, defaults_in_effect
from phd_lab.models.init import output_layer
from phd_lab.models.mlp import PlainMLP, create_plain_mlp
from phd_lab.registry import Registries
from tests.conftest import main_in_process, read_metrics, run_folders, write_config

pytestmark = pytest.mark.usefixtures("single_thread")


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


@pytest.mark.parametrize("units", [[256, 8], [256, 128], [5], [7, 6, 5, 4]])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_output_has_one_logit_per_class(units, in_channels):
    torch.manual_seed(0)
    model = create_plain_mlp(num_classes=10, in_channels=in_channels, input_side=8, units=units)
    out = model(torch.randn(4, in_channels, 8, 8))
    assert out.shape == (4, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("units", [[256, 8], [256, 64], [32], [16, 12, 8]])
def test_one_linear_layer_per_entry_of_units_then_the_output_layer(units):
    model = create_plain_mlp(num_classes=7, in_channels=3, input_side=32, units=units)
    layers = linear_layers(model)
    assert len(layers) == len(units) + 1
    widths = [3 * 32 * 32, *units, 7]
    assert [(layer.in_features, layer.out_features) for layer in layers] == list(zip(widths, widths[1:]))
    assert output_layer(model) is model.output  # the layer the framework's linear_init draws again
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == len(units)  # every hidden layer is Linear → ReLU; the output layer has none


def test_b1_network_is_three_layers_256_then_k_and_its_factory_defaults_to_256_128():
    model = Registries().models.get("mlp")(num_classes=10)
    assert [(layer.in_features, layer.out_features) for layer in linear_layers(model)] == [
        (3 * 32 * 32, 256), (256, 128), (128, 10)]
    b1 = Registries().models.get("mlp")(num_classes=10, in_channels=3, input_side=32, units=[256, 16])
    assert [layer.out_features for layer in linear_layers(b1)] == [256, 16, 10]


def test_at_input_side_resolution_the_image_is_only_flattened_and_larger_images_are_average_pooled():
    torch.manual_seed(0)
    model = create_plain_mlp(num_classes=5, in_channels=3, input_side=8, units=[16, 4]).eval()
    x = torch.randn(3, 3, 8, 8)

    def on_features(features: torch.Tensor) -> torch.Tensor:
        return model.output(model.hidden(features))

    with torch.no_grad():
        torch.testing.assert_close(model(x), on_features(x.flatten(1)), rtol=0, atol=0)
        large = torch.randn(3, 3, 16, 16)
        torch.testing.assert_close(model(large), on_features(nn.functional.avg_pool2d(large, 2).flatten(1)))


def test_torch_fx_traces_it_like_every_registered_model():
    torch.manual_seed(0)
    model = create_plain_mlp(num_classes=5, in_channels=1, input_side=8, units=[8, 4]).eval()
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(torch.fx.symbolic_trace(model)(x), model(x))


@pytest.mark.parametrize("units", [[], [0], [256, -1], "256", [True], 256, None, [256, 2.0]])
def test_bad_units_raise_a_value_error_naming_units(units):
    with pytest.raises(ValueError, match=r"units(\[\d+\])? must be"):
        create_plain_mlp(num_classes=10, units=units)


@pytest.mark.parametrize("input_side", [0, -3, 2.5, True])
def test_bad_input_side_raises_a_value_error_naming_it(input_side):
    with pytest.raises(ValueError, match="input_side must be a positive integer"):
        create_plain_mlp(num_classes=10, input_side=input_side)


def test_a_tuple_of_units_builds_the_same_network_as_the_list():
    assert isinstance(create_plain_mlp(num_classes=3, input_side=4, units=(6, 5)), PlainMLP)
    torch.manual_seed(1)
    as_tuple = create_plain_mlp(num_classes=3, input_side=4, units=(6, 5))
    torch.manual_seed(1)
    as_list = create_plain_mlp(num_classes=3, input_side=4, units=[6, 5])
    assert str(as_tuple) == str(as_list)
    for a, b in zip(as_tuple.parameters(), as_list.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_registry_accepts_a_units_list_and_logs_its_list_default_as_json():
    factory = Registries().models.get("mlp")
    check_factory_args(factory, {"input_side": 32, "units": [256, 8]}, "model_args", "mlp", "test",
                       SUPPLIED_ARGS["models"])
    logged = json.loads(json.dumps(defaults_in_effect(factory, {}, SUPPLIED_ARGS["models"])))
    assert logged == {"input_side": 32, "units": [256, 128]}


def test_a_short_training_tracks_the_saturation_of_both_hidden_layers_after_every_epoch(tmp_path, capsys):
    config = write_config(tmp_path, model="mlp", model_args={"input_side": 16, "units": [[32, 8]]}, epoch=2,
                          cpu_threads=1)
    code, err = main_in_process(capsys, "--config", str(config), "--no-progress", "-q")
    assert code == 0, err
    [folder] = run_folders(tmp_path / "logs")
    logged = json.loads(next(folder.glob("*_config.json")).read_text())
    assert logged["model_args"]["units"] == [[32, 8]]  # a list argument, logged as a grid of one
    metrics = read_metrics(folder)
    assert metrics["epoch"].tolist() == [1, 2]
    for layer, units in (("hidden.0.0", 32), ("hidden.1.0", 8)):
        for split in ("train", "test"):
            saturation = metrics[f"{layer}_{split}_saturation"]
            assert saturation.notna().all() and ((saturation > 0) & (saturation <= 1)).all(), (layer, split)
            dimension = metrics[f"{layer}_{split}_intrinsic_dimension"]
            assert ((dimension >= 1) & (dimension <= units)).all(), (layer, split)
