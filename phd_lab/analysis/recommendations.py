"""Plain-language advice from a run's analysis: the thesis' guidelines turned into sentences.

``recommendations(summary, settings)`` reads the dict ``run_summary.summarize`` built (tails,
border layers, probes, s_μ, cost) and says what to change: depth first (cut at the border layer
or slow the receptive-field growth), then width. It only formats text; every number comes from
the summary, so the wording can change here without touching the analysis itself.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from phd_lab.analysis.run_tables import RECEPTIVE_FIELD
from phd_lab.wording import first_names, plural

if TYPE_CHECKING:  # run_summary imports this module
    from phd_lab.analysis.run_summary import AnalysisSettings

Advice = dict[str, str]
EDGE_TOLERANCE = 1e-9  # relative: s_mu within it of the target interval's edge counts as on the edge


def recommendations(summary: dict[str, Any], settings: AnalysisSettings, tracked: bool = True) -> list[Advice]:
    """Plain-language advice from the thesis' guidelines: depth (tails, borders) first, then width.
    ``tracked``: whether the run tracks saturation at all (``track_saturation``)."""
    status = (summary.get("run") or {}).get("status") or {}
    if status.get("state") == "diverged":
        return [{"kind": "diverged", "text": (
            f"The run {status.get('label', 'diverged')}: its weights are no longer finite, so its saturation, probes "
            "and costs describe a broken model, and the thesis' guidelines cannot be read from them. Train it again "
            "with a smaller learning rate (optimizer_args) under a new run_id.")}]
    objective = (summary.get("run") or {}).get("objective")
    if objective is not None:  # §7.2's autoencoder: the guidelines below were read from classifiers
        advice = [{"kind": "objective", "text": (
            f"This model is trained for {objective}, not classification. The thesis' guidelines (tails and border "
            f"layers, probe plateaus, the 20-30% s_mu interval) were read from classifiers, so none is applied to it; "
            f"its saturation, probes and costs are reported as measured.")}]
    else:
        advice = _dead_layer_advice(summary["saturation"]) + _depth_advice(summary) + _probe_advice(summary["probes"])
        width = _width_advice(summary, settings)
        if width:
            advice.append(width)
        if not advice:
            advice.append(_no_advice(summary["saturation"], tracked))
    if status.get("state") == "failed":
        advice.insert(0, {"kind": "failed", "text": (
            f"Training {status.get('label')}: its log has the traceback. Fix the cause and run the same command "
            f"again" + (f"; it resumes after epoch {status['epochs_done']}." if status.get("epochs_done") else "."))})
    elif status.get("state") in ("running", "stopped", "incomplete") and status.get("epochs_done"):
        advice.insert(0, {"kind": "provisional", "text": (
            f"Training is not finished ({status.get('label')}): everything below describes the network after epoch "
            f"{status['epochs_done']}, and saturation still changes while a network trains.")})
    elif status.get("state") == "unknown" and status.get("epochs_done"):
        advice.insert(0, {"kind": "provisional", "text": (
            f"Whether training is finished cannot be told (status {status.get('label')}): everything below "
            f"describes the network after epoch {status['epochs_done']}, the last the metrics CSV holds in full.")})
    return advice


def _depth_advice(summary: dict[str, Any]) -> list[Advice]:
    """Tails and border layers: cut at the border, grow the receptive field faster, or check the probes."""
    advice: list[Advice] = []
    tails, borders = summary["tails"], summary["borders"]
    b_min = borders["b_min"] if borders else None
    last_tail = tails[-1] if tails else None
    if b_min:
        advice.append({"kind": "depth", "text": _border_text(summary)})
    at_input = bool(tails) and tails[0]["start"] == 0
    if at_input and not (b_min and len(tails) == 1 and summary["agreement"]["b_min"]["agrees"]):
        advice.append({"kind": "depth", "text": (
            f"A low-saturated tail at the input ({tails[0]['first_layer']} to {tails[0]['last_layer']}): the "
            "input resolution is large for the receptive field of the first layers, which see too little "
            "context to contribute. Grow the receptive field faster early on (a strided stem or an earlier "
            "pooling layer) or lower the input resolution (thesis ch. 8.5, 9.2).")})
    if last_tail and not b_min:
        if not at_input or len(tails) > 1:
            advice.append({"kind": "depth", "text": (
                f"A low-saturated tail from {last_tail['first_layer']} to {last_tail['last_layer']} is not predicted "
                "by the receptive field (no border layer"
                + ("" if borders else f"; {_why_no_borders(summary)}")
                + "). Check the probes: if their accuracy stops improving there, these layers can be removed.")})
    return advice


def _border_text(summary: dict[str, Any]) -> str:
    """The advice for a border layer b_min inside the network: cut there (with the savings) or slow the growth."""
    tails, borders, sat = summary["tails"], summary["borders"], summary["saturation"]
    resolution, b_min = borders["resolution"], borders["b_min"]
    last_tail = tails[-1] if tails else None
    text = (f"{b_min} and every layer after it on the way to the output receive from the layer before them more "
            f"than the {resolution}x{resolution} input (its smallest receptive field r_min exceeds it: border layer "
            f"b_min), so these layers cannot add context")
    agreement = summary["agreement"]["b_min"]
    offset = agreement.get("offset")
    if last_tail and agreement["agrees"]:
        text += f"; the saturation tail from {last_tail['first_layer']} to {last_tail['last_layer']} confirms it."
    elif last_tail and offset is not None and last_tail["start"] > 0:  # a tail beside the border, not at it
        text += (f"; the saturation tail closest to the output, {last_tail['first_layer']} to "
                 f"{last_tail['last_layer']}, starts {abs(offset)} {'layer' if abs(offset) == 1 else 'layers'} "
                 f"{'after' if offset > 0 else 'before'} it (more than border_tolerance), so check the probes "
                 f"before cutting.")
    else:
        text += ("; the saturation shows no tail starting there, so check the probes before cutting."
                 if sat else "; saturation was not recorded to confirm it.")
    truncation = summary["truncation"]
    cut_before = truncation.get("cut_before") if truncation else None
    if cut_before and cut_before != b_min:  # b_min inside a block of several paths: the whole block goes
        text += (f" Option 1: cut the model before {cut_before}, the block {b_min} lies in (a cut must lie on every "
                 f"path from the input, so the whole block goes, as \"truncate\": \"border\" does), and put global "
                 f"average pooling + a linear classifier on the stump, then retrain (thesis ch. 11.4).")
    else:
        text += (f" Option 1: cut {b_min} and every later layer and put global average pooling + a linear "
                 f"classifier on the stump, then retrain (thesis ch. 11.4).")
    if truncation:
        share = truncation.get("params_saved_share")
        flop_share = truncation.get("flops_saved_share")
        text += (f" This saves about {_fmt_count(truncation['params_saved'])} parameters"
                 + (f" ({share:.0%})" if share is not None else "")
                 + f" and {_fmt_count(truncation['flops_saved'])} FLOPs per image"
                 + (f" ({flop_share:.0%})" if flop_share is not None else "")
                 + (" (measured on the truncated model, new head included)." if truncation.get("exact") else
                    " (estimate from computational_info; the new head is counted)." if truncation["head_params"]
                    is not None else " (estimate from computational_info; the new head is not counted)."))
    text += (" Option 2: slow down the receptive-field growth (remove or move a downsampling layer or the "
             "strided stem) so the later layers stay below the input resolution; this keeps the depth but "
             "costs more FLOPs because the feature maps get larger.")
    return text


def probes_are_stale(probes: dict[str, Any]) -> bool:
    """Whether the summary's probe results predate the latents (status "stale ..."): no verdict is read from them."""
    return str(probes.get("status", "")).startswith("stale")


def _probe_advice(probes: dict[str, Any]) -> list[Advice]:
    """What the probes say: out of date, accuracy drops (skipped layers), or layers after the model's accuracy."""
    advice: list[Advice] = []
    stale = probes_are_stale(probes)
    mean = " (per layer, the mean over its feature-map positions)" if probes.get("pixelwise") else ""
    if stale and "older phd-lab" in str(probes.get("status")):
        advice.append({"kind": "probes", "text": (
            "The probes were fitted on latents an older phd-lab extracted (small feature maps up-sampled): rerun "
            "main.py, which extracts them again from the checkpoint, then probe_main.py, before reading anything "
            "from the probes.")})
    elif stale:
        advice.append({"kind": "probes", "text": (
            "The probe results predate the latents (extracted again since): rerun probe_main.py before reading "
            "anything from the probes.")})
    if probes.get("skipped_layers") and not stale:
        advice.append({"kind": "probes", "text": (
            f"Probe accuracy{mean} drops at {', '.join(probes['skipped_layers'])}: their outputs are less linearly "
            "separable than those of earlier layers. In a network with shortcut connections this marks layers it "
            "skips through them (thesis App. C): they add parameters but no quality.")})
    first = probes.get("first_reaching_layer")
    if first and probes.get("layers_after_reaching") and not stale:
        advice.append({"kind": "probes", "text": (
            f"The probes reach the model's accuracy at {first}{mean}; the {probes['layers_after_reaching']} probed "
            "layer(s) after it do not improve the intermediate solution.")})
    return advice


def _dead_layer_advice(sat: dict[str, Any] | None) -> list[Advice]:
    """Name the layers without any variance beside layers with some: a trained classifier's layers rarely have
    none, an output layer never (it would score every input alike), so they mark broken training (units that
    never fire, a collapsed output), and the width advice read from such an s_mu told a collapsed network that
    it was wider than needed. (No layer with variance at all is the 'no-variance' case.)"""
    if not _has_variance(sat):
        return []
    dead = [str(entry["layer"]) for entry in sat.get("layers") or [] if entry.get("saturation") == 0]
    if not dead:
        return []
    named = first_names(dead)
    return [{"kind": "dead-layers", "text": (
        f"{named} showed no variance at all on the {sat.get('split', 'train')} set (saturation 0: units that never "
        f"fire, or an output that is the same for every input). A trained layer rarely does; check the training "
        f"(loss, accuracy, learning rate) first: these layers pull s_mu down and can form a tail, so the advice "
        f"below may describe a broken network rather than its architecture.")}]


def _has_variance(sat: dict[str, Any] | None) -> bool:
    """An s_μ that can judge the width: recorded, finite and above 0 (0: no variance at all)."""
    return bool(sat and sat["mean"] is not None and math.isfinite(sat["mean"]) and sat["mean"] > 0)


def _width_advice(summary: dict[str, Any], settings: AnalysisSettings) -> Advice | None:
    """Scale the width when s_μ lies outside the target interval (thesis ch. 11.3), or None."""
    sat, tails = summary["saturation"], summary["tails"]
    if not _has_variance(sat):
        return None
    low, high = settings.target_saturation
    s_mu = sat["mean"]
    target = (low + high) / 2
    # closed interval, with room for rounding: layers exactly on an edge can average a bit off it in float
    below, above = s_mu < low * (1 - EDGE_TOLERANCE), s_mu > high * (1 + EDGE_TOLERANCE)
    if not (below or above):
        return None
    factor = s_mu / target
    direction = "wider than needed (over-parameterised)" if below else "too narrow (under-parameterised)"
    width = (summary.get("run") or {}).get("width")
    # a power-of-two step to try, unless the nearest one is the current width (a small correction)
    step = _power_of_two(factor)
    if width:
        scaling = (f"multiplying the current width (model_args.width = {width:g}) by about {factor:.2f}, "
                   f"i.e. width ≈ {width * factor:.3g}" + (f" (try {width * 2.0 ** step:g})," if step else ","))
    else:
        scaling = (f"multiplying every layer's width by about {factor:.2f}"
                   + (f" (try {nice_factor(factor)})," if step else ","))
    text = (f"s_mu = {s_mu:.1%} lies {'below' if below else 'above'} the {low:.0%}-{high:.0%} interval "
            f"that performs best (thesis ch. 11.3): the network is {direction}. Assuming saturation scales "
            f"inversely with width, {scaling} moves s_mu to about {target:.0%}; parameters and FLOPs of "
            f"the convolutions scale with the square of that factor.")
    if tails:
        text += (" Remove the tail first: it distorts s_mu, and depth and width are best optimised in "
                 "that order.")
    return {"kind": "width", "text": text}


def _no_advice(sat: dict[str, Any] | None, tracked: bool) -> Advice:
    """Why there is nothing to change: saturation not tracked or not recorded yet, no variance, or all is well."""
    count = len(sat["layers"]) if sat else 0
    n_layers = plural(count, "layer")
    if sat is None and not tracked:
        return {"kind": "missing", "text": (
            "This run was trained with track_saturation false, so neither tails nor width can be judged; train "
            "it again with saturation tracking (track_saturation true, the default) to have them.")}
    if sat is None:
        return {"kind": "missing", "text": (
            "No saturation values recorded yet, so neither tails nor width can be judged; they appear once an "
            "epoch with saturation tracking has finished.")}
    if not _has_variance(sat):
        return {"kind": "no-variance", "text": (
            f"s_mu = {sat['mean']} over {n_layers}: no tracked layer showed any variance (constant "
            "activations, e.g. dead units or an untrained model), so saturation cannot judge the width. Check "
            "the training (loss, learning rate) before reading the other values.")}
    return {"kind": "none", "text": (
        f"No tail, no border layer inside the network and s_mu within the target interval over "
        f"{n_layers}: the thesis' guidelines suggest no change.")}


def nice_factor(factor: float) -> str:
    """The nearest power-of-two width factor as text (1/8, 1/4, 1/2, 1, 2, 4, 8)."""
    exponent = _power_of_two(factor)
    return f"1/{2 ** -exponent}" if exponent < 0 else f"{2 ** exponent}"


def _power_of_two(factor: float) -> int:
    return max(-3, min(3, round(math.log2(factor))))


def count_text(value: float, separator: str = "") -> str:
    """A count in k, M or G with two decimals ("1.23M"), the unit chosen after rounding: 999,999 is "1.00M",
    not "1000.00k"."""
    scaled, unit = value, ""
    for larger in ("k", "M", "G"):
        if abs(round(scaled, 2 if unit else 0)) < 1000:
            break
        scaled, unit = scaled / 1000, larger
    return f"{scaled:.2f}{separator}{unit}" if unit else f"{scaled:.0f}"


def _fmt_count(value: float | None) -> str:
    return "?" if value is None else count_text(value)


def receptive_field_failed(missing: list[str], problems: list[str]) -> str | None:
    """How a receptive_field.csv the run asked for failed ("is missing", "cannot be used"), or None."""
    if RECEPTIVE_FIELD in missing:
        return "is missing"
    if any(str(problem).startswith(RECEPTIVE_FIELD) for problem in problems):
        return "cannot be used"
    return None


def _why_no_borders(summary: dict[str, Any]) -> str:
    """Why a run has no border layers: the table is missing or unreadable, or the resolution unknown."""
    failed = receptive_field_failed(summary.get("missing") or [], summary.get("problems") or [])
    if failed:
        return f"{RECEPTIVE_FIELD} {failed}"
    if not isinstance((summary.get("run") or {}).get("resolution"), int):
        return "the config gives no input resolution"
    return "the receptive_field step did not run for it"
