"""dataset_args 'flip': the training flips of every image dataset on (true), off (false) or its own default (null).

MNIST and SVHN do not flip by default (a mirrored digit may be another digit), but the thesis trains MNIST with
"the same" preprocessing as §8.4.1, flips included, so its configs set ``flip: true``. Left out, every dataset
keeps its pipeline bit for bit.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from phd_lab.datasets.torchvision_sets import SOURCES, check_source, folder_source
from phd_lab.datasets.transforms import CROP_PADDING, Preprocessing, make_preprocessing
from phd_lab.errors import ConfigError, DataError
from phd_lab.factory_args import check_factory_args
from phd_lab.registry import Registries
from tests.conftest import ROOT, main_in_process, write_config

DATASETS = Registries().datasets
COMMON = dict(batch_size=4, seed=0, num_workers=0)
IMAGE_SETS = ["MNIST", "FashionMNIST", "Cifar10", "Cifar100", "SVHN", "TinyImageNet", "ImageNet", "Imagenette",
              "Imagewoof", "Food101", "iNaturalist"]
MNIST_MEAN, MNIST_STD = SOURCES["MNIST"].normalisations["mnist"]

pytestmark = pytest.mark.usefixtures("single_thread")


def digit(seed: int = 0) -> Image.Image:
    """A 28 px grayscale stand-in for a digit: a bright stroke in the left third, noise elsewhere (no zero pixel)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(1, 60, (28, 28), dtype=np.uint8)
    pixels[4:24, 2:8] = 250
    return Image.fromarray(pixels, mode="L")


def rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(1, 255, (height, width, 3), dtype=np.uint8))


def prep(source_name: str, flip=None, resolution: int = 28, **options) -> Preprocessing:
    """make_preprocessing as the registry calls it for one of SOURCES."""
    source = SOURCES[source_name]
    values = dict(augment=True, canvas=False, downsample_then_upsample=None, normalization=None)
    values.update(options)
    return make_preprocessing(source.name, resolution=resolution, normalisations=source.normalisations,
                              native=source.native, flip=flip, default_flip=source.flip, **values)


def names(pipeline: T.Compose) -> list[str]:
    return [type(step).__name__ for step in pipeline.transforms]


def stroke_column(image: torch.Tensor) -> float:
    """Column of the bright stroke's centre of mass (left third: unmirrored; right third: mirrored)."""
    pixels = image[0] * MNIST_STD[0] + MNIST_MEAN[0]
    weights = (pixels > 0.9).float().sum(dim=0)
    return float((weights * torch.arange(pixels.shape[1])).sum() / weights.sum())


def manual_digit(image: Image.Image, flip: bool) -> torch.Tensor:
    """MNIST's training pipeline by hand with the same random draws: 4-px zero-padded 28 px crop, then flip."""
    padded = TF.pad(image, CROP_PADDING, fill=0)
    top, left, _, _ = T.RandomCrop.get_params(padded, (28, 28))
    crop = TF.crop(padded, top, left, 28, 28)
    if flip and torch.rand(1) < 0.5:
        crop = TF.hflip(crop)
    return TF.normalize(TF.to_tensor(crop), MNIST_MEAN, MNIST_STD)


def write_mnist(root: Path) -> None:
    """A tiny real MNIST tree (the four idx files torchvision reads) under root/MNIST/raw."""
    folder = root / "MNIST" / "raw"
    folder.mkdir(parents=True)
    for prefix, count in (("train", 8), ("t10k", 4)):
        images = np.stack([np.asarray(digit(i)) for i in range(count)])
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, count, 28, 28)
                                                             + images.tobytes())
        labels = (np.arange(count) % 10).astype(np.uint8)
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, count) + labels.tobytes())


def pets(root: Path) -> Path:
    """A two-class image folder (train/ and test/) of RGB images."""
    for split, count in (("train", 3), ("test", 1)):
        for c, name in enumerate(("cats", "dogs")):
            for i in range(count):
                path = root / split / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                rgb(48, 40, seed=10 * c + i).save(path)
    return root


# ------------------------------------------------------------------ the default stays as it was


@pytest.mark.parametrize("name", IMAGE_SETS)
@pytest.mark.parametrize("resolution", [28, 64])
def test_left_out_flip_gives_the_dataset_s_own_pipeline_bit_for_bit(name, resolution):
    source = SOURCES[name]
    mean, std = next(iter(source.normalisations.values()))  # the dataset's default normalisation
    own = Preprocessing(resolution=resolution, mean=mean, std=std, native=source.native,
                        flip=source.flip)  # what the registry built before the option
    made = prep(name, resolution=resolution)
    assert made.flip is source.flip and repr(made.train()) == repr(own.train())
    image = digit(1) if source.channels == 1 else rgb(source.native or 48, source.native or 40)
    for seed in range(6):
        torch.manual_seed(seed)
        out = made.train()(image)
        torch.manual_seed(seed)
        assert torch.equal(out, own.train()(image))


def test_the_digit_sets_keep_no_flips_and_the_others_keep_theirs_by_default():
    assert [name for name in IMAGE_SETS if not prep(name).flip] == ["MNIST", "SVHN"]
    assert names(prep("MNIST").train()) == ["RandomCrop", "ToTensor", "Normalize"]
    assert names(prep("Cifar10", resolution=32).train()) == ["RandomCrop", "RandomHorizontalFlip", "ToTensor",
                                                             "Normalize"]
    expected = T.Compose([T.RandomCrop(28, padding=4), T.ToTensor(), T.Normalize(MNIST_MEAN, MNIST_STD)])
    for seed in range(5):
        torch.manual_seed(seed)
        out = prep("MNIST").train()(digit())
        torch.manual_seed(seed)
        assert torch.equal(out, expected(digit()))


# ------------------------------------------------------------------ flip: true and false


def test_mnist_with_flip_true_mirrors_the_digit_for_some_seeds_and_false_never():
    mirrored = {True: 0, False: 0, None: 0}
    for flip in mirrored:
        for seed in range(40):
            torch.manual_seed(seed)
            out = prep("MNIST", flip).train()(digit())
            torch.manual_seed(seed)
            assert torch.equal(out, manual_digit(digit(), flip=bool(flip)))
            column = stroke_column(out)
            assert column < 10 or column > 17, column  # the stroke stays in a third, crop shift ≤ 4 px
            mirrored[flip] += column > 17
    assert 0 < mirrored[True] < 40 and mirrored[False] == mirrored[None] == 0


def test_flip_true_on_mnist_adds_the_flip_after_the_crop_and_resize_as_for_cifar10():
    assert names(prep("MNIST", True, resolution=64).train()) == ["RandomCrop", "Resize", "RandomHorizontalFlip",
                                                                 "ToTensor", "Normalize"]
    assert names(prep("SVHN", True, resolution=32).train()) == names(prep("Cifar10", resolution=32).train())
    assert names(prep("MNIST", True, resolution=160, canvas=32).train())[:3] == ["RandomCrop", "Resize",
                                                                                 "RandomHorizontalFlip"]


@pytest.mark.parametrize("name", ["Cifar10", "FashionMNIST", "TinyImageNet", "Imagewoof"])
def test_flip_false_removes_the_flips_of_the_other_sets(name):
    assert "RandomHorizontalFlip" in names(prep(name, resolution=32).train())
    assert "RandomHorizontalFlip" not in names(prep(name, False, resolution=32).train())
    assert repr(prep(name, True, resolution=32).train()) == repr(prep(name, resolution=32).train())


@pytest.mark.parametrize("flip", [True, False, None])
def test_evaluation_and_augment_false_are_untouched_by_flip(flip):
    assert repr(prep("MNIST", flip).eval()) == repr(prep("MNIST").eval())
    assert repr(prep("Imagewoof", flip, resolution=32).eval()) == repr(prep("Imagewoof", resolution=32).eval())
    assert "RandomHorizontalFlip" not in names(prep("MNIST", flip, augment=False).train())


def test_the_registry_passes_flip_to_a_real_mnist_tree_and_a_folder_dataset(tmp_path):
    write_mnist(tmp_path)
    flipped = DATASETS.get("MNIST")(resolution=28, data_dir=str(tmp_path), flip=True, **COMMON)
    default = DATASETS.get("MNIST")(resolution=28, data_dir=str(tmp_path), **COMMON)
    assert "RandomHorizontalFlip" in names(flipped.train.dataset.transform)
    assert "RandomHorizontalFlip" not in names(default.train.dataset.transform)
    for split in ("test", "train_eval"):
        assert repr(getattr(flipped, split).dataset.transform) == repr(getattr(default, split).dataset.transform)
    images, _ = next(iter(flipped.train))
    assert images.shape == (4, 1, 28, 28)

    folder = f"folder:{pets(tmp_path / 'pets')}"
    plain = DATASETS.get(folder)(resolution=32, data_dir=str(tmp_path), flip=False, **COMMON)
    assert names(plain.train.dataset.transform) == ["RandomResizedCrop", "ToTensor", "Normalize"]
    assert "RandomHorizontalFlip" in names(DATASETS.get(folder)(resolution=32, data_dir=str(tmp_path),
                                                                **COMMON).train.dataset.transform)


# ------------------------------------------------------------------ refused values


@pytest.mark.parametrize("bad", ["yes", "true", 1, 0, [True], {"p": 0.5}])
def test_a_bad_flip_value_is_refused_in_one_paragraph_naming_the_option_the_dataset_and_the_choices(bad):
    with pytest.raises(ConfigError) as error:
        prep("MNIST", bad)
    message = str(error.value)
    assert message.startswith("The dataset_args 'flip' of dataset 'MNIST' must be true ") and "\n" not in message
    assert "false (none) or null (the dataset's own default: no flips)" in message and f"got {bad!r}" in message
    with pytest.raises(ConfigError, match=r"'flip' of dataset 'Cifar10' .*own default: flips\)"):
        prep("Cifar10", bad, resolution=32)


@pytest.mark.parametrize("name", IMAGE_SETS)
def test_every_image_set_s_check_refuses_a_bad_flip_before_it_looks_for_the_data(tmp_path, name):
    with pytest.raises(ConfigError, match=f"dataset_args 'flip' of dataset '{name}' must be true"):
        DATASETS.get(name).check_data(str(tmp_path), resolution=32, flip="on")
    with pytest.raises(ConfigError, match="dataset_args 'flip'"):
        DATASETS.get(name)(resolution=32, data_dir=str(tmp_path), flip=2, **COMMON)
    with pytest.raises(DataError, match="is not in data_dir"):  # a good value passes on to the presence check
        DATASETS.get(name).check_data(str(tmp_path), resolution=32, flip=True)


def test_a_bad_flip_of_a_folder_dataset_is_refused_by_its_check(tmp_path):
    folder = pets(tmp_path / "pets")
    with pytest.raises(ConfigError, match=f"'flip' of dataset 'folder:{folder}' must be true"):
        DATASETS.get(f"folder:{folder}").check_data(str(tmp_path), resolution=32, flip="no")
    check_source(folder_source(str(folder)), str(tmp_path), resolution=32, flip=False)


@pytest.mark.parametrize("name", [*IMAGE_SETS, "folder:/somewhere"])
@pytest.mark.parametrize("flip", [True, False, None])
def test_the_factory_argument_check_accepts_a_bool_or_null_for_flip(name, flip):
    check_factory_args(DATASETS.get(name), {"flip": flip}, "dataset_args", name, "exp.json",
                       ("batch_size", "resolution", "data_dir", "seed", "num_workers"))


# ------------------------------------------------------------------ through main.py --dry-run


@pytest.mark.parametrize("flip", ["yes", 1])
def test_a_dry_run_refuses_a_bad_flip_of_a_folder_dataset(tmp_path, capsys, flip):
    folder = pets(tmp_path / "pets")
    config = write_config(tmp_path, dataset=f"folder:{folder}", dataset_args={"flip": [True, flip]})
    code, err = main_in_process(capsys, "--config", str(config), "--dry-run")
    err = " ".join(err.split())
    assert code == 2 and "Traceback" not in err, err
    assert f"The dataset_args 'flip' of dataset 'folder:{folder}' must be true" in err and "or null" in err
    assert not (tmp_path / "logs").exists()


def test_a_dry_run_accepts_flip_true_and_false_on_a_folder_dataset(tmp_path, capsys):
    folder = pets(tmp_path / "pets")
    config = write_config(tmp_path, dataset=f"folder:{folder}", dataset_args={"flip": [True, False, None]})
    code, err = main_in_process(capsys, "--config", str(config), "--dry-run")
    assert code == 0, err


def test_a_dry_run_refuses_a_bad_flip_on_mnist_before_it_finds_the_data_missing(tmp_path, capsys):
    bad = write_config(tmp_path, "bad.json", dataset="MNIST", resolution=28, dataset_args={"flip": "yes"})
    code, err = main_in_process(capsys, "--config", str(bad), "--dry-run")
    err = " ".join(err.split())
    assert code == 2 and "The dataset_args 'flip' of dataset 'MNIST' must be true" in err, err
    assert "is not in data_dir" not in err
    good = write_config(tmp_path, "good.json", dataset="MNIST", resolution=28, dataset_args={"flip": True})
    code, err = main_in_process(capsys, "--config", str(good), "--dry-run")
    assert code == 0 and "Dataset MNIST (train split) is not in data_dir" in " ".join(err.split()), err


# ------------------------------------------------------------------ the thesis configs


FLIPPED = ["08_5_datasets_mnist", "08_5_tail_vgg16_mnist", "09_2_canvas_mnist_vgg16", "D_2_resolution_vgg16_mnist",
           "D_3_resolution_resnet18_mnist"]


def test_the_thesis_configs_that_train_mnist_as_in_section_8_4_1_set_flip_true():
    readme = (ROOT / "configs" / "thesis" / "README.md").read_text(encoding="utf-8")
    for path in sorted((ROOT / "configs" / "thesis").glob("*.json")):
        config = json.loads(path.read_text())
        datasets = config["dataset"] if isinstance(config["dataset"], list) else [config["dataset"]]
        flip = config.get("dataset_args", {}).get("flip")
        row = next(line for line in readme.splitlines() if line.startswith("|") and f"`{path.name}`" in line)
        if path.stem in FLIPPED:
            # MNIST alone: on a sweep's other datasets flip: true changes nothing but their folders (retrained runs)
            assert datasets == ["MNIST"] and flip is True, path.name
            assert "flips as §8.4.1, `flip: true`" in row, path.name
        else:  # §4.3 gives no training setup: MNIST keeps the registry's crop without flips
            assert flip is None and "`flip: true`" not in row, path.name
    canvas = json.loads((ROOT / "configs" / "thesis" / "09_2_canvas_mnist_vgg16.json").read_text())
    assert canvas["dataset_args"] == {"canvas": [False, 32], "flip": True}
