"""Streaming ``.npy`` files for the latent extraction: rows appended batch by batch, hashed as written.

A dataset's latents do not fit in memory, so each layer's file is written row block by row block behind
an ``np.lib.format`` header, on a background thread that overlaps with the next forward pass. The sha256
of every file comes from the written bytes, so the manifest needs no second read of the files.
"""

from __future__ import annotations

import collections
import hashlib
import io
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from phd_lab import atomic
from phd_lab.errors import ExtractionError


class RowWriter:
    """Appends batches of rows to a ``.npy`` file of ``rows`` rows, hashing what it writes.

    The file is an ``atomic.atomic_open`` temp file held open from the header to the last row:
    rows go through a plain file handle, so written pages sit in the page cache, not in this
    process, and the sha256 of the finished file comes from the written bytes without reading
    the file again. ``finish`` completes it (fsync, rename); ``close`` before that discards it.
    """

    def __init__(self, path: Path, rows: int, row_shape: tuple[int, ...], dtype: str) -> None:
        self.path = Path(path)
        self.rows, self.row_shape, self.dtype = rows, tuple(row_shape), np.dtype(dtype)
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                      "fortran_order": False, "shape": (rows, *self.row_shape)})
        self._file = atomic.atomic_open(self.path, "wb")
        self.handle = self._file.__enter__()
        self.handle.write(header.getvalue())
        self.digest = hashlib.sha256(header.getvalue())
        self.position = 0
        self.sha256: str | None = None

    def append(self, block: np.ndarray) -> None:
        count = len(block)
        if self.position + count > self.rows:
            raise ExtractionError(f"{self.path.name}: more rows than the {self.rows} samples of the dataset")
        data = np.ascontiguousarray(block, dtype=self.dtype)
        if data.shape[1:] != self.row_shape:
            raise ExtractionError(f"{self.path.name}: rows of shape {data.shape[1:]}, expected {self.row_shape}")
        view = memoryview(data).cast("B")
        try:
            self.handle.write(view)
        except OSError as error:  # a full disk: the error names no file
            atomic.name_the_file(error, self.path)
            raise
        self.digest.update(view)
        self.position += count

    def finish(self) -> Path:
        if self.position != self.rows:
            error = ExtractionError(f"{self.path.name}: {self.position} rows written, the dataset has {self.rows}; "
                                    f"the loader must not drop samples.")
            self._discard(error)
            raise error
        self._file.__exit__(None, None, None)
        self.sha256 = self.digest.hexdigest()
        return self.path

    def close(self) -> None:
        """Discard the file if it was not finished (after an error); no-op once finished."""
        if not self.handle.closed:
            self._discard(ExtractionError(f"{self.path.name}: extraction interrupted"))

    def _discard(self, error: BaseException) -> None:
        self._file.__exit__(type(error), error, None)  # atomic_open removes the temp file


class BackgroundWriter:
    """Runs write jobs in order on one thread, at most ``depth`` behind the caller.

    Copying rows into the page cache and hashing them release the GIL, so they overlap with
    the next batch's forward pass; the bounded queue keeps memory constant. ``drain`` waits
    for every job and re-raises the first error.
    """

    def __init__(self, depth: int = 2) -> None:
        self.depth = depth
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="extract-writer")
        self.pending: collections.deque[Future] = collections.deque()

    def submit(self, job: Any, *args: Any) -> None:
        while len(self.pending) >= self.depth:
            self.pending.popleft().result()
        self.pending.append(self.pool.submit(job, *args))

    def drain(self) -> None:
        while self.pending:
            self.pending.popleft().result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def append_rows(pairs: list[tuple[RowWriter, np.ndarray]]) -> None:
    for writer, rows in pairs:
        writer.append(rows)
