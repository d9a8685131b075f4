"""Dataset registry: ``f(*, batch_size, resolution, data_dir, seed, num_workers, **dataset_args)
-> DataBundle``.

Image datasets share these ``dataset_args``: ``download`` (fetch into data_dir if missing; default false),
``augment`` (training augmentation; default true), ``normalization`` ("cifar" — the thesis' default — or
"imagenet" for RGB sets; "none" for pixels in [0, 1], as §7.2's autoencoder takes them), ``canvas`` (false |
true | pixels: the image on a black canvas of the configured resolution, §9.2), ``downsample_then_upsample``
(pixels: to that resolution and back up, §9.1) and, for the variable-size sets (ImageNet, Imagenette,
Imagewoof, Food101, iNaturalist, ``folder:``), ``crop``: the training crop, "resized" (random-resized, 5–100
%; the default) or "padded" (short side resized, 4-pixel zero-padded random crop, §11.2); the fixed-size sets
refuse ``crop``, as they always use the padded crop. ``flip`` (true | false | null, the default) switches the
random horizontal flips of training on or off; null keeps the dataset's own choice: flips, except for the
digit sets MNIST and SVHN (the thesis trains MNIST with §8.4.1's flips, so its configs set ``flip: true``).
``folder:/path`` loads ``/path/train`` and ``/path/test`` (or ``val``) ImageFolder trees. Every bundle also
has ``train_eval``: the training split without augmentation or shuffling.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from torchvision import datasets as tv_datasets
from torchvision import transforms

from phd_lab.data import DataBundle, make_bundle
from phd_lab.datasets.digits import digits_tensors
from phd_lab.datasets.folders import (class_folders, holds_an_image, no_image_error, require_images_in_every_class,
                                     require_known_classes, require_no_broken_links, require_no_loose_images,
                                     require_two_classes)
from phd_lab.datasets.torchvision_sets import (SOURCES, check_source, evaluation_folder, folder_source,
                                               load_image_dataset)
from phd_lab.datasets.transforms import NO_NORMALISATION
from phd_lab.errors import ConfigError, DataError


def Digits(*, batch_size: int, resolution: int, data_dir: str, seed: int, num_workers: int,
           normalization: str | None = None) -> DataBundle:
    """scikit-learn's handwritten digits (10 classes, 1 channel, 8×8), embedded: no download; standardised with
    the training set's statistics, or with ``normalization: "none"`` pixels in [0, 1]."""
    _check_digits(data_dir, resolution, normalization=normalization)
    train, test = digits_tensors(resolution, standardise=normalization is None)
    return make_bundle("Digits", train, test, train, num_classes=10, in_channels=1, resolution=resolution,
                       batch_size=batch_size, seed=seed, num_workers=num_workers)


def _check_digits(data_dir: str, resolution: int | None = None, **dataset_args: Any) -> None:
    normalization = dataset_args.get("normalization")
    if normalization is not None and normalization != NO_NORMALISATION:
        raise ConfigError(f"The dataset_args 'normalization' of dataset 'Digits' must be null (standardised with the "
                          f"training set's mean and standard deviation) or \"none\" (pixels in [0, 1]); got "
                          f"{normalization!r}.")


def FakeData(*, batch_size: int, resolution: int, data_dir: str, seed: int, num_workers: int,
             train_size: int = 256, test_size: int = 64, num_classes: int = 10, channels: int = 3) -> DataBundle:
    """torchvision's FakeData: random images, deterministic per index (for tests and smoke runs)."""
    _check_fake_data(data_dir, train_size=train_size, test_size=test_size, num_classes=num_classes,
                     channels=channels)
    shape = (channels, resolution, resolution)
    to_tensor = transforms.ToTensor()
    train = tv_datasets.FakeData(train_size, shape, num_classes, transform=to_tensor, random_offset=0)
    test = tv_datasets.FakeData(test_size, shape, num_classes, transform=to_tensor, random_offset=train_size)
    return make_bundle("FakeData", train, test, train, num_classes=num_classes, in_channels=channels,
                       resolution=resolution, batch_size=batch_size, seed=seed, num_workers=num_workers)


def MNIST(*, batch_size: int, resolution: int, data_dir: str, seed: int, num_workers: int, download: bool = False,
          augment: bool = True, normalization: str | None = None, canvas: bool | int = False,
          downsample_then_upsample: int | None = None, crop: str | None = None, flip: bool | None = None) -> DataBundle:
    """MNIST handwritten digits (10 classes, 28×28 grayscale); crop augmentation, no flips unless ``flip``."""
    return load_image_dataset(SOURCES["MNIST"], **locals())


def FashionMNIST(*, batch_size: int, resolution: int, data_dir: str, seed: int, num_workers: int,
                 download: bool = False, augment: bool = True, normalization: str | None = None,
                 canvas: bool | int = False, downsample_then_upsample: int | None = None,
                 crop: str | None = None, flip: bool | None = None) -> DataBundle:
    """Fashion-MNIST clothing images (10 classes, 28×28 grayscale); crop and flip augmentation."""
    return load_image_dataset(SOURCES["FashionMNIST"], **locals())


def Cifar10(*, batch_size: int, resolution: int, data_dir: str, seed: int, num_workers: int, download: bool = False,
            augment: bool = True, normalization: str | None = None, canvas: bool | int = False,
            downsample_then_upsample: int | None = None, crop: str | None = None,
            flip: bool | None = None) -> DataBundle:
    """Cifar10 (10 classes, 32×32 RGB); 4-px-padded random crop and flip, resized to the resolution."""
    return load_image_dataset(SOURCES["Cifar10"], **locals())


def Cifar100(*, batch_size: int, resolution: int, data_dir: str, seed: int, num_workers: int,
             download: bool = False, augment: bool = True, normalization: str | None = None,
             canvas: bool | int = False, downsample_then_upsample: int | None = None,
             crop: str | None = None, flip: bool | None = None) -> DataBundle:
    """Cifar100 (100 classes, 32×32 RGB); 4-px-padded random crop and flip, resized to the resolution."""
    return load_image_dataset(SOURCES["Cifar100"], **locals())


def SVHN(*, batch_size: int, resolution: int, data_dir: str, seed: int, num_workers: int, download: bool = False,
         augment: bool = True, normalization: str | None = None, canvas: bool | int = False,
         downsample_then_upsample: int | None = None, crop: str | None = None, flip: bool | None = None) -> DataBundle:
    """Street View House Numbers (10 classes, 32×32 RGB); crop augmentation, no flips unless ``flip``."""
    return load_image_dataset(SOURCES["SVHN"], **locals())


def TinyImageNet(*, batch_size: int, resolution: int, data_dir: str, seed: int, num_workers: int,
                 download: bool = False, augment: bool = True, normalization: str | None = None,
                 canvas: bool | int = False, downsample_then_upsample: int | None = None,
                 crop: str | None = None, flip: bool | None = None) -> DataBundle:
    """Tiny ImageNet (200 classes, 64×64 RGB; evaluation on the labelled val split)."""
    return load_image_dataset(SOURCES["TinyImageNet"], **locals())


def ImageNet(*, batch_size: int, resolution: int, data_dir: str, seed: int, num_workers: int,
             download: bool = False, augment: bool = True, normalization: str | None = None, canvas: bool | int = False,
             downsample_then_upsample: int | None = None, crop: str = "resized",
             flip: bool | None = None) -> DataBundle:
    """ILSVRC2012 (1,000 classes; no download); random-resized crop 5–100 % and flip; evaluated on val."""
    return load_image_dataset(SOURCES["ImageNet"], **locals())


def Imagenette(*, batch_size: int, resolution: int, data_dir: str, seed: int, num_workers: int,
               download: bool = False, augment: bool = True, normalization: str | None = None,
               canvas: bool | int = False, downsample_then_upsample: int | None = None,
               crop: str = "resized", flip: bool | None = None) -> DataBundle:
    """Imagenette (10 easy ImageNet classes, full size); ImageNet-style augmentation."""
    return load_image_dataset(SOURCES["Imagenette"], **locals())


def Imagewoof(*, batch_size: int, resolution: int, data_dir: str, seed: int, num_workers: int,
              download: bool = False, augment: bool = True, normalization: str | None = None,
              canvas: bool | int = False, downsample_then_upsample: int | None = None,
              crop: str = "resized", flip: bool | None = None) -> DataBundle:
    """Imagewoof (10 dog breeds from ImageNet, full size); ImageNet-style augmentation."""
    return load_image_dataset(SOURCES["Imagewoof"], **locals())


def Food101(*, batch_size: int, resolution: int, data_dir: str, seed: int, num_workers: int,
            download: bool = False, augment: bool = True, normalization: str | None = None,
            canvas: bool | int = False, downsample_then_upsample: int | None = None,
            crop: str = "resized", flip: bool | None = None) -> DataBundle:
    """Food-101 (101 dishes, up to 512 px); ImageNet-style augmentation."""
    return load_image_dataset(SOURCES["Food101"], **locals())


def iNaturalist(*, batch_size: int, resolution: int, data_dir: str, seed: int, num_workers: int,
                download: bool = False, augment: bool = True, normalization: str | None = None,
                canvas: bool | int = False, downsample_then_upsample: int | None = None,
                crop: str = "resized", flip: bool | None = None) -> DataBundle:
    """iNaturalist 2021 (10,000 species; train / valid); ImageNet-style augmentation."""
    return load_image_dataset(SOURCES["iNaturalist"], **locals())


def _with_presence_check(name: str) -> None:
    """Give the factory of a data_dir dataset the cheap up-front check the executor calls before training:
    its dataset_args at the point's resolution, and whether its files are in data_dir."""
    factory = globals()[name]
    factory.check_data = lambda data_dir, resolution=None, **dataset_args: check_source(
        SOURCES[name], data_dir, resolution=resolution, **dataset_args)


for _name in ("MNIST", "FashionMNIST", "Cifar10", "Cifar100", "SVHN", "TinyImageNet", "ImageNet", "Imagenette",
              "Imagewoof", "Food101", "iNaturalist"):
    _with_presence_check(_name)


def _folder(path: str, *, batch_size: int, resolution: int, data_dir: str, seed: int, num_workers: int,
            augment: bool = True, normalization: str | None = None, canvas: bool | int = False,
            downsample_then_upsample: int | None = None, crop: str = "resized", flip: bool | None = None) -> DataBundle:
    """``folder:/path``: ImageFolder trees /path/train and /path/test (or val), ImageNet-style."""
    return load_image_dataset(folder_source(path), batch_size=batch_size, resolution=resolution,
                              data_dir=data_dir, seed=seed, num_workers=num_workers, augment=augment,
                              normalization=normalization, canvas=canvas,
                              downsample_then_upsample=downsample_then_upsample, crop=crop, flip=flip)


_RELATIVE_WARNED: set[str] = set()


def _check_folder(path: str, data_dir: str, resolution: int | None = None, **dataset_args: Any) -> None:
    """Before any point trains: the folder has train/ with at least two class folders that hold an image,
    and test/ or val/ with an image and no class train/ lacks, neither with image files outside its class folders
    nor links to nothing; the dataset_args fit the resolution (the images themselves are read when it runs)."""
    base = Path(path).expanduser()
    train = base / "train"
    if not train.is_dir():
        raise DataError(f"The image folder dataset {'folder:' + path!r} has no folder {str(train)!r}; it needs "
                        f"{folder_source(path).expected}.")
    evaluation = evaluation_folder(base)
    for split in (train, evaluation):
        require_no_loose_images(split)
        require_no_broken_links(split)
    classes = class_folders(train)
    require_two_classes(train, classes)
    require_images_in_every_class(train, [name for name in classes if not holds_an_image(train / name)])
    evaluation_classes = class_folders(evaluation)
    require_known_classes(evaluation, evaluation_classes, classes)
    if not any(holds_an_image(evaluation / name) for name in evaluation_classes):
        raise no_image_error(evaluation)
    check_source(folder_source(path), data_dir, resolution=resolution, **dataset_args)
    if not Path(path).expanduser().is_absolute() and path not in _RELATIVE_WARNED:
        _RELATIVE_WARNED.add(path)  # once per process, not once per grid point
        logging.getLogger(__name__).warning(
            "The image folder dataset 'folder:%s' is a relative path, read here as %s. The run's logged config names "
            "it as given (it is part of the run's name and folder), so a rerun of that config must start from %s "
            "(logged as _meta.working_directory); an absolute path reruns from anywhere.",
            path, Path(path).expanduser().resolve(), os.getcwd())


def _check_fake_data(data_dir: str, resolution: int | None = None, **dataset_args: Any) -> None:
    for name, least in (("train_size", 2), ("test_size", 1), ("num_classes", 2), ("channels", 1)):
        value = dataset_args.get(name, least)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"The dataset_args {name!r} of dataset 'FakeData' must be a whole number ≥ {least}; "
                              f"got {value!r}.")
    channels = dataset_args.get("channels", 3)
    if channels > 4:  # its images are PIL images: grayscale, RGB or RGBA
        raise ConfigError(f"The dataset_args 'channels' of dataset 'FakeData' must be 1 to 4 (PIL images: "
                          f"grayscale, two-channel, RGB, RGBA); got {channels}.")


FakeData.check_data = _check_fake_data  # type: ignore[attr-defined]
Digits.check_data = _check_digits  # type: ignore[attr-defined]
_folder.check_data = _check_folder  # type: ignore[attr-defined]

PREFIXES = {"folder:": _folder}
