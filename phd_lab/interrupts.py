"""Ctrl-C and SIGTERM held back while a group of files is written, so that a stop never cuts it in two."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

DEFERRED = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM are only noted; the first one noted is raised again
    once the block is done, and the handlers in place before (KeyboardInterrupt, the commands'
    ``Terminated``) act on it then. Outside the main thread, where handlers cannot be set, the
    block runs as it is; a signal the process ignores (a background job's SIGINT) stays ignored.
    SIGKILL cannot be held back: readers must still cope with a cut group."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def note(signum: int, frame: object) -> None:
        received.append(signum)

    previous = {signum: signal.signal(signum, note) for signum in DEFERRED
                if signal.getsignal(signum) is not signal.SIG_IGN}  # an ignored signal stays ignored
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        if received:
            signal.raise_signal(received[0])
