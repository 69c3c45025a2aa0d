"""The equivariance check itself: it detects broken modules, handles dtypes, crops and guards."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from histo_gedl.errors import InvalidParameterError
from histo_gedl.groups import parse_group
from histo_gedl.layers import EquivarianceReport, LiftingConv2d, check_equivariance, smooth_random_input


def asymmetric_conv() -> nn.Conv2d:
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, 2.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 3.0]]]]))
    return conv


def test_detects_plain_conv():
    report = check_equivariance(
        asymmetric_conv(), parse_group("C4"), "image", "image", input_shape=(1, 1, 16, 16)
    )
    assert report.max_error(dtype=torch.float32) > 0.5


def test_identity_row_is_zero():
    report = check_equivariance(asymmetric_conv(), parse_group("C4"), "image", "image", input_shape=(1, 1, 8, 8))
    identity_rows = [row for row in report.rows if row.element == 0]
    assert [row.max_abs for row in identity_rows] == [0.0, 0.0]


def test_symmetric_conv_passes():
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[0.5, 1.0, 0.5], [1.0, -6.0, 1.0], [0.5, 1.0, 0.5]]]]))
    report = check_equivariance(conv, parse_group("D4"), "image", "image", input_shape=(1, 1, 16, 16))
    assert report.max_error(dtype=torch.float64) < 1e-12


def test_rows_per_element_and_dtype():
    group = parse_group("C8")
    report = check_equivariance(
        LiftingConv2d(1, 1, group), group, input_shape=(1, 1, 8, 8), elements=[0, 1, 2]
    )
    assert len(report.rows) == 6
    assert {row.dtype for row in report.rows} == {torch.float32, torch.float64}
    assert [row.exact_action for row in report.rows[:3]] == [True, False, True]
    assert report.rows[1].angle_degrees == pytest.approx(45.0)


def test_max_error_filters_quarter_turns():
    group = parse_group("C8")
    report = check_equivariance(
        LiftingConv2d(1, 2, group), group, inputs=smooth_random_input((1, 1, 32, 32)), crop=8
    )
    exact = report.max_error(dtype=torch.float32)
    everything = report.max_error(dtype=torch.float32, quarter_turns_only=False)
    assert exact < 1e-5
    assert everything > 100 * exact


def test_float64_more_precise():
    group = parse_group("C4")
    torch.manual_seed(0)
    report = check_equivariance(LiftingConv2d(3, 4, group, 5), group, input_shape=(1, 3, 32, 32))
    assert report.max_error(dtype=torch.float64) < report.max_error(dtype=torch.float32)


def test_module_left_unchanged():
    group = parse_group("C4")
    module = nn.Sequential(LiftingConv2d(1, 1, group), nn.Dropout(0.5))
    module.train()
    before = [p.clone() for p in module.parameters()]
    report = check_equivariance(module, group, input_shape=(1, 1, 8, 8))
    assert module.training
    assert all(p.dtype == torch.float32 for p in module.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters()))
    # Dropout runs in eval mode inside the check, so the module is still exact.
    assert report.max_error(dtype=torch.float32) < 1e-5


def test_crop_ignores_border():
    group = parse_group("C4")

    class BorderNoise(nn.Module):
        def forward(self, x):
            out = x.clone()
            out[..., 0, :] = torch.arange(x.shape[-1], dtype=x.dtype)
            return out

    uncropped = check_equivariance(BorderNoise(), group, "image", "image", input_shape=(1, 1, 8, 8))
    cropped = check_equivariance(BorderNoise(), group, "image", "image", input_shape=(1, 1, 8, 8), crop=1)
    assert uncropped.max_error() > 1.0
    assert cropped.max_error() == 0.0


def test_invariant_output_kind():
    class GlobalMean(nn.Module):
        def forward(self, x):
            return x.mean(dim=(-2, -1))

    report = check_equivariance(GlobalMean(), parse_group("D4"), "image", "invariant", input_shape=(2, 3, 8, 8))
    assert report.max_error(dtype=torch.float64) < 1e-12


def test_table_markdown():
    report = check_equivariance(asymmetric_conv(), parse_group("C4"), "image", "image", input_shape=(1, 1, 8, 8))
    lines = report.table().splitlines()
    assert lines[0] == "Conv2d under C4, border crop 0 px"
    assert lines[2].startswith("| element | angle (deg) |")
    assert len(lines) == 4 + 8
    assert "| 1 | 90 | no | yes | float32 |" in lines[5]


def test_relative_zero_output():
    class Zero(nn.Module):
        def forward(self, x):
            return torch.zeros_like(x)

    report = check_equivariance(Zero(), parse_group("C4"), "image", "image", input_shape=(1, 1, 4, 4))
    assert report.max_error(relative=True) == 0.0


def test_rejects_missing_shape():
    with pytest.raises(InvalidParameterError, match="input_shape"):
        check_equivariance(asymmetric_conv(), parse_group("C4"), "image", "image")


def test_rejects_unknown_kind():
    with pytest.raises(InvalidParameterError, match="unknown output_kind 'vector'"):
        check_equivariance(asymmetric_conv(), parse_group("C4"), "image", "vector", input_shape=(1, 1, 4, 4))


def test_rejects_bad_element():
    with pytest.raises(InvalidParameterError, match="0..3"):
        check_equivariance(asymmetric_conv(), parse_group("C4"), "image", "image", input_shape=(1, 1, 4, 4), elements=[4])


def test_rejects_large_crop():
    with pytest.raises(InvalidParameterError, match="crop 2 leaves no pixels"):
        check_equivariance(asymmetric_conv(), parse_group("C4"), "image", "image", input_shape=(1, 1, 4, 4), crop=2)


def test_rejects_integer_dtype():
    with pytest.raises(InvalidParameterError, match="floating-point"):
        check_equivariance(
            asymmetric_conv(), parse_group("C4"), "image", "image", input_shape=(1, 1, 4, 4), dtypes=(torch.int64,)
        )


def test_max_error_rejects_empty_selection():
    report = EquivarianceReport("x", parse_group("C4"), 0)
    with pytest.raises(InvalidParameterError, match="no rows"):
        report.max_error()


def test_smooth_input_unit_std():
    x = smooth_random_input((2, 3, 32, 32), sigma=2.0, seed=1)
    assert x.shape == (2, 3, 32, 32)
    assert x.std().item() == pytest.approx(1.0, rel=1e-5)
    neighbour = (x[..., 1:, :] - x[..., :-1, :]).abs().mean().item()
    assert neighbour < 0.5 * math.sqrt(2)


def test_smooth_input_rejects_negative_sigma():
    with pytest.raises(InvalidParameterError, match="sigma"):
        smooth_random_input((1, 1, 8, 8), sigma=-1.0)
