"""Measure how far a module is from equivariant: ``module(g . x)`` against ``g . module(x)``.

:func:`check_equivariance` runs a module on random (or given) inputs and on
their transformed copies, for each group element and floating-point type, and
reports the difference. Quarter turns and reflections act exactly on the
pixel grid, so an equivariant module shows only rounding error there. Other
angles interpolate the rotated images and push the corners out of the frame,
so their error is larger and shrinks on smooth inputs (see
:func:`smooth_random_input`) and with a cropped border.

Example:
    >>> from histo_gedl.groups import parse_group
    >>> from histo_gedl.layers import LiftingConv2d
    >>> report = check_equivariance(LiftingConv2d(3, 2, parse_group("C4")), parse_group("C4"),
    ...                             input_shape=(1, 3, 16, 16))
    >>> report.max_error(dtype=torch.float32) < 1e-5
    True
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from histo_gedl.errors import InvalidParameterError
from histo_gedl.groups.finite import FiniteRotationGroup
from histo_gedl.groups.representations import act

#: An action ``(tensor, group, g) -> g . tensor`` for inputs or outputs.
Action = Callable[[torch.Tensor, FiniteRotationGroup, int], torch.Tensor]

INPUT_KINDS = ("image", "regular")
OUTPUT_KINDS = ("regular", "image", "invariant_image", "invariant")


def _named_action(kind: str, allowed: Sequence[str], what: str) -> Action:
    if kind not in allowed:
        raise InvalidParameterError(
            f"unknown {what} {kind!r}; use one of {', '.join(allowed)} or a callable (x, group, g) -> g . x"
        )
    if kind == "regular":
        return lambda x, group, g: act(group, g, x, "regular")
    if kind == "invariant":
        return lambda x, group, g: x
    return lambda x, group, g: act(group, g, x, "image")


@dataclass
class EquivarianceRow:
    """The error of one group element and dtype.

    Attributes:
        element: index of the element in the group.
        angle_degrees: its rotation angle.
        reflection: whether it reflects.
        exact_action: whether it acts exactly on the pixel grid (quarter turns
            and reflections), as opposed to by interpolation.
        dtype: the floating-point type the module ran in.
        max_abs: maximum absolute difference.
        mean_abs: mean absolute difference.
        relative: ``max_abs`` divided by the maximum absolute output value.
    """

    element: int
    angle_degrees: float
    reflection: bool
    exact_action: bool
    dtype: torch.dtype
    max_abs: float
    mean_abs: float
    relative: float


@dataclass
class EquivarianceReport:
    """Errors of one module under a group, one row per element and dtype."""

    module_name: str
    group: FiniteRotationGroup
    crop: int
    rows: list[EquivarianceRow] = field(default_factory=list)

    def max_error(
        self,
        dtype: torch.dtype | None = None,
        quarter_turns_only: bool = True,
        relative: bool = False,
    ) -> float:
        """Return the largest error over the selected rows.

        Args:
            dtype: only rows of this dtype; None for all.
            quarter_turns_only: only the elements that act exactly on the grid
                (quarter turns, and reflections in D_N).
            relative: use the error relative to the output's maximum instead
                of the absolute error.

        Raises:
            InvalidParameterError: no row matches the selection.
        """
        selected = [
            row
            for row in self.rows
            if (dtype is None or row.dtype == dtype) and (row.exact_action or not quarter_turns_only)
        ]
        if not selected:
            raise InvalidParameterError(
                f"the report has no rows for dtype={dtype}, quarter_turns_only={quarter_turns_only}; "
                f"it covers dtypes {sorted({str(r.dtype) for r in self.rows})}"
            )
        return max(row.relative if relative else row.max_abs for row in selected)

    def table(self) -> str:
        """Return the rows as a markdown table."""
        lines = [
            f"{self.module_name} under {self.group.name}, border crop {self.crop} px",
            "",
            "| element | angle (deg) | reflection | exact action | dtype | max abs | mean abs | relative |",
            "|---:|---:|:---:|:---:|:---|---:|---:|---:|",
        ]
        for row in self.rows:
            lines.append(
                f"| {row.element} | {row.angle_degrees:g} | {'yes' if row.reflection else 'no'} | "
                f"{'yes' if row.exact_action else 'no'} | {str(row.dtype).replace('torch.', '')} | "
                f"{row.max_abs:.2e} | {row.mean_abs:.2e} | {row.relative:.2e} |"
            )
        return "\n".join(lines)


def smooth_random_input(
    shape: Sequence[int], sigma: float = 2.0, seed: int = 0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Return Gaussian noise blurred by a Gaussian of ``sigma`` pixels over the last two axes.

    Smooth inputs keep the interpolation error of non-quarter-turn rotations
    small, so the measured error reflects the module rather than the resampling.
    The result is rescaled to unit standard deviation.

    Args:
        shape: (..., H, W).
        sigma: blur width in pixels; 0 for white noise.
        seed: seed of the random generator.
        dtype: floating-point type of the result.

    Returns:
        Tensor of ``shape``.
    """
    if sigma < 0:
        raise InvalidParameterError(f"sigma must be >= 0 pixels, got {sigma}")
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(*shape, generator=generator, dtype=torch.float64)
    if sigma > 0:
        radius = max(1, math.ceil(3 * sigma))
        offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
        kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
        kernel = kernel / kernel.sum()
        *batch, height, width = noise.shape
        flat = noise.reshape(-1, 1, height, width)
        flat = F.pad(flat, (radius, radius, radius, radius), mode="circular")
        flat = F.conv2d(flat, kernel.reshape(1, 1, 1, -1))
        flat = F.conv2d(flat, kernel.reshape(1, 1, -1, 1))
        noise = flat.reshape(*batch, height, width)
        noise = noise / noise.std()
    return noise.to(dtype)


def _crop(x: torch.Tensor, crop: int) -> torch.Tensor:
    if crop == 0:
        return x
    return x[..., crop:-crop, crop:-crop]


def _relative(max_abs: float, scale: float) -> float:
    if scale > 0:
        return max_abs / scale
    return 0.0 if max_abs == 0 else math.inf


def check_equivariance(
    module: nn.Module,
    group: FiniteRotationGroup,
    input_kind: str | Action = "image",
    output_kind: str | Action = "regular",
    input_shape: Sequence[int] | None = None,
    elements: Sequence[int] | None = None,
    dtypes: Sequence[torch.dtype] = (torch.float32, torch.float64),
    inputs: torch.Tensor | None = None,
    crop: int = 0,
    seed: int = 0,
) -> EquivarianceReport:
    """Measure ``|module(g . x) - g . module(x)|`` for each group element and dtype.

    The module is deep-copied, put in eval mode and converted to each dtype,
    so the caller's module is left unchanged.

    Args:
        module: the module under test.
        group: C_N or D_N.
        input_kind: "image" (B, C, H, W), "regular" (B, C, |G|, H, W), or a
            callable ``(x, group, g) -> g . x``.
        output_kind: "regular", "image", "invariant_image", "invariant" or a
            callable. "image" and "invariant_image" both move a map in the
            plane and keep its values. The second name is for
            orientation-pooled features and model logits. "invariant" is for
            outputs that do not change at all, such as global pooling.
        input_shape: shape of the random input; needed when ``inputs`` is None.
        elements: group elements to check; None for all of them.
        dtypes: floating-point types to run in.
        inputs: the input tensor instead of standard normal noise. It is
            converted to each dtype.
        crop: output pixels to ignore at each border when comparing, because
            non-quarter-turn rotations move the corners out of the image. For a
            45 degree turn of a square input of size S, the pixels that stay
            inside lie within ``S / 2`` of the centre, so a crop of about
            ``0.15 S`` plus the module's receptive-field radius removes them.
        seed: seed of the random input.

    Returns:
        The report, with one row per element and dtype.
    """
    input_action = input_kind if callable(input_kind) else _named_action(input_kind, INPUT_KINDS, "input_kind")
    output_action = (
        output_kind if callable(output_kind) else _named_action(output_kind, OUTPUT_KINDS, "output_kind")
    )
    if inputs is None:
        if input_shape is None:
            raise InvalidParameterError("pass input_shape (e.g. (1, 3, 32, 32)) or an inputs tensor")
        inputs = torch.randn(*input_shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if not isinstance(crop, int) or crop < 0:
        raise InvalidParameterError(f"crop must be a non-negative number of pixels, got {crop!r}")
    if elements is None:
        elements = group.elements()
    for g in elements:
        if not 0 <= g < group.order:
            raise InvalidParameterError(
                f"element {g} is not in {group.name}; use indices 0..{group.order - 1}"
            )
    if not dtypes:
        raise InvalidParameterError("dtypes is empty; pass e.g. (torch.float32,)")

    report = EquivarianceReport(type(module).__name__, group, crop)
    for dtype in dtypes:
        if not dtype.is_floating_point:
            raise InvalidParameterError(f"dtypes must be floating-point types, got {dtype}")
        copy_ = copy.deepcopy(module).to(dtype).eval()
        x = inputs.to(dtype)
        with torch.no_grad():
            reference = copy_(x)
            if 2 * crop >= min(reference.shape[-2:]):
                raise InvalidParameterError(
                    f"crop {crop} leaves no pixels of the {tuple(reference.shape[-2:])} output; "
                    "crop counts output pixels, so use a smaller crop"
                )
            scale = float(_crop(reference, crop).abs().max())
            for g in elements:
                transformed_output = copy_(input_action(x, group, g))
                expected = output_action(reference, group, g)
                difference = (_crop(transformed_output, crop) - _crop(expected, crop)).abs()
                max_abs = float(difference.max())
                report.rows.append(
                    EquivarianceRow(
                        element=g,
                        angle_degrees=math.degrees(group.angle(g)),
                        reflection=bool(group.reflection_index(g)),
                        exact_action=group.quarter_turns(g) is not None,
                        dtype=dtype,
                        max_abs=max_abs,
                        mean_abs=float(difference.mean()),
                        relative=_relative(max_abs, scale),
                    )
                )
    return report
