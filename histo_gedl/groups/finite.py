"""Finite rotation groups of the plane: cyclic C_N and dihedral D_N.

Elements are integers ``0 .. order - 1``. In C_N, element ``k`` is the
rotation by ``2 pi k / N`` counterclockwise. In D_N, element ``k + N s`` is
``r^k f^s``: first the reflection ``f`` (if ``s = 1``), then the rotation
``r^k``. The reflection ``f`` maps ``(x, y)`` to ``(x, -y)``.

Plane coordinates are ``x`` to the right and ``y`` up. On an image indexed
``[row, col]`` that means ``x = col - c`` and ``y = c - row`` for the centre
``c``, so a counterclockwise rotation by 90 degrees is ``torch.rot90(image, 1,
dims=(-2, -1))`` and ``f`` flips the rows (``torch.flip(image, dims=(-2,))``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from histo_gedl.errors import InvalidParameterError


@dataclass(frozen=True)
class FiniteRotationGroup:
    """C_N (``reflections=False``) or D_N (``reflections=True``) acting on the plane."""

    rotations: int
    reflections: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.rotations, int) or self.rotations < 1:
            raise InvalidParameterError(
                f"number of rotations must be a positive integer, got {self.rotations!r}"
            )

    @property
    def name(self) -> str:
        return f"{'D' if self.reflections else 'C'}{self.rotations}"

    @property
    def order(self) -> int:
        """Number of elements: N for C_N, 2N for D_N."""
        return self.rotations * (2 if self.reflections else 1)

    @property
    def identity(self) -> int:
        return 0

    def elements(self) -> list[int]:
        return list(range(self.order))

    def element(self, rotation: int, reflection: int = 0) -> int:
        """Return the index of ``r^rotation f^reflection``."""
        if reflection and not self.reflections:
            raise InvalidParameterError(f"{self.name} has no reflections")
        return rotation % self.rotations + self.rotations * (reflection % 2)

    def rotation_index(self, g: int) -> int:
        return g % self.rotations

    def reflection_index(self, g: int) -> int:
        return g // self.rotations

    def angle(self, g: int) -> float:
        """Rotation angle of ``g`` in radians, in ``[0, 2 pi)``."""
        return 2.0 * math.pi * self.rotation_index(g) / self.rotations

    def compose(self, a: int, b: int) -> int:
        """Return the product ``a b`` (apply ``b`` first, then ``a``)."""
        ka, sa = self.rotation_index(a), self.reflection_index(a)
        kb, sb = self.rotation_index(b), self.reflection_index(b)
        # f r^k = r^-k f, so r^ka f^sa r^kb f^sb = r^(ka + (-1)^sa kb) f^(sa + sb).
        rotation = ka + (-kb if sa else kb)
        return self.element(rotation, (sa + sb) % 2)

    def inverse(self, g: int) -> int:
        k, s = self.rotation_index(g), self.reflection_index(g)
        # (r^k f)^-1 = f r^-k = r^k f, so reflections are their own inverse.
        return self.element(k if s else -k, s)

    @cached_property
    def cayley_table(self) -> np.ndarray:
        """Array (order, order) with ``table[a, b] = a b``."""
        return np.array(
            [[self.compose(a, b) for b in range(self.order)] for a in range(self.order)],
            dtype=np.int64,
        )

    @cached_property
    def inverses(self) -> np.ndarray:
        """Array (order,) with the inverse of each element."""
        return np.array([self.inverse(g) for g in range(self.order)], dtype=np.int64)

    def matrix(self, g: int) -> np.ndarray:
        """2x2 matrix of ``g`` acting on plane vectors ``(x, y)``."""
        theta = self.angle(g)
        rotation = np.array(
            [[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]]
        )
        if self.reflection_index(g):
            return rotation @ np.diag([1.0, -1.0])
        return rotation

    def quarter_turns(self, g: int) -> int | None:
        """Return ``q`` when ``g`` rotates by ``q`` quarter turns, else None."""
        k = self.rotation_index(g)
        if (4 * k) % self.rotations:
            return None
        return (4 * k) // self.rotations


def parse_group(name: str) -> FiniteRotationGroup:
    """Return the group named like ``"C8"`` or ``"D4"``."""
    text = str(name).strip().upper()
    if len(text) >= 2 and text[0] in "CD" and text[1:].isdigit() and int(text[1:]) >= 1:
        return FiniteRotationGroup(int(text[1:]), reflections=text[0] == "D")
    raise InvalidParameterError(
        f"unknown group {name!r}; use C<N> for N rotations or D<N> for N rotations and "
        "reflections, e.g. C8 or D4"
    )
