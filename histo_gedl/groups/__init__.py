"""Groups, their actions on the plane, representations and Fourier transforms."""

from histo_gedl.groups.continuous import (
    SE2,
    SO2,
    DiscreteRotoTranslations,
    RotoTranslation,
    SE2Element,
)
from histo_gedl.groups.finite import FiniteRotationGroup, parse_group
from histo_gedl.groups.fourier import (
    fourier_basis,
    fourier_transform,
    from_irrep_coordinates,
    inverse_fourier_transform,
    so2_fourier,
    so2_inverse_fourier,
    to_irrep_coordinates,
)
from histo_gedl.groups.representations import (
    Irrep,
    SO2Irrep,
    act,
    decompose_regular,
    irreps,
    lift_point,
    regular_representation,
)

__all__ = [
    "FiniteRotationGroup",
    "parse_group",
    "SE2",
    "SO2",
    "DiscreteRotoTranslations",
    "RotoTranslation",
    "SE2Element",
    "fourier_basis",
    "fourier_transform",
    "from_irrep_coordinates",
    "inverse_fourier_transform",
    "so2_fourier",
    "so2_inverse_fourier",
    "to_irrep_coordinates",
    "Irrep",
    "SO2Irrep",
    "act",
    "decompose_regular",
    "irreps",
    "lift_point",
    "regular_representation",
]
