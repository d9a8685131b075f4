"""Step ``extract``: layer outputs of train and test split → latents folder with manifest.json.

With ``sizes`` (and ``methods``) it also writes one latents folder per further size and reduction method from
the same trained model, as the thesis' probe ablation does (§8.3, see ``latents_sets``)."""

from __future__ import annotations

import logging
from typing import Any

from phd_lab.config import Key
from phd_lab.latents_sets import DTYPES  # not from extraction: --list steps imports no torch
from phd_lab.steps import Step, StepContext, param_from_config, register_step

log = logging.getLogger(__name__)


@register_step
class ExtractStep(Step):
    name = "extract"
    checks_at_resolution = True  # check_model runs the model (layers called more than once, outputs no tensor)
    summary = "latents of every Conv2d/Linear (train and test split) → latents/*.npy + manifest.json"
    params = (
        param_from_config("downsampling", doc="adaptive-average-pool feature maps to at most N×N (smaller ones "
                          "stay) for latents/; null keeps whole feature maps, \"pixelwise\" writes one data set per "
                          "feature-map position (<layer>@<row>_<col>, one probe each); given here, unlike the config "
                          "key, it is no part of the run's folder (for several sizes of one run, use 'sizes')"),
        param_from_config("latents_dir"),
        Key("dtype", "str", "float32", "storage type of the latents", choices=DTYPES),
        Key("layers", "list", None, "module names or shell wildcards to extract, matched against the qualified "
            "name of every module of any type ('*' crosses dots): 'features.*' of vgg11 picks its 8 Conv2d, 8 "
            "BatchNorm2d, 8 ReLU and 5 MaxPool2d (29 latents sets); a wildcard leaves out the modules a forward "
            "pass calls more or less than once; an LSTM gives its output sequence; null = every Conv2d and Linear "
            "called once per forward pass",
            nullable=True, item_kind="str"),
        Key("sizes", "list", None, "further latents sets from the same model (§8.3's probe ablation): maximum "
            "feature-map sides (integers ≥ 1; null for whole maps, \"pixelwise\"), each × 'methods' into "
            "latents_<size>_<method> (e.g. latents_2x2_nearest), probed into probe_performances_<...>.csv; "
            "null: only 'downsampling' into latents/", nullable=True),
        Key("methods", "list", ["adaptive_avg"], "how 'sizes' reduce larger feature maps: \"adaptive_avg\" "
            "(adaptive average pooling, as 'downsampling' does) and/or \"nearest\" (nearest interpolation)",
            item_kind="str"),
    )

    def check(self, params: dict[str, Any], config: Any, where: str) -> None:
        from phd_lab.errors import ConfigError
        from phd_lab.user_paths import check_writable_dir
        if params["latents_dir"] is not None:  # found before training, not after it
            check_writable_dir(params["latents_dir"], "latents_dir", f"{where}, step 'extract'")
        if params["layers"] is not None and not params["layers"]:
            raise ConfigError(f"{where}, step 'extract': 'layers' is an empty list; give module names or "
                              f"wildcards, or null for every Conv2d and Linear.")
        from phd_lab.latents_sets import check_sets
        check_sets(params["sizes"], params["methods"], f"{where}, step 'extract'")

    def check_model(self, params: dict[str, Any], model: Any, where: str, resolution: int | None = None) -> None:
        """Before training rather than after it: patterns that match nothing, a model without a default layer,
        layers whose files would collide, and (with ``resolution``: a forward pass on the meta device) layers that
        run more than once or never, or return no tensor (``check_layer_outputs``)."""
        from phd_lab.errors import ConfigError
        from phd_lab.extraction import check_layer_outputs, select_layers
        try:
            names = select_layers(model, params["layers"])
            if resolution is not None:
                check_layer_outputs(model, names, params["layers"], resolution)
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None

    def done(self, rundir: Any, params: dict[str, Any], stamps: Any = None, meta: Any = None) -> bool | None:
        """An extraction is complete once its manifest is written (last; one killed part-way has none), says the
        settings the step would extract with (``looks_reusable``: its extraction version too, as latents of an
        older version are made anew, those of the version before this one only for a model whose chosen Linear
        layers output 4-D maps, which a forward pass of ``meta``'s model on the meta device tells) and every file
        it lists is still there, whole (a file deleted or truncated since makes the step run again); with
        ``sizes``, every set's. Where ``meta`` gives no model that runs on the meta device, an extraction of the
        previous version is taken to be reused, as it is for every model without such layers. The manifest's model
        fingerprint must be that of the weights in the run's checkpoint (read once, memory-mapped), as the step
        compares it with the trained model's: a run retrained in its folder extracts again."""
        import functools

        from phd_lab.latents_folder import looks_reusable

        def previous_version_current(layers: list[str]) -> bool:
            model, resolution = meta() if meta is not None else (None, None)
            if model is None:
                return True
            from phd_lab.extraction import meta_channels_last_linears
            return not meta_channels_last_linears(model, layers, resolution)

        fingerprint = functools.cache(lambda: _trained_fingerprint(rundir))
        return all(looks_reusable(folder, latents.downsampling, params["dtype"], latents.method,
                                  previous_version_current, fingerprint)
                   for latents, folder in zip(_sets(params), self.folders(rundir, params)))

    def folders(self, rundir: Any, params: dict[str, Any]) -> list[Any]:
        """The latents folders the step writes for the run: ``latents/``, and one per further set of ``sizes``."""
        return [rundir.latents(params["latents_dir"], latents.folder_name) for latents in _sets(params)]

    def run(self, ctx: StepContext, **params: Any) -> None:
        from phd_lab.extraction import check_sets_space, extract_latents

        sets = _sets(params)
        loaders = {"train": ctx.bundle.train_eval, "eval": ctx.bundle.test}
        if len(sets) > 1:  # room for all of them, before the first is written
            check_sets_space(ctx.model, loaders, [(ctx.rundir.latents(params["latents_dir"], latents.folder_name),
                                                   latents.downsampling, latents.method) for latents in sets],
                             layers=params["layers"], dtype=params["dtype"], device=ctx.device)
        for number, latents in enumerate(sets, 1):
            if len(sets) > 1:
                log.info("Latents set %d of %d: %s (%s)", number, len(sets), latents.folder_name, latents.describe())
            folder = ctx.rundir.latents(params["latents_dir"], latents.folder_name)
            extract_latents(ctx.model, loaders, folder, run_dir=ctx.rundir.root, downsampling=latents.downsampling,
                            dtype=params["dtype"], layers=params["layers"], device=ctx.device,
                            test_accuracy=ctx.test_accuracy, progress=ctx.progress, method=latents.method)


def _trained_fingerprint(rundir: Any) -> str | None:
    """``model_fingerprint`` of the weights in the checkpoint a rerun would load (the step extracts with them),
    None where there is no readable one (the rerun trains anew then)."""
    from phd_lab.checkpoint import CheckpointStore
    from phd_lab.latents_folder import state_fingerprint
    state = CheckpointStore(rundir.checkpoint, rundir.previous_checkpoint).peek("model")
    return state_fingerprint(state) if isinstance(state, dict) else None


def _sets(params: dict[str, Any]) -> list[Any]:
    from phd_lab.latents_sets import extraction_sets
    return extraction_sets(params["downsampling"], params["sizes"], params["methods"])
