"""Fourier transforms on C_N, D_N and band-limited functions on SO(2).

For a finite group G the Fourier transform of a signal ``f: G -> R`` has one
matrix coefficient per real irrep ``rho`` (see
:mod:`histo_gedl.groups.representations`):

    f_hat(rho) = sum_h f(h) rho(h)
    f(h) = sum_rho (m_rho / |G|) trace(rho(h)^T f_hat(rho))

where ``m_rho`` is the multiplicity of ``rho`` in the regular representation.
Shifting the signal multiplies each coefficient by its irrep:
``(g . f)_hat(rho) = rho(g) f_hat(rho)``.

The same transform written as one orthogonal change of basis is
:func:`to_irrep_coordinates`: the coordinates ``Q^T f`` of a signal in the
basis of :func:`~histo_gedl.groups.representations.decompose_regular`, on
which ``g`` acts block-diagonally by the irreps.

A function on SO(2) with frequencies up to ``L`` is determined by its values
at ``N >= 2 L + 1`` equally spaced angles (the sampling theorem on the
circle). :func:`so2_fourier` recovers its coefficients from such samples and
:func:`so2_inverse_fourier` evaluates it at any angle.

Functions here accept numpy arrays or torch tensors and return the same kind.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from histo_gedl.errors import InvalidParameterError
from histo_gedl.groups.finite import FiniteRotationGroup
from histo_gedl.groups.representations import Irrep, decompose_regular, direct_sum, irreps

Array = np.ndarray | torch.Tensor


def _like(matrix: np.ndarray, reference: Array) -> Array:
    """Return ``matrix`` as the array type, dtype and device of ``reference``."""
    if isinstance(reference, torch.Tensor):
        dtype = reference.dtype if reference.is_floating_point() else torch.float64
        return torch.tensor(matrix, dtype=dtype, device=reference.device)
    return matrix


def _check_signal(group: FiniteRotationGroup, signal: Array) -> None:
    if signal.shape[-1] != group.order:
        raise InvalidParameterError(
            f"a signal over {group.name} has shape (..., {group.order}), got {tuple(signal.shape)}"
        )


@lru_cache(maxsize=None)
def _irrep_tables(group: FiniteRotationGroup) -> tuple[tuple[Irrep, np.ndarray], ...]:
    """Return each irrep with its matrices for all elements, (|G|, d, d)."""
    return tuple((irrep, np.stack([irrep.matrix(h) for h in group.elements()])) for irrep in irreps(group))


@lru_cache(maxsize=None)
def fourier_basis(group: FiniteRotationGroup) -> np.ndarray:
    """Return the orthogonal change of basis Q (|G|, |G|) from irrep coordinates to signals."""
    basis, _ = decompose_regular(group)
    basis.setflags(write=False)
    return basis


def fourier_transform(group: FiniteRotationGroup, signal: Array) -> list[Array]:
    """Return the matrix coefficient ``f_hat(rho)`` of each irrep in :func:`irreps` order.

    Args:
        group: C_N or D_N.
        signal: values (..., |G|) indexed by group element.

    Returns:
        One array (..., d, d) per irrep, ``d`` its dimension.
    """
    _check_signal(group, signal)
    coefficients = []
    for _, table in _irrep_tables(group):
        matrices = _like(table, signal)
        if isinstance(signal, torch.Tensor):
            coefficients.append(torch.einsum("...h,hij->...ij", signal, matrices))
        else:
            coefficients.append(np.einsum("...h,hij->...ij", signal, matrices))
    return coefficients


def inverse_fourier_transform(group: FiniteRotationGroup, coefficients: list[Array]) -> Array:
    """Return the signal (..., |G|) whose Fourier coefficients are ``coefficients``.

    Args:
        group: C_N or D_N.
        coefficients: one array (..., d, d) per irrep, as returned by
            :func:`fourier_transform`.
    """
    tables = _irrep_tables(group)
    if len(coefficients) != len(tables):
        raise InvalidParameterError(
            f"{group.name} has {len(tables)} irreps, got {len(coefficients)} Fourier coefficients"
        )
    signal = None
    for (irrep, table), coefficient in zip(tables, coefficients):
        weight = irrep.multiplicity / group.order
        matrices = _like(table, coefficient)
        # trace(rho(h)^T C) = sum_ij rho(h)_ij C_ij
        if isinstance(coefficient, torch.Tensor):
            term = weight * torch.einsum("hij,...ij->...h", matrices, coefficient)
        else:
            term = weight * np.einsum("hij,...ij->...h", matrices, coefficient)
        signal = term if signal is None else signal + term
    return signal


def to_irrep_coordinates(group: FiniteRotationGroup, signal: Array) -> Array:
    """Return ``Q^T f`` (..., |G|): the signal in the irrep basis of :func:`fourier_basis`."""
    _check_signal(group, signal)
    return signal @ _like(fourier_basis(group), signal)


def from_irrep_coordinates(group: FiniteRotationGroup, coordinates: Array) -> Array:
    """Return ``Q c`` (..., |G|): the signal with irrep coordinates ``c`` (..., |G|)."""
    _check_signal(group, coordinates)
    return coordinates @ _like(fourier_basis(group), coordinates).T


def _check_band(samples: int, max_frequency: int) -> None:
    if not isinstance(max_frequency, int) or max_frequency < 0:
        raise InvalidParameterError(f"max_frequency must be a non-negative integer, got {max_frequency!r}")
    if samples < 2 * max_frequency + 1:
        raise InvalidParameterError(
            f"{samples} samples cannot resolve frequency {max_frequency}; use at least "
            f"{2 * max_frequency + 1} equally spaced angles or a smaller max_frequency"
        )


def so2_fourier(samples: Array, max_frequency: int) -> Array:
    """Return the real Fourier coefficients of a band-limited function on SO(2).

    Args:
        samples: values (..., N) at the angles ``2 pi j / N``, ``j = 0 .. N - 1``.
        max_frequency: highest frequency ``L``; needs ``N >= 2 L + 1``.

    Returns:
        Coefficients (..., 2 L + 1) ordered ``[c_0, a_1, b_1, ..., a_L, b_L]``
        with ``f(theta) = c_0 + sum_m a_m cos(m theta) + b_m sin(m theta)``.
        They are exact when ``f`` has no frequency above ``L``.
    """
    count = samples.shape[-1]
    _check_band(count, max_frequency)
    angles = 2.0 * math.pi * np.arange(count) / count
    rows = [np.full(count, 1.0 / count)]
    for m in range(1, max_frequency + 1):
        rows.append(2.0 / count * np.cos(m * angles))
        rows.append(2.0 / count * np.sin(m * angles))
    analysis = np.stack(rows, axis=1)  # (N, 2L + 1)
    return samples @ _like(analysis, samples)


def so2_inverse_fourier(coefficients: Array, angles: Array) -> Array:
    """Evaluate a band-limited function on SO(2) at ``angles``.

    Args:
        coefficients: (..., 2 L + 1) as returned by :func:`so2_fourier`.
        angles: (A,) angles in radians.

    Returns:
        Values (..., A).
    """
    size = coefficients.shape[-1]
    if size % 2 == 0:
        raise InvalidParameterError(
            f"SO(2) coefficients have odd length 2 L + 1, got {size}; pass the output of so2_fourier"
        )
    theta = np.asarray(angles.cpu() if isinstance(angles, torch.Tensor) else angles, dtype=np.float64).reshape(-1)
    rows = [np.ones_like(theta)]
    for m in range(1, size // 2 + 1):
        rows.append(np.cos(m * theta))
        rows.append(np.sin(m * theta))
    synthesis = np.stack(rows, axis=0)  # (2L + 1, A)
    return coefficients @ _like(synthesis, coefficients)


def so2_rotate_coefficients(coefficients: Array, angle: float) -> Array:
    """Return the coefficients of ``theta -> f(theta - angle)``.

    Each pair ``(a_m, b_m)`` is multiplied by the SO(2) irrep ``R(m angle)``,
    which is the shift theorem: ``(g . f)_hat(m) = rho_m(g) f_hat(m)``.
    """
    size = coefficients.shape[-1]
    blocks = [np.ones((1, 1))]
    for m in range(1, size // 2 + 1):
        cos, sin = math.cos(m * angle), math.sin(m * angle)
        blocks.append(np.array([[cos, -sin], [sin, cos]]))
    matrix = direct_sum(blocks)
    return coefficients @ _like(matrix, coefficients).T
