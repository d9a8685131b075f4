"""Every registered model: forward/backward, fx tracing, parameter counts, width, skips."""

from __future__ import annotations

import operator
import warnings

import pytest
import torch
import torchvision
from torch import nn

from phd_lab.errors import RegistryError
from phd_lab.models.common import scaled
from phd_lab.registry import Registries
from registries import models as zoo

MODELS = Registries().models


pytestmark = pytest.mark.usefixtures("single_thread")

# Smallest sensible setting per registered model: (model_args, resolution, in_channels).
SMALL: dict[str, tuple[dict, int, int]] = {
    "vgg11": ({"width": 1 / 16}, 16, 1),
    "vgg13": ({"width": 1 / 16, "batch_norm": False, "head": "linear"}, 16, 3),
    "vgg16": ({"width": 1 / 16}, 16, 1),
    "vgg19": ({"width": 1 / 16}, 32, 3),
    "vgg19_dilated": ({"width": 1 / 16}, 32, 3),
    "resnet18": ({"width": 1 / 8}, 32, 3),
    "resnet34": ({"width": 1 / 16}, 32, 3),
    "resnet50": ({"width": 1 / 16}, 32, 3),
    "resnet18_cifar": ({"width": 1 / 8}, 16, 1),
    "resnet34_cifar": ({"width": 1 / 16}, 16, 3),
    "resnet50_cifar": ({"width": 1 / 16}, 16, 3),
    "resnet18_noskip": ({"width": 1 / 8}, 32, 3),
    "resnet34_noskip": ({"width": 1 / 16}, 32, 3),
    "resnet18_se": ({"width": 1 / 8}, 32, 3),
    "resnet18_sa": ({"width": 1 / 8, "stem": "cifar"}, 16, 3),
    "resnet18_cbam": ({"width": 1 / 8}, 32, 3),
    "resnet18_noskip_se": ({"width": 1 / 8}, 32, 3),
    "resnet18_noskip_sa": ({"width": 1 / 8}, 32, 3),
    "resnet18_noskip_cbam": ({"width": 1 / 8}, 32, 3),
    "mpnet18": ({"width": 1 / 8}, 16, 3),
    "mpnet36": ({"width": 1 / 16}, 16, 3),
    "densenet18": ({"width": 1 / 8}, 32, 3),
    "densenet65": ({"width": 1 / 8}, 32, 3),
    "densenet121": ({"width": 1 / 16}, 32, 3),
    "mlp": ({"units": [16, 8], "input_side": 8}, 16, 1),
    "conv_autoencoder": ({}, 16, 1),
    "mlp_long_skip": ({"skipped": 16, "tail": 2}, 28, 1),
}


def build_small(name: str, num_classes: int = 5) -> tuple[nn.Module, torch.Tensor]:
    args, resolution, channels = SMALL[name]
    torch.manual_seed(0)
    model = MODELS.get(name)(num_classes=num_classes, in_channels=channels, **args)
    return model, torch.randn(3, channels, resolution, resolution)


def test_every_registered_model_has_a_test_setting():
    assert sorted(MODELS.names()) == sorted(SMALL, key=str.lower)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_forward_backward_and_fx_trace(name):
    model, x = build_small(name)
    out = model(x)
    reconstructs = getattr(model, "phd_lab_objective", "classification") == "reconstruction"  # conv_autoencoder
    assert out.shape == (x.shape if reconstructs else (3, 5)) and torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    traced = torch.fx.symbolic_trace(model)          # receptive-field analysis works on fx graphs
    model.eval()
    torch.testing.assert_close(traced.eval()(x), model(x))


@pytest.mark.parametrize("depth, expected", [(18, 11_689_512), (34, 21_797_672), (50, 25_557_032)])
def test_resnet_parameter_counts_equal_torchvision(depth, expected):
    with torch.device("meta"):                              # shapes only: no memory, no init cost
        ours = MODELS.get(f"resnet{depth}")(num_classes=1000)
        theirs = getattr(torchvision.models, f"resnet{depth}")(num_classes=1000)
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in theirs.parameters()) == expected


@pytest.mark.parametrize("depth", [11, 13, 16, 19])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_vgg_feature_extractor_equals_torchvision(depth, batch_norm):
    with torch.device("meta"):
        ours = MODELS.get(f"vgg{depth}")(num_classes=1000, batch_norm=batch_norm).features
        theirs = getattr(torchvision.models, f"vgg{depth}" + ("_bn" if batch_norm else ""))().features
    assert [type(m) for m in ours] == [type(m) for m in theirs]
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


def test_densenet121_parameter_count_equals_torchvision():
    with torch.device("meta"):
        ours = sum(p.numel() for p in zoo.densenet121(num_classes=1000).parameters())
        theirs = sum(p.numel() for p in torchvision.models.densenet121().parameters())
    assert ours == theirs == 7_978_856


def conv_widths(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("name", ["vgg16", "resnet18", "resnet50_cifar", "mpnet18"])
@pytest.mark.parametrize("width", [0.5, 0.25, 0.375])
def test_width_scales_every_filter_count(name, width):
    with torch.device("meta"):
        full = conv_widths(MODELS.get(name)(num_classes=10))
        narrow = conv_widths(MODELS.get(name)(num_classes=10, width=width))
    assert narrow == [scaled(f, width) for f in full]
    assert narrow != full


def test_densenet_width_scales_growth_and_stem():
    model = zoo.densenet18(num_classes=10, width=0.25)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].out_channels == 16                      # stem 64 × ¼
    assert convs[2].out_channels == 8                       # first 3×3 layer: growth 32 × ¼
    assert convs[1].out_channels == 4 * 8                   # bottleneck 4 × growth


def block_input_adds(model: nn.Module) -> int:
    """Count additions that take a block input (a ReLU/max-pool output or a projection) as operand."""
    graph = torch.fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())

    def is_block_input(node: torch.fx.Node) -> bool:
        if node.op != "call_module":
            return False
        target = str(node.target)
        return isinstance(modules[target], (nn.ReLU, nn.MaxPool2d)) or "downsample" in target

    count = 0
    for node in graph.nodes:
        if node.op == "call_function" and node.target in (operator.add, torch.add, operator.iadd):
            count += any(isinstance(a, torch.fx.Node) and is_block_input(a) for a in node.args)
    return count


@pytest.mark.parametrize("attention", [None, "se", "sa", "cbam"])
def test_skip_false_has_no_identity_path(attention):
    with_skip = zoo.resnet18(num_classes=10, width=1 / 8, attention=attention)
    without = zoo.resnet18(num_classes=10, width=1 / 8, attention=attention, skip=False)
    assert block_input_adds(with_skip) == 8                 # one residual addition per basic block
    assert block_input_adds(without) == 0
    assert not any("downsample" in name for name, _ in without.named_modules())


def test_noskip_variants_are_sequential_resnets():
    assert block_input_adds(zoo.resnet34_noskip(num_classes=10, width=1 / 16)) == 0
    assert block_input_adds(zoo.resnet18_noskip_cbam(num_classes=10, width=1 / 8)) == 0
    assert block_input_adds(zoo.resnet50(num_classes=10, width=1 / 16)) == 16


def test_stems_differ_as_in_the_thesis():
    imagenet = zoo.resnet18(num_classes=10, width=1 / 8)
    cifar = zoo.resnet18_cifar(num_classes=10, width=1 / 8)
    assert (imagenet.conv1.kernel_size, imagenet.conv1.stride) == ((7, 7), (2, 2))
    assert isinstance(imagenet.maxpool, nn.MaxPool2d)
    assert (cifar.conv1.kernel_size, cifar.conv1.stride) == ((3, 3), (1, 1))
    assert isinstance(cifar.maxpool, nn.Identity)
    features = {}
    for name, model in (("imagenet", imagenet), ("cifar", cifar)):
        model.layer4.register_forward_hook(lambda m, i, o, n=name: features.__setitem__(n, o.shape[-1]))
        model(torch.randn(2, 3, 32, 32))
    assert features == {"imagenet": 1, "cifar": 4}


def test_attention_modules_are_in_every_block():
    for kind, cls in (("se", "SqueezeExcitation"), ("sa", "SpatialAttention"), ("cbam", "CBAM")):
        model = zoo.resnet18(num_classes=10, width=1 / 8, attention=kind)
        found = [type(m.attention).__name__ for m in model.modules() if hasattr(m, "attention")]
        assert found == [cls] * 8


def test_vgg_dilation_dilates_convolutions_not_pools():
    model = zoo.vgg19_dilated(num_classes=10, width=1 / 16)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
    assert len(convs) == 16 and all(c.dilation == (3, 3) and c.padding == (3, 3) for c in convs)
    assert len(pools) == 5 and all(p.dilation == 1 for p in pools)
    out = model.features[:3](torch.randn(1, 3, 32, 32))   # same padding keeps the size
    assert out.shape[-2:] == (32, 32)


@pytest.mark.parametrize("resolution", [8, 16, 33, 224])
def test_vgg16_runs_at_small_odd_and_large_resolutions(resolution):
    model = zoo.vgg16(num_classes=10, in_channels=1, width=1 / 16).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, resolution, resolution)).shape == (2, 10)


def test_vgg_heads():
    with torch.device("meta"):
        mlp = zoo.vgg11(num_classes=10)
        linear = zoo.vgg11(num_classes=10, head="linear")
    assert [type(m).__name__ for m in mlp.classifier] == ["BatchNorm1d", "Dropout", "Linear", "ReLU",
                                                          "BatchNorm1d", "Dropout", "Linear"]
    assert mlp.classifier[2].out_features == 256
    assert isinstance(linear.classifier, nn.Linear) and linear.classifier.in_features == 512


def test_mpnet_layouts_follow_section_10_2():
    model = zoo.mpnet18(num_classes=10, width=1 / 8)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) + 1 == 34                             # 33 conv layers + the classifier
    assert sorted({c.kernel_size[0] for c in convs}) == [3, 7]
    first = model.stage2[0]
    assert [p[0].stride for p in first.paths] == [(2, 2), (2, 2)]
    assert [p[0].stride for p in model.stage2[1].paths] == [(1, 1), (1, 1)]
    deep = zoo.mpnet36(num_classes=10, width=1 / 8)
    assert len(deep.stage1) == 4
    assert [sum(isinstance(m, nn.Conv2d) for m in p) for p in deep.stage1[0].paths] == [1, 2]


def test_long_skip_mlp_adds_first_layer_to_skipped_output():
    model = zoo.mlp_long_skip(num_classes=10, skipped=4, tail=1)
    adds = [n for n in torch.fx.symbolic_trace(model).graph.nodes
            if n.op == "call_function" and n.target is operator.add]
    assert len(adds) == 1
    assert len(model.skipped) == 4 and len(model.tail) == 1


def test_torchvision_prefix_builds_classification_models():
    model = MODELS.get("tv:resnet18")(num_classes=7, in_channels=1)
    assert model.conv1.in_channels == 1 and model.fc.out_features == 7
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    small = MODELS.get("tv:mobilenet_v3_small")(num_classes=4)
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    with pytest.raises(RegistryError, match="Did you mean 'tv:resnet18'"):  # refused by name, before building
        MODELS.get("tv:resnet81")
    with pytest.raises(ValueError, match="tv:resnet18: its class ResNet takes block, layers"):
        MODELS.get("tv:resnet18")(num_classes=3, width=2)
    # RegNet's builders cannot run on the meta device, where the hint finds the class: it says where to look
    with pytest.raises(ValueError, match="bogus'; tv:regnet_y_400mf: see torchvision.models.regnet_y_400mf"):
        MODELS.get("tv:regnet_y_400mf")(num_classes=3, bogus=1)


def test_googlenet_trains_one_step_without_its_auxiliary_heads():
    """With weights=None torchvision kept the auxiliary classifiers: training mode returned GoogLeNetOutputs."""
    torch.manual_seed(0)
    model = MODELS.get("tv:googlenet")(num_classes=5, in_channels=1).train()
    output = model(torch.randn(2, 1, 64, 64))
    assert isinstance(output, torch.Tensor) and output.shape == (2, 5)
    nn.functional.cross_entropy(output, torch.tensor([0, 3])).backward()


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_torchvision_models_with_auxiliary_heads_build_without_warnings(name):
    """inception_v3 printed torchvision's FutureWarning about its weight initialisation on every build."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = MODELS.get(f"tv:{name}")(num_classes=3)
    torch.manual_seed(0)  # the same weights as torchvision's default initialisation, which the warning is about
    default = torchvision.models.get_model(name, weights=None, num_classes=3, aux_logits=False, init_weights=True)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), default.state_dict().values()))


@pytest.mark.parametrize("args, message", [
    ({"width": 0}, "width must be a positive number"),
    ({"width": "half"}, "width must be a positive number"),
    ({"stem": "tiny"}, "stem must be one of"),
    ({"attention": "eca"}, "attention must be one of"),
])
def test_bad_model_args_are_rejected(args, message):
    with pytest.raises(ValueError, match=message):
        zoo.resnet18(num_classes=10, **args)


def test_a_bad_choice_names_null_as_a_json_config_writes_it():
    """Configs are JSON: the choice None is written null, and a user who copied "None" from the message got a
    string that the same message refused again."""
    with pytest.raises(ValueError) as error:
        zoo.resnet18(num_classes=10, attention="None")
    assert "attention must be one of null, 'se', 'sa', 'cbam'; got 'None'" in str(error.value)


def test_vgg_rejects_bad_dilation_and_head():
    with pytest.raises(ValueError, match="dilation must be a positive integer"):
        zoo.vgg11(num_classes=10, dilation=0)
    with pytest.raises(ValueError, match="head must be one of"):
        zoo.vgg11(num_classes=10, head="dense")


def test_a_torchvision_model_s_new_first_convolution_keeps_the_model_s_initial_scale():
    """Its new first convolution got torch's default scale (0.083 against the model's 0.025 for ResNet18)."""
    torch.manual_seed(0)
    rgb = MODELS.get("tv:resnet18")(num_classes=10)
    gray = MODELS.get("tv:resnet18")(num_classes=10, in_channels=1)
    assert float(gray.conv1.weight.detach().std()) == pytest.approx(float(rgb.conv1.weight.detach().std()), rel=0.15)
    with torch.device("meta"):  # the executor's checks build every model on the meta device first
        meta = MODELS.get("tv:resnet18")(num_classes=10, in_channels=1)
    assert meta.conv1.weight.device.type == "meta" and meta.conv1.in_channels == 1


def test_linear_init_draws_every_linear_layer_again_and_keeps_the_convolutions(tmp_path):
    """model_args linear_init (docs/initialisation.md): the families' Kaiming fan-out on the output layer makes
    the first logits several times too large. The default draws the output layer again with torch's default;
    the other schemes draw every Linear layer again after the build."""
    from phd_lab.executor import TrainTestExecutor
    from phd_lab.grid import Grid
    from phd_lab.seeding import seed_everything
    losses, models = {}, {}
    for scheme in (None, "fan_in", "normal", "torch", "fan_out", "torch_output"):
        cfg = Grid({"model": "vgg16", "model_args": {"width": 0.5, "linear_init": scheme}, "dataset": "Digits",
                    "resolution": 16, "seed": 0, "logs_dir": str(tmp_path)}, "test")[0]
        executor = TrainTestExecutor(cfg, Registries(cfg.registries), progress=False)
        bundle = executor.build_data()
        seed_everything(0)
        models[scheme] = model = executor.build_model(bundle)
        inputs, targets = next(iter(bundle.train))
        with torch.no_grad():
            losses[scheme] = float(nn.functional.cross_entropy(model.train()(inputs), targets))
    assert losses[None] > 6 and losses["fan_out"] > 6, losses  # the families' own draw, drawn again or kept
    assert all(losses[scheme] < 3.5 for scheme in ("fan_in", "normal", "torch", "torch_output")), losses
    linear = [name for name, module in models[None].named_modules() if isinstance(module, nn.Linear)]
    assert len(linear) == 2
    for scheme, model in models.items():
        layers = dict(model.named_modules())
        for name, parameter in model.named_parameters():
            if name.startswith("features"):  # the convolutions (and norms) keep their draw
                assert torch.equal(parameter, dict(models[None].named_parameters())[name])
        for name in linear:
            weight, bias = layers[name].weight, layers[name].bias
            if scheme == "torch_output" and name != linear[-1]:  # the hidden head layer keeps its draw
                assert torch.equal(weight, dict(models[None].named_modules())[name].weight)
            elif scheme == "normal":
                assert weight.std().item() == pytest.approx(0.01, rel=0.2) and not bias.any()
            elif scheme in ("fan_in", "fan_out"):
                fan = weight.shape[1] if scheme == "fan_in" else weight.shape[0]
                assert weight.std().item() == pytest.approx((2 / fan) ** 0.5, rel=0.2) and not bias.any()
            elif scheme in ("torch", "torch_output"):
                bound = weight.shape[1] ** -0.5
                assert weight.abs().max().item() <= bound and bias.abs().max().item() <= bound and bias.any()


def test_the_default_draws_only_the_output_layer_again_so_that_deep_mlps_keep_their_signal():
    """mlp_long_skip's 137 square hidden Linear layers need their fan-out draw: torch's default on every Linear
    layer shrinks the signal about 6x per layer, so the logits no longer depend on the input. The default
    ("torch_output") draws only the output layer again; every model of the registry has it last."""
    from phd_lab.config import DEFAULT_LINEAR_INIT
    from phd_lab.models.init import output_layer, redraw_linear_layers
    assert DEFAULT_LINEAR_INIT == "torch_output"
    registries = Registries({})
    inputs = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    spread = {}
    for scheme in (None, "torch_output", "torch"):
        torch.manual_seed(0)
        model = registries.models.get("mlp_long_skip")(num_classes=10, in_channels=1)
        if scheme is not None:
            redraw_linear_layers(model, scheme)
        with torch.no_grad():
            spread[scheme] = model.eval()(inputs).var(dim=0).mean().item()
    assert spread[None] > 1 and spread["torch_output"] > 0.05 and spread["torch"] < 1e-6, spread
    for name in registries.models.names():
        if name.startswith("tv:"):
            continue
        with torch.device("meta"):  # the layers' shapes without drawing their weights
            model = registries.models.get(name)(num_classes=7, in_channels=3)
        if getattr(model, "phd_lab_objective", "classification") == "reconstruction":  # no output layer to draw again
            assert output_layer(model) is None, name
            continue
        assert output_layer(model).out_features == 7, name
        assert output_layer(model, (3, 32, 32)) is output_layer(model), name  # forward order: the same layer


class _SqueezeExcite(nn.Module):
    """Two Linear layers on the pooled channels; the block's deliberate init: the gate starts fully open."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(channels, 4), nn.Linear(4, channels)
        nn.init.zeros_(self.fc2.weight)
        nn.init.constant_(self.fc2.bias, 3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3))))))
        return x * gate[:, :, None, None]


class _ClassifierBeforeBlock(nn.Module):
    """Registers its classifier before the SE block that runs ahead of it."""

    def __init__(self, num_classes: int = 3, in_channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 3)
        self.classifier = nn.Linear(8, num_classes)
        self.se = _SqueezeExcite(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.se(self.conv(x)).mean((2, 3)))


class _ConvHead(nn.Module):
    """SE blocks inside, a 1x1 convolution gives the class scores: no Linear output layer."""

    def __init__(self, num_classes: int = 3, in_channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 3)
        self.se = _SqueezeExcite(8)
        self.head = nn.Conv2d(8, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.se(self.conv(x))).mean((2, 3))


def test_the_default_draws_the_layer_that_gives_the_scores_not_the_last_one_registered():
    """A researcher's model that registers an SE block after its classifier: "torch_output" drew the SE block's
    second Linear layer (the last in module order) again, wiping its deliberate init, and left the classifier
    with the fan-out draw. The output layer is now the last Linear layer the forward pass calls (traced on
    meta copies: the model's weights and the random stream untouched), and the run's log says what changed."""
    from phd_lab.models.init import output_layer, redraw_linear_layers
    torch.manual_seed(0)
    model = _ClassifierBeforeBlock()
    built = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    assert output_layer(model) is model.se.fc2  # module order: what earlier releases drew
    assert output_layer(model, (3, 16, 16)) is model.classifier
    state = torch.get_rng_state()
    note = redraw_linear_layers(model, "torch_output", (3, 16, 16))
    after = model.state_dict()
    changed = sorted(name for name in built if not torch.equal(built[name], after[name]))
    assert changed == ["classifier.bias", "classifier.weight"]
    assert not model.se.fc2.weight.any() and torch.equal(model.se.fc2.bias, torch.full((8,), 3.0))
    assert "the output layer 'classifier'" in note and "'se.fc2', registered after it, keeps the model's draw" in note
    torch.set_rng_state(state)  # the same draw as a redraw without the trace
    model.classifier.reset_parameters()
    assert torch.equal(model.classifier.weight, after["classifier.weight"])

    conv_head = _ConvHead()
    built = {name: tensor.clone() for name, tensor in conv_head.state_dict().items()}
    assert output_layer(conv_head, (3, 16, 16)) is None
    note = redraw_linear_layers(conv_head, "torch_output", (3, 16, 16))
    assert all(torch.equal(built[name], tensor) for name, tensor in conv_head.state_dict().items())
    assert "no Linear layer gives the model's output" in note and "'se.fc2'" in note

    lazy = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(5))
    assert output_layer(lazy, (3, 8, 8)) is lazy[2] and nn.parameter.is_lazy(lazy[2].weight)  # not materialised
    assert redraw_linear_layers(_ClassifierBeforeBlock(), "torch") is None  # every layer: nothing to say


def test_every_model_factory_keeps_the_registry_contract():
    """DESIGN.md's model contract: f(*, num_classes, in_channels=3, **model_args). mlp_long_skip defaulted to one
    channel, so a direct call without in_channels built a model for other inputs than every other factory's."""
    import inspect
    models = MODELS
    for name in models.names():
        parameters = inspect.signature(models.get(name)).parameters
        assert parameters["num_classes"].kind is inspect.Parameter.KEYWORD_ONLY, name
        assert parameters["num_classes"].default is inspect.Parameter.empty, name
        assert parameters["in_channels"].kind is inspect.Parameter.KEYWORD_ONLY, name
        assert parameters["in_channels"].default == 3, name


@pytest.mark.parametrize("ask", ["_model_class_parameters", "arguments_hint"])
def test_a_ctrl_c_while_a_torchvision_class_is_built_on_the_meta_device_stops_the_command(monkeypatch, ask):
    """The tv: argument checks build the model's class once on the meta device and took any failure for a class
    that cannot be built there: a Ctrl-C (as a compiled module's ImportError) only cost the hint or, cached for the
    process, every later argument check of that model."""
    from torchvision.models import _api

    from phd_lab.models import torchvision_models
    from tests.conftest import interrupted_import

    def interrupted_builder(**kwargs):
        interrupted_import()

    monkeypatch.setitem(_api.BUILTIN_MODELS, "phd_lab_interrupted_net", interrupted_builder)  # register_model's dict
    with pytest.raises(KeyboardInterrupt):
        getattr(torchvision_models, ask)("phd_lab_interrupted_net")
