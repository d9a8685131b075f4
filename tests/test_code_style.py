"""The line-length limit of setup.cfg holds for every Python file of the project, and no test leaves its
changes of the module path to the tests after it."""

from __future__ import annotations

import ast
import configparser

from tests.conftest import ROOT

FOLDERS = ("phd_lab", "registries", "tests", "benchmarks")


def test_no_python_line_is_longer_than_setup_cfg_allows():
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    limit = parser.getint("flake8", "max-line-length")
    files = [ROOT / "main.py", ROOT / "probe_main.py"]
    files += [path for folder in FOLDERS for path in (ROOT / folder).rglob("*.py")]
    too_long = [f"{path.relative_to(ROOT)}:{number} ({len(line)} characters)"
                for path in files for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                if len(line) > limit]
    assert len(files) > 50
    assert not too_long, f"lines over {limit} characters: " + ", ".join(too_long)


def _sys_path_changes_left_in_place(tree: ast.AST) -> list[int]:
    """Lines of ``sys.path.insert/append/extend`` calls that no ``finally: sys.path.remove(...)`` undoes (the
    call inside the ``try`` or the statement just before it)."""
    undone: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        for index, statement in enumerate(body if isinstance(body, list) else []):
            if isinstance(statement, ast.Try) and "sys.path.remove" in "".join(map(ast.unparse, statement.finalbody)):
                guarded = [*statement.body, *body[max(0, index - 1):index]]
                undone.update(inner.lineno for part in guarded for inner in ast.walk(part) if hasattr(inner, "lineno"))
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Call) and ast.unparse(node.func) in PATH_CHANGES and node.lineno not in undone]


PATH_CHANGES = ("sys.path.insert", "sys.path.append", "sys.path.extend")


def test_no_test_leaves_a_folder_on_the_module_path_of_the_tests_after_it():
    """A test module that put tests/ on sys.path kept it there for every later test of its worker (and imported
    test_extraction.py a second time as a top-level module), so a test importing a helper by its bare name passed
    only after another; helpers are imported as ``tests.<module>``, and a test that must change sys.path undoes
    it (monkeypatch, or a ``finally`` that removes it). Scripts a test runs in a subprocess are strings: not seen."""
    left = [f"{path.relative_to(ROOT)}:{line}" for path in sorted((ROOT / "tests").glob("*.py"))
            for line in _sys_path_changes_left_in_place(ast.parse(path.read_text(encoding="utf-8")))]
    assert not left, "sys.path changed for the rest of the session at " + ", ".join(left)
