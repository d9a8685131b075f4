"""Step ``flops``: MACs, FLOPs and parameters for one image → computational_info.json/.csv."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from phd_lab import atomic
from phd_lab.interrupts import raise_interruption_behind
from phd_lab.rundir import RunDir
from phd_lab.steps import Step, StepContext, register_step

log = logging.getLogger(__name__)


@register_step
class FlopsStep(Step):
    name = "flops"
    summary = "ptflops MACs/FLOPs and parameter counts for one image → computational_info.json/.csv"
    # 2: truncation savings of ShuffleNetV2 (a cut inside a unit) and ConvNeXt (removed_layers); 3: the truncation
    # names the layer or block the cut is really before (cut_before: MPNet's b_min lies inside a block)
    version = 3

    def outputs(self, rundir: RunDir) -> tuple[Path, ...]:
        return rundir.computational_info_json, rundir.computational_info_csv

    def run(self, ctx: StepContext, **params: Any) -> None:
        from phd_lab.analysis.flops import computational_info

        shape = (ctx.bundle.in_channels, ctx.bundle.resolution, ctx.bundle.resolution)
        info, table = computational_info(ctx.model, shape)
        truncation = border_truncation(ctx, (info, table))
        if truncation is not None:
            info["truncation"] = truncation
        atomic.write_csv(ctx.rundir.computational_info_csv, table)
        atomic.write_json(ctx.rundir.computational_info_json, {"run": ctx.config.name, **info,
                                                               "layers": table.to_dict(orient="records")})
        log.info("%s: %.4g MMACs, %d parameters (%d trainable)", ctx.config.name, info["macs"] / 1e6,
                 info["params_total"], info["params_trainable"])


def border_truncation(ctx: StepContext, full: tuple[dict, Any]) -> dict | None:
    """What ``truncate: border`` would save on this model, measured on the truncated model (the
    analysis reports it); None where the model has no border layer or cannot be traced, and for a model
    trained to reconstruct its input, which is not truncated."""
    from phd_lab.analysis.receptive_field import ReceptiveFieldError, border_layers, receptive_fields
    from phd_lab.errors import ConfigError
    from phd_lab.models.truncate import truncation_savings
    from phd_lab.objectives import objective_of

    if not objective_of(ctx.model).uses_labels:
        return None
    resolution = ctx.bundle.resolution
    try:
        b_min, _ = border_layers(receptive_fields(ctx.model, resolution), resolution)
        if b_min is None:
            return None
        return truncation_savings(ctx.model, b_min, num_classes=ctx.bundle.num_classes,
                                  in_channels=ctx.bundle.in_channels, input_resolution=resolution, full=full)
    except (ReceptiveFieldError, ConfigError) as error:
        raise_interruption_behind(error)
        log.info("%s: no truncation cost measured (%s)", ctx.config.name, error)
        return None
    except Exception as error:  # an estimate beside the FLOPs table: it must not fail the step, but a Ctrl-C stops
        raise_interruption_behind(error)
        log.warning("%s: the truncation savings could not be measured (%s: %s); the FLOPs table is complete",
                    ctx.config.name, type(error).__name__, error)
        return None
