"""Group axioms for C_N, D_N, SO(2), SE(2) and R^2 x| G, checked on random elements."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from histo_gedl.errors import InvalidParameterError
from histo_gedl.groups import SE2, SO2, DiscreteRotoTranslations, FiniteRotationGroup, parse_group
from histo_gedl.groups.continuous import angle_distance, wrap_angle

SETTINGS = settings(max_examples=50, deadline=None)

finite_groups = st.builds(
    FiniteRotationGroup, rotations=st.integers(min_value=1, max_value=16), reflections=st.booleans()
)
angles = st.floats(min_value=-20.0, max_value=20.0, allow_nan=False)
coordinates = st.floats(min_value=-100.0, max_value=100.0, allow_nan=False)
se2_elements = st.builds(lambda x, y, a: SE2.element((x, y), a), coordinates, coordinates, angles)


@st.composite
def group_with_elements(draw, count: int):
    group = draw(finite_groups)
    elements = [draw(st.integers(min_value=0, max_value=group.order - 1)) for _ in range(count)]
    return group, elements


@st.composite
def roto_translations_with_elements(draw, count: int):
    group = draw(finite_groups)
    space = DiscreteRotoTranslations(group)
    elements = [
        space.element((draw(coordinates), draw(coordinates)), draw(st.integers(0, group.order - 1)))
        for _ in range(count)
    ]
    return space, elements


def se2_close(a, b, tolerance: float = 1e-9) -> bool:
    return SE2.distance(a, b) < tolerance


# Finite groups


@SETTINGS
@given(group_with_elements(3))
def test_finite_associativity(case):
    group, (a, b, c) = case
    assert group.compose(group.compose(a, b), c) == group.compose(a, group.compose(b, c))


@SETTINGS
@given(group_with_elements(1))
def test_finite_identity(case):
    group, (a,) = case
    assert group.compose(group.identity, a) == a
    assert group.compose(a, group.identity) == a


@SETTINGS
@given(group_with_elements(1))
def test_finite_inverse(case):
    group, (a,) = case
    assert group.compose(a, group.inverse(a)) == group.identity
    assert group.compose(group.inverse(a), a) == group.identity


@SETTINGS
@given(group_with_elements(2))
def test_finite_closure(case):
    group, (a, b) = case
    assert 0 <= group.compose(a, b) < group.order


@SETTINGS
@given(group_with_elements(2))
def test_finite_matrix_homomorphism(case):
    group, (a, b) = case
    np.testing.assert_allclose(
        group.matrix(group.compose(a, b)), group.matrix(a) @ group.matrix(b), atol=1e-12
    )


def test_cayley_table_latin_square():
    group = parse_group("D6")
    table = group.cayley_table
    for row in table:
        assert sorted(row) == group.elements()
    for column in table.T:
        assert sorted(column) == group.elements()


# SO(2)


@SETTINGS
@given(angles, angles, angles)
def test_so2_associativity(a, b, c):
    left = SO2.compose(SO2.compose(a, b), c)
    right = SO2.compose(a, SO2.compose(b, c))
    assert SO2.distance(left, right) < 1e-12


@SETTINGS
@given(angles)
def test_so2_identity_inverse(a):
    a = SO2.element(a)
    assert SO2.distance(SO2.compose(a, SO2.identity), a) < 1e-12
    assert SO2.distance(SO2.compose(a, SO2.inverse(a)), SO2.identity) < 1e-12


@SETTINGS
@given(angles, angles)
def test_so2_closure(a, b):
    product = SO2.compose(a, b)
    assert 0.0 <= product < 2 * math.pi


@SETTINGS
@given(angles, angles)
def test_so2_action_compatible(a, b):
    points = np.array([[1.0, 2.0], [-3.0, 0.5]])
    np.testing.assert_allclose(
        SO2.act(SO2.compose(a, b), points), SO2.act(a, SO2.act(b, points)), atol=1e-9
    )


def test_so2_quarter_turn_action():
    np.testing.assert_allclose(SO2.act(math.pi / 2, (1.0, 0.0)), [0.0, 1.0], atol=1e-15)


def test_so2_from_finite_rotation():
    assert SO2.from_finite(parse_group("C8"), 2) == pytest.approx(math.pi / 2)


def test_so2_from_finite_reflection():
    with pytest.raises(InvalidParameterError, match="reflection"):
        SO2.from_finite(parse_group("D4"), 5)


def test_so2_rejects_nan():
    with pytest.raises(InvalidParameterError, match="finite"):
        SO2.element(float("nan"))


def test_wrap_angle_range():
    assert wrap_angle(-1e-20) == 0.0
    assert wrap_angle(-math.pi / 2) == pytest.approx(3 * math.pi / 2)
    assert angle_distance(0.1, 2 * math.pi - 0.1) == pytest.approx(0.2)


# SE(2)


@SETTINGS
@given(se2_elements, se2_elements, se2_elements)
def test_se2_associativity(a, b, c):
    left = SE2.compose(SE2.compose(a, b), c)
    right = SE2.compose(a, SE2.compose(b, c))
    assert se2_close(left, right, 1e-9)


@SETTINGS
@given(se2_elements)
def test_se2_identity(a):
    assert se2_close(SE2.compose(SE2.identity, a), a)
    assert se2_close(SE2.compose(a, SE2.identity), a)


@SETTINGS
@given(se2_elements)
def test_se2_inverse(a):
    assert se2_close(SE2.compose(a, SE2.inverse(a)), SE2.identity, 1e-9)
    assert se2_close(SE2.compose(SE2.inverse(a), a), SE2.identity, 1e-9)


@SETTINGS
@given(se2_elements, se2_elements)
def test_se2_closure_matrix(a, b):
    product = SE2.compose(a, b)
    assert 0.0 <= product.angle < 2 * math.pi
    np.testing.assert_allclose(SE2.matrix(product), SE2.matrix(a) @ SE2.matrix(b), atol=1e-9)


@SETTINGS
@given(se2_elements, se2_elements)
def test_se2_action_compatible(a, b):
    points = np.array([[0.0, 0.0], [4.0, -2.0]])
    np.testing.assert_allclose(
        SE2.act(SE2.compose(a, b), points), SE2.act(a, SE2.act(b, points)), atol=1e-9
    )


def test_se2_semidirect_product():
    # Rotating by 90 degrees, then shifting by (1, 0), after a shift by (1, 0):
    # the second shift is rotated into (0, 1) first.
    a = SE2.element((1.0, 0.0), math.pi / 2)
    b = SE2.element((1.0, 0.0), 0.0)
    product = SE2.compose(a, b)
    np.testing.assert_allclose(product.translation, (1.0, 1.0), atol=1e-15)
    assert product.angle == pytest.approx(math.pi / 2)


def test_se2_rejects_bad_points():
    with pytest.raises(InvalidParameterError, match=r"\(\.\.\., 2\)"):
        SE2.act(SE2.identity, np.zeros((3, 3)))


# R^2 x| G


@SETTINGS
@given(roto_translations_with_elements(3))
def test_discrete_associativity(case):
    space, (a, b, c) = case
    left = space.compose(space.compose(a, b), c)
    right = space.compose(a, space.compose(b, c))
    assert space.distance(left, right) < 1e-9


@SETTINGS
@given(roto_translations_with_elements(1))
def test_discrete_identity_inverse(case):
    space, (a,) = case
    assert space.distance(space.compose(space.identity, a), a) < 1e-12
    assert space.distance(space.compose(a, space.inverse(a)), space.identity) < 1e-9


@SETTINGS
@given(roto_translations_with_elements(2))
def test_discrete_closure_matrix(case):
    space, (a, b) = case
    product = space.compose(a, b)
    assert 0 <= product.g < space.group.order
    np.testing.assert_allclose(space.matrix(product), space.matrix(a) @ space.matrix(b), atol=1e-9)


@SETTINGS
@given(roto_translations_with_elements(2))
def test_discrete_embeds_in_se2(case):
    space, (a, b) = case
    if space.group.reflections:
        return
    embedded = SE2.compose(space.to_se2(a), space.to_se2(b))
    assert se2_close(space.to_se2(space.compose(a, b)), embedded, 1e-9)


def test_discrete_reflection_not_in_se2():
    space = DiscreteRotoTranslations(parse_group("D4"))
    with pytest.raises(InvalidParameterError, match="reflection"):
        space.to_se2(space.element((0.0, 0.0), 4))


def test_discrete_rejects_bad_element():
    space = DiscreteRotoTranslations(parse_group("C4"))
    with pytest.raises(InvalidParameterError, match="0..3"):
        space.element((0.0, 0.0), 4)
