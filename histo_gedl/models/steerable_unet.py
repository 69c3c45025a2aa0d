"""U-Net of steerable convolutions (escnn) over C<N> or D<N>.

The layout is that of :class:`histo_gedl.models.unet.RegularUNet`. A first
stage runs at full resolution, then ``depth`` stages halve the size and
double the number of fields. The decoder upsamples bilinearly and
concatenates the skip connection (a direct sum of field types). Every stage
has two steerable convolutions, each followed by equivariant batch norm and
a Fourier ReLU. The features are band-limited fields (frequencies 0..L of
a function on the group), so downsampling is a 2x2 average: max pooling of
Fourier coefficients would not be equivariant.

The network ends with a max (or mean) over the samples of each field on the
group and a 1x1 convolution, so the logits are invariant per pixel:
``model(g . x) = g . model(x)`` with ``g`` acting on the plane only. This is
exact for quarter turns (and the reflections of D<N>) when the input height
and width are multiples of ``2 ** depth``.
"""

from __future__ import annotations

import torch
from escnn import nn as enn
from torch import nn

from histo_gedl.groups import parse_group
from histo_gedl.layers.steerable import (
    FourierGroupPool,
    FourierNonlinearity,
    SteerableBatchNorm,
    SteerableConv,
    SteerablePool2d,
    SteerableUpsample,
    band_limited_type,
    default_max_frequency,
    make_gspace,
    trivial_type,
)
from histo_gedl.models.config import ModelConfig


class SteerableStage(nn.Module):
    """Two steerable convolutions, each followed by batch norm and a Fourier ReLU.

    Shapes: (B, in_type.size, H, W) -> (B, fields * F, H, W), F the size of one field.
    """

    def __init__(self, in_type: enn.FieldType, fields: int, max_frequency: int, kernel_size: int) -> None:
        super().__init__()
        gspace = in_type.gspace
        hidden = band_limited_type(gspace, fields, max_frequency)
        self.in_type, self.out_type = in_type, hidden
        self.conv1 = SteerableConv(in_type, hidden, kernel_size, bias=False)
        self.norm1 = SteerableBatchNorm(hidden)
        self.act1 = FourierNonlinearity(gspace, fields, max_frequency)
        self.conv2 = SteerableConv(hidden, hidden, kernel_size, bias=False)
        self.norm2 = SteerableBatchNorm(hidden)
        self.act2 = FourierNonlinearity(gspace, fields, max_frequency)

    def forward(self, x: torch.Tensor | enn.GeometricTensor) -> enn.GeometricTensor:
        x = self.act1(self.norm1(self.conv1(x)))
        return self.act2(self.norm2(self.conv2(x)))


class SteerableUNet(nn.Module):
    """U-Net of band-limited steerable fields, ending in per-pixel invariant logits.

    ``config.width`` is the number of fields of the first stage; each field
    has ``F`` channels (F = |G| minus the frequencies above the band limit).

    Args:
        config: architecture; ``kind`` should be "steerable".
        max_frequency: band limit L of the fields; defaults to
            :func:`~histo_gedl.layers.steerable.default_max_frequency`
            (``min(N // 2, 3)``). Saved models are rebuilt with the default.

    Shapes: input (B, in_channels, H, W), output logits (B, classes, H, W),
    with H and W multiples of ``2 ** depth``.
    """

    def __init__(self, config: ModelConfig, max_frequency: int | None = None) -> None:
        super().__init__()
        self.group = parse_group(config.group)
        self.gspace = make_gspace(self.group)
        self.max_frequency = default_max_frequency(self.group) if max_frequency is None else max_frequency
        fields = [config.width * 2**level for level in range(config.depth + 1)]
        k, band = config.kernel_size, self.max_frequency

        self.in_type = trivial_type(self.gspace, config.in_channels)
        types = [band_limited_type(self.gspace, count, band) for count in fields]

        encoder = [SteerableStage(self.in_type, fields[0], band, k)]
        encoder += [SteerableStage(types[i - 1], fields[i], band, k) for i in range(1, len(fields))]
        self.encoder = nn.ModuleList(encoder)
        self.pools = nn.ModuleList([SteerablePool2d(types[i], "avg") for i in range(config.depth)])

        # decoder[i] merges the upsampled level i + 1 with the skip of level i.
        self.upsamples = nn.ModuleList([SteerableUpsample(types[i + 1]) for i in range(config.depth)])
        self.decoder = nn.ModuleList(
            [SteerableStage(types[i + 1] + types[i], fields[i], band, k) for i in range(config.depth)]
        )
        self.group_pool = FourierGroupPool(self.gspace, fields[0], band, config.orientation_pool)
        self.head = nn.Conv2d(fields[0], len(config.classes), kernel_size=1)

    def features(self, x: torch.Tensor) -> enn.GeometricTensor:
        """Return the last band-limited fields (B, width * F, H, W) before group pooling."""
        skips = []
        for level, stage in enumerate(self.encoder):
            if level > 0:
                x = self.pools[level - 1](x)
            x = stage(x)
            skips.append(x)
        x = skips.pop()
        for level in reversed(range(len(self.decoder))):
            up = self.upsamples[level](x)
            x = self.decoder[level](enn.tensor_directsum([up, skips.pop()]))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.group_pool(self.features(x)).tensor)
