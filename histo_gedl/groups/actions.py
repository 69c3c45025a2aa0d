"""Actions of the finite rotation groups on images and on regular feature maps.

An element ``g`` acts on an image ``f`` by ``(g . f)(x) = f(g^-1 x)``. On a
regular feature map ``F`` with one channel per group element it acts by
``(g . F)(x, h) = F(g^-1 x, g^-1 h)``: the map moves in the plane and its
orientation channels are permuted.

Quarter turns and reflections act on the pixel grid exactly (``torch.rot90``
and ``torch.flip``). Other angles resample with bilinear interpolation, so
they are exact only up to interpolation error, and pixels that come from
outside the image are zero.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from histo_gedl.groups.finite import FiniteRotationGroup


def rotate_image(x: torch.Tensor, group: FiniteRotationGroup, g: int) -> torch.Tensor:
    """Apply ``g`` to images or feature maps in the plane only.

    Args:
        x: tensor (..., H, W).
        group: the group that ``g`` belongs to.
        g: group element index.

    Returns:
        Tensor (..., H, W): ``x`` transformed by ``g``.
    """
    if group.reflection_index(g):
        x = torch.flip(x, dims=(-2,))
    quarter_turns = group.quarter_turns(g)
    if quarter_turns is not None:
        return torch.rot90(x, quarter_turns, dims=(-2, -1))
    return rotate_by_angle(x, group.angle(g))


def rotate_by_angle(x: torch.Tensor, angle: float) -> torch.Tensor:
    """Rotate ``x`` (..., H, W) counterclockwise by ``angle`` radians about its centre.

    Bilinear interpolation; samples from outside the image are zero.
    """
    *batch, height, width = x.shape
    flat = x.reshape(-1, 1, height, width)
    cos, sin = math.cos(angle), math.sin(angle)
    # grid_sample maps output coordinates to input coordinates, so the matrix is
    # the inverse rotation. Its y axis points down, which flips the sign of sin.
    theta = torch.tensor(
        [[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=flat.dtype, device=flat.device
    )
    theta[0, 1] *= height / width
    theta[1, 0] *= width / height
    grid = F.affine_grid(theta.expand(flat.shape[0], 2, 3), list(flat.shape), align_corners=False)
    rotated = F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return rotated.reshape(*batch, height, width)


def transform_regular(x: torch.Tensor, group: FiniteRotationGroup, g: int) -> torch.Tensor:
    """Apply ``g`` to a regular feature map.

    Args:
        x: tensor (B, C, |G|, H, W), one channel per group element.

    Returns:
        Tensor (B, C, |G|, H, W) with ``out[:, :, h] = rotate(x[:, :, g^-1 h])``.
    """
    source = torch.as_tensor(group.cayley_table[group.inverse(g)], device=x.device)
    return rotate_image(x.index_select(2, source), group, g)
