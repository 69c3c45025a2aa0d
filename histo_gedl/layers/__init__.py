"""Equivariant layers: regular and steerable convolutions, nonlinearities, pooling."""

from histo_gedl.layers.equivariance import EquivarianceReport, check_equivariance, smooth_random_input
from histo_gedl.layers.harmonic import HarmonicConv2d, MagnitudeReLU, harmonic_magnitude, rotate_harmonic
from histo_gedl.layers.nonlinearities import PointwiseNonlinearity
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
    "EquivarianceReport",
    "check_equivariance",
    "smooth_random_input",
    "HarmonicConv2d",
    "MagnitudeReLU",
    "harmonic_magnitude",
    "rotate_harmonic",
    "PointwiseNonlinearity",
]
