"""Measure how many tiles per forward pass suit the CPU: time and peak memory of ModelPredictor.

``histo-gedl infer`` reads and stitches tiles in batches (``--batch-size``,
default 4). On the CPU, :class:`~histo_gedl.inference.predict.ModelPredictor`
cuts each batch into micro-batches of one tile for the model by default.
This script runs the predictor on one batch of real tissue tiles from the
sample slide with micro-batches of 1, 2 and the whole batch. Each setting
runs in a fresh process, so its peak resident memory is its own. The
model is exported as in ``infer``; the time is the median of several calls
after one untimed call. Run from the repository root:
``python benchmarks/bench_micro_batch.py [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _bench_common import (
    DEFAULT_SLIDE,
    add_common_arguments,
    check_common_arguments,
    configure_torch,
    environment_header,
    gib,
    markdown_table,
    prepare_model,
    ratio,
    run_worker,
    write_json_atomically,
)

SCRIPT = Path(__file__).resolve()


def read_tiles(slide_path: Path, tile_size: int, count: int, mpp: float):
    """Return ``count`` tiles (count, tile_size, tile_size, 3) from the middle of the slide, side by side."""
    import numpy as np

    from histo_gedl.slides import open_slide

    with open_slide(slide_path) as slide:
        scale = mpp / slide.require_mpp()
        width, height = slide.dimensions
        top = max(0.0, (height - tile_size * scale) / 2)
        left = max(0.0, (width - count * tile_size * scale) / 2)
        return np.stack([
            slide.read_region((left + index * tile_size * scale, top), (tile_size, tile_size), mpp)
            for index in range(count)
        ])


def worker(args: argparse.Namespace) -> dict:
    """Time the predictor on one batch with ``args.micro_batch`` tiles per forward pass."""
    from histo_gedl.inference.predict import ModelPredictor
    from histo_gedl.models import load_model

    configure_torch(args.threads)
    model = load_model(args.model)
    tiles = read_tiles(args.slide, args.tile_size, args.batch_size, model.metadata.mpp)
    predictor = ModelPredictor(model, device=args.device, micro_batch=args.micro_batch)
    predictor(tiles)
    times = []
    for _ in range(args.repeats):
        began = time.perf_counter()
        predictor(tiles)
        times.append(time.perf_counter() - began)
    return {"seconds": statistics.median(times)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--slide", type=Path, default=DEFAULT_SLIDE, help=f"slide file (default {DEFAULT_SLIDE.name})")
    parser.add_argument("--model", default=None, metavar="NAME_OR_PATH",
                        help="model name or .safetensors file (default: the shipped nuclei model)")
    parser.add_argument("--tile-size", type=int, default=None, metavar="PX",
                        help="tile side in pixels, halo included, as infer's --tile-size (default 512; 128 with --quick)")
    parser.add_argument("--batch-size", type=int, default=4, metavar="N", help="tiles per batch (default 4)")
    parser.add_argument("--repeats", type=int, default=None, metavar="N",
                        help="timed calls per setting; the median is shown (default 3; 1 with --quick)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--micro-batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser


HEADERS = ["tiles per forward pass", "s per batch", "s per tile", "peak RSS GiB", "time / whole batch",
           "peak RSS / whole batch"]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_common_arguments(parser, args)
    args.tile_size = args.tile_size or (128 if args.quick else 512)
    args.repeats = args.repeats or (1 if args.quick else 3)
    if args.batch_size < 1 or args.repeats < 1 or args.tile_size < 1:
        parser.error("--batch-size, --repeats and --tile-size must be at least 1")
    if args.worker:
        write_json_atomically(args.result, worker(args))
        return 0
    if not args.slide.exists():
        parser.error(f"slide not found: {args.slide}")

    with tempfile.TemporaryDirectory(prefix="histo-gedl-bench-") as folder:
        model_path, model_label = prepare_model(args.model, Path(folder))
        settings = sorted({1, min(2, args.batch_size), args.batch_size})
        measured = {}
        for micro_batch in settings:
            worker_args = [
                "--slide", str(args.slide), "--model", str(model_path), "--tile-size", str(args.tile_size),
                "--batch-size", str(args.batch_size), "--repeats", str(args.repeats), "--micro-batch",
                str(micro_batch), "--device", args.device, "--threads", str(args.threads),
            ]
            result, peak = run_worker(SCRIPT, worker_args, args.threads)
            measured[micro_batch] = (result["seconds"], peak)

    whole_seconds, whole_peak = measured[args.batch_size]
    rows = [
        [micro_batch, seconds, seconds / args.batch_size, gib(peak), ratio(seconds, whole_seconds),
         ratio(peak, whole_peak)]
        for micro_batch, (seconds, peak) in measured.items()
    ]
    print(environment_header("Tiles per forward pass on the CPU", args))
    print(f"- model: {model_label}, exported; slide {args.slide.name}; one batch of {args.batch_size} tiles of "
          f"{args.tile_size} x {args.tile_size} px; median of {args.repeats} calls after one untimed call")
    print()
    print(markdown_table(HEADERS, rows))
    print()
    print("Peak RSS is that of the whole worker process (interpreter, torch and model included).")
    if args.quick:
        print("Quick mode uses small tiles and one call, which do not show how larger tiles behave; "
              "run without --quick for figures to compare.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
