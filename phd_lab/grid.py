"""Grid expansion: every list-valued key is an axis of a cartesian product.

Axes are sorted by name, so the order of grid points is stable whatever the order of keys
in the file; the last axis varies fastest. ``Grid[i]`` builds one point without keeping the others
(``--index I`` for SLURM array jobs). A point with the 8-character folder digest of an earlier point of
another identity (a CRC-32 collision) is marked ``shares_digest``, so that the two get two folders
(``RunDir.for_run``): ``Grid[i]`` resolves the points before it once for that.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, replace
from typing import Any, Iterator, Mapping

from phd_lab.config import META_KEY, RunConfig, is_swept, iter_axis_candidates, predates_linear_init, resolve_point
from phd_lab.errors import ConfigError


@dataclass(frozen=True)
class Axis:
    path: tuple[str, ...]  # ("batch_size",) or ("model_args", "width")
    values: tuple[Any, ...]

    @property
    def name(self) -> str:
        return ".".join(self.path)


class Grid:
    """The runs described by one raw config mapping."""

    def __init__(self, raw: Mapping[str, Any], where: str = "<config>") -> None:
        self.where = where
        self.base = {k: copy.deepcopy(v) for k, v in raw.items() if k != META_KEY}
        meta = raw.get(META_KEY)
        self.meta: Mapping[str, Any] | None = copy.deepcopy(meta) if isinstance(meta, Mapping) else None
        axes = []
        for path, value, key in iter_axis_candidates(self.base):
            swept = isinstance(value, list) if key is None else is_swept(key, value)
            if swept:
                axes.append(Axis(path, tuple(value)))
        self.axes: tuple[Axis, ...] = tuple(sorted(axes, key=lambda a: a.name))
        # the base without the axes' lists, which every point replaces: copying them for each point made a grid
        # of n points cost n² (3 s to expand 4,000 points of one axis)
        self._skeleton = copy.deepcopy(self.base)
        for axis in self.axes:
            _set_at(self._skeleton, axis.path, None)
        # the folder digests of points 0 .. _named - 1, each with the long digest of the first point to have it:
        # filled in order, so iterating the grid resolves no point twice
        self._digests: dict[tuple[Any, ...], str] = {}
        self._named = 0

    def __len__(self) -> int:
        return math.prod(len(axis.values) for axis in self.axes)

    def point(self, index: int) -> dict[str, Any]:
        """The raw (unresolved) values of grid point ``index``."""
        point = copy.deepcopy(self._skeleton)
        for axis, value in zip(self.axes, self._values(index)):
            _set_at(point, axis.path, copy.deepcopy(value))
        return point

    def _values(self, index: int) -> list[Any]:
        """Each axis' value at grid point ``index``, in axis order (the last axis varies fastest)."""
        if not isinstance(index, int) or not 0 <= index < len(self):
            raise IndexError(f"run index {index} is out of range: this grid has {len(self)} run(s), "
                             f"indices 0 to {len(self) - 1}")
        values, remainder = [], index
        for axis in reversed(self.axes):
            remainder, position = divmod(remainder, len(axis.values))
            values.append(axis.values[position])
        return values[::-1]

    def varying(self, index: int) -> dict[str, Any]:
        """The axis values of grid point ``index`` (for tables and logs)."""
        return {axis.name: value for axis, value in zip(self.axes, self._values(index))}

    def __getitem__(self, index: int) -> RunConfig:
        config = self._resolve(index)
        while self._named < index:  # --index I: the points before it, once
            try:
                self._note_digest(self._resolve(self._named))
            except ConfigError:  # a bad point names no folder; its own error comes when it is resolved
                self._named += 1
        key, long = self._note_digest(config) if self._named == index else _folder_digest(config)
        return replace(config, shares_digest=True) if self._digests[key] != long else config

    def _note_digest(self, config: RunConfig) -> tuple[tuple[Any, ...], str]:
        key, long = _folder_digest(config)
        self._digests.setdefault(key, long)
        self._named += 1
        return key, long

    def _resolve(self, index: int) -> RunConfig:
        point = self.point(index)
        if self.meta is not None and predates_linear_init(self.meta):
            # a logged config of a version before 0.2, which named no linear_init: its model drew its own
            # Linear layers, and its rerun does the same (bit-identical, same folder)
            model_args = point.setdefault("model_args", {})
            if isinstance(model_args, dict):
                model_args.setdefault("linear_init", None)
        config = resolve_point(point, f"{self.where} (run {index})")
        return replace(config, logged_meta=self.meta) if self.meta is not None else config

    def __iter__(self) -> Iterator[RunConfig]:
        return (self[i] for i in range(len(self)))

    def table(self, indices: list[int] | None = None,
              extra: Mapping[str, Mapping[int, str]] | None = None) -> str:
        """Plain-text table: index and the values that vary (of the chosen points, default all), then
        the ``extra`` columns ({header: {index: cell}})."""
        extra = extra or {}
        headers = ["index"] + [axis.name for axis in self.axes] + list(extra)
        rows = [[str(i)] + [json.dumps(v) if not isinstance(v, str) else v for v in self.varying(i).values()]
                + [column.get(i, "") for column in extra.values()]
                for i in (range(len(self)) if indices is None else indices)]
        widths = [max(len(h), *(len(r[c]) for r in rows)) for c, h in enumerate(headers)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        return "\n".join(lines)


def _folder_digest(config: RunConfig) -> tuple[tuple[Any, ...], str]:
    """A run's parent folder with its 8-character digest (two identities with one CRC-32 share it), and its long
    digest."""
    short, long = config.identity_hashes()
    return (config.logs_dir, config.model, config.dataset, config.resolution, config.run_id, short), long


def _set_at(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    """``tree[path[0]][path[1]]... = value`` (an axis may sit inside a mapping such as model_args)."""
    for part in path[:-1]:
        tree = tree[part]
    tree[path[-1]] = value
