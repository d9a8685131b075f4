"""dataset_args 'crop' of the variable-size sets: §11.2's padded crop beside the default random-resized crop.

The thesis trains its 32 px Imagewoof models (§11.2/§11.3) with a random 32 px crop of the image padded by 4
zero pixels on every edge, then a flip; "resized" (5–100 % square crops) stays the default, unchanged. The
fixed-size sets (Cifar10, MNIST, ...) always use the padded crop at their native size and refuse the option.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from phd_lab.datasets.transforms import (CIFAR_MEAN, CIFAR_STD, CROP_PADDING, IMAGENET_MEAN, RGB_NORMALISATIONS,
                                         Preprocessing, make_preprocessing)
from phd_lab.errors import ConfigError
from phd_lab.registry import Registries
from tests.conftest import ROOT, main_in_process, write_config

DATASETS = Registries().datasets
COMMON = dict(batch_size=4, seed=0, num_workers=0)
MEAN = torch.tensor(CIFAR_MEAN).view(3, 1, 1)
STD = torch.tensor(CIFAR_STD).view(3, 1, 1)

pytestmark = pytest.mark.usefixtures("single_thread")


def rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    """A photo stand-in without a single black pixel, so that every zero after the crop is padding."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(1, 255, (height, width, 3), dtype=np.uint8))


def prep(crop: str | None = None, native: int | None = None, resolution: int = 32, **options) -> Preprocessing:
    """make_preprocessing as the registry calls it for a dataset (variable size unless ``native``)."""
    values = dict(augment=True, flip=True, canvas=False, downsample_then_upsample=None, normalization=None)
    values.update(options)
    return make_preprocessing("Imagewoof" if native is None else "Cifar10", resolution=resolution,
                              normalisations=RGB_NORMALISATIONS, native=native, crop=crop, **values)


def names(pipeline: T.Compose) -> list[str]:
    return [type(step).__name__ for step in pipeline.transforms]


def pets(root: Path, size: tuple[int, int] = (48, 40)) -> Path:
    """A two-class image folder (train/ and test/) of non-square RGB images."""
    for split, count in (("train", 3), ("test", 1)):
        for c, name in enumerate(("cats", "dogs")):
            for i in range(count):
                path = root / split / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                rgb(*size, seed=10 * c + i).save(path)
    return root


# ------------------------------------------------------------------ the padded pipeline


def manual_padded_crop(image: Image.Image, size: int, flip: bool = True) -> tuple[torch.Tensor, int, int]:
    """§11.2 by hand with the same random draws: short side to ``size``, zero padding, random crop, flip."""
    resized = TF.resize(image, size, antialias=True)
    padded = TF.pad(resized, CROP_PADDING, fill=0)
    top, left, _, _ = T.RandomCrop.get_params(padded, (size, size))
    crop = TF.crop(padded, top, left, size, size)
    if flip and torch.rand(1) < 0.5:
        crop = TF.hflip(crop)
    return TF.normalize(TF.to_tensor(crop), CIFAR_MEAN, CIFAR_STD), top, left


def test_padded_training_pipeline_is_resize_then_zero_padded_crop_then_flip():
    pipeline = prep("padded").train()
    assert names(pipeline) == ["Resize", "RandomCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    resize, crop = pipeline.transforms[:2]
    assert resize.size == 32 and (crop.size, crop.padding) == ((32, 32), 4)
    assert (crop.fill, crop.padding_mode) == (0, "constant")  # zero padding


@pytest.mark.parametrize("seed", range(12))
def test_padded_training_output_equals_resize_pad_crop_by_hand(seed):
    image = rgb(48, 40)  # short side 40 → 32, long side 48 → 38; padded 46 × 40
    torch.manual_seed(seed)
    out = prep("padded").train()(image)
    torch.manual_seed(seed)
    expected, top, left = manual_padded_crop(image, 32)
    assert out.shape == (3, 32, 32) and torch.equal(out, expected)
    assert 0 <= top <= 2 * CROP_PADDING and 0 <= left <= 38 - 32 + 2 * CROP_PADDING


def test_padded_crops_show_zero_padding_at_the_borders_for_some_seeds_only():
    """The crop window moves over the padded image: some crops reach into the zero border, some do not."""
    image, padded_edges = rgb(40, 40), 0
    for seed in range(40):
        torch.manual_seed(seed)
        pixels = prep("padded").train()(image) * STD + MEAN  # back to [0, 1]
        black = (pixels.abs() < 1e-6).all(dim=0)             # zero in every channel
        rows, cols = black.all(dim=1), black.all(dim=0)
        assert black.sum() == 0 or bool(rows[0] or rows[-1] or cols[0] or cols[-1]), "zeros only at the borders"
        assert int(rows.sum()) <= CROP_PADDING and int(cols.sum()) <= CROP_PADDING
        padded_edges += bool(black.any())
    assert 0 < padded_edges < 40


def test_padded_evaluation_is_unchanged_and_augment_false_gives_the_eval_pipeline():
    image = rgb(48, 40)
    assert repr(prep("padded").eval()) == repr(prep().eval()) == repr(prep("resized").eval())
    assert names(prep("padded").eval()) == ["Resize", "CenterCrop", "ToTensor", "Normalize"]
    plain = prep("padded", augment=False)
    assert repr(plain.train()) == repr(plain.eval()) == repr(prep().eval())
    torch.manual_seed(0)
    assert torch.equal(plain.train()(image), prep().eval()(image))


def test_padded_combines_with_flip_canvas_downsampling_and_normalization():
    assert "RandomHorizontalFlip" not in names(prep("padded", flip=False).train())
    torch.manual_seed(3)
    no_flip = prep("padded", flip=False).train()(rgb(48, 40))
    torch.manual_seed(3)
    assert torch.equal(no_flip, manual_padded_crop(rgb(48, 40), 32, flip=False)[0])

    canvas = prep("padded", resolution=64, canvas=24)  # the padded 24 px crop on a black 64 px canvas
    assert names(canvas.train())[:3] == ["Resize", "RandomCrop", "RandomHorizontalFlip"]
    assert canvas.train().transforms[1].size == (24, 24) and canvas.train().transforms[1].padding == 4
    out = canvas.train()(rgb(48, 40)) * STD + MEAN
    assert out.shape == (3, 64, 64) and int((out.abs() > 1e-6).any(dim=0).sum()) <= 24 * 24

    low = prep("padded", resolution=64, downsample_then_upsample=8)
    assert names(low.train()) == ["Resize", "RandomCrop", "RandomHorizontalFlip", "Resize", "Resize", "ToTensor",
                                  "Normalize"]
    assert low.train()(rgb(100, 80)).shape == (3, 64, 64)

    imagenet = prep("padded", normalization="imagenet").train()
    assert tuple(imagenet.transforms[-1].mean) == IMAGENET_MEAN


# ------------------------------------------------------------------ the default stays as it was


def test_resized_is_the_default_and_its_pipeline_is_unchanged():
    expected = T.Compose([T.RandomResizedCrop(32, scale=(0.05, 1.0), ratio=(1.0, 1.0), antialias=True),
                          T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)])
    for made in (prep(), prep("resized"), Preprocessing(resolution=32, mean=CIFAR_MEAN, std=CIFAR_STD)):
        assert made.crop == "resized" and repr(made.train()) == repr(expected)
        for seed in range(5):
            torch.manual_seed(seed)
            out = made.train()(rgb(48, 40))
            torch.manual_seed(seed)
            assert torch.equal(out, expected(rgb(48, 40)))


def test_fixed_size_sets_keep_their_padded_crop_at_the_native_size():
    assert names(prep(native=32, resolution=64).train()) == ["RandomCrop", "Resize", "RandomHorizontalFlip",
                                                             "ToTensor", "Normalize"]


# ------------------------------------------------------------------ refused values


@pytest.mark.parametrize("bad", ["pad", "Padded", 1, True, ["padded"]])
def test_a_bad_crop_value_is_refused_naming_the_option_the_dataset_and_the_choices(bad):
    with pytest.raises(ConfigError, match=r"dataset_args 'crop' of dataset 'Imagewoof' must be one of 'resized', "
                                          r"'padded'.*got "):
        prep(bad)
    with pytest.raises(ConfigError, match="'crop' of dataset 'Imagewoof' must be one of"):  # the registry's check
        DATASETS.get("Imagewoof").check_data("/nonexistent", resolution=32, crop=bad)


@pytest.mark.parametrize("name", ["Cifar10", "Cifar100", "SVHN", "MNIST", "FashionMNIST", "TinyImageNet"])
@pytest.mark.parametrize("crop", ["padded", "resized", "pad"])
def test_crop_on_a_fixed_size_set_is_refused_before_any_file_is_read(tmp_path, name, crop):
    message = r"'crop' does not apply to dataset .*fixed native size .*always trained with the 4-pixel zero-padded"
    with pytest.raises(ConfigError, match=message):
        DATASETS.get(name).check_data(str(tmp_path), resolution=32, crop=crop)
    with pytest.raises(ConfigError, match=message):
        DATASETS.get(name)(resolution=32, data_dir=str(tmp_path), crop=crop, **COMMON)


# ------------------------------------------------------------------ through the registry and main.py


def test_a_folder_dataset_trains_with_the_padded_crop_and_evaluates_as_before(tmp_path):
    folder = f"folder:{pets(tmp_path / 'pets')}"
    padded = DATASETS.get(folder)(resolution=32, data_dir=str(tmp_path), crop="padded", **COMMON)
    default = DATASETS.get(folder)(resolution=32, data_dir=str(tmp_path), **COMMON)
    assert names(padded.train.dataset.transform)[:2] == ["Resize", "RandomCrop"]
    assert names(default.train.dataset.transform)[0] == "RandomResizedCrop"
    for split in ("test", "train_eval"):
        assert repr(getattr(padded, split).dataset.transform) == repr(getattr(default, split).dataset.transform)
    images, _ = next(iter(padded.train))
    assert images.shape == (4, 3, 32, 32)


@pytest.mark.parametrize("crop, message", [
    ("pad", "The dataset_args 'crop' of dataset 'folder:"),
    (True, "must be one of 'resized', 'padded'"),
])
def test_a_dry_run_refuses_a_bad_crop_of_a_folder_dataset(tmp_path, capsys, crop, message):
    folder = pets(tmp_path / "pets")
    config = write_config(tmp_path, dataset=f"folder:{folder}", dataset_args={"crop": ["padded", crop]})
    code, err = main_in_process(capsys, "--config", str(config), "--dry-run")
    err = " ".join(err.split())
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "logs").exists()


def test_a_dry_run_accepts_the_padded_crop_and_refuses_it_on_cifar10(tmp_path, capsys):
    folder = pets(tmp_path / "pets")
    good = write_config(tmp_path, "good.json", dataset=f"folder:{folder}", dataset_args={"crop": "padded"})
    assert main_in_process(capsys, "--config", str(good), "--dry-run")[0] == 0
    cifar = write_config(tmp_path, "cifar.json", dataset="Cifar10", dataset_args={"crop": "padded"})
    code, err = main_in_process(capsys, "--config", str(cifar), "--dry-run")
    assert code == 2 and "'crop' does not apply to dataset 'Cifar10'" in " ".join(err.split())


def test_the_thesis_imagewoof_width_config_uses_the_padded_crop():
    config = json.loads((ROOT / "configs" / "thesis" / "11_3_width_vgg16_imagewoof.json").read_text())
    assert config["dataset"] == "Imagewoof" and config["resolution"] == 32
    assert config["dataset_args"]["crop"] == "padded"
