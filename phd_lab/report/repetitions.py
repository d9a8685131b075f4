"""The report's repetition groups: runs whose result-affecting config values are equal except run_id and seed.

For every group of two runs or more the report shows how stable each layer's saturation is over the
repetitions (§8.2) and, where the runs were projected, which deltas leave their accuracy statistically
unchanged (§7.4); the numbers also go to two CSV files beside the page (``repetitions_csvs``).
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from html import escape
from typing import Callable, Mapping, Sequence

import pandas as pd

from phd_lab.analysis.repetitions import (Spread, compared_runs, relevant_delta, relevant_eigenspace_table,
                                          saturation_stability)
from phd_lab.config import SCHEMA_BY_NAME, RunConfig
from phd_lab.plots.grid_figures import finished
from phd_lab.report.collect import RunEntry
from phd_lab.report.config_values import FIXED_COLUMNS, flat_values
from phd_lab.report.figure_reuse import KeyedFigure, figure_key, keyed_figure
from phd_lab.report.repetition_files import DEFAULT_ALPHA

log = logging.getLogger(__name__)

REPEATED_BY = ("run_id", "seed")  # what tells the repetitions of one configuration apart


@dataclass
class RepetitionGroup:
    """The runs of one configuration and the statistics over them (None where fewer than two runs have
    the data: finished training with saturations, or a projections table)."""

    label: str
    entries: list[RunEntry]
    alpha: float = DEFAULT_ALPHA
    split: str = "train"  # the runs' analysis_split: the saturations compared, drawn in its colour
    saturations: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    stability: pd.DataFrame | None = None
    accuracy: Spread | None = None
    eigenspace: pd.DataFrame | None = None
    relevant_delta: float | None = None
    figures: list[KeyedFigure] = field(default_factory=list)  # ``draw_figures``
    same_seed: list[RunEntry] = field(default_factory=list)  # left out: another run of the group has their seed
    projected: int = 0  # runs whose projections the t-tests compare
    other_projections: list[RunEntry] = field(default_factory=list)  # left out: projected with other parameters


def _identity(entry: RunEntry) -> str | None:
    """What repetitions share: the run's identity as its folder's hash has it (``RunConfig.identity``: result-
    affecting values, ``num_workers`` where not 0, no ``download``; schema defaults filled in where a config
    logged by an older version lacks a key) but run_id and seed, and the saturation split the analysis reads."""
    config = entry.tables.config
    if not config:
        return None
    values = {**{key.name: key.default for key in SCHEMA_BY_NAME.values()},
              **{k: v for k, v in config.items() if k in SCHEMA_BY_NAME}}
    identity = {k: v for k, v in RunConfig(values).identity().items() if k not in REPEATED_BY}
    flat = flat_values(identity)
    flat["analysis_split"] = values["analysis_split"]
    return json.dumps(flat, sort_keys=True)


def _projection_setting(entry: RunEntry) -> str:
    """The ``project`` step's parameters but its deltas (each delta is tested over the runs that have it)."""
    for step in (entry.tables.config or {}).get("post_processing") or []:
        if isinstance(step, dict) and step.get("name") == "project":
            return json.dumps({k: v for k, v in step.items() if k not in ("name", "deltas")}, sort_keys=True)
    return "{}"


def _label(flat: dict[str, str], differing: Sequence[str]) -> str:
    model, dataset, resolution = (flat.get(key, "?") for key in FIXED_COLUMNS)
    extra = " · ".join(f"{key}={flat[key]}" for key in differing if key in flat)
    return f"{model} / {dataset} {resolution} px" + (f" · {extra}" if extra else "")


def repetition_groups(entries: Sequence[RunEntry], alpha: float = DEFAULT_ALPHA) -> list[RepetitionGroup]:
    """Groups of runs with the same configuration but for run_id/seed, with their statistics, in the order
    their first run appears in ``entries``; only groups where two runs or more have something to compare, or where
    runs were left out for repeating another run's seed (the section warns of them: a grid of one seed and
    several run_ids would otherwise vanish from the page without a word)."""
    members: dict[str, list[RunEntry]] = {}
    for entry in entries:
        identity = _identity(entry)
        if identity is not None:
            members.setdefault(identity, []).append(entry)
    repeated = {identity: runs for identity, runs in members.items() if len(runs) > 1}
    flats = {identity: json.loads(identity) for identity in repeated}
    keys = sorted({k for flat in flats.values() for k in flat} - set(FIXED_COLUMNS))
    differing = [k for k in keys if len({flat.get(k) for flat in flats.values()}) > 1]
    groups = [group_statistics(RepetitionGroup(_label(flats[identity], differing), runs, alpha,
                                               str(flats[identity]["analysis_split"])))
              for identity, runs in repeated.items()]
    for group in groups:
        if group.same_seed:
            log.warning("%s: %s", group.label, _same_seed_warning(group))
    return [group for group in groups if group.stability is not None or group.eigenspace is not None
            or group.same_seed]


def _same_seed_warning(group: RepetitionGroup) -> str:
    """Why runs of the group are left out: all share one seed (nothing is compared), or some repeat another
    run's seed; either way each repetition should have its own."""
    names = ", ".join("/".join(entry.folder.root.parts[-2:]) for entry in group.same_seed[:5])
    names += ", ..." if len(group.same_seed) > 5 else ""
    advice = 'Give each repetition its own seed (leave "seed" unset: it is derived from the run_id).'
    if len(group.same_seed) == len(group.entries) - 1:
        seed = (group.entries[0].tables.config or {}).get("seed")
        return (f"all {len(group.entries)} runs of this group share seed {seed}: they repeat one training (bit for "
                f"bit on a CPU; on a GPU their spread measures its nondeterminism only) instead of sampling "
                f"others, so nothing is compared over them ({names} left out). {advice}")
    return (f"{len(group.same_seed)} run(s) left out: another run of this group has their seed, so they repeat "
            f"its training instead of sampling another one ({names}). {advice}")


def _independent(entries: Sequence[RunEntry]) -> tuple[list[RunEntry], list[RunEntry]]:
    """The runs to count, one per seed, and those left out because another run has their seed: the same training
    (bit for bit on a CPU), which would pass for agreement between repetitions and make any difference look
    significant. Of a seed's runs the first finished one counts, else the first: a run that failed and its rerun
    under another run_id (``--run-id NEW`` keeps the logged seed) counted nothing, the rerun being left out for the
    failed run's seed."""
    counted: dict[str, RunEntry] = {}
    for entry in entries:
        seed = json.dumps((entry.tables.config or {}).get("seed"))
        if seed not in counted or (finished(entry.summary) and not finished(counted[seed].summary)):
            counted[seed] = entry
    kept = {id(entry) for entry in counted.values()}
    return [e for e in entries if id(e) in kept], [e for e in entries if id(e) not in kept]


def group_statistics(group: RepetitionGroup) -> RepetitionGroup:
    """Fill in the group's saturation spread (finished trainings only: a run still training would show an
    earlier epoch) and its projection t-tests, over runs of distinct seeds."""
    kept, group.same_seed = _independent(group.entries)
    accuracies = []
    for entry in kept:
        layers = (entry.summary.get("saturation") or {}).get("layers") or []
        if finished(entry.summary) and layers:
            group.saturations[str(entry.folder.root)] = [(str(item["layer"]), float(item["saturation"]))
                                                         for item in layers]
            test = (entry.summary.get("accuracy") or {}).get("test")
            if test is not None:
                accuracies.append(float(test))
    if len(group.saturations) > 1:
        group.stability = saturation_stability(group.saturations)
    if len(accuracies) > 1:
        group.accuracy = Spread.of(accuracies)
    projected = [(e, _projection_setting(e)) for e in kept if e.tables.projections is not None
                 and len(e.tables.projections)]
    settings = Counter(setting for _, setting in projected)  # the t-tests compare like with like: the
    common = settings.most_common(1)[0][0] if settings else None  # setting most runs were projected with
    group.other_projections = [e for e, setting in projected if setting != common]
    projections = {str(e.folder.root): e.tables.projections for e, setting in projected if setting == common}
    table = relevant_eigenspace_table(projections, group.alpha) if len(projections) > 1 else None
    if table is not None and (table["n"] > 1).any():  # not: runs without an unprojected row to compare with
        group.eigenspace = table
        group.projected = compared_runs(projections)
        group.relevant_delta = relevant_delta(table)
    return group


# ---------------------------------------------------------------------------------------- CSV
def repetitions_csvs(groups: Sequence[RepetitionGroup]) -> dict[str, pd.DataFrame]:
    """The tables behind the section, keyed by a file name suffix: every group's rows with its label first."""
    frames = {}
    stability = [g.stability.assign(runs=len(g.saturations)).pipe(_with_group, g) for g in groups
                 if g.stability is not None]
    if stability:
        frames["saturation_stability"] = pd.concat(stability, ignore_index=True)
    eigenspace = [g.eigenspace.assign(alpha=g.alpha).pipe(_with_group, g) for g in groups
                  if g.eigenspace is not None]
    if eigenspace:
        frames["relevant_eigenspace"] = pd.concat(eigenspace, ignore_index=True)
    return frames


def _with_group(frame: pd.DataFrame, group: RepetitionGroup) -> pd.DataFrame:
    return frame.assign(group=group.label)[["group", *frame.columns]]


# ---------------------------------------------------------------------------------------- HTML
def _number(value: float, digits: int = 4) -> str:
    return "—" if pd.isna(value) else f"{value:.{digits}f}"


def _share(part: float, whole: float) -> str:
    return f" ({part / whole:.1%})" if whole > 0 and math.isfinite(part / whole) else ""


FEW_RUNS = 10  # below: a verdict of "no significant difference" says that the tests are weak (the thesis: 15-40)


def _verdict(group: RepetitionGroup, pca: pd.DataFrame) -> str:
    pca = pca[pca["n"] > 1]  # a delta of one run is tested against nothing
    if group.relevant_delta is None:
        if not len(pca):
            return "No PCA projection was tested on two runs or more."
        return (f"No relevant eigenspace among the tested deltas: the largest, δ = {pca['delta'].max():g}, "
                f"already differs significantly (α = {group.alpha:g}).")
    kept = pca[pca["delta"] == group.relevant_delta].iloc[0]
    verdict = (f"Relevant eigenspace: from δ = {group.relevant_delta:g} on, no tested δ differs significantly "
               f"(α = {group.alpha:g}); it keeps {_number(kept.dims_sum_mean, 0)} of "
               f"{_number(kept.feature_dims_sum, 0)} directions{_share(kept.dims_sum_mean, kept.feature_dims_sum)}, "
               f"with μ_diff {_number(kept.drop_mean)} ± {_number(kept.drop_ci95)} (95% interval).")
    if kept.n < FEW_RUNS:
        verdict += (f" With {kept.n} runs the tests miss all but large differences: not significant is weak "
                    f"evidence of no difference (the thesis tested 15 to 40 runs).")
    return verdict


def _eigenspace_html(group: RepetitionGroup) -> str:
    table = group.eigenspace
    assert table is not None
    pca = table[table["basis"] == "pca"]
    measure = str(table["measure"].iloc[0]) if len(table) else "accuracy"
    rows = []
    for row in pca.itertuples(index=False):
        css = ' class="significant"' if row.significant else ""
        dims = f"{_number(row.dims_sum_mean, 0)} ± {_number(row.dims_sum_std, 0)} of {_number(row.feature_dims_sum, 0)}"
        rows.append(f"<tr{css}><td>{row.delta:g}</td><td class=\"num\">{row.n}</td>"
                    f"<td class=\"num\">{_number(row.drop_mean)}</td><td class=\"num\">{_number(row.drop_ci95)}</td>"
                    f"<td class=\"num\">{_number(row.drop_std)}</td>"
                    f"<td class=\"num\">{_number(row.t, 2)}</td><td class=\"num\">{_number(row.p, 3)}</td>"
                    f"<td class=\"num\">{dims}</td><td class=\"num\">{_number(row.saturation_mean_mean, 3)}</td></tr>")
    what = "accuracy lost" if measure == "accuracy" else "reconstruction loss gained"
    head = ("<tr><th>δ</th><th>n</th><th>μ_diff</th><th>± 95%</th><th>σ_sample</th><th>t</th><th>p</th>"
            "<th>Σ dim E_l^k</th><th>s_mu</th></tr>")
    return (f"<p>Paired two-tailed t-test of the unprojected against the projected networks per δ, over "
            f"{group.projected} projected runs (μ_diff: {escape(what)}; bold: p &lt; {group.alpha:g}). "
            f"{escape(_verdict(group, pca))}</p>"
            f'<details><summary>t-tests of the PCA projections ({len(pca)} deltas)</summary><table>'
            f"<thead>{head}</thead><tbody>{''.join(rows)}</tbody></table></details>")


def _stability_text(group: RepetitionGroup) -> str:
    table = group.stability
    assert table is not None
    widest = table.sort_values("std", ascending=False).iloc[0]
    text = (f"Saturation over {len(group.saturations)} finished runs: the largest standard deviation is "
            f"{widest['std']:.1%} ({widest['layer']}), the median over layers {table['std'].median():.1%}")
    if group.accuracy is not None:
        text += f"; test accuracy {group.accuracy.mean:.1%} ± {group.accuracy.std:.1%}"
    return f"<p>{escape(text)}.</p>"


def draw_figures(group: RepetitionGroup, previous: Mapping[str, bytes] | None = None) -> RepetitionGroup:
    """Draw the group's figures (PNG bytes) into ``group.figures``, or take them from ``previous`` (key →
    PNG, ``previous_figures``) where nothing they show has changed."""
    from phd_lab.plots import repetitions as drawing

    previous = previous or {}
    if group.stability is not None:
        stability, saturations = group.stability, group.saturations
        key = figure_key(drawing, "stability", group.label, stability, data=[*saturations.values(), group.split])
        group.figures.append(keyed_figure(
            f"Saturation over the repetitions of {group.label}", key, previous=previous,
            draw=lambda: drawing.stability_figure(stability, saturations, f"{group.label}: saturation per layer",
                                                  group.split)))
    if group.eigenspace is not None:
        eigenspace = group.eigenspace
        key = figure_key(drawing, "eigenspace", group.label, eigenspace)
        group.figures.append(keyed_figure(
            f"Projections over the repetitions of {group.label}", key, previous=previous,
            draw=lambda: drawing.eigenspace_figure(eigenspace, f"{group.label}: projected against unprojected")))
    return group


def repetitions_section(groups: Sequence[RepetitionGroup], files: Sequence[str],
                        image: Callable[..., str]) -> str:
    """The page's section: per group its text, tables and figures (``image(png, alt, key=...)`` → an <img> tag
    that carries the figure's key)."""
    if not groups:
        return ""
    parts = ['<h2 id="repetitions">Repetitions</h2>',
             '<p class="meta">Runs whose configs differ only in run_id or seed, as the thesis repeats trainings '
             '(§8.2: stability of saturation; §7.4: relevant eigenspaces).</p>']
    for index, group in enumerate(groups, 1):
        parts.append(f'<section class="run repeated" id="repetitions-{index}"><h3>{escape(group.label)} '
                     f'<span class="swept">{len(group.entries)} runs'
                     f'{f", {len(group.same_seed)} left out" if group.same_seed else ""}</span></h3>')
        if group.other_projections:
            parts.append(f'<p class="warn">{len(group.other_projections)} run(s) projected with other parameters of '
                         f'the project step than the others are left out of the t-tests.</p>')
        if group.same_seed:
            warning = _same_seed_warning(group)
            parts.append(f'<p class="warn">{escape(warning[0].upper() + warning[1:], quote=False)}</p>')
        if group.stability is not None:
            parts.append(_stability_text(group))
        if group.eigenspace is not None:
            parts.append(_eigenspace_html(group))
        parts.append('<div class="figures">' + "".join(image(f.png, f.title, key=f.key) for f in group.figures)
                     + "</div></section>")
    if files:
        parts.append("<p>Tables: " + " · ".join(files) + "</p>")
    return "\n".join(parts)
