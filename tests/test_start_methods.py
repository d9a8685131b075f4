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

from phd_lab.registry import import_registry_module
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
