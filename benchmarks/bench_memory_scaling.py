"""Check that ``histo-gedl infer`` keeps its memory flat and its time linear in tissue area as slides grow.

The script writes a large synthetic slide once. It contains the sample
slide's pixels, mirrored at their edges and repeated to ``--size`` x
``--size`` pixels. The file is a tiled pyramidal TIFF with 256 px tiles
(JPEG by default), levels halved down to at most 1024 px and the mpp in the
resolution tags, which OpenSlide reads as a generic tiled TIFF. It is
written tile by tile, so writing needs memory for the sample only. Then
``histo-gedl infer`` runs in a new process on the sample slide and on the
large one. The peak resident set size of each process comes from
``os.wait4``. Both use the same model, which by default is an untrained
(random weights) C8 U-Net of width 1 and depth 3: its depth and kernel, and
so its halo and tile grid, are those of the shipped architecture, with far
fewer channels. The run measures the pipeline, not segmentation quality.

Targets: peak RSS on the large slide within 2 GiB and less than 10% above the
sample's; seconds per mm² of tissue about the same for both (linear
scaling). Run from the repository root:
``python benchmarks/bench_memory_scaling.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from _bench_common import (
    DEFAULT_SLIDE,
    RepeatedTissue,
    add_common_arguments,
    check_common_arguments,
    environment_header,
    gib,
    markdown_table,
    prepare_model,
    pyramid_sizes,
    ratio,
    run_measured,
    write_pyramidal_tiff,
)

#: Largest peak RSS of the large-slide run that the project aims for, in bytes.
TARGET_PEAK_RSS = 2 * 2**30
#: Largest relative growth of peak RSS from the sample slide to the large one.
TARGET_GROWTH = 0.10
#: Width and depth of the untrained model that ``--model tiny`` builds.
TINY_WIDTH, TINY_DEPTH = 1, 3


def write_large_slide(sample: Path, side: int, path: Path, compression: str) -> tuple[Path, float]:
    """Write the ``side`` x ``side`` synthetic slide from ``sample``; return (path, seconds taken)."""
    from histo_gedl.slides import open_slide

    began = time.perf_counter()
    with open_slide(sample) as slide:
        mpp = slide.require_mpp()
        image = slide.read_region((0, 0), slide.dimensions, mpp)
    levels = len(pyramid_sizes(side, side))
    source = RepeatedTissue(image, levels)
    write_pyramidal_tiff(path, side, side, source.read, levels, mpp, compression=compression)
    return path, time.perf_counter() - began


def run_infer(slide: Path, model: Path, out_dir: Path, args: argparse.Namespace) -> dict:
    """Run ``histo-gedl infer`` on one slide in a new process; return its summary with wall time and peak RSS."""
    command = [
        sys.executable, "-c", "import sys; from histo_gedl.cli import main; sys.exit(main())",
        "infer", str(slide), "--out", str(out_dir), "--model", str(model),
        "--tile-size", str(args.tile_size), "--batch-size", str(args.batch_size), "--device", args.device,
    ]
    status, wall, peak, output = run_measured(command, args.threads)
    summaries = list(out_dir.glob("*/summary.json"))
    if status != 0 or len(summaries) != 1:
        raise RuntimeError(f"histo-gedl infer on {slide} failed with exit status {status}:\n{output[-3000:]}")
    summary = json.loads(summaries[0].read_text())
    return summary | {"process_wall_seconds": wall, "peak_rss": peak}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--size", type=int, default=None, metavar="PX",
                        help="width and height of the synthetic slide in pixels (default 40000; 8192 with --quick)")
    parser.add_argument("--model", default="tiny", metavar="NAME_OR_PATH",
                        help="model name or .safetensors file; 'tiny' builds an untrained C8 U-Net of width 1 "
                        "and depth 3 (default tiny)")
    parser.add_argument("--sample", type=Path, default=DEFAULT_SLIDE,
                        help=f"real slide that is run as is and repeated into the large one (default {DEFAULT_SLIDE.name})")
    parser.add_argument("--tile-size", type=int, default=512, metavar="PX", help="histo-gedl infer --tile-size (default 512)")
    parser.add_argument("--batch-size", type=int, default=4, metavar="N", help="histo-gedl infer --batch-size (default 4)")
    parser.add_argument("--compression", choices=("jpeg", "zlib"), default="jpeg",
                        help="tile compression of the synthetic slide (default jpeg)")
    parser.add_argument("--work-dir", type=Path, default=None, metavar="DIR",
                        help="folder for the synthetic slide and the outputs, kept afterwards; an existing "
                        "synthetic slide of the same size there is reused (default: a temporary folder)")
    return parser


HEADERS = [
    "slide", "size (px)", "tiles", "tissue mm²", "nuclei", "wall s", "s per tissue mm²", "s per tile",
    "peak RSS GiB", "peak RSS / sample", "s per mm² / sample",
]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_common_arguments(parser, args)
    side = args.size or (8192 if args.quick else 40000)
    if side < 256:
        parser.error(f"--size must be at least 256 px, got {side}")
    if not args.sample.exists():
        parser.error(f"sample slide not found: {args.sample}")

    with tempfile.TemporaryDirectory(prefix="histo-gedl-bench-") as temporary:
        folder = args.work_dir or Path(temporary)
        folder.mkdir(parents=True, exist_ok=True)
        if args.model == "tiny":
            model_path, model_label = prepare_model("untrained", folder, TINY_WIDTH, TINY_DEPTH)
        else:
            model_path, model_label = prepare_model(args.model, folder)

        large = folder / f"synthetic-{side}.tiff"
        write_seconds = 0.0
        if not large.exists():
            large, write_seconds = write_large_slide(args.sample, side, large, args.compression)

        results = []
        for name, slide in (("sample", args.sample), ("synthetic", large)):
            out_dir = folder / f"out-{name}"
            if out_dir.exists():
                parser.error(f"{out_dir} exists from an earlier run; remove it or pass another --work-dir")
            results.append((name, slide, run_infer(slide, model_path, out_dir, args)))

    sample = results[0][2]
    sample_rate = sample["process_wall_seconds"] / sample["tissue_area_mm2"]
    rows = []
    for name, slide, summary in results:
        width, height = summary["slide_dimensions"]
        wall = summary["process_wall_seconds"]
        area = summary["tissue_area_mm2"]
        rows.append([
            f"{name} ({slide.name})", f"{width}x{height}", summary["tiles"], area, summary["nuclei"], wall,
            wall / area, wall / summary["tiles"], gib(summary["peak_rss"]),
            ratio(summary["peak_rss"], sample["peak_rss"]), ratio(wall / area, sample_rate),
        ])

    print(environment_header("Memory and time of histo-gedl infer as the slide grows", args))
    print(f"- model: {model_label}")
    print(f"- synthetic slide: {args.sample.name} mirrored and repeated to {side}x{side} px, "
          f"{len(pyramid_sizes(side, side))} levels, {args.compression} tiles"
          + (f", written in {write_seconds:.1f} s" if write_seconds else ", reused from --work-dir"))
    print(f"- histo-gedl infer --tile-size {args.tile_size} --batch-size {args.batch_size}; "
          "wall time is the whole process (start, imports and model loading included)")
    print()
    print(markdown_table(HEADERS, rows))
    print()
    peak, growth = results[1][2]["peak_rss"], rows[1][9] - 1
    verdict = "met" if peak <= TARGET_PEAK_RSS and growth < TARGET_GROWTH else "not met"
    print(f"Peak RSS on the synthetic slide: {gib(peak):.2f} GiB, {growth:+.1%} against the sample "
          f"(target at most {gib(TARGET_PEAK_RSS):g} GiB and below {TARGET_GROWTH:+.0%}: {verdict}).")
    print(f"Seconds per tissue mm², synthetic / sample: {rows[1][10]:.2f} (1 means linear scaling; the fixed "
          "start-up cost of each process weighs more on the small sample).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
