"""Image datasets of the thesis loaded from ``data_dir``, with their preprocessing, as DataBundles.

Each ``Source`` says how to open a split (through torchvision where it has the dataset), what
its images are like (channels, native size, normalisation, flips unless ``dataset_args`` ``flip``
says otherwise) and which files a user must place where when they are missing.
``load_image_dataset`` opens the training split once and serves it twice — augmented (``train``)
and plain (``train_eval``) — plus the evaluation split. Missing data raises a DataError saying
which files belong where; nothing is downloaded unless ``download`` is true.
"""

from __future__ import annotations

import logging
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch.utils.data import Dataset
from torchvision import datasets as tv

from phd_lab.data import DataBundle, make_bundle
from phd_lab.datasets.download import download_and_extract, missing_folders, remove_empty_folders_since
from phd_lab.datasets.folders import (FixedClassImageFolder, TinyImageNet, class_folders, is_image_file,
                                      warn_evaluation_images_in_training)
from phd_lab.datasets.transforms import Preprocessing, RGB_NORMALISATIONS, make_preprocessing
from phd_lab.errors import ConfigError, DataError, FolderInTheWay, storage_refusal
from phd_lab.user_paths import os_refusal, shown_path

log = logging.getLogger(__name__)

Opener = Callable[[Path, str, bool], Dataset]  # (data_dir, "train" | "test", download) -> dataset


@dataclass(frozen=True)
class Source:
    """How to open one dataset and what its images are like."""

    name: str
    open: Opener
    expected: str                          # what to place in data_dir when the data is missing
    channels: int = 3
    native: int | None = None              # fixed native size; None for variable-size photos
    flip: bool = True                      # training flips unless dataset_args 'flip' says otherwise
    downloadable: bool = True
    in_data_dir: bool = True               # False: ``expected`` is a full path (folder: datasets)
    normalisations: dict[str, tuple] = field(default_factory=lambda: dict(RGB_NORMALISATIONS))
    variants: tuple[str, ...] = ()         # folders of other releases in data_dir, which the dataset does not read


class TransformedView(Dataset):
    """A dataset seen through a transform (one opened split serves train and train_eval)."""

    def __init__(self, base: Dataset, transform: Callable[[Any], Any]) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image, label = self.base[index]
        return self.transform(image), label


def count_classes(dataset: Dataset) -> int:
    for attribute in ("all_categories", "classes"):
        values = getattr(dataset, attribute, None)
        if values:
            return len(values)
    raise DataError(f"Cannot tell the number of classes of {type(dataset).__name__}.")


def _place(source: Source, root: Path, downloading: bool = False) -> str:
    """What to do about missing files: where to put which, or how to download them."""
    there = _variants_there(source, root)
    where = (f"{there}{'Otherwise place' if there else 'Place'} {source.expected}"
             + (f" under data_dir {str(root)!r}" if source.in_data_dir else ""))
    if downloading:  # download is on already: the network (or the mirror) is what failed
        return f"{where} yourself, or run once with \"download\": true on a machine with internet access."
    return where + (", or set \"dataset_args\": {\"download\": true} on a machine with internet access."
                    if source.downloadable else " (this dataset cannot be downloaded automatically).")


def _variants_there(source: Source, root: Path) -> str:
    """A sentence naming the folders of the dataset's other releases that are in ``root`` (fast.ai's downsized
    imagenette2-320/, say): a user who had one was told only to place the full-size folder."""
    there = [name for name in source.variants if (root / name).is_dir()]
    if not there:
        return ""
    shown = ", ".join(repr(str(root / name)) for name in there)
    return (f"{shown} {'is' if len(there) == 1 else 'are'} there: another release of the images (downsized), which "
            f"the dataset {source.name} does not read; train on it as it is with \"dataset\": "
            f"\"folder:{root / there[0]}\" (the same classes, in the same order). ")


def _check_download(source: Source, download: object) -> None:
    if not isinstance(download, bool):
        raise ConfigError(f"The dataset_args 'download' of dataset {source.name!r} must be true or false; "
                          f"got {download!r}.")
    if download and not source.downloadable:
        raise ConfigError(f"Dataset {source.name} cannot be downloaded automatically; remove 'download' from "
                          f"dataset_args and place {source.expected} under data_dir yourself.")


def _preprocessing(source: Source, resolution: int, *, augment: Any, normalization: Any, canvas: Any,
                   downsample_then_upsample: Any, crop: Any = None, flip: Any = None) -> Preprocessing:
    return make_preprocessing(source.name, resolution=resolution, normalisations=source.normalisations,
                              normalization=normalization, native=source.native, augment=augment, flip=flip,
                              canvas=canvas, downsample_then_upsample=downsample_then_upsample, crop=crop,
                              default_flip=source.flip)


def _check_present(source: Source, data_dir: str, download: bool) -> None:
    """A cheap check: the dataset's top folder (or file) is in data_dir. Whether its files are complete
    is found when the data are opened (``open_split``)."""
    if download or not source.in_data_dir:
        return
    root = Path(os.path.expanduser(data_dir))
    top = source.expected.split("/")[0].split(" ")[0]
    try:
        present = (root / top).exists()
    except OSError as error:  # e.g. a path longer than the system allows
        raise ConfigError(f"Dataset {source.name}: the key 'data_dir' is {shown_path(data_dir)!r}, where the data "
                          f"cannot be looked for: {os_refusal(root / top, error)} for 'data_dir'.") from None
    if not present:
        raise DataError(f"Dataset {source.name} (train split) is not in data_dir {str(root)!r}: there is no "
                        f"{top!r}. {_place(source, root)}")


def check_source(source: Source, data_dir: str, *, resolution: int | None = None, download: object = False,
                 augment: Any = True, normalization: Any = None, canvas: Any = False,
                 downsample_then_upsample: Any = None, crop: Any = None, flip: Any = None) -> None:
    """Every check of ``load_image_dataset`` that reads no image, for each grid point before any trains:
    the preprocessing values (at the point's resolution) and whether the data are there."""
    _check_download(source, download)
    if resolution is not None:  # before the presence check: a dry run reports bad values also without the data
        _preprocessing(source, resolution, augment=augment, normalization=normalization, canvas=canvas,
                       downsample_then_upsample=downsample_then_upsample, crop=crop, flip=flip)
    _check_present(source, data_dir, bool(download))


def _entries(root: Path) -> set[str] | None:
    """The names in ``root`` before a download (None: no such folder), to remove the empty folders a failed one
    makes. A folder one may enter but not list (a shared 0711 data folder) gives an empty set: nothing goes."""
    if not root.is_dir():
        return None
    try:
        return {entry.name for entry in root.iterdir()}
    except OSError:
        return set()


# torchvision's words for missing or damaged files (its RuntimeErrors name no file otherwise)
_MISSING_WORDS = ("not found", "corrupt", "not present", "does not exist")


def open_split(source: Source, data_dir: str, split: str, download: bool) -> Dataset:
    """Open one split; turn missing/corrupt files and failed downloads into a DataError."""
    root = Path(data_dir).expanduser()
    place = _place(source, root, downloading=bool(download))
    try:
        made, entries = (missing_folders(root), _entries(root)) if download else ([], None)
        try:
            return source.open(root, split, download)
        except BaseException:
            if download:  # torchvision makes its folders (MNIST/raw) before it finds there is no network
                remove_empty_folders_since(root, entries, made)
            raise
    except FolderInTheWay as error:  # at the download's lock: not the network's fault, and placing data won't help
        raise DataError(str(error)) from None
    except FileNotFoundError as error:
        raise DataError(f"Dataset {source.name} ({split} split) is missing: {error}. {place}") from None
    except RuntimeError as error:
        text = str(error).lower()
        if "error downloading" in text:  # torchvision's summary of every mirror it tried (MNIST, FashionMNIST)
            raise DataError(f"Dataset {source.name} could not be downloaded into {str(root)!r} (torchvision: "
                            f"{' '.join(str(error).split())}). {place}") from None
        if not any(word in text for word in _MISSING_WORDS):
            raise
        raise DataError(f"Dataset {source.name} ({split} split) is not in data_dir {str(root)!r} or is "
                        f"incomplete (torchvision: {error}). {place}") from None
    except OSError as error:  # URLError and socket errors of a failed download
        if download and storage_refusal(error) is not None:  # data_dir's file system refused, not the network
            raise _data_dir_unwritable(source, root, error) from None
        raise DataError(f"Dataset {source.name} could not be {'downloaded into' if download else 'read from'} "
                        f"{str(root)!r} ({type(error).__name__}: {error}). {place}") from None


def _data_dir_unwritable(source: Source, root: Path, error: OSError) -> DataError:
    """The error for a download into a ``data_dir`` whose file system refused a write (no permission, a read-only
    mount, a full disk): it was said as a failed download ("PermissionError: [Errno 13] ...download.lock"), with
    the advice to download on a machine with internet access, which this one may well have."""
    what = repr(error.filename) if error.filename else "a file there"
    return DataError(f"Dataset {source.name} could not be downloaded into data_dir {str(root)!r}: its file system "
                     f"refused {what} ({error.strerror or error}): {storage_refusal(error)}. Otherwise set 'data_dir' "
                     f"to a folder this user can write, or place {source.expected} under data_dir {str(root)!r} "
                     f"(downloaded elsewhere) and leave \"download\" off.")


def load_image_dataset(source: Source, *, batch_size: int, resolution: int, data_dir: str, seed: int,
                       num_workers: int, download: bool = False, augment: bool = True,
                       normalization: str | None = None, canvas: bool | int = False,
                       downsample_then_upsample: int | None = None, crop: str | None = None,
                       flip: bool | None = None) -> DataBundle:
    """The DataBundle of ``source`` with the thesis' preprocessing at ``resolution``."""
    _check_download(source, download)
    prep = _preprocessing(source, resolution, augment=augment, normalization=normalization, canvas=canvas,
                          downsample_then_upsample=downsample_then_upsample, crop=crop, flip=flip)
    train = open_split(source, data_dir, "train", download)
    test = open_split(source, data_dir, "test", download)
    if isinstance(train, FixedClassImageFolder) and isinstance(test, FixedClassImageFolder):  # own, fast.ai, ImageNet
        warn_evaluation_images_in_training(train, test)
    log.info("%s: %d training images from %s, %d test images from %s", source.name, len(train),
             getattr(train, "root", data_dir), len(test), getattr(test, "root", data_dir))  # each split's own folder
    return make_bundle(source.name, TransformedView(train, prep.train()), TransformedView(test, prep.eval()),
                       TransformedView(train, prep.eval()), num_classes=count_classes(train),
                       in_channels=source.channels, resolution=resolution, batch_size=batch_size, seed=seed,
                       num_workers=num_workers)


# ------------------------------------------------------------------------------ the openers

def _mnist_like(cls: type) -> Opener:
    """MNIST or FashionMNIST from ``<name>/raw``. A raw file cut short (a download or gunzip that was stopped)
    failed in torchvision's parser with a traceback naming neither file nor dataset; it is a DataError here."""
    def opener(root: Path, split: str, download: bool) -> Dataset:
        try:
            dataset = cls(root=str(root), train=split == "train", download=download)
        except (RuntimeError, ValueError, AssertionError) as error:  # the parser's ways of refusing a file
            raw, prefix = root / cls.__name__ / "raw", "train" if split == "train" else "t10k"
            if not download and "not found" in str(error).lower():
                _require_raw_files(cls.__name__, raw)
            if any(word in str(error).lower() for word in ("error downloading", *_MISSING_WORDS)):
                raise  # missing files, a failed download: open_split says what to place where
            said = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            raise DataError(f"Dataset {cls.__name__}: the file {prefix}-images-idx3-ubyte or "
                            f"{prefix}-labels-idx1-ubyte in {str(raw)!r} is truncated or damaged (torchvision: "
                            f"{said}), as a download or unpacking that was stopped leaves it. Delete the folder "
                            f"{str(raw)!r} and run again with \"download\": true (or place whole copies of "
                            f"{_MNIST_FILES} there).") from None
        _log_legacy_cache(cls.__name__, root / cls.__name__, split)
        _require_matching_labels(cls.__name__, root / cls.__name__ / "raw", split, dataset)
        return dataset
    return opener


def _log_legacy_cache(name: str, folder: Path, split: str) -> None:
    """torchvision reads ``processed/training.pt`` and ``test.pt`` (the cache its versions before 0.10 wrote)
    instead of ``raw/`` wherever both are there, and said nothing: a raw copy placed or replaced since was not
    what the run trained on. The file read is named, and a warning says so where ``raw/`` holds files too."""
    processed = folder / "processed"
    if not all((processed / file).is_file() for file in ("training.pt", "test.pt")):
        return
    read = processed / ("training.pt" if split == "train" else "test.pt")
    raw = folder / "raw"
    if raw.is_dir() and any(not entry.name.startswith(".") for entry in os.scandir(raw)):
        log.warning("Dataset %s: the %s split is read from %r (the cache of torchvision before 0.10), which "
                    "torchvision prefers to the files in %r; delete %r to read those.", name, split, str(read),
                    str(raw), str(processed))
    else:
        log.info("Dataset %s: the %s split is read from %r (the cache of torchvision before 0.10).", name, split,
                 str(read))


def _require_raw_files(name: str, raw: Path) -> None:
    """The four idx files in ``raw``, where it is there. torchvision said 'Dataset not found' of a folder that held
    the files still gzipped (as the mirrors serve them) or under other names (Kaggle's ``train-images.idx3-ubyte``),
    and the message named the four files to place without saying what was there instead."""
    if not raw.is_dir():
        return
    missing = [file for file in _MNIST_NAMES if not (raw / file).is_file()]
    held = sorted(entry.name for entry in os.scandir(raw) if not entry.name.startswith("."))
    packed = [f"{file}.gz" for file in missing if f"{file}.gz" in held]
    if packed:
        what = (f"it holds {', '.join(packed)}, not unpacked: unpack them there (gunzip -k "
                f"{shlex.quote(str(raw))}/*.gz), or set \"dataset_args\": {{\"download\": true}}, which unpacks the "
                f"published archives (their MD5 checked) without downloading them again")
    else:
        what = (f"it holds {_some(held, 8) if held else 'nothing'}. Place the {name} files of these names there "
                f"(renamed where a copy names them otherwise), or set \"dataset_args\": {{\"download\": true}} on a "
                f"machine with internet access")
    raise DataError(f"Dataset {name}: the folder {str(raw)!r} lacks {', '.join(missing)}; {what}.")


def _require_matching_labels(name: str, raw: Path, split: str, dataset: Any) -> None:
    """A split's labels file must label each of its images with one of the 10 classes. Each file is whole by
    itself, so torchvision took a labels file of another split or data set (t10k's 10,000 labels under the
    train name, EMNIST's 47 classes) as it came: the run failed mid-epoch with an IndexError, or trained on
    labels no class stands for."""
    prefix = "train" if split == "train" else "t10k"
    images, labels = len(dataset.data), dataset.targets
    found = (f"{len(labels):,} labels for {images:,} images" if len(labels) != images else
             f"labels up to {int(labels.max())}" if len(labels) and int(labels.max()) >= len(dataset.classes) else "")
    if found:
        raise DataError(f"Dataset {name}: the file {prefix}-labels-idx1-ubyte in {str(raw)!r} does not label the "
                        f"images of {prefix}-images-idx3-ubyte: it holds {found}, where {name} has one label from "
                        f"0 to {len(dataset.classes) - 1} per image. One of the two files belongs to another split "
                        f"or data set; place the {name} files of the same release there (or delete the folder and "
                        f"run again with \"download\": true).")


def _cifar(cls: type, name: str) -> Opener:
    """Cifar10 or Cifar100 from the extracted archive's folder, whose files torchvision reads only when all of them
    match the published MD5 checksums; which of them do not is named (``_require_published_files``)."""
    def opener(root: Path, split: str, download: bool) -> Dataset:
        try:
            return cls(root=str(root), train=split == "train", download=download)
        except RuntimeError as error:
            if not download and "corrupted" in str(error):  # torchvision's words for a file absent or changed
                files = [*cls.train_list, *cls.test_list, (cls.meta["filename"], cls.meta["md5"])]
                _require_published_files(name, root / cls.base_folder, files, f"the files of the extracted "
                                         f"{cls.filename}", _PICKLES)
            raise
    return opener


_PICKLES = " (its batch files are Python pickles, which could run code if changed)"


def _svhn(root: Path, split: str, download: bool) -> Dataset:
    listed = "train" if split == "train" else "test"
    try:
        dataset = tv.SVHN(root=str(root / "SVHN"), split=listed, download=download)
    except RuntimeError as error:
        if not download and "corrupted" in str(error):
            _, name, md5 = tv.SVHN.split_list[listed]
            _require_published_files("SVHN", root / "SVHN", [(name, md5)], f"the published {name}", "")
        raise
    dataset.classes = [str(i) for i in range(10)]  # type: ignore[attr-defined]
    return dataset


def _require_published_files(name: str, folder: Path, files: list[tuple[str, str]], whole: str, note: str) -> None:
    """Each of ``files`` (name, MD5) is in ``folder`` as published. torchvision said 'Dataset not found or corrupted'
    of a folder that lacks one file or holds one cut short or from another copy, and named none; this names them.
    Called once torchvision has refused the folder, so a whole one's checksums are not computed twice; a folder
    that is not there is left to ``open_split``'s message (what to place where)."""
    from torchvision.datasets.utils import check_integrity
    if not folder.is_dir():
        return
    missing = [file for file, _ in files if not (folder / file).is_file()]
    changed = [file for file, md5 in files if file not in missing and not check_integrity(str(folder / file), md5)]
    found = ([f"lacks {', '.join(missing)}"] if missing else []) + (
        [f"holds {', '.join(changed)} unlike the published file(s) (another MD5 checksum: cut short, damaged or of "
         f"another copy)"] if changed else [])
    if found:
        raise DataError(f"Dataset {name}: the folder {str(folder)!r} {' and '.join(found)}; torchvision reads it only "
                        f"where every file matches{note}. Place {whole} there (or delete {str(folder)!r} and run "
                        f"again with \"download\": true).")


def _tiny_imagenet(root: Path, split: str, download: bool) -> Dataset:
    folder = root / "tiny-imagenet-200"
    if download:
        download_and_extract("http://cs231n.stanford.edu/tiny-imagenet-200.zip", root, folder.name)
    return TinyImageNet(folder, "train" if split == "train" else "val")


def _imagenet(root: Path, split: str, download: bool) -> Dataset:
    """ImageNet 2012 from the archives torchvision unpacks on first use, as image folders numbered by the
    training split's classes (hidden folders are none). Each split's class folders are checked against the
    devkit's first (``_imagenet_classes``): a stopped unpack gave the model fewer classes than val had labels."""
    from torchvision.datasets import imagenet
    folder = root / "imagenet"
    if not (folder / imagenet.META_FILE).is_file():
        _require_devkit(folder)
        imagenet.parse_devkit_archive(str(folder))
    wnids = set(imagenet.load_meta_file(str(folder))[0])
    classes = _imagenet_classes(folder, "train", wnids)
    if split == "train":
        return FixedClassImageFolder(folder / "train")
    _imagenet_classes(folder, "val", wnids)
    return FixedClassImageFolder(folder / "val", classes=classes)


def _require_devkit(folder: Path) -> None:
    """ImageNet's classes are read from the devkit archive (once, into meta.bin). A folder whose train/ was unpacked
    elsewhere (the usual copy on a cluster: train/<wnid>/ and val/<wnid>/) without the devkit was told to place the
    three archives, though only the devkit was missing, and not that a ``folder:`` dataset reads it as it is."""
    from torchvision.datasets import imagenet
    devkit = imagenet.ARCHIVE_META["devkit"][0]
    if not (folder / devkit).is_file() and (folder / "train").is_dir():
        raise DataError(f"The ImageNet folder {str(folder)!r} holds train/ but neither {imagenet.META_FILE} nor "
                        f"{devkit}, from which the dataset ImageNet reads its 1,000 classes. Place {devkit} (from "
                        f"image-net.org, 2.5 MB) there, or use \"dataset\": \"folder:{folder}\", which reads "
                        f"train/<wnid>/ and val/<wnid>/ as they are, with the same preprocessing and the classes in "
                        f"the same (sorted) order.")


def _imagenet_classes(folder: Path, split: str, wnids: set[str]) -> list[str]:
    """The class folders of ImageNet's ``train`` or ``val`` folder (unpacked by torchvision where absent), which
    must be the devkit's ``wnids``. torchvision unpacks in place (the train tar into one archive per class, each
    unpacked and then deleted; the val images into val/, then moved into class folders) and takes any folder
    it finds for whole; a stopped unpack leaves classes missing and class archives (or loose images) behind."""
    from torchvision.datasets import imagenet
    directory = folder / split
    if not directory.is_dir():
        (imagenet.parse_train_archive if split == "train" else imagenet.parse_val_archive)(str(folder))
    present = class_folders(directory)
    unknown = sorted(set(present) - wnids)
    if unknown:
        raise DataError(f"The ImageNet folder {str(directory)!r} has class folder(s) {unknown[:10]} that the "
                        f"devkit ({str(folder / imagenet.META_FILE)!r}) does not list; remove them.")
    missing = sorted(wnids - set(present))
    left = sorted(entry.name for entry in os.scandir(directory) if entry.is_file() and not entry.name.startswith(".")
                  and (entry.name.endswith(".tar") if split == "train" else is_image_file(entry.path, directory)))
    if missing or left:
        found = [f"it lacks the class folders of {len(missing)} of the devkit's {len(wnids)} classes "
                 f"({_some(missing, 10)})"] if missing else []
        if left:
            kind = "class archive(s) not unpacked yet" if split == "train" else "image file(s) not in class folders"
            found.append(f"it holds {len(left)} {kind} ({_some(left, 3)})")
        archive = imagenet.ARCHIVE_META[split][0]
        raise DataError(f"The ImageNet folder {str(directory)!r} is incomplete: {'; '.join(found)}. torchvision's "
                        f"unpacking of {archive}, which works in place and takes any {split}/ folder for whole, was "
                        f"stopped part-way. Delete {str(directory)!r} and run again to unpack "
                        f"{str(folder / archive)!r} anew.")
    return present


def _some(names: list[str], shown: int) -> str:
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def _fastai(name: str) -> Opener:
    """Imagenette or Imagewoof (fast.ai's ``<name>.tgz``): ``<name>/train/<wnid>/`` and ``<name>/val/<wnid>/``,
    both numbered by the training split's classes (torchvision's Imagenette numbered val/ by its own folders and
    shifted labels where it lacked a class). Downloaded whole or not at all; torchvision extracted in place, so
    with download on, a folder already there must have val/ classes as in train/, as the archive has."""
    def opener(root: Path, split: str, download: bool) -> Dataset:
        folder = root / name
        if download:
            download_and_extract(f"https://s3.amazonaws.com/fast-ai-imageclas/{name}.tgz", root, name)
            _require_same_classes(folder)
        train = FixedClassImageFolder(folder / "train")
        return train if split == "train" else evaluation_split(folder / "val", train)
    return opener


def _require_same_classes(folder: Path) -> None:
    """A downloaded folder's val/ has the class folders of its train/ (fast.ai's archives do)."""
    train, val = (set(class_folders(folder / s)) if (folder / s).is_dir() else set() for s in ("train", "val"))
    if train != val:
        raise DataError(f"The dataset folder {str(folder)!r} is incomplete: its train/ has {len(train)} class "
                        f"folders and its val/ {len(val)}, which differ in {sorted(train ^ val)[:10]}; an extraction "
                        f"that was stopped leaves such a folder. Delete {str(folder)!r} and run again with "
                        f"\"download\": true to download it anew.")


def _food101(root: Path, split: str, download: bool) -> Dataset:
    """Food-101 through torchvision, downloaded through download_and_extract (whole or absent); torchvision
    extracted in place and took a folder with ``meta/`` and ``images/`` for whole, so every image a split's
    meta file lists must be there (one listing per class folder): a missing one failed the run mid-epoch."""
    base, listed = root / "food-101", "train" if split == "train" else "test"
    if download:
        download_and_extract("http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz", root, base.name)
    try:
        dataset = tv.Food101(root=str(root), split=listed, download=False)
    except ValueError as error:  # a meta file cut short: json's JSONDecodeError
        raise DataError(f"The Food101 file {str(base / 'meta' / f'{listed}.json')!r} cannot be read ({error}). "
                        f"Delete {str(base)!r} and run again with \"download\": true.") from None
    images: list[Path] = dataset._image_files  # type: ignore[attr-defined]
    files: dict[Path, set[str]] = {}
    for image in images:
        if image.parent not in files:
            files[image.parent] = set(os.listdir(image.parent)) if image.parent.is_dir() else set()
    missing = [image for image in images if image.name not in files[image.parent]]
    if missing:
        raise DataError(f"The Food101 folder {str(base)!r} is incomplete: {len(missing)} of the "
                        f"{len(dataset)} images meta/{listed}.json lists are missing (such as "
                        f"{str(missing[0])!r}), as an extraction that was stopped leaves it. Delete "
                        f"{str(base)!r} and run again with \"download\": true (or place the whole extracted "
                        f"food-101.tar.gz there).")
    return dataset


def _inaturalist(root: Path, split: str, download: bool) -> Dataset:
    """iNaturalist 2021's ``2021_train/`` and ``2021_valid/`` as image folders, both numbered by the training
    split's categories, whose folder names begin with their ids (``00000_Animalia_..._Corvus_corax``). torchvision's
    INaturalist (which downloads them here) took every entry of a version folder for a category and every file of a
    category for an image: a ``.DS_Store`` beside the categories failed the run with a traceback, one inside a
    category (or any other file) failed it mid-epoch, and a missing category said 'Unexpected category id'."""
    base = root / "inaturalist"
    version = "2021_train" if split == "train" else "2021_valid"
    if download and not _holds_entries(base / version):  # torchvision downloads and renames it whole
        tv.INaturalist(root=str(base), version=version, target_type="full", download=True)
    if not (base / version).is_dir():  # torchvision would create the folders
        extracted = base / _INATURALIST_ARCHIVE_FOLDERS[version]
        raise FileNotFoundError(f"no folder {str(base / version)!r}" + (
            f"; {str(extracted)!r}, as the archive extracts, is there: rename it to {version}" if extracted.is_dir()
            else ""))
    categories = class_folders(base / "2021_train")
    _require_numbered_categories(base / "2021_train", categories)
    if split == "train":
        return FixedClassImageFolder(base / version)
    return FixedClassImageFolder(base / version, classes=categories)


# the folder iNaturalist 2021's train.tar.gz and val.tar.gz extract to, which torchvision renames
_INATURALIST_ARCHIVE_FOLDERS = {"2021_train": "train", "2021_valid": "val"}


def _holds_entries(folder: Path) -> bool:
    """Whether ``folder`` is a folder with anything in it (torchvision's test of a download done)."""
    return folder.is_dir() and any(os.scandir(folder))


def _require_numbered_categories(folder: Path, categories: list[str]) -> None:
    """iNaturalist 2021's category folders are numbered from 00000 without a gap, and a category's label is its
    number: a folder missing (an extraction that was stopped) or one that is no category would shift the labels
    of every later category."""
    for index, name in enumerate(categories):
        if name.split("_")[0] != f"{index:05d}":
            raise DataError(f"The iNaturalist folder {str(folder)!r} has the category folder {name!r} where one "
                            f"numbered {index:05d} belongs: its category folders must be numbered from 00000 "
                            f"without a gap, as the archive holds them, each id the category's label. An extraction "
                            f"that was stopped leaves a gap; a folder of another name is no category. Remove such "
                            f"a folder, or delete {str(folder)!r} and extract (or download) it anew.")


def evaluation_folder(base: Path) -> Path:
    """``<base>/test``, else ``<base>/val``; a DataError when neither exists."""
    evaluation = base / "test" if (base / "test").is_dir() else base / "val"
    if not evaluation.is_dir():
        raise DataError(f"The image folder {str(base)!r} has no test/ or val/ folder beside train/; the "
                        f"runs are evaluated on it (<path>/test/<class>/<image files>).")
    return evaluation


def folder_opener(path: str) -> Opener:
    """``<path>/train/<class>/*`` and ``<path>/test/<class>/*`` (or ``val/``) ImageFolder trees. The training
    split is read once: the evaluation split takes its classes (reading it again walked every training image
    twice and repeated its warnings)."""
    opened: dict[str, FixedClassImageFolder] = {}

    def opener(root: Path, split: str, download: bool) -> Dataset:
        base = Path(path).expanduser()
        if "train" not in opened:
            opened["train"] = FixedClassImageFolder(base / "train")
        train = opened["train"]
        if split == "train":
            return train
        return evaluation_split(evaluation_folder(base), train)
    return opener


def evaluation_split(folder: Path, train: FixedClassImageFolder) -> FixedClassImageFolder:
    """The evaluation image folder numbered by ``train``'s classes (``load_image_dataset`` warns where it holds
    training images, for every source whose splits are image folders)."""
    return FixedClassImageFolder(folder, classes=train.classes)


_MNIST_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte")
_MNIST_FILES = ", ".join(_MNIST_NAMES)

SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("MNIST", _mnist_like(tv.MNIST), f"MNIST/raw/{{{_MNIST_FILES}}}", channels=1, native=28, flip=False,
           normalisations={"mnist": ((0.1307,), (0.3081,))}),
    Source("FashionMNIST", _mnist_like(tv.FashionMNIST), f"FashionMNIST/raw/{{{_MNIST_FILES}}}", channels=1,
           native=28, normalisations={"fashionmnist": ((0.2860,), (0.3530,))}),
    Source("Cifar10", _cifar(tv.CIFAR10, "Cifar10"), "cifar-10-batches-py/ (the extracted cifar-10-python.tar.gz)",
           native=32),
    Source("Cifar100", _cifar(tv.CIFAR100, "Cifar100"), "cifar-100-python/ (the extracted cifar-100-python.tar.gz)",
           native=32),
    Source("SVHN", _svhn, "SVHN/train_32x32.mat and SVHN/test_32x32.mat", native=32, flip=False),
    Source("TinyImageNet", _tiny_imagenet, "tiny-imagenet-200/ (the extracted tiny-imagenet-200.zip with train/ "
           "and val/val_annotations.txt)", native=64),
    Source("ImageNet", _imagenet, "imagenet/ILSVRC2012_devkit_t12.tar.gz, imagenet/ILSVRC2012_img_train.tar and "
           "imagenet/ILSVRC2012_img_val.tar (torchvision extracts them on first use)", downloadable=False),
    Source("Imagenette", _fastai("imagenette2"), "imagenette2/train/<wnid>/*.JPEG and imagenette2/val/<wnid>/*.JPEG "
           "(the extracted imagenette2.tgz)", variants=("imagenette2-320", "imagenette2-160")),
    Source("Imagewoof", _fastai("imagewoof2"), "imagewoof2/train/<wnid>/*.JPEG and imagewoof2/val/<wnid>/*.JPEG "
           "(the extracted imagewoof2.tgz)", variants=("imagewoof2-320", "imagewoof2-160")),
    Source("Food101", _food101, "food-101/images/<class>/*.jpg and food-101/meta/{classes.txt,train.json,test.json} "
           "(the extracted food-101.tar.gz)"),
    Source("iNaturalist", _inaturalist, "inaturalist/2021_train/<category>/*.jpg and inaturalist/2021_valid/"
           "<category>/*.jpg (iNaturalist 2021's train.tar.gz and val.tar.gz extracted, their train/ and val/ "
           "renamed)"),
)}


def folder_source(path: str) -> Source:
    return Source(f"folder:{path}", folder_opener(path), f"{path}/train/<class>/<image> and {path}/test/<class>/"
                  f"<image> (or val/)", downloadable=False, in_data_dir=False)
