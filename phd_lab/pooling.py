"""Reducing feature maps to a fixed size: adaptive average pooling by the cheapest equivalent kernel,
and nearest interpolation.

Extraction (latent downsampling) and the saturation tracker (``tracking_resolution``) both
reduce feature maps to a fixed size with adaptive average pooling by default; on a CPU the generic
adaptive kernel costs several times more than plain average pooling, which gives the same
numbers whenever the sides are multiples of the target. Nearest interpolation keeps one position
per output cell instead (the thesis' other downsampling strategy of §8.3, and a tracker option).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pool_to(maps: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(maps, size)``, computed by cheaper equivalent kernels where one exists.

    Maps already of that size pass through, maps whose sides are multiples of ``size`` use a plain
    average pooling, and maps whose sides divide ``size`` are repeated (adaptive pooling to a larger
    size repeats every value).
    """
    target_height, target_width = (size, size) if isinstance(size, int) else size
    height, width = maps.shape[-2:]
    if height == target_height and width == target_width:
        return maps
    if height % target_height == 0 and width % target_width == 0:
        return F.avg_pool2d(maps, (height // target_height, width // target_width))
    if target_height % height == 0 and target_width % width == 0:
        return (maps.repeat_interleave(target_height // height, dim=-2)
                .repeat_interleave(target_width // width, dim=-1))
    return F.adaptive_avg_pool2d(maps, (target_height, target_width))


def nearest_to(maps: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(maps, size, mode="nearest")``: output cell (i, j) takes input position
    (floor(i·H/h), floor(j·W/w)), so a map reduced to 1×1 keeps its top-left value."""
    target = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(maps.shape[-2:]) == target:
        return maps
    return F.interpolate(maps, size=target, mode="nearest")
