"""The commands' entry (main.py, probe_main.py, ``python -m phd_lab``): their command imported and run under one
guard for a Ctrl-C that lands before the command's own handling of it begins, while its modules are imported or its
options read (it ended the command with a KeyboardInterrupt traceback). Only the standard library is imported here,
so that the guard is in place before the command's modules load."""

import importlib
import os
from typing import Any


def run_command(module: str, function: str, *args: Any, **kwargs: Any) -> int:
    """The exit status of ``module.function(*args, **kwargs)``; 130, said in a line, for a Ctrl-C before it handles
    one itself."""
    try:
        return getattr(importlib.import_module(module), function)(*args, **kwargs)
    except KeyboardInterrupt:
        try:
            os.write(2, b"interrupted\n")
        except OSError:  # stderr closed
            pass
        return 130
