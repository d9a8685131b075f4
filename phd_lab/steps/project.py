"""Step ``project``: test accuracy of the network projected onto PCA / random subspaces.

Writes ``projections.csv`` (delta, basis, accuracy, loss, dims_sum, feature_dims_sum,
saturation_mean) and ``projections.png`` into the run folder, ``projections_layers.csv`` (delta, layer, k,
features: each layer's kept dimensions), and for a model trained to reconstruct its input (accuracy NaN,
the plot shows the loss) ``projections_reconstructions.png``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from phd_lab import atomic
from phd_lab.config import Key, RunConfig
from phd_lab.errors import ConfigError
from phd_lab.projection_deltas import THESIS_DELTAS
from phd_lab.rundir import RunDir
from phd_lab.steps import Step, StepContext, register_step
from phd_lab.wording import first_names

log = logging.getLogger(__name__)


@register_step
class Project(Step):
    name = "project"
    summary = "accuracy of the network projected onto PCA (and random) subspaces for a list of deltas"
    # 2: layers never called in eval mode are left out of the sums; 3: x PᵀP (Eq. 12) by default; 4: each delta's
    # random bases from a seed of its own (the same rows whichever other deltas are listed)
    version = 4
    params = (
        Key("deltas", "list", list(THESIS_DELTAS), "explained-variance thresholds in (0, 1] to evaluate (the "
            "unprojected model is always evaluated too)", item_kind="float"),
        Key("random_control", "bool", True, "also evaluate random orthonormal bases of the same k per layer"),
        Key("exclude", "list", [], "fnmatch patterns of Conv2d/Linear layers that get no PCA layer (thesis §7.4.2 "
            "projects ResNet18's 3,904 block dimensions: ['*downsample*', 'fc'])", item_kind="str"),
        Key("centered", "bool", False, "project x − μ and add the mean μ back, instead of the thesis' x PᵀP "
            "(Eq. 12); keeps the mean's part outside the subspace, so accuracy falls more slowly with delta"),
    )

    def check(self, params: dict[str, Any], config: RunConfig, where: str) -> None:
        deltas = params["deltas"]
        bad = [d for d in deltas if not 0.0 < d <= 1.0]
        if not deltas or bad:
            raise ConfigError(f"{where}, step 'project': the parameter 'deltas' must be a non-empty list of numbers "
                              f"in (0, 1]; got {deltas if not bad else bad}.")
        params["deltas"] = sorted({float(d) for d in deltas})

    def check_model(self, params: dict[str, Any], model: Any, where: str, resolution: int | None = None) -> None:
        import fnmatch

        from phd_lab.tracking.pca import projectable_layers
        names = [name for name, _ in projectable_layers(model)]
        if not names:
            raise ConfigError(f"{where}, step 'project': the model has no Conv2d or Linear layer to project (the "
                              f"only layers the step projects); leave 'project' out of post_processing.")
        for pattern in params["exclude"]:
            if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
                raise ConfigError(f"{where}, step 'project': the exclude pattern {pattern!r} matches no Conv2d or "
                                  f"Linear layer of the model (e.g. {', '.join(names[:6])}).")
        if all(any(fnmatch.fnmatchcase(name, p) for p in params["exclude"]) for name in names):
            raise ConfigError(f"{where}, step 'project': 'exclude' {params['exclude']} leaves no layer to project; "
                              f"exclude fewer of the model's Conv2d and Linear layers ({first_names(names)}), or "
                              f"leave 'project' out of post_processing.")

    def outputs(self, rundir: RunDir) -> tuple[Path, ...]:
        # not projections_layers.csv: projections made before it was written stay up to date (a pass over the
        # training set and two test evaluations per delta, for every finished run of a grid)
        return rundir.projections_csv, rundir.projections_plot

    def run(self, ctx: StepContext, **params: Any) -> None:
        from phd_lab.objectives import objective_of
        from phd_lab.tracking.projection import projection_table  # torch and pandas: not for --list steps
        reconstructs = not objective_of(ctx.model).uses_labels
        examples = first_test_inputs(ctx.bundle.test, RECONSTRUCTION_EXAMPLES) if reconstructs else None
        outputs: dict[float, Any] = {}
        layer_dims: list[dict] = []
        table = projection_table(ctx.model, ctx.bundle.train_eval, ctx.bundle.test, ctx.device,
                                 deltas=params["deltas"], random_control=params["random_control"],
                                 seed=ctx.config.seed, progress=ctx.progress, exclude=params["exclude"],
                                 centered=params["centered"], examples=examples, example_outputs=outputs,
                                 layer_dims=layer_dims, run_name=ctx.config.name)
        import pandas as pd
        atomic.write_csv(ctx.rundir.projections_layers_csv,
                         pd.DataFrame(layer_dims, columns=["delta", "layer", "k", "features"]))
        atomic.write_csv(ctx.rundir.projections_csv, table)
        from phd_lab.plots.projections import save_projection_plot, save_reconstruction_grid
        # titled by the run id and variant folder too: the plots of a grid's runs, copied out, are told apart
        title = f"{ctx.rundir.name}\n{ctx.rundir.variant}"
        save_projection_plot(table, ctx.rundir.projections_plot, title=title)
        if examples is not None:  # what the thesis' Table 3 shows: the reconstructions at each delta
            save_reconstruction_grid(examples.numpy(), {d: o.numpy() for d, o in outputs.items()},
                                     ctx.rundir.projections_reconstructions, title=title)
        log.info("Projections of %s written to %s", ctx.config.name, ctx.rundir.projections_csv)


# Test images whose reconstructions a reconstruction model's projections show
RECONSTRUCTION_EXAMPLES = 8


def first_test_inputs(loader: Any, count: int) -> Any:
    """The first ``count`` inputs of the (unshuffled) test loader, as one CPU tensor."""
    import torch
    taken, have = [], 0
    for inputs, _ in loader:
        taken.append(inputs[: count - have])
        have += taken[-1].shape[0]
        if have >= count:
            break
    return torch.cat(taken)
