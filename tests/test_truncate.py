"""Truncation at a named layer or the border layer: where the cut happens, and that it trains."""

from __future__ import annotations

import logging
import pytest
import torch
from torch import nn

from phd_lab.analysis.flops import computational_info
from phd_lab.analysis.receptive_field import border_layers, receptive_fields
from phd_lab.cli import main_cli
from phd_lab.errors import ConfigError
from phd_lab.models.truncate import check_cut, resolve_cut, truncate_model, truncation_savings
from registries import models
from tests.conftest import interrupted_import, read_metrics, run_folders, write_config


def conv_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def test_vgg_cut_removes_the_named_layer_and_everything_after_keeping_weights():
    torch.manual_seed(0)
    model = models.vgg11(num_classes=10, in_channels=1, width=0.125).eval()
    convs = conv_names(model)
    cut = truncate_model(model, convs[5], num_classes=7, in_channels=1, input_resolution=32).eval()
    kept = conv_names(cut.body)
    assert kept == convs[:5]
    assert cut(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    # the kept layers are the trained ones: same output as the original's activation before the cut
    x = torch.randn(2, 1, 32, 32)
    seen = {}
    conv6 = dict(model.named_modules())[convs[5]]
    conv6.register_forward_hook(lambda m, i, o: seen.setdefault("input", i[0]))
    model(x)
    assert torch.allclose(cut.body(x), seen["input"])
    assert cut.classifier.in_features == conv6.in_channels


def test_resnet_cut_inside_a_block_removes_the_whole_block():
    model = models.resnet18(num_classes=10, width=0.125, stem="cifar")
    cut = truncate_model(model, "layer3.0.conv2", num_classes=10, in_channels=3, input_resolution=32)
    names = conv_names(cut.body)
    assert names[-1] == "layer2.1.conv2" and not any(n.startswith("layer3") for n in names)
    out = cut(torch.randn(2, 3, 32, 32))
    out.mean().backward()
    assert out.shape == (2, 10)


def test_truncation_savings_of_a_model_off_the_default_placement(caplog):
    """The probe input and the new head follow the model's device and dtype: the flops step of the
    quickstart (VGG11 at 32 px has a border) failed on every GPU, where the trained model is on CUDA.
    A float64 model shows the same mismatch on the CPU. The estimate says nothing at INFO level: an untruncated
    run's log read "Truncated VGG before features.18" after its flops step."""
    model = models.vgg11(num_classes=10, width=0.125).double()
    with caplog.at_level(logging.INFO, logger="phd_lab"):
        saved = truncation_savings(model, "features.18", num_classes=10, in_channels=3, input_resolution=32)
    assert not [record.message for record in caplog.records if record.levelno >= logging.INFO]
    assert saved["flops_saved"] > 0 and saved["head_params"] == 10 * 64 + 10
    cut = truncate_model(model, "features.18", num_classes=10, in_channels=3, input_resolution=32)
    assert cut.classifier.weight.dtype == torch.float64
    assert cut(torch.zeros(2, 3, 32, 32, dtype=torch.float64)).shape == (2, 10)


def test_truncation_savings_list_the_models_own_pool_and_classifier_as_removed():
    """The kept layers were the cut model's names without "body.", the new head's "pool" and "classifier" among
    them: a DenseNet's own pool and classifier, which the cut removes, were missing from removed_layers."""
    model = models.densenet18(num_classes=10, in_channels=1, width=0.25)
    border, _ = border_layers(receptive_fields(model, 16), 16)
    full = computational_info(model, (1, 16, 16))
    saved = truncation_savings(model, border, num_classes=10, in_channels=1, input_resolution=16, full=full)
    assert saved["removed_layers"][-4:] == ["features.11", "features.12", "pool", "classifier"]
    params = full[1].set_index("layer")["params"]
    assert params[saved["removed_layers"]].sum() == saved["params_saved"] + saved["head_params"]


def test_truncation_savings_count_the_whole_residual_block_the_cut_removes():
    model = models.resnet18(num_classes=10, width=0.125, stem="cifar")
    saved = truncation_savings(model, "layer3.0.conv2", num_classes=10, in_channels=3, input_resolution=32)
    cut = truncate_model(model, "layer3.0.conv2", num_classes=10, in_channels=3, input_resolution=32)
    params = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in cut.parameters())
    assert saved["exact"] and saved["params_saved"] == params
    assert "layer3.0.conv1" in saved["removed_layers"]  # before the named layer, in the same block
    assert "layer2.1.conv2" not in saved["removed_layers"]
    assert saved["head_params"] == cut.classifier.weight.numel() + cut.classifier.bias.numel()


def test_mpnet_cut_keeps_whole_multipath_blocks():
    model = models.mpnet18(num_classes=10, width=0.125)
    convs = conv_names(model)
    cut = truncate_model(model, convs[len(convs) // 2], num_classes=10, in_channels=3, input_resolution=32)
    kept = conv_names(cut.body)
    assert 0 < len(kept) < len(convs) // 2 + 1
    assert cut(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_border_cut_is_before_the_border_layer_of_the_resolution():
    model = models.vgg16(num_classes=10, in_channels=1, width=0.125)
    b_min, _ = border_layers(receptive_fields(model, 32), 32)
    assert resolve_cut(model, "border", 32) == b_min
    convs = conv_names(model)
    cut = truncate_model(model, b_min, num_classes=10, in_channels=1, input_resolution=32)
    assert conv_names(cut.body) == convs[:convs.index(b_min)]


def test_a_container_is_cut_before_its_first_layer():
    """``truncate: "layer3"`` on a ResNet said "the model calls no module of that name": fx traces through it."""
    model = models.resnet18(num_classes=10, width=0.125, stem="cifar")
    by_container = truncate_model(model, "layer3", num_classes=10, in_channels=3, input_resolution=32)
    by_first_conv = truncate_model(model, "layer3.0.conv1", num_classes=10, in_channels=3, input_resolution=32)
    kept = conv_names(by_container.body)
    assert kept == conv_names(by_first_conv.body) and kept[-1].startswith("layer2.")
    check_cut(model, "layer3", in_channels=3, resolution=32)  # accepted up front too
    with pytest.raises(ConfigError, match="calls no module of that name"):  # a prefix of a name is not a container
        truncate_model(model, "layer", num_classes=10, in_channels=3, input_resolution=32)


class _Reused(nn.Module):
    """A convolution called twice: the receptive-field table names its second call ``conv:2``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(self.conv(self.stem(x))).mean((2, 3)))


def test_a_border_at_the_second_call_of_a_module_can_be_cut():
    """resolve_cut gave "conv:2" (the table's name of the second call), which truncate_model did not know."""
    model = _Reused()
    assert resolve_cut(model, "border", 4) == "conv:2"
    cut = truncate_model(model, "conv:2", num_classes=10, in_channels=3, input_resolution=4)
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(cut.body(x), model.conv(model.stem(x)))  # kept: the stem and the first call
    with pytest.raises(ConfigError, match="calls no module of that name"):
        truncate_model(model, "conv:3", num_classes=10, in_channels=3, input_resolution=4)


def test_unknown_layer_is_a_clear_error():
    with pytest.raises(ConfigError, match="calls no module of that name"):
        truncate_model(models.vgg11(num_classes=10, width=0.125), "features.999", num_classes=10, in_channels=3,
                       input_resolution=32)


def test_truncated_model_trains_from_a_config_and_flops_report_it(tmp_path):
    config = write_config(tmp_path, model="vgg11", model_args={"width": 0.125, "truncate": ["border", None]},
                          resolution=16, epoch=1, post_processing=["receptive_field", "flops", "analysis"])
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    import json
    infos = {}
    for folder in run_folders(tmp_path / "logs"):
        logged = json.loads(next(folder.glob("*_config.json")).read_text())
        infos[logged["model_args"]["truncate"]] = json.loads((folder / "computational_info.json").read_text())
        assert len(read_metrics(folder)) == 1
    assert infos["border"]["params_total"] < infos[None]["params_total"]
    assert infos["border"]["macs"] < infos[None]["macs"]
    # the untruncated run's flops step measured what truncate: border saves: exactly the difference
    saved = infos[None]["truncation"]
    assert saved["exact"]
    assert saved["params_saved"] == infos[None]["params_total"] - infos["border"]["params_total"]
    assert saved["flops_saved"] == infos[None]["flops"] - infos["border"]["flops"]
    # ... and the analysis (analysis.json, the report) shows those measured numbers
    [full] = [f for f in run_folders(tmp_path / "logs")
              if json.loads((f / "computational_info.json").read_text()).get("truncation")]
    shown = json.loads((full / "analysis.json").read_text())["truncation"]
    assert shown["exact"] is True and shown["params_saved"] == saved["params_saved"]


def test_bad_truncate_value_is_rejected_before_training(tmp_path, capsys):
    config = write_config(tmp_path, model_args={"width": 0.125, "truncate": 3})
    assert main_cli(["--config", str(config)]) == 2
    assert "'truncate' must be a layer name" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "logs").exists()


def test_call_names_round_trip_as_the_receptive_field_table_writes_them():
    from phd_lab.analysis.call_names import call_name, split_call_name
    assert [call_name("block.conv", k) for k in (1, 2, 3)] == ["block.conv", "block.conv:2", "block.conv:3"]
    assert [split_call_name(call_name("block.conv", k)) for k in (1, 2, 3)] == [
        ("block.conv", 1), ("block.conv", 2), ("block.conv", 3)]
    assert split_call_name("odd:name") == ("odd:name", 1) and split_call_name("c:1") == ("c:1", 1)


class _CheckedChain(nn.Module):
    """A chain that checks its first and last feature maps at the end of forward (as torchvision's ViT checks
    shapes with ``torch._assert``): the check reads those maps but leads to no output."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.c3 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.c1(x)
        c = self.c3(self.c2(a))
        torch._assert(a.shape[1] == c.shape[1], "as many channels")
        return self.fc(c.mean((2, 3)))


def test_a_check_that_leads_to_no_output_does_not_move_the_cut_earlier():
    """Only paths from the input to the output decide where a cut may go: the shape check reading c1's map at
    the end of forward is no path past c2, so cutting before c3 keeps c1 and c2; the check itself, after the cut,
    goes with c3."""
    torch.manual_seed(0)
    model = _CheckedChain()
    cut = truncate_model(model, "c3", num_classes=5, in_channels=3, input_resolution=8)
    assert conv_names(cut.body) == ["c1", "c2"]
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(cut.body(x), model.c2(model.c1(x)))


def test_border_and_border_max_resolve_to_their_own_layers():
    """On a ResNet b_min and b_max differ (on a chain they agree, which hid a swap of the two)."""
    model = models.resnet18(num_classes=10, width=0.125, stem="cifar")
    b_min, b_max = border_layers(receptive_fields(model, 16), 16)
    assert (b_min, b_max) == ("layer4.1.conv1", "layer2.1.conv1")
    assert resolve_cut(model, "border", 16) == b_min and resolve_cut(model, "border_max", 16) == b_max
    assert resolve_cut(model, "border", 32) is None  # no b_min at 32 px: not truncated
    assert resolve_cut(model, "border_max", 32) == "layer3.1.conv1"
    assert resolve_cut(model, "layer3", 32) == "layer3"  # a module name is the layer itself


def test_the_layers_offered_instead_are_exactly_those_whose_kept_part_returns_a_feature_map():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(16, 10),
                          nn.ReLU(), nn.Linear(10, 10))
    with pytest.raises(ConfigError) as error:
        check_cut(model, "6", in_channels=3, resolution=6)
    message = " ".join(str(error.value).split())
    assert "returns a 2-d tensor" in message
    assert message.endswith("Layers it can be truncated at (the kept part returns a feature map): 1, 2, 3.")


class _ChannelsLastMix(nn.Module):
    """Conv, then a Linear over the channels of the channels-last map (ConvNeXt's pointwise layers), then a conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.mix = nn.Linear(8, 8)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mix(self.stem(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.fc(self.conv(x).mean((2, 3)))


def test_a_cut_whose_kept_part_returns_a_channels_last_map_is_refused():
    """Cut before ``mix``, the kept part returns the permuted (N, H, W, C) map: 4-d, but the GAP head would have
    averaged over width and channels and classified 16 "channels" that are rows (before the fix it trained so)."""
    with pytest.raises(ConfigError) as error:
        check_cut(_ChannelsLastMix(), "mix", in_channels=3, resolution=16)
    message = " ".join(str(error.value).split())
    assert "height and width are axes 1 and 2 (channels-last, shape (1, 16, 16, 8)" in message
    assert message.endswith("Layers it can be truncated at (the kept part returns a feature map): conv.")
    with pytest.raises(ConfigError, match="height and width are axes 1 and 2"):
        truncate_model(_ChannelsLastMix(), "mix", num_classes=10, in_channels=3, input_resolution=16)
    cut = truncate_model(_ChannelsLastMix(), "conv", num_classes=10, in_channels=3, input_resolution=16)
    assert cut.classifier.in_features == 8 and cut(torch.zeros(2, 3, 16, 16)).shape == (2, 10)


def test_a_truncated_model_keeps_the_training_mode_of_the_model_it_was_cut_from():
    """Measuring the kept part's channels runs it in eval mode; a model cut in training mode stays in it (its
    BatchNorm layers keep updating their statistics when it trains), one cut in eval mode stays in eval mode."""
    model = models.vgg11(num_classes=10, width=0.125, batch_norm=True).train()
    cut = truncate_model(model, "features.8", num_classes=10, in_channels=3, input_resolution=32)
    assert all(m.training for m in cut.body.modules())
    cut = truncate_model(model.eval(), "features.8", num_classes=10, in_channels=3, input_resolution=32)
    assert not any(m.training for m in cut.body.modules())


def test_the_run_log_says_where_truncate_cut_the_model_or_that_it_did_not(tmp_path):
    """``truncate: border`` on a model without a border at its resolution trains the whole model in a folder named
    after the option; the warning went to the console before the run's log was open, so the run's own record
    never said so, nor where a border cut was made."""
    config = write_config(tmp_path, model=["resnet18_cifar", "vgg11"],
                          model_args={"width": 0.0625, "truncate": "border"}, resolution=32, epoch=1,
                          dataset="FakeData", dataset_args={"train_size": 16, "test_size": 8}, track_saturation=False)
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    logs = {folder.parts[-4]: next(folder.glob("*.log")).read_text() for folder in run_folders(tmp_path / "logs")}
    assert "resnet18_cifar has no border layer at 32 px" in logs["resnet18_cifar"]
    assert "so the model is not truncated" in logs["resnet18_cifar"]
    assert "the model is cut before features.18" in logs["vgg11"]


class _ShuffleBlocks(nn.Module):
    """ShuffleNetV2's stride-1 unit: x.chunk(2, dim=1) (a tuple, on every path), one half through a branch."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.branch = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 1))
        self.head = nn.Conv2d(4, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.stem(x).chunk(2, dim=1)
        y = torch.cat([x1, self.branch(x2)], dim=1)
        y = y.view(y.shape[0], 2, 2, 8, 8).transpose(1, 2).reshape(y.shape[0], 4, 8, 8)
        return self.head(y)


def test_a_cut_inside_a_shufflenet_unit_goes_before_its_chunk():
    """The last node on every path before branch.2 is the chunk, a tuple: the kept part returned it and
    truncate_model failed with "AttributeError: 'tuple' object has no attribute 'dim'"; the whole unit goes now."""
    torch.manual_seed(0)
    model = _ShuffleBlocks()
    check_cut(model, "branch.2", in_channels=1, resolution=8)
    cut = truncate_model(model, "branch.2", num_classes=5, in_channels=1, input_resolution=8)
    images = torch.randn(2, 1, 8, 8)
    assert conv_names(cut.body) == ["stem"] and cut.classifier.in_features == 4
    torch.testing.assert_close(cut.body(images), model.stem(images))


class _LayerNorm2d(nn.LayerNorm):
    """torchvision's ConvNeXt LayerNorm2d: torch.fx traces through it (permute, F.layer_norm, permute)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        return torch.nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps).permute(
            0, 3, 1, 2)


def test_truncation_savings_keep_a_traced_through_layer_norm_off_the_removed_layers():
    """The cut model's table has no row of a module torch.fx traced through (it is no longer called): its
    LayerNorm2d, which the cut keeps, was listed as removed (ConvNeXt-tiny: features.0.1, 2.0, 4.0 and 6.0)."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), _LayerNorm2d(4), nn.Conv2d(4, 4, 3, padding=1),
                          nn.Conv2d(4, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    full = computational_info(model, (1, 8, 8))
    saved = truncation_savings(model, "3", num_classes=3, in_channels=1, input_resolution=8, full=full)
    assert saved["removed_layers"] == ["3", "4", "6"]  # (Flatten has no row)
    params = full[1].set_index("layer")["params"]
    assert params[saved["removed_layers"]].sum() == saved["params_saved"] + saved["head_params"]


def _chain() -> nn.Sequential:
    """Three 3×3 convolutions and a head: a cut before '2' keeps two of them."""
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def _ctrl_c_on_real_input(resolution: int):
    """A forward pre-hook that a Ctrl-C stops once the layer runs on a real (not meta) input of ``resolution`` px."""
    def hook(module: nn.Module, inputs: tuple[torch.Tensor]) -> None:
        if not inputs[0].is_meta and inputs[0].shape[-1] == resolution:
            interrupted_import()
    return hook


class _InterruptedWhileTraced(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        interrupted_import()
        return self.b(self.a(x))


@pytest.mark.parametrize("check", [check_cut, truncate_model])
def test_a_ctrl_c_while_the_model_is_traced_for_the_cut_stops_it(check):
    """A Ctrl-C (as a compiled module's ImportError) while torch.fx traced the model was taken for an untraceable
    model: the check passed in silence, and the cut said 'Cannot truncate ...: torch.fx cannot trace it' (exit 2)."""
    arguments = {"in_channels": 1, "resolution": 8} if check is check_cut else \
        {"num_classes": 3, "in_channels": 1, "input_resolution": 8}
    with pytest.raises(KeyboardInterrupt):
        check(_InterruptedWhileTraced(), "b", **arguments)


@pytest.mark.parametrize("resolution", [8, 16])
def test_a_ctrl_c_while_the_kept_part_runs_stops_the_cut(resolution):
    """The kept part's runs at the input resolution (its shapes) and at twice it (where height and width are) took
    any error for an op they cannot run: a Ctrl-C there was swallowed and the cut went on."""
    model = _chain()
    model[0].register_forward_pre_hook(_ctrl_c_on_real_input(resolution))
    with pytest.raises(KeyboardInterrupt):
        truncate_model(model, "2", num_classes=3, in_channels=1, input_resolution=8)
    if resolution == 16:  # the check runs the traced model at both resolutions too
        with pytest.raises(KeyboardInterrupt):
            check_cut(model, "3", in_channels=1, resolution=8)


RESIDUAL_MODELS = '''
import torch
from torch import nn


class BasicBlock(nn.Module):
    """conv1/bn1/conv2/bn2 and a skip: the identity, or a 1x1 conv shortcut where the shape changes."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + self.shortcut(x))


class Net(nn.Module):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(in_channels, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8)
        self.layer1, self.layer2 = BasicBlock(8, 8), BasicBlock(8, 16, 2)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        out = self.layer2(self.layer1(torch.relu(self.bn1(self.conv1(x)))))
        return self.fc(out.mean((2, 3)))


def net(*, num_classes, in_channels=3):
    return Net(num_classes, in_channels)
'''


def _residual_net() -> nn.Module:
    """A ResNet-like model whose ``layer1`` is a BasicBlock with an identity skip, ``layer2`` one with a conv
    shortcut."""
    namespace: dict = {}
    exec(RESIDUAL_MODELS, namespace)  # noqa: S102 - the registry file of the run below, as a module here
    torch.manual_seed(0)
    return namespace["net"](num_classes=10, in_channels=3)


@pytest.mark.parametrize(("named", "block", "kept_last"), [("layer1.conv2", "layer1", "bn1"),
                                                           ("layer1.bn2", "layer1", "bn1"),
                                                           ("layer2.shortcut.0", "layer2", "layer1.bn2")])
def test_a_cut_inside_a_residual_block_names_the_block_it_goes_before(named, block, kept_last):
    """``truncate: "layer1.conv2"`` kept the stem alone (layer1.conv1 and bn1 went too) while the run's log said
    "the model is cut before layer1.conv2" and its config logged truncated_before "layer1.conv2"; a shortcut's conv
    took the whole block's other path with it. The cut model names the block the cut is before, and why."""
    model = _residual_net()
    cut = truncate_model(model, named, num_classes=10, in_channels=3, input_resolution=16)
    assert [name for name, _ in cut.body.named_modules() if name][-1] == kept_last
    assert (cut.cut_before, cut.named) == (block, named)
    assert cut.moved == (f"{named} lies inside a block with more than one path from its input (a residual connection "
                         f"or parallel branches), and a cut must lie on every path, so the whole block goes")
    again = truncate_model(model, block, num_classes=10, in_channels=3, input_resolution=16)  # the same cut
    assert again.moved is None and again.cut_before == block
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(cut.body(x), again.body(x))


@pytest.mark.parametrize("named", ["layer1", "layer1.conv1", "layer2.conv1", "bn1"])
def test_a_cut_right_before_the_layer_named_keeps_its_name(named):
    cut = truncate_model(_residual_net(), named, num_classes=10, in_channels=3, input_resolution=16)
    assert (cut.cut_before, cut.named, cut.moved) == (named, named, None)


def test_the_layers_offered_for_a_residual_model_are_those_cut_where_named():
    """The refusal offered layer1.conv2 and the shortcut's layers as places to cut, which cut elsewhere."""
    with pytest.raises(ConfigError) as error:
        check_cut(_residual_net(), "fc", in_channels=3, resolution=16)
    message = " ".join(str(error.value).split())
    assert message.endswith("Layers it can be truncated at (the kept part returns a feature map; the layers inside a "
                            "residual or multipath block are left out, as a cut there goes before the whole block): "
                            "bn1, layer1.conv1, layer2.conv1.")


def test_the_run_log_and_logged_config_name_the_block_a_cut_inside_it_goes_before(tmp_path, capsys):
    """The log said "the model is cut before layer1.conv2" and _meta logged truncated_before "layer1.conv2" for a
    model cut before layer1. A config logged so (as before) reruns without a warning of a cut that moved."""
    (tmp_path / "my_models.py").write_text(RESIDUAL_MODELS)
    config = write_config(tmp_path, model="net", model_args={"truncate": "layer1.conv2"},
                          registries={"models": "my_models.py"}, epoch=1, cpu_threads=1, track_saturation=False,
                          post_processing=[])
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [folder] = run_folders(tmp_path / "logs")
    log_text = " ".join(next(folder.glob("*.log")).read_text().split())
    assert ("model_args truncate 'layer1.conv2': the model is cut before layer1 and ends in global average pooling + "
            "a linear classifier. The cut is before layer1, not before layer1.conv2 as named: layer1.conv2 lies inside "
            "a block with more than one path from its input (a residual connection or parallel branches), and a cut "
            "must lie on every path, so the whole block goes.") in log_text
    assert "cut before layer1.conv2" not in log_text
    import json
    logged_path = next(folder.glob("*_config.json"))
    logged = json.loads(logged_path.read_text())
    assert (logged["_meta"]["truncated_before"], logged["_meta"]["truncate_named"]) == ("layer1", "layer1.conv2")
    logged["_meta"]["truncated_before"] = "layer1.conv2"  # as the versions before logged it
    del logged["_meta"]["truncate_named"]
    logged_path.write_text(json.dumps(logged))
    assert main_cli(["--config", str(logged_path), "--run-id", "again", "--no-progress", "-q"]) == 0
    [again] = [f for f in run_folders(tmp_path / "logs") if f != folder]
    assert "cuts the model before" not in next(again.glob("*.log")).read_text()
    assert "cuts the model before" not in capsys.readouterr().err


def test_a_border_inside_a_residual_block_is_named_beside_the_block_the_cut_goes_before(tmp_path):
    """At 8 px the residual model's b_max is layer2.conv2, inside a block: the log names both, and why."""
    (tmp_path / "my_models.py").write_text(RESIDUAL_MODELS)
    config = write_config(tmp_path, model="net", model_args={"truncate": "border_max"}, resolution=8,
                          registries={"models": "my_models.py"}, epoch=1, cpu_threads=1, track_saturation=False,
                          post_processing=[])
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [folder] = run_folders(tmp_path / "logs")
    log_text = " ".join(next(folder.glob("*.log")).read_text().split())
    assert ("model_args truncate 'border_max': the model is cut before layer2 and ends in global average pooling + a "
            "linear classifier. The cut is before layer2, not before layer2.conv2 (its border_max layer at 8 px): "
            "layer2.conv2 lies inside a block") in log_text
    import json
    meta = json.loads(next(folder.glob("*_config.json")).read_text())["_meta"]
    assert (meta["truncated_before"], meta["truncate_named"]) == ("layer2", "layer2.conv2")
