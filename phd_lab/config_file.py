"""Reading a JSON config file: the raw mapping, before any key is checked against the schema.

``load_config_file`` reads and parses, refusing what JSON would let through silently (duplicate
keys, a top level that is no object); ``check_numbers`` then refuses numbers no run could use
(NaN, infinities, factory arguments beyond float32, integers beyond 64 bits) and ``check_strings``
strings no file or folder name can hold (a lone surrogate escape; a NUL in a path key; a folder key of white
space only; a path the locale's file-name encoding lacks a character of). Every message names the file.
The schema's checks of each key live in ``phd_lab.config``.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping

from phd_lab.config_paths import PATH_KEYS
from phd_lab.errors import ConfigError
from phd_lab.user_paths import unreachable

META_KEY = "_meta"  # written into logged configs (versions, git commit); ignored when read back
INT_RANGE = "−2**63 … 2**63 − 1"
FLOAT32_MAX = 3.4028234663852886e38

_TOO_DEEP = ("Config file {path!r} nests lists or objects hundreds of levels deep; a config's values are at most "
             "a list of objects of lists. Check the file for runaway brackets.")


def load_config_file(path: Path | str, *, logged_logs_dir_later: bool = False) -> dict[str, Any]:
    """Read a JSON config; errors name the file and (for syntax errors) line and column. With
    ``logged_logs_dir_later``, a logged config's logs_dir is left to the caller to check (``check_strings`` of it
    alone), which a logged config lying in its run folder does not use (``anchor_logged_run`` replaces it)."""
    path = Path(path)
    if why := unreachable(path):  # exists() says False for a loop: 'does not exist' misled
        raise ConfigError(f"Config path {str(path)!r} cannot be used: {why}.")
    try:
        exists = path.exists()
    except OSError as error:  # e.g. a file name longer than the file system allows
        raise ConfigError(f"Config path {str(path)!r} cannot be used: {error.strerror or error}.") from None
    if not exists:
        raise ConfigError(f"Config file {str(path)!r} does not exist; pass the path of a JSON config "
                          f"(see configs/quickstart.json for an example).")
    if not path.is_file():
        raise ConfigError(f"Config path {str(path)!r} is not a file; pass the path of a JSON config.")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (some Windows editors) is no error
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"Config file {str(path)!r} cannot be read: {error}.") from None
    if not text.strip():  # json's own words, 'Expecting value at line 1, column 1', say nothing of the cause
        raise ConfigError(f"Config file {str(path)!r} is empty; a config is a JSON object such as "
                          f"configs/quickstart.json.")
    duplicates: list[str] = []

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                duplicates.append(key)
            seen[key] = value
        return seen

    try:
        raw = json.loads(text, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as error:
        raise ConfigError(f"Config file {str(path)!r} is not valid JSON: {error.msg} at line {error.lineno}, "
                          f"column {error.colno}. Keys and strings need double quotes, and JSON allows no "
                          f"comments or trailing commas.") from None
    except ValueError:  # Python refuses integers of more than 4,300 digits
        raise ConfigError(f"Config file {str(path)!r} holds an integer of more than 4,300 digits; integers in a "
                          f"config must lie in the signed 64-bit range {INT_RANGE}.") from None
    except RecursionError:
        raise ConfigError(_TOO_DEEP.format(path=str(path))) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"Config file {str(path)!r} must hold a JSON object of key/value pairs; got "
                          f"{type(raw).__name__} instead.")
    if duplicates:  # JSON would silently keep the last value
        raise ConfigError(f"Config file {str(path)!r} gives the key(s) {sorted(set(duplicates))} more than once in "
                          f"the same object; keep one of each (to sweep values, give a list).")
    check_numbers(raw, path)
    check_strings(raw, path, ("logs_dir",) if logged_logs_dir_later and META_KEY in raw else ())
    return raw


def check_numbers(raw: Mapping[str, Any], path: Path | str) -> None:
    """Raise a ConfigError for the first number of a parsed config (``path`` names its file) that no run
    could use: NaN or an infinity, a factory argument beyond float32, an integer beyond 64 bits."""
    try:
        numbers = list(_numbers(raw, ""))
    except RecursionError:
        raise ConfigError(_TOO_DEEP.format(path=str(path))) from None
    for key, value in numbers:
        if isinstance(value, float) and not math.isfinite(value):  # 1e400 parses as inf; NaN, Infinity literals
            raise ConfigError(f"Config file {str(path)!r}: the key {key!r} holds {value}, which is no finite number "
                              f"(a literal NaN or Infinity, or a number beyond ±1.8e308); give a finite number. A "
                              f"run's logged config could not even be written as JSON with it.")
        if (isinstance(value, float) and abs(value) > FLOAT32_MAX
                and key.split(".")[0] in ("model_args", "optimizer_args", "dataset_args")):
            raise ConfigError(f"Config file {str(path)!r}: the key {key!r} holds {value:g}, beyond the float32 range "
                              f"±{FLOAT32_MAX:.4g} of the tensors the factory's arguments end up in (a learning rate "
                              f"of 1e300 failed in the first optimizer step); give a smaller number.")
        if isinstance(value, int) and not -2**63 <= value < 2**63:  # torch, numpy and the float checks take no more
            raise ConfigError(f"Config file {str(path)!r}: the key {key!r} holds an integer of {len(str(abs(value)))} "
                              f"digits; integers in a config must lie in the signed 64-bit range {INT_RANGE}.")


def _numbers(value: Any, key: str) -> Iterator[tuple[str, int | float]]:
    """Every number in a parsed JSON value, with the key path that holds it (lists count as the key)."""
    if isinstance(value, dict):
        for name, item in value.items():
            yield from _numbers(item, f"{key}.{name}" if key else name)
    elif isinstance(value, list):
        for item in value:
            yield from _numbers(item, key)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield key, value


def check_strings(raw: Mapping[str, Any], path: Path | str, unused: tuple[str, ...] = ()) -> None:
    """Raise a ConfigError for the first key or string value that cannot be encoded as UTF-8: JSON lets a lone
    surrogate escape such as "\\ud800" through, and it would fail later, in a seed, folder or file name. A NUL
    ("\\u0000") in a path key (a folder key, a step's, a registry file) is refused too: no file or folder name
    can hold one, and the first use of the path failed with a traceback. So is a folder key of white space only
    ("logs_dir": " "), a slip a run took for a folder named " " in the working directory. A logged config's
    ``META_KEY`` is left out: read back it is ignored, and a run started under LC_ALL=C (Python's UTF-8 mode off)
    in a working directory '数据' logs that folder by the escapes of its bytes, so that its logged config was
    refused in every locale. Whether the caller can name the folders of the top-level keys ``unused`` (neither
    a lone surrogate nor a character the locale lacks) is not checked: a run logged under a UTF-8 locale below
    '数据' was refused its reproduction under LC_ALL=C for a logs_dir that the reproduction replaces."""
    for key, text, is_name in _strings({name: value for name, value in raw.items() if name != META_KEY}, ""):
        if not is_name and text and not text.strip() and key.split(".")[-1] in PATH_KEYS:
            raise ConfigError(f"Config file {str(path)!r}: the key '{printable(key)}' holds {json.dumps(text)}, only "
                              f"white space; it would name a folder of that name in the working directory. Name a "
                              f"folder, or remove the key to use its default.")
        if not is_name and "\0" in text and _is_path_key(key):
            shown = printable(text).replace("\0", "\\u0000")[:80]
            raise ConfigError(f"Config file {str(path)!r}: the key '{printable(key)}' holds \"{shown}\", which has a "
                              f"NUL character (\\u0000); no file or folder name can hold one. Remove it from the "
                              f"path.")
        if not is_name and key in unused:
            continue
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            shown = printable(text)[:80]
            what = (f"the key name \"{shown}\"" + (f" inside '{printable(key)}'" if key else "") if is_name
                    else f"the key '{printable(key)}' holds \"{shown}\", which")
            raise ConfigError(f"Config file {str(path)!r}: {what} has a lone surrogate escape (\\ud800 to \\udfff "
                              f"without its pair): it encodes no character and cannot be written as UTF-8 (into a "
                              f"file or folder name, or the logged config); write the character itself, or both "
                              f"halves of its surrogate pair.") from None
        if not is_name and _is_path_key(key):
            _check_file_name_encoding(text, key, path)


def _check_file_name_encoding(text: str, key: str, path: Path | str) -> None:
    """Raise a ConfigError where ``text`` (the value of the path key ``key``) has a character this process cannot
    put in a file name: under a locale whose encoding lacks it (LC_ALL=C with Python's UTF-8 mode off, a Latin-1
    LANG for '数据'), the first stat of a logs_dir named so ended the command with a UnicodeEncodeError and a
    traceback (exit 1)."""
    try:
        os.fsencode(text)
    except UnicodeEncodeError as error:
        lacking = printable(error.object[error.start:error.end])
        raise ConfigError(f"Config file {str(path)!r}: the key '{printable(key)}' holds \"{printable(text)[:80]}\", "
                          f"which this process cannot use as a file name: the file-name encoding of its locale "
                          f"({sys.getfilesystemencoding()}, from LC_ALL, LC_CTYPE or LANG) lacks '{lacking}'. Run "
                          f"under a UTF-8 locale (e.g. LC_ALL=C.UTF-8) or with PYTHONUTF8=1, or name a folder of "
                          f"ASCII characters.") from None


def _is_path_key(key: str) -> bool:
    """Whether the key path ``key`` (as ``_strings`` gives it) holds a file or folder path: a folder key at the
    top level or in a post-processing step (``post_processing.latents_dir``), or a registry module."""
    names = key.split(".")
    return names[-1] in PATH_KEYS or names[0] == "registries"


def _strings(value: Any, key: str) -> Iterator[tuple[str, str, bool]]:
    """Every key name and string in a parsed JSON value: (the key path that holds it, the text, whether it is a
    key name); lists count as their key."""
    if isinstance(value, dict):
        for name, item in value.items():
            yield key, name, True
            yield from _strings(item, f"{key}.{name}" if key else name)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, key)
    elif isinstance(value, str):
        yield key, value, False


def printable(text: str) -> str:
    """``text`` with characters UTF-8 cannot encode written as escapes, so that a message can be printed."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


SHOWN_CHARACTERS = 100


def shown_value(value: Any) -> str:
    """``value`` as JSON for a message: its characters as they are ("été", not "\\u00e9t\\u00e9"), and a long one
    cut after SHOWN_CHARACTERS with its length said (a 3,000-character string made an 18 KB message of escapes)."""
    return cut_short(printable(json.dumps(value, ensure_ascii=False)), SHOWN_CHARACTERS)


def cut_short(text: str, limit: int) -> str:
    """``text``, or its first ``limit`` characters and its length where it is longer."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"
