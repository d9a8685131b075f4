"""Receptive fields through ops that move axes: ShuffleNetV2's channel shuffle (view, transpose, view) and
ConvNeXt's channels-last blocks (permute, LayerNorm and Linear on the channel axis, permute back), against
hand-computed values; moves that put height or width where a later op reads them wrongly stay refused."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.convnext import CNBlock, LayerNorm2d

from phd_lab.analysis.receptive_field import ReceptiveFieldError, border_layers, receptive_fields

INF = math.inf


def rows(model: nn.Module, resolution: int) -> dict[str, tuple]:
    """layer → (index, in_r_min, in_r_max, r_min, r_max, jump)."""
    df = receptive_fields(model, resolution)
    index = [None if pd.isna(value) else int(value) for value in df["index"]]
    return {row.layer: (i, row.in_r_min, row.in_r_max, row.r_min, row.r_max, row.jump)
            for i, row in zip(index, df.itertuples())}


class ShuffleBlock(nn.Module):
    """A stride-1 ShuffleNetV2 unit: half the channels pass, half go through 1×1, 3×3 depthwise, 1×1; the
    halves are concatenated and shuffled exactly as torchvision's ``channel_shuffle`` does."""

    def __init__(self, shuffle: bool = True) -> None:
        super().__init__()
        self.shuffle = shuffle
        self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.branch = nn.Sequential(nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 3, padding=1, groups=2), nn.Conv2d(2, 2, 1))
        self.head = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        x1, x2 = self.stem(x).chunk(2, dim=1)
        out = torch.cat((x1, self.branch(x2)), dim=1)
        if self.shuffle:
            batch, channels, height, width = out.size()
            out = out.view(batch, 2, channels // 2, height, width)
            out = torch.transpose(out, 1, 2).contiguous()
            out = out.view(batch, -1, height, width)
        return self.fc(self.head(out).mean((2, 3)))


def test_a_channel_shuffle_passes_the_receptive_field_through():
    # stem 3×3/2: r 3, j 2; branch 1×1: 3, depthwise 3×3: 3 + 2·2 = 7, 1×1: 7; concatenation with the
    # passing half: (3, 7); the shuffle only permutes channels; head 3×3: (3 + 4, 7 + 4) = (7, 11)
    expected = {"stem": (1, 1, 1, 3, 3, 2), "branch.0": (2, 3, 3, 3, 3, 2), "branch.1": (3, 3, 3, 7, 7, 2),
                "branch.2": (4, 7, 7, 7, 7, 2), "head": (5, 3, 7, 7, 11, 2), "fc": (None, INF, INF, INF, INF, INF)}
    assert rows(ShuffleBlock(), 16) == expected
    assert rows(ShuffleBlock(shuffle=False), 16) == expected
    # at 2 px the map is 1×1 after the stem: its size-1 axes fit several axes of the 5-d view; each is
    # taken at its place counted from the end
    assert rows(ShuffleBlock(), 2) == expected


class ChannelsLast(nn.Module):
    """A ConvNeXt block written with tensor methods: depthwise conv, permute to channels-last, LayerNorm,
    Linear, GELU, Linear, permute back, residual sum; the head reduces height and width of a
    channels-last tensor, and ``mean(-1)`` of a channels-last tensor averages channels only."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 2, stride=2)
        self.dw = nn.Conv2d(4, 4, 5, padding=2, groups=4)
        self.norm, self.up, self.down = nn.LayerNorm(4), nn.Linear(4, 8), nn.Linear(8, 4)
        self.gate = nn.Conv2d(1, 1, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.down(F.gelu(self.up(self.norm(y))))
        x = x + y.permute(0, 3, 1, 2)
        spatial = self.gate(x.permute(0, 2, 3, 1).mean(-1, keepdim=True).permute(0, 3, 1, 2))
        return self.fc((x * spatial).permute(0, 2, 3, 1).mean((1, 2)))


def test_linear_layers_on_the_channel_axis_of_a_channels_last_map_are_pointwise():
    # stem 2×2/2: r 2, j 2; depthwise 5×5: 2 + 4·2 = 10; the Linear layers act on the channel axis: like
    # 1×1 convolutions they keep 10 (rows without index); the sum with the stem: (2, 10); the gate's
    # 3×3 conv reads the channel mean, still a map: (2 + 4, 10 + 4); the head's mean over axes 1, 2 of the
    # channels-last tensor is global
    assert rows(ChannelsLast(), 16) == {
        "stem": (1, 1, 1, 2, 2, 2), "dw": (2, 2, 2, 10, 10, 2), "up": (None, 10, 10, 10, 10, 2),
        "down": (None, 10, 10, 10, 10, 2), "gate": (3, 2, 10, 6, 14, 2), "fc": (None, INF, INF, INF, INF, INF)}


def test_torchvision_convnext_blocks_layer_norm_2d_and_stochastic_depth():
    # stem 4×4/4 + LayerNorm2d: r 4, j 4; block 1: depthwise 7×7: 4 + 6·4 = 28, its Linear layers keep it,
    # the sum with the shortcut: (4, 28); block 2: (28, 52); downsampling LayerNorm2d + 2×2/2: (8, 56), j 8;
    # block 3: 8 + 6·8 = 56, 56 + 48 = 104
    model = nn.Sequential(nn.Conv2d(3, 4, 4, stride=4), LayerNorm2d(4), CNBlock(4, 1e-6, 0.1),
                          CNBlock(4, 1e-6, 0.1),
                          nn.Sequential(LayerNorm2d(4), nn.Conv2d(4, 8, 2, stride=2)), CNBlock(8, 1e-6, 0.1),
                          nn.AdaptiveAvgPool2d(1), LayerNorm2d(8), nn.Flatten(1), nn.Linear(8, 3))
    table = rows(model, 32)
    assert table == {
        "0": (1, 1, 1, 4, 4, 4),
        "2.block.0": (2, 4, 4, 28, 28, 4), "2.block.3": (None, 28, 28, 28, 28, 4),
        "2.block.5": (None, 28, 28, 28, 28, 4),
        "3.block.0": (3, 4, 28, 28, 52, 4), "3.block.3": (None, 28, 52, 28, 52, 4),
        "3.block.5": (None, 28, 52, 28, 52, 4),
        "4.1": (4, 4, 52, 8, 56, 8),
        "5.block.0": (5, 8, 56, 56, 104, 8), "5.block.3": (None, 56, 104, 56, 104, 8),
        "5.block.5": (None, 56, 104, 56, 104, 8), "9": (None, INF, INF, INF, INF, INF)}
    # border rule on Conv2d rows only: in_r_max > 20 from block 2's depthwise conv on; prev_r_min (28, 28, 8)
    # never exceeds 20 on every layer onward
    assert border_layers(receptive_fields(model, 32), 20) == (None, "3.block.0")


def moved_then(forward, channels: int = 8) -> nn.Module:
    class Moved(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, channels, 3, padding=1), nn.Conv2d(channels, channels, 3, padding=1)
            self.fc = nn.Linear(channels, 3)

    Moved.forward = forward
    return Moved()


def test_moves_of_height_or_width_that_later_ops_would_misread_are_refused():
    # a convolution reading (N, H, C, W) would slide over channels: refused, naming it and the axes
    with pytest.raises(ReceptiveFieldError, match=r"module 'b'.*on a tensor whose height and width are axes 1 and 3"):
        receptive_fields(moved_then(lambda self, x: self.b(torch.transpose(self.a(x), 1, 2))), 8)
    with pytest.raises(ReceptiveFieldError, match=r"module 'b'.*axes 1 and 2 of 4, not the last two"):
        receptive_fields(moved_then(lambda self, x: self.b(self.a(x).permute(0, 2, 3, 1))), 8)
    # concatenation along axis 1 of a channels-last map joins along height
    with pytest.raises(ReceptiveFieldError, match=r"\.cat \(graph node 'cat'\) along dim 1 \(height/width"):
        receptive_fields(moved_then(lambda self, x: torch.cat([self.a(x).permute(0, 2, 3, 1)] * 2, 1)), 8)
    # a reduction over channels that drops the axis of a moved map changes where height and width are
    with pytest.raises(ReceptiveFieldError, match=r"\.mean\(\).*changes the rank \(4 → 3\)"):
        receptive_fields(moved_then(lambda self, x: self.a(x).permute(0, 2, 3, 1).mean(-1)), 8)
    # a Linear over the last axis of (N, H, C, W), the width, is global, not pointwise
    df = receptive_fields(moved_then(lambda self, x: self.fc(self.a(x).permute(0, 2, 1, 3))), 8)
    assert df["r_min"].tolist() == [3, INF]
    # swapping height and width only: the rules treat both alike (square kernels), so it passes
    assert rows(moved_then(lambda self, x: self.b(self.a(x).transpose(2, 3))), 8)["b"] == (2, 3, 3, 5, 5, 1)


def test_flatten_of_a_moved_map_keeps_it_unless_it_flattens_height_or_width():
    # (N, H, W, C).flatten(0, 1) merges batch and height: no map any more, and the Linear reading it is global
    flat = moved_then(lambda self, x: self.fc(self.a(x).permute(0, 2, 3, 1).flatten(0, 1)))
    assert receptive_fields(flat, 8)["in_r_min"].tolist() == [1, INF]

    def shuffle_by_flatten(self, x):  # a channel shuffle written with flatten(1, 2), then a 3×3 conv
        y = self.a(x)
        batch, channels, height, width = y.shape
        return self.b(y.view(batch, 2, channels // 2, height, width).transpose(1, 2).flatten(1, 2))

    assert rows(moved_then(shuffle_by_flatten), 8)["b"] == (2, 3, 3, 5, 5, 1)


def test_a_graph_that_cannot_run_on_meta_tensors_is_analysed_without_shapes_and_quietly(capfd):
    # at 4 px the 3×3 conv leaves a 2×2 map, too small for the 4×4 pool: the meta run fails, the analysis goes
    # on without shapes (conv 3, pool 3 + 3·1 = 6, j 4; then 1×1) and prints nothing (torch's ShapeProp printed
    # a traceback)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(4), nn.Conv2d(4, 4, 1))
    assert rows(model, 4) == {"0": (1, 1, 1, 3, 3, 1), "2": (2, 6, 6, 6, 6, 4)}
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


def test_tensor_attributes_mT_T_and_data_are_moves_or_the_tensor_itself_not_metadata():
    # x.mT, x.T, x.data counted as metadata like x.shape: the conv after them lost its input and its row
    assert rows(moved_then(lambda self, x: self.b(self.a(x).mT)), 8)["b"] == (2, 3, 3, 5, 5, 1)
    assert rows(moved_then(lambda self, x: self.b(self.a(x).data)), 8)["b"] == (2, 3, 3, 5, 5, 1)
    with pytest.raises(ReceptiveFieldError, match=r"module 'b'.*axes 1 and 3 of 4, not the last two"):
        receptive_fields(moved_then(lambda self, x: self.b(self.a(x).permute(0, 2, 3, 1).mT)), 8)
    with pytest.raises(ReceptiveFieldError, match=r"getattr.*\(attribute \.grad\)"):
        receptive_fields(moved_then(lambda self, x: self.b(self.a(x).grad)), 8)


def test_a_merge_of_maps_whose_height_and_width_sit_at_different_axes_is_refused():
    # (N, C, H, W) × a channels-last (N, H, W, 1) gate runs when C equals H (8 here), but multiplies pixel (h, w)
    # of channel c by the gate at (c, h): it was accepted with the receptive field of a product of aligned maps
    def gate(self, x):
        return self.b(self.a(x) * self.a(x).permute(0, 2, 3, 1).mean(-1, keepdim=True))

    with pytest.raises(ReceptiveFieldError, match=r"_operator\.mul \(graph node 'mul'\) of feature maps whose height "
                                                  r"and width are at different axes: 'a' \(height and width at axes 2 "
                                                  r"and 3 of 4\), 'mean' \(height and width at axes 1 and 2 of 4\)"):
        receptive_fields(moved_then(gate), 8)

    def cat(self, x):  # (N, 4, H, W) beside (N, 4 of H, W, C): joins channels of one with rows of the other
        return self.b(torch.cat([self.a(x)[:, :4], self.a(x).permute(0, 2, 3, 1)[:, :4]], 1))

    with pytest.raises(ReceptiveFieldError, match=r"\.cat \(graph node 'cat'\) of feature maps whose height"):
        receptive_fields(moved_then(cat), 8)
    # maps aligned alike merge as before: the channels-last product permuted back
    def aligned(self, x):
        return self.b(self.a(x) * self.a(x).permute(0, 2, 3, 1).mean(-1, keepdim=True).permute(0, 3, 1, 2))

    assert rows(moved_then(aligned), 8)["b"] == (3, 3, 3, 5, 5, 1)


def test_without_shapes_a_permute_stays_refused_as_documented():
    # the 16×16 pool does not fit the 8×8 map: no shapes; docs/analysis.md says permutes then stay refused, but
    # the permute was taken as one of a (N, C, H, W) tensor
    def permuted(self, x):
        return self.b(F.max_pool2d(self.a(x), 16, 1).permute(0, 2, 3, 1).permute(0, 3, 1, 2))

    with pytest.raises(ReceptiveFieldError, match=r"\.permute\(\) \(graph node 'permute'\) of a tensor whose shape "
                                                  r"is not known"):
        receptive_fields(moved_then(permuted), 8)


def test_transpose_and_swapaxes_with_dims_by_keyword():
    # x.transpose(1, dim1=3) and torch.swapaxes(x, axis0=1, axis1=3) were refused "with non-constant dims None, 3"
    # / "None, None": constant dims, misnamed; swapped there and back they pass the receptive field through
    there_and_back = [lambda self, x: self.b(self.a(x).transpose(1, dim1=3).transpose(1, 3)),
                      lambda self, x: self.b(torch.swapaxes(self.a(x), axis0=1, axis1=3).transpose(1, 3)),
                      lambda self, x: self.b(self.a(x).swapaxes(axis0=1, axis1=3).swapdims(dim0=3, dim1=1))]
    for forward in there_and_back:
        assert rows(moved_then(forward), 8)["b"] == (2, 3, 3, 5, 5, 1)


def test_an_item_of_a_reduction_returning_a_tuple_of_a_moved_map_is_checked_like_the_reduction():
    # x.max(-1) returns (values, indices): its [0] dropped the channel axis of a channels-last map unnoticed, the
    # layout still said (4, 1, 2), so .softmax(-1) over the width read as one over channels: b got 5, not inf
    def attention(self, x):
        y = self.a(x)
        weights = y.permute(0, 2, 3, 1).max(-1)[0].softmax(-1)
        return self.b(y * weights.view(x.size(0), 1, 8, 8))

    with pytest.raises(ReceptiveFieldError, match=r"getitem.*\(an item of the result of graph node 'max_1'\), which "
                                                  r"changes the rank \(4 → 3\)"):
        receptive_fields(moved_then(attention), 8)

    def halves(self, x):  # chunk keeps the rank: its items keep the layout
        first, second = self.a(x).permute(0, 2, 3, 1).chunk(2, dim=-1)
        return self.b(torch.cat([second, first], -1).permute(0, 3, 1, 2))

    assert rows(moved_then(halves), 8)["b"] == (2, 3, 3, 5, 5, 1)


def test_a_reduction_or_index_that_drops_the_channel_axis_moves_height_and_width_forward():
    # (N, C, H, W).mean(1) is (N, H, W): its height is dim 1, but the layout stayed that of (N, C, H, W), so a
    # softmax over dim 1 (the height: every output reads the whole column) passed as one over channels: b got 5
    def column_softmax(self, x):
        return self.b(self.a(x).mean(1).softmax(1)[:, None])

    assert rows(moved_then(column_softmax, channels=1), 8)["b"] == (2, INF, INF, INF, INF, INF)
    # the values of x.max(1) and the channel x[:, 0] alike
    assert rows(moved_then(lambda self, x: self.b(self.a(x)[:, 0].softmax(1)[:, None]), channels=1), 8)["b"] \
        == (2, INF, INF, INF, INF, INF)
    assert rows(moved_then(lambda self, x: self.b(self.a(x).max(1)[0].softmax(1)[:, None]), channels=1), 8)["b"] \
        == (2, INF, INF, INF, INF, INF)
    # a softmax over the width, and a channel mean kept as a map, as before
    assert rows(moved_then(lambda self, x: self.b(self.a(x).mean(1).softmax(-1)[:, None]), channels=1), 8)["b"] \
        == (2, INF, INF, INF, INF, INF)
    assert rows(moved_then(lambda self, x: self.b(self.a(x).amax(1)[:, None]), channels=1), 8)["b"] \
        == (2, 3, 3, 5, 5, 1)


class ScaledChannelsLast(nn.Module):
    """A forward argument beside the image, with a default: the shape run takes the default, so the permutes
    are known (before, any second input meant no shapes and the permute was refused)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.mix = nn.Linear(4, 4)
        self.head = nn.Conv2d(4, 4, 3)

    def forward(self, x, scale: float = 2.0):
        y = self.mix(self.stem(x).permute(0, 2, 3, 1) * scale).permute(0, 3, 1, 2)
        return self.head(y).mean((2, 3))


def test_a_forward_argument_with_a_default_keeps_the_shapes_known():
    # stem 3×3: 3; the Linear on the channels-last map is pointwise: 3; head 3×3: 5
    assert rows(ScaledChannelsLast(), 8) == {"stem": (1, 1, 1, 3, 3, 1), "mix": (None, 3, 3, 3, 3, 1),
                                              "head": (2, 3, 3, 5, 5, 1)}


def test_a_flatten_that_merges_height_or_width_leaves_no_map_a_convolution_could_read():
    # a (3×3, j 1: r 3) flattened with its pixels and viewed back to a map: the graph no longer says where the
    # pixels are, so b (3×3) reading it is refused naming the flatten (it reported r = inf as if global)
    def flat_then_back(flatten):
        def forward(self, x):
            y = self.a(x)
            return self.b(flatten(self, y).view(y.shape))
        model = moved_then(forward)
        model.flat = nn.Flatten()
        return model

    for flatten in (lambda self, y: y.flatten(1), lambda self, y: torch.flatten(y, 1),
                    lambda self, y: self.flat(y), lambda self, y: y.flatten(2)):
        with pytest.raises(ReceptiveFieldError, match=r"'b'.*flatten.*merges height or width"):
            receptive_fields(flat_then_back(flatten), 8)
    # already unknown (adaptive pooling to 2×2), flattened: still unknown, not global (r = inf)
    with pytest.raises(ReceptiveFieldError, match=r"'b'.*pooling to 2 positions"):
        receptive_fields(moved_then(lambda self, x: self.b(F.adaptive_avg_pool2d(self.a(x), 2).flatten(1)
                                                         .view(-1, 8, 2, 2))), 8)
    # flattening batch and channels only keeps the map: b grows it, r 3 + 2 = 5 (it was global)
    assert rows(moved_then(lambda self, x: self.b(self.a(x).flatten(0, 1).view(-1, 8, 8, 8))), 8)["b"] \
        == (2, 3, 3, 5, 5, 1)
    # a head reading the flattened map is global, also through ops the rules do not list (F.normalize)
    for head in (lambda self, x: self.fc(torch.flatten(F.adaptive_avg_pool2d(self.a(x), 1), 1)),
                 lambda self, x: self.fc(F.normalize(self.a(x).flatten(2).transpose(1, 2), dim=-1)),
                 lambda self, x: self.wide(F.normalize(torch.cat([self.a(x).flatten(1)] * 2, -1)))):
        model = moved_then(head)
        model.wide = nn.Linear(256, 3)
        df = receptive_fields(model, 4)
        assert df["r_min"].tolist() == [3, INF] and df["in_r_max"].tolist() == [1, INF]


def test_a_none_in_an_index_consumes_no_axis_before_a_strided_slice():
    # x[:, None, :, ::2, ::2] strides height and width (a 1×1 window, stride 2): r 3, j 2, then b 3×3:
    # 3 + 2·2 = 7, j 2 (the steps were read at index positions: the None shifted them, and it was refused)
    assert rows(moved_then(lambda self, x: self.b(self.a(x)[:, None, :, ::2, ::2][:, 0])), 8)["b"] \
        == (2, 3, 3, 7, 7, 2)
    # after ... the axes count from the end, a None taking none
    assert rows(moved_then(lambda self, x: self.b(self.a(x)[..., ::2, None, ::2][:, :, :, 0])), 8)["b"] \
        == (2, 3, 3, 7, 7, 2)
    # x[:, None, ::2, ::2] strides channels and height, not width: refused (it passed as stride 2 along both)
    with pytest.raises(ReceptiveFieldError, match=r"strided slice with steps \{'height': 2\}"):
        receptive_fields(moved_then(lambda self, x: self.a(x)[:, None, ::2, ::2]), 8)


def test_a_map_that_gains_an_axis_has_height_and_width_one_axis_further():
    # (N, 1, C, H, W): a softmax over dim 4, the width, is global (the layout said dims 2, 3: it passed)
    assert rows(moved_then(lambda self, x: self.b(self.a(x)[:, None].softmax(4)[:, 0])), 8)["b"] \
        == (2, INF, INF, INF, INF, INF)
    # over dim 2 (the channels) it passes (it was global); a sum over the new axis is (N, C, H, W) again
    assert rows(moved_then(lambda self, x: self.b(self.a(x)[:, None].softmax(2)[:, 0])), 8)["b"] \
        == (2, 3, 3, 5, 5, 1)
    assert rows(moved_then(lambda self, x: self.b((self.a(x)[:, None] * 2).sum(1))), 8)["b"] == (2, 3, 3, 5, 5, 1)


def test_a_vision_transformer_has_the_patch_size_then_global_layers():
    # the patch convolution 16×16/16: r 16, jump 16; the tokens are a reshape of the map (unknown pixels), and
    # every Linear after the attention reads all of them: global; no Conv2d exceeds 32 px, so no border
    from torchvision.models import VisionTransformer
    model = VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16,
                              num_classes=3)
    df = receptive_fields(model, 32)
    assert df["layer"].tolist() == ["conv_proj", "encoder.layers.encoder_layer_0.mlp.0",
                                    "encoder.layers.encoder_layer_0.mlp.3", "heads.head"]
    assert df[["r_min", "r_max", "jump"]].iloc[0].tolist() == [16, 16, 16]
    assert (df[["r_min", "r_max", "in_r_min", "in_r_max"]].iloc[1:] == INF).all().all()
    assert border_layers(df, 32) == (None, None)


class LazyChannelsLast(nn.Module):
    """A convolution, its map moved to channels-last, then a lazy Linear head (its weight is made by the first
    forward pass)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.head = nn.LazyLinear(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.conv(x).permute(0, 2, 3, 1), 1))


def test_a_lazy_model_before_its_first_forward_pass_is_analysed_or_refused_naming_its_lazy_layers():
    """The shapes are recorded on meta copies of the weights, which a lazy layer before its first call does not
    have: receptive_fields on such a model raised torch's ValueError about empty_like and uninitialized
    parameters. A model that needs no shapes is analysed (the table of the model after one batch); one whose
    permute needs them is refused naming the lazy layer and what to do."""
    plain = nn.Sequential(nn.LazyConv2d(4, 3), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.LazyLinear(3))
    before = receptive_fields(plain, 16)
    plain(torch.zeros(1, 1, 16, 16))
    pd.testing.assert_frame_equal(before, receptive_fields(plain, 16))
    assert before["r_max"].tolist() == [3, 5, INF]
    model = LazyChannelsLast()
    with pytest.raises(ReceptiveFieldError, match=r"the lazy layers 'head' of LazyChannelsLast have no weights "
                                                  r"before their first forward pass: run the model on one batch"):
        receptive_fields(model, 16)
    model(torch.zeros(1, 1, 16, 16))
    assert receptive_fields(model, 16)["r_max"].tolist() == [3, INF]
