"""Running covariance of a layer's output: constant memory, updated batch by batch.

The thesis (§6.1.3) accumulates ΣAᵀA, ΣA and n in float64 and forms
Q = ΣAᵀA/n − mean⊗mean. We keep the same sufficient statistics of the *shifted* values
a − s, where the shift s is the exact mean of the first batch: ΣA' = Σ(a − s) and
ΣA'ᵀA' = Σ(a − s)(a − s)ᵀ, so that Q = ΣA'ᵀA'/n − mean'⊗mean'. The shift removes the
cancellation of the textbook formula when the mean is large against the spread; what is
left is bounded: the first batch's mean lies within √(n/n₁) standard deviations of the
overall mean (its n₁ points alone contribute n₁·(mean₁ − mean)² to the n·variance), so float64
rounding is amplified at most n/n₁-fold, the number of batches.

Per batch, the activations are converted, laid out and shifted into one float64 matrix, which
is summed and whose Gram product is added to the running sums in place: few operations per
hook, which is what a forward hook on a GPU pays for. The activations are copied, never the
layer's own output modified. The first batch runs with autocast switched off (under mixed
precision its float32 product would silently run in bfloat16/float16); float64 operands, as
in every later batch, are never cast.

On the CPU, feature maps with enough work take a fused kernel instead (``fused_gram``): the same
shifted float64 sums in one pass over the maps, without the float64 copy. It keeps only the Gram's
lower triangle, so the covariance is read from the lower triangle whichever path a batch took.

There is no float32 fast path (the fused kernel is exact float64). One was tried (float32 Gram
products over short chunks of observations, summed in float64): on activations with many
repeated values (ReLU zeros, bfloat16 outputs) its rounding errors do not cancel, and it exceeded
a 1e-7 relative covariance error on VGG-sized batches unless the chunks were so short (≤ 16
observations) that it became slower than the exact path (benchmarks/RESULTS.md, issue 3).
"""

from __future__ import annotations

import contextlib

import torch

from phd_lab.tracking import fused_gram


class CovarianceAccumulator:
    """Streaming population covariance of ``dim`` features (rows are observations)."""

    def __init__(self, dim: int, device: torch.device | str | None = None) -> None:
        self.dim = int(dim)
        self.device = torch.device(device) if device is not None else None
        self.reset()

    def reset(self) -> None:
        """Forget every observation."""
        self.n = 0
        self._shift: torch.Tensor | None = None  # float64 (dim,): the first batch's mean
        self._sum: torch.Tensor | None = None  # float64 (dim,): Σ (a − shift)
        # float64 (dim, dim): Σ (a − shift)(a − shift)ᵀ; only the lower triangle is kept up to date
        # (the fused CPU kernel adds to nothing else), and only the lower triangle is read
        self._gram: torch.Tensor | None = None

    # ------------------------------------------------------------------ updates
    def update(self, rows: torch.Tensor) -> None:
        """Add observations given as a (N, dim) matrix."""
        if rows.dim() != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"expected a (N, {self.dim}) matrix of observations; got shape {tuple(rows.shape)}")
        count = rows.shape[0]
        if count == 0:
            return
        rows = self._place(rows)
        if self._shift is None:
            with _full_precision(rows.device):
                x = rows.to(torch.float64, copy=True)  # centred in place below: never the layer's own tensor
                mean = x.mean(dim=0)
                x -= mean
                self._start(count, mean, x.T @ x, x.sum(dim=0))
            return
        x = torch.empty(count, self.dim, dtype=torch.float64, device=rows.device)
        _convert_and_shift(rows, self._shift, out=x)
        self._add_shifted(count, x.T)

    def update_maps(self, maps: torch.Tensor) -> None:
        """Add feature maps (B, dim, H, W): every spatial position is one observation."""
        if maps.dim() != 4 or maps.shape[1] != self.dim:
            raise ValueError(f"expected (B, {self.dim}, H, W) feature maps; got shape {tuple(maps.shape)}")
        batch, channels = maps.shape[:2]
        count = maps.shape[0] * maps.shape[2] * maps.shape[3]
        if count == 0:
            return
        maps = self._place(maps)
        if fused_gram.applies(maps):
            if self._shift is None:  # the exact mean, summed on one thread like the kernel's sums
                mean = fused_gram.channel_sums(maps).div_(count)
                self._start(0, mean, torch.zeros(channels, channels, dtype=torch.float64), torch.zeros_like(mean))
            fused_gram.accumulate(maps, self._shift, self._gram, self._sum)  # type: ignore[arg-type]
            self.n += count
            return
        by_channel = maps.reshape(batch, channels, -1).transpose(0, 1)  # (C, B, H·W) view
        if self._shift is None:
            with _full_precision(maps.device):
                # (C, B·H·W): every column one observation, converted and laid out by one copy.
                x = torch.empty(channels, count, dtype=torch.float64, device=maps.device)
                x.view(channels, batch, -1).copy_(by_channel)
                mean = x.mean(dim=1)
                x -= mean[:, None]
                self._start(count, mean, x @ x.T, x.sum(dim=1))
            return
        x = torch.empty(channels, count, dtype=torch.float64, device=maps.device)
        _convert_and_shift(by_channel, self._shift.view(channels, 1, 1), out=x.view(channels, batch, -1))
        self._add_shifted(count, x)

    def _place(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach()
        if self.device is not None and tensor.device != self.device:
            tensor = tensor.to(self.device)
        return tensor

    def _start(self, count: int, mean: torch.Tensor, m2: torch.Tensor, total: torch.Tensor) -> None:
        """First batch: its mean, as rounded, becomes the shift of every later batch. ``total`` is the batch's
        Σ (a − shift), kept although it is 0 in exact arithmetic: the rounded mean leaves n₁ times its rounding
        error there, and a sum taken as 0 gave a constant float64 layer a saturation of 1/d instead of 0 and a
        mean 1e9 times the spread a relative covariance error of 1e-9 instead of 1e-13."""
        self.n, self._shift, self._sum, self._gram = count, *_outside_inference_mode(mean, total, m2)

    def _add_shifted(self, count: int, columns: torch.Tensor) -> None:
        """Add a float64 (dim, count) matrix of shifted observations (columns). Every operand is
        float64, which autocast never casts, so this hot path needs no autocast context."""
        self._sum += columns.sum(dim=1)  # type: ignore[operator]
        self._gram.addmm_(columns, columns.T)  # type: ignore[union-attr]
        self.n += count

    # ------------------------------------------------------------------ results
    @property
    def mean(self) -> torch.Tensor:
        if self._shift is None:
            raise ValueError("no observations accumulated yet")
        return self._shift + self._sum / self.n  # type: ignore[operator]

    def covariance(self) -> torch.Tensor:
        """Population covariance (ΣA'ᵀA' − ΣA' ΣA'ᵀ/n)/n, float64, exactly symmetric.

        Read from the Gram's lower triangle, which every update path keeps (the fused CPU kernel keeps
        only that), and formed in one d × d buffer plus the transposed copy of the mirroring (a
        4,096-wide layer's temporaries were four 134 MB matrices at once).
        """
        if self._gram is None:
            raise ValueError("no observations accumulated yet")
        cov = torch.outer(self._sum, self._sum).div_(-self.n)  # type: ignore[arg-type]
        cov.add_(self._gram).div_(self.n)
        lower = torch.tril(cov, diagonal=-1)
        return cov.tril_().add_(lower.T)


def _outside_inference_mode(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The running sums as normal tensors: made from a first batch run under ``torch.inference_mode`` they were
    inference tensors, which no later batch outside it may update in place (a RuntimeError from the hook)."""
    if not any(tensor.is_inference() for tensor in tensors):
        return tensors
    with torch.inference_mode(False):
        return tuple(tensor.clone() for tensor in tensors)


def _convert_and_shift(source: torch.Tensor, shift: torch.Tensor, out: torch.Tensor) -> None:
    """out = source − shift in float64. On CUDA one mixed-dtype kernel does it; on the CPU that
    kernel is about ten times slower than a converting copy followed by an in-place subtraction."""
    if out.is_cuda:
        torch.sub(source, shift, out=out)
    else:
        out.copy_(source).sub_(shift)


def _full_precision(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """Autocast switched off on ``device`` (the sums must not drop to bfloat16/float16)."""
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()

