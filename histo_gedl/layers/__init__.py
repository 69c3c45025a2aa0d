"""Equivariant layers: regular and steerable convolutions, nonlinearities, pooling."""

from histo_gedl.layers.pooling import OrientationPool, dominant_orientation
from histo_gedl.layers.regular import (
    GroupBatchNorm,
    GroupConv2d,
    GroupMaxPool2d,
    LiftingConv2d,
    upsample_regular,
)

__all__ = [
    "GroupBatchNorm",
    "GroupConv2d",
    "GroupMaxPool2d",
    "LiftingConv2d",
    "OrientationPool",
    "dominant_orientation",
    "upsample_regular",
]
