"""PCA layers (thesis §6.1.6): pass-through while collecting, projection in evaluation mode.

In training mode a PCA layer returns its input unchanged and adds it to a running
covariance (switching into training mode starts a new covariance). In evaluation mode it
projects every observation onto the k leading eigendirections of that (centred) covariance
which explain ``delta`` of the variance: x ↦ x PᵀP, the thesis' Eq. 12 (the conv layer applies
this per position, as a 1×1 map). ``centered=True`` projects the deviation from the collected
mean instead and adds the mean back, x ↦ μ + (x − μ) PᵀP: it keeps the part of the mean outside
the subspace, which Eq. 12 drops, so accuracy falls more slowly with delta. The
eigendecomposition is cached, so changing ``delta`` re-projects without another pass over the
data. ``use_random_basis`` swaps in a random orthonormal basis of the same k, the thesis'
control (§7.3).
"""

from __future__ import annotations

import copy
import fnmatch
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from phd_lab.tracking.covariance import CovarianceAccumulator
from phd_lab.tracking.modules import weight_only_layers
from phd_lab.tracking.saturation import check_delta, intrinsic_dimension


class _PCALayer(nn.Module):
    def __init__(self, features: int, delta: float = 0.99, centered: bool = False) -> None:
        super().__init__()
        self.features = int(features)
        self.delta = check_delta(delta)
        self.centered = bool(centered)
        self.accumulator = CovarianceAccumulator(self.features)
        self._eigen: tuple[torch.Tensor, torch.Tensor] | None = None  # (values desc, vectors as columns)
        # (delta, k) of the last ``k``: every eval-mode forward asks for k, and thresholding the eigenvalues
        # again each time cost ~2 % of the project step; dropped with the covariance, keyed by delta
        self._k: tuple[float, int] | None = None
        self._generator: torch.Generator | None = None
        self._matrix: torch.Tensor | None = None  # cached PᵀP, float64
        # PᵀP and the bias cast to the activations' device and dtype, made once per basis: casting a
        # 4,096-wide layer's 134 MB matrix again for every evaluated batch cost more than the projection
        self._operands: tuple[tuple[torch.device, torch.dtype], torch.Tensor, torch.Tensor | None] | None = None

    # ------------------------------------------------------------------ state
    def train(self, mode: bool = True) -> "_PCALayer":
        if mode and not self.training:
            self.reset()
        return super().train(mode)

    def reset(self) -> None:
        self.accumulator.reset()
        self._forget_eigenspace()

    def _forget_eigenspace(self) -> None:
        """Drop what was computed from the covariance (eigenspace, k, PᵀP), to be computed again when read."""
        self._eigen = self._k = None
        self._matrix = self._operands = None

    def set_delta(self, delta: float) -> None:
        """Choose another explained-variance threshold; no new data needed."""
        self.delta = check_delta(delta)
        self._matrix = self._operands = None

    def use_random_basis(self, generator: torch.Generator) -> None:
        """Project onto k random orthonormal directions (k from delta), drawn from ``generator``."""
        self._generator = generator
        self._matrix = self._operands = None

    def use_pca_basis(self) -> None:
        self._generator = None
        self._matrix = self._operands = None

    # ------------------------------------------------------------------ eigenspace
    def covariance_is_finite(self) -> bool:
        return self.accumulator.n > 0 and bool(torch.isfinite(self.accumulator.covariance()).all())

    def eigen(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._eigen is None:
            if self.accumulator.n == 0:
                raise RuntimeError(f"{type(self).__name__} has no covariance yet: pass data through it in training "
                                   f"mode before evaluating")
            covariance = self.accumulator.covariance().cpu()
            if not torch.isfinite(covariance).all():  # eigh failed "to converge", which hid the cause
                raise ValueError(f"{type(self).__name__} collected NaN or inf activations, so its covariance has no "
                                 f"eigenspace to project onto")
            values, vectors = torch.linalg.eigh(covariance)
            values = values.flip(0).clamp_min(0.0)
            self._eigen = (values, vectors.flip(1))
        return self._eigen

    @property
    def k(self) -> int:
        """Number of directions kept at the current delta; every one at delta = 1 (the thesis' 100 %
        is the unprojected layer, §7.2.1): a direction without variance in the collected data, e.g.
        a unit that never fired, still passes new data unchanged. Computed once per covariance and delta."""
        if self.delta >= 1.0:
            return self.features
        if self._k is None or self._k[0] != self.delta:
            self._k = (self.delta, intrinsic_dimension(self.eigen()[0].numpy(), self.delta))
        return self._k[1]

    def projection_matrix(self) -> torch.Tensor:
        """PᵀP in float64 (d × d) for the current delta and basis."""
        if self._matrix is None:
            values, vectors = self.eigen()
            k = self.k
            if self._generator is None:
                basis = vectors[:, :k]
            else:
                gaussian = torch.randn(self.features, k, generator=self._generator, dtype=torch.float64)
                basis = torch.linalg.qr(gaussian).Q
            self._matrix = basis @ basis.T
        return self._matrix

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                self._collect(x)
            self._forget_eigenspace()  # a k or basis read while collecting is of the data before this batch
            return x
        if self._generator is None and self.k == self.features:
            return x  # every direction kept: the projection is the identity
        key = (x.device, x.dtype)
        if self._operands is None or self._operands[0] != key:
            matrix = self.projection_matrix().to(device=x.device, dtype=x.dtype)
            bias = None
            if self.centered:
                mean = self.accumulator.mean.to(device=x.device, dtype=x.dtype)
                bias = mean - matrix @ mean
            self._operands = (key, matrix, bias)
        _, matrix, bias = self._operands
        return self._project(x, matrix, bias)

    def _collect(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def _project(self, x: torch.Tensor, matrix: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"features={self.features}, delta={self.delta}, centered={self.centered}"


class LinearPCA(_PCALayer):
    """PCA layer for (…, features) outputs of Linear layers."""

    def _collect(self, x: torch.Tensor) -> None:
        self.accumulator.update(x.reshape(-1, self.features))

    def _project(self, x: torch.Tensor, matrix: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, matrix, bias)


class Conv2dPCA(_PCALayer):
    """PCA layer for (B, channels, H, W) feature maps: every position is one observation."""

    def _collect(self, x: torch.Tensor) -> None:
        self.accumulator.update_maps(x if x.dim() == 4 else x.unsqueeze(0))  # Conv2d also takes (C, H, W)

    def _project(self, x: torch.Tensor, matrix: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.conv2d(x, matrix[:, :, None, None], bias)


def pca_layer_for(module: nn.Module, delta: float = 0.99, centered: bool = False) -> _PCALayer:
    if isinstance(module, nn.Conv2d):
        return Conv2dPCA(module.out_channels, delta, centered)
    if isinstance(module, nn.Linear):
        return LinearPCA(module.out_features, delta, centered)
    raise TypeError(f"no PCA layer for {type(module).__name__}")


def projectable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The Conv2d and Linear submodules a PCA layer can follow, in definition order.

    Linear layers that are never called (``weight_only_layers``: attention's ``out_proj``) are
    skipped: wrapping one would break the attention, and its PCA layer would never see data.
    """
    weight_only = weight_only_layers(model)
    return [(name, module) for name, module in model.named_modules()
            if name and isinstance(module, (nn.Conv2d, nn.Linear)) and name not in weight_only]


PCA_CHILD = "pca_projection"  # the name a PCA layer gets as a child of the layer it follows


def insert_pca_layers(model: nn.Module, delta: float = 0.99, exclude: Sequence[str] = (),
                      centered: bool = False) -> tuple[nn.Module, dict[str, _PCALayer]]:
    """A deep copy of ``model`` with a PCA layer after every projectable Conv2d and Linear
    (``projectable_layers``) whose qualified name matches none of the fnmatch patterns ``exclude``.

    Each such layer keeps its place and its parameters; its PCA layer becomes its child
    ``pca_projection`` (so ``.eval()`` and ``.to()`` reach it) and a forward hook passes the layer's
    output through it. Parents that read a layer's attributes instead of calling it
    (``nn.TransformerEncoderLayer``'s fast-path checks read ``linear1.weight``) therefore see the
    layer they expect. The returned mapping is keyed by the original qualified names, in
    definition order.
    """
    if isinstance(model, (nn.Conv2d, nn.Linear)):
        raise TypeError("insert_pca_layers needs a model that contains its Conv2d/Linear layers as submodules")
    projected = copy.deepcopy(model)
    targets = [(name, module) for name, module in projectable_layers(projected)
               if not any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude)]
    layers: dict[str, _PCALayer] = {}
    for name, module in targets:
        if hasattr(module, PCA_CHILD):
            raise ValueError(f"layer {name!r} has a PCA layer already (insert_pca_layers on a projected model?)")
        pca = pca_layer_for(module, delta, centered).to(next(module.parameters(), torch.empty(0)).device)
        module.add_module(PCA_CHILD, pca)
        module.register_forward_hook(_through_pca_layer)
        layers[name] = pca
    return projected, layers


def _through_pca_layer(module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor:
    """Forward hook: the layer's output, collected or projected by its PCA child."""
    return getattr(module, PCA_CHILD)(output)

