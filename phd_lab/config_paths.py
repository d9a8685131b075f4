"""Paths in config values: folder keys, registry module files and names safe for the file system.

A config names folders and registry files relative to where its author stood; a run, a Dask
worker or a rerun of the logged config may stand elsewhere. These helpers anchor such paths
(beside the config file, or absolute) and render values as folder and file names. They only
compute paths; none of them creates a folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

PATH_KEYS = ("logs_dir", "data_dir", "latents_dir")

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: Any) -> str:
    """File-system-safe rendering of a value for folder and file names. Leading dots go: "." and ".."
    would name the folder itself or its parent, ".rep" a hidden folder that listings skip."""
    return _UNSAFE.sub("_", str(text)).strip("_").lstrip(".") or "_"


def extraction_latents_dir(values: Mapping[str, Any]) -> str | None:
    """Where a run's extract step puts its latents: the step's own 'latents_dir' parameter when given, else
    the config key (None: inside the run folder). The probe job and the analysis look there too."""
    for step in values.get("post_processing") or ():
        if isinstance(step, Mapping) and step.get("name") == "extract" and step.get("latents_dir") is not None:
            return str(step["latents_dir"])
    latents_dir = values.get("latents_dir")
    return None if latents_dir is None else str(latents_dir)


def absolute_paths(values: Mapping[str, Any]) -> dict[str, Any]:
    """Folder keys, the same keys given to a post-processing step (the extract step's own ``latents_dir``) and
    registry module files as absolute paths: Dask workers with another working directory, and reruns of a
    logged config from anywhere, use the same places. Relative ones are relative to the working directory,
    for a step's as for the top-level keys."""
    result = dict(values)
    for key in PATH_KEYS:
        if result.get(key):
            result[key] = os.path.abspath(os.path.expanduser(result[key]))
    if isinstance(result.get("post_processing"), list):
        result["post_processing"] = [
            {k: os.path.abspath(os.path.expanduser(v)) if k in PATH_KEYS and isinstance(v, str) and v else v
             for k, v in step.items()} if isinstance(step, Mapping) else step
            for step in result["post_processing"]]
    result["registries"] = {kind: os.path.abspath(spec) if spec.endswith(".py") else spec
                            for kind, spec in result.get("registries", {}).items()}
    return result


def anchor_registry_paths(raw: dict[str, Any], config_path: Path | str) -> None:
    """Registry modules given as relative paths of .py files are found beside the config file
    (where its author put them), whatever the working directory; they are stored as absolute
    paths, so the run's logged config names the same files. Paths that do not exist beside the
    config keep meaning what they meant before: relative to the working directory (also stored
    absolute when such a file exists, so the logged config works from anywhere)."""
    registries = raw.get("registries")
    folder = Path(config_path).resolve().parent
    for mapping in registries if isinstance(registries, list) else [registries]:
        if not isinstance(mapping, dict):
            continue
        for kind, spec in mapping.items():
            if isinstance(spec, str) and (spec.endswith(".py") or "/" in spec) and not Path(spec).is_absolute():
                beside = folder / Path(spec).expanduser()
                if beside.is_file():
                    mapping[kind] = str(beside.resolve())
                elif Path(spec).expanduser().is_file():  # found from the working directory: logged absolute too
                    mapping[kind] = str(Path(spec).expanduser().resolve())
