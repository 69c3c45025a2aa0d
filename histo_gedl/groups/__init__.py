"""Groups, their actions on the plane, representations and Fourier transforms."""

from histo_gedl.groups.finite import FiniteRotationGroup, parse_group

__all__ = ["FiniteRotationGroup", "parse_group"]
