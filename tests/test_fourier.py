"""Fourier transforms on C_N, D_N and SO(2): inversion, shift theorem, change of basis."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from histo_gedl.errors import InvalidParameterError
from histo_gedl.groups import (
    FiniteRotationGroup,
    SO2Irrep,
    fourier_basis,
    fourier_transform,
    from_irrep_coordinates,
    inverse_fourier_transform,
    irreps,
    parse_group,
    regular_representation,
    so2_fourier,
    so2_inverse_fourier,
    to_irrep_coordinates,
)
from histo_gedl.groups.fourier import so2_rotate_coefficients
from histo_gedl.groups.representations import act, decompose_regular, direct_sum

SETTINGS = settings(max_examples=50, deadline=None)

finite_groups = st.builds(
    FiniteRotationGroup, rotations=st.integers(min_value=1, max_value=12), reflections=st.booleans()
)
values = st.floats(min_value=-10.0, max_value=10.0, allow_nan=False, allow_infinity=False)


@st.composite
def group_and_signal(draw):
    group = draw(finite_groups)
    signal = draw(arrays(np.float64, (2, group.order), elements=values))
    return group, signal


@SETTINGS
@given(group_and_signal())
def test_fourier_inversion(case):
    group, signal = case
    recovered = inverse_fourier_transform(group, fourier_transform(group, signal))
    np.testing.assert_allclose(recovered, signal, atol=1e-9)


@SETTINGS
@given(group_and_signal(), st.data())
def test_fourier_shift_theorem(case, data):
    group, signal = case
    g = data.draw(st.integers(0, group.order - 1))
    shifted = signal @ regular_representation(group, g).T
    for irrep, before, after in zip(irreps(group), fourier_transform(group, signal), fourier_transform(group, shifted)):
        np.testing.assert_allclose(after, irrep.matrix(g) @ before, atol=1e-9)


@SETTINGS
@given(group_and_signal())
def test_irrep_coordinates_roundtrip(case):
    group, signal = case
    np.testing.assert_allclose(from_irrep_coordinates(group, to_irrep_coordinates(group, signal)), signal, atol=1e-9)


@SETTINGS
@given(group_and_signal(), st.data())
def test_irrep_coordinates_block_action(case, data):
    group, signal = case
    g = data.draw(st.integers(0, group.order - 1))
    _, blocks = decompose_regular(group)
    block_diagonal = direct_sum([block.matrix(g) for block in blocks])
    shifted = signal @ regular_representation(group, g).T
    np.testing.assert_allclose(
        to_irrep_coordinates(group, shifted), to_irrep_coordinates(group, signal) @ block_diagonal.T, atol=1e-9
    )


def test_parseval():
    group = parse_group("D6")
    signal = np.random.default_rng(0).normal(size=group.order)
    assert np.sum(to_irrep_coordinates(group, signal) ** 2) == pytest.approx(np.sum(signal**2))


def test_fourier_torch_matches_numpy():
    group = parse_group("C8")
    signal = np.random.default_rng(1).normal(size=(3, group.order))
    tensor_coefficients = fourier_transform(group, torch.from_numpy(signal))
    for as_tensor, as_array in zip(tensor_coefficients, fourier_transform(group, signal)):
        np.testing.assert_allclose(as_tensor.numpy(), as_array, atol=1e-12)
    back = inverse_fourier_transform(group, tensor_coefficients)
    assert isinstance(back, torch.Tensor)
    np.testing.assert_allclose(back.numpy(), signal, atol=1e-12)


def test_irrep_coordinates_on_regular_features():
    group = parse_group("C4")
    features = torch.randn(1, 2, group.order, 4, 4, dtype=torch.float64)
    turned = act(group, 1, features, "regular")
    coordinates = to_irrep_coordinates(group, turned.movedim(2, -1))
    # The trivial coordinate (mean over orientations) only moves in the plane.
    expected = torch.rot90(to_irrep_coordinates(group, features.movedim(2, -1))[..., 0], 1, dims=(-2, -1))
    torch.testing.assert_close(coordinates[..., 0], expected)


def test_fourier_basis_read_only():
    basis = fourier_basis(parse_group("C4"))
    with pytest.raises(ValueError):
        basis[0, 0] = 1.0


def test_fourier_rejects_wrong_length():
    with pytest.raises(InvalidParameterError, match=r"\(\.\.\., 8\)"):
        fourier_transform(parse_group("C8"), np.zeros(4))


def test_inverse_rejects_wrong_count():
    with pytest.raises(InvalidParameterError, match="5 irreps"):
        inverse_fourier_transform(parse_group("C8"), [np.zeros((1, 1))])


@st.composite
def band_limited(draw):
    max_frequency = draw(st.integers(0, 5))
    samples = draw(st.integers(2 * max_frequency + 1, 2 * max_frequency + 8))
    coefficients = draw(arrays(np.float64, (2 * max_frequency + 1,), elements=values))
    return max_frequency, samples, coefficients


@SETTINGS
@given(band_limited())
def test_so2_fourier_inversion(case):
    max_frequency, count, coefficients = case
    grid = 2 * math.pi * np.arange(count) / count
    samples = so2_inverse_fourier(coefficients, grid)
    np.testing.assert_allclose(so2_fourier(samples, max_frequency), coefficients, atol=1e-9)


@SETTINGS
@given(band_limited(), st.floats(-7.0, 7.0))
def test_so2_interpolates_between_samples(case, angle):
    max_frequency, count, coefficients = case
    grid = 2 * math.pi * np.arange(count) / count
    recovered = so2_fourier(so2_inverse_fourier(coefficients, grid), max_frequency)
    np.testing.assert_allclose(
        so2_inverse_fourier(recovered, [angle]), so2_inverse_fourier(coefficients, [angle]), atol=1e-8
    )


@SETTINGS
@given(band_limited(), st.floats(-7.0, 7.0))
def test_so2_shift_theorem(case, shift):
    _, _, coefficients = case
    probe = np.linspace(0.0, 2 * math.pi, 13)
    shifted = so2_rotate_coefficients(coefficients, shift)
    np.testing.assert_allclose(
        so2_inverse_fourier(shifted, probe), so2_inverse_fourier(coefficients, probe - shift), atol=1e-8
    )
    for m in range(1, len(coefficients) // 2 + 1):
        pair = coefficients[2 * m - 1 : 2 * m + 1]
        np.testing.assert_allclose(shifted[2 * m - 1 : 2 * m + 1], SO2Irrep(m).matrix(shift) @ pair, atol=1e-8)


def test_so2_aliasing_rejected():
    with pytest.raises(InvalidParameterError, match="at least 7"):
        so2_fourier(np.zeros(6), 3)


def test_so2_matches_cyclic_transform():
    group = parse_group("C9")
    signal = np.random.default_rng(2).normal(size=group.order)
    coefficients = so2_fourier(signal, 4)
    cyclic = fourier_transform(group, signal)
    # C_N irrep k has matrix coefficient [[a, -b], [b, a]] with a = sum f cos, b = sum f sin.
    assert coefficients[1] == pytest.approx(2 / 9 * cyclic[1][0, 0])
    assert coefficients[2] == pytest.approx(2 / 9 * cyclic[1][1, 0])
