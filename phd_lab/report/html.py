"""One self-contained static HTML page for a grid: sortable run table, comparison plots, run sections.

Figures are embedded as base64 PNGs; links point to in-page anchors or to files of the run folders
(relative to the page, and only to files that exist). The sorting script is a few lines of inline
JavaScript; the page needs no network and no server.
"""

from __future__ import annotations

import base64
import datetime as _dt
import os
from html import escape
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote

from phd_lab.analysis.recommendations import count_text, probes_are_stale
from phd_lab.report.collect import RunEntry
from phd_lab.report.config_values import FIXED_COLUMNS, flat_config, varying_keys
from phd_lab.report.figure_reuse import KeyedFigure
from phd_lab.report.repetition_files import TITLE
from phd_lab.report.repetitions import RepetitionGroup, repetitions_section

MISSING = "—"

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em 2em;color:#222}
h1{margin-bottom:.2em} .meta{color:#666;font-size:.9em}
table{border-collapse:collapse;font-size:.85em;margin:1em 0}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;white-space:nowrap}
th{background:#f0f0f0;cursor:pointer;user-select:none} th[data-order=asc]::after{content:" ▲"}
th[data-order=desc]::after{content:" ▼"} tbody tr:nth-child(even){background:#fafafa}
td.num{text-align:right} .missing{color:#aaa} .warn{color:#b35900} .ok{color:#2d7d2d}
section.run{border-top:2px solid #ddd;margin-top:2em;padding-top:.5em}
section.run img{max-width:100%;border:1px solid #eee} .figures img{max-width:32%;min-width:300px;margin-right:1%}
.facts td:first-child{font-weight:600} ul.advice li{margin:.3em 0;white-space:normal;max-width:70em}
h3 .swept{font-weight:normal;font-size:.85em;color:#555} tr.significant td{font-weight:600}
"""

# Click a header to sort by it; numbers sort numerically (data-sort), missing values always last.
_JS = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var asc = th.dataset.order !== 'asc';
      table.querySelectorAll('th').forEach(function (h) { delete h.dataset.order; });
      th.dataset.order = asc ? 'asc' : 'desc';
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      function key(row) {
        var cell = row.cells[col], raw = cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent.trim();
        var num = parseFloat(raw);
        return {empty: raw === '', num: isNaN(num) ? null : num, text: raw.toLowerCase()};
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x.empty || y.empty) { return x.empty - y.empty; }
        var d = (x.num !== null && y.num !== null) ? x.num - y.num : (x.text < y.text ? -1 : x.text > y.text ? 1 : 0);
        return asc ? d : -d;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def _img(data: bytes, alt: str, key: str | None = None) -> str:
    """An embedded PNG; ``key``: what it was drawn from, so that the next report can take it as it is."""
    keyed = f'data-key="{escape(key)}" ' if key else ""
    return f'<img {keyed}alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


def _count(value: float | None) -> str:
    return MISSING if value is None else count_text(value, " ")


def _pct(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2%}"


def _cell(text: Any, sort: Any = None, *, numeric: bool = False, css: str = "") -> str:
    """A table cell showing ``text`` as a string (a config value or layer name may be a number)."""
    text = str(text)
    classes = " ".join(c for c in (("num" if numeric else ""), ("missing" if text == MISSING else ""), css) if c)
    attrs = f' class="{classes}"' if classes else ""
    if sort is not None or text == MISSING:
        attrs += f' data-sort="{escape("" if sort is None else str(sort))}"'
    return f"<td{attrs}>{escape(text)}</td>"


def _link(path: Path, out_dir: Path, text: str) -> str:
    # as the paths are typed, not resolved: a browser applies ".." to the page's address, symlinks included
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(out_dir))
    # the name's own bytes: one the locale could not decode holds surrogates, which quote's UTF-8 refused
    return f'<a href="{escape(quote(os.fsencode(Path(rel).as_posix())))}">{escape(text)}</a>'


def _run_files(entry: RunEntry, out_dir: Path) -> list[str]:
    folder = entry.folder
    candidates = [folder.config, folder.log, folder.metrics_csv] + [  # the log: a failed run's traceback
        folder.receptive_field_csv, folder.computational_info_json, folder.computational_info_csv, folder.probe_csv,
        folder.projections_csv, folder.analysis_json, folder.analysis_plot]
    candidates += [*sorted(folder.root.glob("probe_performances_*.csv")), folder.probe_sets_plot]  # latents sets
    return [_link(p, out_dir, p.name) for p in candidates if p.is_file()]


def _tail_start(summary: dict[str, Any]) -> str | None:
    tails = summary.get("tails") or []
    return tails[-1]["first_layer"] if tails else None


def _agreement_text(summary: dict[str, Any]) -> tuple[str, str]:
    agreement = (summary.get("agreement") or {}).get("b_min")
    if not agreement or agreement.get("agrees") is None:
        return MISSING, ""
    if agreement["agrees"]:
        return ("yes" if agreement["border"] else "yes (none)"), "ok"
    offset = agreement.get("offset")
    return (f"no ({offset:+d})" if offset is not None else "no"), "warn"


def run_label(entry: RunEntry, logs_dir: Path) -> str:
    """The run folder relative to the logs folder (names alone repeat across a grid)."""
    try:
        return entry.folder.root.resolve().relative_to(logs_dir.resolve()).as_posix()
    except ValueError:
        return str(entry.folder.root)


def _row(index: int, entry: RunEntry, varying: list[str], logs_dir: Path) -> str:
    s = entry.summary
    run = s["run"]
    flat = flat_config(entry.tables.config)
    status = (run.get("status") or {}).get("label") or MISSING
    test = (s.get("accuracy") or {}).get("test")
    s_mu = (s.get("saturation") or {}).get("mean")
    comp = s.get("computational") or {}
    borders = s.get("borders") or {}
    tail = _tail_start(s)
    agree, agree_css = _agreement_text(s)
    probes = (s.get("probes") or {}).get("status") or MISSING
    label = run_label(entry, logs_dir)
    cells = [f'<td data-sort="{index}"><a href="#run-{index}" title="{escape(label)}">{index}. '
             f'{escape(run["name"])}</a></td>',
             _cell(str(run.get("model") or MISSING)), _cell(str(run.get("dataset") or MISSING)),
             _cell(str(run.get("resolution") or MISSING), run.get("resolution"), numeric=True)]
    for key in varying:
        value = flat.get(key)
        cells.append(_cell(value if value is not None else MISSING, value))
    cells += [_cell(status), _cell(_pct(test), test, numeric=True), _cell(_pct(s_mu), s_mu, numeric=True),
              _cell(_count(comp.get("params")), comp.get("params"), numeric=True),
              _cell(_count(comp.get("flops")), comp.get("flops"), numeric=True),
              _cell(borders.get("b_min") or MISSING, borders.get("b_min_index")),
              _cell(borders.get("b_max") or MISSING, borders.get("b_max_index")),
              _cell(tail or MISSING), _cell(agree, css=agree_css), _cell(probes)]
    return "<tr>" + "".join(cells) + "</tr>"


def _facts(s: dict[str, Any]) -> str:
    rows = []
    sat = s.get("saturation") or {}
    probes = s.get("probes") or {}
    truncation = s.get("truncation") or {}
    comp = s.get("computational") or {}
    tails = s.get("tails") or []
    borders = s.get("borders") or {}
    rows.append(("status", (s["run"].get("status") or {}).get("label") or MISSING))
    rows.append(("test accuracy", _pct((s.get("accuracy") or {}).get("test"))))
    rows.append((f"s_mu ({sat.get('split', 'train')}, epoch {sat.get('epoch', MISSING)})", _pct(sat.get("mean"))))
    rows.append(("s_mu outside tails", _pct(sat.get("mean_outside_tails"))))
    rows.append(("tails", "; ".join(f"{t['first_layer']} → {t['last_layer']} ({t['length']} layers, mean "
                                    f"{t['mean_saturation']:.1%} vs {t['rest_mean_saturation']:.1%})"
                                    for t in tails) or ("none" if s.get("saturation") else MISSING)))
    if sat.get("last_tail_since_epoch") is not None:
        rows.append(("last tail visible since", f"epoch {sat['last_tail_since_epoch']} of {sat.get('epoch')}"))
    rows.append(("border layers (b_min / b_max)", f"{borders.get('b_min') or 'none'} / {borders.get('b_max') or 'none'}"
                 if borders else MISSING))
    rows.append(("tail start vs b_min", _agreement_text(s)[0]))
    rows.append(("parameters / FLOPs", f"{_count(comp.get('params'))} / {_count(comp.get('flops'))}"))
    if truncation:
        rows.append(("truncation at b_min saves", f"{_count(truncation.get('params_saved'))} parameters, "
                     f"{_count(truncation.get('flops_saved'))} FLOPs"))
    rows.append(("probes", probes.get("status") or MISSING))
    if probes.get("pixelwise"):
        rows.append(("probe accuracy per layer", "the mean over its feature-map positions (pixelwise probes)"))
    if not probes_are_stale(probes) and (probes.get("first_reaching_layer") is not None or probes.get("layers_probed")):
        rows.append(("first layer reaching the model", probes.get("first_reaching_layer") or "none"))
        rows.append(("skipped layers (probe drops)", ", ".join(probes.get("skipped_layers") or []) or "none"))
    body = "".join(f"<tr><td>{escape(k)}</td><td>{escape(str(v))}</td></tr>" for k, v in rows)
    return f'<table class="facts">{body}</table>'


def _projections(entry: RunEntry) -> str:
    frame = entry.tables.projections
    if frame is None or not len(frame):
        return ""
    columns = [c for c in ("delta", "basis", "accuracy", "loss", "saturation_mean") if c in frame.columns]
    if not columns:
        return ""
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    rows = "".join("<tr>" + "".join(f"<td>{escape(f'{v:.4g}' if isinstance(v, float) else str(v))}</td>"
                                    for v in record) + "</tr>"
                   for record in frame[columns].head(60).itertuples(index=False))
    return f"<details><summary>PCA projections ({len(frame)} rows)</summary><table>" \
           f"<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></details>"


def _section(index: int, entry: RunEntry, out_dir: Path, logs_dir: Path, varying: Sequence[str]) -> str:
    s = entry.summary
    values = flat_config(entry.tables.config)  # the run's name leaves out the swept values that tell runs apart
    swept = " · ".join(f"{key}={values[key]}" for key in varying if key in values)
    swept = f' <span class="swept">{escape(swept)}</span>' if swept else ""
    parts = [f'<section class="run" id="run-{index}">', f"<h3>{index}. {escape(s['run']['name'])}{swept}</h3>",
             f"<p><code>{escape(run_label(entry, logs_dir))}</code></p>",
             f'<p class="meta">{escape(str(entry.folder.root))}</p>', _facts(s)]
    if entry.figure:
        parts.append(_img(entry.figure, f"analysis figure of {s['run']['name']}"))
    advice = s.get("recommendations") or []
    if advice:
        parts.append("<h4>Recommendations</h4><ul class=\"advice\">"
                     + "".join(f"<li><b>{escape(a['kind'])}:</b> {escape(a['text'])}</li>" for a in advice) + "</ul>")
    missing = s.get("missing") or []
    if missing:
        parts.append(f'<p class="missing">Not (yet) in the folder: {escape(", ".join(missing))}</p>')
    problems = list(s.get("problems") or []) + [e for e in entry.errors if e not in (s.get("problems") or [])]
    if problems:
        parts.append('<ul class="warn">' + "".join(f"<li>{escape(p)}</li>" for p in problems) + "</ul>")
    parts.append(_projections(entry))
    files = _run_files(entry, out_dir)
    if files:
        parts.append("<p>Files: " + " · ".join(files) + "</p>")
    parts.append('<p><a href="#runs">back to the table</a></p></section>')
    return "\n".join(p for p in parts if p)


def render_report(entries: Sequence[RunEntry], logs_dir: Path, out_path: Path,
                  comparison: Sequence[KeyedFigure], repetitions: Sequence[RepetitionGroup] = (),
                  repetition_files: Sequence[Path] = ()) -> str:
    """The HTML text of the report page; ``repetitions``: groups of repeated runs, with the tables written
    for them in ``repetition_files``."""
    out_dir = out_path.parent
    varying = varying_keys(entries)
    headers = (["run", *FIXED_COLUMNS] + varying + ["training", "test acc", "s_mu", "params", "FLOPs", "b_min",
                                                     "b_max", "tail start", "tail at b_min", "probes"])
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    rows = "\n".join(_row(i, e, varying, logs_dir) for i, e in enumerate(entries, 1))
    figures = "".join(_img(figure.png, figure.title, figure.key) for figure in comparison)
    sections = "\n".join(_section(i, e, out_dir, logs_dir, varying) for i, e in enumerate(entries, 1))
    repeated = repetitions_section(repetitions, [_link(p, out_dir, p.name) for p in repetition_files], _img)
    jump = ' · <a href="#repetitions">repetitions</a>' if repeated else ""
    # with its UTC offset, as the log lines have theirs: a page read on another machine says when it was made
    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %z")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{TITLE}{escape(str(logs_dir))}</title>
<style>{_CSS}</style></head>
<body>
<h1>phd-lab report</h1>
<p class="meta">{len(entries)} run(s) in {escape(str(logs_dir))} · generated {now} ·
<a href="#runs">runs</a> · <a href="#comparison">comparison</a>{jump}</p>
<h2 id="runs">Runs</h2>
<p class="meta">Click a column header to sort. s_mu: average saturation of the last epoch; tail at b_min: whether
the tail closest to the output starts at the border layer b_min.</p>
<table class="sortable" id="runs-table"><thead><tr>{head}</tr></thead>
<tbody>
{rows}
</tbody></table>
<h2 id="comparison">Comparison across the grid</h2>
<div class="figures">{figures}</div>
{repeated}
<h2>Runs in detail</h2>
{sections}
<script>{_JS}</script>
</body></html>
"""
