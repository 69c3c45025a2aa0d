"""U-Nets for nuclei segmentation: regular group-equivariant, steerable, and plain.

All kinds share one layout: a first stage at full resolution, ``depth``
stages that halve the size with 2x2 max pooling and double the width, and a
decoder that upsamples bilinearly and concatenates the skip connection.
The equivariant kinds end with orientation pooling, so their per-pixel
logits are invariant: ``model(g . x) = g . model(x)`` with ``g`` acting on the
plane only. This is exact for quarter turns (and reflections for D<N>) when
the input height and width are multiples of ``2 ** depth``; see
:func:`exact_sizes`.
"""

from __future__ import annotations

import torch
from torch import nn

from histo_gedl.errors import InvalidParameterError
from histo_gedl.groups import parse_group
from histo_gedl.layers import (
    GroupBatchNorm,
    GroupConv2d,
    GroupMaxPool2d,
    LiftingConv2d,
    OrientationPool,
    dominant_orientation,
    upsample_regular,
)
from histo_gedl.models.config import ModelConfig, ModelMetadata


class _RegularStage(nn.Module):
    """Two group convolutions, each followed by batch norm and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, group, kernel_size: int, lift: bool = False):
        super().__init__()
        first = LiftingConv2d if lift else GroupConv2d
        self.conv1 = first(in_channels, out_channels, group, kernel_size, bias=False)
        self.norm1 = GroupBatchNorm(out_channels)
        self.conv2 = GroupConv2d(out_channels, out_channels, group, kernel_size, bias=False)
        self.norm2 = GroupBatchNorm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(x)))


class RegularUNet(nn.Module):
    """U-Net of lifting and group convolutions over C<N> or D<N>.

    Shapes: input (B, in_channels, H, W), output logits (B, classes, H, W).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.group = parse_group(config.group)
        widths = [config.width * 2**level for level in range(config.depth + 1)]
        k = config.kernel_size
        self.encoder = nn.ModuleList(
            [_RegularStage(config.in_channels, widths[0], self.group, k, lift=True)]
            + [_RegularStage(widths[i - 1], widths[i], self.group, k) for i in range(1, len(widths))]
        )
        self.decoder = nn.ModuleList(
            [_RegularStage(widths[i + 1] + widths[i], widths[i], self.group, k) for i in range(config.depth)]
        )
        self.pool = GroupMaxPool2d(2)
        self.orientation_pool = OrientationPool(config.orientation_pool)
        self.head = nn.Conv2d(widths[0], len(config.classes), kernel_size=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the last regular feature map (B, width, |G|, H, W) before orientation pooling."""
        skips = []
        for level, stage in enumerate(self.encoder):
            if level > 0:
                x = self.pool(x)
            x = stage(x)
            skips.append(x)
        x = skips.pop()
        for stage in reversed(self.decoder):
            x = upsample_regular(x, 2)
            x = stage(torch.cat([x, skips.pop()], dim=1))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.orientation_pool(self.features(x)))

    def forward_with_orientation(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return logits (B, classes, H, W) and a dominant-orientation map (B, H, W) in radians.

        The orientation is :func:`~histo_gedl.layers.dominant_orientation` of
        the last features summed over channels. For C<N> it rotates with the
        input: turning the input by ``g`` moves the map and adds the angle of
        ``g``. Groups with reflections have no such map.
        """
        features = self.features(x)
        logits = self.head(self.orientation_pool(features))
        angle = dominant_orientation(features.sum(dim=1, keepdim=True), self.group)[:, 0]
        return logits, angle


class _PlainStage(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        padding = kernel_size // 2
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, kernel_size, padding=padding, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )


class PlainUNet(nn.Module):
    """The same U-Net with ordinary convolutions: the non-equivariant baseline.

    Shapes: input (B, in_channels, H, W), output logits (B, classes, H, W).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        widths = [config.width * 2**level for level in range(config.depth + 1)]
        k = config.kernel_size
        self.encoder = nn.ModuleList(
            [_PlainStage(config.in_channels, widths[0], k)]
            + [_PlainStage(widths[i - 1], widths[i], k) for i in range(1, len(widths))]
        )
        self.decoder = nn.ModuleList(
            [_PlainStage(widths[i + 1] + widths[i], widths[i], k) for i in range(config.depth)]
        )
        self.head = nn.Conv2d(widths[0], len(config.classes), kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, stage in enumerate(self.encoder):
            if level > 0:
                x = nn.functional.max_pool2d(x, 2)
            x = stage(x)
            skips.append(x)
        x = skips.pop()
        for stage in reversed(self.decoder):
            x = nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = stage(torch.cat([x, skips.pop()], dim=1))
        return self.head(x)


class SegmentationModel(nn.Module):
    """A U-Net body with its input normalisation, configuration and metadata.

    ``forward`` takes RGB images scaled to [0, 1], shape (B, 3, H, W), and
    returns class logits (B, classes, H, W). H and W must be multiples of
    ``config.total_stride``.
    """

    def __init__(self, config: ModelConfig, metadata: ModelMetadata | None = None) -> None:
        super().__init__()
        self.config = config
        self.metadata = metadata or ModelMetadata()
        self.register_buffer("mean", torch.tensor(self.metadata.mean).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(self.metadata.std).reshape(1, -1, 1, 1))
        if config.kind == "regular":
            self.net = RegularUNet(config)
        elif config.kind == "plain":
            self.net = PlainUNet(config)
        else:
            try:
                from histo_gedl.models.steerable_unet import SteerableUNet
            except ImportError as error:
                raise InvalidParameterError(
                    f"steerable models need escnn, which failed to import ({error}); install it with "
                    "pip install --no-deps escnn==1.0.11"
                ) from error
            self.net = SteerableUNet(config)

    def _check_input(self, x: torch.Tensor) -> None:
        stride = self.config.total_stride
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise InvalidParameterError(
                f"model expects images (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}"
            )
        if x.shape[-2] % stride or x.shape[-1] % stride:
            raise InvalidParameterError(
                f"image height and width must be multiples of {stride} for this model "
                f"(depth {self.config.depth}), got {tuple(x.shape[-2:])}; pad or crop the input"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.net((x - self.mean) / self.std)

    def forward_with_orientation(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return logits and the dominant-orientation map (B, H, W); regular C<N> models only."""
        if not hasattr(self.net, "forward_with_orientation"):
            raise InvalidParameterError(
                f"a {self.config.kind} model has no orientation output; use a regular C<N> model"
            )
        self._check_input(x)
        return self.net.forward_with_orientation((x - self.mean) / self.std)


def build_model(config: ModelConfig, metadata: ModelMetadata | None = None) -> SegmentationModel:
    """Build a model of any kind from its configuration."""
    return SegmentationModel(config, metadata)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def matched_plain_width(config: ModelConfig, target_parameters: int) -> int:
    """Return the plain U-Net width whose parameter count is closest to ``target_parameters``."""
    best_width, best_gap = 1, None
    for width in range(1, 257):
        plain = ModelConfig(
            kind="plain", width=width, depth=config.depth, kernel_size=config.kernel_size,
            in_channels=config.in_channels, classes=config.classes,
        )
        gap = abs(count_parameters(PlainUNet(plain)) - target_parameters)
        if best_gap is None or gap < best_gap:
            best_width, best_gap = width, gap
        elif gap > best_gap:
            break
    return best_width


def exact_sizes(config: ModelConfig, max_size: int) -> list[int]:
    """Return the input sizes up to ``max_size`` on which quarter turns are exact.

    Each 2x2 max pooling maps its windows onto each other under a quarter
    turn only when the size entering it is even, so every multiple of
    ``2 ** depth`` works and nothing else does.
    """
    stride = config.total_stride
    return list(range(stride, max_size + 1, stride))
