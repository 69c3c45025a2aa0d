"""Continuous symmetry groups of the plane: SO(2), SE(2) and R^2 x| G for finite G.

SO(2) is the group of rotations of the plane. An element is an angle in
radians, stored in ``[0, 2 pi)``, and the product adds angles modulo 2 pi.

SE(2) = R^2 x| SO(2) is the group of rigid motions ``x -> R(theta) x + t``.
An element is a pair ``(t, theta)``, and the product follows from composing the
maps: ``(t1, theta1) (t2, theta2) = (t1 + R(theta1) t2, theta1 + theta2)``.
The rotation acts on the translation of the right-hand factor, which is what
the symbol ``x|`` (semidirect product) records.

A finite rotation group G (C_N or D_N, see :mod:`histo_gedl.groups.finite`)
gives the discrete subgroup R^2 x| G: translations combined with the N
rotations (and N reflections for D_N). Regular group convolutions
(:mod:`histo_gedl.layers.regular`) are equivariant to this subgroup, with
translations restricted to whole pixels.

Plane points are ``(x, y)`` with ``x`` to the right and ``y`` up, as in
:mod:`histo_gedl.groups.finite`; arrays of points have shape (..., 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from histo_gedl.errors import InvalidParameterError
from histo_gedl.groups.finite import FiniteRotationGroup

TWO_PI = 2.0 * math.pi


def wrap_angle(angle: float) -> float:
    """Return ``angle`` modulo 2 pi, in ``[0, 2 pi)``."""
    wrapped = math.fmod(float(angle), TWO_PI)
    if wrapped < 0.0:
        wrapped += TWO_PI
    # fmod of a tiny negative number plus 2 pi can round to exactly 2 pi.
    return 0.0 if wrapped >= TWO_PI else wrapped


def angle_distance(a: float, b: float) -> float:
    """Return the distance between two angles on the circle, in ``[0, pi]``."""
    difference = wrap_angle(a - b)
    return min(difference, TWO_PI - difference)


def rotation_matrix(angle: float) -> np.ndarray:
    """Return the 2x2 matrix of the counterclockwise rotation by ``angle`` radians."""
    cos, sin = math.cos(angle), math.sin(angle)
    return np.array([[cos, -sin], [sin, cos]])


def _as_points(points: np.ndarray | tuple) -> np.ndarray:
    array = np.asarray(points, dtype=np.float64)
    if array.ndim == 0 or array.shape[-1] != 2:
        raise InvalidParameterError(
            f"plane points must be an array of shape (..., 2) holding (x, y), got shape {array.shape}"
        )
    return array


class SO2:
    """The rotation group SO(2), with elements as angles in radians in ``[0, 2 pi)``."""

    name = "SO2"
    identity = 0.0

    @staticmethod
    def element(angle: float) -> float:
        """Return the element that rotates by ``angle`` radians counterclockwise."""
        if not math.isfinite(angle):
            raise InvalidParameterError(f"rotation angle must be a finite number of radians, got {angle!r}")
        return wrap_angle(angle)

    @staticmethod
    def compose(a: float, b: float) -> float:
        """Return the product ``a b`` (rotate by ``b``, then by ``a``)."""
        return wrap_angle(a + b)

    @staticmethod
    def inverse(a: float) -> float:
        return wrap_angle(-a)

    @staticmethod
    def matrix(a: float) -> np.ndarray:
        """Return the 2x2 rotation matrix of ``a``."""
        return rotation_matrix(a)

    @staticmethod
    def act(a: float, points: np.ndarray | tuple) -> np.ndarray:
        """Rotate plane points (..., 2) by ``a`` about the origin; returns (..., 2)."""
        return _as_points(points) @ rotation_matrix(a).T

    @staticmethod
    def distance(a: float, b: float) -> float:
        """Return the angle between two elements, in ``[0, pi]``."""
        return angle_distance(a, b)

    @staticmethod
    def from_finite(group: FiniteRotationGroup, g: int) -> float:
        """Return the rotation ``g`` of C_N as an element of SO(2).

        Raises:
            InvalidParameterError: ``g`` is a reflection, which SO(2) does not contain.
        """
        if group.reflection_index(g):
            raise InvalidParameterError(
                f"element {g} of {group.name} is a reflection and is not in SO(2); "
                "use a rotation (index below the number of rotations)"
            )
        return group.angle(g)


@dataclass(frozen=True)
class SE2Element:
    """A rigid motion ``x -> R(angle) x + translation`` of the plane.

    Attributes:
        translation: ``(x, y)`` shift applied after the rotation.
        angle: counterclockwise rotation in radians, in ``[0, 2 pi)``.
    """

    translation: tuple[float, float]
    angle: float


class SE2:
    """The group of rigid motions of the plane, SE(2) = R^2 x| SO(2)."""

    name = "SE2"
    identity = SE2Element((0.0, 0.0), 0.0)

    @staticmethod
    def element(translation: tuple[float, float] = (0.0, 0.0), angle: float = 0.0) -> SE2Element:
        """Return the motion that rotates by ``angle`` radians, then shifts by ``translation``."""
        x, y = (float(value) for value in translation)
        if not (math.isfinite(x) and math.isfinite(y)):
            raise InvalidParameterError(f"translation must be two finite numbers, got {translation!r}")
        return SE2Element((x, y), SO2.element(angle))

    @staticmethod
    def compose(a: SE2Element, b: SE2Element) -> SE2Element:
        """Return the product ``a b`` (apply ``b``, then ``a``)."""
        shifted = rotation_matrix(a.angle) @ np.asarray(b.translation)
        translation = (a.translation[0] + shifted[0], a.translation[1] + shifted[1])
        return SE2Element((float(translation[0]), float(translation[1])), wrap_angle(a.angle + b.angle))

    @staticmethod
    def inverse(a: SE2Element) -> SE2Element:
        """Return ``a^-1 = (-R(-theta) t, -theta)``."""
        back = -(rotation_matrix(-a.angle) @ np.asarray(a.translation))
        return SE2Element((float(back[0]), float(back[1])), wrap_angle(-a.angle))

    @staticmethod
    def matrix(a: SE2Element) -> np.ndarray:
        """Return the 3x3 homogeneous matrix of ``a``, acting on ``(x, y, 1)``."""
        matrix = np.eye(3)
        matrix[:2, :2] = rotation_matrix(a.angle)
        matrix[:2, 2] = a.translation
        return matrix

    @staticmethod
    def act(a: SE2Element, points: np.ndarray | tuple) -> np.ndarray:
        """Move plane points (..., 2) by ``a``; returns (..., 2)."""
        return _as_points(points) @ rotation_matrix(a.angle).T + np.asarray(a.translation)

    @staticmethod
    def distance(a: SE2Element, b: SE2Element) -> float:
        """Return the larger of the translation distance and the angle between two elements."""
        shift = math.hypot(a.translation[0] - b.translation[0], a.translation[1] - b.translation[1])
        return max(shift, angle_distance(a.angle, b.angle))


@dataclass(frozen=True)
class RotoTranslation:
    """An element ``x -> M(g) x + translation`` of R^2 x| G for a finite group G.

    Attributes:
        translation: ``(x, y)`` shift applied after ``g``.
        g: index of the rotation or reflection in G.
    """

    translation: tuple[float, float]
    g: int


@dataclass(frozen=True)
class DiscreteRotoTranslations:
    """The subgroup R^2 x| G of the plane's isometries, for G = C_N or D_N.

    For C_N it is a subgroup of SE(2) (see :meth:`to_se2`). For D_N it also
    contains reflections, so it lies in E(2) but not in SE(2).
    """

    group: FiniteRotationGroup

    @property
    def name(self) -> str:
        return f"R2x{self.group.name}"

    @property
    def identity(self) -> RotoTranslation:
        return RotoTranslation((0.0, 0.0), self.group.identity)

    def element(self, translation: tuple[float, float] = (0.0, 0.0), g: int = 0) -> RotoTranslation:
        """Return the motion that applies ``g``, then shifts by ``translation``."""
        if not 0 <= int(g) < self.group.order:
            raise InvalidParameterError(
                f"element {g!r} is not in {self.group.name}; use an index in 0..{self.group.order - 1}"
            )
        x, y = (float(value) for value in translation)
        return RotoTranslation((x, y), int(g))

    def compose(self, a: RotoTranslation, b: RotoTranslation) -> RotoTranslation:
        """Return the product ``a b`` (apply ``b``, then ``a``)."""
        shifted = self.group.matrix(a.g) @ np.asarray(b.translation)
        translation = (float(a.translation[0] + shifted[0]), float(a.translation[1] + shifted[1]))
        return RotoTranslation(translation, self.group.compose(a.g, b.g))

    def inverse(self, a: RotoTranslation) -> RotoTranslation:
        inverse_g = self.group.inverse(a.g)
        back = -(self.group.matrix(inverse_g) @ np.asarray(a.translation))
        return RotoTranslation((float(back[0]), float(back[1])), inverse_g)

    def matrix(self, a: RotoTranslation) -> np.ndarray:
        """Return the 3x3 homogeneous matrix of ``a``, acting on ``(x, y, 1)``."""
        matrix = np.eye(3)
        matrix[:2, :2] = self.group.matrix(a.g)
        matrix[:2, 2] = a.translation
        return matrix

    def act(self, a: RotoTranslation, points: np.ndarray | tuple) -> np.ndarray:
        """Move plane points (..., 2) by ``a``; returns (..., 2)."""
        return _as_points(points) @ self.group.matrix(a.g).T + np.asarray(a.translation)

    def distance(self, a: RotoTranslation, b: RotoTranslation) -> float:
        """Return the translation distance, or infinity when the G parts differ."""
        if a.g != b.g:
            return math.inf
        return math.hypot(a.translation[0] - b.translation[0], a.translation[1] - b.translation[1])

    def to_se2(self, a: RotoTranslation) -> SE2Element:
        """Return ``a`` as an element of SE(2).

        Raises:
            InvalidParameterError: ``a`` contains a reflection.
        """
        return SE2Element(a.translation, SO2.from_finite(self.group, a.g))
