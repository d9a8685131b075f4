"""phd-lab under the multiprocessing start methods other than Linux' fork: ``spawn`` (macOS' default) and
``forkserver`` (Linux' default from Python 3.14) start a fresh interpreter that imports by name whatever it is
sent (a DataLoader worker gets the dataset)."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import pytest

from phd_lab.registry import import_registry_module


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
