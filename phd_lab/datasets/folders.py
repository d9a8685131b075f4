"""Image datasets stored as folder trees: ImageFolder with a fixed class list, and TinyImageNet."""

from __future__ import annotations

import errno
import logging
import os
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from phd_lab.errors import DataError, RunFailure

log = logging.getLogger(__name__)

MACOS_FOLDER = "__MACOSX"
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_LFS_POINTER = b"version https://git-lfs.github.com/spec/"

# Image formats that ImageFolder's extension list (IMG_EXTENSIONS, what the loader reads) leaves out: files with
# these names are images all the same, which the checks name instead of passing over them without a word.
OTHER_IMAGE_EXTENSIONS = (".apng", ".arw", ".avif", ".btf", ".cr2", ".dcm", ".dds", ".dng", ".eps", ".exr", ".gif",
                          ".hdr", ".heic", ".heif", ".icns", ".ico", ".j2k", ".jfif", ".jp2", ".jpe", ".jpx", ".jxl",
                          ".nef", ".orf", ".pbm", ".pcx", ".pnm", ".psd", ".qoi", ".raw", ".rw2", ".sgi", ".svg",
                          ".tga", ".xbm", ".xpm")


def load_image(path: str) -> Image.Image:
    """An image file as RGB. 16-bit grayscale (microscopy, medical scans) is scaled to 8 bits (value / 257);
    PIL's own RGB conversion clips it, which turned almost every pixel of such images white. 32-bit integer
    images (mode 'I', which PIL also gives some 16-bit files) are scaled alike when their values fit 16 bits and
    refused otherwise: clipping them to 0..65535 made every brighter pixel white without a word. Floating-point
    images are refused: their range is unknown, and the conversion made 0..1 images black. A file that is
    no readable image (damaged, truncated, another format under an image name) fails the run that reads it,
    naming the file (checking every file's header up front would cost minutes on ImageNet-sized folders), as does
    one larger than PIL reads (``too_large``)."""
    try:
        with open(path, "rb") as handle:
            image = Image.open(handle)
            image.load()
    except Image.DecompressionBombError as error:
        raise too_large(path, error) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:  # PIL's ways of refusing a file
        raise unreadable(path, error) from None
    if image.mode == "F":  # PIL's conversion clips floats to 0..255: images scaled to 0..1 became black
        raise RunFailure(f"The image file {path!r} holds 32-bit floating-point pixels (PIL mode 'F'), whose range "
                         f"(0..1, 0..255 or any other) the file does not say, so they cannot be turned into 8-bit "
                         f"RGB without a guess; convert the images to 8- or 16-bit PNG or TIFF files.")
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.int64)
        require_sixteen_bits(path, values)
        image = Image.fromarray(np.rint(values / 257.0).astype(np.uint8), mode="L")
    return image.convert("RGB")


def unreadable(path: str, error: Exception) -> RunFailure:
    """The failure for a file PIL refuses. A Git LFS pointer (a data set cloned without ``git lfs``: every image
    a few lines of text) is said to be one: "remove or replace it" sent its owner after one file of thousands."""
    if is_lfs_pointer(path):
        return RunFailure(f"The image file {path!r} is a Git LFS pointer (a few lines of text that name the image), "
                          f"not the image: the data set was cloned or copied without its Git LFS files. Fetch them "
                          f"(git lfs install, then git lfs pull in its repository) or copy the real images.")
    return RunFailure(f"The image file {path!r} cannot be read ({type(error).__name__}: {error}); remove or "
                      f"replace it (every file with an image extension in a class folder is used).")


def is_lfs_pointer(path: str) -> bool:
    """Whether a file begins as a Git LFS pointer file does."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(_LFS_POINTER)) == _LFS_POINTER
    except OSError:
        return False


def too_large(path: str, error: Exception) -> RunFailure:
    """PIL refuses an image of more than twice ``Image.MAX_IMAGE_PIXELS`` pixels (a guard against decompression
    bombs: a small file that unpacks to gigabytes) with a DecompressionBombError, whose message names no file."""
    return RunFailure(f"The image file {path!r} is too large to read ({error}): PIL refuses images of more than "
                      f"{2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels, a guard against files that unpack to gigabytes "
                      f"of memory. Downscale it (the run resizes every image to its resolution anyway) or remove it.")


def require_sixteen_bits(path: str, values: np.ndarray) -> None:
    """A mode 'I' image's pixels must fit 0..65535, the range scaled to 8 bits; what range a 32-bit or signed
    image means (0..2**32, -32768..32767) the file does not say, so it is not guessed."""
    low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
    if low < 0 or high > 65535:
        raise RunFailure(f"The image file {path!r} holds 32-bit integer pixels (PIL mode 'I') from {low} to {high}, "
                         f"outside 0..65535, the 16-bit range that is scaled to 8 bits; its range is not known "
                         f"without a guess. Convert the images to 8- or 16-bit PNG or TIFF files (scaled to "
                         f"0..255 or 0..65535).")


def check_folder_tree(root: str | Path) -> None:
    """Raise a DataError for what os.walk, which ImageFolder uses, would pass over without a word: a symbolic link
    that leads back into a folder it sits in (followed about forty levels deep, counting that class's images over
    and over), and a folder it cannot list (``unlisted``)."""
    failures: list[str] = []

    def note(error: OSError) -> None:
        failure = unlisted(root, error)
        if failure is not None:
            failures.append(failure)

    for directory, subdirectories, _ in os.walk(root, followlinks=True, onerror=note):
        real = os.path.realpath(directory)
        for name in subdirectories:
            target = os.path.join(directory, name)
            if os.path.islink(target):
                resolved = os.path.realpath(target)
                if real == resolved or real.startswith(resolved + os.sep):
                    raise DataError(f"The image folder {str(root)!r} holds a symbolic link {target!r} to "
                                    f"{resolved!r}, a folder that contains it: its images would be counted "
                                    f"again at every level. Remove the link.")
    if failures:
        raise unlisted_error(root, failures)


def unlisted(root: str | Path, error: OSError) -> str | None:
    """The folder below ``root`` that os.walk could not list (another user's on a shared file system, mode 0700),
    as the error names it, or None where that loses no sample: a path that is gone, or one in a hidden folder."""
    relative = Path(os.path.relpath(error.filename, root)) if error.filename else Path()
    if error.errno == errno.ENOENT or any(is_left_out(part) for part in relative.parts):
        return None
    return f"{error.filename} ({error.strerror or error})"


def unlisted_error(root: str | Path, failures: list[str]) -> DataError:
    """os.walk passes over a folder it cannot list without a word: its images would be left out of the split
    (a class of the evaluation split, which may lack classes, lost silently)."""
    return DataError(f"The image folder {str(root)!r} holds {len(failures)} folder(s) that cannot be listed, so "
                     f"their images would be left out of the split without a word: {'; '.join(failures[:5])}"
                     f"{' ...' if len(failures) > 5 else ''}. Make them readable (chmod -R u+rX, or ask their "
                     f"owner) or move them out of the data set.")


def looks_like_an_image(name: str) -> bool:
    """Whether a file name has an image extension, one the loader reads or another (``OTHER_IMAGE_EXTENSIONS``)."""
    return has_file_allowed_extension(name, IMG_EXTENSIONS + OTHER_IMAGE_EXTENSIONS)


def require_no_loose_images(directory: str | Path) -> None:
    """ImageFolder reads only the class folders of a split: image files right in ``train/`` or ``test/`` were
    left out without a word, and a split of nothing but such files was said to have "no class folders"."""
    with os.scandir(directory) as entries:
        loose = sorted(entry.name for entry in entries
                       if not is_left_out(entry.name) and not entry.is_dir() and looks_like_an_image(entry.name))
    if loose:
        raise DataError(f"The image folder {str(directory)!r} holds {len(loose)} image file(s) directly, not in a "
                        f"class folder ({', '.join(map(repr, loose[:5]))}{' ...' if len(loose) > 5 else ''}): they "
                        f"would be left out of the split. Images must be in one subfolder per class, as "
                        f"<split>/<class>/<image files>; move each into the folder of its class.")


def require_no_broken_links(directory: str | Path) -> None:
    """A class folder that is a symbolic link to a folder that is gone (a drive not mounted, a moved copy) is
    neither a folder nor an image: its class was left out of the split without a word."""
    with os.scandir(directory) as entries:
        broken = sorted((entry.name, os.readlink(entry.path)) for entry in entries
                        if not is_left_out(entry.name) and entry.is_symlink() and not os.path.exists(entry.path))
    if broken:
        raise DataError(f"The image folder {str(directory)!r} holds {len(broken)} symbolic link(s) that lead to "
                        f"nothing ({'; '.join(f'{name!r} -> {target!r}' for name, target in broken[:5])}"
                        f"{' ...' if len(broken) > 5 else ''}): the class folders they stand for would be left out "
                        f"of the split. Mount or restore their targets, or remove the links.")


def has_links(directory: str | Path, paths: list[str]) -> bool:
    """Whether a symbolic link leads to an image file below the split folder ``directory``: the file is a link, or
    a folder on its way below the split is one (a flag, not the paths, which a loader worker would copy). An image
    file that is a link to nothing is a DataError (``require_no_broken_file_links``). Each folder is listed once
    more (the entries' types come with the listing, no stat per file: on a shared file system a stat per image of
    ImageNet would cost minutes), a link costs a stat and a folder a real path; hard links are not looked for."""
    real_root = os.path.realpath(directory)
    linked = False
    broken: list[str] = []
    for head in dict.fromkeys(os.path.dirname(path) for path in paths):
        expected = os.path.normpath(os.path.join(real_root, os.path.relpath(head, directory)))
        linked = linked or os.path.realpath(head) != expected
        with os.scandir(head) as entries:
            links = [entry.path for entry in entries if entry.is_symlink()]
        linked = linked or bool(links)
        broken += [path for path in links if not os.path.exists(path)]
    listed = set(paths)
    require_no_broken_file_links(directory, [path for path in broken if path in listed])
    return linked


def require_no_broken_file_links(directory: str | Path, broken: list[str]) -> None:
    """An image file that is a symbolic link to nothing (its target moved or on a drive not mounted) carries an
    image name, so it became a sample, and the run failed only when an epoch reached it (exit 1)."""
    if broken:
        shown = "; ".join(f"{os.path.relpath(path, directory)!r} -> {os.readlink(path)!r}" for path in broken[:5])
        raise DataError(f"The image folder {str(directory)!r} holds {len(broken)} image file(s) that are symbolic "
                        f"links leading to nothing ({shown}{' ...' if len(broken) > 5 else ''}): the run would "
                        f"fail when it reaches them. Restore or mount their targets, or remove the links.")


def identity(path: str) -> tuple[int, int]:
    """The file an image path leads to (its device and inode): the same for every symbolic or hard link to it,
    and a stat (not a real path, ten times slower through links) per file."""
    status = os.stat(path)
    return status.st_dev, status.st_ino


def warn_images_in_two_classes(directory: str | Path, samples: list[tuple[str, int]], linked: bool) -> None:
    """An image file reached through links from two class folders was a sample of both classes without a word
    (labels that contradict each other). Looked for only where a split has links (no cost otherwise)."""
    if not linked:
        return
    first: dict[tuple[int, int], tuple[str, int]] = {}
    shared: list[tuple[str, str]] = []
    for path, label in samples:
        key = identity(path)
        if key not in first:
            first[key] = path, label
        elif first[key][1] != label:
            shared.append((first[key][0], path))
    if shared:
        one, other = (os.path.relpath(path, directory) for path in shared[0])
        log.warning("The image folder %r holds %d image file(s) reached through links from two class folders "
                    "(such as %r and %r, one file), each a sample of both classes with contradicting labels. Remove "
                    "the links from the class the image does not show.", str(directory), len(shared), one, other)


def warn_evaluation_images_in_training(train: "FixedClassImageFolder", evaluation: "FixedClassImageFolder") -> None:
    """An evaluation image that is a training image (a link to it, or both splits reaching one file) makes the test
    accuracy count images the model was trained on. Compared by file (device and inode), not by content (hashing
    every file would cost minutes on big folders), and only where a split has links or one split folder lies
    inside the other (no cost otherwise)."""
    roots = [os.path.realpath(split.root) + os.sep for split in (train, evaluation)]
    nested = roots[0].startswith(roots[1]) or roots[1].startswith(roots[0])
    if not (train.linked or evaluation.linked or nested):
        return
    training = {identity(path) for path, _ in train.samples}
    shared = [path for path, _ in evaluation.samples if identity(path) in training]
    if shared:
        log.warning("The evaluation folder %r holds %d of its %d image(s) that are training images too (such as %r, "
                    "which is %r), through links or a shared folder: the test accuracy counts images the model was "
                    "trained on. Remove them from one of the splits.", str(evaluation.root), len(shared),
                    len(evaluation.samples), os.path.relpath(shared[0], evaluation.root),
                    os.path.realpath(shared[0]))


def is_left_out(name: str) -> bool:
    """Whether a file or folder name is no part of a data set: hidden (``.ipynb_checkpoints``, ``.DS_Store``,
    ``._name.png``, as torchvision's ImageFolder leaves them out) or ``__MACOSX`` (the resource forks an archive
    made on macOS holds; unzipped, it became a class folder that failed the run as a class without images)."""
    return name.startswith(".") or name == MACOS_FOLDER


def is_hidden(path: str | Path, top: str | Path) -> bool:
    """Whether a file below the folder ``top`` is hidden on the way (``._name.png``, ``.ipynb_checkpoints/``)."""
    return any(is_left_out(part) for part in Path(os.path.relpath(path, top)).parts)


def is_image_file(path: str | Path, top: str | Path) -> bool:
    """An image the loader reads below the folder ``top`` (a class folder or its split: class folders are never
    hidden), not hidden on the way: macOS' ``._name.png`` resource forks and ``.ipynb_checkpoints/`` copies carry
    image names but are no samples of the class."""
    return has_file_allowed_extension(str(path), IMG_EXTENSIONS) and not is_hidden(path, top)


def readable_extensions() -> str:
    """The image extensions the loader reads, for messages."""
    return ", ".join(sorted(IMG_EXTENSIONS))


def counted(extensions: Counter[str]) -> str:
    """``Counter({'.gif': 2, '.heic': 1})`` as "2 .gif, 1 .heic", most frequent first."""
    return ", ".join(f"{count} {extension}" for extension, count in extensions.most_common())


def warn_unread_formats(directory: str | Path, skipped: Counter[str]) -> None:
    """ImageFolder passes over image files whose format it does not read (.gif, .heic, ...) without a word: a
    class (of the evaluation split, which may lack classes: all of it) shrank silently. One warning per split."""
    if skipped:
        log.warning("The image folder %r holds %d image file(s) in formats the loader does not read (%s), which are "
                    "left out of the split; it reads %s. Convert them (to PNG, say) to use them.",
                    str(directory), sum(skipped.values()), counted(skipped), readable_extensions())


def holds_an_image(folder: Path) -> bool:
    """Whether a class folder (or a folder below it) holds an image file; stops at the first one."""
    def refuse(error: OSError) -> None:  # an unlisted class folder is no class "without images"
        failure = unlisted(folder, error)
        if failure is not None:
            raise unlisted_error(folder.parent, [failure])

    for directory, subdirectories, files in os.walk(folder, followlinks=True, onerror=refuse):
        subdirectories[:] = [name for name in subdirectories if not is_left_out(name)]
        if any(is_image_file(os.path.join(directory, name), folder) for name in files):
            return True
    return False


def nfc(name: str) -> str:
    """A folder name in Unicode's NFC form: macOS writes names decomposed (NFD), most other systems composed
    (NFC), so one class copied between them has two spellings that look the same."""
    return unicodedata.normalize("NFC", name)


def in_nfc_order(directory: str | Path, samples: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """``samples`` in ImageFolder's order (class folder, then folder, then file name, each sorted) of the names' NFC
    forms: ImageFolder sorts the names as stored, so a copy whose non-ASCII names are decomposed (NFD, from macOS)
    gave the same images and labels in another order, hence other batches and another run for the same seed. Names
    in NFC (every ASCII name) keep ImageFolder's order, so where all are (the names below ``directory``: a data_dir
    of a non-ASCII name, /home/josé/, made each run sort ImageNet's 1.3M paths, seconds per split) the samples are
    returned as they are."""
    if all(path.isascii() for path, _ in samples):  # the common case, checked fastest
        return samples
    start = len(os.path.join(os.path.expanduser(str(directory)), ""))
    if all(unicodedata.is_normalized("NFC", path[start:]) for path, _ in samples):
        return samples

    def key(sample: tuple[str, int]) -> tuple[str, str, str]:
        head, name = os.path.split(sample[0][start:])
        return nfc(head.split(os.sep, 1)[0]), nfc(head), nfc(name)
    return sorted(samples, key=key)


def class_folders(directory: str | Path) -> list[str]:
    """The class folders of a split as named on disk (which opens them), sorted by their NFC form, so that
    a class gets the same label whichever spelling a copy has; hidden folders (``.ipynb_checkpoints``) and
    ``__MACOSX`` (with one log line) are no classes. Two folders whose names differ only in normalisation are a
    DataError: their order would depend on the file system."""
    folders = [entry.name for entry in os.scandir(directory) if entry.is_dir()]
    if MACOS_FOLDER in folders:
        log.info("The folder %r holds a %s/ folder (macOS' resource forks, left by unzipping an archive made on a "
                 "Mac): it is no class and is left out.", str(directory), MACOS_FOLDER)
    names = sorted(name for name in folders if not is_left_out(name))
    first: dict[str, str] = {}
    for name in names:
        key = nfc(name)
        if key in first:
            raise DataError(f"The class folders {ascii(first[key])} and {ascii(name)} of {str(directory)!r} differ "
                            f"only in their Unicode normalisation (composed and decomposed accents): they look the "
                            f"same but are two folders. Merge them into one folder.")
        first[key] = name
    return sorted(names, key=nfc)


def require_two_classes(directory: str | Path, present: list[str]) -> None:
    if len(present) < 2:
        raise DataError(f"The image folder {str(directory)!r} has {len(present) or 'no'} class folder"
                        f"{'' if len(present) == 1 else 's'}{f' ({present[0]!r})' if present else ''}; a "
                        f"classifier needs at least two, as <split>/<class>/<image files>.")


def require_distinct_classes(directory: str | Path, present: list[str]) -> None:
    """Two class folders that are one folder (a symbolic link to another class) would put the same images
    under two labels, which no model can learn and which inflates both classes silently."""
    first_name: dict[str, str] = {}
    for name in present:
        real = os.path.realpath(os.path.join(directory, name))
        if real in first_name:
            raise DataError(f"The class folders {first_name[real]!r} and {name!r} of {str(directory)!r} are one "
                            f"folder ({real!r}, reached through a symbolic link): its images would be samples of "
                            f"both classes. Remove the link, or copy the images that belong to {name!r}.")
        first_name[real] = name


def require_known_classes(directory: str | Path, present: list[str], training: list[str]) -> None:
    """An evaluation split may lack a training class, but a class of its own no model could ever predict.
    Names are compared in NFC form (the same class copied from macOS is spelled NFD); where one still differs
    from a training class only by Unicode (compatibility) normalisation, the message shows both as ascii(). An empty
    folder holds nothing to predict (Tiny ImageNet's val/images/ that the scripts sorting val/ into class folders
    leave behind)."""
    known = {nfc(name) for name in training}
    unknown = sorted((name for name in present if nfc(name) not in known and not _is_empty(directory, name)), key=nfc)
    if unknown:
        lookalike = {unicodedata.normalize("NFKC", name): name for name in training}
        alike = [f"{ascii(name)} differs from the training class {ascii(lookalike[key])} only in its Unicode "
                 f"normalisation" for name in unknown if (key := unicodedata.normalize("NFKC", name)) in lookalike]
        raise DataError(f"The evaluation folder {str(directory)!r} has class folder(s) {unknown[:10]} that the "
                        f"training split lacks, so a model could never predict them"
                        f"{' (' + '; '.join(alike[:3]) + ')' if alike else ''}; add them to train/ or remove them"
                        f"{', or rename them as in train/' if alike else ''}.")


def _is_empty(directory: str | Path, name: str) -> bool:
    """Whether the folder ``name`` of ``directory`` holds no entry at all (an unreadable one is not known to)."""
    try:
        with os.scandir(os.path.join(directory, name)) as entries:
            return not any(True for _ in entries)
    except OSError:
        return False


def no_image_error(root: str | Path) -> DataError:
    """The error for a split whose class folders hold no image (checked up front and when the split is read)."""
    return DataError(f"The image folder {str(root)!r} holds no image ({', '.join(sorted(IMG_EXTENSIONS))}) in "
                     f"its class folders; expected <split>/<class>/<image files>.")


def unread_images(folder: Path) -> Counter[str]:
    """The image files below ``folder`` (not hidden) in formats the loader does not read, counted by extension."""
    found: Counter[str] = Counter()
    for directory, subdirectories, files in os.walk(folder, followlinks=True):
        subdirectories[:] = [name for name in subdirectories if not is_left_out(name)]
        found.update(os.path.splitext(name)[1].lower() for name in files if not name.startswith(".")
                     and looks_like_an_image(name) and not has_file_allowed_extension(name, IMG_EXTENSIONS))
    return found


def require_images_in_every_class(directory: str | Path, empty: list[str]) -> None:
    """A training class without images could never be learnt. Where its folder holds images in formats the
    loader does not read (all .gif, say), the message counts them and names the formats it reads."""
    if empty:
        held = [f"{name!r} holds {counted(found)}" for name in empty[:10]
                if (found := unread_images(Path(directory, name)))]
        raise DataError(f"The training folder {str(directory)!r} has class folder(s) {empty[:10]} without images the "
                        f"loader reads ({readable_extensions()}){': ' + '; '.join(held) if held else ''}; every "
                        f"class needs training images (remove the folder, or add images, converting other formats "
                        f"to one of these).")


def warn_classes_not_evaluated(directory: str | Path, without: list[str], classes: int) -> None:
    """An evaluation split may lack a training class (its folder absent, empty or of unread formats), but its
    accuracy then covers the other classes only, which the run's numbers did not say."""
    if without:
        log.warning("The evaluation folder %r has no image of %d of the %d training classes (%s%s): the test "
                    "accuracy and loss cover the other classes only.", str(directory), len(without), classes,
                    ", ".join(map(repr, without[:10])), " ..." if len(without) > 10 else "")


class FixedClassImageFolder(ImageFolder):
    """ImageFolder whose class → index map is given (the training split's), so that an evaluation
    split lacking a class keeps the same label indices.

    Stricter than ImageFolder where a silent result would mislead: hidden folders (``.ipynb_checkpoints``)
    are no classes; a training class folder without images, a split without any image and an
    evaluation class the training split lacks are DataErrors naming the folders; image files in formats
    the loader does not read and training classes the evaluation split has no image of are warnings.
    """

    def __init__(self, root: str | Path, classes: list[str] | None = None, **kwargs: Any) -> None:
        self._given_classes = classes
        self.linked = False  # whether links lead to some of its images (has_links)
        check_folder_tree(root)
        super().__init__(str(root), loader=load_image, **kwargs)
        if not self.samples:
            raise no_image_error(root)

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        require_no_loose_images(directory)
        require_no_broken_links(directory)
        present = class_folders(directory)
        require_distinct_classes(directory, present)
        if self._given_classes is None:
            require_two_classes(directory, present)
            return present, {name: i for i, name in enumerate(present)}
        require_known_classes(directory, present, self._given_classes)
        on_disk = {nfc(name): name for name in present}  # this split's own spelling of a class opens its folder
        return list(self._given_classes), {on_disk.get(nfc(name), name): i
                                           for i, name in enumerate(self._given_classes)}

    def make_dataset(self, directory, class_to_idx, extensions=None, is_valid_file=None,
                     allow_empty: bool = False):  # type: ignore[override]
        skipped: Counter[str] = Counter()

        def valid(path: str) -> bool:  # hidden files and folders inside a class folder are no samples
            if not is_image_file(path, directory):
                if looks_like_an_image(path) and not is_hidden(path, directory):
                    skipped[os.path.splitext(path)[1].lower()] += 1
                return False
            return is_valid_file is None or is_valid_file(path)
        samples = in_nfc_order(directory, super().make_dataset(directory, class_to_idx, None, valid, allow_empty=True))
        self.linked = has_links(directory, [path for path, _ in samples])
        warn_images_in_two_classes(directory, samples, self.linked)
        warn_unread_formats(directory, skipped)
        found = {index for _, index in samples}
        without = [name for name, index in class_to_idx.items() if index not in found]
        if samples and self._given_classes is None:  # the training split: every class needs images
            require_images_in_every_class(directory, without)
        elif samples:
            warn_classes_not_evaluated(directory, without, len(class_to_idx))
        return samples


class TinyImageNet(Dataset):
    """Tiny ImageNet (200 classes, 64×64): ``tiny-imagenet-200/`` as distributed by Stanford.

    train: ``train/<wnid>/images/*.JPEG``; val (the labelled evaluation split):
    ``val/images/*.JPEG`` with ``val/val_annotations.txt`` (file, wnid, box) lines.
    """

    def __init__(self, root: str | Path, split: str = "train", transform: Callable | None = None) -> None:
        self.root = Path(root)
        self.transform = transform
        train_dir = self.root / "train"
        if not train_dir.is_dir():
            raise FileNotFoundError(f"{train_dir} not found")
        self.classes = class_folders(train_dir)  # hidden folders (.ipynb_checkpoints) are no classes
        self.class_to_idx = {wnid: i for i, wnid in enumerate(self.classes)}
        if split == "train":
            self.samples = [(str(f), index) for index, wnid in enumerate(self.classes)
                            for f in sorted((train_dir / wnid / "images").iterdir())
                            if f.suffix.lower() in IMG_EXTENSIONS and not f.name.startswith(".")]
            found = {index for _, index in self.samples}  # as for folder: datasets (a copy stopped part-way)
            require_images_in_every_class(train_dir, [wnid for index, wnid in enumerate(self.classes)
                                                      if index not in found])
            has_links(train_dir, [path for path, _ in self.samples])  # links to nothing: a DataError
        elif split == "val" and sorted_by_class(self.root / "val", self.classes):
            self.samples = FixedClassImageFolder(self.root / "val", classes=self.classes).samples
        elif split == "val":
            self.samples = tiny_imagenet_val(self.root, self.class_to_idx)
        else:
            raise ValueError(f"split must be 'train' or 'val'; got {split!r}")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        image = load_image(path)
        return (self.transform(image) if self.transform is not None else image), label


def sorted_by_class(val: Path, classes: list[str]) -> bool:
    """Whether Tiny ImageNet's ``val/`` was sorted into class folders (``val/<wnid>/images/``, as the scripts that
    prepare it for an ImageFolder leave it) rather than ``val/images/`` with the annotations: it was refused as
    'incomplete or damaged', though every image was there with its label. A ``val/images/`` those scripts left
    empty is no sign of the other layout (it was refused the same way)."""
    images = val / "images"
    if not val.is_dir() or (images.is_dir() and any(True for _ in os.scandir(images))):
        return False
    return bool(set(class_folders(val)) & set(classes))


def tiny_imagenet_val(root: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    """The samples of Tiny ImageNet's ``val/images`` as ``val/val_annotations.txt`` labels them (file, wnid and
    box per line, tab-separated). A line cut short (a copy or extraction that was stopped), a file that is no
    text, an annotation of no image or of a class ``train/`` lacks, and a listed image that is not there (which
    failed the run mid-epoch) are DataErrors naming the file; dropping lines evaluated on fewer images silently.
    The file is read as ``utf-8-sig``: a byte-order mark that an editor on Windows put in front of the first line
    was part of its file name ('\\ufeffval_0.JPEG') and that image was refused as missing."""
    annotations, images = root / "val" / "val_annotations.txt", root / "val" / "images"
    if not annotations.is_file():
        raise FileNotFoundError(f"{annotations} not found")
    redo = (f"the download is incomplete or damaged: extract tiny-imagenet-200.zip anew (or delete {str(root)!r} "
            f"and run again with \"download\": true)")
    try:
        lines = annotations.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as error:
        raise DataError(f"The file {str(annotations)!r} is not the text it should be ({error}); {redo}.") from None
    samples, unknown = [], set()
    for number, line in enumerate(lines, 1):
        parts = line.split("\t")
        if len(parts) < 2 or not parts[0] or not parts[1]:
            if line.strip():
                raise DataError(f"Line {number} of {str(annotations)!r} is {line[:80]!r}, not '<image file>\\t<wnid>"
                                f"\\t<box>': {redo}.")
        elif parts[1] in class_to_idx:
            samples.append((str(images / parts[0]), class_to_idx[parts[1]]))
        else:
            unknown.add(parts[1])
    if unknown:  # dropping them silently would evaluate on fewer images than the split has
        raise DataError(f"{annotations} names class(es) {sorted(unknown)[:10]} that {root / 'train'} lacks; "
                        f"the download is incomplete or mixed with another copy.")
    if not samples:
        raise DataError(f"The file {str(annotations)!r} lists no image: {redo}.")
    present = set(os.listdir(images)) if images.is_dir() else set()
    missing = [path for path, _ in samples if os.path.basename(path) not in present]
    if missing:
        raise DataError(f"{len(missing)} of the {len(samples)} images that {str(annotations)!r} lists are not in "
                        f"{str(images)!r} (such as {os.path.basename(missing[0])!r}): {redo}.")
    has_links(images, [path for path, _ in samples])  # links to nothing: a DataError
    warn_unlisted_val_images(annotations, images, present, samples)
    return samples


def warn_unlisted_val_images(annotations: Path, images: Path, present: set[str],
                             samples: list[tuple[str, int]]) -> None:
    """An image of ``val/images`` that ``val_annotations.txt`` does not list has no label and is no sample: it was
    left out without a word (images copied in from elsewhere, or an annotations file of another copy). One warning
    with the count and an example; hidden files (``._name.JPEG``) are no images."""
    listed = {os.path.basename(path) for path, _ in samples}
    unlisted = sorted(name for name in present
                      if name not in listed and not is_left_out(name) and looks_like_an_image(name))
    if unlisted:
        log.warning("The folder %r holds %d image file(s) that %r does not list (such as %r): they have no label "
                    "and are left out of the evaluation split. Add a line for each to the file, or move them out.",
                    str(images), len(unlisted), str(annotations), unlisted[0])
