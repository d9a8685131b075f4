"""Download an archive and extract it into ``data_dir`` so that a dataset folder is whole or absent.

torchvision's helpers write the archive and its contents in place: an interrupted download left a
truncated archive that was taken for complete on the next run, an interrupted extraction a partial
folder that later runs trained on without a word, and two grid points downloading at once (Dask
workers sharing ``data_dir``) wrote the same files. Here the archive is downloaded under a temp
folder and renamed into place once complete, extracted into a staging folder and renamed into place
once complete, and the whole of it happens under an exclusive lock on a file in ``data_dir``, which
the kernel releases when its process dies (also by SIGKILL).
"""

from __future__ import annotations

import itertools
import logging
import os
import shlex
import shutil
import tarfile
import zipfile
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

from phd_lab.atomic import fsync_dir
from phd_lab.errors import DataError, FolderInTheWay
from phd_lab.lock import waiting_lock
from phd_lab.user_paths import nearest_existing

log = logging.getLogger(__name__)


def download_and_extract(url: str, root: Path, folder: str) -> Path:
    """``root/folder`` from the archive at ``url`` (which holds ``folder`` at its top), unless it is
    there already. A folder at that path is always complete: placed by the user, or renamed into
    place after a whole extraction."""
    target = root / folder
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with waiting_lock(root / f".{folder}.download.lock"):
        if target.is_dir():  # another process finished it while this one waited
            return target
        archive = root / Path(urlparse(url).path).name
        if archive.is_dir():  # was taken for a missing archive: its download was said to have failed (the network)
            raise FolderInTheWay(archive)
        refuse_foreign_link(archive)
        if not archive.is_file():
            _download(url, archive)
        staging = _fresh_folder(root / f".{folder}.extracting")  # one left by a killed extraction is removed
        log.info("Extracting %s ...", archive)
        try:
            # tar: no member may leave the staging folder or be a device file (zipfile strips such paths itself)
            shutil.unpack_archive(archive, staging, **({} if archive.suffix == ".zip" else {"filter": "data"}))
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, shutil.ReadError) as error:
            shutil.rmtree(staging, ignore_errors=True)
            raise DataError(f"The archive {str(archive)!r} is damaged ({type(error).__name__}: {error}); delete it "
                            f"and run again to download it anew.") from None
        if not (staging / folder).is_dir():
            shutil.rmtree(staging, ignore_errors=True)
            raise DataError(f"The archive {str(archive)!r} has no top folder {folder!r}; delete it and run again "
                            f"to download it anew, or place the dataset under {str(root)!r} yourself.")
        os.replace(staging / folder, target)
        fsync_dir(root)
        shutil.rmtree(staging, ignore_errors=True)
    return target


def refuse_foreign_link(archive: Path) -> None:
    """Raise a ``DataError`` where ``archive`` is a symbolic link of another user: its target was read with this
    user's rights and extracted into ``data_dir``, so a link planted in a shared ``data_dir`` (mode 1777) to a file
    only this user may read had its contents unpacked where the link's owner could read them. A link of this user's
    own (an archive placed by hand elsewhere) or of root's (an administrator's, who may read anything) is followed,
    as is any regular file there."""
    try:
        owner = archive.lstat().st_uid if archive.is_symlink() else None
    except OSError:  # gone meanwhile: downloaded anew
        return
    if owner is None or owner in (os.geteuid(), 0):
        return
    try:
        target = os.readlink(archive)
    except OSError:
        target = "?"
    raise DataError(f"The archive {str(archive)!r} is a symbolic link (to {target!r}) of another user (uid {owner}): "
                    f"phd-lab would read what it names with your rights and unpack it into {str(archive.parent)!r}, "
                    f"where the link's owner may read it (a shared data_dir may carry such a link). Nothing was read; "
                    f"delete the link (rm {shlex.quote(str(archive))}), or copy the archive there yourself, and run "
                    f"again.")


def _fresh_folder(path: Path) -> Path:
    """``path`` made anew as an empty folder of this process, whatever a killed process (or someone sharing
    ``data_dir``) left there. A symbolic link there is removed, not followed: ``rmtree`` leaves a link alone, and
    the archive was then extracted into the folder it names (``~/stuff``), overwriting its files, and that folder's
    ``<dataset>/`` moved into ``data_dir``. ``mkdir`` fails where a link appears again before it."""
    try:
        if path.is_symlink() or path.is_file():
            path.unlink()
        else:
            shutil.rmtree(path, ignore_errors=True)
        path.mkdir()
    except OSError as error:  # another user's leftover in a shared data_dir, or a link planted again
        raise DataError(f"{str(path)!r}, left by a download or extraction that was killed, cannot be replaced "
                        f"({error.strerror or error}); remove it (rm -r {shlex.quote(str(path))}, or ask its owner) "
                        f"and run again.") from None
    return path


def _download(url: str, archive: Path) -> None:
    """The file at ``url`` as ``archive``, renamed into place only once it is whole."""
    from torchvision.datasets.utils import download_url
    partial = _fresh_folder(archive.parent / f".{archive.name}.partial")  # one left by a killed download is removed
    log.info("Downloading %s ...", url)
    try:
        download_url(url, str(partial), filename=archive.name)
    except BaseException:  # no network, a wrong URL, Ctrl-C: nothing of it stays behind
        shutil.rmtree(partial, ignore_errors=True)
        raise
    os.replace(partial / archive.name, archive)
    fsync_dir(archive.parent)
    shutil.rmtree(partial, ignore_errors=True)


def missing_folders(path: Path) -> list[Path]:
    """``path`` and its parents that do not exist yet (nearest first): what a download would make for it."""
    existing = nearest_existing(path)
    return list(itertools.takewhile(lambda folder: folder != existing, (path, *path.parents)))


def remove_empty_folders_since(root: Path, before: set[str] | None, made: Sequence[Path] = ()) -> None:
    """Remove the empty folders a failed download made: below the entries of ``root`` that were not in
    ``before`` (its entries before the download; None: ``root`` did not exist), and the folders of ``made``
    (``missing_folders`` of ``root`` before it), nearest first. Files, and folders that were there before, stay."""
    try:
        entries = list(root.iterdir()) if root.is_dir() else []
    except OSError:  # a folder one may enter but not list: leave it alone
        return
    for entry in entries:
        if before is not None and entry.name in before or not entry.is_dir() or entry.is_symlink():
            continue
        for folder, _, _ in sorted(os.walk(entry), key=lambda walked: -len(walked[0])):  # the deepest first
            try:
                os.rmdir(folder)
            except OSError:  # not empty
                pass
    for folder in made:
        try:
            folder.rmdir()
        except OSError:  # not empty, or gone
            break
