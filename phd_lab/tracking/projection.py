"""Projected networks (thesis ch. 7): accuracy when every layer is restricted to k directions.

``projection_table`` inserts PCA layers after every Conv2d/Linear of a trained model,
collects their covariances in one pass over the training data, and evaluates the test
set for each delta with the PCA basis and, as the control, with random orthonormal bases
of the same k per layer. Pure computation: it returns a DataFrame; the step writes it.
A model trained to reconstruct its input (§7.2's autoencoder) is scored by its reconstruction
loss (accuracy NaN), and the outputs of a few example inputs can be kept for each delta.
"""

from __future__ import annotations

import fnmatch
import logging
from typing import Iterable, Sequence

import pandas as pd
import torch
from torch import nn
from tqdm import tqdm  # not tqdm.auto: its asyncio variant calls iter() on the loader a second time

from phd_lab.config import derive_seed
from phd_lab.objectives import CLASSIFICATION, OBJECTIVES, Objective, objective_of
from phd_lab.progress import bar_options
from phd_lab.projection_deltas import THESIS_DELTAS
from phd_lab.tracking.pca import insert_pca_layers
from phd_lab.tracking.tracker import pools_calls_by_design, untracked_layers
from phd_lab.wording import first_names

log = logging.getLogger(__name__)

PROJECTION_COLUMNS = ("delta", "basis", "accuracy", "loss", "dims_sum", "feature_dims_sum", "saturation_mean")


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device,
             objective: Objective = OBJECTIVES[CLASSIFICATION]) -> tuple[float, float]:
    """Top-1 accuracy (NaN for a reconstruction) and the mean loss over a loader (float32, eval mode)."""
    correct, total, loss_sum = 0, 0, 0.0
    for inputs, targets in loader:
        inputs, targets = inputs.to(device), targets.to(device)
        outputs = model(inputs).float()
        loss_sum += float(objective.loss(outputs, inputs, targets, reduction="sum"))
        if objective.uses_labels:
            correct += int((outputs.argmax(dim=1) == targets).sum())
        total += targets.shape[0]
    accuracy = correct / max(total, 1) if objective.uses_labels else float("nan")
    return accuracy, loss_sum / max(total, 1)


@torch.no_grad()
def collect(model: nn.Module, layers: Sequence[nn.Module], loader: Iterable, device: torch.device,
            progress: bool = False) -> dict[int, int]:
    """One pass with the model in eval mode and only the PCA layers collecting. Returns how often the first batch's
    forward pass called each layer (by its position in ``layers``) where that is more than once (a shared module)."""
    model.eval()
    for layer in layers:
        layer.train()
    calls = [0] * len(layers)
    counters = [layer.register_forward_pre_hook(lambda *_, at=at: calls.__setitem__(at, calls[at] + 1))
                for at, layer in enumerate(layers)]
    try:
        for inputs, _ in tqdm(loader, desc="PCA covariances", disable=not progress, unit="batch",
                              **bar_options(transient=True)):
            model(inputs.to(device))
            while counters:  # counted in the first batch only
                counters.pop().remove()
    finally:
        for counter in counters:
            counter.remove()
    model.eval()
    return {at: count for at, count in enumerate(calls) if count > 1}


def projection_table(model: nn.Module, train_loader: Iterable, test_loader: Iterable, device: torch.device, *,
                     deltas: Sequence[float] = THESIS_DELTAS, random_control: bool = True, seed: int = 0,
                     progress: bool = False, exclude: Sequence[str] = (), centered: bool = False,
                     examples: torch.Tensor | None = None,
                     example_outputs: dict[float, torch.Tensor] | None = None,
                     layer_dims: list[dict] | None = None, run_name: str = "") -> pd.DataFrame:
    """Rows (delta, basis, accuracy, loss, dims_sum, feature_dims_sum, saturation_mean).

    ``basis`` is ``none`` for the unprojected model (delta 1), ``pca`` for the leading
    eigendirections and ``random`` for random orthonormal bases of the same k. Layers whose names
    match a pattern of ``exclude`` get no PCA layer; ``centered`` projects around the collected
    mean instead of the thesis' x PᵀP (see ``phd_lab.tracking.pca``). With ``examples`` (a batch of
    inputs), ``example_outputs`` receives the model's outputs for them: unprojected under delta 1.0, and
    with the PCA bases under each delta. ``layer_dims`` receives one row per projected layer and delta
    (delta, layer, k, features; the random bases keep the same k), e.g. the encoding's k of §7.2's Table 3.
    ``run_name`` begins the warning about layers the pass never called, as the run's other warnings begin.
    ``model`` is evaluated in eval mode and left in the mode it was in (each module's own).
    """
    objective = objective_of(model)
    unprojected = untracked_layers(model)
    if unprojected:  # no Conv2d, Linear or LSTM: neither tracked nor followed by a PCA layer
        log.warning("%s: the project step inserts PCA layers after Conv2d and Linear layers only, so %d layer(s) of "
                    "the model run unprojected and are left out of dims_sum and feature_dims_sum: %s.",
                    run_name or "project", len(unprojected),
                    first_names([f"{name} ({kind})" for name, kind in unprojected]))
    projected, layers = insert_pca_layers(model, exclude=exclude, centered=centered)  # collect() sets its modes
    recurrent = [name for name, module in model.named_modules() if isinstance(module, nn.LSTM)
                 and not any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude)]
    if recurrent:  # tracked for saturation, so a reader of projections.csv expects them in its sums
        log.warning("%s: the project step inserts PCA layers after Conv2d and Linear layers only (thesis ch. 7), so "
                    "LSTM layer(s) %s run unprojected and are left out of dims_sum, feature_dims_sum and "
                    "saturation_mean, although their saturation is tracked; leave them out with the step's "
                    "'exclude' to silence this.", run_name or "project", ", ".join(recurrent))
    repeated = collect(projected, list(layers.values()), train_loader, device, progress)
    shared = [f"{name} ({repeated[at]} calls)" for at, name in enumerate(layers)
              if at in repeated and not pools_calls_by_design(projected, name)]
    if shared:  # as saturation tracking warns of them
        log.warning("%s: the forward pass calls %s more than once (shared modules), so the PCA layer of each collects "
                    "the outputs of all its calls and projects every call onto that one basis; give each call a "
                    "module of its own to project them apart, or leave them out with the project step's 'exclude'.",
                    run_name or "project", first_names(shared))
    idle = [name for name, layer in layers.items() if layer.accumulator.n == 0]
    if idle:  # e.g. auxiliary heads that run only in training mode: they stay unprojected and uncounted
        log.warning("%s: the model's forward pass in eval mode never called %s, so they stay unprojected and are "
                    "left out of dims_sum and feature_dims_sum (an auxiliary head that runs in training mode only, "
                    "a branch forward() skips); leave them out with the project step's 'exclude' to project only "
                    "the layers that run.", run_name or "project", ", ".join(idle))
        for name in idle:
            layers[name].set_delta(1.0)
    pca_names = [name for name in layers if name not in idle]
    pca = [layers[name] for name in pca_names]
    if not pca:
        raise ValueError("no projected layer was called by the model's forward pass in eval mode")
    broken = [name for name, layer in layers.items() if name not in idle and not layer.covariance_is_finite()]
    if broken:  # the eigendecomposition would fail without saying where (float16/float32 overflow)
        raise ValueError(f"the activations of layer(s) {', '.join(broken)} hold NaN or inf values on the training "
                         f"set, so their covariance has no eigenspace to project onto; exclude them with the step's "
                         f"'exclude' parameter, or find why they overflow")
    feature_dims = sum(layer.features for layer in pca)
    modes = [(module, module.training) for module in model.modules()]  # a training loop's model goes on training
    model.eval()
    try:
        accuracy, loss = evaluate(model, test_loader, device, objective)
        keep_examples(model, 1.0, examples, example_outputs, device)
    finally:
        for module, training in modes:
            module.training = training
    rows = [{"delta": 1.0, "basis": "none", "accuracy": accuracy, "loss": loss, "dims_sum": feature_dims,
             "feature_dims_sum": feature_dims, "saturation_mean": 1.0}]
    bases = ("pca", "random") if random_control else ("pca",)
    todo = [(d, b) for d in deltas for b in bases]
    for delta, basis in tqdm(todo, desc="projections", disable=not progress, unit="eval",
                             **bar_options(transient=True)):
        generator = torch.Generator().manual_seed(random_basis_seed(seed, delta)) if basis == "random" else None
        for layer in pca:
            layer.set_delta(delta)
            if generator is not None:
                layer.use_random_basis(generator)  # the layers in order, from this delta's own stream
            else:
                layer.use_pca_basis()
        dims = [layer.k for layer in pca]
        if layer_dims is not None and basis == bases[0]:
            layer_dims += [{"delta": float(delta), "layer": name, "k": layer.k, "features": layer.features}
                           for name, layer in zip(pca_names, pca)]
        accuracy, loss = evaluate(projected, test_loader, device, objective)
        if basis == "pca":
            keep_examples(projected, float(delta), examples, example_outputs, device)
        rows.append({"delta": float(delta), "basis": basis, "accuracy": accuracy, "loss": loss,
                     "dims_sum": sum(dims), "feature_dims_sum": feature_dims,
                     "saturation_mean": sum(k / layer.features for k, layer in zip(dims, pca)) / len(pca)})
        log.debug("delta %.4f %s: accuracy %.4f, loss %.4f, dims %d/%d", delta, basis, accuracy, loss, sum(dims),
                  feature_dims)
    return pd.DataFrame(rows, columns=list(PROJECTION_COLUMNS))


def random_basis_seed(seed: int, delta: float) -> int:
    """The seed of ``delta``'s random bases: a function of the run's seed and delta alone, so that a delta's random
    control is the same whichever other deltas the list holds (one stream for the whole list gave 0.1 and then
    0.097 at delta 0.99 once 0.95 was added before it)."""
    return derive_seed(f"{int(seed)}:{float(delta)!r}")


@torch.no_grad()
def keep_examples(model: nn.Module, delta: float, examples: torch.Tensor | None,
                  outputs: dict[float, torch.Tensor] | None, device: torch.device) -> None:
    """``outputs[delta]``: the model's outputs for ``examples`` (float32, on the CPU), when both are given."""
    if examples is not None and outputs is not None:
        outputs[delta] = model(examples.to(device)).float().cpu()
