"""Every dataset through a tiny on-disk tree in the format its loader expects (or its error path)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import http.server
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from phd_lab.errors import ConfigError, DataError, RunFailure
from phd_lab.registry import Registries
from tests.conftest import ROOT, refused_flock

DATASETS = Registries().datasets
COMMON = dict(batch_size=4, seed=0, num_workers=0)


pytestmark = pytest.mark.usefixtures("single_thread")


def write_image(path: Path, size: tuple[int, int] = (40, 30), value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def write_idx(folder: Path, prefix: str, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    images = np.random.default_rng(count).integers(0, 255, (count, 28, 28), dtype=np.uint8)
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, count, 28, 28) + images.tobytes())
    labels = (np.arange(count) % 10).astype(np.uint8)
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, count) + labels.tobytes())


def check_bundle(bundle, *, num_classes: int, channels: int, resolution: int, train_size: int, test_size: int):
    assert (bundle.num_classes, bundle.in_channels, bundle.resolution) == (num_classes, channels, resolution)
    assert len(bundle.train.dataset) == len(bundle.train_eval.dataset) == train_size
    assert len(bundle.test.dataset) == test_size
    for loader in (bundle.train, bundle.test, bundle.train_eval):
        images, labels = next(iter(loader))
        assert images.shape[1:] == (channels, resolution, resolution) and images.dtype == torch.float32
        assert labels.dtype == torch.int64 and int(labels.max()) < num_classes
    # train_eval is the training split without augmentation: identical on every pass
    first = torch.cat([x for x, _ in bundle.train_eval])
    second = torch.cat([x for x, _ in bundle.train_eval])
    assert torch.equal(first, second)


@pytest.mark.parametrize("name", ["MNIST", "FashionMNIST"])
def test_mnist_like_from_idx_files(tmp_path, name):
    write_idx(tmp_path / name / "raw", "train", 12)
    write_idx(tmp_path / name / "raw", "t10k", 6)
    bundle = DATASETS.get(name)(resolution=32, data_dir=str(tmp_path), **COMMON)
    check_bundle(bundle, num_classes=10, channels=1, resolution=32, train_size=12, test_size=6)


def test_tiny_imagenet_tree(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    lines = _tiny_imagenet(root, size=(64, 64))
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    bundle = DATASETS.get("TinyImageNet")(resolution=32, data_dir=str(tmp_path), **COMMON)
    check_bundle(bundle, num_classes=3, channels=3, resolution=32, train_size=9, test_size=2)
    assert [label for _, label in bundle.test.dataset] == [1, 0]   # labels follow the training classes
    # an annotation of a class train/ lacks was dropped silently: the evaluation split shrank unnoticed
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines + ["val_9.JPEG\tn99999999\t0\t0\t1\t1"]))
    with pytest.raises(DataError, match="names class\\(es\\) \\['n99999999'\\] that .* lacks"):
        DATASETS.get("TinyImageNet")(resolution=32, data_dir=str(tmp_path), **COMMON)


def test_imagenette_tree_with_real_wnids(tmp_path):
    for c, wnid in enumerate(["n01440764", "n02102040"]):
        for split, count in (("train", 3), ("val", 1)):
            for i in range(count):
                write_image(tmp_path / "imagenette2" / split / wnid / f"{wnid}_{i}.JPEG", value=c * 10 + i)
    bundle = DATASETS.get("Imagenette")(resolution=24, data_dir=str(tmp_path), **COMMON)
    check_bundle(bundle, num_classes=2, channels=3, resolution=24, train_size=6, test_size=2)


def test_imagenette_keeps_training_class_indices_when_val_lacks_a_class(tmp_path):
    """torchvision's Imagenette numbers each split's classes by its own folders: a val/ without the second
    class gave the third class label 1 there, while the model learnt it as 2."""
    for c, wnid in enumerate(["n01440764", "n02102040", "n02979186"]):
        for i in range(2):
            write_image(tmp_path / "imagenette2" / "train" / wnid / f"{wnid}_{i}.JPEG", value=c * 10 + i)
    write_image(tmp_path / "imagenette2" / "val" / "n02979186" / "n02979186_9.JPEG", value=99)
    bundle = DATASETS.get("Imagenette")(resolution=16, data_dir=str(tmp_path), **COMMON)
    check_bundle(bundle, num_classes=3, channels=3, resolution=16, train_size=6, test_size=1)
    assert bundle.test.dataset[0][1] == 2


def test_fast_ai_s_downsized_imagenette_is_named_with_the_folder_dataset_that_reads_it(tmp_path):
    """Many download imagenette2-320.tgz (or -160), fast.ai's smaller releases: the message said only that there
    is no 'imagenette2' and to place the full-size folder, not that the one there can be read as a folder: set."""
    for c, wnid in enumerate(["n01440764", "n02102040"]):
        for split in ("train", "val"):
            write_image(tmp_path / "imagenette2-320" / split / wnid / "0.JPEG", (8, 8), c)
    said = (f"{str(tmp_path / 'imagenette2-320')!r} is there: another release of the images (downsized), which the "
            f"dataset Imagenette does not read; train on it as it is with \"dataset\": \"folder:"
            f"{tmp_path / 'imagenette2-320'}\" (the same classes, in the same order). Otherwise place imagenette2/")
    with pytest.raises(DataError) as up_front:
        DATASETS.get("Imagenette").check_data(str(tmp_path), resolution=16)
    with pytest.raises(DataError) as opened:
        DATASETS.get("Imagenette")(resolution=16, data_dir=str(tmp_path), **COMMON)
    assert said in str(up_front.value) and said in str(opened.value), str(opened.value)
    bundle = DATASETS.get(f"folder:{tmp_path / 'imagenette2-320'}")(resolution=16, data_dir="unused", **COMMON)
    assert bundle.num_classes == 2 and len(bundle.test.dataset) == 2


def test_imagewoof_tree_keeps_training_class_indices(tmp_path):
    for c, wnid in enumerate(["n02086240", "n02087394", "n02088364"]):
        for i in range(2):
            write_image(tmp_path / "imagewoof2" / "train" / wnid / f"{i}.JPEG", value=c * 10 + i)
    write_image(tmp_path / "imagewoof2" / "val" / "n02088364" / "0.JPEG", value=99)  # only the 3rd class
    bundle = DATASETS.get("Imagewoof")(resolution=16, data_dir=str(tmp_path), **COMMON)
    check_bundle(bundle, num_classes=3, channels=3, resolution=16, train_size=6, test_size=1)
    assert bundle.test.dataset[0][1] == 2


def test_food101_tree(tmp_path):
    base = tmp_path / "food-101"
    meta = {"train": {}, "test": {}}
    for c, dish in enumerate(["apple_pie", "ramen"]):
        for i in range(3):
            write_image(base / "images" / dish / f"{i}.jpg", value=c * 10 + i)
            meta["train" if i < 2 else "test"].setdefault(dish, []).append(f"{dish}/{i}")
    (base / "meta").mkdir()
    for split, content in meta.items():
        (base / "meta" / f"{split}.json").write_text(json.dumps(content))
    bundle = DATASETS.get("Food101")(resolution=16, data_dir=str(tmp_path), **COMMON)
    check_bundle(bundle, num_classes=2, channels=3, resolution=16, train_size=4, test_size=2)


def test_inaturalist_2021_tree(tmp_path):
    categories = ["00000_Animalia_Chordata_Aves_Passeriformes_Corvidae_Corvus_corax",
                  "00001_Plantae_Tracheophyta_Magnoliopsida_Rosales_Rosaceae_Rosa_canina"]
    for version, count in (("2021_train", 2), ("2021_valid", 1)):
        for c, category in enumerate(categories):
            for i in range(count):
                write_image(tmp_path / "inaturalist" / version / category / f"{i}.jpg", value=c * 10 + i)
    bundle = DATASETS.get("iNaturalist")(resolution=16, data_dir=str(tmp_path), **COMMON)
    check_bundle(bundle, num_classes=2, channels=3, resolution=16, train_size=4, test_size=2)
    # the samples come in sorted order, not in the file system's directory order (created shuffled here)
    from phd_lab.datasets.torchvision_sets import SOURCES, open_split
    for i in (7, 2, 11, 0, 5, 9, 3):
        write_image(tmp_path / "inaturalist" / "2021_train" / categories[1] / f"extra{i}.jpg", value=i)
    samples = open_split(SOURCES["iNaturalist"], str(tmp_path), "train", download=False).samples
    assert len(samples) == 11 and samples == sorted(samples)


def test_inaturalist_files_beside_and_inside_the_categories_are_no_categories_and_no_images(tmp_path, caplog):
    """torchvision's INaturalist took every entry of 2021_train/ for a category and every file of a category for an
    image: a .DS_Store (a folder copied on a Mac) beside the categories failed the run with 'RuntimeError: Unexpected
    category name .DS_Store' and a traceback, one inside a category failed it mid-epoch, and a category missing
    (a stopped extraction) said 'Unexpected category id' with a traceback."""
    categories = ["00000_Animalia_Chordata_Aves_Passeriformes_Corvidae_Corvus_corax",
                  "00001_Plantae_Tracheophyta_Magnoliopsida_Rosales_Rosaceae_Rosa_canina",
                  "00002_Fungi_Basidiomycota_Agaricomycetes_Agaricales_Amanitaceae_Amanita_muscaria"]
    for version in ("2021_train", "2021_valid"):
        for c, category in enumerate(categories):
            write_image(tmp_path / "inaturalist" / version / category / "0.jpg", (8, 8), c)
            (tmp_path / "inaturalist" / version / category / ".DS_Store").write_bytes(b"\0Bud1")
        (tmp_path / "inaturalist" / version / ".DS_Store").write_bytes(b"\0Bud1")
    (tmp_path / "inaturalist" / "2021_train" / categories[1] / "Thumbs.db").write_bytes(b"\xd0\xcf")
    bundle = DATASETS.get("iNaturalist")(resolution=8, data_dir=str(tmp_path), **COMMON)
    assert [label for _, label in bundle.train_eval] and bundle.num_classes == 3
    assert [(Path(path).name, label) for path, label in bundle.test.dataset.base.samples] == [("0.jpg", 0),
                                                                                              ("0.jpg", 1),
                                                                                              ("0.jpg", 2)]
    shutil.rmtree(tmp_path / "inaturalist" / "2021_valid" / categories[0])  # labels still by the training ids
    with caplog.at_level("WARNING"):
        bundle = DATASETS.get("iNaturalist")(resolution=8, data_dir=str(tmp_path), **COMMON)
    assert [label for _, label in bundle.test.dataset.base.samples] == [1, 2]
    assert "no image of 1 of the 3 training classes" in caplog.text
    shutil.rmtree(tmp_path / "inaturalist" / "2021_train" / categories[1])
    with pytest.raises(DataError, match=f"has the category folder '{categories[2]}' where one numbered 00001 belongs"):
        DATASETS.get("iNaturalist")(resolution=8, data_dir=str(tmp_path), **COMMON)


def test_inaturalist_missing_creates_no_folders(tmp_path):
    with pytest.raises(DataError, match="inaturalist/2021_train"):
        DATASETS.get("iNaturalist")(resolution=16, data_dir=str(tmp_path / "data"), **COMMON)
    assert not (tmp_path / "data").exists()


def test_inaturalist_extracted_under_the_archive_s_own_folder_name_is_told_to_rename_it(tmp_path):
    """The 2021 archives are train.tar.gz and val.tar.gz, which extract to train/ and val/ (torchvision renames
    them): the message named 2021_train.tar.gz, an archive that does not exist, and not the folder to rename."""
    write_image(tmp_path / "inaturalist" / "train" / "00000_A_B_C_D_E_F_g" / "0.jpg", (8, 8))
    with pytest.raises(DataError) as error:
        DATASETS.get("iNaturalist")(resolution=16, data_dir=str(tmp_path), **COMMON)
    message = str(error.value)
    assert (f"{str(tmp_path / 'inaturalist' / 'train')!r}, as the archive extracts, is there: rename it to 2021_train"
            in message and "iNaturalist 2021's train.tar.gz and val.tar.gz extracted" in message), message


def test_folder_prefix(tmp_path, caplog):
    for split, count in (("train", 3), ("val", 1)):
        for c, name in enumerate(["cats", "dogs"]):
            for i in range(count):
                write_image(tmp_path / "pets" / split / name / f"{i}.png", value=c * 10 + i)
    with caplog.at_level("INFO"):
        bundle = DATASETS.get(f"folder:{tmp_path / 'pets'}")(resolution=20, data_dir="unused", **COMMON)
    check_bundle(bundle, num_classes=2, channels=3, resolution=20, train_size=6, test_size=2)
    # each split's own folder, not data_dir: the log named train/ only, not which of test/ or val/ it evaluated on
    assert (f"6 training images from {tmp_path / 'pets' / 'train'}, 2 test images from {tmp_path / 'pets' / 'val'}"
            in caplog.text)
    assert f"folder:{tmp_path / 'pets'}" in DATASETS


@pytest.mark.parametrize("layout, message", [
    ({"train/cats": 2, "train/dogs": 2, "train/empty": 0, "test/cats": 1}, "train' has class folder(s) ['empty'] "
                                                                            "without images"),
    ({"train/cats": 2, "train/dogs": 2}, "has no test/ or val/ folder beside train/"),
    ({"train/cats": 2, "train/dogs": 2, "test/cats": 1, "test/birds": 1}, "class folder(s) ['birds'] that the "
                                                                          "training split lacks"),
    ({"train/cats": 0, "train/dogs": 0, "test/cats": 1}, "holds no image"),
    ({"train/cats": 2, "test/cats": 1}, "has 1 class folder ('cats'); a classifier needs at least two"),
])
def test_folder_trees_that_would_mislead_are_data_errors(tmp_path, layout, message):
    for folder, count in layout.items():
        (tmp_path / "pets" / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            write_image(tmp_path / "pets" / folder / f"{i}.png", value=i)
    with pytest.raises(DataError) as error:
        DATASETS.get(f"folder:{tmp_path / 'pets'}")(resolution=16, data_dir="unused", **COMMON)
    assert message in " ".join(str(error.value).split()), str(error.value)


def test_a_class_folder_that_cannot_be_listed_is_named_not_left_out(tmp_path):
    """os.walk (ImageFolder's) passes over a folder it cannot list without a word: a test class of another user's
    mode (0700 on a shared file system) vanished from the evaluation split, which may lack classes, and the run
    scored on the rest. Root lists any folder, so as root the data set is opened without the capabilities that
    let it (setpriv), as any other user would. An unreadable hidden folder is no part of the data set."""
    for split, count in (("train", 2), ("test", 1)):
        for c, name in enumerate(["cats", "dogs"]):
            for i in range(count):
                write_image(tmp_path / "pets" / split / name / f"{i}.png", value=c * 10 + i)
    (tmp_path / "pets" / "test" / ".Trash").mkdir()
    hidden, dogs, cats = (tmp_path / "pets" / path for path in ("test/.Trash", "test/dogs", "train/cats"))
    # one process (its imports take seconds) opens the data set three times, making a folder unlistable before the
    # second and the third: with the hidden folder alone, then a test class, then a training class up front
    script = ("import os; from phd_lab.errors import DataError; from phd_lab.registry import Registries\n"
              f"factory = Registries().datasets.get('folder:{tmp_path / 'pets'}')\n"
              f"for how, closed in (('open', None), ('open', {str(dogs)!r}), ('check', {str(cats)!r})):\n"
              "    if closed is not None:\n"
              "        os.chmod(closed, 0)\n"
              "    try:\n"
              "        if how == 'check':  # the check before any point trains\n"
              "            factory.check_data('unused', resolution=16); said = 'checked'\n"
              "        else:\n"
              "            b = factory(resolution=16, data_dir='unused', batch_size=4, seed=0, num_workers=0)\n"
              "            said = f'{len(b.train.dataset)} {len(b.test.dataset)}'\n"
              "    except DataError as error:\n"
              "        said = f'DataError: {error}'\n"
              "    print(' '.join(said.split()))\n")
    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root lists every folder, and setpriv, which drops that, is not installed")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]

    hidden.chmod(0)
    try:
        done = subprocess.run([*prefix, sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-2000:]
        first, opened, checked = done.stdout.splitlines()
    finally:
        for folder in (hidden, dogs, cats):
            folder.chmod(0o755)
    assert first == "4 2", first
    assert opened.startswith(f"DataError: The image folder '{tmp_path / 'pets' / 'test'}' holds 1 folder(s) that "
                             f"cannot be listed"), opened
    assert f"{dogs} (Permission denied)" in opened and "Make them readable" in opened
    # up front, an unlisted training class was called a class folder "without images"
    assert checked.startswith(f"DataError: The image folder '{tmp_path / 'pets' / 'train'}' holds 1 folder(s) "
                              f"that cannot be listed"), checked
    assert f"{cats} (Permission denied)" in checked


def test_hidden_folders_are_no_classes(tmp_path):
    for split, count in (("train", 2), ("test", 1)):
        for c, name in enumerate(["cats", "dogs"]):
            for i in range(count):
                write_image(tmp_path / "pets" / split / name / f"{i}.png", value=c * 10 + i)
    (tmp_path / "pets" / "train" / ".ipynb_checkpoints").mkdir()
    bundle = DATASETS.get(f"folder:{tmp_path / 'pets'}")(resolution=16, data_dir="unused", **COMMON)
    check_bundle(bundle, num_classes=2, channels=3, resolution=16, train_size=4, test_size=2)


def test_hidden_files_and_folders_inside_class_folders_are_no_samples(tmp_path):
    """macOS' ._name.png resource forks (not images) crashed the run part-way, a class holding only such
    files passed the check that every class has images, and .ipynb_checkpoints copies were trained on twice."""
    for split, count in (("train", 2), ("test", 1)):
        for c, name in enumerate(["cats", "dogs"]):
            for i in range(count):
                write_image(tmp_path / "pets" / split / name / f"{i}.png", value=c * 10 + i)
            (tmp_path / "pets" / split / name / "._0.png").write_bytes(b"\x00\x05\x16\x07 resource fork")
    write_image(tmp_path / "pets" / "train" / "cats" / ".ipynb_checkpoints" / "0-checkpoint.png", value=1)
    bundle = DATASETS.get(f"folder:{tmp_path / 'pets'}")(resolution=16, data_dir="unused", **COMMON)
    check_bundle(bundle, num_classes=2, channels=3, resolution=16, train_size=4, test_size=2)
    for images, _ in bundle.train:  # every sample loads
        assert torch.isfinite(images).all()

    only_hidden = tmp_path / "pets" / "train" / "birds"
    only_hidden.mkdir()
    (only_hidden / "._1.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"class folder\(s\) \['birds'\] without images"):
        DATASETS.get(f"folder:{tmp_path / 'pets'}").check_data("unused", resolution=16)


def test_a_damaged_image_is_named_when_it_is_loaded(tmp_path):
    for split, count in (("train", 2), ("test", 1)):
        for c, name in enumerate(["cats", "dogs"]):
            for i in range(count):
                write_image(tmp_path / "pets" / split / name / f"{i}.png", value=c * 10 + i)
    damaged = tmp_path / "pets" / "train" / "dogs" / "1.png"
    damaged.write_bytes(damaged.read_bytes()[:40])  # truncated
    bundle = DATASETS.get(f"folder:{tmp_path / 'pets'}")(resolution=16, data_dir="unused", **COMMON)
    with pytest.raises(RunFailure, match=f"The image file {str(damaged)!r} cannot be read"):
        for _ in bundle.train:
            pass


def test_a_git_lfs_pointer_in_place_of_an_image_is_said_to_be_one(tmp_path):
    """A data set cloned without git lfs holds text pointers under image names: the run failed on the first with
    "cannot be read (UnidentifiedImageError ...); remove or replace it", one file of thousands like it."""
    pets = _pets(tmp_path / "pets")
    for image in sorted((pets / "train").rglob("*.png")):
        image.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 1234\n")
    bundle = DATASETS.get(f"folder:{pets}")(resolution=16, data_dir="unused", **COMMON)
    with pytest.raises(RunFailure, match=f"The image file '{pets / 'train'}/(cats|dogs)/[0-2].png' is a Git LFS "
                                         f"pointer .* git lfs pull"):
        for _ in bundle.train:
            pass


@pytest.mark.parametrize("name, expected", [
    ("Cifar10", "cifar-10-batches-py/"), ("Cifar100", "cifar-100-python/"), ("SVHN", "SVHN/train_32x32.mat"),
    ("ImageNet", "imagenet/ILSVRC2012_devkit_t12.tar.gz"), ("MNIST", "MNIST/raw/"),
    ("TinyImageNet", "tiny-imagenet-200/"), ("Imagenette", "imagenette2/train"), ("Imagewoof", "imagewoof2/"),
    ("Food101", "food-101/images"), ("iNaturalist", "inaturalist/2021_train"),
])
def test_missing_data_says_what_to_place_where(tmp_path, name, expected):
    with pytest.raises(DataError) as error:
        DATASETS.get(name)(resolution=32, data_dir=str(tmp_path), **COMMON)
    message = str(error.value)
    assert expected in message and str(tmp_path) in message and name in message


class _OpensAFile:
    """Unpickled, it calls ``open(path, "w")``: the stand-in for any code a crafted batch file would run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


@pytest.mark.parametrize("name, folder, files", [
    ("Cifar10", "cifar-10-batches-py", ["data_batch_1", "data_batch_2", "data_batch_4", "data_batch_5", "test_batch",
                                        "batches.meta"]),
    ("Cifar100", "cifar-100-python", ["train", "meta"]),
])
def test_a_cifar_folder_lacking_or_holding_changed_files_names_them_and_runs_no_code(tmp_path, name, folder, files):
    """torchvision said 'Dataset not found or corrupted' of a folder lacking one batch file or holding one cut short,
    naming none. Its files are pickles: one crafted to run code must not run it (they are read only where every
    file has its published MD5)."""
    import pickle
    marker = tmp_path / "code-ran"
    (tmp_path / folder).mkdir()
    for file in files:
        (tmp_path / folder / file).write_bytes(pickle.dumps({"data": _OpensAFile(marker), "labels": [0]}))
    with pytest.raises(DataError) as error:
        DATASETS.get(name)(resolution=32, data_dir=str(tmp_path), **COMMON)
    message = str(error.value)
    lacking = "data_batch_3" if name == "Cifar10" else "test"
    assert (f"Dataset {name}: the folder {str(tmp_path / folder)!r} lacks {lacking} and holds {', '.join(files)} "
            f"unlike the published file(s) (another MD5 checksum") in message, message
    assert "Python pickles, which could run code if changed" in message
    assert "Place the files of the extracted" in message
    assert not marker.exists()


def test_an_svhn_file_unlike_the_published_one_is_named(tmp_path):
    (tmp_path / "SVHN").mkdir()
    (tmp_path / "SVHN" / "train_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file, cut short")
    with pytest.raises(DataError, match=r"SVHN' holds train_32x32.mat unlike the published file\(s\)"):
        DATASETS.get("SVHN")(resolution=32, data_dir=str(tmp_path), **COMMON)


def test_missing_folder_tree(tmp_path):
    with pytest.raises(DataError, match="train/<class>/<image>"):
        DATASETS.get(f"folder:{tmp_path / 'nothing'}")(resolution=32, data_dir=str(tmp_path), **COMMON)


@pytest.mark.parametrize("name, args, message", [
    ("ImageNet", {"download": True}, "cannot be downloaded"),
    ("Cifar10", {"normalization": "mnist"}, "'normalization' .* must be one of 'cifar', 'imagenet'"),
    ("Cifar10", {"canvas": True, "resolution": 16}, "canvas .* at least as large"),
    ("Imagenette", {"canvas": True}, "no fixed native image size"),
    ("Cifar10", {"downsample_then_upsample": 0}, "positive number of pixels"),
    ("Cifar10", {"augment": "yes"}, "'augment'"),
])
def test_bad_dataset_args_fail_before_any_file_is_read(tmp_path, name, args, message):
    kwargs = {"resolution": 32, "data_dir": str(tmp_path), **COMMON, **args}
    with pytest.raises(ConfigError, match=message):
        DATASETS.get(name)(**kwargs)


def test_mnist_canvas_and_downsample_options_reach_the_pipeline(tmp_path):
    write_idx(tmp_path / "MNIST" / "raw", "train", 8)
    write_idx(tmp_path / "MNIST" / "raw", "t10k", 4)
    canvas = DATASETS.get("MNIST")(resolution=64, data_dir=str(tmp_path), canvas=True, **COMMON)
    image, _ = canvas.test.dataset[0]
    background = -0.1307 / 0.3081                         # a black pixel after normalisation
    assert image.shape == (1, 64, 64)
    assert (torch.isclose(image, torch.tensor(background)).sum()) >= 64 * 64 - 28 * 28
    blurred = DATASETS.get("MNIST")(resolution=32, data_dir=str(tmp_path), downsample_then_upsample=8, **COMMON)
    assert blurred.train_eval.dataset[0][0].shape == (1, 32, 32)


def test_digits_normalised_in_place_equal_the_plain_definition():
    """Both splits are views of one resized tensor normalised in place (≈ 1/3 of the former peak memory at 224
    px); the values are those of resizing all images and normalising by the training images' mean and std."""
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from phd_lab.datasets.digits import SPLIT_SEED, TEST_SHARE, digits_tensors
    train, test = digits_tensors(20)
    digits = load_digits()
    images = F.interpolate(torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0, size=(20, 20),
                           mode="bilinear", align_corners=False)
    chosen, held_out = (torch.tensor(sorted(part)) for part in train_test_split(
        range(len(digits.target)), test_size=TEST_SHARE, random_state=SPLIT_SEED, stratify=digits.target))
    mean, std = images[chosen].mean(), images[chosen].std()
    assert torch.equal(train.tensors[0], (images[chosen] - mean) / std)
    assert torch.equal(test.tensors[0], (images[held_out] - mean) / std)
    assert torch.equal(test.tensors[1], torch.tensor(digits.target)[held_out])



def _archive(tmp_path: Path, folder: str, kind: str) -> Path:
    """A real archive holding ``folder/train/a/0.png`` and ``folder/val/a/0.png``."""
    source = tmp_path / "source"
    for split in ("train", "val"):
        (source / folder / split / "a").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(source / folder / split / "a" / "0.png")
    return Path(shutil.make_archive(str(tmp_path / "served" / folder), kind, root_dir=source, base_dir=folder))


@contextlib.contextmanager
def _http_server(folder: Path):
    """A real HTTP server on localhost serving ``folder`` (torchvision's downloader speaks HTTP)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("kind", ["zip", "gztar"])
def test_a_downloaded_dataset_folder_is_whole_or_absent(tmp_path, kind):
    """An interrupted extraction left a partial folder that later runs trained on without a word, and an
    interrupted download a truncated archive that was taken for complete."""
    from phd_lab.datasets.download import download_and_extract
    served = _archive(tmp_path, "woof", kind)
    root = tmp_path / "data"
    with _http_server(served.parent) as address:
        url = f"{address}/{served.name}"
        (root / f".{served.name}.partial").mkdir(parents=True)  # a download that was killed half-way ...
        (root / f".{served.name}.partial" / served.name).write_bytes(b"half")
        (root / ".woof.extracting" / "woof" / "train").mkdir(parents=True)  # ... and an extraction
        target = download_and_extract(url, root, "woof")
        assert (target / "train" / "a" / "0.png").is_file() and (target / "val" / "a" / "0.png").is_file()
        assert sorted(p.name for p in root.iterdir()) == sorted([".woof.download.lock", served.name, "woof"])
        assert (root / served.name).read_bytes() == served.read_bytes()
        served.unlink()
        assert download_and_extract(url, root, "woof") == target  # there already: nothing is fetched
    shutil.rmtree(target)  # a damaged archive (truncated, placed by hand) is named, and no folder appears
    archive = root / served.name
    archive.write_bytes(archive.read_bytes()[:40])
    with pytest.raises(DataError, match="is damaged"):
        download_and_extract(url, root, "woof")
    assert not target.exists() and not (root / ".woof.extracting").exists()


def test_a_second_downloader_waits_and_uses_the_folder_the_first_one_finished(tmp_path):
    """Two grid points (Dask workers sharing data_dir) downloading at once wrote the same files; the second
    now waits on the lock and finds the folder whole. Nothing serves the URL: it must not download."""
    from phd_lab.datasets.download import download_and_extract
    from phd_lab.lock import waiting_lock
    root = tmp_path / "data"
    root.mkdir()
    result: list[Path] = []
    with waiting_lock(root / ".woof.download.lock"):
        waiter = threading.Thread(target=lambda: result.append(
            download_and_extract("http://127.0.0.1:9/woof.tgz", root, "woof")))
        waiter.start()
        waiter.join(timeout=1.0)
        assert waiter.is_alive() and not result  # waiting for the lock
        (root / "woof" / "train").mkdir(parents=True)  # what the first downloader renames into place
    waiter.join(timeout=30)
    assert result == [root / "woof"]


def test_a_failed_download_is_a_data_error_naming_the_dataset(tmp_path):
    """torchvision reports MNIST's mirrors failing as a RuntimeError, which gave exit 1 and a traceback. This
    machine reaches no download server; where one is reachable, MNIST would really download."""
    import socket
    try:
        socket.getaddrinfo("ossci-datasets.s3.amazonaws.com", 443)
        pytest.skip("this machine can reach the MNIST download servers")
    except OSError:
        pass
    (tmp_path / "CIFAR10").mkdir()  # the user's own folders stay, also empty ones
    with pytest.raises(DataError, match="Dataset MNIST could not be downloaded into .*Error downloading") as error:
        DATASETS.get("MNIST")(resolution=28, data_dir=str(tmp_path), download=True, **COMMON)
    # download is on already: the advice is not to turn it on
    assert str(error.value).endswith("yourself, or run once with \"download\": true on a machine with internet "
                                     "access.")
    assert [p.name for p in tmp_path.iterdir()] == ["CIFAR10"]  # torchvision's empty MNIST/raw went again
    with pytest.raises(DataError, match="could not be downloaded"):  # a data_dir the download made goes too,
        DATASETS.get("MNIST")(resolution=28, data_dir=str(tmp_path / "new" / "sub"), download=True, **COMMON)
    assert [p.name for p in tmp_path.iterdir()] == ["CIFAR10"]  # with the parents it made for it


def test_a_download_into_a_data_dir_this_user_cannot_write_says_so_not_a_network_failure(tmp_path):
    """A download into a data_dir without write permission failed at its lock file (download_and_extract's,
    TinyImageNet) or torchvision's first folder (MNIST) and was said as a failed download, "PermissionError: [Errno
    13] ...", with the advice to download on a machine with internet access. Now data_dir's file system is named
    as what refused, with the remedies: a data_dir this user can write, or the files placed there. Root writes
    anywhere, so the data sets are opened without the capability that lets it (setpriv); nothing is downloaded."""
    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root writes into any folder, and setpriv, which drops that, is not installed")
        prefix = ["setpriv", "--bounding-set=-dac_override"]
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o555)
    script = ("import sys; from phd_lab.errors import DataError; from phd_lab.registry import Registries\n"
              "for name in ('TinyImageNet', 'MNIST'):\n"
              "    try:\n"
              f"        Registries().datasets.get(name)(resolution=16, data_dir={str(data_dir)!r}, batch_size=4, "
              "seed=0, num_workers=0, download=True)\n"
              "    except DataError as error:\n"
              "        print('DataError:', ' '.join(str(error).split()))\n")
    done = subprocess.run([*prefix, sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    tiny, mnist = done.stdout.splitlines()
    for said, refused in ((tiny, data_dir / ".tiny-imagenet-200.download.lock"), (mnist, data_dir / "MNIST")):
        assert said.startswith(f"DataError: Dataset {'TinyImageNet' if said is tiny else 'MNIST'} could not be "
                               f"downloaded into data_dir '{data_dir}': its file system refused '{refused}' "
                               f"(Permission denied): this user lacks the permission to it"), said
        assert "set 'data_dir' to a folder this user can write" in said and "internet" not in said, said
    assert list(data_dir.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to run as nobody")
def test_a_data_dir_others_may_enter_but_not_list_still_loads(tmp_path):
    """Opening a dataset listed data_dir (for the clean-up after a failed download) also without a download: a
    shared data folder of mode 0711 then failed with "Place MNIST/raw/..." although the files were there."""
    closed = [str(folder) for path in (ROOT, Path(sys.executable)) for folder in (path, *path.parents)
              if folder.is_dir() and not folder.stat().st_mode & 0o001]
    if closed:  # a checkout cloned into a private folder (mktemp -d, a 0700 home): nobody cannot import phd_lab
        pytest.skip(f"the user nobody cannot enter {closed[0]}, on the way to this checkout or its Python")
    shared = Path(tempfile.mkdtemp(prefix="phd_lab_0711_", dir="/tmp"))  # pytest's tmp_path is root's alone
    try:
        write_idx(shared / "MNIST" / "raw", "train", 12)
        write_idx(shared / "MNIST" / "raw", "t10k", 6)
        for folder, _, files in os.walk(shared):
            os.chmod(folder, 0o755)
            for name in files:
                os.chmod(Path(folder) / name, 0o644)
        shared.chmod(0o711)
        script = ("from phd_lab.registry import Registries; "
                  f"b = Registries().datasets.get('MNIST')(resolution=28, data_dir={str(shared)!r}, batch_size=4, "
                  "seed=0, num_workers=0); print(len(b.train.dataset))")
        done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                               script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert done.returncode == 0 and done.stdout.strip() == "12", done.stderr[-2000:]
    finally:
        shutil.rmtree(shared)


def test_a_failed_download_leaves_no_partial_folder(tmp_path):
    from phd_lab.datasets.download import download_and_extract
    root = tmp_path / "data"
    (tmp_path / "served").mkdir()
    with _http_server(tmp_path / "served") as address, pytest.raises(OSError, match="404"):
        download_and_extract(f"{address}/woof.tgz", root, "woof")  # served nowhere: 404
    assert [p.name for p in root.iterdir()] == [".woof.download.lock"]


def test_a_relative_image_folder_is_named_with_the_directory_a_rerun_must_start_from(tmp_path, caplog,
                                                                                      monkeypatch):
    """A relative 'folder:' path is read from the working directory, and the logged config names it as given: a
    rerun from elsewhere found other images or none. The check before training says so, once per process."""
    from registries import datasets as registry
    _pets(tmp_path / "pets", train=1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(registry, "_RELATIVE_WARNED", set())
    with caplog.at_level("WARNING"):
        registry._check_folder("pets", data_dir="unused")
        registry._check_folder("pets", data_dir="unused")
        registry._check_folder(str(tmp_path / "pets"), data_dir="unused")
    warnings = [r.getMessage() for r in caplog.records if "relative path" in r.getMessage()]
    assert len(warnings) == 1
    assert f"read here as {tmp_path / 'pets'}" in warnings[0] and f"must start from {tmp_path}" in warnings[0]


@pytest.mark.parametrize("layout, message", [
    ({"test/birds": 1}, "class folder(s) ['birds'] that the training split lacks"),
    ({"test/cats": -1, "test/dogs": -1}, "test' holds no image"),
])
def test_a_broken_evaluation_folder_is_refused_before_any_point_of_the_grid_trains(tmp_path, capsys, layout,
                                                                                  message):
    """The check before training read only train/ and whether test/ existed: a grid's Digits point trained for
    hours, then the folder's point failed (exit 1) on an evaluation class train/ lacks or a test/ without images."""
    from tests.conftest import main_in_process, write_config
    _pets(tmp_path / "pets")
    for folder, count in layout.items():
        if count < 0:
            shutil.rmtree(tmp_path / "pets" / folder)
            (tmp_path / "pets" / folder).mkdir()
        for i in range(count):
            write_image(tmp_path / "pets" / folder / f"{i}.png", value=i)
    config = write_config(tmp_path, dataset=["Digits", f"folder:{tmp_path / 'pets'}"])
    code, err = main_in_process(capsys, "--config", str(config), "--no-progress", "-q")
    err = " ".join(err.split())
    assert code == 2 and "Traceback" not in err and message in err, err
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("in_classes", [True, False])
def test_images_outside_the_class_folders_are_refused_not_passed_over(tmp_path, capsys, split, in_classes):
    """ImageFolder reads only class folders: image files right in train/ or test/ were left out without a word,
    and a split of nothing but such files was said to have "no class folders". Up front and when opened (exit 2)."""
    from tests.conftest import main_in_process, write_config
    pets = _pets(tmp_path / "pets")
    if not in_classes:  # all of this split's images loose, as a flat folder of files
        shutil.rmtree(pets / split)
    for i, name in enumerate(["a.png", "b.jpg", "c.gif"]):
        write_image(pets / split / name, size=(12, 12), value=i)
    (pets / split / "labels.csv").write_text("a.png,cats\n")  # no image: no sample, no complaint
    expected = (f"The image folder {str(pets / split)!r} holds 3 image file(s) directly, not in a class folder "
                f"('a.png', 'b.jpg', 'c.gif')")
    for said in _refusals_up_front_and_when_opened(pets):
        assert said.startswith(expected) and "one subfolder per class" in said, said
    code, err = main_in_process(capsys, "--config", str(write_config(tmp_path, dataset=f"folder:{pets}")),
                                "--no-progress", "-q")
    err = " ".join(err.split())
    assert code == 2 and "Traceback" not in err and expected in err, err
    assert not (tmp_path / "logs").exists()


def test_image_files_in_formats_the_loader_does_not_read_are_named_once_per_split(tmp_path, caplog):
    """ImageFolder passed over .gif, .heic, .jfif ... files without a word, so a class shrank silently (in the
    evaluation split, which may lack classes, it could vanish). One warning per split folder, not per file."""
    pets = _pets(tmp_path / "pets")
    for name in ("cats/a.gif", "cats/b.GIF", "dogs/deep/c.heic", "dogs/._d.gif", "dogs/.cache/e.gif", "dogs/f.txt"):
        (pets / "train" / name).parent.mkdir(parents=True, exist_ok=True)
        (pets / "train" / name).write_bytes(b"GIF89a")  # never read: no sample
    write_image(pets / "test" / "dogs" / "g.jfif", size=(12, 12))
    with caplog.at_level("WARNING"):
        bundle = DATASETS.get(f"folder:{pets}")(resolution=16, data_dir="unused", **COMMON)
    check_bundle(bundle, num_classes=2, channels=3, resolution=16, train_size=6, test_size=2)
    warnings = [" ".join(record.getMessage().split()) for record in caplog.records if record.levelname == "WARNING"]
    readable = ".bmp, .jpeg, .jpg, .pgm, .png, .ppm, .tif, .tiff, .webp"
    assert warnings == [
        f"The image folder {str(pets / 'train')!r} holds 3 image file(s) in formats the loader does not read (2 .gif, "
        f"1 .heic), which are left out of the split; it reads {readable}. Convert them (to PNG, say) to use them.",
        f"The image folder {str(pets / 'test')!r} holds 1 image file(s) in formats the loader does not read (1 .jfif), "
        f"which are left out of the split; it reads {readable}. Convert them (to PNG, say) to use them."], warnings


def test_a_class_folder_of_only_unread_formats_is_named_with_the_formats_the_loader_reads(tmp_path):
    """A training class whose images were all .gif was called a class folder "without images", which its
    owner, looking at a folder of images, could not act on: it now counts them and names the readable formats."""
    pets = _pets(tmp_path / "pets")
    for name in ("a.gif", "b.gif", "deep/c.heic", "._d.png", "notes.txt"):
        (pets / "train" / "birds" / name).parent.mkdir(parents=True, exist_ok=True)
        (pets / "train" / "birds" / name).write_bytes(b"GIF89a")
    for opens in (lambda: DATASETS.get(f"folder:{pets}").check_data("unused", resolution=16),
                  lambda: DATASETS.get(f"folder:{pets}")(resolution=16, data_dir="unused", **COMMON)):
        with pytest.raises(DataError) as error:
            opens()
        said = " ".join(str(error.value).split())
        assert said.startswith(
            f"The training folder {str(pets / 'train')!r} has class folder(s) ['birds'] without images the loader "
            f"reads (.bmp, .jpeg, .jpg, .pgm, .png, .ppm, .tif, .tiff, .webp): 'birds' holds 2 .gif, 1 .heic; "), said


def test_training_classes_the_evaluation_split_has_no_image_of_are_named(tmp_path, caplog):
    """An evaluation split may lack a training class, but one that did (its folder absent, empty, or of .gif
    files only) was scored on the other classes without a word in the run's log."""
    pets = _pets(tmp_path / "pets", classes=("birds", "cats", "dogs", "fish"))
    shutil.rmtree(pets / "test" / "birds")
    for name in ("cats", "fish"):
        shutil.rmtree(pets / "test" / name)
        (pets / "test" / name).mkdir()
    (pets / "test" / "fish" / "0.gif").write_bytes(b"GIF89a")
    with caplog.at_level("WARNING"):
        bundle = DATASETS.get(f"folder:{pets}")(resolution=16, data_dir="unused", **COMMON)
    assert bundle.num_classes == 4 and len(bundle.test.dataset) == 1
    warnings = [" ".join(record.getMessage().split()) for record in caplog.records if record.levelname == "WARNING"]
    assert (f"The evaluation folder {str(pets / 'test')!r} has no image of 3 of the 4 training classes ('birds', "
            f"'cats', 'fish'): the test accuracy and loss cover the other classes only.") in warnings, warnings
    caplog.clear()
    with caplog.at_level("WARNING"):  # a whole evaluation split: no warning
        DATASETS.get(f"folder:{_pets(tmp_path / 'whole')}")(resolution=16, data_dir="unused", **COMMON)
    assert not [record for record in caplog.records if record.levelname == "WARNING"]


def _refusals_up_front_and_when_opened(pets: Path) -> list[str]:
    """The DataError messages (whitespace folded) of the image folder ``pets`` checked before training and opened."""
    said = []
    for opens in (lambda: DATASETS.get(f"folder:{pets}").check_data("unused", resolution=16),
                  lambda: DATASETS.get(f"folder:{pets}")(resolution=16, data_dir="unused", **COMMON)):
        with pytest.raises(DataError) as error:
            opens()
        said.append(" ".join(str(error.value).split()))
    return said


def _pets(root: Path, classes=("cats", "dogs"), train: int = 3, test: int = 1) -> Path:
    for split, count in (("train", train), ("test", test)):
        for c, name in enumerate(classes):
            for i in range(count):
                write_image(root / split / name / f"{i}.png", size=(12, 12), value=c * 10 + i)
    return root


@pytest.mark.parametrize("overrides, message", [
    ({"dataset": "FakeData", "dataset_args": {"train_size": [40, 0]}}, "'train_size' of dataset 'FakeData' must be"),
    ({"dataset": "FOLDER", "dataset_args": {"normalization": ["cifar", "bogus"]}}, "must be one of 'cifar'"),
    ({"dataset": "FOLDER", "resolution": [16, 8], "dataset_args": {"canvas": 12}}, "canvas .* at least as large"),
    ({"dataset": "FOLDER", "dataset_args": {"downsample_then_upsample": [8, 64]}}, "above the image size 16"),
    ({"dataset": ["FOLDER", "ONE_CLASS"]}, "has 1 class folder"),
    ({"dataset": ["FOLDER", "NO_TEST"]}, "has no test/ or val/ folder"),
])
def test_every_grid_point_s_dataset_is_checked_before_the_first_trains(tmp_path, capsys, overrides, message):
    """A bad value in a later grid point was found only when that point built its data, after the earlier
    points had trained: the command exited 1 instead of 2, and had written run folders."""
    import re

    from phd_lab.cli import main_cli
    from tests.conftest import write_config
    good = _pets(tmp_path / "pets")
    one_class = _pets(tmp_path / "one", classes=("cats",))
    no_test = _pets(tmp_path / "notest")
    shutil.rmtree(no_test / "test")
    names = {"FOLDER": f"folder:{good}", "ONE_CLASS": f"folder:{one_class}", "NO_TEST": f"folder:{no_test}"}
    dataset = overrides["dataset"]
    overrides = {**overrides, "dataset": [names.get(d, d) for d in dataset] if isinstance(dataset, list)
                 else names.get(dataset, dataset)}
    config = write_config(tmp_path, **{"epoch": 1, "track_saturation": False, **overrides})
    capsys.readouterr()
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert re.search(message, err) and "Traceback" not in err, err
    assert not (tmp_path / "logs").exists(), "nothing may be trained or written"


def test_sixteen_bit_grayscale_images_are_scaled_not_clipped(tmp_path):
    from phd_lab.datasets.folders import load_image
    values = np.array([[0, 257, 32896], [65535, 1000, 60000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "scan.png")
    assert Image.open(tmp_path / "scan.png").mode.startswith("I")
    loaded = np.asarray(load_image(str(tmp_path / "scan.png")))
    assert loaded.shape == (2, 3, 3) and (loaded[..., 0] == loaded[..., 2]).all()
    assert loaded[..., 0].tolist() == np.rint(values / 257).astype(np.uint8).tolist()


def test_a_jpeg_s_exif_orientation_is_not_applied_as_docs_registries_says(tmp_path):
    """docs/registries.md says images are read as their pixels are stored (torchvision's ImageFolder does the same,
    and runs trained before keep their data): a JPEG a camera stored sideways, with EXIF orientation 6 (turn 90°
    clockwise to view), loads in its stored 2 × 3 shape, not the 3 × 2 a viewer shows."""
    from phd_lab.datasets.folders import load_image
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    Image.new("RGB", (3, 2), (200, 10, 10)).save(tmp_path / "sideways.jpg", exif=exif)
    assert Image.open(tmp_path / "sideways.jpg").getexif()[0x0112] == 6
    assert np.asarray(load_image(str(tmp_path / "sideways.jpg"))).shape == (2, 3, 3)
    assert "EXIF orientation tag is not applied" in (ROOT / "docs" / "registries.md").read_text()


def test_floating_point_images_are_refused_not_loaded_black(tmp_path):
    """PIL's RGB conversion clips float pixels to 0..255: a TIFF scaled to 0..1 trained as an all-black image."""
    from phd_lab.datasets.folders import load_image
    from phd_lab.errors import RunFailure
    Image.fromarray(np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)).save(tmp_path / "scaled.tiff")
    assert Image.open(tmp_path / "scaled.tiff").mode == "F"
    with pytest.raises(RunFailure, match=r"scaled.tiff' holds 32-bit floating-point pixels \(PIL mode 'F'\)"):
        load_image(str(tmp_path / "scaled.tiff"))


def test_thirty_two_bit_integer_images_outside_sixteen_bits_are_refused_not_clipped(tmp_path):
    """A 32-bit integer TIFF (PIL mode 'I') was clipped to 0..65535 and scaled: values above turned white and
    negative ones black without a word. Within 16 bits it is scaled as a 16-bit image is; outside, the file is
    named when it is loaded."""
    from phd_lab.datasets.folders import load_image
    within = np.array([[0, 257, 32896], [65535, 1000, 60000]], dtype=np.int32)
    Image.fromarray(within).save(tmp_path / "within.tiff")
    assert Image.open(tmp_path / "within.tiff").mode == "I"
    assert np.asarray(load_image(str(tmp_path / "within.tiff")))[..., 1].tolist() == np.rint(within / 257).tolist()
    pets = _pets(tmp_path / "pets")
    outside = pets / "train" / "dogs" / "counts.tiff"
    Image.fromarray(np.array([[0, 70000], [-5, 300]], dtype=np.int32)).save(outside)
    for sample in (outside, pets / "train" / "dogs" / "0.png"):
        (pets / "test" / "dogs" / sample.name).write_bytes(sample.read_bytes())  # in the evaluation split too
    with pytest.raises(RunFailure) as error:
        load_image(str(outside))
    assert str(error.value).startswith(f"The image file {str(outside)!r} holds 32-bit integer pixels (PIL mode 'I') "
                                       f"from -5 to 70000, outside 0..65535"), str(error.value)
    bundle = DATASETS.get(f"folder:{pets}")(resolution=16, data_dir="unused", **COMMON)
    with pytest.raises(RunFailure, match=f"The image file {str(pets / 'test' / 'dogs' / 'counts.tiff')!r} holds"):
        for _ in bundle.test:
            pass


def test_an_image_too_large_for_pil_is_named_without_a_traceback(tmp_path, capsys):
    """PIL refuses an image of more than about 179 million pixels (its decompression-bomb guard): the run failed
    with "DecompressionBombError: Image size ... could be decompression bomb DOS attack", naming no file among
    thousands. A 14000×14000 black PNG is such an image (24 kB on disk)."""
    from tests.conftest import main_in_process, write_config
    pets = _pets(tmp_path / "pets")
    huge = pets / "train" / "dogs" / "huge.png"
    Image.new("1", (14000, 14000)).save(huge)
    config = write_config(tmp_path, dataset=f"folder:{pets}", resolution=8, batch_size=8)
    code, err = main_in_process(capsys, "--config", str(config), "--no-progress", "-q")
    said = " ".join(err.split())
    assert code == 1 and "Traceback" not in said, said
    assert (f"RunFailure: The image file {str(huge)!r} is too large to read (Image size (196000000 pixels) exceeds "
            f"limit of 178956970 pixels" in said and "Downscale it" in said), said


def test_a_symbolic_link_loop_in_a_class_folder_is_a_data_error(tmp_path):
    pets = _pets(tmp_path / "pets")
    (pets / "train" / "cats" / "again").symlink_to(pets / "train" / "cats", target_is_directory=True)
    with pytest.raises(DataError, match="symbolic link .* a folder that contains it"):
        DATASETS.get(f"folder:{pets}")(resolution=16, data_dir="unused", **COMMON)


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_class_folder_linked_to_a_folder_that_is_gone_is_a_data_error(tmp_path, capsys, split):
    """A class folder that is a link to a folder not there (a drive not mounted) is neither a folder nor an image
    file: its class was left out of the split without a word (of the training split too)."""
    from tests.conftest import main_in_process, write_config
    pets = _pets(tmp_path / "pets", classes=("birds", "cats", "dogs"))
    shutil.rmtree(pets / split / "birds")
    (pets / split / "birds").symlink_to(tmp_path / "unmounted" / "birds", target_is_directory=True)
    (pets / split / ".hidden").symlink_to(tmp_path / "gone")  # hidden: no class, no complaint
    expected = (f"The image folder {str(pets / split)!r} holds 1 symbolic link(s) that lead to nothing ('birds' -> "
                f"{str(tmp_path / 'unmounted' / 'birds')!r})")
    for said in _refusals_up_front_and_when_opened(pets):
        assert said.startswith(expected), said
    code, err = main_in_process(capsys, "--config", str(write_config(tmp_path, dataset=f"folder:{pets}")),
                                "--no-progress", "-q")
    assert code == 2 and "Traceback" not in err and expected in " ".join(err.split()), err


def test_a_class_folder_linked_to_another_class_is_a_data_error(tmp_path):
    """The same images under two labels were accepted silently."""
    pets = _pets(tmp_path / "pets")
    (pets / "train" / "wolves").symlink_to(pets / "train" / "dogs", target_is_directory=True)
    with pytest.raises(DataError, match="class folders 'dogs' and 'wolves' of .*train' are one folder"):
        DATASETS.get(f"folder:{pets}")(resolution=16, data_dir="unused", **COMMON)
    elsewhere = tmp_path / "wolves"  # a class folder linked to images outside the tree is a class of its own
    shutil.move(str(pets / "train" / "dogs"), elsewhere)
    (pets / "train" / "wolves").unlink()
    (pets / "train" / "wolves").symlink_to(elsewhere, target_is_directory=True)
    shutil.rmtree(pets / "test" / "dogs")
    bundle = DATASETS.get(f"folder:{pets}")(resolution=16, data_dir="unused", **COMMON)
    assert bundle.num_classes == 2


def test_a_single_training_sample_is_a_data_error_not_an_epoch_of_no_batches(tmp_path):
    pets = _pets(tmp_path / "pets", train=1)
    shutil.rmtree(pets / "train" / "dogs")
    (pets / "test" / "dogs").rename(pets / "test" / "cats2")
    with pytest.raises(DataError, match="class folder|training sample"):
        DATASETS.get(f"folder:{pets}")(resolution=16, data_dir="unused", **COMMON)
    from phd_lab.data import make_bundle
    one = torch.utils.data.TensorDataset(torch.zeros(1, 3, 4, 4), torch.zeros(1, dtype=torch.int64))
    with pytest.raises(DataError, match="1 training sample"):
        make_bundle("one", one, one, one, num_classes=2, in_channels=3, resolution=4, batch_size=32, seed=0,
                    num_workers=0)


def test_a_broken_image_read_by_a_loader_worker_is_one_line_on_the_console(tmp_path, capsys):
    """With num_workers > 0 the worker's whole traceback (≈ 60 lines) was printed twice on the console."""
    from phd_lab.cli import main_cli
    from tests.conftest import run_folders, write_config
    pets = _pets(tmp_path / "pets")
    (pets / "test" / "cats" / "zz.png").write_bytes(b"not an image")
    config = write_config(tmp_path, dataset=f"folder:{pets}", epoch=1, num_workers=2, track_saturation=False)
    capsys.readouterr()
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 1
    err = capsys.readouterr().err
    assert "Original Traceback" not in err and "cannot identify image file" in err and "zz.png" in err
    [folder] = run_folders(tmp_path / "logs")
    assert "Original Traceback" in next(folder.glob("*.log")).read_text()  # the log keeps all of it


def test_a_dry_run_names_a_bad_dataset_value_also_before_the_data_is_there(tmp_path, capsys):
    from phd_lab.cli import main_cli
    from tests.conftest import write_config
    config = write_config(tmp_path, dataset="Cifar10", dataset_args={"normalization": "bogus"})
    assert main_cli(["--config", str(config), "--dry-run"]) == 2
    assert "'normalization' of dataset 'Cifar10' must be one of" in " ".join(capsys.readouterr().err.split())


def test_a_symbolic_link_to_a_folder_further_up_is_a_loop_too(tmp_path):
    pets = _pets(tmp_path / "pets")
    (pets / "train" / "cats" / "up").symlink_to(pets / "train", target_is_directory=True)
    with pytest.raises(DataError, match="symbolic link .*/cats/up' to .*/train', a folder that contains it"):
        DATASETS.get(f"folder:{pets}")(resolution=16, data_dir="unused", **COMMON)


def test_tiny_imagenet_training_images_are_read_in_name_order_without_hidden_files(tmp_path):
    from phd_lab.datasets.folders import TinyImageNet
    root = tmp_path / "tiny-imagenet-200"
    for c, wnid in enumerate(["n02", "n01"]):
        for i in (5, 3, 9, 1, 7):
            write_image(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", (8, 8), c * 10 + i)
        (root / "train" / wnid / "images" / f"._{wnid}_0.JPEG").write_bytes(b"\x00\x05\x16\x07 resource fork")
    tiny = TinyImageNet(root, "train")
    assert tiny.classes == ["n01", "n02"]
    assert [(Path(path).name, label) for path, label in tiny.samples] == [
        (f"{wnid}_{i}.JPEG", c) for c, wnid in enumerate(["n01", "n02"]) for i in (1, 3, 5, 7, 9)]


def test_a_dataset_folder_already_in_place_is_used_as_it_is(tmp_path):
    """Nothing is fetched or written beside it (no lock file: a data folder may be shared and read-only)."""
    from phd_lab.datasets.download import download_and_extract
    (tmp_path / "woof" / "train").mkdir(parents=True)
    assert download_and_extract("http://127.0.0.1:9/woof.tgz", tmp_path, "woof") == tmp_path / "woof"
    assert [p.name for p in tmp_path.iterdir()] == ["woof"]


def test_files_left_by_a_killed_extraction_do_not_reach_the_dataset_folder(tmp_path):
    from phd_lab.datasets.download import download_and_extract
    served = _archive(tmp_path, "woof", "gztar")
    root = tmp_path / "data"
    stale = root / ".woof.extracting" / "woof" / "train" / "a" / "stale.png"  # of an older copy of the archive
    stale.parent.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(stale)
    with _http_server(served.parent) as address:
        target = download_and_extract(f"{address}/{served.name}", root, "woof")
    assert sorted(p.name for p in (target / "train" / "a").iterdir()) == ["0.png"]


def test_an_archive_member_outside_its_folder_is_refused_and_not_written(tmp_path):
    import tarfile
    source = tmp_path / "source"
    (source / "woof" / "train" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(source / "woof" / "train" / "a" / "0.png")
    (source / "evil.txt").write_text("outside")
    root = tmp_path / "data"
    root.mkdir()
    with tarfile.open(root / "woof.tgz", "w:gz") as archive:  # placed by hand: nothing is downloaded
        archive.add(source / "woof", arcname="woof")
        archive.add(source / "evil.txt", arcname="../evil.txt")
    from phd_lab.datasets.download import download_and_extract
    with pytest.raises(DataError, match="is damaged"):
        download_and_extract("http://127.0.0.1:9/woof.tgz", root, "woof")
    assert not (root / "evil.txt").exists() and not (root / "woof").exists()


def test_an_unlock_refused_after_a_complete_extraction_does_not_fail_it(tmp_path):
    """The download lock's unlock refused (ENOLCK: an NFS data_dir whose lock service went away; a seccomp filter
    refuses flock(LOCK_UN) alone here) raised "OSError: [Errno 37] No locks available" out of a download and
    extraction that had completed, which the data set's opener said as a failed download. Now it is a warning
    naming the lock file, and the extracted folder is returned."""
    root = tmp_path / "data"
    (tmp_path / "woof" / "train").mkdir(parents=True)
    root.mkdir()
    with tarfile.open(root / "woof.tgz", "w:gz") as archive:  # placed by hand: nothing is downloaded
        archive.add(tmp_path / "woof", arcname="woof")
    script = ("import sys; from pathlib import Path; from phd_lab.datasets.download import download_and_extract\n"
              "print(download_and_extract('http://127.0.0.1:9/woof.tgz', Path(sys.argv[1]), 'woof'))\n")
    done = subprocess.run([sys.executable, "-c", script, str(root)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
                          preexec_fn=refused_flock(errno.ENOLCK, fcntl.LOCK_UN))
    if done.returncode == 99:
        pytest.skip("this machine does not let a process install a seccomp filter")
    assert done.returncode == 0 and done.stdout.strip() == str(root / "woof"), done.stderr[-2000:]
    assert f"The lock file {root / '.woof.download.lock'} could not be unlocked (No locks available)" in done.stderr
    assert (root / "woof" / "train").is_dir()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a symbolic link another owner")
def test_an_archive_that_is_another_user_s_symbolic_link_is_refused_and_not_read(tmp_path):
    """A shared data_dir where another user had planted 'woof.tar.gz' as a symbolic link to a file only this user
    may read: the archive it names was unpacked into data_dir, where the link's owner could read it. Such a link is
    refused now, naming it and what to do; a link of this user's own (an archive placed by hand) is still used."""
    from phd_lab.datasets.download import download_and_extract
    private = _archive(tmp_path, "woof", "gztar")
    private.chmod(0o600)
    root = tmp_path / "data"
    root.mkdir()
    planted = root / "woof.tar.gz"
    planted.symlink_to(private)
    os.lchown(planted, 65534, 65534)  # nobody's link
    with pytest.raises(DataError) as error:
        download_and_extract("http://127.0.0.1:9/woof.tar.gz", root, "woof")
    assert str(error.value).startswith(f"The archive {str(planted)!r} is a symbolic link (to {str(private)!r}) of "
                                       f"another user (uid 65534): phd-lab would read what it names")
    assert sorted(p.name for p in root.iterdir()) == [".woof.download.lock", "woof.tar.gz"]
    os.lchown(planted, os.geteuid(), os.getegid())  # this user's own link: followed
    target = download_and_extract("http://127.0.0.1:9/woof.tar.gz", root, "woof")
    assert (target / "train" / "a" / "0.png").is_file() and planted.is_symlink()


def test_an_archive_without_the_expected_top_folder_is_named_and_leaves_nothing(tmp_path):
    from phd_lab.datasets.download import download_and_extract
    served = _archive(tmp_path, "imagewoof2-320", "gztar")  # the 320 px copy under the name of the full one
    root = tmp_path / "data"
    root.mkdir()
    shutil.copy(served, root / "woof.tar.gz")
    with pytest.raises(DataError, match="has no top folder 'woof'"):
        download_and_extract("http://127.0.0.1:9/woof.tar.gz", root, "woof")
    assert sorted(p.name for p in root.iterdir()) == [".woof.download.lock", "woof.tar.gz"]


def test_an_archive_broken_off_after_its_first_files_leaves_no_partial_extraction(tmp_path):
    import tarfile
    from phd_lab.datasets.download import download_and_extract
    source = tmp_path / "source" / "woof" / "train" / "a"
    source.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(source / "0.png")
    (source / "1.png").write_bytes(np.random.default_rng(0).bytes(200_000))  # incompressible
    root = tmp_path / "data"
    root.mkdir()
    with tarfile.open(root / "woof.tar", "w") as archive:
        archive.add(tmp_path / "source" / "woof", arcname="woof")
    data = (root / "woof.tar").read_bytes()
    (root / "woof.tar").write_bytes(data[:len(data) // 2])  # 0.png whole, 1.png cut
    with pytest.raises(DataError, match="is damaged"):
        download_and_extract("http://127.0.0.1:9/woof.tar", root, "woof")
    assert sorted(p.name for p in root.iterdir()) == [".woof.download.lock", "woof.tar"]


def _imagenet(root: Path, train: list[str], val: list[str], wnids: list[str]) -> Path:
    """An unpacked ImageNet: ``meta.bin`` as torchvision writes it from the devkit, one image per class folder."""
    folder = root / "imagenet"
    folder.mkdir(parents=True)
    torch.save(({wnid: (f"class {i}",) for i, wnid in enumerate(wnids)}, wnids), folder / "meta.bin")
    for split, present in (("train", train), ("val", val)):
        for c, wnid in enumerate(present):
            write_image(folder / split / wnid / f"{wnid}_0.JPEG", value=c)
    return folder


WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361"]


def test_a_stopped_imagenet_unpack_is_refused_naming_the_missing_classes(tmp_path):
    """torchvision unpacks the train tar in place, one class archive at a time, and took the train/ a stopped
    unpack left for whole: the model got 3 classes, val (numbered by its own folders) labels up to 3, and the
    run an IndexError after its first epoch."""
    folder = _imagenet(tmp_path, WNIDS[:2] + WNIDS[3:], WNIDS, WNIDS)
    (folder / "train" / f"{WNIDS[2]}.tar").write_bytes(b"\0" * 1024)  # a class archive not unpacked yet
    with pytest.raises(DataError) as error:
        DATASETS.get("ImageNet")(resolution=16, data_dir=str(tmp_path), **COMMON)
    message = str(error.value)
    assert f"The ImageNet folder {str(folder / 'train')!r} is incomplete" in message, message
    assert f"lacks the class folders of 1 of the devkit's 4 classes ({WNIDS[2]})" in message
    assert f"1 class archive(s) not unpacked yet ({WNIDS[2]}.tar)" in message and "Delete" in message
    write_image(folder / "train" / WNIDS[2] / "0.JPEG")  # the archive's folder, but the archive is still there
    with pytest.raises(DataError, match="class archive"):
        DATASETS.get("ImageNet")(resolution=16, data_dir=str(tmp_path), **COMMON)
    (folder / "train" / f"{WNIDS[2]}.tar").unlink()
    shutil.rmtree(folder / "val" / WNIDS[1])  # val/ is checked against the devkit's classes too
    write_image(folder / "val" / "ILSVRC2012_val_00000001.JPEG")  # val images are sorted into class folders
    with pytest.raises(DataError) as error:
        DATASETS.get("ImageNet")(resolution=16, data_dir=str(tmp_path), **COMMON)
    assert (f"{str(folder / 'val')!r} is incomplete: it lacks the class folders of 1 of the devkit's 4 classes "
            f"({WNIDS[1]}); it holds 1 image file(s) not in class folders") in str(error.value), str(error.value)
    (folder / "val" / "ILSVRC2012_val_00000001.JPEG").unlink()
    write_image(folder / "val" / WNIDS[1] / "0.JPEG")
    bundle = DATASETS.get("ImageNet")(resolution=16, data_dir=str(tmp_path), **COMMON)
    check_bundle(bundle, num_classes=4, channels=3, resolution=16, train_size=4, test_size=4)
    assert [label for _, label in bundle.test.dataset.base.samples] == [0, 1, 2, 3]


def test_imagenet_unpacked_elsewhere_without_the_devkit_names_it_and_the_folder_dataset(tmp_path):
    """train/<wnid>/ and val/<wnid>/ as clusters keep ImageNet, without the devkit: the message told to place the
    three archives (about 150 GB), though only the class list was missing, and said nothing of ``folder:``."""
    folder = _imagenet(tmp_path, WNIDS, WNIDS, WNIDS)
    (folder / "meta.bin").unlink()
    with pytest.raises(DataError) as error:
        DATASETS.get("ImageNet")(resolution=16, data_dir=str(tmp_path), **COMMON)
    message = str(error.value)
    assert ("holds train/ but neither meta.bin nor ILSVRC2012_devkit_t12.tar.gz" in message
            and f'use "dataset": "folder:{folder}"' in message and "ILSVRC2012_img_train.tar" not in message), message
    bundle = DATASETS.get(f"folder:{folder}")(resolution=16, data_dir=str(tmp_path), **COMMON)
    assert bundle.test.dataset.base.class_to_idx == {wnid: i for i, wnid in enumerate(WNIDS)}


def test_imagenet_val_is_numbered_by_the_training_classes_and_hidden_folders_are_no_classes(tmp_path):
    """A hidden folder (.ipynb_checkpoints) in train/ ended in a bare KeyError, and so did a class folder the
    devkit does not list."""
    folder = _imagenet(tmp_path, WNIDS, WNIDS, WNIDS)
    write_image(folder / "train" / ".ipynb_checkpoints" / "0-checkpoint.JPEG")
    bundle = DATASETS.get("ImageNet")(resolution=16, data_dir=str(tmp_path), **COMMON)
    check_bundle(bundle, num_classes=4, channels=3, resolution=16, train_size=4, test_size=4)
    assert bundle.test.dataset.base.class_to_idx == {wnid: i for i, wnid in enumerate(WNIDS)}
    write_image(folder / "train" / "n99999999" / "0.JPEG")
    with pytest.raises(DataError, match=r"train' has class folder\(s\) \['n99999999'\] that the devkit .*meta.bin'"
                                        r"\) does not list"):
        DATASETS.get("ImageNet")(resolution=16, data_dir=str(tmp_path), **COMMON)


@pytest.mark.parametrize("name", ["MNIST", "FashionMNIST"])
def test_a_truncated_mnist_file_is_a_data_error_naming_its_folder(tmp_path, capsys, name):
    """A raw file cut short (a stopped download or gunzip) failed in torchvision's parser with a RuntimeError
    that named neither file nor dataset: exit 1 and a traceback."""
    from tests.conftest import main_in_process, write_config
    raw = tmp_path / "data" / name / "raw"
    write_idx(raw, "train", 12)
    write_idx(raw, "t10k", 6)
    images = raw / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:500])
    with pytest.raises(DataError) as error:
        DATASETS.get(name)(resolution=28, data_dir=str(tmp_path / "data"), **COMMON)
    message = str(error.value)
    assert (f"Dataset {name}: the file train-images-idx3-ubyte or train-labels-idx1-ubyte in {str(raw)!r} is "
            f"truncated or damaged") in message and f"Delete the folder {str(raw)!r}" in message, message
    config = write_config(tmp_path, dataset=name, resolution=28, epoch=1, track_saturation=False)
    code, err = main_in_process(capsys, "--config", str(config), "--no-progress", "-q")
    assert code == 2 and "Traceback" not in err and "is truncated or damaged" in " ".join(err.split()), err


@pytest.mark.parametrize("names, held", [
    (["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"],
     "it holds train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, not unpacked: "
     "unpack them there (gunzip -k"),
    (["train-images.idx3-ubyte", "train-labels.idx1-ubyte"],  # Kaggle's names
     "it holds train-images.idx3-ubyte, train-labels.idx1-ubyte. Place the MNIST files of these names there"),
])
def test_a_raw_folder_without_the_idx_files_says_what_it_holds_instead(tmp_path, names, held):
    """torchvision said 'Dataset not found' of a raw/ folder holding the files still gzipped (as the mirrors serve
    them) or under another copy's names, and the message listed the four files without saying what was there."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in names:
        (raw / name).write_bytes(b"\x1f\x8b")
    with pytest.raises(DataError) as error:
        DATASETS.get("MNIST")(resolution=28, data_dir=str(tmp_path), **COMMON)
    message = str(error.value)
    assert (f"Dataset MNIST: the folder {str(raw)!r} lacks train-images-idx3-ubyte, train-labels-idx1-ubyte, "
            f"t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; {held}") in message, message


@pytest.mark.parametrize("labels, found", [
    (np.arange(6, dtype=np.uint8) % 10, "holds 6 labels for 12 images"),  # t10k's labels under the train name
    (np.arange(12, dtype=np.uint8), "holds labels up to 11"),  # another data set's (EMNIST: 47 classes)
])
def test_a_labels_file_that_does_not_label_its_images_is_a_data_error(tmp_path, labels, found):
    """Each idx file was whole by itself, so torchvision took a labels file of another split or data set as it
    came: fewer labels than images failed the run mid-epoch with a bare IndexError, labels from 10 up trained on
    classes the model has no output for."""
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw, "train", 12)
    write_idx(raw, "t10k", 6)
    (raw / "train-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, len(labels)) + labels.tobytes())
    with pytest.raises(DataError) as error:
        DATASETS.get("MNIST")(resolution=28, data_dir=str(tmp_path), **COMMON)
    assert (f"the file train-labels-idx1-ubyte in {str(raw)!r} does not label the images of "
            f"train-images-idx3-ubyte: it {found}, where MNIST has one label from 0 to 9 per image") in str(error.value)


def test_tiny_imagenet_refuses_a_class_folder_without_training_images(tmp_path):
    """A copy stopped part-way left class folders without images, which were taken as classes no image
    teaches (the folder: datasets refuse them)."""
    root = tmp_path / "tiny-imagenet-200"
    for c, wnid in enumerate(WNIDS):
        (root / "train" / wnid / "images").mkdir(parents=True)
        if c < 2:
            write_image(root / "train" / wnid / "images" / f"{wnid}_0.JPEG", (64, 64), c)
        write_image(root / "val" / "images" / f"val_{c}.JPEG", (64, 64), 10 + c)
    (root / "val" / "val_annotations.txt").write_text("".join(f"val_{c}.JPEG\t{w}\t0\t0\t9\t9\n"
                                                              for c, w in enumerate(WNIDS)))
    with pytest.raises(DataError, match=rf"has class folder\(s\) \['{WNIDS[2]}', '{WNIDS[3]}'\] without images"):
        DATASETS.get("TinyImageNet")(resolution=32, data_dir=str(tmp_path), **COMMON)


def _served_archive(tmp_path: Path, folder: str, files: dict[str, bytes | None], name: str) -> Path:
    """A real archive ``name`` of ``folder`` holding ``files`` (None: a small image), placed in tmp_path/data
    as a user would place a downloaded one: nothing serves it, so a run that fetched anything would fail."""
    source = tmp_path / "source"
    for relative, content in files.items():
        path = source / folder / relative
        if content is None:
            write_image(path, (12, 12), len(relative))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
    made = Path(shutil.make_archive(str(tmp_path / "archive"), "gztar", root_dir=source, base_dir=folder))
    (tmp_path / "data").mkdir(exist_ok=True)
    return made.rename(tmp_path / "data" / name)


def test_imagenette_is_extracted_whole_or_not_at_all(tmp_path):
    """torchvision extracted imagenette2.tgz in place and, with download on, took any imagenette2/train for a
    whole download: an extraction stopped in val/ trained and evaluated on the part that was there."""
    files = {f"{split}/{wnid}/{i}.JPEG": None for split in ("train", "val") for wnid in WNIDS[:2] for i in range(2)}
    archive = _served_archive(tmp_path, "imagenette2", files, "imagenette2.tgz")
    data = tmp_path / "data"
    archive.write_bytes(archive.read_bytes()[:200])  # an archive cut short fills no imagenette2/
    with pytest.raises(DataError, match="imagenette2.tgz' is damaged"):
        DATASETS.get("Imagenette")(resolution=16, data_dir=str(data), download=True, **COMMON)
    assert not (data / "imagenette2").exists() and not (data / ".imagenette2.extracting").exists()
    archive = _served_archive(tmp_path, "imagenette2", files, "imagenette2.tgz")
    bundle = DATASETS.get("Imagenette")(resolution=16, data_dir=str(data), download=True, **COMMON)
    check_bundle(bundle, num_classes=2, channels=3, resolution=16, train_size=4, test_size=4)
    shutil.rmtree(data / "imagenette2" / "val" / WNIDS[1])  # as torchvision's stopped extraction left it
    with pytest.raises(DataError) as error:
        DATASETS.get("Imagenette")(resolution=16, data_dir=str(data), download=True, **COMMON)
    message = " ".join(str(error.value).split())
    assert (f"The dataset folder {str(data / 'imagenette2')!r} is incomplete: its train/ has 2 class folders and "
            f"its val/ 1, which differ in ['{WNIDS[1]}']") in message and "Delete" in message, message


def test_food101_is_extracted_whole_and_a_partial_folder_is_refused(tmp_path):
    """torchvision extracted food-101.tar.gz in place and took any folder with meta/ and images/ for whole: a
    stopped extraction trained until the first missing image, then failed with a FileNotFoundError traceback."""
    meta = {"train": {"apple_pie": ["apple_pie/0", "apple_pie/1"], "ramen": ["ramen/0", "ramen/1"]},
            "test": {"apple_pie": ["apple_pie/2"], "ramen": ["ramen/2"]}}
    files: dict[str, bytes | None] = {f"meta/{split}.json": json.dumps(content).encode()
                                      for split, content in meta.items()}
    files.update({f"images/{dish}/{i}.jpg": None for dish in ("apple_pie", "ramen") for i in range(3)})
    _served_archive(tmp_path, "food-101", files, "food-101.tar.gz")
    data = tmp_path / "data"
    bundle = DATASETS.get("Food101")(resolution=16, data_dir=str(data), download=True, **COMMON)
    check_bundle(bundle, num_classes=2, channels=3, resolution=16, train_size=4, test_size=2)
    assert not (data / ".food-101.extracting").exists()
    (data / "food-101" / "images" / "ramen" / "1.jpg").unlink()  # as a stopped extraction leaves the folder
    for download in (True, False):
        with pytest.raises(DataError) as error:
            DATASETS.get("Food101")(resolution=16, data_dir=str(data), download=download, **COMMON)
        message = " ".join(str(error.value).split())
        assert (f"The Food101 folder {str(data / 'food-101')!r} is incomplete: 1 of the 4 images meta/train.json "
                f"lists are missing") in message and "ramen/1.jpg" in message, message


def test_class_labels_do_not_depend_on_the_unicode_normalisation_of_folder_names(tmp_path):
    """macOS writes names decomposed (NFD), Linux keeps what it is given: sorting the raw names gave 'éclair'
    label 1 on one machine and 0 on another, and an evaluation folder copied from the other machine was
    refused, showing two names that look the same."""
    import unicodedata
    labels = []
    for form in ("NFC", "NFD"):
        for split in ("train", "test"):
            for c, name in enumerate(("éclair", "falafel")):
                write_image(tmp_path / form / split / unicodedata.normalize(form, name) / "0.png", value=c)
        bundle = DATASETS.get(f"folder:{tmp_path / form}")(resolution=16, data_dir="unused", **COMMON)
        labels.append({unicodedata.normalize("NFC", name): label
                       for name, label in bundle.train.dataset.base.class_to_idx.items()})
    assert labels[0] == labels[1] == {"falafel": 0, "éclair": 1}
    mixed = tmp_path / "NFC" / "test"  # an evaluation folder spelled as the other machine spells it
    shutil.rmtree(mixed)
    shutil.copytree(tmp_path / "NFD" / "test", mixed)
    DATASETS.get(f"folder:{tmp_path / 'NFC'}").check_data("unused", resolution=16)
    bundle = DATASETS.get(f"folder:{tmp_path / 'NFC'}")(resolution=16, data_dir="unused", **COMMON)
    assert sorted(label for _, label in bundle.test.dataset.base.samples) == [0, 1]  # no image dropped
    both = tmp_path / "NFC" / "train" / unicodedata.normalize("NFD", "éclair")  # both spellings in one split
    shutil.copytree(tmp_path / "NFC" / "train" / "éclair", both)
    with pytest.raises(DataError, match=r"class folders 'e\\u0301clair' and '\\xe9clair' of .* differ only in their "
                                        r"Unicode normalisation"):
        DATASETS.get(f"folder:{tmp_path / 'NFC'}")(resolution=16, data_dir="unused", **COMMON)
    shutil.rmtree(both)
    (mixed / unicodedata.normalize("NFD", "éclair")).rename(mixed / "\ufb01sh")  # the ligature 'ﬁ' of 'fish'
    (tmp_path / "NFC" / "train" / "falafel").rename(tmp_path / "NFC" / "train" / "fish")
    with pytest.raises(DataError, match=r"'\\ufb01sh' differs from the training class 'fish' only in its Unicode "
                                        r"normalisation"):
        DATASETS.get(f"folder:{tmp_path / 'NFC'}").check_data("unused", resolution=16)


def test_the_order_of_samples_does_not_depend_on_the_unicode_normalisation_of_names(tmp_path):
    """Labels were compared in NFC, but ImageFolder sorted the names as stored: a copy from macOS (NFD names)
    served the same images in another order ('éclair' before 'fig', 'é1.png' before 'f2.png'), so the same seed
    drew other batches and the run differed from the one on Linux. NFC names keep ImageFolder's own order."""
    import unicodedata

    from torchvision.datasets import ImageFolder

    from phd_lab.datasets.folders import FixedClassImageFolder
    orders = []
    for form in ("NFC", "NFD"):
        for c, name in enumerate(("éclair", "fig")):
            for file in ("é1.png", "f2.png", "sub/a.png"):
                write_image(tmp_path / form / unicodedata.normalize(form, name) / unicodedata.normalize(form, file),
                            (4, 4), c)
        samples = FixedClassImageFolder(tmp_path / form).samples
        orders.append([(unicodedata.normalize("NFC", os.path.relpath(path, tmp_path / form)), label)
                       for path, label in samples])
    assert orders[0] == orders[1] == [("fig/f2.png", 0), ("fig/é1.png", 0), ("fig/sub/a.png", 0),
                                      ("éclair/f2.png", 1), ("éclair/é1.png", 1), ("éclair/sub/a.png", 1)]
    assert FixedClassImageFolder(tmp_path / "NFC").samples == ImageFolder(str(tmp_path / "NFC")).samples


def test_samples_named_in_nfc_are_not_sorted_again_below_a_non_ascii_folder():
    """The samples were sorted by their names' NFC forms whenever any path was non-ASCII, also where only the data
    folder's own name was (/home/josé/data) and every name below it NFC: each run then sorted ImageNet's 1.3M paths
    again (seconds per split) into the order ImageFolder gave. Names in NFC keep that order as it is."""
    import unicodedata

    from phd_lab.datasets.folders import in_nfc_order
    top = os.path.join("/data", "josé")  # NFC itself; the names below it differ in form only in the last case
    samples = [(os.path.join(top, cls, name), label) for label, cls in enumerate(("fig", "éclair"))
               for name in ("a.png", "é.png")]
    assert in_nfc_order(top, samples) is samples  # ASCII and NFC names below a non-ASCII folder: as they are
    stored = [(unicodedata.normalize("NFD", path), label) for path, label in samples]  # a copy from macOS
    assert [(unicodedata.normalize("NFC", path), label) for path, label in in_nfc_order(
        unicodedata.normalize("NFD", top), stored)] == samples


def test_the_registries_import_no_scikit_learn_and_neither_do_the_digits():
    """The registry imported scikit-learn for Digits at module level, so every command (a dry run, --list, each
    array task of a grid on another data set) paid its import, 2 s of CPU and 78 MB, for data it never loaded;
    then the digits imported it as they loaded, 1.2 s of every command that trains on them. They are now read from
    the file it ships them in, and the split is kept in phd-lab (equal to scikit-learn's: the test above)."""
    script = ("import sys\n"
              "from phd_lab.registry import Registries\n"
              "print('imported', callable(Registries({}).datasets.get('Digits')), 'sklearn' in sys.modules)\n"
              "from phd_lab.datasets.digits import digits_tensors\n"
              "train, test = digits_tensors(8)\n"
              "print('loaded', 'sklearn' in sys.modules, len(train), len(test))\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["imported True False", "loaded False 1437 360"]


def test_the_digits_read_from_scikit_learn_s_file_are_those_of_its_load_digits():
    """The images and labels read without scikit-learn are those its ``load_digits`` gives, which is also what is
    read where the file has moved."""
    from phd_lab.datasets.digits import IMAGES, digits_arrays, scikit_learn_digits
    images, labels = digits_arrays()
    expected_images, expected_labels = scikit_learn_digits()
    assert images.shape == (IMAGES, 8, 8) and np.array_equal(images, expected_images)
    assert labels.dtype == expected_labels.dtype and np.array_equal(labels, expected_labels)


@pytest.mark.parametrize("split", ["train", "test"])
def test_an_image_file_linked_to_nothing_is_a_data_error_before_training(tmp_path, capsys, split):
    """A class folder's image file that is a link to a file not there was a sample: the run failed only when an
    epoch reached it (exit 1, mid-training)."""
    from tests.conftest import main_in_process, write_config
    pets = _pets(tmp_path / "pets")
    (pets / split / "cats" / "gone.png").symlink_to(tmp_path / "moved" / "gone.png")
    expected = (f"The image folder {str(pets / split)!r} holds 1 image file(s) that are symbolic links leading to "
                f"nothing ('cats/gone.png' -> {str(tmp_path / 'moved' / 'gone.png')!r})")
    with pytest.raises(DataError) as error:
        DATASETS.get(f"folder:{pets}")(resolution=16, data_dir="unused", **COMMON)
    assert " ".join(str(error.value).split()).startswith(expected), str(error.value)
    code, err = main_in_process(capsys, "--config", str(write_config(tmp_path, dataset=f"folder:{pets}")),
                                "--no-progress", "-q")
    assert code == 2 and "Traceback" not in err and expected in " ".join(err.split()), err


def test_a_macos_resource_fork_folder_from_unzipping_is_no_class(tmp_path, caplog):
    """Unzipping an archive made on macOS leaves ``__MACOSX/`` (``._name.png`` resource forks): it became a class,
    refused as a training class without images, or in the test split as a class the training split lacks."""
    pets = _pets(tmp_path / "pets")
    for split in ("train", "test"):
        (pets / split / "__MACOSX" / "cats").mkdir(parents=True)
        (pets / split / "__MACOSX" / "cats" / "._0.png").write_bytes(b"\x00\x05\x16\x07 resource fork")
        (pets / split / "cats" / "__MACOSX").mkdir()  # inside a class folder: no samples either
        write_image(pets / split / "cats" / "__MACOSX" / "0.png", size=(12, 12))
    with caplog.at_level("INFO"):
        bundle = DATASETS.get(f"folder:{pets}")(resolution=16, data_dir="unused", **COMMON)
    check_bundle(bundle, num_classes=2, channels=3, resolution=16, train_size=6, test_size=2)
    assert f"The folder {str(pets / 'train')!r} holds a __MACOSX/ folder" in caplog.text


def test_an_image_linked_into_two_classes_or_both_splits_is_warned_about(tmp_path, caplog):
    """A file symlink to an image of another class made it a sample of both classes, and a test image that is a
    link to a training image (or a class folder of test/ linked to train/'s) was counted in the test accuracy,
    both without a word."""
    pets = _pets(tmp_path / "pets")
    with caplog.at_level("WARNING"):  # a folder without links: nothing to say
        DATASETS.get(f"folder:{pets}")(resolution=16, data_dir="unused", **COMMON)
    assert "symbolic links" not in caplog.text
    (pets / "train" / "cats" / "x.png").symlink_to(pets / "train" / "dogs" / "0.png")
    (pets / "test" / "cats" / "leak.png").symlink_to(pets / "train" / "cats" / "1.png")
    caplog.clear()
    with caplog.at_level("WARNING"):
        bundle = DATASETS.get(f"folder:{pets}")(resolution=16, data_dir="unused", **COMMON)
    said = " ".join(caplog.text.split())
    assert bundle.num_classes == 2 and len(bundle.test.dataset) == 3
    assert (f"The image folder {str(pets / 'train')!r} holds 1 image file(s) reached through links from two class "
            f"folders (such as 'cats/x.png' and 'dogs/0.png', one file)") in said, said
    assert (f"The evaluation folder {str(pets / 'test')!r} holds 1 of its 3 image(s) that are training images too "
            f"(such as 'cats/leak.png', which is {str(pets / 'train' / 'cats' / '1.png')!r})") in said, said
    os.link(pets / "train" / "cats" / "2.png", pets / "test" / "cats" / "hard.png")  # a hard link is one file too
    caplog.clear()
    with caplog.at_level("WARNING"):
        DATASETS.get(f"folder:{pets}")(resolution=16, data_dir="unused", **COMMON)
    assert f"The evaluation folder {str(pets / 'test')!r} holds 2 of its 4 image(s)" in caplog.text, caplog.text
    (pets / "test" / "cats" / "hard.png").unlink()
    (pets / "test" / "cats" / "leak.png").unlink()  # a whole test class folder that is a link to train/'s
    shutil.rmtree(pets / "test" / "dogs")
    (pets / "test" / "dogs").symlink_to(pets / "train" / "dogs", target_is_directory=True)
    caplog.clear()
    with caplog.at_level("WARNING"):
        DATASETS.get(f"folder:{pets}")(resolution=16, data_dir="unused", **COMMON)
    assert f"The evaluation folder {str(pets / 'test')!r} holds 3 of its 4 image(s)" in caplog.text, caplog.text


def _tiny_imagenet(root: Path, size: tuple[int, int] = (8, 8)) -> list[str]:
    """A Tiny ImageNet tree of three classes (three training images each) and two val images; its annotations."""
    for c, wnid in enumerate(["n01443537", "n01629819", "n01641577"]):
        for i in range(3):
            write_image(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", size, c * 10 + i)
    lines = []
    for i, wnid in enumerate(["n01629819", "n01443537"]):
        write_image(root / "val" / "images" / f"val_{i}.JPEG", size, 100 + i)
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t10\t10")
    return lines


@pytest.mark.parametrize("damage, message", [
    ("truncated", "Line 2 of {annotations!r} is 'val_1.JP', not"),
    ("image missing", "1 of the 2 images that {annotations!r} lists are not in {images!r} (such as 'val_1.JPEG')"),
    ("images folder missing", "2 of the 2 images that {annotations!r} lists are not in {images!r}"),
    ("not text", "The file {annotations!r} is not the text it should be"),
    ("empty", "The file {annotations!r} lists no image"),
    ("image linked to nothing", "holds 1 image file(s) that are symbolic links leading to nothing ('val_1.JPEG' ->"),
])
def test_a_damaged_tiny_imagenet_val_split_is_named_before_training(tmp_path, damage, message):
    """A val_annotations.txt cut short lost its last images silently, and an image it lists that is not there (or a
    link to nothing) failed the run mid-epoch."""
    root = tmp_path / "tiny-imagenet-200"
    lines = _tiny_imagenet(root)
    annotations, images = root / "val" / "val_annotations.txt", root / "val" / "images"
    text = "\n".join(lines) + "\n"
    if damage == "truncated":
        text = text[:text.index("EG\tn01443537")]
    elif damage == "image missing":
        (images / "val_1.JPEG").unlink()
    elif damage == "images folder missing":
        shutil.rmtree(images)
    elif damage == "not text":
        text = "\x89PNG\r\n\x1a\n\udcff"
    elif damage == "empty":
        text = "\n"
    elif damage == "image linked to nothing":
        (images / "val_1.JPEG").unlink()
        (images / "val_1.JPEG").symlink_to(tmp_path / "gone.JPEG")
    annotations.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(DataError) as error:
        DATASETS.get("TinyImageNet")(resolution=8, data_dir=str(tmp_path), **COMMON)
    expected = message.format(annotations=str(annotations), images=str(images))
    assert expected in " ".join(str(error.value).split()), str(error.value)


def test_a_byte_order_mark_in_tiny_imagenet_val_annotations_is_no_part_of_a_file_name(tmp_path):
    """An annotations file saved with a UTF-8 byte-order mark (a Windows editor) was refused: its first image
    was 'missing' under the name '\\ufeffval_0.JPEG'."""
    from phd_lab.datasets.folders import tiny_imagenet_val
    root = tmp_path / "tiny-imagenet-200"
    lines = _tiny_imagenet(root)
    (root / "val" / "val_annotations.txt").write_bytes(("\n".join(lines) + "\n").encode("utf-8-sig"))
    samples = tiny_imagenet_val(root, {"n01443537": 0, "n01629819": 1, "n01641577": 2})
    assert [(Path(path).name, label) for path, label in samples] == [("val_0.JPEG", 1), ("val_1.JPEG", 0)]


def test_a_tiny_imagenet_val_sorted_into_class_folders_keeps_its_labels(tmp_path):
    """Scripts that prepare Tiny ImageNet for an ImageFolder move val/images/<file> to val/<wnid>/images/<file>:
    such a copy was refused as 'incomplete or damaged' (its annotations list images not in val/images), or, with
    the annotations gone, as missing, though every image was there with its label."""
    from phd_lab.datasets.folders import TinyImageNet
    root = tmp_path / "tiny-imagenet-200"
    lines = _tiny_imagenet(root)
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    annotated = {Path(path).name: label for path, label in TinyImageNet(root, "val").samples}
    for line in lines:
        file, wnid = line.split("\t")[:2]
        (root / "val" / wnid / "images").mkdir(parents=True, exist_ok=True)
        (root / "val" / "images" / file).rename(root / "val" / wnid / "images" / file)
    # left empty by some of those scripts: it was taken for the annotated layout, whose images were all missing
    assert {Path(path).name: label for path, label in TinyImageNet(root, "val").samples} == annotated
    (root / "val" / "images").rmdir()
    assert {Path(path).name: label for path, label in TinyImageNet(root, "val").samples} == annotated
    (root / "val" / "val_annotations.txt").unlink()
    assert {Path(path).name: label for path, label in TinyImageNet(root, "val").samples} == annotated == {
        "val_0.JPEG": 1, "val_1.JPEG": 0}


def test_unlisted_tiny_imagenet_val_images_are_warned_about(tmp_path, caplog):
    """An image of val/images that val_annotations.txt does not list has no label: it was left out of the
    evaluation split without a word."""
    root = tmp_path / "tiny-imagenet-200"
    lines = _tiny_imagenet(root)
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    write_image(root / "val" / "images" / "extra_1.JPEG", (8, 8), 7)
    write_image(root / "val" / "images" / "extra_0.JPEG", (8, 8), 8)
    (root / "val" / "images" / "._val_0.JPEG").write_bytes(b"\0")  # a macOS resource fork: no image
    with caplog.at_level("WARNING"):
        bundle = DATASETS.get("TinyImageNet")(resolution=8, data_dir=str(tmp_path), **COMMON)
    said = " ".join(caplog.text.split())
    assert len(bundle.test.dataset) == 2
    assert (f"The folder {str(root / 'val' / 'images')!r} holds 2 image file(s) that "
            f"{str(root / 'val' / 'val_annotations.txt')!r} does not list (such as 'extra_0.JPEG')") in said, said
    assert said.count("does not list") == 1


def test_an_imagenet_val_image_that_is_a_training_image_is_warned_about(tmp_path, caplog):
    """Own image folders warn about evaluation images that are training images (links); ImageNet's val/, opened
    by another opener, did not."""
    folder = _imagenet(tmp_path, WNIDS, WNIDS, WNIDS)
    (folder / "val" / WNIDS[0] / "leak.JPEG").symlink_to(folder / "train" / WNIDS[0] / f"{WNIDS[0]}_0.JPEG")
    with caplog.at_level("WARNING"):
        DATASETS.get("ImageNet")(resolution=16, data_dir=str(tmp_path), **COMMON)
    said = " ".join(caplog.text.split())
    assert (f"The evaluation folder {str(folder / 'val')!r} holds 1 of its 5 image(s) that are training images "
            f"too (such as '{WNIDS[0]}/leak.JPEG'") in said, said
    assert said.count("training images too") == 1


def test_an_empty_test_split_is_a_data_error_before_any_run_folder(tmp_path, capsys):
    """A dataset factory whose test split came out empty (a filter that kept no class) trained the run anyway: its
    CSV said test_loss 0.0 beside NaN accuracies, a warning blamed 'never called' layers, and only the extraction
    failed, after training. It is refused (exit 2) before the run folder is made."""
    from phd_lab.cli import main_cli
    from tests.conftest import run_folders, write_config
    (tmp_path / "no_test.py").write_text(
        "import torch\nfrom phd_lab.data import make_bundle\n\n\n"
        "def NoTest(*, batch_size, resolution, data_dir, seed, num_workers):\n"
        "    train = torch.utils.data.TensorDataset(torch.zeros(8, 1, 4, 4), torch.arange(8) % 2)\n"
        "    test = torch.utils.data.TensorDataset(torch.zeros(0, 1, 4, 4), torch.zeros(0, dtype=torch.int64))\n"
        "    return make_bundle('NoTest', train, test, train, num_classes=2, in_channels=1, resolution=resolution,\n"
        "                       batch_size=batch_size, seed=seed, num_workers=num_workers)\n")
    config = write_config(tmp_path, dataset="NoTest", registries={"datasets": "no_test.py"}, resolution=4,
                          model="mlp", model_args={"input_side": 4, "units": [[4]]}, epoch=1)
    capsys.readouterr()
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "Dataset NoTest has no test sample" in err and "Traceback" not in err, err
    assert run_folders(tmp_path / "logs") == []


@pytest.mark.parametrize("raw_too", [False, True])
def test_mnist_read_from_torchvisions_old_cache_names_it(tmp_path, caplog, raw_too):
    """Where MNIST/processed/{training,test}.pt are there, torchvision reads them instead of raw/ without a word:
    a raw copy placed or replaced since was not what the run trained on."""
    import torchvision.datasets as tv

    from phd_lab.datasets.torchvision_sets import _mnist_like
    processed = tmp_path / "MNIST" / "processed"
    processed.mkdir(parents=True)
    for file, count in (("training.pt", 6), ("test.pt", 4)):
        torch.save((torch.zeros(count, 28, 28, dtype=torch.uint8), torch.arange(count) % 10), processed / file)
    if raw_too:
        write_idx(tmp_path / "MNIST" / "raw", "train", 20)
    with caplog.at_level(logging.INFO, logger="phd_lab"):
        dataset = _mnist_like(tv.MNIST)(tmp_path, "train", False)
    assert len(dataset) == 6  # torchvision's choice, kept
    [record] = [r for r in caplog.records if "training.pt" in r.getMessage()]
    assert record.levelno == (logging.WARNING if raw_too else logging.INFO)
    said = record.getMessage()
    assert f"Dataset MNIST: the train split is read from {str(processed / 'training.pt')!r}" in said, said
    assert (f"delete {str(processed)!r} to read those" in said) == raw_too, said
