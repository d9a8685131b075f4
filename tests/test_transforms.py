"""Output shapes of every preprocessing pipeline and the canvas placement bounds (§9.1, §9.2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from phd_lab.datasets.transforms import (CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD, RGB_NORMALISATIONS,
                                         Preprocessing, RandomCanvas)


def rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(1, 255, (height, width, 3), dtype=np.uint8))


def cifar(resolution: int, **kwargs) -> Preprocessing:
    return Preprocessing(resolution=resolution, mean=CIFAR_MEAN, std=CIFAR_STD, native=32, **kwargs)


def imagenet(resolution: int, **kwargs) -> Preprocessing:
    return Preprocessing(resolution=resolution, mean=CIFAR_MEAN, std=CIFAR_STD, native=None, **kwargs)


@pytest.mark.parametrize("prep, image", [
    (cifar(32), rgb(32, 32)), (cifar(160), rgb(32, 32)), (cifar(16), rgb(32, 32)),
    (cifar(64, downsample_then_upsample=8), rgb(32, 32)), (cifar(160, canvas=True), rgb(32, 32)),
    (cifar(96, canvas=48), rgb(32, 32)), (cifar(32, augment=False), rgb(32, 32)),
    (imagenet(224), rgb(300, 200)), (imagenet(32), rgb(120, 90)),
    (imagenet(224, downsample_then_upsample=32), rgb(300, 200)), (imagenet(64, canvas=24), rgb(50, 80)),
])
@pytest.mark.parametrize("train", [True, False])
def test_every_pipeline_outputs_the_resolution(prep, image, train):
    out = prep.pipeline(train)(image)
    assert out.shape == (3, prep.resolution, prep.resolution) and out.dtype == torch.float32


def test_train_pipeline_matches_the_thesis_order():
    names = [type(t).__name__ for t in cifar(64).train().transforms]
    assert names == ["RandomCrop", "Resize", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    crop = cifar(64).train().transforms[0]
    assert (crop.size, crop.padding) == ((32, 32), 4)
    resized = imagenet(224).train().transforms[0]
    assert resized.scale == (0.05, 1.0) and resized.size == (224, 224)
    # "a square containing between 5% and 100% of the original image": every crop is square
    for seed in range(20):
        torch.manual_seed(seed)
        top, left, height, width = resized.get_params(rgb(300, 200), resized.scale, resized.ratio)
        assert height == width
    assert [type(t).__name__ for t in cifar(32).eval().transforms] == ["ToTensor", "Normalize"]


def test_no_flip_for_digits():
    names = [type(t).__name__ for t in cifar(32, flip=False).train().transforms]
    assert "RandomHorizontalFlip" not in names and "RandomCrop" in names


def test_canvas_places_the_whole_image_inside_the_bounds():
    canvas = RandomCanvas(10)
    image = torch.arange(1, 13, dtype=torch.float32).view(1, 3, 4)   # all non-zero
    torch.manual_seed(0)
    anchors = set()
    for _ in range(400):
        out = canvas(image)
        rows, cols = torch.nonzero(out[0], as_tuple=True)
        top, left = int(rows.min()), int(cols.min())
        assert 0 <= top <= 10 - 3 and 0 <= left <= 10 - 4
        assert torch.equal(out[:, top:top + 3, left:left + 4], image)  # never cut, unchanged
        assert int((out != 0).sum()) == 12                          # the rest is black
        anchors.add((top, left))
    assert len(anchors) == 8 * 7                                    # every anchor in [0, 7] × [0, 6] occurs


def test_canvas_background_is_black_before_normalisation():
    out = cifar(64, canvas=True, augment=False).eval()(rgb(32, 32))
    black = (-torch.tensor(CIFAR_MEAN) / torch.tensor(CIFAR_STD)).view(3, 1, 1)
    background = torch.isclose(out, black.expand_as(out), atol=1e-5).all(dim=0)
    assert int(background.sum()) == 64 * 64 - 32 * 32


def test_the_normalisation_statistics_are_the_thesis_and_the_imagenet_ones():
    """Cifar: the thesis' values (ch. 8, 10, 11: "channel-wise normalized with μ = (0.4914, 0.4822, 0.4465) and
    σ = (0.2023, 0.1994, 0.2010)", after Krizhevsky et al. 2012), its default; ImageNet: the standard statistics
    of the ImageNet training set. Written out here: the other tests only compare the constants with themselves."""
    assert CIFAR_MEAN == (0.4914, 0.4822, 0.4465) and CIFAR_STD == (0.2023, 0.1994, 0.2010)
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)
    assert RGB_NORMALISATIONS == {"cifar": (CIFAR_MEAN, CIFAR_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}


def test_canvas_rejects_too_large_images():
    with pytest.raises(ValueError, match="does not fit"):
        RandomCanvas(8)(torch.ones(3, 9, 9))


def test_downsample_then_upsample_removes_detail():
    image = rgb(32, 32, seed=4)
    sharp = cifar(64, augment=False).eval()(image)
    blurred = cifar(64, augment=False, downsample_then_upsample=8).eval()(image)
    assert sharp.shape == blurred.shape
    # an 8-px image upsampled to 64 px has almost no energy in neighbouring-pixel differences
    assert blurred.diff(dim=-1).abs().mean() < 0.5 * sharp.diff(dim=-1).abs().mean()
