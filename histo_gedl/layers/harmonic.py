"""Harmonic-network layers: complex circular-harmonic filters (Worrall et al., CVPR 2017).

A harmonic filter of rotation order ``m`` is ``W(r, phi) = R(r) exp(i (m phi +
beta))`` in polar coordinates about the kernel centre, with a learned radial
profile ``R`` (a sum of Gaussian rings) and a learned phase ``beta``. Because
``W(R_theta v) = exp(i m theta) W(v)``, the cross-correlation of an order-``n``
feature stream with an order-``m`` filter is a stream of order ``n + m``.

Feature maps are complex tensors (B, O, C, H, W): ``O`` rotation orders, each
with ``C`` channels. A stream of order ``m`` transforms under a rotation by
``theta`` as

    (theta . z)(x) = exp(i m theta) z(R_theta^-1 x),

so the equivariance law of :class:`HarmonicConv2d` is
``conv(theta . z) = theta . conv(z)``, with each side using the orders of its
own streams. It is exact (up to float rounding) for quarter turns, because the
kernel grid maps onto itself, and approximate for other angles, where the
rotated image is interpolated. Real images are order-0 streams.

Complex magnitudes are invariant, so :class:`MagnitudeReLU` (which rescales
``|z|`` and keeps the phase) is equivariant, and :func:`harmonic_magnitude`
turns any stream into rotation-invariant features that only move in the
plane. Harmonic networks are equivariant to rotations only; a reflection
conjugates the filter's phase and has no action on these streams.

Coordinates follow :mod:`histo_gedl.groups.finite`: ``x = col - c`` and
``y = c - row`` about the kernel centre ``c``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from histo_gedl.errors import InvalidParameterError
from histo_gedl.groups.actions import rotate_image
from histo_gedl.groups.finite import FiniteRotationGroup
from histo_gedl.layers.kernels import RING_WIDTH


def _check_orders(orders: tuple[int, ...], what: str) -> tuple[int, ...]:
    orders = tuple(orders)
    if not orders or any(not isinstance(m, int) for m in orders) or len(set(orders)) != len(orders):
        raise InvalidParameterError(
            f"{what} must be a non-empty tuple of distinct integer rotation orders, got {orders!r}"
        )
    return orders


def _polar_grid(kernel_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Return radius and angle of each kernel pixel about the centre, each (k, k)."""
    centre = (kernel_size - 1) / 2
    rows, cols = np.mgrid[0:kernel_size, 0:kernel_size].astype(np.float64)
    x, y = cols - centre, centre - rows
    return np.hypot(x, y), np.arctan2(y, x)


class HarmonicConv2d(nn.Module):
    """Cross-correlation with learned circular-harmonic filters between rotation orders.

    The filter from input order ``n`` to output order ``m`` has rotation
    order ``m - n``. Its radial profile is a learned combination of Gaussian
    rings of radius 0, 1, ... pixels, without ring 0 and with a zero centre
    pixel when ``m != n``, because ``exp(i m phi)`` has no value at ``r = 0``.

    Equivariance: ``conv(theta . z) = theta . conv(z)`` (see the module docstring).

    Args:
        in_channels: channels per input order.
        out_channels: channels per output order.
        in_orders: rotation orders of the input streams, e.g. ``(0,)`` for an image.
        out_orders: rotation orders of the output streams.
        kernel_size: odd kernel width in pixels; padding keeps the spatial size.

    Shapes: input complex (B, len(in_orders), in_channels, H, W), or a real
    image (B, in_channels, H, W) when ``in_orders == (0,)``; output complex
    (B, len(out_orders), out_channels, H, W).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        in_orders: tuple[int, ...] = (0,),
        out_orders: tuple[int, ...] = (0, 1),
        kernel_size: int = 5,
    ) -> None:
        super().__init__()
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise InvalidParameterError(
                f"kernel_size must be an odd number >= 3 so that filters of order != 0 have a ring, "
                f"got {kernel_size}"
            )
        if in_channels < 1 or out_channels < 1:
            raise InvalidParameterError(
                f"in_channels and out_channels must be >= 1, got {in_channels} and {out_channels}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.in_orders = _check_orders(in_orders, "in_orders")
        self.out_orders = _check_orders(out_orders, "out_orders")
        self.kernel_size = kernel_size

        radius, phi = _polar_grid(kernel_size)
        n_rings = (kernel_size - 1) // 2 + 1
        inside = radius <= (kernel_size - 1) / 2 + 0.5
        rings = np.stack(
            [np.exp(-((radius - j) ** 2) / (2 * RING_WIDTH**2)) * inside for j in range(n_rings)]
        )
        orders = np.array([[m - n for n in self.in_orders] for m in self.out_orders])  # (Oo, Oi)
        cos = np.cos(orders[..., None, None] * phi)
        sin = np.sin(orders[..., None, None] * phi)
        centre = kernel_size // 2
        rotating = orders != 0
        cos[rotating, centre, centre] = 0.0
        sin[rotating, centre, centre] = 0.0
        ring_mask = np.ones(orders.shape + (n_rings,))
        ring_mask[rotating, 0] = 0.0
        self.register_buffer("rings", torch.from_numpy(rings).float(), persistent=False)
        self.register_buffer("cos", torch.from_numpy(cos).float(), persistent=False)
        self.register_buffer("sin", torch.from_numpy(sin).float(), persistent=False)
        self.register_buffer("ring_mask", torch.from_numpy(ring_mask).float(), persistent=False)

        fan_in = in_channels * len(self.in_orders) * n_rings
        shape = (len(self.out_orders), out_channels, len(self.in_orders), in_channels)
        self.radial = nn.Parameter(torch.randn(*shape, n_rings) * math.sqrt(2.0 / fan_in))
        self.phase = nn.Parameter(torch.rand(*shape) * (2 * math.pi))

    def complex_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the real and imaginary filters, each (Oo * out_channels, Oi * in_channels, k, k)."""
        radial = self.radial * self.ring_mask[:, None, :, None, :]  # (Oo, Co, Oi, Ci, J)
        profile = torch.einsum("ocpij,jyx->ocpiyx", radial, self.rings)
        cos_beta = torch.cos(self.phase)[..., None, None]
        sin_beta = torch.sin(self.phase)[..., None, None]
        cos_m = self.cos[:, None, :, None]  # (Oo, 1, Oi, 1, k, k)
        sin_m = self.sin[:, None, :, None]
        # exp(i (m phi + beta)) = cos(m phi + beta) + i sin(m phi + beta)
        real = profile * (cos_m * cos_beta - sin_m * sin_beta)
        imaginary = profile * (sin_m * cos_beta + cos_m * sin_beta)
        size = self.kernel_size
        rows = len(self.out_orders) * self.out_channels
        columns = len(self.in_orders) * self.in_channels
        return real.reshape(rows, columns, size, size), imaginary.reshape(rows, columns, size, size)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not z.is_complex():
            if self.in_orders != (0,) or z.dim() != 4:
                raise InvalidParameterError(
                    f"HarmonicConv2d takes a real image (B, C, H, W) only when in_orders == (0,); "
                    f"got a real tensor of shape {tuple(z.shape)} with in_orders={self.in_orders}. "
                    "Pass a complex tensor (B, orders, channels, H, W)"
                )
            z = torch.complex(z, torch.zeros_like(z)).unsqueeze(1)

        expected = (len(self.in_orders), self.in_channels)
        if z.dim() != 5 or tuple(z.shape[1:3]) != expected:
            raise InvalidParameterError(
                f"HarmonicConv2d expects complex input (B, {expected[0]}, {expected[1]}, H, W), "
                f"got {tuple(z.shape)}"
            )

        real_weight, imaginary_weight = self.complex_weight()
        real_weight = real_weight.to(z.real.dtype)
        imaginary_weight = imaginary_weight.to(z.real.dtype)
        # (A + iB)(u + iv) = (Au - Bv) + i(Av + Bu), as one real convolution.
        weight = torch.cat(
            [
                torch.cat([real_weight, -imaginary_weight], dim=1),
                torch.cat([imaginary_weight, real_weight], dim=1),
            ],
            dim=0,
        )
        stacked = torch.cat([z.real.flatten(1, 2), z.imag.flatten(1, 2)], dim=1)
        out = F.conv2d(stacked, weight, padding=self.kernel_size // 2)

        real, imaginary = out.chunk(2, dim=1)
        shape = (len(self.out_orders), self.out_channels)
        return torch.complex(real, imaginary).unflatten(1, shape)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, in_orders={self.in_orders}, "
            f"out_orders={self.out_orders}, kernel_size={self.kernel_size}"
        )


class MagnitudeReLU(nn.Module):
    """Rescale each complex feature to ``ReLU(|z| + b) z / |z|``, keeping its phase.

    ``b`` is a learned bias per order and channel. The magnitude is invariant
    and the phase untouched, so ``relu(theta . z) = theta . relu(z)``.

    Args:
        orders: number of rotation orders ``O``.
        channels: channels per order ``C``.
        eps: added to ``|z|^2`` before the square root, so zero features stay zero
            with a finite gradient.

    Shapes: input and output complex (B, O, C, H, W).
    """

    def __init__(self, orders: int, channels: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(orders, channels, 1, 1))
        self.eps = eps

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not z.is_complex() or z.dim() != 5 or tuple(z.shape[1:3]) != tuple(self.bias.shape[:2]):
            raise InvalidParameterError(
                f"MagnitudeReLU expects complex input (B, {self.bias.shape[0]}, {self.bias.shape[1]}, H, W), "
                f"got {'complex' if z.is_complex() else 'real'} {tuple(z.shape)}"
            )
        magnitude = torch.sqrt(z.real**2 + z.imag**2 + self.eps)
        scale = torch.relu(magnitude + self.bias) / magnitude
        return z * scale


def harmonic_magnitude(z: torch.Tensor) -> torch.Tensor:
    """Return ``|z|`` (B, O, C, H, W) of complex streams (B, O, C, H, W): invariant features.

    ``|theta . z| = R_theta |z|``: the magnitudes move in the plane and keep their values.
    """
    return z.abs()


def rotate_harmonic(
    z: torch.Tensor, group: FiniteRotationGroup, g: int, orders: tuple[int, ...]
) -> torch.Tensor:
    """Apply a rotation to complex streams: ``exp(i m theta) z(R^-1 x)`` for each order ``m``.

    Args:
        z: complex tensor (B, O, C, H, W) with ``O == len(orders)``.
        group: a rotation group; ``g`` must not reflect.
        g: element index.
        orders: rotation order of each of the ``O`` streams.

    Returns:
        Complex tensor (B, O, C, H, W).
    """
    if group.reflection_index(g):
        raise InvalidParameterError(
            f"harmonic streams have no reflection action; element {g} of {group.name} reflects. "
            "Check harmonic layers with rotations only (a C<N> group)"
        )
    if z.dim() != 5 or z.shape[1] != len(orders):
        raise InvalidParameterError(
            f"expected complex streams (B, {len(orders)}, C, H, W) for orders {tuple(orders)}, "
            f"got {tuple(z.shape)}"
        )
    moved = torch.complex(rotate_image(z.real, group, g), rotate_image(z.imag, group, g))
    theta = group.angle(g)
    dtype = z.real.dtype
    order_tensor = torch.tensor(orders, dtype=dtype, device=z.device)
    factor = torch.polar(torch.ones_like(order_tensor), order_tensor * theta)
    return moved * factor.reshape(1, -1, 1, 1, 1)


def to_channel_pairs(z: torch.Tensor) -> torch.Tensor:
    """Return complex streams (B, O, C, H, W) as real channels (B, 2 O C, H, W).

    Channel ``2 i`` is the real part and ``2 i + 1`` the imaginary part of the
    ``i``-th (order, channel) pair, orders outermost.
    """
    return torch.stack([z.real, z.imag], dim=3).flatten(1, 3)


def from_channel_pairs(x: torch.Tensor, orders: int) -> torch.Tensor:
    """Return real channel pairs (B, 2 O C, H, W) as complex streams (B, O, C, H, W)."""
    if x.dim() != 4 or x.shape[1] % (2 * orders):
        raise InvalidParameterError(
            f"channel pairs for {orders} orders need (B, 2 * {orders} * C, H, W), got {tuple(x.shape)}"
        )
    pairs = x.unflatten(1, (orders, -1, 2))
    return torch.complex(pairs[:, :, :, 0], pairs[:, :, :, 1])
