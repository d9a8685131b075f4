"""FLOPs and parameter counts against hand-computed values of tiny models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from phd_lab.analysis.flops import FUNCTIONAL_ROW, LAYER_COLUMNS, ROOT_ROW, computational_info
from tests.conftest import interrupted_import


def tiny(bias: bool) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=bias), nn.Flatten(), nn.Linear(2 * 8 * 8, 3, bias=bias))


def test_macs_match_hand_computation_without_bias():
    info, table = computational_info(tiny(False), (1, 8, 8))
    conv = 8 * 8 * 2 * 1 * 3 * 3  # output positions × out channels × in channels × kernel area
    linear = 128 * 3
    assert info["macs"] == conv + linear == 1536
    assert info["flops"] == 2 * info["macs"]
    assert info["params_total"] == info["params_trainable"] == 2 * 9 + 128 * 3
    assert list(table.columns) == LAYER_COLUMNS
    rows = table.set_index("layer")
    assert rows.loc["0", "macs"] == conv and rows.loc["2", "macs"] == linear
    assert rows.loc[FUNCTIONAL_ROW, "macs"] == 0
    assert table["macs"].sum() == info["macs"]
    assert rows.loc["0", "flops"] == 2 * conv and rows.loc["2", "flops"] == 2 * linear  # FLOPs = 2 x MACs per row
    assert table["flops"].sum() == info["flops"]


def test_bias_residual_and_frozen_parameters():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1)  # with bias
            self.head = nn.Linear(2, 3)

        def forward(self, x):
            y = self.conv(x) + x  # the residual addition written as an operator: not counted
            return self.head(y.mean((2, 3)))

    model = Block()
    model.head.weight.requires_grad_(False)
    info, table = computational_info(model, (2, 4, 4))
    conv = 4 * 4 * 2 * 2 + 2 * 4 * 4  # MACs plus one per output element for the bias
    head = 2 * 3 + 3
    rows = table.set_index("layer")
    assert rows.loc["conv", "macs"] == conv and rows.loc["head", "macs"] == head
    assert info["macs"] == table["macs"].sum() >= conv + head
    assert rows.loc[FUNCTIONAL_ROW, "macs"] == info["macs"] - conv - head
    assert info["params_total"] == 6 + 9 and info["params_trainable"] == 6 + 3
    assert rows.loc["head", "trainable_params"] == 3
    # the caller's model is left as it was
    assert not any(hasattr(m, "__flops__") for m in model.modules())
    assert torch.equal(model(torch.ones(1, 2, 4, 4)), model(torch.ones(1, 2, 4, 4)))


def test_activation_and_pooling_modules_count_once_and_outside_functional_calls_count():
    """ptflops' own total also adds the F.relu / F.max_pool2d calls nn.ReLU / nn.MaxPool2d make
    internally; a functional call in forward() that no module makes is counted once, in its row."""
    modules = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.ReLU(), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1))
    info, table = computational_info(modules, (1, 4, 4))
    rows = table.set_index("layer")
    # conv 16 positions, ReLU 16 elements, max pool 16 input elements, adaptive pool 4 elements
    assert [rows.loc[name, "macs"] for name in ("0", "1", "2", "3")] == [16, 16, 16, 4]
    assert rows.loc[FUNCTIONAL_ROW, "macs"] == 0
    assert info["macs"] == 52

    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 1, bias=False)

        def forward(self, x):
            return torch.nn.functional.relu(self.conv(x))

    info, table = computational_info(Functional(), (1, 4, 4))
    assert table.set_index("layer").loc[FUNCTIONAL_ROW, "macs"] == 16
    assert info["macs"] == 32


class CountedConv(nn.Conv2d):
    pass


def test_subclasses_of_counted_modules_count_as_their_base():
    plain = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 2))
    derived = nn.Sequential(CountedConv(3, 4, 3, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 2))
    derived.load_state_dict(plain.state_dict())
    info, layers = computational_info(derived, (3, 8, 8))
    assert layers.set_index("layer").loc["0", "macs"] == 36 * 4 * 27  # 6×6 positions × C_out × k·k·C_in
    assert info["macs"] == computational_info(plain, (3, 8, 8))[0]["macs"]


class NormedConv(nn.Conv2d):
    """A Conv2d subclass with a child module of its own that its forward calls."""

    def __init__(self) -> None:
        super().__init__(1, 2, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(2)

    def forward(self, x):
        return self.norm(super().forward(x))


def test_the_submodules_of_a_subclass_of_a_counted_module_are_counted_too():
    """ptflops' rule for the base class counts the convolution only, so the subclass' own child is a row of its
    own; only a module of a type ptflops knows exactly (MultiheadAttention) already contains its children."""
    info, layers = computational_info(nn.Sequential(NormedConv()), (1, 4, 4))
    rows = layers.set_index("layer")
    conv = 4 * 4 * 2 * 1 * 3 * 3  # output positions × C_out × C_in × kernel area
    norm = 2 * (2 * 4 * 4)  # affine batch norm: two per element
    assert rows.loc["0", "macs"] == conv and rows.loc["0.norm", "macs"] == norm
    assert info["macs"] == conv + norm


def test_the_submodules_of_a_module_ptflops_counts_whole_are_not_counted_again():
    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = nn.MultiheadAttention(8, 2)  # ptflops' rule counts its out_proj (a Linear subclass)

        def forward(self, x):
            return self.mha(x, x, x)[0]

    info, layers = computational_info(Attention(), (4, 8))
    assert layers["layer"].tolist() == ["mha", FUNCTIONAL_ROW]
    assert info["macs"] == layers["macs"].sum() > 0


def test_functional_convolutions_are_named_not_guessed(caplog):
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 3, 3, 3))
            self.fc = nn.Linear(4 * 36, 2)

        def forward(self, x):
            return self.fc(torch.nn.functional.conv2d(x, self.weight).flatten(1))

    with caplog.at_level("WARNING"):
        info, _ = computational_info(Functional(), (3, 8, 8))
    assert info["uncounted_convolutions"] == 1
    assert "leave out 1 convolution call(s) made with F.conv2d" in caplog.text
    assert computational_info(nn.Sequential(nn.Conv2d(3, 4, 3)), (3, 8, 8))[0]["uncounted_convolutions"] == 0



def test_functional_linear_heads_count_as_linear_layers_and_torch_conv2d_is_named():
    """F.linear outside a Linear module (a cosine-classifier head, a functional MLP) has the Linear rule's MACs
    in the functional row, per row of a 3-D input too; ptflops 0.7.5 left it out (0 MACs, no warning). A
    convolution written torch.conv2d is named as F.conv2d is."""
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.kernel = nn.Parameter(torch.randn(4, 3, 3, 3))
            self.head = nn.Parameter(torch.randn(5, 4))
            self.bias = nn.Parameter(torch.zeros(5))
            self.tokens = nn.Linear(4, 5)

        def forward(self, x):
            maps = torch.conv2d(x, self.kernel)  # (1, 4, 6, 6)
            sequence = maps.flatten(2).transpose(1, 2)  # (1, 36, 4)
            pooled = maps.flatten(2).mean(2)
            return F.linear(pooled, self.head, self.bias) + F.linear(sequence, self.head).mean(1) + \
                self.tokens(sequence).mean(1)

    originals = F.linear, torch.conv2d
    info, table = computational_info(Functional(), (3, 8, 8))
    rows = table.set_index("layer")["macs"]
    assert rows["tokens"] == 36 * (4 * 5 + 5)  # nn.Linear on the 3-D input: in·out + out per row
    assert rows[FUNCTIONAL_ROW] == (4 * 5 + 5) + 36 * 4 * 5
    assert info["macs"] == rows.sum() and info["uncounted_convolutions"] == 1
    assert (F.linear, torch.conv2d) == originals and F.conv2d is torch.conv2d  # restored

def test_a_data_parallel_model_is_counted_as_the_model_it_wraps():
    """Rows are named as the model names its layers (not ``module.0``), with the same counts."""
    model = tiny(True)
    info, table = computational_info(nn.DataParallel(model), (1, 8, 8))
    plain_info, plain_table = computational_info(model, (1, 8, 8))
    assert table["layer"].tolist() == ["0", "2", FUNCTIONAL_ROW]
    assert table.equals(plain_table) and info == plain_info


def test_a_module_called_twice_is_one_row_with_the_macs_of_both_calls():
    class Reused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1, bias=False)

        def forward(self, x):
            return self.conv(self.conv(x))

    info, table = computational_info(Reused(), (2, 4, 4))
    one_call = 4 * 4 * 2 * 2 * 9
    assert table["layer"].tolist() == ["conv", FUNCTIONAL_ROW]
    assert table.set_index("layer").loc["conv", "macs"] == 2 * one_call == info["macs"]


def test_a_model_that_is_itself_a_counted_layer_is_counted():
    """An nn.Linear or nn.Conv2d (or a subclass) used as the whole model is one row, not zero MACs, and its
    convolution is not reported as a functional one."""
    info, table = computational_info(nn.Linear(8, 4), (1, 1, 8))
    assert table["layer"].tolist() == [ROOT_ROW, FUNCTIONAL_ROW]
    assert info["macs"] == table.set_index("layer").loc[ROOT_ROW, "macs"] == 8 * 4 + 4
    for conv in (nn.Conv2d(3, 4, 3), CountedConv(3, 4, 3)):
        info, table = computational_info(conv, (3, 8, 8))
        assert info["macs"] == 36 * 4 * 27 + 4 * 36  # 6×6 positions × C_out × k·k·C_in, plus the bias per output
        assert info["uncounted_convolutions"] == 0
        assert table["layer"].tolist() == [ROOT_ROW, FUNCTIONAL_ROW]


class TwoKernels(nn.Module):
    """A stem, two parallel branches of 3×3 and 5×5 (receptive fields 5 and 7), then three 3×3 convolutions: at
    8 px (thesis §9.3, §10.2) b_max is c2 (in_r_max 7, 9, 11 into c1, c2, c3) and b_min is c3 (r_{l-1,min} 5, 7, 9)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.p, self.q = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 5, padding=2)
        self.c1, self.c2, self.c3 = (nn.Conv2d(4, 4, 3, padding=1) for _ in range(3))
        self.head = nn.Linear(4, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.p(x) + self.q(x))
        return self.head(self.c3(self.c2(self.c1(x))).mean((2, 3)))


def test_the_flops_step_measures_the_truncation_at_b_min_not_b_max(tmp_path):
    """``truncate: border`` cuts at b_min, so the flops step measures that cut; on a chain b_min = b_max, which
    hid a step that measured at b_max. Cutting c3 removes c3 and the head (148 + 50 parameters) and adds a
    GAP + Linear(4, 10) head (50): 148 parameters saved."""
    import json

    from torch.utils.data import DataLoader, TensorDataset

    from phd_lab.analysis.receptive_field import border_layers, receptive_fields
    from phd_lab.config_file import load_config_file
    from phd_lab.data import DataBundle
    from phd_lab.grid import Grid
    from phd_lab.rundir import RunDir
    from phd_lab.steps import StepContext
    from phd_lab.steps.flops import FlopsStep
    from tests.conftest import write_config

    torch.manual_seed(0)
    model = TwoKernels().eval()
    assert border_layers(receptive_fields(model, 8), 8) == ("c3", "c2")
    loader = DataLoader(TensorDataset(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)), batch_size=2)
    bundle = DataBundle(name="zeros", train=loader, test=loader, train_eval=loader, num_classes=10, in_channels=1,
                        resolution=8)
    rundir = RunDir(root=tmp_path / "run", name="run")
    rundir.root.mkdir()
    context = StepContext(config=Grid(load_config_file(write_config(tmp_path)))[0], rundir=rundir, model=model,
                          bundle=bundle, device=torch.device("cpu"), progress=False)
    FlopsStep().run(context)
    truncation = json.loads(rundir.computational_info_json.read_text())["truncation"]
    assert truncation["border"] == "c3" and truncation["exact"] is True
    assert truncation["removed_layers"] == ["c3", "head"]
    assert truncation["params_saved"] == (4 * 4 * 9 + 4) + (4 * 10 + 10) - (4 * 10 + 10) == 148


def test_a_ctrl_c_in_the_counted_forward_pass_stops_the_step():
    """ptflops' forward pass took any error for a model it cannot count: a Ctrl-C (as a compiled module's
    ImportError) failed the flops step with 'ptflops could not count the operations' (exit 1)."""
    class Interrupted(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x):
            interrupted_import()
            return self.conv(x)

    with pytest.raises(KeyboardInterrupt):
        computational_info(Interrupted(), (1, 8, 8))


def test_a_ctrl_c_while_the_truncation_is_measured_stops_the_step(tmp_path, caplog):
    """The truncation savings beside the FLOPs table took any error for one of the estimate: a Ctrl-C while the
    truncated model ran was a warning ('could not be measured'), and the step wrote its table as if finished."""
    from torch.utils.data import DataLoader, TensorDataset

    from phd_lab.config_file import load_config_file
    from phd_lab.data import DataBundle
    from phd_lab.grid import Grid
    from phd_lab.rundir import RunDir
    from phd_lab.steps import StepContext
    from phd_lab.steps.flops import border_truncation
    from tests.conftest import write_config

    full = computational_info(TwoKernels().eval(), (1, 8, 8))
    model = TwoKernels().eval()

    def ctrl_c_on_real_input(module: nn.Module, inputs: tuple[torch.Tensor]) -> None:
        if not inputs[0].is_meta:  # the shapes' recording runs on meta tensors; the truncated model on real ones
            interrupted_import()

    model.stem.register_forward_pre_hook(ctrl_c_on_real_input)
    loader = DataLoader(TensorDataset(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)), batch_size=2)
    bundle = DataBundle(name="zeros", train=loader, test=loader, train_eval=loader, num_classes=10, in_channels=1,
                        resolution=8)
    context = StepContext(config=Grid(load_config_file(write_config(tmp_path)))[0],
                          rundir=RunDir(root=tmp_path / "run", name="run"), model=model, bundle=bundle,
                          device=torch.device("cpu"), progress=False)
    with pytest.raises(KeyboardInterrupt):
        border_truncation(context, full)
    assert "could not be measured" not in caplog.text


@pytest.mark.parametrize(("written", "counted"), [("x + y", False), ("x * y", False), ("x.add_(y)", False),
                                                  ("torch.add(x, y)", True), ("x.add(y)", True),
                                                  ("torch.mul(x, y)", True), ("x.mul(y)", True)])
def test_element_wise_arithmetic_is_counted_as_written_and_the_docstring_says_so(written, counted):
    """The module docstring said element-wise arithmetic "is not counted by ptflops at all"; ptflops counts the
    calls torch.add/torch.mul and the methods .add/.mul (one MAC per output element), not the operators."""
    import phd_lab.analysis.flops as flops

    class Merge(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1, bias=False)

        def forward(self, y):
            x = self.conv(y)
            return eval(written, {"torch": torch}, {"x": x, "y": y})

    info, table = computational_info(Merge(), (2, 4, 4))
    assert table.set_index("layer").loc[FUNCTIONAL_ROW, "macs"] == (2 * 4 * 4 if counted else 0)
    assert info["macs"] == 2 * 4 * 4 * 2 + (2 * 4 * 4 if counted else 0)
    doc = " ".join(flops.__doc__.split())
    assert "is not counted by ptflops at all" not in doc
    assert "``torch.add``/``torch.mul`` and the methods ``x.add(y)``/``x.mul(y)``" in doc
