"""Checks of a config against its model built on the meta device, before any run trains.

A model built on torch's meta device costs no memory and no initialisation, yet its module names,
forward-pass shape errors and BatchNorm layers are those of the real model: a wrong ``truncate`` layer,
a resolution too small for the model, a forward that returns more than one tensor of scores, batch_size 1
under BatchNorm or tracking patterns that match no layer fail at the start of a grid instead of at a run's
first batch. The executor's ``check_model`` calls these and memoises them across the points of a grid;
``check_fits_data`` runs once a run's data set is built, before its run folder is made.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
from typing import Any, Iterator

import torch
from torch import nn

from phd_lab.config import RunConfig
from phd_lab.config_file import shown_value
from phd_lab.bundle_checks import SampleTypes
from phd_lab.errors import ConfigError, DataError, first_line
from phd_lab.factory_args import factory_model_args, logged_run, refused_args
from phd_lab.factory_results import checked_result
from phd_lab.interrupts import raise_interruption_behind
from phd_lab.objectives import CLASSIFICATION, OBJECTIVES, Objective, declared_objective, objective_of
from phd_lab.registry import Registries

log = logging.getLogger(__name__)

# What ``check_model`` builds a model for before the data set is known.
PLACEHOLDER_CLASSES, PLACEHOLDER_CHANNELS = 10, 3
# The size ImageNet models (torchvision's among them) are made for, at which a forward pass that fails at the
# configured resolution is tried again to tell a resolution the model cannot take from a model the meta device
# cannot run
REFERENCE_RESOLUTION = 224
# What torch says when a layer's kernel or pooling window outgrows its input (meta and real tensors alike)
_TOO_SMALL_SIGNS = ("Output size is too small", "can't be greater than actual input size", "Wrong image height",
                    "Wrong image width")
# What torch says when a Linear layer gets another number of features than it was made for (on real tensors, then
# on the meta device): after a Flatten, the maps of another resolution than the model's; the real model fails too
_FEATURE_MISMATCH_SIGNS = ("shapes cannot be multiplied", "must have same reduction dim")
# Channel counts of data sets other than the placeholder's RGB (grey, grey + alpha, RGBA or four bands) that a model
# ignoring in_channels may be made for: its Linear after a Flatten then fails on the placeholder channels alone
_OTHER_CHANNELS = (1, 2, 4)


def meta_model(cfg: RunConfig, registries: Registries, built: dict[Any, Any]) -> tuple[str, nn.Module | None]:
    """The model built on the meta device (no memory, no initialisation) with placeholder
    classes and channels, which module names do not depend on (None if it cannot be built there), and
    the key it is shared under in ``built``."""
    model_args = factory_model_args(cfg.model_args)
    key = json.dumps([registries.models.source, cfg.model, model_args], sort_keys=True, default=str)
    if key not in built:
        try:
            built[key] = _build_on_meta(cfg, registries, PLACEHOLDER_CLASSES, PLACEHOLDER_CHANNELS)
        except (TypeError, ValueError) as error:
            raise_interruption_behind(error)  # a Ctrl-C in the factory is no bad model_args
            raise refused_args(cfg.source, "model", cfg.model, model_args, error) from None
        except Exception as error:  # noqa: BLE001 - e.g. a factory that needs real tensors
            raise_interruption_behind(error)
            log.debug("%s: model %r not checked on the meta device (%s: %s)", cfg.source, cfg.model,
                      type(error).__name__, error)
            built[key] = None
            return key, None
        checked_result("models", cfg.model, built[key], registries.models.source, cfg.source)
    return key, built[key]


def _build_on_meta(cfg: RunConfig, registries: Registries, num_classes: int, in_channels: int) -> Any:
    """What the registry's model factory returns on the meta device for these classes and channels; its
    errors are the caller's to judge."""
    with torch.device("meta"), logged_run(cfg.logged_meta is not None):
        return registries.models.get(cfg.model)(num_classes=num_classes, in_channels=in_channels,
                                                 **factory_model_args(cfg.model_args))


def check_truncate(cfg: RunConfig, model: nn.Module) -> None:
    """model_args ``truncate`` names a module of the model at which it can be cut (``border`` and
    ``border_max`` are resolved when the model is built for training)."""
    from phd_lab.models.truncate import BORDER_CHOICES, check_cut
    where = cfg.source
    truncate = cfg.model_args.get("truncate")
    if not truncate or truncate in BORDER_CHOICES:
        return
    names = [name for name, _ in model.named_modules() if name]
    if truncate not in names:
        from phd_lab.registry import did_you_mean
        raise ConfigError(f"{where}: model_args 'truncate' is {truncate!r}, which names no module of "
                          f"{cfg.model!r}.{did_you_mean(truncate, names)} Give a qualified module name, "
                          f"'border' or 'border_max' (or null for no truncation).")
    try:
        check_cut(model, truncate, in_channels=PLACEHOLDER_CHANNELS, resolution=cfg.resolution)
    except ConfigError as error:
        raise ConfigError(f"{where}: model_args 'truncate': {error}") from None


def trained_meta_model(cfg: RunConfig, model: nn.Module, built: dict[Any, Any], key: str) -> nn.Module:
    """The meta model as the run trains it: cut before the layer ``truncate`` names or its border at the
    run's resolution, where it has one (a TruncatedModel: the kept layers as ``body.<name>``, then ``classifier``),
    else ``model`` itself. The layer patterns of the tracking keys and of the steps name the layers of this model,
    which the run's CSV columns and latents are named after, so they are checked against it. A model that cannot
    be cut on the meta device is left whole here; building it for training reports why. Shared in ``built``."""
    truncate = cfg.model_args.get("truncate")
    if not truncate:
        return model
    memo = ("trained", key, truncate, cfg.resolution)
    if memo not in built:
        import copy

        from phd_lab.models.truncate import resolve_cut, truncate_model
        try:
            layer = resolve_cut(model, truncate, cfg.resolution)
            built[memo] = model if layer is None else truncate_model(
                copy.deepcopy(model), layer, num_classes=PLACEHOLDER_CLASSES, in_channels=PLACEHOLDER_CHANNELS,
                input_resolution=cfg.resolution)
        except Exception as error:  # noqa: BLE001 - said with its reason when the run builds its model
            raise_interruption_behind(error)
            log.debug("%s: model %r not cut on the meta device (%s: %s)", cfg.source, cfg.model,
                      type(error).__name__, error)
            built[memo] = model
    return built[memo]


def check_input_size(cfg: RunConfig, model: nn.Module, channels: int = PLACEHOLDER_CHANNELS) -> None:
    """A model whose pooling or kernels outgrow the maps at this resolution (torchvision's AlexNet or
    ConvNeXt at 16 px, Inception v3 below 75 px) failed at its first batch with torch's message. A forward
    pass on the meta device raises the same error without memory or time. ``check_fits_data`` calls it again
    with the data's ``channels`` for a model made for them alone, which fails on the placeholder's."""
    _, error = _meta_forward(model, cfg.resolution, channels)
    if error is None:
        return
    message = first_line(error)
    if any(sign in message for sign in _TOO_SMALL_SIGNS):
        raise ConfigError(f"{cfg.source}: model {cfg.model!r} cannot take {cfg.resolution}x{cfg.resolution} px "
                          f"inputs ({message}). Use a larger 'resolution' or another model.")
    # Any other error (MaxViT's window partition at 16-64 px: "shape '[2, 64, 0, 7, 0, 7]' is invalid") is
    # the resolution's if the same forward pass runs at the size the model is made for; if it fails there
    # too, the meta device may not support the model, which training then checks.
    if cfg.resolution != REFERENCE_RESOLUTION and _meta_forward(model, REFERENCE_RESOLUTION, channels)[1] is None:
        raise ConfigError(f"{cfg.source}: 'resolution' {cfg.resolution} does not suit model {cfg.model!r}: its "
                          f"forward pass fails at {cfg.resolution}x{cfg.resolution} px ({type(error).__name__}: "
                          f"{message}) but runs at {REFERENCE_RESOLUTION}x{REFERENCE_RESOLUTION} px. Use a "
                          f"'resolution' the model takes (e.g. {REFERENCE_RESOLUTION}) or another model.")
    mismatch = any(sign in message for sign in _FEATURE_MISMATCH_SIGNS)
    if mismatch and not _runs_on_other_channels(model, cfg.resolution):
        raise ConfigError(f"{cfg.source}: model {cfg.model!r} cannot take {cfg.resolution}x{cfg.resolution} px "
                          f"inputs: a Linear layer of it gets another number of features than it was made for "
                          f"({message}), as a Linear after a Flatten does with the maps of another resolution. Use "
                          f"the 'resolution' the model is made for, or pool its maps to a fixed size "
                          f"(nn.AdaptiveAvgPool2d) before the Flatten.")
    log.debug("%s: the input size was not checked on the meta model (%s: %s)", cfg.source, type(error).__name__,
              error)


def _meta_forward(model: nn.Module, resolution: int,
                  channels: int = PLACEHOLDER_CHANNELS) -> tuple[torch.Size | None, Exception | None]:
    """(output shape, None) of an eval-mode forward pass of two placeholder inputs on the meta device, or
    (None, its error); (None, None) for an output that is not a tensor (``check_single_output``'s verdict)."""
    output, error = _meta_output(model, resolution, training=False, channels=channels)
    return (output.shape if isinstance(output, torch.Tensor) else None), error


def _runs_on_other_channels(model: nn.Module, resolution: int) -> bool:
    """Whether the model runs on inputs of one of ``_OTHER_CHANNELS``: one that ignores the factory's
    ``in_channels`` and reads grey images (Digits) or four-channel ones (FakeData's channels=4, RGBA) fails on
    the placeholder channels alone, which says nothing of the resolution (a four-channel model was refused as
    made for another resolution, at the resolution it was made for)."""
    return any(_meta_output(model, resolution, training=False, channels=channels)[1] is None
               for channels in _OTHER_CHANNELS)


def _meta_output(model: nn.Module, resolution: int, training: bool, channels: int = PLACEHOLDER_CHANNELS,
                 dtype: torch.dtype | None = None) -> tuple[Any, Exception | None]:
    """(output, None) of a forward pass of two placeholder inputs (of ``dtype``, else the default) on the meta
    device in training or eval mode, or (None, its error); the model is left in the mode it was found in."""
    was_training = model.training
    try:
        model.train(training)
        with torch.device("meta"):
            return model(torch.empty(2, channels, resolution, resolution, dtype=dtype)), None
    except Exception as error:  # noqa: BLE001 - the caller decides which errors are verdicts
        raise_interruption_behind(error)  # a Ctrl-C is none: the checks took it for a resolution the model refuses
        return None, error
    finally:
        model.train(was_training)


def check_single_output(cfg: RunConfig, model: nn.Module, objective: Objective) -> None:
    """The trainer, the metrics and the post-processing steps take one tensor per forward pass: a classifier's
    (batch, classes) scores, a reconstruction's image. A model of one's own whose forward returned a dict, a
    tuple (an auxiliary head in training mode) or scores of another shape failed inside the first training step
    or a later step, with a traceback and a run folder already made. One forward pass per mode on the meta
    device tells it up front. With ``truncate`` the classification head added at the cut gives the output."""
    required = _required_beyond_input(model)
    if required:
        raise ConfigError(f"{cfg.source}: model {cfg.model!r} has a forward() that requires "
                          f"{', '.join(map(repr, required))} beside its input, but the trainer, its metrics and the "
                          f"post-processing steps call model(images) with one batch of images alone. Give "
                          f"{'that parameter' if len(required) == 1 else 'those parameters'} a default.")
    if cfg.model_args.get("truncate") is not None:
        return
    expected = (2, PLACEHOLDER_CLASSES)
    for training in (True, False):
        output, error = _meta_output(model, cfg.resolution, training)
        mode = "training" if training else "eval"
        if error is not None:  # a forward pass that fails is check_input_size's, or training's on real tensors
            log.debug("%s: the output of %r not checked in %s mode on the meta model (%s: %s)", cfg.source,
                      cfg.model, mode, type(error).__name__, error)
            continue
        if isinstance(output, torch.Tensor) and (not objective.uses_labels or tuple(output.shape) == expected):
            continue  # a reconstruction's shape is check_objective's
        if isinstance(output, torch.Tensor) and output.dim() == 2 and output.shape[0] == expected[0]:
            continue  # scores of a model that ignores num_classes may suit the data's classes: check_fits_data
        wanted = (f"the trainer, its metrics and the post-processing steps take one tensor of scores of shape "
                  f"(batch, classes), here {expected} for a batch of 2 (checked before the data set is loaded, on "
                  f"the model built with num_classes={PLACEHOLDER_CLASSES} as a stand-in for the data's classes)"
                  if objective.uses_labels else _RECONSTRUCTION_WANTED)
        raise ConfigError(_no_single_output(cfg, output, mode, wanted))


_RECONSTRUCTION_WANTED = ("the trainer and the post-processing steps take one tensor of the input's shape "
                          "(a reconstruction)")


def _no_single_output(cfg: RunConfig, output: Any, mode: str, wanted: str) -> str:
    return (f"{cfg.source}: model {cfg.model!r} returns {_described(output)} from forward() in {mode} mode, but "
            f"{wanted}. Make forward() return that single tensor in both modes (an auxiliary output can be kept on "
            f"an attribute instead).")


def _required_beyond_input(model: nn.Module) -> list[str]:
    """The parameters of ``model.forward`` after the input that have no default (``forward(self, x, labels)``
    failed at the first batch with 'missing 1 required positional argument')."""
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # a forward without a signature
        return []
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    if not parameters or parameters[0].kind in variadic:
        return []
    return [p.name for p in parameters[1:] if p.kind not in variadic and p.default is inspect.Parameter.empty]


def _described(output: Any) -> str:
    """What a forward pass returned, for a message: a tensor's shape, a mapping's keys, a sequence's items."""
    if isinstance(output, torch.Tensor):
        return f"a tensor of shape {tuple(output.shape)}"
    if isinstance(output, dict):
        keys = ", ".join(map(repr, list(output)[:8])) + (" ..." if len(output) > 8 else "")
        return f"a {type(output).__name__} (keys {keys})"
    if isinstance(output, (tuple, list)):
        items = ", ".join(_described(item) for item in list(output)[:4]) + (", ..." if len(output) > 4 else "")
        return f"a {type(output).__name__} of {len(output)} ({items})"
    return f"a {type(output).__name__}"


def check_fits_data(cfg: RunConfig, registries: Registries, in_channels: int, num_classes: int,
                    types: SampleTypes | None = None, device_type: str | None = None) -> None:
    """The model built for the data's channels and classes (known once the data set is built, before the run
    folder is made) takes those images and labels (of the ``types`` of the first sample, where known) and returns one
    score per class; the checks up front ran on placeholder channels and classes, and fits in memory. One meta model
    serves the checks below (a model the meta device cannot build or run is left to training, which reports its
    errors)."""
    truncated = cfg.model_args.get("truncate") is not None  # the head added at the cut makes num_classes scores
    model = _meta_built(cfg, registries, num_classes, in_channels)
    if model is None:
        return
    _require_memory(cfg, model)
    if types is not None:
        _require_image_dtype(cfg, model, types.image)
        if not (cfg.mixed_precision and device_type == "cuda"):  # autocast casts the inputs where it is on
            _require_parameter_dtype(cfg, model, types.image, in_channels)
        _require_class_index_labels(cfg, registries, model, types.label)
        _require_one_label_per_sample(cfg, registries, model, types.label_shape)
    if in_channels == PLACEHOLDER_CHANNELS and truncated:
        return
    if in_channels == PLACEHOLDER_CHANNELS:
        _require_placeholder_channels(cfg, model)
    if in_channels != PLACEHOLDER_CHANNELS:
        _require_in_channels(cfg, model, in_channels)
        if not truncated and _meta_output(model, cfg.resolution, training=False)[1] is not None:
            # made for the data's channels alone: the checks up front could not run it on the placeholder's
            check_input_size(cfg, model, in_channels)
            _require_single_tensor(cfg, registries, model, num_classes, in_channels)
    if not truncated:
        _require_num_classes(cfg, registries, model, num_classes, in_channels)


def _require_image_dtype(cfg: RunConfig, model: nn.Module, image_dtype: torch.dtype | None) -> None:
    """Refuse float64 images for a model without a float64 parameter: a dataset of one's own made from a numpy array
    (``torch.from_numpy`` keeps its float64) failed the run in its first batch with torch's 'Input type (double) and
    bias type (float) should be the same' (exit 1, a run folder made). Mixed precision does not help: autocast casts
    no float64 input. Other float types are left alone, as autocast casts them."""
    parameters = [parameter for parameter in model.parameters() if not nn.parameter.is_lazy(parameter)]
    if image_dtype != torch.float64 or not parameters or any(p.dtype == torch.float64 for p in parameters):
        return
    kinds = sorted({str(parameter.dtype).removeprefix("torch.") for parameter in parameters})
    raise DataError(f"{cfg.source}: the dataset {cfg.dataset!r} gives float64 images, and the parameters of model "
                    f"{cfg.model!r} are {' and '.join(kinds)}: its first layer cannot take them (the run failed in its "
                    f"first batch: 'Input type (double) and bias type (float) should be the same'; autocast casts no "
                    f"float64 input). Make the dataset factory give float32 images (torch.from_numpy(array).float()), "
                    f"or build the model in float64.")


def _require_parameter_dtype(cfg: RunConfig, model: nn.Module, image_dtype: torch.dtype | None,
                             in_channels: int) -> None:
    """Refuse a model built in another floating type than the images (a factory that ends in .double() or .half(),
    or sets torch's default dtype) where autocast is off (CPU, or mixed_precision false): its first batch failed with
    torch's 'Input type (float) and bias type (double) should be the same' (exit 1, a run folder made). Refused only
    where the meta forward fails on images of that type and runs on the parameters' own (a model that casts its
    input itself is left alone). The meta device checks the types of convolutions, not of Linear layers, which the
    CPU refuses as well ('mat1 and mat2 must have the same dtype'): ``_linear_type_checks`` checks those."""
    kinds = {p.dtype for p in model.parameters() if not nn.parameter.is_lazy(p) and p.is_floating_point()}
    if image_dtype is None or not image_dtype.is_floating_point or len(kinds) != 1 or image_dtype in kinds:
        return
    [kind] = kinds
    with _linear_type_checks(model):
        _, error = _meta_output(model, cfg.resolution, training=False, channels=in_channels, dtype=image_dtype)
        if error is None or _meta_output(model, cfg.resolution, training=False, channels=in_channels, dtype=kind)[1]:
            return
    image, parameters = (str(dtype).removeprefix("torch.") for dtype in (image_dtype, kind))
    raise DataError(f"{cfg.source}: the parameters of model {cfg.model!r} are {parameters}, and the dataset "
                    f"{cfg.dataset!r} gives {image} images, which it cannot take ({first_line(error)}; no autocast "
                    f"casts them on this device{'' if cfg.mixed_precision else ' with mixed_precision false'}). Build "
                    f"the model in {image} (without a .double() or .half() or a torch.set_default_dtype in the "
                    f"registry file), or make its forward cast the input.")


@contextlib.contextmanager
def _linear_type_checks(model: nn.Module) -> Iterator[None]:
    """Within it, a Linear layer given input of another floating type than its weight raises, as on the CPU and
    without autocast, where the meta device lets it pass (an MLP built in float64 on float32 images passed the
    check above and failed its first batch, exit 1). Only where autocast is off: under autocast the input is cast."""
    def check(layer: nn.Module, inputs: tuple[Any, ...]) -> None:
        [given, *_] = inputs
        weight = layer.weight
        if (isinstance(given, torch.Tensor) and given.is_floating_point() and not nn.parameter.is_lazy(weight)
                and given.dtype != weight.dtype):
            name = next(name for name, module in model.named_modules() if module is layer)
            raise RuntimeError(f"the Linear layer {name!r} got input of type {str(given.dtype).removeprefix('torch.')}"
                               f" for its weight of type {str(weight.dtype).removeprefix('torch.')}")
    handles = [module.register_forward_pre_hook(check) for module in model.modules() if isinstance(module, nn.Linear)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _require_class_index_labels(cfg: RunConfig, registries: Registries, model: nn.Module,
                                label_dtype: torch.dtype | None) -> None:
    """Refuse labels that cross-entropy cannot take as class indices, which it takes as int64 or uint8 only: float
    labels (a numpy float array) and int32 ones (a numpy int32 array; a Python int batches as int64) failed the run in
    its first batch with torch's 'expected target dtype to be Long or Byte, but got Float' (exit 1, a run folder
    made). A model trained on its own reconstruction uses no labels."""
    if label_dtype is None or label_dtype in (torch.int64, torch.uint8) or not _uses_labels(cfg, registries, model):
        return  # _uses_labels None: an objective check_objective reports
    raise DataError(f"{cfg.source}: the dataset {cfg.dataset!r} gives labels of type "
                    f"{str(label_dtype).removeprefix('torch.')} (as the loader batches its first sample's label), "
                    f"and model {cfg.model!r} is trained on class indices, which cross-entropy takes as int64 or uint8 "
                    f"only (the run failed in its first batch: 'expected target dtype to be Long or Byte'). Make the "
                    f"dataset factory give integer labels, e.g. torch.as_tensor(labels, dtype=torch.long).")


def _require_one_label_per_sample(cfg: RunConfig, registries: Registries, model: nn.Module,
                                  label_shape: tuple[int, ...] | None) -> None:
    """Refuse a label that is no single class index but a tensor of its own (``torch.tensor([label])``, a row of a
    table): the loader batches it as (B, 1), which cross-entropy refused in the run's first batch with '0D or 1D
    target tensor expected, multi-target not supported' (exit 1, a run folder made)."""
    if not label_shape or not _uses_labels(cfg, registries, model):
        return
    raise DataError(f"{cfg.source}: the dataset {cfg.dataset!r} gives each sample a label of shape {label_shape} (its "
                    f"first sample's label, batched by the loader as {('B', *label_shape)}), and model {cfg.model!r} "
                    f"is trained on one class index per sample (cross-entropy on labels of shape (B,); the run failed "
                    f"in its first batch: '0D or 1D target tensor expected'). Make the dataset factory give each "
                    f"sample's label as a Python int or a tensor of no dimension (int(label), or label.squeeze()).")


def _uses_labels(cfg: RunConfig, registries: Registries, model: nn.Module) -> bool | None:
    """Whether the model's objective compares its outputs with labels; None where the objective is not valid
    (``check_objective``'s to report, when the run builds the model next)."""
    try:
        return (declared_objective(registries.models.get(cfg.model)) or objective_of(model)).uses_labels
    except ValueError:
        return None


def _require_memory(cfg: RunConfig, model: nn.Module) -> None:
    """Refuse a model whose parameters and buffers alone need more memory than this process may still take, counted
    on the meta device (``model``) before its factory allocates them: a model is built in main memory, also for a
    GPU, and an MLP of units [[2**40]] stopped in torch's allocation error with a traceback. Training needs more
    (gradients, the optimizer's state), so only what certainly fails is refused. Checked where the run trains, not up
    front: the host a grid is submitted from may have less memory than its workers."""
    from phd_lab.environment import available_memory
    from phd_lab.wording import byte_amount
    # a lazy module's parameters have no size until its first forward pass
    tensors = [tensor for tensor in (*model.parameters(), *model.buffers()) if not nn.parameter.is_lazy(tensor)]
    needed = sum(tensor.numel() * tensor.element_size() for tensor in tensors)
    available = available_memory()
    if available is not None and needed > available:
        values = sum(tensor.numel() for tensor in tensors)
        raise ConfigError(f"{cfg.source}: model {cfg.model!r} with model_args {shown_value(cfg.model_args)} holds "
                          f"{values:,} parameter and buffer values ({byte_amount(needed)}), more than the "
                          f"{byte_amount(available)} of memory this process may still take, so it cannot be built "
                          f"here (a model is built in main memory, also for a GPU). Choose smaller model_args, or "
                          f"train it on a machine with more memory.")


def _require_single_tensor(cfg: RunConfig, registries: Registries, model: nn.Module, num_classes: int,
                           in_channels: int) -> None:
    """``check_single_output`` runs on placeholder RGB inputs: a model made for the data's own channels (a first
    Conv2d of one input channel for grey Digits) fails there, so a tuple or dict it returns, or scores of more
    axes, were left to its first training step ('cross_entropy_loss(): argument 'input' must be Tensor, not
    tuple'), after its run folder was made. Its output on the data's channels is checked here instead; (batch, k)
    scores are ``_require_num_classes``'s."""
    uses_labels = _uses_labels(cfg, registries, model) is not False
    for training in (True, False):
        output, error = _meta_output(model, cfg.resolution, training, channels=in_channels)
        if error is not None or (isinstance(output, torch.Tensor) and (
                not uses_labels or (output.dim() == 2 and output.shape[0] == 2))):
            continue
        wanted = (f"the trainer, its metrics and the post-processing steps take one tensor of scores of shape "
                  f"(batch, classes), here (2, {num_classes}) for a batch of 2 and the {num_classes} classes of "
                  f"dataset {cfg.dataset!r}" if uses_labels else _RECONSTRUCTION_WANTED)
        raise ConfigError(_no_single_output(cfg, output, "training" if training else "eval", wanted))


def _require_in_channels(cfg: RunConfig, model: nn.Module, in_channels: int) -> None:
    """A factory that ignores ``in_channels`` (a first Conv2d of 3 input channels on grey Digits) passed the
    checks on placeholder RGB inputs and failed at its first batch ('expected input[128, 1, 16, 16] to have 3
    channels'), after its run folder was made. Refused only where the same meta model runs on the placeholder
    channels."""
    _, error = _meta_output(model, cfg.resolution, training=False, channels=in_channels)
    if error is None or _meta_output(model, cfg.resolution, training=False)[1] is not None:
        return
    raise ConfigError(f"{cfg.source}: model {cfg.model!r} built with in_channels={in_channels} (the channels of "
                      f"dataset {cfg.dataset!r}) cannot take {in_channels}-channel images ({first_line(error)}), "
                      f"but takes {PLACEHOLDER_CHANNELS}-channel ones: its factory ignores in_channels. Build its "
                      f"first layer for in_channels input channels.")


def _require_placeholder_channels(cfg: RunConfig, model: nn.Module) -> None:
    """A factory that ignores ``in_channels`` and reads another channel count (a first Conv2d of 1 input channel)
    passed the checks up front, which leave a model that runs on other channels to the data, and the data's 3
    channels (every folder: dataset, Cifar) were not checked again, as they are the placeholder's: the run failed at
    its first batch ('expected input[8, 3, 8, 8] to have 1 channels') after its run folder was made."""
    error = _meta_output(model, cfg.resolution, training=False)[1]
    if error is None:
        return
    others = [channels for channels in _OTHER_CHANNELS
              if _meta_output(model, cfg.resolution, training=False, channels=channels)[1] is None]
    if not others:
        return
    raise ConfigError(f"{cfg.source}: model {cfg.model!r} built with in_channels={PLACEHOLDER_CHANNELS} (the channels "
                      f"of dataset {cfg.dataset!r}) cannot take {PLACEHOLDER_CHANNELS}-channel images "
                      f"({first_line(error)}), but takes {others[0]}-channel ones: its factory ignores in_channels. "
                      f"Build its first layer for in_channels input channels.")


def _meta_built(cfg: RunConfig, registries: Registries, num_classes: int, in_channels: int) -> nn.Module | None:
    """The registry's model built on the meta device for these classes and channels, or None where it cannot be
    (built for training next, which reports its errors)."""
    try:
        model = _build_on_meta(cfg, registries, num_classes, in_channels)
    except Exception as error:  # noqa: BLE001 - built for training next, which reports its errors
        raise_interruption_behind(error)
        return None
    return model if isinstance(model, nn.Module) else None


def _require_num_classes(cfg: RunConfig, registries: Registries, model: nn.Module, num_classes: int,
                         in_channels: int) -> None:
    """``check_single_output`` leaves (batch, k) scores to this check: a factory that ignores num_classes and
    makes as many outputs as the data has classes (4 on FakeData's num_classes=4) was refused up front for not
    returning the placeholder's 10, while one returning k other scores (its features) failed at its first batch
    ('Target 6 is out of bounds'). Refused with exit 2 before the run folder is made."""
    if not _uses_labels(cfg, registries, model):  # None: unknown, reported when the run builds the model
        return
    for training in (True, False):
        output, error = _meta_output(model, cfg.resolution, training, channels=in_channels)
        if error is None and isinstance(output, torch.Tensor) and output.dim() == 2 \
                and tuple(output.shape) != (2, num_classes):
            raise ConfigError(f"{cfg.source}: model {cfg.model!r} returns {_described(output)} from forward() in "
                              f"{'training' if training else 'eval'} mode, but the trainer, its metrics and the "
                              f"post-processing steps take one tensor of scores of shape (batch, classes), here "
                              f"(2, {num_classes}) for a batch of 2 and the {num_classes} classes of dataset "
                              f"{cfg.dataset!r}. Make forward() return one score per class (build the output layer "
                              f"for num_classes).")


def check_single_sample_batches(cfg: RunConfig, model: nn.Module) -> None:
    """batch_size 1 trains a BatchNorm only while it sees more than one value per channel: after
    the last pooling of a small input it sees one, and training failed at its first step."""
    if cfg.batch_size != 1 or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return
    was_training = model.training
    try:
        model.train()
        with torch.device("meta"):
            model(torch.empty(1, PLACEHOLDER_CHANNELS, cfg.resolution, cfg.resolution))
    except ValueError as error:
        raise_interruption_behind(error)
        if "more than 1 value per channel" not in str(error):
            return
        raise ConfigError(f"{cfg.source}: 'batch_size' 1 cannot train {cfg.model!r} at resolution "
                          f"{cfg.resolution}: a BatchNorm layer then normalises a single value per channel "
                          f"({error}). Use a batch_size of at least 2.") from None
    except Exception as error:  # noqa: BLE001 - a model the meta device cannot run is checked by training
        raise_interruption_behind(error)
        log.debug("%s: batch_size 1 not checked on the meta model (%s: %s)", cfg.source, type(error).__name__,
                  error)
    finally:
        model.train(was_training)


def check_tracked_layers(cfg: RunConfig, model: nn.Module) -> None:
    """tracking_include and tracking_exclude leave at least one layer of the model to track."""
    if not cfg.track_saturation or not (cfg.tracking_include or cfg.tracking_exclude):
        return
    from phd_lab.tracking.callback import tracker_options
    from phd_lab.tracking.tracker import trackable_layers
    _check_uncut_names(cfg, model, [name for name, _ in trackable_layers(model)])
    if not any(True for _ in trackable_layers(model, tracker_options(cfg))):
        candidates = [name for name, _ in trackable_layers(model)]  # the names a pattern can select
        raise ConfigError(f"{cfg.source}: tracking_include {cfg.tracking_include} and tracking_exclude "
                          f"{cfg.tracking_exclude} leave no layer of {cfg.model!r} to track. Its Conv2d, "
                          f"Linear and LSTM layers: {', '.join(candidates[:30])}"
                          f"{' ...' if len(candidates) > 30 else ''}.")


def warn_of_unmatched_tracking_patterns(cfg: RunConfig, model: nn.Module) -> None:
    """Warn of a tracking pattern that matches no trackable layer of the model: it was ignored without a word, so a
    typo ('classifer.*') left the layers an exclude pattern meant tracked (in the saturation mean and the tails) and
    an include pattern's untracked. A warning, not a refusal: a grid over several models may share patterns that
    only some of them match (VGG's 'classifier.*', a ResNet's 'fc')."""
    from phd_lab.tracking.tracker import trackable_layers
    names = [name for name, _ in trackable_layers(model)]
    for key, pattern in _unmatched_tracking_patterns(cfg, names):
        log.warning("%s: the %s pattern %r matches no Conv2d, Linear or LSTM layer of %r, so it is ignored for this "
                    "model (a typo?). Its layers: %s%s", cfg.source, key, pattern, cfg.model, ", ".join(names[:30]),
                    " ..." if len(names) > 30 else "")


def _unmatched_tracking_patterns(cfg: RunConfig, names: list[str]) -> Iterator[tuple[str, str]]:
    """(key, pattern) of each tracking_include/tracking_exclude pattern that matches none of the layer ``names``."""
    import fnmatch
    for key in ("tracking_include", "tracking_exclude"):
        for pattern in getattr(cfg, key):
            if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
                yield key, pattern


def _check_uncut_names(cfg: RunConfig, model: nn.Module, names: list[str]) -> None:
    """A model cut by ``truncate`` names its kept layers ``body.<name>``: a tracking pattern written with a layer's
    uncut name matches none of them, and an exclude pattern would be ignored without a word (the layer tracked
    after all), an include pattern leave its layer untracked. Such a pattern is refused with the name to write."""
    import fnmatch

    from phd_lab.models.truncate import TruncatedModel
    if not isinstance(model, TruncatedModel):
        return
    for key, pattern in _unmatched_tracking_patterns(cfg, names):
        if any(fnmatch.fnmatchcase(name, f"body.{pattern}") for name in names):
            raise ConfigError(f"{cfg.source}: the {key} pattern {pattern!r} matches no layer of {cfg.model!r} "
                              f"as model_args 'truncate' {cfg.model_args['truncate']!r} cuts it: the cut model "
                              f"names the layers it keeps 'body.' + their name (as its CSV columns and latents "
                              f"do), then its new head 'classifier'. Write {f'body.{pattern}'!r}.")


def check_objective(cfg: RunConfig, model: nn.Module | None, forward: bool = True, factory: Any = None) -> Objective:
    """A model trained to reconstruct its input (§7.2's autoencoder) takes no class metrics and no ``truncate``
    (which adds a classification head), and its output must have the input's shape at this resolution (with
    ``forward``: one pass on the meta device); a classifier needs a metric. The objective, returned, is what the
    registry factory declares, else what the model does (``model`` None: a model the meta device cannot build)."""
    try:
        objective = declared_objective(factory) or (objective_of(model) if model is not None
                                                    else OBJECTIVES[CLASSIFICATION])
    except ValueError as error:
        raise ConfigError(f"{cfg.source}: model {cfg.model!r}: {error}.") from None
    if objective.uses_labels:
        if not cfg.metrics:  # a classifier's accuracy is what its analysis, probes and report compare with
            raise ConfigError(f"{cfg.source}: the key 'metrics' is an empty list; give at least one metric for "
                              f"classifier {cfg.model!r} (see `python main.py --list metrics`). Only a model trained "
                              f"to reconstruct its input (conv_autoencoder) takes none; a model of your own says it "
                              f"is one with phd_lab_objective = \"reconstruction\" on its class or registry "
                              f"function.")
        return objective
    if cfg.metrics:
        raise ConfigError(f"{cfg.source}: model {cfg.model!r} is trained to reconstruct its input (objective "
                          f"{objective.name!r}, mean squared error), so the class metrics of the key 'metrics' "
                          f"({', '.join(map(repr, cfg.metrics))}) do not apply to it; set \"metrics\": [] (its CSV "
                          f"has train_loss and test_loss).")
    if cfg.model_args.get("truncate") is not None:
        raise ConfigError(f"{cfg.source}: model {cfg.model!r} is trained to reconstruct its input, but model_args "
                          f"'truncate' cuts a classifier before a layer and gives it a classification head; remove "
                          f"'truncate' for this model.")
    if forward and model is not None:
        _check_reconstruction_shape(cfg, model)
    return objective


def _check_reconstruction_shape(cfg: RunConfig, model: nn.Module) -> None:
    """A reconstruction's output must have its input's shape (a forward pass that fails is check_input_size's)."""
    output, _ = _meta_forward(model, cfg.resolution)
    expected = (2, PLACEHOLDER_CHANNELS, cfg.resolution, cfg.resolution)
    if output is None or tuple(output) == expected:
        return
    shape = tuple(output)
    if shape[:2] == expected[:2] and len(shape) == 4:  # the sides alone differ: the resolution may be the cause
        multiple = getattr(model, "downscale", None)
        hint = f"use another 'resolution' (its side must be a multiple of {multiple})" if multiple else \
            "use a 'resolution' it reconstructs at its size"
        raise ConfigError(f"{cfg.source}: model {cfg.model!r} reconstructs {cfg.resolution}x{cfg.resolution} px "
                          f"inputs as {shape[-2]}x{shape[-1]} px, so its output cannot be compared with its input; "
                          f"{hint}.")
    raise ConfigError(f"{cfg.source}: model {cfg.model!r} reconstructs inputs of shape {expected[1:]} (channels, "
                      f"height, width) as outputs of shape {shape[1:]}; a reconstruction must have its input's shape "
                      f"(the same channels, at every resolution).")
