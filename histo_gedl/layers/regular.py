"""Regular group convolutions over the roto-translation groups R^2 x| G.

Features on R^2 x| G are tensors (B, C, |G|, H, W): ``C`` channels, each a
function over the group elements and the plane. Kernels are combinations of
the steerable basis in :mod:`histo_gedl.layers.kernels`, so the copy of a
kernel for each rotation is sampled from one continuous function.

Equivariance law, for every ``g`` in G: ``layer(g . x) = g . layer(x)``, with
the actions of :mod:`histo_gedl.groups.actions`. It is exact (up to float
rounding) when ``g`` turns by a multiple of 90 degrees or reflects, and
approximate for other angles because the image grid is square.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from histo_gedl.errors import InvalidParameterError
from histo_gedl.groups.finite import FiniteRotationGroup
from histo_gedl.layers.kernels import group_kernel_basis


def _check_input(x: torch.Tensor, expected: tuple, layer: nn.Module) -> None:
    """Raise InvalidParameterError when ``x`` does not have the ``expected`` shape pattern."""
    ndim = len(expected)
    if x.dim() != ndim or any(e is not None and s != e for s, e in zip(x.shape, expected)):
        pattern = ", ".join("*" if e is None else str(e) for e in expected)
        raise InvalidParameterError(
            f"{type(layer).__name__} expects input of shape ({pattern}), got {tuple(x.shape)}"
        )


class LiftingConv2d(nn.Module):
    """Lift an image to a function on R^2 x| G: ``[f * psi](x, g) = sum_y f(y) psi(g^-1 (y - x))``.

    Equivariance: ``lift(g . f) = g . lift(f)``, where ``g`` moves an image in
    the plane and a lifted map in the plane and along its group axis.

    Args:
        in_channels: channels of the input image.
        out_channels: output channels, each with ``group.order`` orientations.
        group: the rotation group G.
        kernel_size: odd kernel width in pixels; padding keeps the spatial size.
        bias: add one learned bias per output channel (shared by all orientations).

    Shapes: input (B, in_channels, H, W), output (B, out_channels, |G|, H, W).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        group: FiniteRotationGroup,
        kernel_size: int = 3,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.group = group
        self.kernel_size = kernel_size
        self.register_buffer("basis", group_kernel_basis(group, kernel_size), persistent=False)
        n_basis = self.basis.shape[1]
        std = math.sqrt(2.0 / (in_channels * n_basis))
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, n_basis) * std)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def expanded_weight(self) -> torch.Tensor:
        """Return the ordinary conv2d weight (out_channels * |G|, in_channels, k, k)."""
        kernel = torch.einsum("oib,gbyx->ogiyx", self.weight, self.basis)
        return kernel.reshape(-1, self.in_channels, self.kernel_size, self.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, (None, self.in_channels, None, None), self)
        bias = None
        if self.bias is not None:
            bias = self.bias.repeat_interleave(self.group.order)
        out = F.conv2d(x, self.expanded_weight(), bias, padding=self.kernel_size // 2)
        return out.unflatten(1, (self.out_channels, self.group.order))

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, group={self.group.name}, "
            f"kernel_size={self.kernel_size}"
        )


class GroupConv2d(nn.Module):
    """Convolve functions on R^2 x| G: ``[F * psi](x, h) = sum_{y, g} F(y, g) psi(h^-1 (y - x), h^-1 g)``.

    Equivariance: ``conv(g . F) = g . conv(F)``.

    Args:
        in_channels: input channels (each with |G| orientations).
        out_channels: output channels (each with |G| orientations).
        group: the rotation group G.
        kernel_size: odd kernel width in pixels; padding keeps the spatial size.
        bias: add one learned bias per output channel.

    Shapes: input (B, in_channels, |G|, H, W), output (B, out_channels, |G|, H, W).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        group: FiniteRotationGroup,
        kernel_size: int = 3,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.group = group
        self.kernel_size = kernel_size
        self.register_buffer("basis", group_kernel_basis(group, kernel_size), persistent=False)
        # index[h, g] = h^-1 g: which stored kernel feeds orientation g of output h.
        table = group.cayley_table[group.inverses]
        self.register_buffer("index", torch.as_tensor(table), persistent=False)
        n_basis = self.basis.shape[1]
        std = math.sqrt(2.0 / (in_channels * group.order * n_basis))
        self.weight = nn.Parameter(
            torch.randn(out_channels, in_channels, group.order, n_basis) * std
        )
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def expanded_weight(self) -> torch.Tensor:
        """Return the ordinary conv2d weight (out_channels * |G|, in_channels * |G|, k, k)."""
        permuted = self.weight[:, :, self.index]  # (o, i, h, g, b)
        kernel = torch.einsum("oihgb,hbyx->ohigyx", permuted, self.basis)
        order, size = self.group.order, self.kernel_size
        return kernel.reshape(self.out_channels * order, self.in_channels * order, size, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, (None, self.in_channels, self.group.order, None, None), self)
        bias = None
        if self.bias is not None:
            bias = self.bias.repeat_interleave(self.group.order)
        out = F.conv2d(x.flatten(1, 2), self.expanded_weight(), bias, padding=self.kernel_size // 2)
        return out.unflatten(1, (self.out_channels, self.group.order))

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, group={self.group.name}, "
            f"kernel_size={self.kernel_size}"
        )


class GroupBatchNorm(nn.BatchNorm3d):
    """Batch normalisation with one mean and variance per channel, shared by all orientations.

    Sharing the statistics over the group axis keeps ``norm(g . F) = g . norm(F)``.
    Shapes: input and output (B, C, |G|, H, W).
    """


class GroupMaxPool2d(nn.Module):
    """Spatial max pooling of a regular feature map, (B, C, |G|, H, W) -> (B, C, |G|, H/s, W/s).

    Equivariant to quarter turns only when H and W are multiples of ``stride``,
    because then the pooling windows are mapped onto each other.
    """

    def __init__(self, stride: int = 2) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, order, height, width = x.shape
        pooled = F.max_pool2d(x.reshape(batch, channels * order, height, width), self.stride)
        return pooled.unflatten(1, (channels, order))


def upsample_regular(x: torch.Tensor, scale: int = 2) -> torch.Tensor:
    """Bilinear upsampling in the plane, (B, C, |G|, H, W) -> (B, C, |G|, sH, sW).

    Bilinear interpolation with ``align_corners=False`` is symmetric under
    flips of the grid, so it commutes with quarter turns exactly.
    """
    batch, channels, order, height, width = x.shape
    up = F.interpolate(
        x.reshape(batch, channels * order, height, width),
        scale_factor=scale,
        mode="bilinear",
        align_corners=False,
    )
    return up.unflatten(1, (channels, order))
