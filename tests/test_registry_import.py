"""Importing registry files given by their paths (``phd_lab.registry_import``) from real folders: two threads of
one process, a project moved within one process, and the messages for a registry name that is no module."""

from __future__ import annotations

import hashlib
import importlib.machinery
import sys
import threading
import types
from pathlib import Path

from phd_lab import registry_import
from phd_lab.registry import Registries
from phd_lab.registry_import import import_registry_module

WAIT_S = 60  # only ever reached where the import is broken: every wait of these tests ends on an event first


def _waits_for_the_import_lock(thread: threading.Thread) -> bool:
    """Whether ``thread`` stands at the lock of ``import_registry_module`` (its innermost Python frame is that
    function's, at the line that takes the lock), which another thread holds: it cannot go on before that
    thread's import ends."""
    frame = sys._current_frames().get(thread.ident)
    code = registry_import.import_registry_module.__code__
    if frame is None or frame.f_code is not code:
        return False
    return "with _IMPORT_LOCK" in Path(code.co_filename).read_text().splitlines()[frame.f_lineno - 1]


def test_a_registry_file_imported_in_another_thread_waits_until_the_first_import_ends(tmp_path):
    """Two threads of one process (a notebook running two grids in threads, ``Main`` called from two threads)
    importing registry files at once edited sys.path and sys.modules over each other: the second file's code ran
    while the first one's folder was on the module path and its helpers hidden. The first file's code here starts
    the second import in another thread and waits until that import either ran its code (no lock) or waits for the
    lock; the second file's code runs only after the first import ended. The first file imports a helper beside it
    and another registry file in its own thread (the lock is re-entrant)."""
    probe_name = f"reglock_probe_{tmp_path.name}"
    helper = f"reglock_helper_{tmp_path.name}"  # one module per name in a process
    for name in ("first", "second", "nested"):
        (tmp_path / name).mkdir()
    (tmp_path / "first" / f"{helper}.py").write_text("WIDTH = 3\n")
    (tmp_path / "first" / "models.py").write_text(
        f"import sys\n\nfrom {helper} import WIDTH\n\nprobe = sys.modules[{probe_name!r}]\n"
        f"probe.order.append('first starts')\nprobe.nested()\nprobe.second.start()\nprobe.wait_for_second()\n"
        f"probe.order.append('first ends')\n\n\ndef net():\n    return WIDTH\n")
    (tmp_path / "second" / "models.py").write_text(
        f"import sys\n\nprobe = sys.modules[{probe_name!r}]\nprobe.order.append('second')\nprobe.second_ran.set()\n")
    (tmp_path / "nested" / "metrics.py").write_text("def score():\n    return 1\n")
    imported: dict[str, types.ModuleType] = {}

    def importing(name: str, kind: str = "models") -> threading.Thread:
        def target() -> None:
            imported[name] = import_registry_module(str(tmp_path / name / f"{kind}.py"), kind)
        return threading.Thread(target=target, name=f"import {name}", daemon=True)

    second_ran = threading.Event()

    def wait_for_second() -> None:
        """Until the second import ran its code or waits for the lock (``WAIT_S`` at most: then neither)."""
        for _ in range(WAIT_S * 100):
            if second_ran.wait(0.01) or _waits_for_the_import_lock(probe.second):
                return
            if not probe.second.is_alive():
                return

    probe = types.SimpleNamespace(order=[], second=importing("second"), second_ran=second_ran,
                                  wait_for_second=wait_for_second,
                                  nested=lambda: imported.setdefault("nested", import_registry_module(
                                      str(tmp_path / "nested" / "metrics.py"), "metrics")))
    sys.modules[probe_name] = probe
    first = importing("first")
    try:
        first.start()
        first.join(WAIT_S)
        assert not first.is_alive(), "the first import still waits: a deadlock"
        probe.second.join(WAIT_S)
        assert not probe.second.is_alive(), "the second import still waits: a deadlock"
        assert probe.order == ["first starts", "first ends", "second"]
        assert imported["first"].net() == 3 and imported["nested"].score() == 1 and "second" in imported
    finally:
        for name in (probe_name, helper):
            sys.modules.pop(name, None)


def test_registries_built_while_another_thread_imports_the_edited_module_record_the_code_they_hold(tmp_path):
    """A notebook running two grids in threads, the registry module edited between their starts: each import was
    one thread's at a time, but ``Registries`` recorded a module's sha256 and then read its factories with the lock
    let go, so the second grid's import ran the edited code into the module in between (a module imported by its
    dotted name runs again in its own namespace) and the first grid trained the edited factory under the sha256
    of the code before. The first construction here reads the module's factories (its ``__getattr__`` answers
    that there is no ``__all__``) only once the other thread's import ran or waits for the lock; it holds the code
    it records, and the other thread imports the edited code once it ended."""
    name = f"regatom_models_{tmp_path.name}"
    probe_name = f"regatom_probe_{tmp_path.name}"
    file = tmp_path / f"{name}.py"
    first = (f"import sys\n\n\ndef net():\n    return 1\n\n\ndef __getattr__(attribute):\n"
             f"    if attribute == '__all__':\n        sys.modules[{probe_name!r}].while_reading()\n"
             f"    raise AttributeError(attribute)\n")
    edited = "def net():\n    return 2\n"
    file.write_text(first)
    imported: dict[str, types.ModuleType] = {}
    second_done = threading.Event()

    def edit_and_import() -> None:
        file.write_text(edited)
        try:
            imported["second"] = import_registry_module(name, "models")
        finally:
            second_done.set()

    second = threading.Thread(target=edit_and_import, name="import the edited module", daemon=True)

    def while_reading() -> None:
        """Once: start the other import and wait until it ran or waits for the lock (``WAIT_S`` at most)."""
        if second.ident is not None:
            return
        second.start()
        for _ in range(WAIT_S * 100):
            if second_done.wait(0.01) or _waits_for_the_import_lock(second):
                return

    sys.modules[probe_name] = types.SimpleNamespace(while_reading=while_reading)
    sys.path.insert(0, str(tmp_path))
    try:
        others = {kind: types.ModuleType(f"regatom_{kind}") for kind in ("datasets", "optimizers", "metrics")}
        built = Registries({"models": name, **others})  # the built-in ones import torch: seconds
        second.join(WAIT_S)
        assert not second.is_alive(), "the other import still waits: a deadlock"
        assert built.models.get("net")() == 1
        assert built.file_hashes()["models"] == hashlib.sha256(first.encode()).hexdigest()
        assert imported["second"].net() == 2
    finally:
        sys.path.remove(str(tmp_path))
        for module in (probe_name, name):
            sys.modules.pop(module, None)


def test_a_project_moved_within_one_process_imports_its_helper_from_its_new_folder(tmp_path):
    """A project whose registry file imports a helper beside it, moved to another folder while a notebook ran: its
    import from the new folder was refused with "the registry file ... imported another helper from its own folder
    ... Rename the helper", though the old folder held no such file any more. A copy beside the old folder is still
    refused: two files of one name in one process."""
    import shutil

    import pytest

    from phd_lab.errors import RegistryError
    from phd_lab.registry_import import helper_sha256
    helper = f"moved_helper_{tmp_path.name}"  # one module per name in a process
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / f"{helper}.py").write_text("WIDTH = 3\n")
    (tmp_path / "old" / "models.py").write_text(f"from {helper} import WIDTH\n\n\ndef net():\n    return WIDTH\n")
    try:
        assert import_registry_module(str(tmp_path / "old" / "models.py"), "models").net() == 3
        (tmp_path / "old").rename(tmp_path / "new")
        (tmp_path / "new" / f"{helper}.py").write_text("WIDTH = 4\n")
        moved = import_registry_module(str(tmp_path / "new" / "models.py"), "models")
        assert moved.net() == 4 and set(helper_sha256(moved)) == {f"{helper}.py"}
        assert Path(sys.modules[helper].__file__).parent == (tmp_path / "new").resolve()
        shutil.copytree(tmp_path / "new", tmp_path / "copy")
        with pytest.raises(RegistryError, match="Rename the helper") as refused:
            import_registry_module(str(tmp_path / "copy" / "models.py"), "models")
        assert str((tmp_path / "new" / "models.py").resolve()) in str(refused.value)
    finally:
        sys.modules.pop(helper, None)


def test_a_dotted_name_that_only_a_file_with_dots_in_its_name_holds_points_to_that_file(tmp_path, monkeypatch):
    """'registries.models: my.models' beside a file ``my.models.py`` (and no package ``my``) was refused with the
    general "give a dotted module name ... or a path to a .py file", which did not say that the file was found nor
    why its name is no module name. The message names the file and its path to give now."""
    import pytest

    from phd_lab.errors import RegistryError
    name = f"lab_{tmp_path.name}.models"
    (tmp_path / f"{name}.py").write_text("def net():\n    return 1\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RegistryError) as refused:
        import_registry_module(name, "models")
    message = " ".join(str(refused.value).split())
    assert str((tmp_path / f"{name}.py").resolve()) in message
    assert "Give the file's path as 'registries.models'" in message
    assert "no module of that name exists, but the file" in message
    assert import_registry_module(f"./{name}.py", "models").net() == 1


def test_the_factory_digests_of_registries_are_of_the_code_they_loaded_after_an_edit_is_imported(tmp_path):
    """Registries read a factory's digest from the lines linecache holds for its file and the names of the module
    sys.modules holds by its name, both of which a later import of the edited file (a notebook's second grid, a
    later grid point) replaces: a run of the first logged the edited factory's digest over the code before. It
    logs the digest of the code it loaded now. A dotted module was executed again in its own namespace: the first
    registries' factory ran its old code with the edited file's WIDTH (2, under the sha256 of the code before); it
    is executed into a new module now, as a file given by its path is, and the first factory keeps its globals."""
    files = {kind: tmp_path / f"fdigest_{kind}.py" for kind in ("models", "datasets", "optimizers", "metrics")}
    for kind, name in (("datasets", "data"), ("optimizers", "opt"), ("metrics", "met")):
        files[kind].write_text(f"def {name}():\n    return 0\n")
    files["models"].write_text("WIDTH = 1\n\n\ndef net():\n    return WIDTH\n")
    config = types.SimpleNamespace(model="net", dataset="data", optimizer="opt", metrics=["met"])
    sys.path.insert(0, str(tmp_path))
    try:
        for models in (str(files["models"]), "fdigest_models"):  # by its path, then by a dotted name
            first = Registries({**{kind: str(file) for kind, file in files.items()}, "models": models})
            before = first.factory_hashes(config)
            files["models"].write_text("WIDTH = 2\n\n\ndef net():\n    return WIDTH + 0\n")
            edited = Registries({**{kind: str(file) for kind, file in files.items()}, "models": models})
            assert edited.factory_hashes(config)["models"] != before["models"]
            assert edited.models.get("net")() == 2
            # a new module: the first one's factory runs the code before, as logged
            assert (first.models.get("net")(), first.factory_hashes(config)) == (1, before), models
            files["models"].write_text("WIDTH = 1\n\n\ndef net():\n    return WIDTH\n")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("fdigest_models", None)


def test_registries_given_a_module_that_an_edit_replaced_since_record_the_code_it_runs(tmp_path):
    """A dotted registry module whose file was edited is executed into a new module, but the sha256 was read by the
    module's name: Registries given the earlier module itself (a notebook's own handle on it, ``Main({"models":
    models})``) recorded the edited file's sha256 and factory digest while its factory ran the code before (net()
    gave 1). They record the code that module was executed from now."""
    name = f"regheld_{tmp_path.name}"
    file = tmp_path / f"{name}.py"
    file.write_text("WIDTH = 1\n\n\ndef net():\n    return WIDTH\n")
    config = types.SimpleNamespace(model="net", dataset="Cifar10", optimizer="sgd", metrics=["Accuracy"])
    sys.path.insert(0, str(tmp_path))
    try:
        first = Registries({"models": name})
        held = sys.modules[name]
        before = first.factory_hashes(config)["models"]
        file.write_text("WIDTH = 2\n\n\ndef net():\n    return WIDTH * 10\n")
        edited = Registries({"models": name})
        assert (edited.models.get("net")(), held.net()) == (20, 1)
        again = Registries({"models": held})
        assert again.models.get("net")() == 1
        assert again.file_hashes()["models"] == first.file_hashes()["models"] != edited.file_hashes()["models"]
        assert again.factory_hashes(config)["models"] == before != edited.factory_hashes(config)["models"]
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)


def test_registries_given_a_module_the_user_imported_record_its_code_after_its_file_is_edited(tmp_path):
    """A registry module the user imported (``import models``, never imported by its name through phd-lab) and gave
    again after editing its file (``Main({"models": models})`` in a notebook, not imported again) recorded the
    edited file's sha256 and factory digest while its factory ran the code it was imported with (net() gave 1).
    Given by its name after that, the edit is executed."""
    name = f"reguser_{tmp_path.name}"
    file = tmp_path / f"{name}.py"
    file.write_text("WIDTH = 1\n\n\ndef net():\n    return WIDTH\n")
    config = types.SimpleNamespace(model="net", dataset="Cifar10", optimizer="sgd", metrics=["Accuracy"])
    sys.path.insert(0, str(tmp_path))
    try:
        held = importlib.import_module(name)
        first = Registries({"models": held})
        before = first.factory_hashes(config)["models"]
        file.write_text("WIDTH = 2\n\n\ndef net():\n    return WIDTH * 10\n")
        again = Registries({"models": held})
        assert again.models.get("net")() == 1
        assert again.file_hashes()["models"] == first.file_hashes()["models"]
        assert again.factory_hashes(config)["models"] == before
        by_name = Registries({"models": name})
        assert by_name.models.get("net")() == 20 and by_name.file_hashes()["models"] != first.file_hashes()["models"]
        assert by_name.factory_hashes(config)["models"] != before
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)


def test_a_dotted_registry_module_executed_again_after_an_edit_is_the_module_later_imports_get(tmp_path):
    """A dotted registry module whose file was edited is executed into a new module: sys.modules and its package
    give that one to later imports (``import``, ``from package import models``), the earlier module keeps its code
    and globals, and an edit that fails to execute leaves the earlier module in place."""
    import importlib

    import pytest

    from phd_lab.errors import RegistryError
    package = f"regfresh_{tmp_path.name}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    file = tmp_path / package / "models.py"
    file.write_text("WIDTH = 1\n\n\ndef net():\n    return WIDTH\n")
    sys.path.insert(0, str(tmp_path))
    try:
        first = import_registry_module(f"{package}.models", "models")
        file.write_text("WIDTH = 2\n\n\ndef net():\n    return WIDTH * 10\n")
        edited = import_registry_module(f"{package}.models", "models")
        assert edited is not first and (first.net(), edited.net()) == (1, 20)
        assert importlib.import_module(f"{package}.models") is edited
        assert getattr(importlib.import_module(package), "models") is edited
        assert registry_import.executed_sha256(edited) == hashlib.sha256(file.read_bytes()).hexdigest()
        file.write_text("raise ValueError('half-edited')\n")
        with pytest.raises(RegistryError, match="half-edited"):
            import_registry_module(f"{package}.models", "models")
        assert sys.modules[f"{package}.models"] is edited and edited.net() == 20
    finally:
        sys.path.remove(str(tmp_path))
        for name in (package, f"{package}.models"):
            sys.modules.pop(name, None)


def test_a_registry_package_executed_afresh_after_an_edit_keeps_its_imported_submodules_as_attributes(tmp_path):
    """A registry package (``package/__init__.py`` given by its dotted name) whose code imports its submodule and
    reads it as an attribute (``import package.layers``, ``package.layers.WIDTH``) failed after an edit with
    "module has no attribute 'layers'": executed into a new module, its ``import package.layers`` found the
    submodule in sys.modules and set no attribute on the new package. It has its submodules as attributes now."""
    package = f"regpkg_{tmp_path.name}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "layers.py").write_text("WIDTH = 3\n")
    init = tmp_path / package / "__init__.py"
    init.write_text(f"import {package}.layers\n\n\ndef net():\n    return {package}.layers.WIDTH + 1\n")
    sys.path.insert(0, str(tmp_path))
    try:
        first = import_registry_module(package, "models")
        assert first.net() == 4
        init.write_text(init.read_text().replace("+ 1", "+ 2"))
        edited = import_registry_module(package, "models")
        assert edited is not first and (first.net(), edited.net()) == (4, 5)
        assert edited.layers is sys.modules[f"{package}.layers"]
    finally:
        sys.path.remove(str(tmp_path))
        for name in (package, f"{package}.layers"):
            sys.modules.pop(name, None)


def test_a_file_without_a_suffix_or_a_folder_without_init_named_like_an_imported_package_is_no_helper(
        tmp_path, monkeypatch):
    """A registry file importing an installed package (``tqdm``) beside a file of that name without ``.py`` (notes, a
    data file) was refused as importing another module than "the one beside it", which no import ever reads; so is
    a folder without ``__init__.py`` (a data folder), which loses to the installed package in any process."""
    name, other = f"bars_{tmp_path.name}", f"data_{tmp_path.name}"  # one module per name in a process
    (tmp_path / "site").mkdir()
    for installed in (name, other):
        (tmp_path / "site" / f"{installed}.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    (tmp_path / "project" / other).mkdir(parents=True)
    (tmp_path / "project" / other / "images.txt").write_text("a folder of data, no module\n")
    (tmp_path / "project" / name).write_text("notes, no module\n")
    (tmp_path / "project" / "models.py").write_text(
        f"import {name}\nimport {other}\n\n\ndef net():\n    return {name}.VALUE + {other}.VALUE\n")
    try:
        models = import_registry_module(str(tmp_path / "project" / "models.py"), "models")
        assert models.net() == 2 and registry_import.helper_sha256(models) == {}
    finally:
        for module in (name, other):
            sys.modules.pop(module, None)


def _compile_extension(folder: Path, name: str, value: int) -> Path:
    """A real extension module ``name`` in ``folder`` whose ``value()`` returns ``value`` (the C compiler's)."""
    import shutil
    import subprocess
    import sysconfig

    import pytest
    compiler, include = shutil.which("cc") or shutil.which("gcc"), sysconfig.get_paths()["include"]
    if compiler is None or not Path(include, "Python.h").is_file():
        pytest.skip("no C compiler or Python headers to build an extension module")
    source = folder / f"{name}.c"
    source.write_text(
        "#include <Python.h>\n"
        f"static PyObject *value(PyObject *self, PyObject *args) {{ return PyLong_FromLong({value}); }}\n"
        "static PyMethodDef methods[] = {{\"value\", value, METH_NOARGS, NULL}, {NULL, NULL, 0, NULL}};\n"
        f"static struct PyModuleDef module = {{PyModuleDef_HEAD_INIT, \"{name}\", NULL, -1, methods}};\n"
        f"PyMODINIT_FUNC PyInit_{name}(void) {{ return PyModule_Create(&module); }}\n")
    built = folder / f"{name}{importlib.machinery.EXTENSION_SUFFIXES[0]}"
    subprocess.run([compiler, "-shared", "-fPIC", f"-I{include}", str(source), "-o", str(built)], check=True)
    source.unlink()
    return built


def test_an_extension_module_beside_a_registry_file_is_its_helper_and_one_named_like_an_installed_one_refused(
        tmp_path, monkeypatch):
    """An extension module beside a registry file (``fast.cpython-311-x86_64-linux-gnu.so``) was no helper: its
    sha256 was not logged, and one named like an installed module, which the import found first, let the registry
    file run the installed one without a word, as a ``.py`` helper is refused."""
    import pytest

    from phd_lab.errors import RegistryError
    own, shadowed = f"fast_{tmp_path.name}", f"shadowed_{tmp_path.name}"  # one module per name in a process
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / f"{shadowed}.py").write_text("def value():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for folder in ("own", "shadowing"):
        (tmp_path / folder).mkdir()
    built = _compile_extension(tmp_path / "own", own, 3)
    _compile_extension(tmp_path / "shadowing", shadowed, 2)
    (tmp_path / "own" / "models.py").write_text(f"import {own}\n\n\ndef net():\n    return {own}.value()\n")
    (tmp_path / "shadowing" / "models.py").write_text(
        f"import {shadowed}\n\n\ndef net():\n    return {shadowed}.value()\n")
    try:
        models = import_registry_module(str(tmp_path / "own" / "models.py"), "models")
        assert models.net() == 3
        assert registry_import.helper_sha256(models) == {built.name: hashlib.sha256(built.read_bytes()).hexdigest()}
        with pytest.raises(RegistryError, match="imports a module that lies as") as refused:
            import_registry_module(str(tmp_path / "shadowing" / "models.py"), "models")
        assert str(tmp_path / "site" / f"{shadowed}.py") in str(refused.value)
    finally:
        for module in (own, shadowed):
            sys.modules.pop(module, None)


def test_an_extension_helper_of_a_registry_module_imported_by_its_name_is_logged_when_its_file_is_imported():
    """Only ``.py`` was stripped from the names of the files beside registry files, so an extension helper
    (``fast_<n>.cpython-311-x86_64-linux-gnu.so``, ``fast_<n>.abi3.so``) that the registry module imported by its
    module name (a worker process unpickling its objects) was not hidden from the file's later import by its path:
    the file did not import it afresh, and its sha256 was missing from ``helper_sha256`` (a ``.py`` helper's was
    there)."""
    import importlib
    import tempfile

    from phd_lab import registry_files
    for suffix in dict.fromkeys(importlib.machinery.EXTENSION_SUFFIXES[:2]):
        with tempfile.TemporaryDirectory() as folder:  # a new registry file and module names for each suffix
            project = Path(folder).resolve()
            own, source = f"fast_{project.name}", f"slow_{project.name}"
            built = _compile_extension(project, own, 3)
            if built.name != f"{own}{suffix}":
                built = built.rename(project / f"{own}{suffix}")
            (project / f"{source}.py").write_text("VALUE = 10\n")
            (project / "models.py").write_text(f"import {own}\nimport {source}\n\n\n"
                                               f"def net():\n    return {own}.value() + {source}.VALUE\n")
            name = registry_files.module_name("models", project / "models.py")
            try:
                importlib.import_module(name)  # as a worker process does, by the module's name
                models = import_registry_module(str(project / "models.py"), "models")
                assert models.net() == 13
                assert registry_import.helper_sha256(models) == {
                    built.name: hashlib.sha256(built.read_bytes()).hexdigest(),
                    f"{source}.py": hashlib.sha256(b"VALUE = 10\n").hexdigest()}
            finally:
                for module in (own, source, name):
                    sys.modules.pop(module, None)


def test_a_helper_beside_a_registry_file_that_is_a_symbolic_link_to_a_shared_file_is_its_helper(tmp_path):
    """A helper beside a registry file that is a symbolic link (``helper.py`` linked to a project's shared copy) was
    compared by its target's path, which lies elsewhere: the registry file was refused as one importing "'.../helper.py'
    beside it, but 'helper' resolves to '.../helper.py'", the same path. It is the file's helper, logged by its name
    beside the file with the sha256 of what it reads."""
    helper = f"symhelper_{tmp_path.name}"
    (tmp_path / "shared").mkdir()
    (tmp_path / "project").mkdir()
    (tmp_path / "shared" / f"{helper}.py").write_text("VALUE = 7\n")
    (tmp_path / "project" / f"{helper}.py").symlink_to(tmp_path / "shared" / f"{helper}.py")
    (tmp_path / "project" / "models.py").write_text(f"import {helper}\n\n\ndef net():\n    return {helper}.VALUE\n")
    try:
        models = import_registry_module(str(tmp_path / "project" / "models.py"), "models")
        assert models.net() == 7
        assert registry_import.helper_sha256(models) == {f"{helper}.py": hashlib.sha256(b"VALUE = 7\n").hexdigest()}
    finally:
        sys.modules.pop(helper, None)
