"""Step ``flops``: MACs, FLOPs and parameters for one image → computational_info.json/.csv."""

from __future__ import annotations

import logging
from typing import Any

from phd_lab import atomic
from phd_lab.steps import Step, StepContext, register_step

log = logging.getLogger(__name__)


@register_step
class FlopsStep(Step):
    name = "flops"
    summary = "ptflops MACs/FLOPs and parameter counts for one image → computational_info.json/.csv"

    def run(self, ctx: StepContext, **params: Any) -> None:
        from phd_lab.analysis.flops import computational_info

        shape = (ctx.bundle.in_channels, ctx.bundle.resolution, ctx.bundle.resolution)
        info, table = computational_info(ctx.model, shape)
        atomic.write_csv(ctx.rundir.computational_info_csv, table)
        atomic.write_json(ctx.rundir.computational_info_json, {"run": ctx.config.name, **info,
                                                               "layers": table.to_dict(orient="records")})
        log.info("%s: %.4g MMACs, %d parameters (%d trainable)", ctx.config.name, info["macs"] / 1e6,
                 info["params_total"], info["params_trainable"])
