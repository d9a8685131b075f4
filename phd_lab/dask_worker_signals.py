"""The worker plugin of local Dask clusters: their workers ignore the terminal's Ctrl-C.

A local cluster's worker processes share the command's process group, so a Ctrl-C in the terminal reached them
too: each cancelled its running task (a training went on in its thread, unreachable by the stop Event, until the
cluster killed it mid-epoch 30 s later) instead of letting the command stop its runs after their current batch.
The command alone takes the Ctrl-C; it stops the tasks (``distributed._stop_tasks``) and closes the cluster.
Imported only where a local cluster starts: it needs the Dask extra.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from distributed import WorkerPlugin

PLUGIN_NAME = "phd-lab-terminal-interrupts-ignored"


class TerminalInterruptsIgnored(WorkerPlugin):
    """Ignore SIGINT in the worker process (set again in every worker the nanny restarts)."""

    def setup(self, worker: Any) -> None:
        if threading.current_thread() is threading.main_thread():  # the worker's event loop runs there
            signal.signal(signal.SIGINT, signal.SIG_IGN)
