"""PCA layers: pass-through while collecting, exact projections in eval mode, delta changes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from phd_lab.tracking.pca import Conv2dPCA, LinearPCA, insert_pca_layers
from phd_lab.tracking.saturation import intrinsic_dimension, sorted_eigenvalues


def correlated(n: int = 500, d: int = 8, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(d, d, generator=generator) * torch.logspace(0, -2, d)[:, None]
    return torch.randn(n, d, generator=generator) @ mixing + 3.0


def collected(layer: nn.Module, data: torch.Tensor) -> nn.Module:
    layer.train()
    for chunk in data.split(64):
        assert torch.equal(layer(chunk), chunk)  # pass-through while collecting
    return layer.eval()


def test_delta_one_is_the_identity() -> None:
    data = correlated()
    layer = collected(LinearPCA(8, delta=1.0), data)
    assert layer.k == 8
    assert torch.equal(layer(data), data)
    probe = torch.randn(10, 8)
    # the explicit full-rank projection is the identity up to rounding as well
    matrix = layer.projection_matrix().float()
    assert torch.allclose(probe @ matrix, probe, atol=1e-5)


@pytest.mark.parametrize("layer_type", [LinearPCA, Conv2dPCA])
def test_delta_one_is_the_identity_also_for_directions_without_variance(layer_type) -> None:
    """A unit that never fired while collecting (zero variance) must still pass new data at delta = 1:
    the thesis' 100 % is the unprojected network, not the rank of the collected covariance."""
    data = correlated()
    data[:, 3] = 0.0  # dead unit
    if layer_type is Conv2dPCA:
        data = data.reshape(-1, 8, 1, 1)
    layer = collected(layer_type(8, delta=1.0), data)
    assert layer.k == 8
    fresh = torch.randn(data.shape, generator=torch.Generator().manual_seed(3))
    assert torch.equal(layer(fresh), fresh)
    layer.use_random_basis(torch.Generator().manual_seed(4))  # the control: k = 8 random directions span all
    assert torch.allclose(layer(fresh), fresh, atol=1e-5)


@pytest.mark.parametrize("centered", [False, True])
def test_projection_keeps_k_leading_directions_and_changing_delta_reprojects(centered) -> None:
    """The thesis' Eq. 12, x PᵀP with P from the centred covariance; or, centered, μ + (x − μ) PᵀP."""
    data = correlated() + 2.0  # a mean away from 0, which the two forms treat differently
    layer = collected(LinearPCA(8, delta=0.99, centered=centered), data)
    cov = np.cov(data.double().numpy(), rowvar=False, bias=True)
    eigenvalues, vectors = np.linalg.eigh(cov)
    eigenvalues, vectors = eigenvalues[::-1], vectors[:, ::-1]
    for delta in (0.5, 0.9, 0.99):
        layer.set_delta(delta)  # no new data: the cached eigendecomposition is reused
        k = intrinsic_dimension(sorted_eigenvalues(cov), delta)
        assert layer.k == k and 0 < k < 8
        out = layer(data).double().numpy()
        x, mean = data.double().numpy(), data.double().numpy().mean(axis=0)
        basis = vectors[:, :k]
        expected = mean + (x - mean) @ basis @ basis.T if centered else x @ basis @ basis.T
        assert np.allclose(out, expected, atol=1e-4)
        assert not np.allclose(out, x @ basis @ basis.T if centered else mean + (x - mean) @ basis @ basis.T,
                               atol=1e-2)
        # the output varies only inside the k-dimensional eigenspace
        out_cov = np.cov(out, rowvar=False, bias=True)
        assert np.linalg.matrix_rank(out_cov, tol=1e-4 * eigenvalues[0]) == k


def test_switching_to_train_mode_starts_a_new_covariance() -> None:
    layer = collected(LinearPCA(8), correlated(seed=1))
    first = layer.accumulator.covariance().clone()
    collected(layer, correlated(seed=2))
    second = collected(LinearPCA(8), correlated(seed=2)).accumulator.covariance()
    assert torch.equal(layer.accumulator.covariance(), second) and not torch.equal(first, second)


@pytest.mark.parametrize("centered", [False, True])
def test_conv_pca_projects_every_position_like_the_linear_layer(centered) -> None:
    torch.manual_seed(0)
    maps = torch.randn(6, 5, 7, 7) * torch.tensor([3.0, 1.0, 0.3, 0.1, 0.01])[None, :, None, None] + 1.0
    conv = collected(Conv2dPCA(5, delta=0.95, centered=centered), maps)
    rows = maps.permute(0, 2, 3, 1).reshape(-1, 5)
    linear = collected(LinearPCA(5, delta=0.95, centered=centered), rows)
    assert conv.k == linear.k < 5
    expected = linear(rows).reshape(6, 7, 7, 5).permute(0, 3, 1, 2)
    assert torch.allclose(conv(maps), expected, atol=1e-5)


def test_eval_without_data_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="no covariance"):
        LinearPCA(4).eval()(torch.randn(2, 4))


def test_insert_pca_layers_follows_every_conv_and_linear() -> None:
    """Below delta 1 the wrapped model equals projecting each layer's output by hand, in forward order."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    projected, layers = insert_pca_layers(model, delta=0.9)
    assert list(layers) == ["0", "3"] and sum(isinstance(m, (Conv2dPCA, LinearPCA)) for m in projected.modules()) == 2
    assert isinstance(layers["0"], Conv2dPCA) and isinstance(layers["3"], LinearPCA)
    assert not any(isinstance(m, (Conv2dPCA, LinearPCA)) for m in model.modules())  # original untouched
    data = torch.randn(50, 1, 8, 8)
    for layer in layers.values():
        layer.train()
    projected(data)
    for layer in layers.values():
        layer.eval()
    assert 0 < layers["0"].k < 4  # a real projection (the Linear may keep all 3 directions)

    def by_hand(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:  # Eq. 12 per position
        matrix = layer.projection_matrix().float()
        return (x.movedim(1, -1) @ matrix).movedim(-1, 1) if x.dim() == 4 else x @ matrix
    conv = by_hand(model[0](data), layers["0"])
    expected = by_hand(model[3](model[2](model[1](conv))), layers["3"])
    assert torch.allclose(projected(data), expected, atol=1e-5)
    assert not torch.allclose(projected(data), model(data), atol=1e-3)  # the projection does change the output


def test_a_rank_deficient_layer_keeps_no_negative_eigenvalues() -> None:
    """More features than directions of variance: rounding makes the extra eigenvalues slightly negative, and
    the layer's spectrum (what k is read from) holds them as 0. Which seeds round below 0 depends on the CPU's
    kernels (seed 2 did on one machine and not on another), so ten are tried and at least one must."""
    rounded_below_zero = 0
    for seed in range(10):
        generator = torch.Generator().manual_seed(seed)
        data = torch.randn(300, 2, generator=generator) @ torch.randn(2, 12, generator=generator)
        layer = collected(LinearPCA(12, delta=0.99), data)
        negative = bool(torch.linalg.eigvalsh(layer.accumulator.covariance()).min() < 0.0)
        values, _ = layer.eigen()
        assert (values.min() == 0.0 if negative else values.min() > 0.0)
        assert torch.all(values[:-1] >= values[1:]) and layer.k <= 2
        rounded_below_zero += negative
    assert rounded_below_zero > 0  # otherwise the test shows nothing about negative eigenvalues


def test_the_saturation_of_a_projection_is_the_mean_of_the_layers_saturations() -> None:
    """s_μ averages k / features over the layers (thesis §7.4), so a narrow layer weighs as much as a wide one;
    Σk / Σfeatures, the other reading, is what dims_sum / feature_dims_sum give."""
    from phd_lab.tracking.projection import projection_table
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 40), nn.ReLU(), nn.Linear(40, 4))
    data = [(torch.randn(50, 10), torch.randint(0, 4, (50,))) for _ in range(3)]
    layer_dims: list[dict] = []
    table = projection_table(model, data, data, torch.device("cpu"), deltas=[0.9], random_control=False,
                             layer_dims=layer_dims)
    (row,) = table[table["basis"] == "pca"].to_dict("records")
    assert {d["layer"]: d["features"] for d in layer_dims} == {"0": 40, "2": 4}
    expected = np.mean([d["k"] / d["features"] for d in layer_dims])
    assert row["saturation_mean"] == pytest.approx(expected, rel=1e-12)
    assert row["dims_sum"] == sum(d["k"] for d in layer_dims) and row["feature_dims_sum"] == 44
    assert abs(row["saturation_mean"] - row["dims_sum"] / row["feature_dims_sum"]) > 0.01


def test_a_layer_the_eval_forward_never_calls_stays_unprojected_and_uncounted(caplog) -> None:
    """An auxiliary head that runs only in training mode (GoogLeNet, Inception v3) gets no covariance in the
    project step's eval-mode pass: it is left out with a warning instead of failing the step."""
    from phd_lab.tracking.projection import projection_table

    class WithAuxHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
            self.aux = nn.Linear(4 * 6 * 6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.body(x)
            return out + self.aux(self.body[2](self.body[1](self.body[0](x)))) if self.training else out

    torch.manual_seed(0)
    data = [(torch.randn(20, 1, 8, 8), torch.randint(0, 3, (20,))) for _ in range(3)]
    with caplog.at_level("WARNING"):
        table = projection_table(WithAuxHead(), data, data, torch.device("cpu"), deltas=[0.9, 0.99])
    assert "aux" in caplog.text
    assert set(table["feature_dims_sum"]) == {4 + 3}  # body.0 and body.3 only


def test_projection_table_leaves_a_training_model_in_the_modes_it_was_in() -> None:
    """Called from a training loop, the table evaluated the model in eval mode and left it there: the epochs after
    it trained without dropout and with frozen batch-norm statistics. Each module's own mode is restored (a
    batch norm the researcher froze stays in eval mode), and the model's accuracy is still an eval-mode one."""
    from phd_lab.tracking.projection import projection_table

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Dropout(0.5),
                          nn.Linear(4 * 6 * 6, 3))
    model[1].eval()
    data = [(torch.randn(20, 1, 8, 8), torch.randint(0, 3, (20,))) for _ in range(2)]
    modes = [module.training for module in model.modules()]
    table = projection_table(model, data, data, torch.device("cpu"), deltas=[0.9], random_control=False)
    assert [module.training for module in model.modules()] == modes
    model.eval()
    expected = sum(int((model(x).argmax(1) == y).sum()) for x, y in data) / 40
    assert table.loc[table["basis"] == "none", "accuracy"].item() == expected


def test_a_module_the_forward_pass_calls_twice_is_named_unless_it_pools_its_calls_by_design(caplog) -> None:
    """A conv called twice per forward pass got one PCA layer that collected both calls and projected both onto
    that one basis without a word, where saturation tracking warns of the same module. Named now, with its number of
    calls, unless the module is marked pools_repeated_calls (CBAM's shared channel MLP)."""
    from phd_lab.tracking.projection import projection_table

    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(1, 4, 3, padding=1)
            self.twice = nn.Conv2d(4, 4, 3, padding=1)
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.twice(torch.relu(self.twice(torch.relu(self.stem(x))))))

    torch.manual_seed(0)
    data = [(torch.randn(20, 1, 8, 8), torch.randint(0, 3, (20,))) for _ in range(3)]
    model = Shared()
    with caplog.at_level("WARNING"):
        first = projection_table(model, data, data, torch.device("cpu"), deltas=[0.9], run_name="shared-run")
    assert "shared-run: the forward pass calls twice (2 calls) more than once" in " ".join(caplog.text.split())
    assert "stem" not in caplog.text and "head" not in caplog.text
    caplog.clear()
    model.twice.pools_repeated_calls = True
    with caplog.at_level("WARNING"):
        again = projection_table(model, data, data, torch.device("cpu"), deltas=[0.9], run_name="shared-run")
    assert "more than once" not in caplog.text
    pd.testing.assert_frame_equal(first, again)  # a warning only: the same projections


def test_multihead_attention_keeps_its_out_proj_unwrapped() -> None:
    """nn.MultiheadAttention uses out_proj's weight in a functional kernel and never calls it: wrapping it
    would break the attention (and its PCA layer would never see data)."""
    from phd_lab.tracking.pca import projectable_layers
    from tests.test_tracking import AttentionNet
    torch.manual_seed(0)
    model = AttentionNet().eval()
    assert [name for name, _ in projectable_layers(model)] == ["embed", "head"]
    projected, layers = insert_pca_layers(model, delta=0.95)
    data = torch.randn(30, 5, 6)
    for layer in layers.values():
        layer.train()
    projected(data)
    for layer in layers.values():
        layer.eval()
    assert projected(data).shape == (30, 3)


def test_unbatched_conv_input_is_collected_as_one_image() -> None:
    layer = Conv2dPCA(3, delta=0.99).train()
    maps = torch.randn(3, 5, 5)
    layer(maps)
    assert layer.accumulator.n == 25


def test_excluded_layers_get_no_pca_layer_and_resnet18_block_dimensions_are_the_thesis_3904():
    """Thesis §7.4.2 projects 3,904 dimensions of ResNet18: its block convolutions and the stem, without the
    1×1 downsampling shortcuts and the output layer."""
    from registries.models import resnet18
    from phd_lab.tracking.pca import insert_pca_layers
    _, every = insert_pca_layers(resnet18(num_classes=10))
    projected, kept = insert_pca_layers(resnet18(num_classes=10), exclude=["*downsample*", "fc"])
    assert len(every) == 21 and len(kept) == 17
    assert sum(layer.features for layer in kept.values()) == 3904
    assert not any("downsample" in name for name in kept) and "fc" not in kept
    assert not hasattr(projected.fc, "pca_projection") and not projected.fc._forward_hooks  # left as it was
    assert hasattr(projected.layer1[0].conv1, "pca_projection")


def test_projection_keeps_the_layers_a_transformer_encoder_reads_directly() -> None:
    """In evaluation mode nn.TransformerEncoderLayer checks its fast path by reading ``linear1.weight`` and
    ``linear2.weight``: replacing those layers by a wrapper made the project step fail after training."""
    from phd_lab.tracking.projection import projection_table
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True),
                          nn.Flatten(), nn.Linear(5 * 8, 3))
    data = torch.randn(40, 5, 4)
    labels = torch.randint(0, 3, (40,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data, labels), batch_size=10)
    projected, layers = insert_pca_layers(model, delta=1.0)
    assert {"1.linear1", "1.linear2"} <= set(layers)
    for layer in layers.values():
        layer.train()
    projected(data)
    projected.eval()
    with torch.no_grad():
        assert torch.allclose(projected(data), model.eval()(data), atol=1e-5)  # delta 1 projects onto everything
    table = projection_table(model, loader, loader, deltas=[0.9, 1.0], device="cpu")
    assert set(table["basis"]) == {"none", "pca", "random"} and table["accuracy"].notna().all()


def test_project_step_names_what_leaves_nothing_to_project() -> None:
    """Both refusals said what was wrong alone ('the model has no Conv2d or Linear layer to project.'), not what to
    do: they name the step's way out (leave it out of post_processing, or exclude fewer of the layers named)."""
    from phd_lab.errors import ConfigError
    from phd_lab.steps.project import Project
    with pytest.raises(ConfigError, match=r"the model has no Conv2d or Linear layer to project \(the only layers the "
                                          r"step projects\); leave 'project' out of post_processing\."):
        Project().check_model({"exclude": []}, nn.Sequential(nn.LSTM(3, 4)), "x.json")
    with pytest.raises(ConfigError, match=r"'exclude' \['\*'\] leaves no layer to project; exclude fewer of the "
                                          r"model's Conv2d and Linear layers \(0, 1\), or leave 'project' out"):
        Project().check_model({"exclude": ["*"]}, nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)), "x.json")


def test_a_layer_with_overflowing_activations_is_named_instead_of_an_eigh_failure() -> None:
    """A finite model whose activations overflow (float16 or float32) failed in torch.linalg.eigh with
    'The algorithm failed to converge' and no layer name."""
    from phd_lab.tracking.projection import projection_table

    class Overflowing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first, self.second = nn.Linear(4, 4), nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            hidden = self.first(x)
            return self.second(torch.where(hidden > 0.5, torch.full_like(hidden, float("inf")), hidden))

    torch.manual_seed(0)
    data = [(torch.randn(20, 4), torch.randint(0, 3, (20,))) for _ in range(2)]
    with pytest.raises(ValueError, match=r"layer\(s\) second hold NaN or inf values on the training set"):
        projection_table(Overflowing(), data, data, torch.device("cpu"), deltas=[0.9])
    table = projection_table(Overflowing(), data, data, torch.device("cpu"), deltas=[0.9], exclude=["second"])
    assert set(table["feature_dims_sum"]) == {4}


def test_a_layer_set_to_training_mode_again_keeps_collecting() -> None:
    """Only switching into training mode starts a new covariance: a collecting layer told train() once more (a
    parent's train() in the middle of the pass) keeps what it has."""
    data = correlated()
    layer = LinearPCA(8).train()
    layer(data[:200])
    layer.train()
    layer(data[200:])
    assert layer.accumulator.n == len(data)
    assert torch.allclose(layer.accumulator.covariance(), collected(LinearPCA(8), data).accumulator.covariance())


def test_a_new_covariance_gives_a_new_eigenspace() -> None:
    """Collecting again after an evaluation projects onto the new data's directions, not the cached old ones."""
    first, second = correlated(seed=1), correlated(seed=2)
    layer = collected(LinearPCA(8, delta=0.9), first)
    layer(first)  # computes and caches the first data's eigenspace
    collected(layer, second)
    fresh = collected(LinearPCA(8, delta=0.9), second)
    assert layer.k == fresh.k
    assert torch.allclose(layer(second), fresh(second), atol=1e-5)


def test_k_read_while_collecting_is_not_kept_for_the_data_collected_after_it() -> None:
    """A k or eigenspace read in the middle of the collection (a researcher's progress print) is of the data so
    far: the projection after the rest of the data is that of all of it, not the cached part's."""
    first = torch.randn(100, 4, generator=torch.Generator().manual_seed(0)) * torch.tensor([10.0, 1, 1, 1])
    second = torch.randn(1000, 4, generator=torch.Generator().manual_seed(1)) * torch.tensor([1.0, 1, 1, 10])
    layer = LinearPCA(4, delta=0.9).train()
    layer(first)
    assert layer.k == 1
    layer.projection_matrix()
    layer(second)
    fresh = collected(LinearPCA(4, delta=0.9), torch.cat([first, second]))
    assert layer.k == fresh.k == 1  # one direction still, but the last feature's, no longer the first's
    layer.eval()
    assert torch.allclose(layer(torch.eye(4)), fresh(torch.eye(4)), atol=1e-6)


def test_k_is_thresholded_once_per_covariance_and_delta_and_a_new_delta_reprojects() -> None:
    """Every eval-mode forward asks for k; it is thresholded from the cached eigenvalues once per covariance and
    delta, not again for every batch. Overwriting those eigenvalues shows it: k and the projection stay those of
    the first thresholding until delta changes, and a new covariance gives the data's own k again."""
    data = correlated()
    layer = collected(LinearPCA(8, delta=0.9), data)
    first, k = layer(data), layer.k
    assert 0 < k < 8
    values, vectors = layer.eigen()
    values.fill_(1.0)  # thresholded again, delta 0.9 of eight equal eigenvalues would keep all eight
    assert layer.k == k and torch.equal(layer(data), first)
    layer.set_delta(0.5)  # a new delta is thresholded on the eigenvalues as they are now: four of eight
    basis = vectors[:, :4]
    assert layer.k == 4
    assert torch.allclose(layer(data).double(), data.double() @ basis @ basis.T, atol=1e-4)
    layer.set_delta(0.9)
    assert layer.k == 8 and torch.equal(layer(data), data)
    collected(layer, data)  # a new covariance: the data's eigenvalues, and their k, again
    assert layer.k == k and torch.allclose(layer(data), first, atol=1e-6)


def test_the_projection_follows_the_inputs_dtype_and_basis() -> None:
    """The cached PᵀP is cast once per basis, device and dtype: another dtype, or a switch between the PCA and a
    random basis at the same delta, projects with the matching matrix."""
    data = correlated()
    layer = collected(LinearPCA(8, delta=0.9), data)
    single = layer(data)
    double = layer(data.double())
    assert double.dtype == torch.float64 and torch.allclose(double.float(), single, atol=1e-5)
    layer.use_random_basis(torch.Generator().manual_seed(0))
    random = layer(data)
    assert not torch.allclose(random, single, atol=1e-2)
    layer.use_pca_basis()
    assert torch.equal(layer(data), single)


def test_insert_pca_layers_refuses_a_projected_model_and_a_bare_layer() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    projected, _ = insert_pca_layers(model)
    with pytest.raises(ValueError, match="layer '0' has a PCA layer already"):
        insert_pca_layers(projected)
    with pytest.raises(TypeError, match="needs a model that contains its Conv2d/Linear layers"):
        insert_pca_layers(nn.Linear(3, 4))


def test_each_row_of_the_projection_table_uses_its_own_basis_and_the_unprojected_row_is_the_model() -> None:
    """The bases alternate (pca, random, pca, …): the PCA rows and their example outputs equal those of a table
    without the random control, the random rows come from the seed, layer_dims has one row per layer and delta,
    and the unprojected row scores the model itself (mean loss per sample)."""
    from phd_lab.tracking.projection import projection_table
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 40), nn.ReLU(), nn.Linear(40, 4))
    data = [(torch.randn(50, 10), torch.randint(0, 4, (50,))) for _ in range(3)]
    examples = data[0][0][:5]

    def table(random_control: bool, seed: int = 0):
        outputs: dict[float, torch.Tensor] = {}
        dims: list[dict] = []
        frame = projection_table(model, data, data, torch.device("cpu"), deltas=[0.8, 0.95],
                                 random_control=random_control, seed=seed, examples=examples,
                                 example_outputs=outputs, layer_dims=dims)
        return frame, outputs, dims

    alone, alone_outputs, alone_dims = table(False)
    both, both_outputs, both_dims = table(True)
    assert list(both["basis"]) == ["none", "pca", "random", "pca", "random"]
    pca_rows = both[both["basis"] != "random"].reset_index(drop=True)
    pd.testing.assert_frame_equal(pca_rows, alone)
    assert set(both_outputs) == {1.0, 0.8, 0.95}
    assert all(torch.equal(both_outputs[delta], alone_outputs[delta]) for delta in alone_outputs)
    assert both_dims == alone_dims and len(both_dims) == 2 * 2
    random_rows = both[both["basis"] == "random"]
    assert (random_rows["loss"].to_numpy() != both[both["basis"] == "pca"]["loss"].to_numpy()).all()
    pd.testing.assert_frame_equal(table(True)[0], both)  # the seed draws the random bases
    assert not table(True, seed=1)[0]["loss"].equals(both["loss"])
    with torch.no_grad():
        inputs, targets = torch.cat([x for x, _ in data]), torch.cat([y for _, y in data])
        logits = model.eval()(inputs)
    (unprojected,) = both[both["basis"] == "none"].to_dict("records")
    assert unprojected["loss"] == pytest.approx(float(F.cross_entropy(logits, targets)), rel=1e-5)
    assert unprojected["accuracy"] == pytest.approx(float((logits.argmax(1) == targets).float().mean()))
    assert torch.allclose(both_outputs[1.0], model(examples))


def test_first_test_inputs_takes_the_first_inputs_across_batches() -> None:
    from phd_lab.steps.project import first_test_inputs
    inputs = torch.arange(20.0).reshape(10, 2)
    batches = [(inputs[i:i + 3], torch.zeros(3)) for i in range(0, 10, 3)]
    assert torch.equal(first_test_inputs(batches, 8), inputs[:8])
    assert torch.equal(first_test_inputs(batches, 6), inputs[:6])
    assert torch.equal(first_test_inputs(batches, 50), inputs)


def test_project_step_takes_deltas_in_0_1_sorted_once_and_an_exclude_that_leaves_layers() -> None:
    from phd_lab.errors import ConfigError
    from phd_lab.steps.project import Project
    params = {"deltas": [0.99, 1, 0.9, 0.99]}
    Project().check(params, None, "x.json")
    assert params["deltas"] == [0.9, 0.99, 1.0]  # delta 1 (every direction kept) is allowed
    for bad in ([0.0, 0.9], [0.9, 1.01], [-0.5], []):
        with pytest.raises(ConfigError, match=r"x\.json, step 'project': the parameter 'deltas' must be a non-empty"):
            Project().check({"deltas": bad}, None, "x.json")
    Project().check_model({"exclude": ["2"]}, nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), "x.json")


def test_the_thesis_deltas_are_those_of_tables_4_and_5() -> None:
    from phd_lab.tracking.projection import THESIS_DELTAS
    expected = ([0.90, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 0.992, 0.994, 0.996, 0.998]
                + [0.999, 0.9991, 0.9992, 0.9993, 0.9994, 0.9995, 0.9996, 0.9997, 0.9998, 0.9999])
    assert list(THESIS_DELTAS) == expected


def test_the_project_step_projects_with_its_parameters_and_the_runs_seed(tmp_path) -> None:
    """projections.csv is the table of the step's deltas, random control, exclude and centered, with the random
    bases drawn from the run's seed, and the covariances collected on the un-augmented training split
    (``train_eval``), not on the loader training draws its shuffled, augmented batches from (``train``)."""
    from torch.utils.data import DataLoader, TensorDataset

    from phd_lab.config_file import load_config_file
    from phd_lab.data import DataBundle
    from phd_lab.grid import Grid
    from phd_lab.rundir import RunDir
    from phd_lab.steps import StepContext
    from phd_lab.steps.project import Project
    from phd_lab.tracking.projection import projection_table
    from tests.conftest import write_config
    config = Grid(load_config_file(write_config(tmp_path, seed=7)))[0]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 40), nn.ReLU(), nn.Linear(40, 4)).eval()
    loader = DataLoader(TensorDataset(torch.randn(150, 10), torch.randint(0, 4, (150,))), batch_size=50)
    augmented = DataLoader(TensorDataset(torch.randn(150, 10) * torch.linspace(0.1, 5.0, 10) + 3.0,
                                         torch.randint(0, 4, (150,))), batch_size=50, shuffle=True)
    bundle = DataBundle(name="random", train=augmented, test=loader, train_eval=loader, num_classes=4, in_channels=1,
                        resolution=1)
    rundir = RunDir(root=tmp_path / "run", name="run")
    rundir.root.mkdir()
    context = StepContext(config=config, rundir=rundir, model=model, bundle=bundle, device=torch.device("cpu"),
                          progress=False)
    for params in ({"deltas": [0.8, 0.95], "random_control": True, "exclude": [], "centered": True},
                   {"deltas": [0.9], "random_control": False, "exclude": ["2"], "centered": False}):
        Project().run(context, **params)
        expected = projection_table(model, loader, loader, torch.device("cpu"), seed=7, **params)
        pd.testing.assert_frame_equal(pd.read_csv(rundir.projections_csv), expected, check_exact=False, rtol=1e-12)


def test_a_layer_the_training_pass_never_calls_passes_test_data_unchanged() -> None:
    """A branch only some test batches take (here the last, smaller batch) calls a layer that got no covariance:
    it is left unprojected (delta 1), not asked for an eigenspace it does not have."""
    from phd_lab.tracking.projection import projection_table

    class Branching(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.rare, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            hidden = self.body(x)
            return self.head(self.rare(hidden) if x.shape[0] < 5 else hidden)

    torch.manual_seed(0)
    train = [(torch.randn(10, 4), torch.randint(0, 2, (10,))) for _ in range(2)]
    test = [*train, (torch.randn(3, 4), torch.randint(0, 2, (3,)))]
    table = projection_table(Branching(), train, test, torch.device("cpu"), deltas=[0.9])
    assert set(table["feature_dims_sum"]) == {4 + 2} and table["loss"].notna().all()


class _TrainingOnlyHead(nn.Module):
    """A classifier whose auxiliary head runs in training mode only (as Inception's): eval passes never call it."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.head, self.aux = nn.Linear(4, 6), nn.Linear(6, 2), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.body(x)
        return self.head(hidden) + (0 * self.aux(hidden) if self.training else 0)


def test_the_project_step_names_its_run_and_the_remedy_for_layers_eval_mode_never_calls(tmp_path, caplog) -> None:
    """The warning was 'layers never called in eval mode, left unprojected and out of the sums: aux': no run of a
    grid, no column it meant, nothing to do about it. It names the run, the columns and the step's 'exclude'."""
    from torch.utils.data import DataLoader, TensorDataset

    from phd_lab.config_file import load_config_file
    from phd_lab.data import DataBundle
    from phd_lab.grid import Grid
    from phd_lab.rundir import RunDir
    from phd_lab.steps import StepContext
    from phd_lab.steps.project import Project
    from tests.conftest import write_config
    config = Grid(load_config_file(write_config(tmp_path, seed=7)))[0]
    torch.manual_seed(0)
    loader = DataLoader(TensorDataset(torch.randn(40, 4), torch.randint(0, 2, (40,))), batch_size=20)
    bundle = DataBundle(name="random", train=loader, test=loader, train_eval=loader, num_classes=2, in_channels=1,
                        resolution=1)
    rundir = RunDir(root=tmp_path / "run", name="run")
    rundir.root.mkdir()
    context = StepContext(config=config, rundir=rundir, model=_TrainingOnlyHead().eval(), bundle=bundle,
                          device=torch.device("cpu"), progress=False)
    with caplog.at_level("WARNING", logger="phd_lab.tracking.projection"):
        Project().run(context, deltas=[0.9], random_control=False, exclude=[], centered=False)
    warnings = [record.getMessage() for record in caplog.records if "eval mode" in record.getMessage()]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"{config.name}: ") and "never called aux," in warnings[0]
    assert "dims_sum and feature_dims_sum" in warnings[0] and "the project step's 'exclude'" in warnings[0]


class _ConvThenLSTM(nn.Module):
    """A conv feature extractor read row by row by an LSTM, then a Linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(5, 2)
        self.lstm = nn.LSTM(4 * 6, 5, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = torch.relu(self.conv(x))  # (B, 4, 6, 6): one step per row
        sequence, _ = self.lstm(maps.permute(0, 2, 1, 3).flatten(2))
        return self.fc(sequence[:, -1])


@pytest.mark.parametrize("exclude", [[], ["lstm"]])
def test_the_project_step_says_it_leaves_lstm_layers_unprojected(caplog, exclude) -> None:
    """Saturation tracking reads an LSTM by its output sequence, and s_μ counts it, but projections.csv summed
    the conv and Linear layers only without a word (dims_sum 11 = 8 + 3 beside a tracked LSTM)."""
    from phd_lab.tracking.projection import projection_table
    torch.manual_seed(0)
    loader = [(torch.randn(8, 1, 6, 6), torch.randint(0, 2, (8,))) for _ in range(2)]
    with caplog.at_level("WARNING", logger="phd_lab.tracking.projection"):
        table = projection_table(_ConvThenLSTM(), loader, loader, torch.device("cpu"), deltas=[0.9],
                                 random_control=False, exclude=exclude, run_name="run-1")
    assert set(table["feature_dims_sum"]) == {4 + 2}  # conv and fc: the LSTM is not among the projected layers
    said = [record.getMessage() for record in caplog.records if "LSTM" in record.getMessage()]
    if exclude:
        assert said == []
    else:
        assert len(said) == 1 and said[0].startswith("run-1: ") and "LSTM layer(s) lstm run unprojected" in said[0]
        assert "left out of dims_sum, feature_dims_sum and saturation_mean" in said[0]


class _FunctionalConv(nn.Module):
    """A Conv2d, then a convolution written as F.conv2d on a kernel of the module's own, then a Linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4, 2)
        self.kernel = nn.Parameter(torch.randn(4, 4, 3, 3) / 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = F.conv2d(torch.relu(self.conv(x)), self.kernel, padding=1)
        return self.fc(maps.mean(dim=(2, 3)))


def test_the_project_step_says_it_leaves_functional_convolutions_unprojected(caplog) -> None:
    """A convolution written as F.conv2d on a kernel of the model's own got no PCA layer and was left out of
    projections.csv's sums without a word (training warns of it, as saturation tracking leaves it out too)."""
    from phd_lab.tracking.projection import projection_table
    torch.manual_seed(0)
    loader = [(torch.randn(8, 1, 6, 6), torch.randint(0, 2, (8,))) for _ in range(2)]
    with caplog.at_level("WARNING", logger="phd_lab.tracking.projection"):
        table = projection_table(_FunctionalConv(), loader, loader, torch.device("cpu"), deltas=[0.9],
                                 random_control=False, run_name="run-1")
    assert set(table["feature_dims_sum"]) == {4 + 2}  # conv and fc: the functional convolution is not projected
    said = [record.getMessage() for record in caplog.records if "unprojected" in record.getMessage()]
    assert len(said) == 1 and said[0].startswith("run-1: "), said
    assert ("1 layer(s) of the model run unprojected and are left out of dims_sum and feature_dims_sum: "
            "kernel (a kernel of shape (4, 4, 3, 3) outside any Conv module, as F.conv2d uses)." in said[0]), said


def test_a_deltas_random_control_does_not_depend_on_the_other_deltas_listed() -> None:
    """One random stream served every delta in turn, so adding 0.95 to [0.9, 0.99] changed the random-basis row of
    0.99 (accuracy 0.1 -> 0.097): a delta table extended later, or compared with another sweep, disagreed with
    itself. Each delta's random bases now come from a seed of the run's seed and that delta."""
    from phd_lab.tracking.projection import projection_table
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()
    loader = [(torch.randn(16, 1, 6, 6), torch.randint(0, 3, (16,))) for _ in range(2)]

    def random_rows(deltas: list[float], seed: int = 7) -> pd.DataFrame:
        table = projection_table(model, loader, loader, torch.device("cpu"), deltas=deltas, seed=seed)
        return table[table["basis"] == "random"].set_index("delta")

    short, long = random_rows([0.5, 0.9]), random_rows([0.5, 0.7, 0.9])
    pd.testing.assert_frame_equal(short, long.loc[[0.5, 0.9]])
    assert not random_rows([0.5, 0.9], seed=8)["loss"].equals(short["loss"])  # the run's seed still decides


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_pca_layer_that_collected_non_finite_activations_says_so(value: float) -> None:
    """Used on its own (not through projection_table, which checks first), a PCA layer that collected a NaN or inf
    failed in eigh with 'failed to converge ... ill-conditioned', and intrinsic_dimension gave NaN eigenvalues
    k = 0, a dead layer's value: both now refuse them by name."""
    maps = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    maps[1, 2, 3, 4] = value
    layer = Conv2dPCA(3, delta=0.9).train()
    layer(maps)
    layer.eval()
    with pytest.raises(ValueError, match="Conv2dPCA collected NaN or inf activations"):
        layer(maps[:1])
    with pytest.raises(ValueError, match="eigenvalues must be finite"):
        intrinsic_dimension(np.array([value, 1.0, 0.0]), 0.9)
