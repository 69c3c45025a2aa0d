"""Pointwise nonlinearities on regular feature maps.

A regular feature map (B, C, |G|, H, W) transforms by moving pixels in the
plane and permuting the |G| orientation channels (see
:func:`histo_gedl.groups.actions.transform_regular`). A function applied to
each value on its own commutes with every permutation of values, so for any
pointwise ``sigma``: ``sigma(g . F) = g . sigma(F)``. This is exact for
quarter turns and reflections, which move whole pixels. Other angles move
pixels by bilinear interpolation, and a nonlinear function does not commute
with interpolation, so there the law holds only up to the interpolation error
(which shrinks as the feature map gets smoother). Nonlinearities for
steerable (escnn) fields are in :mod:`histo_gedl.layers.steerable`, because a
pointwise function does not commute with the rotation matrices of most irreps.
"""

from __future__ import annotations

import torch
from torch import nn

from histo_gedl.errors import InvalidParameterError

_FUNCTIONS = {
    "relu": torch.relu,
    "elu": nn.functional.elu,
    "gelu": nn.functional.gelu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
}


class PointwiseNonlinearity(nn.Module):
    """Apply an elementwise function to a regular feature map; the shape is unchanged.

    Equivariance law: ``sigma(g . F) = g . sigma(F)``.

    Args:
        name: one of "relu", "elu", "gelu", "sigmoid", "tanh".
    """

    def __init__(self, name: str = "relu") -> None:
        super().__init__()
        if name not in _FUNCTIONS:
            raise InvalidParameterError(
                f"unknown nonlinearity {name!r}; use one of {', '.join(sorted(_FUNCTIONS))}"
            )
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _FUNCTIONS[self.name](x)

    def extra_repr(self) -> str:
        return f"{self.name!r}"
