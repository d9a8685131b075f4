"""Step ``extract``: layer outputs of train and test split → latents folder with manifest.json."""

from __future__ import annotations

import logging
from typing import Any

from phd_lab.config import Key
from phd_lab.extraction import DTYPES
from phd_lab.steps import Step, StepContext, param_from_config, register_step

log = logging.getLogger(__name__)


@register_step
class ExtractStep(Step):
    name = "extract"
    summary = "latents of every Conv2d/Linear (train and test split) → latents/*.npy + manifest.json"
    params = (
        param_from_config("downsampling"),
        param_from_config("latents_dir"),
        Key("dtype", "str", "float32", "storage type of the latents", choices=DTYPES),
        Key("layers", "list", None, "module names or wildcards to extract; null = every Conv2d and Linear "
            "called once per forward pass",
            nullable=True, item_kind="str"),
    )

    def check(self, params: dict[str, Any], config: Any, where: str) -> None:
        from phd_lab.atomic import check_writable_dir
        from phd_lab.errors import ConfigError
        if params["latents_dir"] is not None:  # found before training, not after it
            check_writable_dir(params["latents_dir"], "latents_dir", f"{where}, step 'extract'")
        if params["layers"] is not None and not params["layers"]:
            raise ConfigError(f"{where}, step 'extract': 'layers' is an empty list; give module names or "
                              f"wildcards, or null for every Conv2d and Linear.")

    def check_model(self, params: dict[str, Any], model: Any, where: str) -> None:
        from phd_lab.errors import ConfigError
        from phd_lab.extraction import check_file_names, default_layers, select_layers
        try:
            if params["layers"] is not None:
                select_layers(model, params["layers"])  # also refuses layers whose files would collide
            else:  # the default layers' file names, before training rather than after it
                check_file_names(model, default_layers(model))
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None

    def done(self, rundir: Any, params: dict[str, Any], stamps: Any = None) -> bool | None:
        """An extraction is complete once its manifest is written (last; one killed part-way has none) and every
        file it lists is still there, whole (a file deleted or truncated since makes the step run again)."""
        from phd_lab.latents_folder import latents_look_whole
        return latents_look_whole(rundir.latents(params["latents_dir"]))

    def run(self, ctx: StepContext, **params: Any) -> None:
        from phd_lab.extraction import extract_latents

        folder = ctx.rundir.latents(params["latents_dir"])
        extract_latents(ctx.model, {"train": ctx.bundle.train_eval, "eval": ctx.bundle.test}, folder,
                        run_dir=ctx.rundir.root, downsampling=params["downsampling"], dtype=params["dtype"],
                        layers=params["layers"], device=ctx.device, test_accuracy=ctx.test_accuracy,
                        progress=ctx.progress)
