"""Latents sets: the sizes and methods at which one trained model's layer outputs are extracted (§8.3).

The thesis' probe ablation feeds the probes 1×1 … 7×7 feature maps, reduced by adaptive average
pooling or by nearest interpolation, all from one trained model. A run's ``downsampling`` with
average pooling is its default set, in ``latents/`` with ``probe_performances.csv`` (the contract
the analysis reads); the extract step's ``sizes`` × ``methods`` add sets of their own, each named
after its size and method: ``latents_2x2_nearest/`` and ``probe_performances_2x2_nearest.csv``.
The extraction's version lives here too, so that the probe job, which imports no torch, can tell latents an
older phd-lab extracted (``extracted_by_older_version``, the one function that looks at the disk: for a
checkpoint beside them). Nothing here reads or writes a file.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from phd_lab.config_file import shown_value
from phd_lab.errors import ConfigError

# What extraction computes; part of the reuse check, so latents of an older computation are made anew. Kept here,
# away from torch, because the probe job reads it too (``probes.discovery``: it does not probe outdated latents).
# 2: feature maps smaller than ``downsampling`` are no longer up-sampled.
# 3: a Linear's 4-D output (B, H, W, C) (ConvNeXt's channels-last blocks) is pooled over H and W, not W and C.
EXTRACTION_VERSION = 3
# The version before it, whose latents are the current ones wherever no extracted Linear layer outputs a 4-D
# map (version 3 changed only those): such an extraction is reused, not made anew after an upgrade.
PREVIOUS_EXTRACTION_VERSION = 2
DTYPES = ("float32", "float16")  # the storage types of latents (the extract step's 'dtype')
METHODS = ("adaptive_avg", "nearest")
DEFAULT_METHOD = "adaptive_avg"
PIXELWISE = "pixelwise"
LATENTS = "latents"
# The file an extraction writes last into a latents folder, the format of what it holds and the splits it names: one
# definition for the extraction that writes it (``latents_folder``) and the probe job that reads it (probes.manifest)
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
SPLITS = ("train", "eval")
_METHOD_TOKENS = {"adaptive_avg": "avg", "nearest": "nearest"}
_SET_NAME = re.compile(r"[1-9][0-9]*x[1-9][0-9]*_(avg|nearest)|full|pixelwise")


@dataclass(frozen=True)
class LatentsSet:
    """One extraction of a run: ``downsampling`` (maximum side, null for whole maps, or "pixelwise") and the
    method that reduces larger maps; ``name`` is "" for the run's default set."""

    downsampling: int | str | None
    method: str = DEFAULT_METHOD
    name: str = ""

    @property
    def folder_name(self) -> str:
        return f"{LATENTS}_{self.name}" if self.name else LATENTS

    def describe(self) -> str:
        """E.g. "4×4, adaptive_avg" for messages and plot legends."""
        if self.downsampling is None:
            return "whole feature maps"
        if self.downsampling == PIXELWISE:
            return "pixelwise"
        return f"{self.downsampling}×{self.downsampling}, {self.method}"


def set_name(downsampling: int | str | None, method: str) -> str:
    """The name of a non-default set: "2x2_nearest", "7x7_avg", "full" (whole maps) or "pixelwise"."""
    if downsampling is None:
        return "full"
    if downsampling == PIXELWISE:
        return PIXELWISE
    return f"{int(downsampling)}x{int(downsampling)}_{_METHOD_TOKENS[method]}"


def extraction_sets(downsampling: int | str | None, sizes: Any = None,
                    methods: Any = (DEFAULT_METHOD,)) -> list[LatentsSet]:
    """The default set (``downsampling``, averaged), then every size × method not equal to it, in the given
    order (sizes outer). Whole maps and pixelwise sets have no method: they appear once."""
    default = LatentsSet(downsampling)
    sets, seen = [default], {(downsampling, DEFAULT_METHOD)}
    for size in sizes or ():
        for method in methods or (DEFAULT_METHOD,):
            if size is None or size == PIXELWISE:
                method = DEFAULT_METHOD
            if (size, method) in seen:
                continue
            seen.add((size, method))
            sets.append(LatentsSet(size, method, set_name(size, method)))
    return sets


def check_sets(sizes: Any, methods: Any, where: str) -> None:
    """The extract step's 'sizes' and 'methods': known values, no repeats, not empty; a ConfigError naming them."""
    if sizes is not None:
        if not isinstance(sizes, list) or not sizes:
            raise ConfigError(f"{where}: 'sizes' is {shown_value(sizes)}; give a non-empty list of maximum "
                              f"feature-map sides such as [1, 2, 4], or null for the run's 'downsampling' alone.")
        for size in sizes:
            if not (size is None or size == PIXELWISE or (isinstance(size, int) and not isinstance(size, bool)
                                                           and size >= 1)):
                raise ConfigError(f"{where}: 'sizes' holds {shown_value(size)}; each size must be an integer ≥ 1 "
                                  f"(the largest feature-map side kept), null (whole maps) or \"pixelwise\".")
        repeated = sorted({json.dumps(size) for size in sizes if sizes.count(size) > 1})
        if repeated:
            raise ConfigError(f"{where}: 'sizes' names {', '.join(repeated)} more than once; give each size once.")
    if (not isinstance(methods, list) or not methods
            or any(not isinstance(method, str) or method not in METHODS for method in methods)):
        raise ConfigError(f"{where}: 'methods' must be a non-empty list of {', '.join(map(repr, METHODS))}; got "
                          f"{shown_value(methods)}.")
    if len(set(methods)) < len(methods):
        raise ConfigError(f"{where}: 'methods' names a method more than once; give each once.")
    if methods != [DEFAULT_METHOD] and sizes is None:
        raise ConfigError(f"{where}: 'methods' is {shown_value(methods)} but 'sizes' is null; the methods apply to "
                          f"the further sets of 'sizes' (the run's 'downsampling' always average-pools into "
                          f"latents/). Give 'sizes', e.g. [1, 2, 4].")


def _extract_steps(values: Mapping[str, Any]) -> list[Any]:
    """The entries of the config's post_processing that are the extract step, by name or as an object."""
    return [step for step in values.get("post_processing") or ()
            if step == "extract" or isinstance(step, Mapping) and step.get("name") == "extract"]


def lists_extract_step(values: Mapping[str, Any]) -> bool:
    """Whether a run's config lists the extract step in its post_processing (by name or as an object)."""
    return bool(_extract_steps(values))


def extract_step_entry(values: Mapping[str, Any]) -> Mapping[str, Any]:
    """The config's extract step as a mapping of its given parameters ({} when listed by name or absent)."""
    return next((step for step in _extract_steps(values) if isinstance(step, Mapping)), {})


def config_sets(values: Mapping[str, Any], where: str = "config") -> list[LatentsSet]:
    """The latents sets a run's resolved config (every key present) extracts: what the probe job looks for. Its
    'sizes' and 'methods' are checked as training checks them (ConfigError)."""
    entry = extract_step_entry(values)
    downsampling = entry["downsampling"] if "downsampling" in entry else values.get("downsampling")
    sizes, methods = entry.get("sizes"), entry.get("methods", [DEFAULT_METHOD])
    check_sets(sizes, methods, f"{where}, step 'extract'")
    return extraction_sets(downsampling, sizes, methods)


def named_set(name: str) -> LatentsSet | None:
    """The set a non-default set's name stands for (``set_name``'s inverse: "2x2_nearest" is 2 and nearest),
    or None for a name no set has."""
    if not _SET_NAME.fullmatch(name):
        return None
    if name in ("full", PIXELWISE):
        return LatentsSet(None if name == "full" else PIXELWISE, DEFAULT_METHOD, name)
    size, token = name.split("_")
    method = next(method for method, known in _METHOD_TOKENS.items() if known == token)
    return LatentsSet(int(size.split("x")[0]), method, name)


def set_of_folder(folder_name: str) -> str:
    """The set name of a latents folder found on disk: the part after ``latents_`` where that is a set's name
    (``latents_2x2_nearest``), else "" (``latents``, or a folder a user named otherwise: the default set)."""
    prefix = f"{LATENTS}_"
    name = folder_name[len(prefix):] if folder_name.startswith(prefix) else ""
    return name if named_set(name) is not None else ""


def extracted_by_older_version(manifest: Mapping[str, Any], run_root: Path) -> bool:
    """Latents of a trained run (its folder ``run_root`` holds a checkpoint) that an older phd-lab extracted: the
    manifest names no ``extraction_version``, or one below ``PREVIOUS_EXTRACTION_VERSION`` (before it, feature
    maps smaller than ``downsampling`` were up-sampled). The training command extracts them again; probes of them
    are not those of this version's latents. A manifest of ``write_latents`` (own latents, no checkpoint beside
    them) names no version and counts as current."""
    version = extraction_version(manifest)
    current = version is not None and version >= PREVIOUS_EXTRACTION_VERSION
    return not current and any(run_root.glob("*.pt"))


def extraction_version(manifest: Mapping[str, Any]) -> int | None:
    """The manifest's ``extraction_version`` as a whole number (a hand-edited ``3.0`` is 3, as JSON numbers go), or
    None where it names none or something else (true, "3", 2.5). The one reading shared by the extraction, which
    reuses latents, and the probe job and the report, which call them older: the extraction read 3.0 as 3 and the
    probe job as older."""
    version = manifest.get("extraction_version")
    if isinstance(version, float) and version.is_integer():
        return int(version)
    return version if isinstance(version, int) and not isinstance(version, bool) else None


def manifest_text(path: Path | str) -> str:
    """``path`` as a manifest holds it, whatever this process's locale: the text of its bytes read as UTF-8 (a
    byte that is no UTF-8 as its escape), which ``manifest_path`` names again. A process under a Latin-1 or GBK
    locale wrote its own name of a folder 'café', and the probe job, which reads a manifest's paths as UTF-8,
    looked for another folder (exit 2, 'does not exist'), in that locale too."""
    return os.fsencode(path).decode("utf-8", "surrogateescape")


def manifest_path(value: str) -> str | None:
    """A path a manifest holds (``run_dir``, a file name) as this process names it, or None where it is no
    path's name (a lone surrogate other than a byte's escape). A manifest holds a path's bytes as UTF-8 text: a
    '数据' written under a UTF-8 locale is that text, written under LC_ALL=C with Python's UTF-8 mode off it is
    the escapes of its bytes; both are the same folder, which the probe job and the extraction name alike (the
    extraction compared the texts and took one locale's manifest for a moved run folder's)."""
    try:
        return os.fsdecode(value.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        return None
