"""The commands' own text on stdout and stderr, which may be closed, a pipe whose reader has gone, or of an
encoding that lacks some of its characters.

A command's product is its run folders, probe tables or report page; what it prints (the folders written, a
listing, an error paragraph) tells the user about them. A stdout closed by the caller (``>&-``: Python then sets
``sys.stdout`` to None) or a pipe whose reader stopped reading (``| head -1``) once turned a finished grid into
exit 1 with a traceback, after the training. Here such text is lost, not the command: its exit status stays what
its work made it. A character the encoding lacks is written as its escape.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import io
import logging
import os
import sys
from typing import Any, Callable, TextIO, TypeVar

log = logging.getLogger("phd_lab")


def _escaped(error: UnicodeError) -> tuple[bytes, int]:
    """Encoding error handler of ``readable_output``: a file name's undecodable bytes (lone surrogates, as Python
    reads them) go out as they were, and any other character the stream's encoding lacks as its backslash escape
    (≥ as \\u2265)."""
    if not isinstance(error, UnicodeEncodeError):
        raise error
    out = b"".join(bytes([ord(char) - 0xDC00]) if 0xDC80 <= ord(char) <= 0xDCFF
                   else char.encode("ascii", "backslashreplace") for char in error.object[error.start:error.end])
    return out, error.end


codecs.register_error("phd_lab_escape", _escaped)
Command = TypeVar("Command", bound=Callable[..., int])


def readable_output(command: Command) -> Command:
    """Run a command with standard output that writes every character: under a locale whose encoding lacks one
    (LC_ALL=POSIX without Python's UTF-8 mode, a Latin-1 site's LANG, PYTHONIOENCODING=ascii), ``--list-keys``,
    ``--list steps`` and the probe job's ``--help`` stopped with a UnicodeEncodeError at their first '≥' or '→'
    (exit 1). The caller's setting comes back when the command returns."""
    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> int:
        stream = sys.stdout
        before = getattr(stream, "errors", None)
        if not hasattr(stream, "reconfigure") or before is None:  # not a text stream of a file (a notebook's own)
            return command(*args, **kwargs)
        stream.reconfigure(errors="phd_lab_escape")
        try:
            return command(*args, **kwargs)
        finally:
            with contextlib.suppress(ValueError, OSError):  # closed meanwhile
                stream.reconfigure(errors=before)
    return run  # type: ignore[return-value]


def write_stdout(text: str) -> None:
    """Print a command's result on stdout. Closed, or a disk that is full (``> /dev/full``): a warning on stderr
    says what was not printed; a reader that has gone (a broken pipe) chose to stop, so the rest goes quietly.
    Characters the stream's encoding lacks are the commands' ``readable_output``'s."""
    stream = sys.stdout
    if stream is None:
        log.warning("stdout is closed, so this command's output was not printed (it begins %r).", _first_line(text))
        return
    error = _written(stream, text)
    if error is not None:
        log.warning("stdout could not be written (%s), so this command's output was not printed (it begins %r).",
                    getattr(error, "strerror", None) or error, _first_line(text))


def write_stderr(text: str) -> None:
    """Write a command's message (an error paragraph, how to resume) on stderr; nothing where it is closed or its
    reader has gone: there is nowhere left to say it, and the exit status still tells."""
    if sys.stderr is not None:
        _written(sys.stderr, text)


def _written(stream: TextIO, text: str) -> Exception | None:
    """Write and flush ``text``; the error that lost it (OSError, or ValueError for a stream closed in this
    process), or None where it went out or its reader has gone (a broken pipe: the rest goes nowhere)."""
    try:
        stream.write(text)
        stream.flush()
    except BrokenPipeError:
        _discard_further_output(stream)
    except (OSError, ValueError) as error:
        return error
    return None


class BarStream:
    """stderr as the progress bars write to it: a reader that has gone (``main.py ... 2>&1 | head``) ends the bars,
    where tqdm's BrokenPipeError failed the run that drew them; the run's log file still gets every line. Compares
    equal to the stream it wraps, as tqdm's own wrapper does: tqdm clears the bars of that stream before it writes a
    log line there."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            _discard_further_output(self._stream)
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            _discard_further_output(self._stream)

    def __getattr__(self, name: str) -> object:  # isatty, fileno, encoding: tqdm sizes and draws the bars by them
        return getattr(self._stream, name)

    def __eq__(self, other: object) -> bool:
        return self._stream == getattr(other, "_stream", other)

    def __hash__(self) -> int:
        return hash(self._stream)


class BarLines(BarStream):
    """stderr that is no terminal (a SLURM job's ``.out``, a pipe) as the progress bars write to it: each drawing on
    a line of its own. tqdm draws a bar as ``\r<bar>`` and clears it with ``\r<spaces>\r``, which a terminal
    overwrites; a file kept both, so the next log line began with ``\r...0%...\r<spaces>\r`` and grep or an
    editor showed the fragment in front of it. The clearings (and a nested bar's cursor moves) are dropped."""

    def write(self, text: str) -> int:
        drawn = [piece.rstrip() for piece in text.replace("\x1b[A", "").replace("\r", "\n").split("\n")]
        lines = "".join(f"{piece}\n" for piece in drawn if piece)
        if lines:
            super().write(lines)
        return len(text)


class Discarded(io.TextIOBase):
    """A text stream that drops what is written to it: the progress bars' where stderr is closed (tqdm fell back on
    ``sys.stderr``, None, and the run failed at its first bar)."""

    def write(self, text: str) -> int:
        return len(text)


def _discard_further_output(stream: TextIO) -> None:
    """Point the broken stream's file descriptor at the null device: Python flushes stdout and stderr at exit and
    printed 'Exception ignored ... BrokenPipeError' (exit status 120) for the text still in their buffer."""
    try:
        fd = stream.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError, AttributeError):  # no descriptor (a stream of this process): nothing flushes it
        return
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)


def _first_line(text: str) -> str:
    """The first line of ``text``, shortened, to name lost output in a warning."""
    line = text.strip().split("\n", 1)[0]
    return line if len(line) <= 80 else line[:77] + "..."
