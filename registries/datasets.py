"""Dataset registry: ``f(*, batch_size, resolution, data_dir, seed, num_workers, **dataset_args)
-> DataBundle``."""

from __future__ import annotations

from torchvision import datasets as tv_datasets
from torchvision import transforms

from phd_lab.data import DataBundle, make_bundle
from phd_lab.datasets.digits import digits_tensors
from phd_lab.datasets.torchvision_sets import CIFAR_MEAN, CIFAR_STD, open_torchvision_dataset


def Digits(*, batch_size: int, resolution: int, data_dir: str, seed: int, num_workers: int) -> DataBundle:
    """scikit-learn's handwritten digits (10 classes, 1 channel), embedded: no download."""
    train, test = digits_tensors(resolution)
    return make_bundle("Digits", train, test, train, num_classes=10, in_channels=1, resolution=resolution,
                       batch_size=batch_size, seed=seed, num_workers=num_workers)


def FakeData(*, batch_size: int, resolution: int, data_dir: str, seed: int, num_workers: int,
             train_size: int = 256, test_size: int = 64, num_classes: int = 10, channels: int = 3) -> DataBundle:
    """torchvision's FakeData: random images, deterministic per index (for tests and smoke runs)."""
    shape = (channels, resolution, resolution)
    to_tensor = transforms.ToTensor()
    train = tv_datasets.FakeData(train_size, shape, num_classes, transform=to_tensor, random_offset=0)
    test = tv_datasets.FakeData(test_size, shape, num_classes, transform=to_tensor, random_offset=train_size)
    return make_bundle("FakeData", train, test, train, num_classes=num_classes, in_channels=channels,
                       resolution=resolution, batch_size=batch_size, seed=seed, num_workers=num_workers)


def Cifar10(*, batch_size: int, resolution: int, data_dir: str, seed: int, num_workers: int,
            download: bool = False) -> DataBundle:
    """Cifar10 (10 classes, 32×32 RGB) with the thesis' crop/flip augmentation, resized."""
    normalise = [transforms.Resize(resolution, antialias=True), transforms.ToTensor(),
                 transforms.Normalize(CIFAR_MEAN, CIFAR_STD)]
    augment = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                  *normalise])
    plain = transforms.Compose(normalise)
    where = "cifar-10-batches-py/ (the extracted cifar-10-python.tar.gz)"
    train = open_torchvision_dataset("Cifar10", tv_datasets.CIFAR10, data_dir, download, where,
                                     train=True, transform=augment)
    test = open_torchvision_dataset("Cifar10", tv_datasets.CIFAR10, data_dir, download, where,
                                    train=False, transform=plain)
    train_eval = open_torchvision_dataset("Cifar10", tv_datasets.CIFAR10, data_dir, False, where,
                                          train=True, transform=plain)
    return make_bundle("Cifar10", train, test, train_eval, num_classes=10, in_channels=3,
                       resolution=resolution, batch_size=batch_size, seed=seed, num_workers=num_workers)
