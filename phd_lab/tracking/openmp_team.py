"""torch's own OpenMP thread team, for compiled code that should share it instead of competing with it.

With more than one intra-op thread, torch's OpenMP workers keep spinning for a while after each of its
parallel regions. A second thread pool (numba's, or a Python thread) started in between competes with
them for the cores, and measured slower than one thread (benchmarks/RESULTS.md, issue 3, sessions 13-17).
Code started through ``GOMP_parallel`` of the runtime torch itself calls runs on those very workers
instead. This module finds that entry point (the one ``libtorch_cpu`` binds to, which is also the
runtime's when torch was built against Intel's or LLVM's OpenMP) and nothing else.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys

import torch

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _gomp_parallel() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """``GOMP_parallel(fn, data, num_threads, flags)`` of torch's OpenMP runtime, or None where torch's
    intra-op threads are not an OpenMP team this process can reach (another parallel backend, another
    platform, a build without a shared libtorch_cpu)."""
    if not sys.platform.startswith("linux") or not torch.backends.openmp.is_available():
        return None
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    library = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        entry = ctypes.CDLL(library).GOMP_parallel  # dlsym searches libtorch_cpu's own dependencies
    except (OSError, AttributeError) as error:
        log.debug("torch's OpenMP team is out of reach (%s): compiled tracking code runs on one thread.", error)
        return None
    entry.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    entry.restype = None
    return entry


def team_size() -> int:
    """How many threads ``run`` starts: torch's intra-op thread count, or 1 without a reachable team."""
    threads = torch.get_num_threads()
    return threads if threads > 1 and _gomp_parallel() is not None else 1


def run(body_address: int, data_address: int, threads: int) -> None:
    """Call the C function ``void body(void *data)`` once on each of ``threads`` threads of torch's team
    (the calling thread is one of them) and return when all have returned. The GIL is released meanwhile.
    The runtime may start fewer threads (an OpenMP thread limit, or a call from inside a parallel region),
    so a body must not rely on how many run it."""
    entry = _gomp_parallel()
    if entry is None:
        raise RuntimeError("torch's OpenMP team is not reachable here; check team_size() first")
    entry(body_address, data_address, threads, 0)
