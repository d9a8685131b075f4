"""Facts about the machine and the software: the software a run used is recorded in its logged config."""

from __future__ import annotations

import errno
import hashlib
import importlib
import importlib.metadata
import os
import platform
import resource
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping


# Environment variables that set the thread count of OpenMP, MKL and OpenBLAS in a new process.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

# Environment variables that cap the CPU instruction set of torch's own kernels and of oneDNN's (set before torch
# is imported): another instruction set sums in another order, and the same config trains other weights. oneDNN
# also reads its older name DNNL_MAX_CPU_ISA, where ONEDNN_MAX_CPU_ISA is unset or empty (``_dnnl_ignored``).
# MKL_CBWR picks the code path of MKL, torch's CPU BLAS (its matrix products: Linear layers): vgg11 on Digits
# trained other weights under MKL_CBWR=COMPATIBLE or AVX2 on an AVX-512 CPU, and a rerun under it said nothing of it.
# It is logged as set (a value MKL ignores is named too).
CPU_ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_CBWR")

# MKLDNN_MAX_CPU_ISA, oneDNN's name of old: torch's ideep copies it over DNNL_MAX_CPU_ISA (its C environment's, which
# os.environ does not see) when torch is loaded, where it is set and not empty, so it caps oneDNN as that does
# (ONEDNN_VERBOSE said 'isa:Intel SSE4.1' under MKLDNN_MAX_CPU_ISA=sse41 alone). It is logged as the
# DNNL_MAX_CPU_ISA it becomes (``_dnnl_value``).
MKLDNN_MAX_CPU_ISA = "MKLDNN_MAX_CPU_ISA"

# The longest value oneDNN reads from an environment variable (its getenv_string_user reads into 128 bytes and
# skips a longer value, as if unset).
ONEDNN_VALUE_LIMIT = 127

# The values of ONEDNN_MAX_CPU_ISA that cap oneDNN's instruction set, lower-case (oneDNN 3, which torch 2.7 and later
# bundle, lower-cases the value it reads): those its "CPU Dispatcher Control" guide lists for x86-64, with the
# AVX512_CORE_* aliases of the AVX10_1_512 ones, the AVX10_2 opt-ins (ISAs oneDNN does not dispatch unless named
# here, with their *_512 aliases; oneDNN 3.12, which torch 2.14 bundles, knows avx10_2_512 and avx10_2_512_amx_2),
# and those its AArch64 code takes. oneDNN ignores any other value ("abc", or oneDNN 2's AVX512_MIC), as it does
# DEFAULT, which lifts no cap: it runs its best kernels, as unset.
ONEDNN_ISA_CAPS = frozenset({
    "sse41", "avx", "avx2", "avx2_vnni", "avx2_vnni_2", "avx512_core", "avx512_core_vnni", "avx512_core_bf16",
    "avx10_1_512", "avx512_core_fp16", "avx10_1_512_amx", "avx512_core_amx", "avx10_1_512_amx_fp16",
    "avx512_core_amx_fp16", "avx10_2", "avx10_2_512", "avx10_2_amx_2", "avx10_2_512_amx_2", "avx10_2_ace", "asimd",
    "sve_128", "sve_256", "sve_512"})


def available_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity where the OS reports it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


LIMIT_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOMEM)  # a read that fails so says nothing about the file


def limit_refusal(error: BaseException) -> str | None:
    """What to tell the user when the system refused the command a new thread (``RuntimeError: can't start new
    thread``), process (``BlockingIOError`` EAGAIN from a fork or spawn), open file (EMFILE, ENFILE) or memory
    map (ENOMEM), or None for another error (``LIMIT_ERRNOS``: what no file is to blame for). A node's limit of
    processes per user (``ulimit -u``; threads count too), of address space (``ulimit -v``: a thread's stack must
    be mapped) or of open files (``ulimit -n``) ended the probe job with a traceback, though only the limits were
    wrong."""
    if isinstance(error, RuntimeError) and "can't start new thread" in str(error):
        what, limits = "thread", ("-u", "-v")
    elif isinstance(error, BlockingIOError) and error.errno == errno.EAGAIN and _raised_by_a_start(error):
        what, limits = "process", ("-u", "-v")
    elif isinstance(error, OSError) and error.errno in (errno.EMFILE, errno.ENFILE):
        what, limits = "open file", ("-n",)
    elif isinstance(error, OSError) and error.errno == errno.ENOMEM:  # a memory map of a file, a buffer
        what, limits = "piece of memory", ("-v",)
    else:
        return None
    return (f"The system refused this command a new {what} ({error}): it reached a limit of this machine "
            f"({ulimits(*limits)}; a batch system's cgroup may set others). Raise the limit, or use fewer worker "
            f"processes (-mp, num_workers) or threads (cpu_threads), and rerun the same command: work finished "
            f"before is kept.")


def _raised_by_a_start(error: BaseException) -> bool:
    """Whether ``error`` came out of starting a process (multiprocessing's or subprocess' Popen)."""
    traceback = error.__traceback__
    while traceback is not None:
        code = traceback.tb_frame.f_code
        if "multiprocessing" in code.co_filename or code.co_filename.endswith("subprocess.py"):
            return True
        traceback = traceback.tb_next
    return False


_ULIMIT_FLAGS = {"-u": "RLIMIT_NPROC", "-v": "RLIMIT_AS", "-n": "RLIMIT_NOFILE", "-s": "RLIMIT_STACK"}


def ulimits(*flags: str) -> str:
    """This process' limits as ``ulimit`` shows them (the soft ones; KiB for -v and -s): 'ulimit -u 4096, ulimit -v
    unlimited'; '?' for a kind this system does not have."""
    return ", ".join(f"ulimit {flag} {_limit_text(_ULIMIT_FLAGS[flag])}" for flag in flags)


def _limit_text(kind: str) -> str:
    try:
        soft, _ = resource.getrlimit(getattr(resource, kind))
    except (AttributeError, ValueError, OSError):
        return "?"
    return "unlimited" if soft == resource.RLIM_INFINITY else str(soft // 1024 if kind in ("RLIMIT_AS", "RLIMIT_STACK")
                                                                   else soft)


def available_memory(meminfo: Path = Path("/proc/meminfo"), cgroups: Path = Path("/sys/fs/cgroup"),
                     membership: Path = Path("/proc/self/cgroup")) -> int | None:
    """Bytes of memory this process may still take: the kernel's MemAvailable, or less where a memory cgroup (a
    batch system's job, a container) on the way from this process' cgroup to the root limits it. A cgroup's
    headroom is its limit minus its usage, less the file cache it could drop (``inactive_file``). None where
    nothing can be read (not Linux)."""
    limits = []
    try:
        with open(meminfo, encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    limits += _cgroup_headrooms(cgroups, membership)
    return min(limits) if limits else None


def _cgroup_headrooms(root: Path, membership: Path) -> list[int]:
    """The memory headroom of every limited memory cgroup from this process' own up to the root (cgroup v2, or
    v1's ``memory`` controller; ``membership`` names the process' cgroups)."""
    try:
        # a path's bytes, named as this process names files: read as UTF-8, a '数据' under LC_ALL=C without UTF-8
        # mode (or a Latin-1 locale) named no file, or another, and the cgroup's limit was missed
        lines = os.fsdecode(membership.read_bytes()).splitlines()
    except OSError:
        return []
    folders = []
    for line in lines:
        number, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if number == "0" and controllers == "":  # v2: <root>/<path>/memory.max
            base = root
        elif "memory" in controllers.split(","):  # v1: <root>/memory/<path>/memory.limit_in_bytes
            base = root / "memory"
        else:
            continue
        relative = path.strip().strip("/")
        own = base / relative
        folders += [own, *own.parents[:len(Path(relative).parts)]]
    headrooms = []
    for folder in dict.fromkeys(folders):
        for limit_file, usage_file, inactive_key in (("memory.max", "memory.current", "inactive_file"),
                                                     ("memory.limit_in_bytes", "memory.usage_in_bytes",
                                                      "total_inactive_file")):
            try:
                limit = (folder / limit_file).read_text(encoding="ascii").strip()
                if limit == "max" or int(limit) >= 1 << 60:  # v1 writes its "unlimited" as a huge number
                    continue
                usage = int((folder / usage_file).read_text(encoding="ascii"))
                stat = dict(line.split() for line in (folder / "memory.stat").read_text(encoding="ascii").splitlines()
                            if len(line.split()) == 2)
                headrooms.append(max(0, int(limit) - usage + int(stat.get(inactive_key, 0))))
            except (OSError, ValueError):
                continue
    return headrooms


# git's variables that choose the repository and its files, which then are not the checkout phd-lab lies in
_GIT_REPOSITORY_VARIABLES = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
                             "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_COMMON_DIR", "GIT_NAMESPACE")


def _run_git_bytes(*args: str, timeout: float, ok: tuple[int, ...] = (0,)) -> bytes | None:
    """Output of a git command run in the package's folder as git wrote it, or None (no git, not a repository,
    failed). A patch holds the files' own bytes: text mode turned the CRLF line ends of such a file into LF, and
    decoding it as UTF-8 made a Latin-1 file's 'é' U+FFFD; either way a patch git cannot apply.

    GIT_OPTIONAL_LOCKS=0: ``git status`` would otherwise rewrite the checkout's index to refresh its file stamps,
    so recording where a run came from wrote into the user's repository (and a run killed meanwhile, or a full
    disk, left its ``index.lock`` behind, which blocks the user's next commit). Without the variables that name
    another repository (``_GIT_REPOSITORY_VARIABLES``): a ``GIT_DIR`` exported for a dotfiles repository made
    every run log no commit at all."""
    env = {name: value for name, value in os.environ.items() if name not in _GIT_REPOSITORY_VARIABLES}
    try:
        result = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True,
                                timeout=timeout, check=False, env={**env, "GIT_OPTIONAL_LOCKS": "0"})
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode in ok else None


def _run_git(*args: str, timeout: float) -> str | None:
    """``_run_git_bytes`` read as UTF-8 whatever the locale (an ASCII locale made a 'σ' in a path U+FFFD): for
    git's own answers (a commit, a folder, a status), not for a patch."""
    output = _run_git_bytes(*args, timeout=timeout)
    return output.decode("utf-8", errors="replace") if output is not None else None


@lru_cache(maxsize=1)
def _own_checkout() -> bool:
    """Whether the package lies in the top folder of a git repository: a copy installed inside another
    project's repository would otherwise report that project's commit."""
    top = _run_git("rev-parse", "--show-toplevel", timeout=5)
    return top is not None and Path(top.strip()).resolve() == Path(__file__).resolve().parent.parent


def _git(*args: str, timeout: float) -> str | None:
    """Output of a git command in the phd-lab checkout, or None when the package is not its own checkout."""
    return _run_git(*args, timeout=timeout) if _own_checkout() else None


def _git_bytes(*args: str, timeout: float) -> bytes | None:
    """``_git``'s output as git wrote it (for a patch, which holds the files' own bytes)."""
    return _run_git_bytes(*args, timeout=timeout) if _own_checkout() else None


def git_commit() -> str | None:
    """The commit of the phd-lab checkout, if it is a git checkout and git is installed. Asked anew each time, as
    ``git_dirty`` and ``git_diff`` are (3 ms): cached per process, a notebook or Dask worker that saw a new commit
    logged the old one beside the new checkout's dirty flag and patch, which apply to no code that ran."""
    head = _git("rev-parse", "HEAD", timeout=5)
    return head.strip() or None if head is not None else None


def git_dirty() -> bool | None:
    """Whether the phd-lab checkout has uncommitted changes to tracked files (then ``git_commit`` alone does
    not say which code ran); None when it is no git checkout or git is missing."""
    status = _git("status", "--porcelain", "--untracked-files=no", timeout=10)
    untracked = untracked_code()
    return bool(status.strip() or untracked) if status is not None and untracked is not None else None


def untracked_code() -> list[str] | None:
    """The checkout's untracked ``.py`` files that git does not ignore, as paths from its top folder: code a
    tracked file may import (a new model module beside the ones it registers), which ``git_commit`` and the patch of
    the tracked files do not hold. None when it is no git checkout or git is missing. Other untracked files (the
    user's configs, notebooks, data) are no code that runs and are left out."""
    listed = _git_bytes("ls-files", "-z", "--others", "--exclude-standard", "--full-name", "--", ":(top)*.py",
                        timeout=10)
    if listed is None:
        return None
    top, environments = Path(__file__).resolve().parent.parent, {}
    return sorted(name for name in (entry.decode("utf-8", errors="surrogateescape") for entry in listed.split(b"\0")
                                    if entry) if not _in_an_environment(top, name, environments))


ENVIRONMENT_MARKERS = ("pyvenv.cfg", "conda-meta")  # the root of a virtual environment, of a conda prefix


def _in_an_environment(top: Path, name: str, known: dict[Path, bool]) -> bool:
    """Whether the untracked file ``name`` (from the checkout's ``top``) lies in a Python environment kept inside the
    checkout but not in .gitignore (``python -m venv venv``): its installed packages are no code of phd-lab, and
    would put all of site-packages into every run's patch. ``known``: the folders already looked at."""
    folder = (top / name).parent
    seen = []
    while folder != top and folder not in known and top in folder.parents:
        seen.append(folder)
        if any((folder / marker).exists() for marker in ENVIRONMENT_MARKERS):
            known.update(dict.fromkeys(seen, True))
            return True
        folder = folder.parent
    inside = known.get(folder, False)
    known.update(dict.fromkeys(seen, inside))
    return inside


def git_diff() -> bytes | None:
    """The uncommitted changes to tracked files of the phd-lab checkout as a patch against its commit
    (binary files included): with ``git apply`` on that commit it restores the code a run used. Its bytes are
    git's, not text: a file in another encoding than UTF-8 (Latin-1) or with CRLF line ends is in it as it is.
    b"" when there are none; None when it is no git checkout or git is missing.

    ``git diff-index -p`` gives the patch of ``git diff HEAD --binary`` (without its rename detection) but, unlike
    it, does not rewrite the checkout's index (GIT_OPTIONAL_LOCKS does not stop ``git diff``) and ignores the
    user's diff settings (``diff.noprefix``, ``diff.algorithm``), so one code state gives one patch.

    The untracked ``.py`` files (``untracked_code``) follow as new files: a run of a model module not yet committed
    logged a patch that imported it without holding it, and a rerun after that module changed warned of nothing."""
    patch = _git_bytes("diff-index", "-p", "--binary", "--no-color", "--no-ext-diff", "HEAD", timeout=30)
    untracked = untracked_code()
    if patch is None or untracked is None:
        return None
    top = str(Path(__file__).resolve().parent.parent)  # _git_bytes answered: the package's parent is the top
    for name in untracked:  # status 1: the file differs from /dev/null, as it always does
        added = _run_git_bytes("-C", top, "diff", "--no-index", "--binary", "--no-color", "--no-ext-diff",
                               "--no-textconv", "--src-prefix=a/", "--dst-prefix=b/", "--", os.devnull, name,
                               timeout=30, ok=(0, 1))
        if added is None:  # removed since it was listed, or unreadable: not code that can run
            continue
        patch += added
    return patch


def device_description(device: Any) -> dict[str, Any]:
    """The device a run computed on, as resolved ('auto' logged as what it became) and by model name."""
    import torch
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = cpu_model() or platform.processor() or platform.machine()
    return {"device": str(device), "device_name": name}


def cpu_architectures() -> set[str]:
    """The names this machine's CPU architecture goes by (platform.machine() "x86_64", "arm64"; platform.processor()
    "x86_64", "arm", or empty): versions before the CPU's model was read from /proc/cpuinfo logged one of them as a
    CPU run's device_name."""
    return {name for name in (platform.machine(), platform.processor()) if name}


def cpu_instruction_set() -> dict[str, Any]:
    """The instruction set torch's CPU kernels use here (AVX2, AVX512, DEFAULT) and the variables that cap it
    (None: unset, or set empty, which torch and oneDNN read as unset: ``export ATEN_CPU_CAPABILITY=`` in a
    cluster's module file, or set to a value they ignore: ``isa_variables_in_effect``), logged with a run and
    compared on a rerun: they change the last bits of CPU results."""
    import torch
    capability = torch.backends.cpu.get_cpu_capability()
    variables = {name: os.environ.get(name) or None for name in CPU_ISA_VARIABLES}
    variables["DNNL_MAX_CPU_ISA"] = _dnnl_value(os.environ)
    return {"cpu_capability": capability, "cpu_isa_variables": isa_variables_in_effect(variables, capability)}


def _dnnl_value(environ: Mapping[str, str]) -> str | None:
    """DNNL_MAX_CPU_ISA as oneDNN reads it under torch: MKLDNN_MAX_CPU_ISA where that is set and not empty
    (``MKLDNN_MAX_CPU_ISA``), else DNNL_MAX_CPU_ISA; None where neither is. A rerun under MKLDNN_MAX_CPU_ISA=sse41
    trained other weights without a warning, the variable neither logged nor compared."""
    return environ.get(MKLDNN_MAX_CPU_ISA) or environ.get("DNNL_MAX_CPU_ISA") or None


def isa_variables_in_effect(variables: Any, capability: Any) -> Any:
    """``variables`` with a value torch or oneDNN ignored read as unset (unchanged where it is no mapping, in an
    older ``_meta``): a rerun without such a value runs the same kernels. See ``_aten_ignored`` and
    ``ONEDNN_ISA_CAPS``: ``ONEDNN_MAX_CPU_ISA=abc`` was logged as set, and a rerun without it warned of another
    setup. DNNL_MAX_CPU_ISA is read the same way where oneDNN reads it (``_dnnl_ignored``)."""
    if not isinstance(variables, Mapping):
        return variables
    checks = {"ATEN_CPU_CAPABILITY": _aten_ignored, "ONEDNN_MAX_CPU_ISA": _onednn_ignored,
              "DNNL_MAX_CPU_ISA": lambda value, _: _dnnl_ignored(value, variables.get("ONEDNN_MAX_CPU_ISA"))}
    ignored = [name for name, ignores in checks.items() if variables.get(name) and ignores(variables[name], capability)]
    return {**variables, **dict.fromkeys(ignored)} if ignored else variables


def _aten_ignored(value: Any, capability: Any) -> bool:
    """Whether torch ignored ``ATEN_CPU_CAPABILITY=value``: it takes only the lower-case name of a kernel set it was
    built with ("default", "avx2", "avx512", ...) and for any other value ("abc", "AVX2") warns 'ignoring invalid
    value' and picks the CPU's best, as if unset. Such a value is in effect exactly when it names the instruction
    set torch chose (``capability``); not known where that is unknown (an older ``_meta``): then False."""
    return isinstance(capability, str) and value != capability.lower()


def _onednn_ignored(value: Any, capability: Any) -> bool:
    """Whether oneDNN runs as if ``ONEDNN_MAX_CPU_ISA=value`` were unset: a value no oneDNN knows ("abc"), or
    DEFAULT (``ONEDNN_ISA_CAPS``). ``capability`` (torch's own kernels) has no part in it."""
    return not isinstance(value, str) or value.lower() not in ONEDNN_ISA_CAPS


def _dnnl_ignored(value: Any, onednn_value: Any) -> bool:
    """Whether oneDNN runs as if ``DNNL_MAX_CPU_ISA=value`` were unset: oneDNN reads ONEDNN_MAX_CPU_ISA first and
    DNNL_MAX_CPU_ISA only where that is unset, empty or too long to read, so DNNL_MAX_CPU_ISA=sse41 caps nothing
    beside ONEDNN_MAX_CPU_ISA=abc (which oneDNN takes, and ignores); otherwise as ``_onednn_ignored``.
    ``onednn_value`` is ONEDNN_MAX_CPU_ISA as read from the environment, before an ignored value is nulled."""
    overridden = isinstance(onednn_value, str) and 0 < len(onednn_value) <= ONEDNN_VALUE_LIMIT
    return overridden or _onednn_ignored(value, None)


def cpu_model() -> str | None:
    """The CPU's model name on Linux ("AMD EPYC 7B13"); platform.processor() gives only "x86_64" there."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        return None
    return None


def package_sha256(package: Path | None = None) -> str:
    """sha256 of the phd_lab package's Python source: each ``.py`` file's path inside the package and the
    sha256 of its bytes, in path order. It tells which code ran where no git commit does (a copy installed
    or synced to a cluster node without its ``.git``); read anew each time, as the commit is (about 5 ms).
    ``package``: another copy's package folder (default: this one)."""
    package = package or Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py"), key=lambda found: found.relative_to(package).as_posix()):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def versions() -> dict[str, Any]:
    import numpy
    import torch
    import torchvision

    from phd_lab import __version__
    return {"phd_lab": __version__, "git_commit": git_commit(), "git_dirty": git_dirty(),
            "phd_lab_sha256": package_sha256(),
            "python": platform.python_version(),
            "torch": torch.__version__, "torchvision": torchvision.__version__, "numpy": numpy.__version__,
            "scikit_learn": installed_version("scikit-learn", "sklearn"), "numba": _numba_version()}


def installed_version(distribution: str, module: str) -> str:
    """A library's version from its installed metadata, without importing it: the probe driver needs only
    scikit-learn's version, and importing it takes 1.5-2.7 s before the workers can start theirs.
    The module's ``__version__`` where the metadata is missing (a source checkout on the path)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return importlib.import_module(module).__version__


def _numba_version() -> str | None:
    """numba compiles the CPU tracking kernel (fastmath reassociation: its version can move the last bits of
    saturation columns); None where it is not installed (tracking then takes the torch path)."""
    try:
        return importlib.metadata.version("numba")
    except Exception:  # noqa: BLE001 - PackageNotFoundError, or broken metadata
        return None
