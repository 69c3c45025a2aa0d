"""Orientation pooling: from regular feature maps to rotation-invariant ones.

Pooling over the group axis of a regular feature map (B, C, |G|, H, W) gives
a map (B, C, H, W) that only moves in the plane when the input is rotated:
``pool(g . F) = g . pool(F)`` with ``g`` acting on the plane alone.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from histo_gedl.errors import InvalidParameterError
from histo_gedl.groups.finite import FiniteRotationGroup


class OrientationPool(nn.Module):
    """Max or mean over the orientation axis: (B, C, |G|, H, W) -> (B, C, H, W)."""

    def __init__(self, mode: str = "max") -> None:
        super().__init__()
        if mode not in ("max", "mean"):
            raise InvalidParameterError(f"orientation pooling mode must be 'max' or 'mean', got {mode!r}")
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise InvalidParameterError(
                f"OrientationPool expects (B, C, |G|, H, W), got shape {tuple(x.shape)}"
            )
        if self.mode == "max":
            return x.amax(dim=2)
        return x.mean(dim=2)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


def dominant_orientation(x: torch.Tensor, group: FiniteRotationGroup) -> torch.Tensor:
    """Return the angle of the first Fourier coefficient over the rotation axis.

    For a cyclic group, ``theta(x) = arg sum_k F(x, k) exp(i 2 pi k / N)``, in
    radians in ``(-pi, pi]``. Rotating the input by ``g`` moves the map in the
    plane and adds the angle of ``g``: ``theta(g . F) = g . theta(F) + angle(g)``
    (modulo 2 pi).

    Args:
        x: regular feature map (B, C, N, H, W) of a cyclic group C_N.

    Returns:
        Tensor (B, C, H, W) of angles in radians.
    """
    if group.reflections:
        raise InvalidParameterError(
            f"dominant orientation is defined for cyclic groups; {group.name} has reflections, "
            f"so use C{group.rotations} features"
        )
    if x.dim() != 5 or x.shape[2] != group.order:
        raise InvalidParameterError(
            f"expected features (B, C, {group.order}, H, W) for {group.name}, got {tuple(x.shape)}"
        )
    angles = torch.arange(group.order, dtype=x.dtype, device=x.device) * (2 * math.pi / group.order)
    shape = (1, 1, group.order, 1, 1)
    real = (x * torch.cos(angles).reshape(shape)).sum(dim=2)
    imaginary = (x * torch.sin(angles).reshape(shape)).sum(dim=2)
    return torch.atan2(imaginary, real)
