"""Measure what rotation equivariance costs: forward time of regular, steerable and plain U-Nets.

The three models have about the same number of parameters: the regular
group-convolution U-Net sets the target, the plain U-Net takes the width
from ``matched_plain_width``, and the steerable U-Net takes the width whose
count is closest. Each model is timed as built (escnn and group-convolution
layers) and after ``export_torch`` (plain ``nn.Conv2d`` layers), in
evaluation mode without gradients, as the median of several forward passes
after one untimed pass. Inputs are channels-last, the memory layout that
``histo-gedl infer`` gives its models (tiles arrive as (B, H, W, 3)); the
exported models are also timed on contiguous (B, 3, H, W) inputs, for
comparison.

Work is counted on the exported model with forward hooks: each convolution
costs ``2 * Cout * (Cin / groups) * k * k * Hout * Wout`` floating-point
operations (FLOPs), i.e. twice the weight count times the output pixels.
Pooling, activations and upsampling are not counted. The machine's limit is
the FLOP rate of one large convolution (256 to 256 channels, 3x3) measured
in the same run, in whichever memory layout is faster, and the "share of
limit" column is a model's FLOP rate divided by it. Run from the repository root:
``python benchmarks/bench_equivariance_cost.py [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from _bench_common import (
    add_common_arguments,
    check_common_arguments,
    configure_torch,
    environment_header,
    markdown_table,
    ratio,
    synchronize,
)

#: Smallest share of the large-convolution FLOP rate that the exported equivariant model should reach.
TARGET_SHARE = 0.5
#: Widest steerable model tried when matching the parameter count.
MAX_STEERABLE_WIDTH = 64


def median_seconds(function, repeats: int, device: str) -> float:
    """Return the median wall time of ``function()`` over ``repeats`` calls, after one untimed call."""
    function()
    synchronize(device)
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        function()
        synchronize(device)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def count_conv_flops(network, images) -> int:
    """Return the FLOPs of the convolutions in one forward pass of ``network`` on ``images``.

    Every ``nn.Conv2d`` and :class:`~histo_gedl.models.export.FieldLinearMap`
    (a grouped 1x1 convolution) counts ``2 * weight.numel() * Hout * Wout``
    per image, which is ``2 * Cout * (Cin / groups) * k * k * Hout * Wout``.
    """
    import torch
    from torch import nn

    from histo_gedl.models.export import FieldLinearMap

    total = 0

    def hook(module, inputs, output) -> None:
        nonlocal total
        batch, _, height, width = output.shape
        total += 2 * module.weight.numel() * batch * height * width

    handles = [
        module.register_forward_hook(hook)
        for module in network.modules()
        if isinstance(module, (nn.Conv2d, FieldLinearMap))
    ]
    try:
        with torch.no_grad():
            network(images)
    finally:
        for handle in handles:
            handle.remove()
    return total


def conv_limit(size: int, channels: int, repeats: int, device: str) -> tuple[float, float, str]:
    """Time one ``channels`` to ``channels`` 3x3 convolution on a size x size image.

    Both memory layouts are timed and the faster one is kept.

    Returns:
        (FLOPs, seconds, layout name).
    """
    import torch
    from torch import nn

    conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(device).eval()
    flops = 2 * channels * channels * 9 * size * size
    timings = []
    for layout in ("contiguous", "channels-last"):
        images = torch.rand(1, channels, size, size, device=device)
        if layout == "channels-last":
            images = images.contiguous(memory_format=torch.channels_last)

        def forward(images=images) -> None:
            with torch.no_grad():
                conv(images)

        timings.append((median_seconds(forward, repeats, device), layout))
    seconds, layout = min(timings)
    return float(flops), seconds, layout


def matched_models(group: str, width: int, depth: int):
    """Build the regular, steerable and plain models of about equal parameter count.

    Returns:
        List of (kind, width, model), the regular one first.
    """
    from histo_gedl.models import ModelConfig, build_model, count_parameters, matched_plain_width

    regular_config = ModelConfig(kind="regular", group=group, width=width, depth=depth)
    regular = build_model(regular_config)
    target = count_parameters(regular)

    plain_width = matched_plain_width(regular_config, target)
    plain = build_model(ModelConfig(kind="plain", width=plain_width, depth=depth))

    # The steerable count grows with the square of the width, so stop at the first width above the target.
    best = None
    for steerable_width in range(1, MAX_STEERABLE_WIDTH + 1):
        candidate = build_model(ModelConfig(kind="steerable", group=group, width=steerable_width, depth=depth))
        gap = abs(count_parameters(candidate) - target)
        if best is None or gap < best[0]:
            best = (gap, steerable_width, candidate)
        if count_parameters(candidate) > target:
            break
    _, steerable_width, steerable = best
    return [("regular", width, regular), ("steerable", steerable_width, steerable), ("plain", plain_width, plain)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--group", default="C8", help="rotation group of the equivariant models (default C8)")
    parser.add_argument("--width", type=int, default=3,
                        help="width of the regular model, which sets the parameter target (default 3)")
    parser.add_argument("--depth", type=int, default=3, help="downsamplings of every model (default 3)")
    parser.add_argument("--size", type=int, default=None, metavar="PX",
                        help="input height and width in pixels, a multiple of 2 ** depth (default 512; 128 with --quick)")
    parser.add_argument("--batch-size", type=int, default=1, metavar="N", help="images per forward pass (default 1)")
    parser.add_argument("--repeats", type=int, default=None, metavar="N",
                        help="timed forward passes per model; the median is shown (default 5; 2 with --quick)")
    parser.add_argument("--limit-size", type=int, default=None, metavar="PX",
                        help="image side of the reference 256-channel convolution (default 128; 64 with --quick)")
    return parser


HEADERS = [
    "model", "width", "parameters", "parameters / regular", "GFLOP per MP", "as built s/MP",
    "exported s/MP", "export speed-up", "exported s/MP, contiguous input", "exported GFLOP/s",
    "share of conv limit", "exported time / plain",
]


def main(argv: list[str] | None = None) -> int:
    import torch

    from histo_gedl.models import count_parameters
    from histo_gedl.models.export import export_torch

    parser = build_parser()
    args = parser.parse_args(argv)
    check_common_arguments(parser, args)
    size = args.size or (128 if args.quick else 512)
    repeats = args.repeats or (2 if args.quick else 5)
    limit_size = args.limit_size or (64 if args.quick else 128)
    stride = 2**args.depth
    if size % stride:
        parser.error(f"--size must be a multiple of 2 ** depth = {stride}, got {size}")
    if args.batch_size < 1 or repeats < 1:
        parser.error("--batch-size and --repeats must be at least 1")
    configure_torch(args.threads)
    torch.manual_seed(0)

    limit_flops, limit_seconds, limit_layout = conv_limit(limit_size, 256, repeats, args.device)
    limit_rate = limit_flops / limit_seconds
    # The layout histo-gedl's predictor produces: (B, H, W, 3) tiles permuted to (B, 3, H, W).
    images = torch.rand(args.batch_size, size, size, 3, device=args.device).permute(0, 3, 1, 2)
    contiguous_images = images.contiguous()
    megapixels = args.batch_size * size * size / 1e6

    measured = []
    for kind, width, model in matched_models(args.group, args.width, args.depth):
        model = model.eval().to(args.device)
        exported = export_torch(model).to(args.device)
        flops = count_conv_flops(exported, images)
        timings = []
        for network, inputs in ((model, images), (exported, images), (exported, contiguous_images)):
            def forward(network=network, inputs=inputs) -> None:
                with torch.no_grad():
                    network(inputs)

            timings.append(median_seconds(forward, repeats, args.device))
        measured.append((kind, width, count_parameters(model), flops, *timings))

    target = measured[0][2]
    plain_exported = measured[-1][5]
    rows = []
    for kind, width, parameters, flops, built_seconds, exported_seconds, contiguous_seconds in measured:
        rate = flops / exported_seconds
        rows.append([
            f"{kind} {args.group}" if kind != "plain" else "plain", width, parameters, ratio(parameters, target),
            flops / megapixels / 1e9, built_seconds / megapixels, exported_seconds / megapixels,
            ratio(built_seconds, exported_seconds), contiguous_seconds / megapixels, rate / 1e9,
            ratio(rate, limit_rate), ratio(exported_seconds, plain_exported),
        ])

    print(environment_header("Cost of equivariance: forward time at equal parameter count", args))
    print(f"- input: {args.batch_size} x 3 x {size} x {size}, depth {args.depth}, median of {repeats} passes")
    print(f"- conv limit: 256 to 256 channels, 3x3, on 1 x 256 x {limit_size} x {limit_size}: "
          f"{limit_rate / 1e9:.3g} GFLOP/s ({limit_seconds * 1e3:.3g} ms, {limit_layout}, the faster layout)")
    print()
    print(markdown_table(HEADERS, rows))
    print()
    share = rows[0][10]
    verdict = "met" if share >= TARGET_SHARE else "not met"
    print(f"Exported regular {args.group} model: {share:.2f} of the conv limit "
          f"(target at least {TARGET_SHARE}: {verdict}).")
    print("s/MP is seconds per megapixel of input. GFLOP counts convolutions only "
          "(2 x weights x output pixels); the as-built models do the same convolutions after expanding their filters.")
    print("Inputs are channels-last, as histo-gedl infer passes them; the contiguous column shows the same "
          "exported model on (B, 3, H, W) contiguous inputs.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
