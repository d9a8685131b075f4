"""Step ``receptive_field``: r_min/r_max of every layer and the border layers (thesis §4.4, §10.2)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from phd_lab import atomic
from phd_lab.rundir import RunDir
from phd_lab.steps import Step, StepContext, register_step

log = logging.getLogger(__name__)

CHECK_RESOLUTION = 32  # the check's input size where no run's resolution is given


@register_step
class ReceptiveFieldStep(Step):
    name = "receptive_field"
    summary = "r_min/r_max per layer and the border layers b_min/b_max → receptive_field.csv (+png)"
    version = 3  # 2: prev_r_min and side_branch columns; 3: onward_prev_r_min, onward_in_r_max (order-free borders)
    # the shapes that place height and width after a permute or reshape come from a meta-device run of the model at
    # the run's resolution: a model built for 16 px (an LSTM or Linear over its rows) cannot run at another size
    checks_at_resolution = True

    def outputs(self, rundir: RunDir) -> tuple[Path, ...]:
        return rundir.receptive_field_csv, rundir.receptive_field_plot

    def check_model(self, params: dict[str, Any], model: Any, where: str, resolution: int | None = None) -> None:
        """A model the analysis cannot reason about (an op it does not know, untraceable by torch.fx)
        is refused before training, not after it: the other steps would not run either. It runs at the run's
        resolution, as the step does: the shapes of a run of the meta model there place height and width after a
        permute or reshape, and a model made for one input size runs at no other."""
        from phd_lab.analysis.receptive_field import ReceptiveFieldError, receptive_fields
        from phd_lab.errors import ConfigError
        try:
            receptive_fields(model, CHECK_RESOLUTION if resolution is None else resolution)
        except ReceptiveFieldError as error:
            raise ConfigError(f"{where}: post-processing step 'receptive_field': {error}") from None

    def run(self, ctx: StepContext, **params: Any) -> None:
        # here, not at import: --list steps imports no pandas
        from phd_lab.analysis.receptive_field import border_layers, receptive_fields
        from phd_lab.layer_table import read_layer_table
        from phd_lab.plots.receptive_field import plot_receptive_field

        resolution = ctx.bundle.resolution
        table = receptive_fields(ctx.model, resolution)
        atomic.write_csv(ctx.rundir.receptive_field_csv, table, float_format="%.10g")
        b_min, b_max = border_layers(table, resolution)
        log.info("Receptive field of %s at resolution %d: b_min=%s, b_max=%s", ctx.config.name, resolution,
                 b_min, b_max)
        saved = read_layer_table(atomic.read_bytes(ctx.rundir.receptive_field_csv).decode())  # the plot draws it
        title = f"{ctx.config.name}\n{ctx.rundir.variant}"  # the variant tells a grid's runs apart
        plot_receptive_field(saved, resolution, ctx.rundir.receptive_field_plot, title=title)
