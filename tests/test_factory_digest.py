"""The digest of a registry factory (``registry_factory_sha256``) changes with what the factory builds and with
nothing else: not with the registry file's path or the process (its string hash seed), and not with edits to other
factories of the file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

# the registry file as each of the four kinds: no built-in registry (nor torch) is imported, which takes seconds
DIGESTS = '''import json, sys
from phd_lab.factory_digest import factory_sha256
from phd_lab.registry import KINDS, Registries
models = Registries({kind: sys.argv[1] for kind in KINDS}).models
print(json.dumps({name: factory_sha256(models.get(name)) for name in models.names()}))
'''

SAME_EVERYWHERE = '''import dataclasses
import logging


@dataclasses.dataclass
class Settings:
    width: int = 4


SETTINGS = Settings(width=4)


def logs_its_module(*, num_classes, in_channels=3):
    logging.getLogger(__name__).info("built")
    return num_classes


def reads_its_file(*, num_classes, in_channels=3):
    return __file__, num_classes


def reads_settings(*, num_classes, in_channels=3):
    return SETTINGS.width * num_classes


ACTIVATIONS = {"relu", "tanh", "gelu", "elu", "selu", "silu"}


def reads_a_set(*, num_classes, in_channels=3):
    return sorted(ACTIVATIONS), num_classes
'''


def digests(path: Path, seed: str, *flags: str) -> dict:
    """The digest of every factory of the registry file ``path``, computed by a process of its own (started with
    the interpreter's ``flags``, such as ``-O``)."""
    env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, *flags, "-c", DIGESTS, str(path)], env=env, cwd=ROOT, capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def digest(path: Path, source: str, name: str) -> str | None:
    """The digest of the factory ``name`` of a registry file at ``path`` that holds ``source``, in this process."""
    from phd_lab.factory_digest import factory_sha256
    from phd_lab.registry import KINDS, Registries
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    return factory_sha256(Registries({kind: str(path) for kind in KINDS}).models.get(name))


def test_the_digest_is_the_same_in_other_processes_and_checkouts(tmp_path):
    """A factory that named ``__name__`` or ``__file__``, or an object of a class of its file, had another digest in
    every process and checkout (the module's name holds a hash of the file's path, seeded per process), so a rerun
    of identical code warned that the factory's code changed."""
    first, second = tmp_path / "one" / "models.py", tmp_path / "checkout" / "two" / "models.py"
    for path in (first, second):
        path.parent.mkdir(parents=True)
        path.write_text(SAME_EVERYWHERE)
    here, there = digests(first, "1"), digests(second, "2")
    assert set(here) == {"Settings", "logs_its_module", "reads_its_file", "reads_settings", "reads_a_set"}
    assert all(here.values()) and here == there


ASSERTS = '''from __future__ import annotations

MIN_CLASSES = 2
CHECKED = {"vgg"}


def checked(*, num_classes, in_channels=3):
    """A factory whose checks name constants of its file."""
    assert num_classes >= MIN_CLASSES, "too few classes"
    if __debug__:
        num_classes += len(CHECKED) - 1
    scale = lambda x: x * 2; shift = lambda x: x + MIN_CLASSES  # noqa: E731, E702 - two lambdas on one line
    return shift(scale(num_classes))


class Checked:
    """A class whose method asserts."""

    def build(self, num_classes):
        assert num_classes >= MIN_CLASSES
        return num_classes
'''


def test_the_digest_is_the_same_under_python_O(tmp_path):
    """``python -O`` drops ``assert`` statements and ``if __debug__:`` blocks, and with them the names they look up:
    a factory whose assert named a constant of its file had another digest under -O (or -OO), and a rerun without
    it warned that 'the code of the models factory changed'."""
    path = tmp_path / "models.py"
    path.write_text(ASSERTS)
    plain = digests(path, "0")
    assert set(plain) == {"checked", "Checked"} and all(plain.values())
    assert digests(path, "0", "-O") == plain
    assert digests(path, "0", "-OO") == plain


def test_bytes_and_complex_values_are_in_the_digest(tmp_path):
    """A factory that named a bytes or complex constant of its file ended the run with 'TypeError: Object of type
    bytes is not JSON serializable' when the run's _meta was written; both are part of the digest."""
    source = 'MAGIC = b"{magic}"\nPHASE = {phase}\n\n\ndef model(*, num_classes):\n    return MAGIC, PHASE\n'
    path = tmp_path / "models.py"
    first = digest(path, source.format(magic="ab", phase="1j"), "model")
    assert first is not None
    assert digest(path, source.format(magic="ab", phase="1j"), "model") == first
    assert digest(path, source.format(magic="ac", phase="1j"), "model") != first
    assert digest(path, source.format(magic="ab", phase="2j"), "model") != first


VALUES = '''import functools

import numpy as np
import torch

TAGS = {tags}
LOCKED = frozenset({tags})
WIDTHS = {widths}
MEAN = torch.tensor({mean})
STD = np.array({mean})


def _block(channels, width):
    return channels * width


_WIDE = functools.partial(_block, width={wide})


def model(*, num_classes):
    return sorted(TAGS | LOCKED), list(WIDTHS.items()), MEAN, STD, _WIDE(num_classes)
'''


def test_sets_dicts_arrays_and_partials_a_factory_names_are_in_the_digest_by_value(tmp_path):
    """A set or frozenset, a dict with other than string keys (or its order), a numpy array, a torch tensor and a
    functools.partial were described by their type alone: editing one of them changed what the factory built but
    not its digest, so a rerun was not warned. (Sets are described by their sorted items: see the test above for
    processes with other string hash seeds.)"""
    values = {"tags": '{"relu", "tanh", "gelu"}', "widths": "{11: 64, 13: 128}", "mean": "[0.5, 0.25]", "wide": 2}
    path = tmp_path / "models.py"
    first = digest(path, VALUES.format(**values), "model")
    assert first is not None
    for name, edited in (("tags", '{"relu", "tanh", "elu"}'), ("widths", "{11: 64, 13: 256}"),
                         ("widths", "{13: 128, 11: 64}"), ("mean", "[0.5, 0.75]"), ("wide", 4)):
        assert digest(path, VALUES.format(**{**values, name: edited}), "model") != first, (name, edited)


CODE = '''WIDTH = {width}


class Base:
    def widen(self, channels):
        return channels * {factor}


class Net(Base):
    depth = WIDTH


def _block(channels, width=WIDTH):
    return channels * width


def _maker(scale):
    def made(channels):
        return channels * scale
    return made


_SMALL, _LARGE = _maker({small}), _maker(8)


def model(*, num_classes):
    return _block(num_classes), Net().widen(num_classes), _SMALL(_LARGE(num_classes))
'''


def test_defaults_base_classes_class_attributes_and_closures_a_factory_builds_with_are_in_the_digest(tmp_path):
    """What a factory's helpers take from the file outside the code of their functions was left out: a helper's
    default (``width=WIDTH``), a class's base class and its class attributes (``depth = WIDTH``), and the second of
    two closures made by one function (named like the first); editing them left the digest unchanged."""
    values = {"width": 4, "factor": 2, "small": 1}
    path = tmp_path / "models.py"
    first = digest(path, CODE.format(**values), "model")
    assert first is not None and digest(path, CODE.format(**values), "model") == first
    for name, edited in (("width", 5), ("factor", 3), ("small", 2)):
        assert digest(path, CODE.format(**{**values, name: edited}), "model") != first, name


DECORATED = '''import functools

__all__ = ["model", "cached"]


def scaled(factor):
    def decorate(build):
        @functools.wraps(build)
        def wrapper(**kwargs):
            return build(**kwargs) {operator} factor
        return wrapper
    return decorate


@scaled(2)
def model(*, num_classes):
    return num_classes


@functools.lru_cache
def cached(*, num_classes):
    return num_classes
'''


def test_the_decorator_a_factory_is_wrapped_by_is_in_the_digest(tmp_path):
    """A factory decorated by a decorator of its file (``functools.wraps``) was described by the function it wraps
    alone: editing what the wrapper does to the model changed what the factory built but not its digest."""
    path = tmp_path / "models.py"
    first = digest(path, DECORATED.format(operator="*"), "model")
    assert first is not None and digest(path, DECORATED.format(operator="*"), "model") == first
    assert digest(path, DECORATED.format(operator="+"), "model") != first
    assert digest(path, DECORATED.format(operator="*"), "cached") is not None


def test_the_digest_is_of_the_code_a_dotted_registry_module_was_imported_from(tmp_path, monkeypatch):
    """A registry module named by its dotted name, edited while a grid ran (the registries are imported once, before
    its first run), gave the later runs the digest of the edited file while they built with the code imported: a
    rerun under the edited code was not warned. The digest is of the lines the module was executed from."""
    from phd_lab.factory_digest import factory_sha256
    from phd_lab.registry import KINDS, Registries
    package = tmp_path / "digest_dotted_registries"
    package.mkdir()
    (package / "__init__.py").write_text("")
    path = package / "models.py"
    path.write_text("def model(*, num_classes):\n    return num_classes * 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("digest_dotted_registries", "digest_dotted_registries.models"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    models = Registries({kind: "digest_dotted_registries.models" for kind in KINDS}).models
    imported = factory_sha256(models.get("model"))
    path.write_text("def model(*, num_classes):\n    return num_classes * 3\n")
    assert models.get("model")(num_classes=1) == 2 and factory_sha256(models.get("model")) == imported
    edited = Registries({kind: "digest_dotted_registries.models" for kind in KINDS}).models
    assert edited.get("model")(num_classes=1) == 3 and factory_sha256(edited.get("model")) != imported


def test_enum_members_dtypes_devices_and_numpy_scalars_a_factory_names_are_in_the_digest(tmp_path):
    """An enum member (torchvision's InterpolationMode.BICUBIC), a torch dtype or device and a numpy scalar were
    described by their type alone: changing BICUBIC to NEAREST or float16 to bfloat16 left the digest unchanged."""
    source = ('import numpy as np\nimport torch\nfrom torchvision.transforms import InterpolationMode\n\n'
              'MODE = InterpolationMode.{mode}\nDTYPE = torch.{dtype}\nDEVICE = torch.device("{device}")\n'
              'EPS = np.float32({eps})\n\n\ndef model(*, num_classes):\n    return MODE, DTYPE, DEVICE, EPS\n')
    values = {"mode": "BICUBIC", "dtype": "float16", "device": "cpu", "eps": "1e-5"}
    path = tmp_path / "models.py"
    first = digest(path, source.format(**values), "model")
    assert first is not None and digest(path, source.format(**values), "model") == first
    for name, edited in (("mode", "NEAREST"), ("dtype", "bfloat16"), ("device", "cuda"), ("eps", "1e-3")):
        assert digest(path, source.format(**{**values, name: edited}), "model") != first, name


def test_an_object_of_another_modules_class_a_factory_names_is_in_the_digest_by_its_repr(tmp_path):
    """A module-level object of another module's class (ACT = nn.LeakyReLU(0.1)) was described by its type alone,
    so changing its slope to 0.2 changed the model but not the digest, and a rerun was not warned."""
    source = ("from torch import nn\n\nACT = nn.LeakyReLU({slope})\n\n\n"
              "def model(*, num_classes, in_channels=3):\n"
              "    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), ACT)\n")
    path = tmp_path / "models.py"
    first = digest(path, source.format(slope=0.1), "model")
    assert first is not None and digest(path, source.format(slope=0.1), "model") == first
    assert digest(path, source.format(slope=0.2), "model") != first


OTHER_MODULES_OBJECTS = '''import decimal
import logging
from pathlib import Path

log = logging.getLogger(__name__)
DATA = Path(__file__).parent / "data"
STEP = decimal.Decimal("{step}")


def model(*, num_classes, in_channels=3):
    log.info("built from %s", DATA)
    return STEP * num_classes
'''


def test_objects_of_other_modules_are_described_alike_in_every_process_and_checkout(tmp_path):
    """Their repr is the digest's only where it is the same everywhere: a logger's names the module (whose name
    holds the file's path) and its level, a path the checkout; those stay described by their type."""
    first, second = tmp_path / "one" / "models.py", tmp_path / "checkout" / "two" / "models.py"
    for path in (first, second):
        path.parent.mkdir(parents=True)
        path.write_text(OTHER_MODULES_OBJECTS.format(step="0.1"))
    here = digests(first, "1")
    assert here["model"] and here == digests(second, "2")
    first.write_text(OTHER_MODULES_OBJECTS.format(step="0.2"))
    assert digests(first, "1")["model"] != here["model"]
