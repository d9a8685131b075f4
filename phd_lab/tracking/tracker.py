"""SaturationTracker: forward hooks that keep a running covariance of every tracked layer.

While attached, every forward pass of the model updates, per Conv2d / Linear / LSTM layer
(named by its qualified module name), the layer's running covariance in float64: conv
outputs count every feature-map position as one observation. ``compute()`` turns the sums
into a table of saturation, intrinsic dimension, trace and log-determinant per layer, in
the order the layers ran. ``reset()`` starts a new pass, ``close()`` removes the hooks.
"""

from __future__ import annotations

import fnmatch
import logging
import operator
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from phd_lab.interrupts import raise_if_stop_requested
from phd_lab.pooling import nearest_to, pool_to
from phd_lab.tracking.covariance import CovarianceAccumulator
from phd_lab.tracking.modules import weight_only_layers
from phd_lab.tracking.saturation import check_delta, empty_statistics, layer_statistics

log = logging.getLogger(__name__)

TRACKED_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear, nn.LSTM)
DOWNSAMPLING_METHODS = ("adaptive_avg", "nearest", "bilinear")
COLUMNS = ("saturation", "intrinsic_dimension", "feature_dimension", "trace", "log_det", "n")


@dataclass(frozen=True)
class TrackerOptions:
    """How a tracker samples activations; the defaults are the exact, full computation.

    ``device``: where the sums live (None: the layer's device). ``resolution``: feature
    maps larger than this (int or (h, w)) are reduced with ``downsampling`` before being
    accumulated. ``max_batches``: record at most this many batches per pass;
    ``every_n``: record only every n-th batch. ``include``/``exclude``: fnmatch patterns
    on qualified layer names (a single string is one pattern, not one per character).
    """

    device: str | None = None
    resolution: int | tuple[int, int] | None = None
    downsampling: str = "adaptive_avg"
    max_batches: int | None = None
    every_n: int = 1
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.downsampling not in DOWNSAMPLING_METHODS:
            raise ValueError(f"downsampling must be one of {DOWNSAMPLING_METHODS}; got {self.downsampling!r}")
        if self.resolution is not None:
            sizes = (self.resolution,) * 2 if _whole_number(self.resolution) is not None else self.resolution
            size = tuple(_whole_number(s) for s in sizes) if isinstance(sizes, (tuple, list)) else ()
            if len(size) != 2 or not all(s is not None and s >= 1 for s in size):
                raise ValueError(f"resolution must be a positive int or (h, w); got {self.resolution!r}")
            object.__setattr__(self, "resolution", size)
        if self.max_batches is not None:
            max_batches = _whole_number(self.max_batches)
            if max_batches is None or max_batches < 1:
                raise ValueError(f"max_batches must be an integer ≥ 1 or None; got {self.max_batches!r}")
            object.__setattr__(self, "max_batches", max_batches)
        every_n = _whole_number(self.every_n)
        if every_n is None or every_n < 1:
            raise ValueError(f"every_n must be an integer ≥ 1; got {self.every_n!r}")
        object.__setattr__(self, "every_n", every_n)
        object.__setattr__(self, "include", _patterns("include", self.include))
        object.__setattr__(self, "exclude", _patterns("exclude", self.exclude))

    def selects(self, name: str) -> bool:
        if self.include and not any(fnmatch.fnmatchcase(name, p) for p in self.include):
            return False
        return not any(fnmatch.fnmatchcase(name, p) for p in self.exclude)


def _whole_number(value: object) -> int | None:
    """``value`` as a Python int when it is an integer (numpy's too: a size taken from an array's shape), else
    None; a bool is no size."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _patterns(option: str, value: str | Iterable[str]) -> tuple[str, ...]:
    """A tuple of fnmatch patterns; one string is one pattern (``tuple("head")`` would be four)."""
    patterns = (value,) if isinstance(value, str) else tuple(value)
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"{option} must be a pattern string or a sequence of them; got {value!r}")
    return patterns


def feature_dimension(module: nn.Module) -> int:
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.LSTM):
        width = module.proj_size if module.proj_size > 0 else module.hidden_size
        return width * (2 if module.bidirectional else 1)
    raise TypeError(f"cannot track {type(module).__name__}")


def trackable_layers(model: nn.Module, options: TrackerOptions | None = None) -> Iterator[tuple[str, nn.Module]]:
    """(qualified name, module) of every layer a tracker with ``options`` would hook (not those that are
    never called, ``weight_only_layers``)."""
    options = options or TrackerOptions()
    weight_only = weight_only_layers(model)
    for name, module in model.named_modules():
        if isinstance(module, TRACKED_TYPES) and options.selects(name or "<model>") and name not in weight_only:
            yield name or "<model>", module


def untracked_layers(model: nn.Module) -> list[tuple[str, str]]:
    """(qualified name, what it is) of every convolution and recurrent layer the tracker cannot track: Conv1d,
    Conv3d and the transposed convolutions are not Conv2d, and their outputs are not the (N, C, H, W) maps it
    accumulates; GRU and RNN layers are not the LSTMs it reads by their output sequences; a 4-d or 5-d weight of a
    module that is no convolution is a kernel for a functional call (``F.conv2d``) that no hook sees (none of
    torchvision's or the registry's models has one elsewhere)."""
    found, convolutions = [], []
    for name, module in model.named_modules():
        if any(not convolution or name.startswith(f"{convolution}.") for convolution in convolutions):
            continue  # a convolution's own parts: weight_norm's or spectral_norm's parametrisation of its kernel
        if isinstance(module, nn.RNNBase) and not isinstance(module, TRACKED_TYPES):
            found.append((name or "<model>", type(module).__name__))
            continue
        if isinstance(module, nn.modules.conv._ConvNd):
            convolutions.append(name)
            if not isinstance(module, TRACKED_TYPES):
                found.append((name or "<model>", type(module).__name__))
            continue
        found += [(f"{name}.{weight}" if name else weight, f"a kernel of shape {tuple(value.shape)} outside any "
                   f"Conv module, as F.conv2d uses") for weight, value in module.named_parameters(recurse=False)
                  if not nn.parameter.is_lazy(value) and value.dim() in (4, 5)]
    return found


def warn_of_untracked_layers(model: nn.Module, run_name: str) -> None:
    """Name the model's Conv1d, Conv3d, ConvTranspose, GRU and RNN layers once per run: they got no saturation
    column and no warning, so a reader of the CSV took the missing layers for ones the model does not have."""
    untracked = untracked_layers(model)
    if not untracked:
        return
    shown = ", ".join(f"{name} ({kind})" for name, kind in untracked[:20]) + (" ..." if len(untracked) > 20 else "")
    log.warning("%s: saturation is tracked for Conv2d, Linear and LSTM layers only, so %d layer(s) of the model get "
                "no saturation column and are left out of s_mu: %s.", run_name, len(untracked), shown)


def warn_of_no_tracked_layer(model: nn.Module, options: TrackerOptions, run_name: str | None = None) -> None:
    """Say that ``model`` has no layer a tracker with ``options`` would hook (none of the tracked types, or the
    include/exclude patterns leave none): its saturation table is empty and s_mu is NaN."""
    prefix = f"{run_name}: " if run_name else ""
    if options.include or options.exclude:  # 'no ... layer that include [...] and exclude [...] leave to track'
        log.warning("%sthe include patterns %s and exclude patterns %s leave no Conv2d, Linear or LSTM layer of the "
                    "model (%s) to track, so its saturation table is empty and s_mu is NaN; give patterns that match "
                    "some of its layers' qualified names.", prefix, list(options.include), list(options.exclude),
                    type(model).__name__)
        return
    log.warning("%sthe model (%s) has no Conv2d, Linear or LSTM layer to track, so its saturation table is empty "
                "and s_mu is NaN; set track_saturation false for such a model, or give it a layer of those types.",
                prefix, type(model).__name__)


POOLS_REPEATED_CALLS = "pools_repeated_calls"


def pools_calls_by_design(model: nn.Module, name: str) -> bool:
    """Whether the layer ``name`` or a module around it is marked (``module.pools_repeated_calls = True``) as run
    more than once per forward pass on purpose, its one saturation column pooling every call (CBAM's channel MLP
    on the average- and the max-pooled map): no warning is due for it."""
    parts = [] if name == "<model>" else name.split(".")
    return any(getattr(model.get_submodule(".".join(parts[:depth])), POOLS_REPEATED_CALLS, False)
               for depth in range(len(parts) + 1))


@dataclass
class _Layer:
    name: str
    accumulator: CovarianceAccumulator
    conv: bool
    handle: object = field(default=None, repr=False)


class SaturationTracker:
    """Tracks the covariance of every Conv2d / Linear / LSTM output while attached.

    ``when`` optionally restricts recording to forward passes for which it returns True
    (it receives the model), e.g. ``lambda m: m.training`` records training batches only.
    ``warn_if_empty=False`` leaves the warning of a model without a layer to track to the caller: the
    saturation callback makes trackers twice per epoch and warns once per run itself.
    """

    def __init__(self, model: nn.Module, delta: float = 0.99, *, options: TrackerOptions | None = None,
                 when: Callable[[nn.Module], bool] | None = None, warn_if_empty: bool = True,
                 **option_kwargs: object) -> None:
        if options is not None and option_kwargs:
            raise TypeError("pass either options= or individual option keywords, not both")
        self.options = options if options is not None else TrackerOptions(**option_kwargs)  # type: ignore[arg-type]
        self.delta = check_delta(delta)
        self.model = model
        self.when = when
        self.layers: dict[str, _Layer] = {}
        self._order: list[str] = []  # forward order, as observed
        self._seen_batches = 0
        self._recorded_batches = 0
        self._recording = False
        self._calls: dict[str, int] = {}  # per layer, its calls in the forward pass being recorded
        self.repeated: dict[str, int] = {}  # layers called more than once in a recorded pass: the most calls
        self._pooled_by_design: set[str] = set()  # layers whose repeated calls are meant (pools_calls_by_design)
        for name, module in trackable_layers(model, self.options):
            layer = _Layer(name, CovarianceAccumulator(feature_dimension(module), self.options.device),
                           conv=isinstance(module, nn.Conv2d))
            layer.handle = module.register_forward_hook(self._hook(layer))
            self.layers[name] = layer
            if pools_calls_by_design(model, name):
                self._pooled_by_design.add(name)
        if not self.layers and warn_if_empty:
            warn_of_no_tracked_layer(model, self.options)
        self._root_handle = model.register_forward_pre_hook(self._start_batch)
        # a submodule called on its own after the model's forward (``model.head(x)``) is not a batch of the pass
        self._root_end_handle = model.register_forward_hook(self._end_batch, always_call=True)
        self.closed = False

    # ------------------------------------------------------------------ batch selection
    def wants_next_batch(self) -> bool:
        """Whether the next forward pass of the model would be recorded."""
        if self.options.max_batches is not None and self._recorded_batches >= self.options.max_batches:
            return False
        return self._seen_batches % self.options.every_n == 0

    @property
    def exhausted(self) -> bool:
        """True once ``max_batches`` batches were recorded in this pass."""
        return self.options.max_batches is not None and self._recorded_batches >= self.options.max_batches

    def skip_batch(self) -> None:
        """Count a batch the caller chose not to run (keeps every-n-th selection aligned)."""
        self._seen_batches += 1

    def _start_batch(self, module: nn.Module, args: object) -> None:
        if self.when is not None and not self.when(module):
            self._recording = False
            return
        self._recording = self.wants_next_batch()
        self._seen_batches += 1
        if self._recording:
            self._recorded_batches += 1

    def _end_batch(self, module: nn.Module, args: object, output: object) -> None:
        self._recording = False
        for name, calls in self._calls.items():
            if calls > 1 and name not in self._pooled_by_design:
                self.repeated[name] = max(calls, self.repeated.get(name, 0))
        self._calls.clear()

    # ------------------------------------------------------------------ hooks
    def _hook(self, layer: _Layer) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            if not self._recording:
                return
            if layer.name not in self._order:
                self._order.append(layer.name)
            self._calls[layer.name] = self._calls.get(layer.name, 0) + 1  # a shared module runs more than once
            tensor = _output_tensor(output).detach()  # detached: no autograd, no no_grad() needed
            if layer.conv:
                maps = tensor if tensor.dim() == 4 else tensor.unsqueeze(0)  # Conv2d also takes (C, H, W)
                layer.accumulator.update_maps(self._downsample(maps))
            else:
                if tensor.dim() == 4:  # a Linear on a channels-last map (ConvNeXt): (B, H, W, C), a map as well
                    tensor = self._downsample(tensor.movedim(-1, 1)).movedim(1, -1)
                layer.accumulator.update(tensor.reshape(-1, tensor.shape[-1]))
        return hook

    def _downsample(self, maps: torch.Tensor) -> torch.Tensor:
        size = self.options.resolution
        if size is None or (maps.shape[2] <= size[0] and maps.shape[3] <= size[1]):
            return maps
        target = (min(size[0], maps.shape[2]), min(size[1], maps.shape[3]))
        if maps.dtype in (torch.float16, torch.bfloat16):
            maps = maps.float()  # the pooling and interpolation kernels; float64 maps keep their precision
        if self.options.downsampling == "adaptive_avg":
            return pool_to(maps, target)
        if self.options.downsampling == "bilinear":
            return F.interpolate(maps, size=target, mode="bilinear", align_corners=False)
        return nearest_to(maps, target)

    # ------------------------------------------------------------------ results
    @property
    def layer_names(self) -> list[str]:
        """Tracked layers: those seen in forward order first, then the rest in definition order."""
        return self._order + [name for name in self.layers if name not in self._order]

    def covariance(self, name: str) -> torch.Tensor:
        return self.layers[name].accumulator.covariance()

    def compute(self, delta: float | None = None) -> pd.DataFrame:
        """One row per tracked layer (forward order): saturation, intrinsic_dimension, ..., n."""
        delta = self.delta if delta is None else check_delta(delta)
        rows = []
        for name in self.layer_names:
            acc = self.layers[name].accumulator
            if acc.n == 0:
                rows.append(empty_statistics(acc.dim))
            else:
                rows.append(layer_statistics(acc.covariance().cpu().numpy(), delta, acc.n))
        frame = pd.DataFrame(rows, index=pd.Index(self.layer_names, name="layer"), columns=list(COLUMNS))
        broken = frame.index[(frame["n"] > 0) & (frame["feature_dimension"] > 0) & frame["saturation"].isna()].tolist()
        if broken:
            log.warning("The activations of %s were not finite (inf or NaN: the training diverged, or float16 "
                        "overflowed), or so large that their covariance's eigenvalues overflowed float64; their "
                        "saturations are NaN.", ", ".join(broken))
        return frame

    def saturation_mean(self, frame: pd.DataFrame | None = None) -> float:
        """s_μ: the average saturation over all tracked layers that saw data."""
        frame = self.compute() if frame is None else frame
        return float(frame["saturation"].mean())

    def reset(self) -> None:
        """Clear every layer's sums and the batch counters (start of a new pass)."""
        for layer in self.layers.values():
            layer.accumulator.reset()
        self._seen_batches = self._recorded_batches = 0
        self._recording = False

    def close(self) -> None:
        """Remove every hook; the accumulated sums stay readable."""
        if self.closed:
            return
        for layer in self.layers.values():
            layer.handle.remove()  # type: ignore[attr-defined]
        self._root_handle.remove()
        self._root_end_handle.remove()
        self.closed = True

    def __enter__(self) -> "SaturationTracker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _output_tensor(output: object) -> torch.Tensor:
    """The activation tensor of a layer output (LSTM: the sequence output, also when packed)."""
    if isinstance(output, tuple):
        output = output[0]
    if isinstance(output, nn.utils.rnn.PackedSequence):
        output = output.data
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"cannot track a layer output of type {type(output).__name__}")
    return output


def run_pass(tracker: SaturationTracker, model: nn.Module, batches: Sequence | object,
             device: torch.device, autocast: Callable[[], object] | None = None) -> int:
    """Forward the batches a tracker wants (inputs only, no gradients); return the batches run."""
    ran = 0
    with torch.no_grad():
        for batch in batches:  # type: ignore[union-attr]
            raise_if_stop_requested()
            if tracker.exhausted:
                break
            if not tracker.wants_next_batch():
                tracker.skip_batch()
                continue
            inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
            inputs = inputs.to(device, non_blocking=True)
            if autocast is not None:
                with autocast():  # type: ignore[operator]
                    model(inputs)
            else:
                model(inputs)
            ran += 1
    return ran
