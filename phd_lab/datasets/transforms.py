"""The thesis' preprocessing pipelines (§2.4.2, §8.5, §9.1, §9.2) as torchvision transforms.

``Preprocessing`` builds the training and the evaluation pipeline of one dataset:

- low-resolution sets (fixed native size, e.g. Cifar10's 32 px): training crops randomly with a
  4-pixel zero padding and flips horizontally (p = 0.5); then the image is resized to the
  configured resolution;
- high-resolution sets (variable size, e.g. ImageNet): training uses a random-resized crop of 5 %
  to 100 % of the image plus the flip (``crop: "resized"``, the default) or, with ``crop: "padded"``
  (§11.2's Imagewoof at 32 px), resizes the short side and crops randomly with the 4-pixel zero
  padding; evaluation resizes the short side and crops the centre;
- then ``ToTensor`` and the channel-wise normalisation (Cifar statistics by default).

Options (``dataset_args``): ``canvas`` places the image at its native size (``true``) or at a
given size in pixels uniformly at random on a black canvas of the configured resolution (§9.2;
random in training and evaluation, as in the thesis); ``downsample_then_upsample`` resizes the
image to that many pixels and back up to the resolution (§9.1: same size, less detail); ``crop``
chooses the training crop of the variable-size sets ("resized" or "padded", above; the fixed-size
sets refuse it: they always use the padded crop at their native size); ``flip`` switches the training
flips on (``true``) or off (``false``), and ``null`` (the default) keeps the dataset's own choice: flips,
except for the digit sets MNIST and SVHN, where a mirror changes a digit's meaning (the thesis trains
MNIST with "the same" preprocessing as §8.4.1, flips included: its configs set ``flip: true``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torchvision import transforms as T

from phd_lab.errors import ConfigError

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_PADDING = 4
RESIZED_CROP_SCALE = (0.05, 1.0)
RESIZED_CROP_RATIO = (1.0, 1.0)  # thesis §(ImageNet pipeline): "a square containing between 5% and 100%"

NO_NORMALISATION = "none"  # pixels as ToTensor gives them, in [0, 1] (§7.2's autoencoder reconstructs those)
RGB_NORMALISATIONS = {"cifar": (CIFAR_MEAN, CIFAR_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}
# training crops of the variable-size sets: the ImageNet-style random-resized crop, or §11.2's padded crop
CROP_MODES = ("resized", "padded")


class RandomCanvas:
    """Place a (C, h, w) tensor at a uniformly random position on a zero (black) size×size canvas.

    The top-left anchor is drawn from [0, size − h] × [0, size − w], so the image is never cut.
    """

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        channels, height, width = image.shape
        if height > self.size or width > self.size:
            raise ValueError(f"a {height}×{width} image does not fit on a {self.size}×{self.size} canvas")
        top = int(torch.randint(0, self.size - height + 1, (1,)))
        left = int(torch.randint(0, self.size - width + 1, (1,)))
        canvas = image.new_zeros((channels, self.size, self.size))
        canvas[:, top:top + height, left:left + width] = image
        return canvas

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"


@dataclass(frozen=True)
class Preprocessing:
    """Training and evaluation pipelines of one dataset at one resolution."""

    resolution: int
    mean: Sequence[float]
    std: Sequence[float]
    native: int | None = None          # fixed native size (low-resolution sets); None: variable size
    augment: bool = True
    flip: bool = True                  # training flips (dataset default: off for digits; dataset_args 'flip')
    canvas: bool | int = False
    downsample_then_upsample: int | None = None
    crop: str = "resized"              # training crop of variable-size sets (CROP_MODES); fixed-size: padded

    def __post_init__(self) -> None:
        if self.crop not in CROP_MODES:  # a typo would otherwise train with the random-resized crop
            raise ValueError(f"crop must be one of {CROP_MODES}; got {self.crop!r}")

    @property
    def content_size(self) -> int:
        """Side of the image content: the resolution, or the image's size on the canvas."""
        if self.canvas is False:
            return self.resolution
        if self.canvas is True:
            assert self.native is not None
            return self.native
        return int(self.canvas)

    def _geometry(self, train: bool) -> list[Callable[..., Any]]:
        size = self.content_size
        steps: list[Callable[..., Any]] = []
        if self.native is not None:
            if train and self.augment:
                steps.append(T.RandomCrop(self.native, padding=CROP_PADDING))
            if size != self.native:
                steps.append(T.Resize((size, size), antialias=True))
        elif train and self.augment and self.crop == "padded":
            # §11.2: the short side to the content size, then a random crop with a zero padding on all edges
            steps += [T.Resize(size, antialias=True), T.RandomCrop(size, padding=CROP_PADDING)]
        elif train and self.augment:
            steps.append(T.RandomResizedCrop(size, scale=RESIZED_CROP_SCALE, ratio=RESIZED_CROP_RATIO,
                                             antialias=True))
        else:
            steps += [T.Resize(size, antialias=True), T.CenterCrop(size)]
        if train and self.augment and self.flip:
            # thesis order: crop, flip, resize; flipping after resizing is the same distribution
            steps.append(T.RandomHorizontalFlip())
        if self.downsample_then_upsample is not None:
            steps += [T.Resize((self.downsample_then_upsample,) * 2, antialias=True),
                      T.Resize((size, size), antialias=True)]
        return steps

    def pipeline(self, train: bool) -> T.Compose:
        steps = self._geometry(train) + [T.ToTensor()]
        if self.canvas is not False:
            steps.append(RandomCanvas(self.resolution))
        steps.append(T.Normalize(self.mean, self.std))
        return T.Compose(steps)

    def train(self) -> T.Compose:
        return self.pipeline(train=True)

    def eval(self) -> T.Compose:
        return self.pipeline(train=False)


def make_preprocessing(dataset: str, *, resolution: int, normalisations: dict[str, tuple], normalization: str | None,
                       native: int | None, augment: Any, flip: Any = None, canvas: Any,
                       downsample_then_upsample: Any, crop: Any = None, default_flip: bool = True) -> Preprocessing:
    """Validate the preprocessing ``dataset_args`` of ``dataset`` and build its Preprocessing.

    ``crop`` None: the dataset's own training crop ("resized" for variable-size sets); ``flip`` None: the
    dataset's own ``default_flip``."""
    where = f"dataset {dataset!r}"
    name = normalization if normalization is not None else next(iter(normalisations))
    channels = len(next(iter(normalisations.values()))[0])
    normalisations = {**normalisations, NO_NORMALISATION: ((0.0,) * channels, (1.0,) * channels)}
    if not isinstance(name, str) or name not in normalisations:
        raise ConfigError(f"The dataset_args 'normalization' of {where} must be one of "
                          f"{', '.join(repr(n) for n in normalisations)} (\"none\": pixels in [0, 1]); got "
                          f"{normalization!r}.")
    if not isinstance(augment, bool):
        raise ConfigError(f"The dataset_args 'augment' of {where} must be true or false; got {augment!r}.")
    if flip is not None and not isinstance(flip, bool):  # "yes" or 1 would otherwise decide by truthiness
        raise ConfigError(f"The dataset_args 'flip' of {where} must be true (random horizontal flips in training), "
                          f"false (none) or null (the dataset's own default: "
                          f"{'flips' if default_flip else 'no flips'}); got {flip!r}.")
    if canvas is not False:
        if canvas is True and native is None:
            raise ConfigError(f"{where} has no fixed native image size, so dataset_args 'canvas' must give the "
                              f"image size on the canvas in pixels (e.g. 32); got true.")
        if not (canvas is True or (isinstance(canvas, int) and not isinstance(canvas, bool) and canvas >= 1)):
            raise ConfigError(f"The dataset_args 'canvas' of {where} must be false, true (native size) or the "
                              f"image size in pixels; got {canvas!r}.")
        size = native if canvas is True else canvas
        if size > resolution:
            raise ConfigError(f"The canvas of {where} must be at least as large as the image: resolution "
                              f"{resolution} < image size {size}. Raise 'resolution' or lower 'canvas'.")
    if native is not None and crop is not None:
        raise ConfigError(f"The dataset_args 'crop' does not apply to {where}: its images have a fixed native size "
                          f"({native} px), and it is always trained with the {CROP_PADDING}-pixel zero-padded random "
                          f"crop at that size (then resized to the resolution); remove 'crop' from dataset_args "
                          f"(it chooses the training crop of variable-size sets such as Imagewoof or folder:).")
    if native is None and crop is not None and (not isinstance(crop, str) or crop not in CROP_MODES):
        raise ConfigError(f"The dataset_args 'crop' of {where} must be one of "
                          f"{', '.join(repr(mode) for mode in CROP_MODES)} (\"resized\": the random-resized crop of "
                          f"5–100 % of the image, the default; \"padded\": the short side resized to the image "
                          f"size, then a random crop with a {CROP_PADDING}-pixel zero padding, thesis §11.2); "
                          f"got {crop!r}.")
    low = downsample_then_upsample
    if low is not None and (isinstance(low, bool) or not isinstance(low, int) or low < 1):
        raise ConfigError(f"The dataset_args 'downsample_then_upsample' of {where} must be a positive number of "
                          f"pixels (the low resolution, e.g. 32) or null; got {low!r}.")
    if low is not None:
        size = resolution if canvas is False else (native if canvas is True else canvas)
        if low > size:
            raise ConfigError(f"The dataset_args 'downsample_then_upsample' of {where} is {low}, above the image "
                              f"size {size} it would be applied to, so no detail would be lost; use a value "
                              f"below {size} (equal to it is the unchanged control).")
    mean, std = normalisations[name]
    return Preprocessing(resolution=resolution, mean=mean, std=std, native=native, augment=augment,
                         flip=default_flip if flip is None else flip, canvas=canvas, downsample_then_upsample=low,
                         crop="resized" if crop is None else crop)
