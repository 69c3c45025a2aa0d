"""A steerable basis for planar convolution kernels.

Each basis function is a Gaussian ring times a circular harmonic,
``psi_{j,m}(rho, phi) = exp(-(rho - j)^2 / (2 sigma^2)) * cos(m phi)`` (or
``sin``), cut to the disk ``rho <= (k - 1) / 2 + 0.5`` of a ``k x k`` kernel.
Because the functions are defined on the whole plane, a kernel rotated by any
angle is sampled from the same continuous function instead of being
interpolated from pixels. Rotations by multiples of 90 degrees map the grid
onto itself, so those copies are exact permutations of pixels.
"""

from __future__ import annotations

import numpy as np
import torch

from histo_gedl.errors import InvalidParameterError
from histo_gedl.groups.finite import FiniteRotationGroup

#: Width of each Gaussian ring, in pixels.
RING_WIDTH = 0.6


def basis_frequencies(kernel_size: int) -> list[tuple[int, int, str]]:
    """List the basis functions of a ``k x k`` kernel as ``(ring, frequency, "cos"|"sin")``.

    Ring ``j`` (radius ``j`` pixels) carries frequencies up to ``2 j``, which a
    ring of about ``2 pi j`` pixels can represent without aliasing.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise InvalidParameterError(
            f"kernel_size must be a positive odd number so that the kernel has a centre, "
            f"got {kernel_size}"
        )
    functions: list[tuple[int, int, str]] = []
    for ring in range((kernel_size - 1) // 2 + 1):
        functions.append((ring, 0, "cos"))
        for frequency in range(1, 2 * ring + 1):
            functions.append((ring, frequency, "cos"))
            functions.append((ring, frequency, "sin"))
    return functions


def _evaluate(kernel_size: int, matrix: np.ndarray) -> np.ndarray:
    """Sample every basis function at ``matrix^-1 x`` for each pixel ``x``: (n, k, k)."""
    centre = (kernel_size - 1) / 2
    rows, cols = np.mgrid[0:kernel_size, 0:kernel_size].astype(np.float64)
    points = np.stack([cols - centre, centre - rows])  # (2, k, k): x right, y up
    # matrix is orthogonal, so its inverse is its transpose.
    x, y = np.einsum("ji,jrc->irc", matrix, points)
    rho = np.hypot(x, y)
    phi = np.arctan2(y, x)
    inside = rho <= centre + 0.5
    values = []
    for ring, frequency, parity in basis_frequencies(kernel_size):
        radial = np.exp(-((rho - ring) ** 2) / (2 * RING_WIDTH**2)) * inside
        angular = np.cos(frequency * phi) if parity == "cos" else np.sin(frequency * phi)
        values.append(radial * angular)
    return np.stack(values)


def identity_basis(kernel_size: int) -> np.ndarray:
    """Return the basis sampled on the pixel grid, each function of unit norm: (n, k, k)."""
    basis = _evaluate(kernel_size, np.eye(2))
    norms = np.sqrt((basis**2).sum(axis=(1, 2), keepdims=True))
    return basis / norms


def group_kernel_basis(group: FiniteRotationGroup, kernel_size: int) -> torch.Tensor:
    """Return the basis transformed by every group element: (order, n, k, k), float32.

    ``basis[g]`` samples ``psi(g^-1 x)``. For elements that rotate by quarter
    turns, the copy is built with ``torch.rot90``/``torch.flip`` of the
    identity copy, so it is a bit-exact pixel permutation.
    """
    identity = identity_basis(kernel_size)
    norms = np.sqrt((_evaluate(kernel_size, np.eye(2)) ** 2).sum(axis=(1, 2), keepdims=True))
    base = torch.from_numpy(identity).float()
    copies = []
    quarter = group.rotations // 4 if group.rotations % 4 == 0 else None
    for g in group.elements():
        turns = group.quarter_turns(g)
        reflection = group.reflection_index(g)
        if turns is not None:
            copy = torch.flip(base, dims=(-2,)) if reflection else base
            copies.append(torch.rot90(copy, turns, dims=(-2, -1)))
            continue
        rotation = group.rotation_index(g)
        if quarter is not None:
            # g = r^(q N/4) r^rest f^s: sample r^rest f^s, then turn the grid exactly.
            turns, rest = divmod(rotation, quarter)
            residual = group.element(rest, reflection)
        else:
            turns, residual = 0, g
        sampled = _evaluate(kernel_size, group.matrix(residual)) / norms
        copies.append(torch.rot90(torch.from_numpy(sampled).float(), turns, dims=(-2, -1)))
    return torch.stack(copies)

