"""Representations of the rotation groups and the plane as a homogeneous space.

A representation ``rho`` of a group assigns each element an invertible matrix
with ``rho(a b) = rho(a) rho(b)``. Three kinds are used in this package:

* The left-regular representation of a finite group G acts on signals
  ``f: G -> R`` (vectors of length |G|) by ``(rho(g) f)(h) = f(g^-1 h)``. Its
  matrices are permutation matrices. Regular feature maps (B, C, |G|, H, W)
  carry this representation on their orientation axis, combined with the
  rotation of the plane (see :func:`act`).
* Irreducible representations (irreps) over the real numbers. For SO(2) they
  are the trivial representation and the 2x2 rotations by ``m theta`` for
  ``m = 1, 2, ...``. For C_N the frequencies ``k = 0 .. N // 2`` give the
  trivial irrep, the sign irrep ``(-1)^j`` when N is even, and 2x2 rotations
  by ``2 pi k j / N`` otherwise. D_N adds reflections: its 1-dimensional
  irreps multiply by ``+1`` or ``-1`` on reflections, and its 2-dimensional
  irreps are ``R(2 pi k j / N) diag(1, -1)^s`` for ``r^j f^s``.
* The regular representation splits into irreps: ``rho_reg(g) = Q D(g) Q^T``
  with ``Q`` orthogonal and ``D(g)`` block diagonal (see
  :func:`decompose_regular`). Each irrep appears ``multiplicity`` times:
  once for the irreps of C_N, twice for the 2-dimensional irreps of D_N.

The plane is the homogeneous space SE(2)/SO(2). SE(2) acts transitively on
the plane, and the rotations about the origin form the stabiliser of the
origin, so each point ``x`` corresponds to one left coset ``{(x, theta) :
theta in [0, 2 pi)}``: all motions that carry the origin to ``x``. Lifting a
planar image to a function on the group, as a lifting convolution does,
assigns to each point its coset. With a finite group G the coset of ``x`` in
R^2 x| G is the |G| elements ``(x, h)``, one per orientation channel of a
regular feature map (see :func:`lift_point`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from histo_gedl.errors import InvalidParameterError
from histo_gedl.groups.actions import rotate_image, transform_regular
from histo_gedl.groups.continuous import (
    DiscreteRotoTranslations,
    RotoTranslation,
    SE2,
    SE2Element,
    _as_points,
    rotation_matrix,
)
from histo_gedl.groups.finite import FiniteRotationGroup

ACTION_KINDS = ("image", "regular", "signal")


def regular_representation(group: FiniteRotationGroup, g: int) -> np.ndarray:
    """Return the permutation matrix (|G|, |G|) of ``g`` in the left-regular representation.

    The matrix has ``P[g h, h] = 1``, so ``(P f)[h] = f[g^-1 h]`` for a signal
    ``f`` of shape (|G|,).
    """
    order = group.order
    matrix = np.zeros((order, order))
    matrix[group.cayley_table[g], np.arange(order)] = 1.0
    return matrix


def act(group: FiniteRotationGroup, g: int, x: torch.Tensor, kind: str = "image") -> torch.Tensor:
    """Apply ``g`` to a tensor that carries one of the package's representations.

    Args:
        group: the group that ``g`` belongs to.
        g: group element index.
        x: an image or scalar feature map (..., H, W) for ``kind="image"``, a
            regular feature map (B, C, |G|, H, W) for ``kind="regular"``, or a
            signal over the group (..., |G|) for ``kind="signal"``.
        kind: "image", "regular" or "signal".

    Returns:
        Tensor of the shape of ``x``: ``g . x``. Quarter turns and reflections
        move pixels exactly, other angles interpolate (see
        :mod:`histo_gedl.groups.actions`).
    """
    if kind == "image":
        return rotate_image(x, group, g)
    if kind == "regular":
        if x.dim() != 5 or x.shape[2] != group.order:
            raise InvalidParameterError(
                f"a regular feature map of {group.name} has shape (B, C, {group.order}, H, W), "
                f"got {tuple(x.shape)}"
            )
        return transform_regular(x, group, g)
    if kind == "signal":
        if x.shape[-1] != group.order:
            raise InvalidParameterError(
                f"a signal over {group.name} has shape (..., {group.order}), got {tuple(x.shape)}"
            )
        source = torch.as_tensor(group.cayley_table[group.inverse(g)], device=x.device)
        return x.index_select(-1, source)
    raise InvalidParameterError(f"unknown representation kind {kind!r}; use one of {', '.join(ACTION_KINDS)}")


@dataclass(frozen=True)
class SO2Irrep:
    """The real irrep of SO(2) of frequency ``m``: ``[1]`` for ``m = 0``, else ``R(m theta)``."""

    frequency: int

    def __post_init__(self) -> None:
        if not isinstance(self.frequency, int) or self.frequency < 0:
            raise InvalidParameterError(
                f"SO(2) irrep frequency must be a non-negative integer, got {self.frequency!r}"
            )

    @property
    def dimension(self) -> int:
        return 1 if self.frequency == 0 else 2

    def matrix(self, angle: float) -> np.ndarray:
        """Return the (dimension, dimension) matrix of the rotation by ``angle`` radians."""
        if self.frequency == 0:
            return np.ones((1, 1))
        return rotation_matrix(self.frequency * angle)

    def character(self, angle: float) -> float:
        """Return the trace of :meth:`matrix`: 1, or ``2 cos(m theta)``."""
        return 1.0 if self.frequency == 0 else 2.0 * math.cos(self.frequency * angle)


@dataclass(frozen=True)
class Irrep:
    """A real irreducible representation of C_N or D_N.

    Attributes:
        group: the group.
        frequency: rotation frequency ``k`` in ``0 .. N // 2``.
        reflection_sign: for the 1-dimensional irreps of D_N, the value on the
            reflection ``f`` (+1 or -1); always +1 for C_N and for the
            2-dimensional irreps.
    """

    group: FiniteRotationGroup
    frequency: int
    reflection_sign: int = 1

    def __post_init__(self) -> None:
        n = self.group.rotations
        if not 0 <= self.frequency <= n // 2:
            raise InvalidParameterError(
                f"irrep frequency of {self.group.name} must be in 0..{n // 2}, got {self.frequency}"
            )
        if self.reflection_sign not in (1, -1):
            raise InvalidParameterError(f"reflection_sign must be +1 or -1, got {self.reflection_sign!r}")
        if self.reflection_sign == -1 and (not self.group.reflections or self.dimension == 2):
            raise InvalidParameterError(
                f"reflection_sign -1 exists only for the 1-dimensional irreps of a dihedral group, "
                f"not for frequency {self.frequency} of {self.group.name}"
            )

    @property
    def dimension(self) -> int:
        n = self.group.rotations
        return 1 if self.frequency == 0 or 2 * self.frequency == n else 2

    @property
    def multiplicity(self) -> int:
        """Number of copies in the regular representation.

        Equals ``dimension / dim End(irrep)``: the 2-dimensional irreps of C_N
        commute with all rotations of the plane, so they appear once, while
        those of D_N appear twice.
        """
        return 2 if self.dimension == 2 and self.group.reflections else 1

    @property
    def name(self) -> str:
        sign = "-" if self.reflection_sign == -1 else ""
        return f"{self.group.name}:{self.frequency}{sign}"

    def matrix(self, g: int) -> np.ndarray:
        """Return the (dimension, dimension) matrix of element ``g``."""
        j = self.group.rotation_index(g)
        s = self.group.reflection_index(g)
        n = self.group.rotations
        if self.dimension == 1:
            # (-1)^j exactly for k = N/2, so no rounding on the sign irrep.
            value = 1.0 if self.frequency == 0 else (-1.0) ** j
            return np.array([[value * self.reflection_sign**s]])
        rotation = rotation_matrix(2.0 * math.pi * self.frequency * j / n)
        if s:
            return rotation @ np.diag([1.0, -1.0])
        return rotation

    def character(self, g: int) -> float:
        return float(np.trace(self.matrix(g)))


def irreps(group: FiniteRotationGroup) -> list[Irrep]:
    """Return every real irrep of ``group`` once, by frequency (sign +1 before -1)."""
    result = []
    for frequency in range(group.rotations // 2 + 1):
        first = Irrep(group, frequency)
        result.append(first)
        if group.reflections and first.dimension == 1:
            result.append(Irrep(group, frequency, -1))
    return result


def direct_sum(matrices: list[np.ndarray]) -> np.ndarray:
    """Return the block-diagonal matrix with ``matrices`` on the diagonal."""
    size = sum(m.shape[0] for m in matrices)
    result = np.zeros((size, size))
    start = 0
    for block in matrices:
        stop = start + block.shape[0]
        result[start:stop, start:stop] = block
        start = stop
    return result


def decompose_regular(group: FiniteRotationGroup) -> tuple[np.ndarray, list[Irrep]]:
    """Split the regular representation into irreps.

    Column ``c`` of each irrep's matrix, as a function of the element, spans a
    copy of that irrep: ``rho_reg(g) B = B rho(g)`` with ``B[h, i] =
    sqrt(d / |G|) rho(h)[i, c]``. Schur orthogonality makes these columns
    orthonormal, and counting dimensions shows that they fill the space.

    Returns:
        ``(Q, blocks)``: Q is an orthogonal array (|G|, |G|) and ``blocks`` the
        irreps in the order of their columns, repeated by multiplicity, so that
        ``regular_representation(group, g) == Q @ direct_sum([b.matrix(g) for
        b in blocks]) @ Q.T``.
    """
    columns = []
    blocks = []
    elements = group.elements()
    for irrep in irreps(group):
        scale = math.sqrt(irrep.dimension / group.order)
        table = np.stack([irrep.matrix(h) for h in elements])  # (|G|, d, d)
        for column in range(irrep.multiplicity):
            columns.append(scale * table[:, :, column])
            blocks.append(irrep)
    return np.concatenate(columns, axis=1), blocks


def coset_representative(point: np.ndarray | tuple) -> SE2Element:
    """Return the translation ``(x, 0)``: the element of SE(2) that represents point ``x``.

    Every element of the coset ``(x, 0) SO(2)`` maps the origin to ``x``; this
    one does not rotate.
    """
    x, y = _as_points(point).reshape(2)
    return SE2.element((x, y), 0.0)


def coset_point(element: SE2Element | RotoTranslation) -> np.ndarray:
    """Return the plane point (2,) of the coset that ``element`` belongs to: ``element . 0``."""
    return np.asarray(element.translation, dtype=np.float64)


def lift_point(point: np.ndarray | tuple, group: FiniteRotationGroup) -> list[RotoTranslation]:
    """Return the coset of ``point`` in R^2 x| G: the |G| elements ``(x, h)``, in the order of h.

    Element ``h`` of the coset matches orientation channel ``h`` of a regular
    feature map at pixel ``x``. The lift commutes with the group:
    ``lift(g . x) = g lift(x)`` as sets, with ``g`` permuting the elements by
    ``h -> g h``.
    """
    x, y = _as_points(point).reshape(2)
    space = DiscreteRotoTranslations(group)
    return [space.element((x, y), h) for h in group.elements()]
