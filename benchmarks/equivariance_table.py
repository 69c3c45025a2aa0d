"""Print a markdown table of each layer's equivariance error, measured with check_equivariance.

For every layer two measurements are made with fixed seeds:

* exact elements (quarter turns, and reflections in D8) on white noise of
  32 x 32 pixels, no crop: the maximum absolute error in float32 and float64;
* the other elements (45 degree turns, and reflections combined with them) on
  Gaussian-blurred noise (sigma 3 px) of 64 x 64 pixels (128 for the U-Net).
  A border crop removes the corners that a 45 degree turn pushes out of the
  image. The table gives the maximum error and the largest per-element mean
  error in float64, both divided by the output's maximum absolute value.

Run from the repository root: ``python benchmarks/equivariance_table.py``.
It prints a header with the date, torch version and CPU model, then the table.
"""

from __future__ import annotations

import datetime

import torch
from _bench_common import cpu_model
from torch import nn

from histo_gedl.groups import parse_group
from histo_gedl.layers import (
    GroupBatchNorm,
    GroupConv2d,
    GroupMaxPool2d,
    HarmonicConv2d,
    LiftingConv2d,
    MagnitudeReLU,
    OrientationPool,
    PointwiseNonlinearity,
    check_equivariance,
    rotate_harmonic,
    smooth_random_input,
    upsample_regular,
)
from histo_gedl.models import ModelConfig, build_model


class Upsample(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_regular(x, 2)


class HarmonicBlock(nn.Module):
    """Harmonic conv (orders 0, 1, 2) -> magnitude ReLU -> harmonic conv (orders 0, 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.first = HarmonicConv2d(3, 4, (0,), (0, 1, 2), kernel_size=5)
        self.relu = MagnitudeReLU(3, 4)
        self.second = HarmonicConv2d(4, 2, (0, 1, 2), (0, 1), kernel_size=5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.relu(self.first(x)))


def harmonic_action(z: torch.Tensor, group, g: int) -> torch.Tensor:
    return rotate_harmonic(z, group, g, (0, 1))




def cases():
    """Yield (label, group name, module, input kind, output kind, channels, output crop, input size).

    The crop and size for the non-exact elements keep every cropped output
    pixel's receptive field inside the disk that a 45 degree turn preserves.
    """
    d8 = parse_group("D8")
    yield "LiftingConv2d (k=3)", "D8", LiftingConv2d(3, 4, d8, 3), "image", "regular", 3, 16, 64
    yield "LiftingConv2d (k=5)", "D8", LiftingConv2d(3, 4, d8, 5), "image", "regular", 3, 16, 64
    yield "GroupConv2d (k=3)", "D8", GroupConv2d(2, 3, d8, 3), "regular", "regular", 2, 16, 64
    norm = GroupBatchNorm(2)
    norm.running_mean.fill_(0.3)
    norm.running_var.fill_(2.0)
    yield "GroupBatchNorm", "D8", norm, "regular", "regular", 2, 16, 64
    yield "PointwiseNonlinearity (ReLU)", "D8", PointwiseNonlinearity("relu"), "regular", "regular", 2, 16, 64
    yield "GroupMaxPool2d (2)", "D8", GroupMaxPool2d(2), "regular", "regular", 2, 8, 64
    yield "upsample_regular (2x)", "D8", Upsample(), "regular", "regular", 2, 32, 64
    yield "OrientationPool (max)", "D8", OrientationPool("max"), "regular", "invariant_image", 2, 16, 64
    yield "HarmonicConv2d + MagnitudeReLU", "C8", HarmonicBlock(), "image", harmonic_action, 3, 16, 64
    model = build_model(ModelConfig(kind="regular", group="D8", width=2, depth=2))
    yield "RegularUNet (D8, width 2, depth 2)", "D8", model, "image", "invariant_image", 3, 48, 128


def measure(label, group_name, module, input_kind, output_kind, channels, crop, size) -> str:
    group = parse_group(group_name)
    exact = [g for g in group.elements() if group.quarter_turns(g) is not None]
    other = [g for g in group.elements() if group.quarter_turns(g) is None]

    def shape(size: int) -> tuple[int, ...]:
        if input_kind == "image":
            return (1, channels, size, size)
        return (1, channels, group.order, size, size)

    noise = torch.randn(*shape(32), generator=torch.Generator().manual_seed(0))
    exact_report = check_equivariance(
        module, group, input_kind, output_kind, inputs=noise, elements=exact
    )
    smooth = smooth_random_input(shape(size), sigma=3.0, seed=0, dtype=torch.float64)
    other_report = check_equivariance(
        module, group, input_kind, output_kind, inputs=smooth, elements=other,
        dtypes=(torch.float64,), crop=crop,
    )
    relative_max = other_report.max_error(quarter_turns_only=False, relative=True)
    scale = max(row.max_abs / row.relative for row in other_report.rows if row.relative > 0)
    relative_mean = max(row.mean_abs for row in other_report.rows) / scale
    return (
        f"| {label} | {group.name} | {exact_report.max_error(dtype=torch.float32):.1e} | "
        f"{exact_report.max_error(dtype=torch.float32, relative=True):.1e} | "
        f"{exact_report.max_error(dtype=torch.float64):.1e} | {size} | {crop} | {relative_max:.3f} | "
        f"{relative_mean:.4f} |"
    )


def main() -> None:
    torch.manual_seed(0)
    print(f"Measured {datetime.date.today().isoformat()}, torch {torch.__version__}, CPU {cpu_model()}.")
    print()
    print(
        "| layer | group | exact, float32 max abs | exact, float32 relative | exact, float64 max abs "
        "| other: input (px) | other: crop (px) | other: max relative | other: mean relative |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for case in cases():
        print(measure(*case))


if __name__ == "__main__":
    main()
