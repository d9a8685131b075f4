"""phd-lab under other platforms' defaults. The multiprocessing start methods other than Linux' fork, ``spawn``
(macOS' default) and ``forkserver`` (Linux' default from Python 3.14), start a fresh interpreter that imports by
name whatever it is sent (a DataLoader worker gets the dataset); a locale's encoding may not be UTF-8."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor

import pytest

from phd_lab.registry_import import import_registry_module
from tests.conftest import ROOT


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_an_object_of_a_registry_file_given_by_path_reaches_a_worker_process(tmp_path, method):
    """A dataset class defined in a registry file given by its path (``"registries": {"datasets": "my_data.py"}``)
    made every DataLoader worker under spawn stop with 'No module named phd_lab_user_datasets_4073120602640354093'
    (a name of the process' string hash), so the run failed; its module now has a name any process imports."""
    folder = tmp_path / "my data ü"
    folder.mkdir()
    (folder / f"sizes_{method}.py").write_text("SIZE = 7\n", encoding="utf-8")  # one helper name per folder
    (folder / "my_data.py").write_text(f"from sizes_{method} import SIZE\n\nclass Blobs:\n    def __len__(self):\n"
                                       "        return SIZE\n", encoding="utf-8")
    module = import_registry_module(str(folder / "my_data.py"), "datasets")
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context(method)) as pool:
        assert pool.submit(len, module.Blobs()).result(timeout=60) == 7


def test_the_commands_write_characters_an_ascii_locale_lacks_as_escapes():
    """Under LC_ALL=POSIX without Python's UTF-8 mode (or a Latin-1 site's LANG) standard output is ASCII:
    ``--list-keys``, ``--list steps`` and ``probe_main.py --help`` stopped with a UnicodeEncodeError at their first
    '≥', '→' or '§' (exit 1). They write it as an escape now (exit 0)."""
    env = {**os.environ, "LC_ALL": "POSIX", "PYTHONUTF8": "0"}
    for script, option, escape in (("main.py", "--list-keys", b"\\u2265"), ("probe_main.py", "--help", b"\\xa7")):
        result = subprocess.run([sys.executable, str(ROOT / script), option], env=env, capture_output=True, timeout=120)
        assert result.returncode == 0, result.stderr.decode("ascii", "replace")[-500:]
        assert escape in result.stdout  # main.py: 'an integer ≥ 1'; probe_main.py: a section sign (§)


def test_a_process_that_imports_a_registry_file_by_its_name_alone_finds_it_and_the_files_beside_it(tmp_path,
                                                                                                    monkeypatch):
    """A process that did not import the registry file itself and got no module path from a parent (unpickling a
    dataset in a fresh interpreter: only multiprocessing passes its parent's sys.path on) imports it by its module
    name, and the helper beside it by the file's folder, which the import puts on the module path."""
    import importlib

    from phd_lab import registry_files
    (tmp_path / "sizes_by_name_alone.py").write_text("SIZE = 5\n", encoding="utf-8")
    (tmp_path / "my_data.py").write_text("from sizes_by_name_alone import SIZE\n", encoding="utf-8")
    name = registry_files.module_name("datasets", tmp_path / "my_data.py")
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if entry != str(tmp_path)])
    for module in (name, "sizes_by_name_alone"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    assert importlib.import_module(name).SIZE == 5 and str(tmp_path) in sys.path


def test_only_names_of_registry_files_that_exist_are_registry_modules(tmp_path):
    """The finder answers for the names ``module_name`` makes and for nothing else: a name of this package
    without a kind or with a path not in hex, or the name of a file that is gone, is no module (as for any other
    missing module), never another file executed or an error of the name's decoding."""
    import importlib

    from phd_lab import registry_files
    path = tmp_path / "registry.py"
    path.write_text("X = 1\n", encoding="utf-8")
    assert registry_files.file_of(registry_files.module_name("models", path)) == path
    for name in (f"{registry_files.__name__}.{os.fsencode(str(path)).hex()}",  # no kind
                 f"{registry_files.__name__}.models_{path}",  # not hex
                 f"elsewhere.models_{os.fsencode(str(path)).hex()}"):
        assert registry_files.file_of(name) is None, name
    for name in (f"{registry_files.__name__}.models_zz", registry_files.module_name("models", tmp_path / "gone.py"),
                 registry_files.module_name("models", tmp_path)):  # not hex; a file that is gone; a folder
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(name)


def test_a_commands_log_lines_above_its_bars_leave_the_callers_start_method_unchosen():
    """The probe job called from a script (``probe_cli``, its console at INFO) logs its first lines before it draws
    a bar: tqdm's logging redirect wrote them under tqdm's lock, which tqdm made by the default context, and a
    script that then chose its start method (``set_start_method("spawn")``) stopped with 'context has already been
    set'. A process of its own: the lock is made once per process."""
    code = """
import logging, multiprocessing
from phd_lab.cli import command_logging, logs_above_progress_bars
with command_logging(0), logs_above_progress_bars():
    logging.getLogger("phd_lab.probes.job").info("verifying 2 latents files")
assert multiprocessing.get_start_method(allow_none=True) is None
multiprocessing.set_start_method("spawn")
print(multiprocessing.get_start_method())
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and done.stdout.split() == ["spawn"], done.stderr
    assert "verifying 2 latents files" in done.stderr


def test_a_run_s_loader_workers_leave_the_callers_start_method_unchosen():
    """A DataLoader with workers (num_workers > 0) took its queues from the default context, which fixes the start
    method: a script or notebook that ran such a grid and then chose its own (``set_start_method("spawn")``)
    stopped with 'context has already been set'. The workers start by the method chosen before (or the
    platform's), and the choice is left open."""
    code = """
import multiprocessing, torch
from torch.utils.data import TensorDataset
from phd_lab.data import make_bundle
def bundle():
    data = TensorDataset(torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 0, 1]))
    return make_bundle("d", data, data, data, num_classes=2, in_channels=1, resolution=2, batch_size=2, seed=0,
                       num_workers=1)
loader = bundle().train
assert [len(batch[1]) for batch in loader] == [2, 2]
assert loader.multiprocessing_context.get_start_method() == multiprocessing.get_all_start_methods()[0]
assert multiprocessing.get_start_method(allow_none=True) is None
multiprocessing.set_start_method("spawn")
print(bundle().test.multiprocessing_context.get_start_method())
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and done.stdout.split() == ["spawn"], done.stderr
