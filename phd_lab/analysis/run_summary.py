"""Per-run analysis from saved tables: s_μ, tails, border layers, probes, cost and recommendations.

``summarize(tables, settings)`` turns what ``run_tables.load_run`` read into one JSON-ready
dict (the content of ``analysis.json``, which ``phd_lab.report.collect`` writes); it never
trains, recomputes a table or writes a file. The advice texts come from ``recommendations``.
The guidelines come from the thesis:

* ch. 8.5: a tail is a run of >= 3 layers whose mean saturation is >= 50% below the rest's
  (``phd_lab.analysis.tails``); its layers do not improve the probes' accuracy.
* ch. 9.3 / 10.2: the border layer is the first Conv2d from which on every Conv2d receives an
  input receptive field larger than the input resolution (b_min from r_min, b_max from r_max);
  the tail is predicted to start there.
* ch. 11.4: cut the border layer and everything after it and put a global-average-pooling +
  linear head on the stump, or slow down the receptive-field growth (move/remove downsampling).
* ch. 11.3: s_μ of 20–30% performs best; scale the width (after fixing the depth) to get there.
* App. C: probe accuracy that drops (zig-zag, decay) marks layers skipped through shortcuts.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np
import pandas as pd

from phd_lab.analysis.borders import borders_of, side_branch_flags
from phd_lab.analysis.recommendations import receptive_field_failed, recommendations
from phd_lab.analysis.run_tables import RECEPTIVE_FIELD, RunTables
from phd_lab.analysis.tails import Tail, find_tails, visible_since
from phd_lab.config import SCHEMA_BY_NAME
from phd_lab.errors import ConfigError

FORMAT = 1
_SETTING_KEYS = ("tail_threshold", "tail_min_length", "border_tolerance", "probe_tolerance",
                 "probe_drop_tolerance", "target_saturation", "analysis_split")


@dataclass(frozen=True)
class AnalysisSettings:
    """The analysis' thresholds; defaults are the config schema's (the thesis' values)."""

    tail_threshold: float = SCHEMA_BY_NAME["tail_threshold"].default
    tail_min_length: int = SCHEMA_BY_NAME["tail_min_length"].default
    border_tolerance: int = SCHEMA_BY_NAME["border_tolerance"].default
    probe_tolerance: float = SCHEMA_BY_NAME["probe_tolerance"].default
    probe_drop_tolerance: float = SCHEMA_BY_NAME["probe_drop_tolerance"].default
    target_saturation: tuple[float, float] = tuple(SCHEMA_BY_NAME["target_saturation"].default)  # type: ignore
    analysis_split: str = SCHEMA_BY_NAME["analysis_split"].default

    def __post_init__(self) -> None:
        band = tuple(float(v) for v in self.target_saturation)
        if len(band) != 2 or not 0.0 < band[0] < band[1] <= 1.0:
            raise ConfigError(f"the key 'target_saturation' must be [low, high] with 0 < low < high <= 1; got "
                              f"{list(self.target_saturation)} instead.")
        object.__setattr__(self, "target_saturation", band)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None, where: str = "config") -> "AnalysisSettings":
        """Settings from a (logged) config; keys it lacks (older runs) take the defaults."""
        values = {}
        for key in _SETTING_KEYS:
            if config and key in config:
                values[key] = SCHEMA_BY_NAME[key].check(config[key], where)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["target_saturation"] = list(self.target_saturation)
        return data


# ---------------------------------------------------------------------------------------- tables
def layer_saturations(metrics: pd.DataFrame | None, split: str) -> pd.DataFrame | None:
    """Saturation per layer in forward (column) order from the last epoch's row of the metrics CSV.

    Columns: layer, saturation, intrinsic_dimension, feature_dimension (derived as k / s when
    not saved). Layers whose value is missing in that row are left out.
    """
    if metrics is None or not len(metrics):
        return None
    suffix = f"_{split}_saturation"
    layers = [c[:-len(suffix)] for c in metrics.columns if c.endswith(suffix)]
    # sorted once: the last epoch's row, and the rows from which every layer without a saved d derives it
    rows = _ordered_rows(metrics)
    row = _last_row(rows)
    if not layers or row is None:
        return None
    records = []
    for layer in layers:
        saturation = pd.to_numeric(row.get(f"{layer}{suffix}"), errors="coerce")
        if not _usable(saturation):  # NaN: the pass never called it
            continue
        k = pd.to_numeric(row.get(f"{layer}_{split}_intrinsic_dimension"), errors="coerce")
        d = pd.to_numeric(row.get(f"{layer}_{split}_feature_dimension"), errors="coerce")
        if pd.isna(d):
            d = _derived_feature_dimension(rows, layer, split)
        records.append({"layer": layer, "saturation": float(saturation),
                        "intrinsic_dimension": None if pd.isna(k) else int(k),
                        "feature_dimension": None if pd.isna(d) else int(d)})
    if not records:
        return None
    # whole numbers stay ints beside a missing one (a float64 column wrote 16.0 into analysis.json)
    return pd.DataFrame({column: pd.Series([record[column] for record in records],
                                           dtype=object if column in INT_COLUMNS else None)
                         for column in ("layer", "saturation", "intrinsic_dimension", "feature_dimension")})


INT_COLUMNS = ("intrinsic_dimension", "feature_dimension")


def _derived_feature_dimension(rows: pd.DataFrame, layer: str, split: str) -> int | None:
    """A layer's feature dimension d = k / s, from the last epoch of ``split`` where its saturation is above 0, else
    from the other split's: a layer without variance (s = 0: dead units, a collapsed output) has the same d
    as in an epoch or split where it had some, and its d was lost (None in analysis.json, and no new head in a
    truncation estimate that ends at it). ``rows``: the metrics CSV's ``_ordered_rows``, sorted once by the caller:
    sorted again per layer, a run of L layers copied its whole table L times (L² cells), the largest cost of reading a
    run's saturations in the report."""
    for name in (split, "test" if split == "train" else "train"):
        columns = f"{layer}_{name}_saturation", f"{layer}_{name}_intrinsic_dimension"
        if not all(column in rows.columns for column in columns):
            continue
        saturations, dimensions = (pd.to_numeric(rows[column], errors="coerce") for column in columns)
        usable = (saturations > 0) & np.isfinite(saturations) & np.isfinite(dimensions)
        if usable.any():
            return round(float(dimensions[usable].iloc[-1]) / float(saturations[usable].iloc[-1]))
    return None


POSITION = re.compile(r"@\d+_\d+$")  # the feature-map position of a pixelwise probe: <layer>@<row>_<col>


def layer_of(probe_name: str) -> str:
    """The layer a probe belongs to: a pixelwise position's layer (``features.0@2_3`` → ``features.0``), else
    the name itself."""
    return POSITION.sub("", probe_name)


def probe_layer_accuracies(probes: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    """The probe table per layer in forward order (rows by ``index``, stably), and whether it is pixelwise.

    Columns: layer, positions (probes of the layer), eval_acc and, where the table has it, relative_acc. A
    pixelwise table has a probe per feature-map position (``<layer>@<row>_<col>``): a layer's values are the mean
    over its positions (NaN, a failed fit, left out), so that the analysis, its advice, the report and the run
    figure speak of layers, not of thousands of positions; any other layer has one probe, its values as they are.
    """
    table = probes.sort_values("index", kind="stable") if "index" in probes.columns else probes
    names = table["layer"].astype(str)
    layers = names.map(layer_of)
    columns = [column for column in ("eval_acc", "relative_acc") if column in table.columns]
    grouped = table[columns].apply(pd.to_numeric, errors="coerce").groupby(layers.to_numpy(), sort=False)
    means = grouped.mean()
    means.insert(0, "positions", grouped.size())
    return means.rename_axis("layer").reset_index(), bool((layers != names).any())


def saturation_history(metrics: pd.DataFrame | None, split: str) -> pd.DataFrame | None:
    """Saturation per epoch (rows, ascending) and layer (columns, forward order) of the metrics CSV: how the
    pattern forms during training (thesis appendix B). Values that are no number in [0, ∞) are NaN; rows whose
    epoch is no number are left out, and of an epoch written twice the last row counts."""
    if metrics is None or not len(metrics) or "epoch" not in metrics.columns:
        return None
    suffix = f"_{split}_saturation"
    columns = [c for c in metrics.columns if c.endswith(suffix) and len(c) > len(suffix)]
    if not columns:
        return None
    rows = _epoch_rows(metrics)
    if rows.empty:
        return None
    history = rows[columns].apply(pd.to_numeric, errors="coerce")
    history = history.where((history >= 0.0) & (history < math.inf))
    history.columns = [c[:-len(suffix)] for c in columns]
    history.index = pd.Index(rows["epoch"].to_numpy(dtype=float), name="epoch")
    return history


def _unusable_saturations(row: pd.Series | None, split: str) -> list[str]:
    """A note naming the layers whose saturation in the last epoch is no number in [0, ∞) (a damaged or
    hand-edited CSV); they are left out like layers without a value (NaN: never called)."""
    if row is None:
        return []
    suffix = f"_{split}_saturation"
    bad = []
    for column in (c for c in row.index if str(c).endswith(suffix)):
        value, number = row[column], pd.to_numeric(row[column], errors="coerce")
        if not pd.isna(value) and not _usable(number):
            shown = repr(str(value)) if pd.isna(number) else f"{float(number):g}"
            bad.append(f"{str(column)[:-len(suffix)]} ({shown})")
    return [f"Unusable {split} saturations left out: {', '.join(bad)}."] if bad else []


def _usable(saturation: Any) -> bool:
    """A saturation read from the CSV that is a number in [0, ∞)."""
    return not pd.isna(saturation) and 0.0 <= float(saturation) < math.inf


def _epoch_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    """The rows of a metrics CSV with an ``epoch`` column in the order of their epochs, read as numbers: rows whose
    epoch is no finite number (a damaged cell) are left out, and of an epoch written twice the last row counts."""
    epochs = pd.to_numeric(metrics["epoch"], errors="coerce")
    rows = metrics.assign(epoch=epochs)[np.isfinite(epochs)]
    return rows.sort_values("epoch", kind="stable").drop_duplicates("epoch", keep="last")


def _ordered_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    """The rows of a metrics CSV in the order of their epochs (``_epoch_rows``); without an epoch column, as written."""
    return _epoch_rows(metrics) if "epoch" in metrics.columns else metrics


def _last_row(rows: pd.DataFrame) -> pd.Series | None:
    """The last of ``_ordered_rows`` (None: there is none)."""
    return rows.iloc[-1] if len(rows) else None


def _last_epoch_row(metrics: pd.DataFrame | None) -> pd.Series | None:
    """The row of the last epoch (None: no row with an epoch that is a number)."""
    return None if metrics is None else _last_row(_ordered_rows(metrics))


def _unusable_epochs(metrics: pd.DataFrame | None, filename: str) -> list[str]:
    """A note on the rows of the metrics CSV whose epoch is no finite number (a damaged or hand-edited CSV): the
    analysis leaves them out, since which epoch they hold cannot be told."""
    if metrics is None or "epoch" not in metrics.columns:
        return []
    cells = metrics["epoch"]
    bad = cells[~np.isfinite(pd.to_numeric(cells, errors="coerce"))]
    if not len(bad):
        return []
    shown = ", ".join("blank" if pd.isna(value) else repr(str(value)) for value in bad[:5])
    return [f"{filename}: {len(bad)} row(s) whose epoch is no number ({shown}{', ...' if len(bad) > 5 else ''}) "
            "left out."]


def _number(value: Any) -> float | None:
    value = pd.to_numeric(value, errors="coerce")
    return None if value is None or pd.isna(value) else float(value)


def conv_rows(receptive_field: pd.DataFrame) -> pd.DataFrame:
    """The Conv2d rows of receptive_field.csv (``index`` is only set for Conv2d), in forward order."""
    if "index" in receptive_field.columns:
        rows = receptive_field[pd.to_numeric(receptive_field["index"], errors="coerce").notna()]
        if len(rows):
            return rows
    return receptive_field


def border_layers(receptive_field: pd.DataFrame, resolution: int) -> tuple[str | None, str | None]:
    """(b_min, b_max) of a saved receptive_field.csv: the rule of the receptive-field step
    (``borders.borders_of``) on its Conv2d rows but side branches (shortcuts, attention), values read
    as numbers ('inf' = global). Tables written before ``prev_r_min`` existed give b_min by
    ``in_r_min``, the rule they were written with."""
    return borders_of(conv_rows(receptive_field), resolution)


def side_branch_layers(receptive_field: pd.DataFrame | None) -> set[str]:
    """Layers beside the main path (1×1 projection shortcuts, attention gates: ``side_branch``).
    The thesis reads saturation on the main path only (§10.1): a one-channel attention gate is always
    saturated and would cut a tail in two, and a shortcut row would count as a layer between the
    border and the tail's first layer."""
    if receptive_field is None or "side_branch" not in receptive_field.columns:
        return set()
    flagged = side_branch_flags(receptive_field["side_branch"])
    return set(receptive_field.loc[flagged, "layer"].astype(str))


# ---------------------------------------------------------------------------------------- parts
def _tail_info(saturations: pd.DataFrame | None, settings: AnalysisSettings) -> tuple[list[Tail], list[str]]:
    if saturations is None:
        return [], []
    names = saturations["layer"].tolist()
    return find_tails(saturations["saturation"].tolist(), names, threshold=settings.tail_threshold,
                      min_length=settings.tail_min_length), names


def _last_tail_since(metrics: pd.DataFrame | None, names: list[str], tails: list[Tail],
                     settings: AnalysisSettings) -> int | None:
    """The epoch from which on the last tail shows in every epoch's saturations of the main path (epochs where a
    main-path layer has no value are skipped: their positions would not compare)."""
    history = saturation_history(metrics, settings.analysis_split)
    if not tails or history is None or not set(names) <= set(history.columns):
        return None
    rows = history[names].dropna()
    epochs = [(int(epoch), values.tolist()) for epoch, values in zip(rows.index, rows.to_numpy())]
    return visible_since(epochs, tails[-1], threshold=settings.tail_threshold, min_length=settings.tail_min_length)


def _agreement(border: str | None, tail: Tail | None, order: list[str], fallback: list[str],
               tolerance: int) -> dict[str, Any]:
    """Whether the tail closest to the output starts at the border layer (within ``tolerance`` layers)."""
    result: dict[str, Any] = {"border": border, "tail_start": tail.first_layer if tail else None,
                              "offset": None, "agrees": None}
    if border is None and tail is None:
        result["agrees"] = True
        return result
    if border is None or tail is None:
        result["agrees"] = False
        return result
    for sequence in (order, fallback):
        if border in sequence and tail.first_layer in sequence:
            result["offset"] = sequence.index(tail.first_layer) - sequence.index(border)
            result["agrees"] = abs(result["offset"]) <= tolerance
            break
    return result


def _probe_info(tables: RunTables, model_accuracy: float | None, settings: AnalysisSettings,
                side: set[str]) -> dict[str, Any]:
    """The probe results and their verdicts. The verdicts (the first layer that reaches the model, the layers
    whose probes drop, the best layer) read the main path only, as the tails and s_mu (§10.1.1): a side branch's
    probe (an attention gate, a 1×1 shortcut: ``side``) says nothing of the layers the network skips. A pixelwise
    table's positions count as their layer, with the mean of their accuracies (``probe_layer_accuracies``)."""
    probes = tables.probes
    extracted = tables.manifest.get("layers") if tables.manifest else None
    entries = extracted if isinstance(extracted, list) else None  # None: unknown (a malformed manifest too)
    planned = _extracted_layer_count(entries)
    if probes is None or not len(probes):
        table = tables.folder.probe_csv.name
        unusable = [problem for problem in tables.problems if problem.startswith(table)]
        if probes is None and unusable:  # the report's table showed "pending" beside a damaged table
            status = f"damaged ({table} cannot be used; rerun probe_main.py, which rewrites it from its cache)"
        else:
            status = "pending (latents extracted)" if tables.manifest else "not probed"
        return {"status": status + _PROBING_NOW * tables.probe_job_running, "layers_probed": 0,
                "layers_extracted": planned}
    per_layer, pixelwise = probe_layer_accuracies(probes)
    layers = per_layer["layer"].tolist()
    accuracy = per_layer["eval_acc"].tolist()
    reference = model_accuracy
    if reference is None and tables.manifest:
        reference = _accuracy(tables.manifest.get("model_test_accuracy"), "", [])  # out of range: None
    if "relative_acc" in per_layer.columns:
        relative = per_layer["relative_acc"].tolist()
    else:
        relative = [a / reference if reference else float("nan") for a in accuracy]
    status = _probe_status(len(layers), planned, len(probes), entries, pixelwise)
    if tables.probes_predate_latents:
        status = "stale (the latents were extracted again after the probes; rerun probe_main.py)"
    elif tables.latents_of_older_extraction:
        status = ("stale (fitted on latents an older phd-lab extracted, with small feature maps up-sampled; rerun "
                  "main.py, which extracts them again, then probe_main.py)")
    probed_layers = len(layers)
    by_layer = {layer: _number(value) for layer, value in zip(layers, accuracy)}
    main = [i for i, layer in enumerate(layers) if layer not in side]
    layers, accuracy, relative = ([values[i] for i in main] for values in (layers, accuracy, relative))
    # a layer whose fit failed (eval_acc NaN) reaches nothing, whatever a relative_acc beside it says
    first = next((layer for layer, value, r in zip(layers, accuracy, relative)
                  if not math.isnan(value) and r >= 1.0 - settings.probe_tolerance), None)
    skipped, best = [], -math.inf
    for layer, value in zip(layers, accuracy):
        if value < best - settings.probe_drop_tolerance:
            skipped.append(layer)
        best = max(best, value) if not math.isnan(value) else best
    probed = [i for i, value in enumerate(accuracy) if not math.isnan(value)]  # NaN: a layer whose fit failed
    best_at = max(probed, key=lambda i: accuracy[i]) if probed else None
    if tables.probes_predate_latents or tables.latents_of_older_extraction:  # of other latents: no verdict drawn
        first, skipped, best_at = None, [], None
    return {"status": status + _PROBING_NOW * tables.probe_job_running, "layers_probed": probed_layers,
            "layers_extracted": planned,
            "model_accuracy": reference, "first_reaching_layer": first,
            "layers_after_reaching": (len(layers) - 1 - layers.index(first)) if first else None,
            "skipped_layers": skipped, "best_layer": layers[best_at] if best_at is not None else None,
            "best_accuracy": accuracy[best_at] if best_at is not None else None,
            "pixelwise": pixelwise, "eval_acc_by_layer": by_layer}


# said after the probes' status while a probe job writes into the run: the results shown may be replaced soon
_PROBING_NOW = "; a probe job is running now"


def _extracted_layer_count(entries: list[Any] | None) -> int | None:
    """The layers a manifest's entries name (the positions of a pixelwise layer counted once), None if unknown."""
    if entries is None:
        return None
    names = [layer_of(str(entry.get("name"))) if isinstance(entry, dict) else f"entry {number}"
             for number, entry in enumerate(entries)]
    return len(dict.fromkeys(names))


def _probe_status(layers: int, planned: int | None, probes: int, entries: list[Any] | None, pixelwise: bool) -> str:
    """"complete", or "partial (7 of 11)" layers; of a pixelwise table, whose layers may be probed at only some
    of their positions, with the probes too: "partial (2 of 3 layers; 17 of 21 probes)"."""
    if planned is None or entries is None or probes >= len(entries):
        return "complete"
    return f"partial ({layers} of {planned} layers; {probes} of {len(entries)} probes)" if pixelwise else \
        f"partial ({layers} of {planned})"


def truncation_estimate(tables: RunTables, border: str, saturations: pd.DataFrame | None,
                        order: list[str]) -> dict[str, Any] | None:
    """Parameters and FLOPs saved by ``truncate: border`` (GAP + linear head added).

    Measured when the flops step could truncate the model itself (``computational_info.json``'s
    ``truncation``, ``exact`` True): that also counts whole residual blocks the cut removes.
    Otherwise estimated (``exact`` False) from the per-layer rows of computational_info from the
    border's row on (table order, containers dropped) and a new head Linear(C → K), C the output
    width of the layer before the border, K that of the last tracked layer, from the saturation table:
    C·K + K parameters and, by ``analysis.flops``' rule for a Linear (ptflops: C·K + K MACs, FLOPs = 2 × MACs),
    2·(C·K + K) FLOPs. The GAP before it (C·H·W MACs) is left out: the saved tables do not hold the map's
    size at the cut (VGG11 at ¼ width and 24 px, cut before features.11: 2 · 64 · 6 · 6 = 4,608 FLOPs, 0.05% of
    the 9.06 M FLOPs saved, which the measured truncation counts).
    """
    total = tables.computational or {}
    measured = total.get("truncation")
    if isinstance(measured, dict) and measured.get("border") == border:  # the flops step truncated the model
        estimate = dict(measured)
        for key in ("params", "flops"):
            estimate[f"{key}_removed"] = estimate[f"{key}_saved"] + (estimate.get(f"head_{key}") or 0.0)
            estimate[f"{key}_saved_share"] = estimate[f"{key}_saved"] / total[key] if total.get(key) else None
        return estimate
    layers = tables.computational_layers
    if layers is None or border not in set(layers["layer"]):
        return None
    start = layers.index[layers["layer"] == border][0]
    removed = layers.loc[start:]
    estimate: dict[str, Any] = {"border": border, "exact": False, "removed_layers": removed["layer"].tolist(),
                                "params_removed": float(removed["params"].fillna(0).sum()),
                                "flops_removed": float(removed["flops"].fillna(0).sum()),
                                "head_params": None, "head_flops": None}
    widths = {} if saturations is None else dict(zip(saturations["layer"], saturations["feature_dimension"]))
    before = order[order.index(border) - 1] if border in order and order.index(border) > 0 else None
    channels = widths.get(before) if before else None
    classes = widths.get(saturations["layer"].iloc[-1]) if saturations is not None else None
    if channels and classes:
        estimate["head_params"] = float(channels * classes + classes)
        estimate["head_flops"] = float(2 * (channels * classes + classes))
    for key in ("params", "flops"):
        net = estimate[f"{key}_removed"] - (estimate[f"head_{key}"] or 0.0)
        estimate[f"{key}_saved"] = net
        estimate[f"{key}_saved_share"] = net / total[key] if total.get(key) else None
    return estimate


def _model_width(config: Mapping[str, Any]) -> float | None:
    """The run's ``model_args.width`` as a number, if it has one."""
    args = config.get("model_args")
    width = args.get("width") if isinstance(args, dict) else None
    return float(width) if isinstance(width, (int, float)) and not isinstance(width, bool) and width > 0 else None


# ---------------------------------------------------------------------------------------- summary
def summarize(tables: RunTables, settings: AnalysisSettings | None = None) -> dict[str, Any]:
    """The per-run analysis (``analysis.json`` content) from the run's saved tables."""
    if settings is None:
        settings = AnalysisSettings.from_config(tables.config, str(tables.folder.config))
    config = tables.config or {}
    row = _last_epoch_row(tables.metrics)
    saturations = layer_saturations(tables.metrics, settings.analysis_split)
    problems = (list(tables.problems) + _unusable_epochs(tables.metrics, tables.folder.metrics_csv.name)
                + _unusable_saturations(row, settings.analysis_split))
    resolution = config.get("resolution")
    rf = tables.receptive_field
    if rf is None and saturations is not None and receptive_field_failed(tables.missing, tables.problems):
        problems.append(f"Without {RECEPTIVE_FIELD}, side branches (1×1 shortcut convolutions, attention gates) "
                        "cannot be told from the main path: tails and s_mu include any the model has.")
    side = side_branch_layers(rf)
    main_path = saturations[~saturations["layer"].astype(str).isin(side)] if saturations is not None else None
    tails, names = _tail_info(main_path, settings)
    order = [layer for layer in rf["layer"].astype(str) if layer not in side] if rf is not None else []
    borders = _borders(rf, resolution)
    last_tail = tails[-1] if tails else None
    agreement = None
    if borders is not None:
        agreement = {key: _agreement(borders[key], last_tail, order, names, settings.border_tolerance)
                     for key in ("b_min", "b_max")}
    test_accuracy = _test_accuracy(tables, row, problems)
    saturation = _saturation_section(tables, row, saturations, main_path, tails, names, settings)
    truncation = None
    if borders and borders["b_min"]:
        truncation = truncation_estimate(tables, borders["b_min"], saturations, order or names)
    summary: dict[str, Any] = {
        "format": FORMAT,
        "run": {"name": tables.folder.name, "folder": os.path.abspath(tables.folder.root),
                "variant": tables.folder.variant, "model": config.get("model"),
                "dataset": config.get("dataset"), "resolution": resolution, "width": _model_width(config),
                "status": tables.status.to_dict() if tables.status else None,
                **({"objective": tables.objective} if tables.objective else {})},
        "settings": settings.to_dict(),
        "accuracy": {"test": test_accuracy,
                     "train": _accuracy(None if row is None else row.get("train_accuracy"),
                                        f"{tables.folder.metrics_csv.name}: train_accuracy of its last epoch",
                                        problems),
                     "epoch": _int(row.get("epoch")) if row is not None else None},
        "saturation": saturation,
        "tails": [{**t.to_dict(), "layers": t.layers(names)} for t in tails],  # start/stop index main_path
        "borders": borders,
        "agreement": agreement,
        "probes": _probe_info(tables, test_accuracy, settings, side),
        "computational": tables.computational,
        "truncation": truncation,
        "missing": sorted(set(tables.missing)),
        "problems": problems,
    }
    summary["recommendations"] = recommendations(summary, settings,
                                                 tracked=config.get("track_saturation", True) is not False)
    return summary


def _borders(rf: pd.DataFrame | None, resolution: Any) -> dict[str, Any] | None:
    """b_min and b_max of the receptive-field table at the run's input resolution, with their conv indices."""
    if rf is None or not isinstance(resolution, int):
        return None
    b_min, b_max = border_layers(rf, resolution)
    return {"resolution": resolution, "b_min": b_min, "b_max": b_max,
            "b_min_index": _conv_index(rf, b_min), "b_max_index": _conv_index(rf, b_max)}


def _accuracy(value: Any, what: str, problems: list[str]) -> float | None:
    """``value`` as an accuracy: None where it is no number, or, with a problem that says so, no number from 0 to 1.
    A metrics CSV whose test_accuracy was 7 showed 'test accuracy 700.00%' and was the probes' reference, without a
    word."""
    number = _number(value)
    if number is not None and not 0.0 <= number <= 1.0:
        problems.append(f"{what} is {number}, not an accuracy from 0 to 1; left out")
        return None
    return number


def _test_accuracy(tables: RunTables, row: pd.Series | None, problems: list[str]) -> float | None:
    """The last epoch's test accuracy; without an Accuracy metric, the one the extraction measured."""
    test_accuracy = _accuracy(row.get("test_accuracy") if row is not None else None,
                              f"{tables.folder.metrics_csv.name}: test_accuracy of its last epoch", problems)
    unmeasured = tables.metrics is None or "test_accuracy" not in tables.metrics.columns  # no Accuracy metric
    if test_accuracy is None and unmeasured and tables.manifest:  # then the extraction measured it (rows of a
        # damaged CSV stay unknown: the manifest's accuracy is the final model's, not that of their last epoch)
        test_accuracy = _accuracy(tables.manifest.get("model_test_accuracy"),
                                  "latents/manifest.json: model_test_accuracy", problems)
    return test_accuracy


def _saturation_section(tables: RunTables, row: pd.Series | None, saturations: pd.DataFrame | None,
                        main_path: pd.DataFrame | None, tails: list[Tail], names: list[str],
                        settings: AnalysisSettings) -> dict[str, Any] | None:
    """analysis.json's ``saturation``: s_μ of the main path and of every layer, outside the tails, per layer
    (None without saturation columns)."""
    if saturations is None or main_path is None:
        return None
    mean_column = f"{settings.analysis_split}_saturation_mean"
    all_layers = None  # the run CSV's s_μ: every tracked layer
    if row is not None and mean_column in row.index:
        all_layers = _number(row[mean_column])
    if all_layers is None:
        all_layers = float(saturations["saturation"].mean())
    # s_μ of the analysis and its width advice: the main path, as the tails (§10.1). A side branch's saturation
    # says nothing of the width: an SE gate behind a 16× bottleneck stays low, a one-channel gate is always 1.
    s_mu = all_layers
    if len(main_path) and len(main_path) < len(saturations):
        s_mu = _number(main_path["saturation"].mean())
    in_tail = {p for t in tails for p in range(t.start, t.stop + 1)}  # positions on the main path
    outside = [s for p, s in enumerate(main_path["saturation"]) if p not in in_tail]
    return {"split": settings.analysis_split, "epoch": _int(row.get("epoch")) if row is not None else None,
            "mean": s_mu, "mean_all_layers": all_layers,
            "mean_outside_tails": float(sum(outside) / len(outside)) if outside else None,
            "layers": saturations.to_dict(orient="records"),
            "main_path": names,  # what a tail's start/stop index: side branches are no part of it
            "last_tail_since_epoch": _last_tail_since(tables.metrics, names, tails, settings)}


def _int(value: Any) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def _conv_index(rf: pd.DataFrame, layer: str | None) -> int | None:
    if layer is None or "index" not in rf.columns:
        return None
    match = rf.loc[rf["layer"].astype(str) == layer, "index"]
    return _int(match.iloc[0]) if len(match) else None
