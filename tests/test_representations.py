"""Representations: homomorphisms, irreps, Schur orthogonality, the regular decomposition, cosets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from histo_gedl.errors import InvalidParameterError
from histo_gedl.groups import (
    SE2,
    DiscreteRotoTranslations,
    FiniteRotationGroup,
    Irrep,
    SO2Irrep,
    act,
    decompose_regular,
    irreps,
    lift_point,
    parse_group,
    regular_representation,
)
from histo_gedl.groups.representations import coset_point, coset_representative, direct_sum

SETTINGS = settings(max_examples=50, deadline=None)

finite_groups = st.builds(
    FiniteRotationGroup, rotations=st.integers(min_value=1, max_value=12), reflections=st.booleans()
)
angles = st.floats(min_value=-10.0, max_value=10.0, allow_nan=False)


@st.composite
def group_with_elements(draw, count: int):
    group = draw(finite_groups)
    return group, [draw(st.integers(0, group.order - 1)) for _ in range(count)]


@SETTINGS
@given(group_with_elements(2))
def test_regular_homomorphism(case):
    group, (a, b) = case
    product = regular_representation(group, group.compose(a, b))
    np.testing.assert_array_equal(product, regular_representation(group, a) @ regular_representation(group, b))


@SETTINGS
@given(group_with_elements(1))
def test_regular_is_permutation(case):
    group, (a,) = case
    matrix = regular_representation(group, a)
    np.testing.assert_array_equal(matrix.sum(axis=0), np.ones(group.order))
    np.testing.assert_array_equal(matrix.sum(axis=1), np.ones(group.order))


@SETTINGS
@given(group_with_elements(2))
def test_irrep_homomorphism(case):
    group, (a, b) = case
    for irrep in irreps(group):
        np.testing.assert_allclose(
            irrep.matrix(group.compose(a, b)), irrep.matrix(a) @ irrep.matrix(b), atol=1e-12
        )


@SETTINGS
@given(st.integers(0, 6), angles, angles)
def test_so2_irrep_homomorphism(frequency, a, b):
    irrep = SO2Irrep(frequency)
    np.testing.assert_allclose(irrep.matrix(a + b), irrep.matrix(a) @ irrep.matrix(b), atol=1e-12)


def test_signal_action_matches_matrix():
    group = parse_group("D4")
    signal = torch.arange(group.order, dtype=torch.float64)
    for g in group.elements():
        expected = regular_representation(group, g) @ signal.numpy()
        np.testing.assert_array_equal(act(group, g, signal, "signal").numpy(), expected)


@pytest.mark.parametrize("name", ["C4", "D4", "C8"])
def test_action_homomorphism_on_regular_maps(name):
    group = parse_group(name)
    x = torch.randn(1, 2, group.order, 8, 8, generator=torch.Generator().manual_seed(0))
    quarter = [g for g in group.elements() if group.quarter_turns(g) is not None]
    for a in quarter:
        for b in quarter:
            both = act(group, a, act(group, b, x, "regular"), "regular")
            torch.testing.assert_close(act(group, group.compose(a, b), x, "regular"), both, rtol=0, atol=0)


def test_act_rejects_wrong_shape():
    with pytest.raises(InvalidParameterError, match=r"\(B, C, 4, H, W\)"):
        act(parse_group("C4"), 1, torch.zeros(1, 2, 3, 8, 8), "regular")


def test_act_rejects_unknown_kind():
    with pytest.raises(InvalidParameterError, match="unknown representation kind"):
        act(parse_group("C4"), 1, torch.zeros(1, 4), "vector")


@pytest.mark.parametrize("name", ["C1", "C2", "C5", "C8", "D1", "D2", "D3", "D4", "D8"])
def test_irreps_dimensions_sum(name):
    group = parse_group(name)
    # Every real irrep d with multiplicity m fills d * m dimensions of the regular representation.
    assert sum(r.dimension * r.multiplicity for r in irreps(group)) == group.order


@pytest.mark.parametrize("name", ["C3", "C4", "C7", "C8", "D3", "D4", "D6"])
def test_schur_orthogonality(name):
    group = parse_group(name)
    representations = irreps(group)
    for first in representations:
        for second in representations:
            # sum_g rho_ij(g) sigma_kl(g) = |G| / d delta(rho, sigma) delta_ik delta_jl for real-type irreps.
            a = np.stack([first.matrix(g) for g in group.elements()])
            b = np.stack([second.matrix(g) for g in group.elements()])
            overlap = np.einsum("gij,gkl->ijkl", a, b)
            if first != second:
                np.testing.assert_allclose(overlap, 0.0, atol=1e-10)
                continue
            d = first.dimension
            # Orthogonal matrices: sum_ij rho_ij(g)^2 = d for every g.
            inner = np.einsum("gij,gij->", a, b)
            assert inner == pytest.approx(d * group.order)
            if first.multiplicity == d:
                expected = np.einsum("ik,jl->ijkl", np.eye(d), np.eye(d)) * group.order / d
                np.testing.assert_allclose(overlap, expected, atol=1e-10)


@pytest.mark.parametrize("name", ["C5", "C8", "D4", "D5"])
def test_character_orthogonality(name):
    group = parse_group(name)
    for first in irreps(group):
        for second in irreps(group):
            inner = sum(first.character(g) * second.character(g) for g in group.elements()) / group.order
            # <chi, chi> = dim End(rho): 1 for real type, 2 for the rotation irreps of C_N.
            expected = first.dimension / first.multiplicity if first == second else 0.0
            assert inner == pytest.approx(expected, abs=1e-10)


def test_so2_characters_peter_weyl():
    grid = np.linspace(0.0, 2 * math.pi, 4096, endpoint=False)
    for m in range(5):
        for n in range(5):
            first, second = SO2Irrep(m), SO2Irrep(n)
            integral = np.mean([first.character(t) * second.character(t) for t in grid])
            expected = 0.0
            if m == n:
                expected = 1.0 if m == 0 else 2.0
            assert integral == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("name", ["C1", "C4", "C6", "C7", "D1", "D3", "D4", "D8"])
def test_regular_decomposition(name):
    group = parse_group(name)
    basis, blocks = decompose_regular(group)
    np.testing.assert_allclose(basis.T @ basis, np.eye(group.order), atol=1e-12)
    for g in group.elements():
        block_diagonal = direct_sum([block.matrix(g) for block in blocks])
        np.testing.assert_allclose(regular_representation(group, g), basis @ block_diagonal @ basis.T, atol=1e-12)


def test_dihedral_two_dim_multiplicity():
    _, blocks = decompose_regular(parse_group("D5"))
    two_dim = [b for b in blocks if b.dimension == 2]
    assert len(two_dim) == 4
    assert len(set(two_dim)) == 2


def test_irrep_rejects_bad_frequency():
    with pytest.raises(InvalidParameterError, match="0..4"):
        Irrep(parse_group("C8"), 5)


def test_irrep_rejects_sign_on_cyclic():
    with pytest.raises(InvalidParameterError, match="dihedral"):
        Irrep(parse_group("C8"), 0, -1)


def test_so2_irrep_rejects_negative():
    with pytest.raises(InvalidParameterError, match="non-negative"):
        SO2Irrep(-1)


@SETTINGS
@given(st.floats(-50, 50), st.floats(-50, 50), finite_groups, st.data())
def test_lift_point_coset(x, y, group, data):
    coset = lift_point((x, y), group)
    space = DiscreteRotoTranslations(group)
    for h, element in enumerate(coset):
        assert element.g == h
        np.testing.assert_allclose(space.act(element, (0.0, 0.0)), (x, y))
    g = space.element(
        (data.draw(st.floats(-5, 5)), data.draw(st.floats(-5, 5))), data.draw(st.integers(0, group.order - 1))
    )
    moved_point = space.act(g, (x, y))
    lifted_moved = lift_point(moved_point, group)
    moved_coset = [space.compose(g, element) for element in coset]
    # g lift(x) is lift(g x) with the elements permuted by h -> g h.
    for h, element in enumerate(moved_coset):
        target = lifted_moved[group.compose(g.g, h)]
        assert space.distance(element, target) < 1e-9


@SETTINGS
@given(st.floats(-50, 50), st.floats(-50, 50), angles)
def test_se2_coset_projection(x, y, angle):
    representative = coset_representative((x, y))
    rotated = SE2.compose(representative, SE2.element((0.0, 0.0), angle))
    # Right multiplication by a rotation stays in the coset, so it projects to the same point.
    np.testing.assert_allclose(coset_point(rotated), (x, y), atol=1e-12)
    np.testing.assert_allclose(SE2.act(rotated, (0.0, 0.0)), (x, y), atol=1e-9)
