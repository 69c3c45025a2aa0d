"""Compare histo-gedl's whole-slide inference with MONAI's sliding-window inferer on one slide.

Both pipelines run the same model, rebuilt from plain PyTorch layers by
``export_torch``, at the same resolution. That is the slide level whose mpp
matches the model's, which histo-gedl reads without resampling; slides that
would need resampling are rejected.
Each pipeline runs in a fresh Python process, so that peak resident memory
(``ru_maxrss`` of that process) does not mix between them. Times are taken
inside the worker after the model is loaded and has run once, so interpreter
start, imports and model loading are not in them, except in the command-line
row, whose wall time is that of the whole ``histo-gedl infer`` process.

Rows:

* MONAI probability map (the baseline): ``WSIReader`` reads the tissue
  bounding box (or the whole slide) into memory, and ``SlidingWindowInferer``
  with ``mode="gaussian"`` returns the softmax probabilities as one tensor.
  Finding the tissue box uses histo-gedl's tissue detection and is timed as
  "plan".
* MONAI as above, with each batch of windows converted to the channels-last
  memory layout, which histo-gedl's tiles have because they are permuted
  from (B, H, W, 3) arrays.
* histo-gedl prediction only: plan (tissue detection and tiles), read,
  predict and stitch the tissue tiles into the zarr probability canvas.
* histo-gedl end to end: ``infer_slide``, i.e. the above plus post-processing
  into nuclei and export of mask.ome.tif, instances.ome.tif, nuclei.geojson
  and overlay.png.
* histo-gedl command line: ``histo-gedl infer`` as users run it, in its own process.

Megapixels per second divide the slide's area at the read resolution by the
row's wall time, so every row has the same numerator and the ratio column is
a ratio of times. Run from the repository root:
``python benchmarks/bench_vs_monai.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _bench_common import (
    DEFAULT_SLIDE,
    RepeatedTissue,
    add_common_arguments,
    check_common_arguments,
    configure_torch,
    environment_header,
    gib,
    markdown_table,
    prepare_model,
    ratio,
    run_measured,
    run_worker,
    synchronize,
    write_json_atomically,
    write_pyramidal_tiff,
)

SCRIPT = Path(__file__).resolve()
#: Largest ours / MONAI time ratio that the project aims for, same model and output resolution.
TARGET_RATIO = 0.67
#: Relative mpp difference within which a native level counts as the model's resolution (as in InferenceOptions).
MPP_TOLERANCE = 0.05


class ExportedPredictor:
    """histo-gedl's ``ModelPredictor``, with its exported network also open to MONAI.

    Calling it runs ``ModelPredictor`` as ``histo-gedl infer`` does: tiles
    (B, H, W, 3) uint8 in, probabilities (B, C, H, W) float32 out.
    :meth:`probabilities` runs the same exported network on float batches,
    for MONAI's inferer.
    """

    def __init__(self, model, device: str) -> None:
        from histo_gedl.inference.predict import ModelPredictor

        self.predictor = ModelPredictor(model, device=device)
        self.network = self.predictor.model
        self.device = device
        self.classes = self.predictor.classes
        self.stride = self.predictor.stride
        self.receptive_field = self.predictor.receptive_field

    def probabilities(self, images):
        """Map float images (B, 3, H, W) in [0, 1] on the device to probabilities (B, C, H, W)."""
        import torch

        with torch.no_grad():
            return torch.softmax(self.network(images), dim=1)

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        return self.predictor(tiles)


def _rss_now() -> int:
    """Return the resident set size of this process in bytes, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _load_predictor(args: argparse.Namespace):
    import torch

    from histo_gedl.models import load_model

    configure_torch(args.threads)
    model = load_model(args.model)
    predictor = ExportedPredictor(model, args.device)
    # One pass outside the clock, so that one-off allocation and kernel selection are not timed.
    predictor(np.full((args.batch_size, args.tile_size, args.tile_size, 3), 200, np.uint8))
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    return model, predictor


def _gpu_peak(device: str) -> float:
    if device != "cuda":
        return float("nan")
    import torch

    return float(torch.cuda.max_memory_allocated())


def _native_level(slide, read_mpp: float) -> int:
    """Return the level whose mpp is ``read_mpp``; MONAI's reader is compared only without resampling."""
    for level in range(slide.level_count):
        if abs(slide.level_mpp(level) - read_mpp) <= 1e-6 * read_mpp:
            return level
    raise SystemExit(
        f"{slide.path}: no level is at the model's resolution {read_mpp:.4g} µm/px (levels: "
        f"{', '.join(f'{slide.level_mpp(level):.4g}' for level in range(slide.level_count))}); "
        "this benchmark compares unresampled reads, so pick a slide with a level within 5% of the model's mpp"
    )


def worker_monai(args: argparse.Namespace, channels_last: bool = False, one_window: bool = False) -> dict:
    """Read the region with MONAI's WSIReader and run SlidingWindowInferer over it.

    With ``channels_last``, each batch of windows is converted to the
    channels-last memory layout before the model runs. histo-gedl's tiles
    already have that layout because they are permuted from (B, H, W, 3)
    arrays. The conversion is timed as model time. With ``one_window``,
    ``sw_batch_size`` is 1, as histo-gedl's CPU predictor runs its model on
    one tile at a time.
    """
    import torch
    from monai.data import WSIReader
    from monai.inferers import SlidingWindowInferer

    from histo_gedl.inference.plan import choose_read_mpp
    from histo_gedl.slides import detect_tissue, open_slide

    model, predictor = _load_predictor(args)
    rss_loaded = _rss_now()
    began = time.perf_counter()
    with open_slide(args.slide) as slide:
        read_mpp = choose_read_mpp(
            [slide.level_mpp(level) for level in range(slide.level_count)], model.metadata.mpp, MPP_TOLERANCE
        )
        level = _native_level(slide, read_mpp)
        downsample = slide.level_downsamples[level]
        level_width, level_height = slide.level_dimensions[level]
        left, top, right, bottom = 0, 0, level_width, level_height
        if args.monai_region == "tissue-bbox":
            tissue = detect_tissue(slide)
            rows = np.flatnonzero(tissue.mask.any(axis=1))
            cols = np.flatnonzero(tissue.mask.any(axis=0))
            if rows.size:
                # Mask pixels to level pixels, rounding outwards so that no tissue is cut.
                scale = tissue.mpp / read_mpp
                left, right = int(cols[0] * scale), min(level_width, int(np.ceil((cols[-1] + 1) * scale)))
                top, bottom = int(rows[0] * scale), min(level_height, int(np.ceil((rows[-1] + 1) * scale)))
    planned = time.perf_counter()

    reader = WSIReader(backend=args.monai_backend)
    wsi = reader.read(str(args.slide))
    location = (int(round(top * downsample)), int(round(left * downsample)))
    pixels, _ = reader.get_data(wsi, location=location, size=(bottom - top, right - left), level=level)
    image = torch.from_numpy(np.ascontiguousarray(pixels)).unsqueeze(0).float().div_(255.0)
    read = time.perf_counter()

    model_seconds = 0.0
    windows = 0

    def timed_probabilities(batch):
        nonlocal model_seconds, windows
        start = time.perf_counter()
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        output = predictor.probabilities(batch)
        synchronize(args.device)
        model_seconds += time.perf_counter() - start
        windows += batch.shape[0]
        return output

    inferer = SlidingWindowInferer(
        roi_size=(args.tile_size, args.tile_size), sw_batch_size=1 if one_window else args.batch_size,
        overlap=args.overlap,
        mode="gaussian", sw_device=args.device, device="cpu",
    )
    with torch.no_grad():
        probabilities = inferer(image, timed_probabilities)
    finished = time.perf_counter()
    return {
        "read_mpp": read_mpp,
        "region": [right - left, bottom - top],
        "output_pixels": int(probabilities.shape[-1] * probabilities.shape[-2]),
        "windows": windows,
        "model_pixels": windows * args.tile_size**2,
        "seconds": {
            "plan": planned - began,
            "read": read - planned,
            "model": model_seconds,
            "stitch": finished - read - model_seconds,
        },
        "wall_seconds": finished - began,
        "rss_after_load": rss_loaded,
        "gpu_peak": _gpu_peak(args.device),
    }


def _model_info(model, path: Path) -> dict:
    from histo_gedl.models import file_sha256

    return {"name": model.metadata.name, "path": str(path), "sha256": file_sha256(path), "mpp": model.metadata.mpp}


def worker_ours_predict(args: argparse.Namespace) -> dict:
    """Plan, read, predict and stitch into the probability canvas, as infer_slide does before post-processing."""
    from histo_gedl.inference.run import InferenceOptions, make_plan, predict_tiles
    from histo_gedl.inference.stitch import ProbabilityCanvas
    from histo_gedl.slides import open_slide

    model, predictor = _load_predictor(args)
    rss_loaded = _rss_now()
    options = InferenceOptions(tile_size=args.tile_size, batch_size=args.batch_size)
    with tempfile.TemporaryDirectory(prefix="histo-gedl-bench-") as folder:
        began = time.perf_counter()
        with open_slide(args.slide) as slide:
            plan, _ = make_plan(slide, predictor, model.metadata.mpp, options)
            planned = time.perf_counter()
            canvas = ProbabilityCanvas.create(Path(folder) / "canvas", len(predictor.classes), plan.canvas_size)
            times = predict_tiles(slide, plan, predictor, canvas, Path(folder) / "done.json", args.batch_size)
        finished = time.perf_counter()
    return {
        "read_mpp": plan.read_mpp,
        "region": list(plan.canvas_size),
        "output_pixels": len(plan.tiles) * plan.core**2,
        "windows": len(plan.tiles),
        "model_pixels": len(plan.tiles) * plan.tile_size**2,
        "halo": plan.halo,
        "tile_size": plan.tile_size,
        "seconds": {
            "plan": planned - began,
            "read": times["read_seconds"],
            "model": times["predict_seconds"],
            "stitch": times["stitch_seconds"],
        },
        "wall_seconds": finished - began,
        "rss_after_load": rss_loaded,
        "gpu_peak": _gpu_peak(args.device),
    }


def worker_ours_end_to_end(args: argparse.Namespace) -> dict:
    """Run infer_slide with the exported model and every export."""
    from histo_gedl.inference.run import SUMMARY_NAME, InferenceOptions, infer_slide

    model, predictor = _load_predictor(args)
    rss_loaded = _rss_now()
    options = InferenceOptions(tile_size=args.tile_size, batch_size=args.batch_size)
    with tempfile.TemporaryDirectory(prefix="histo-gedl-bench-") as folder:
        began = time.perf_counter()
        result = infer_slide(args.slide, folder, predictor, _model_info(model, Path(args.model)), options)
        finished = time.perf_counter()
        summary = json.loads((Path(result.output_dir) / SUMMARY_NAME).read_text())
    return _summary_row(summary, finished - began) | {"rss_after_load": rss_loaded, "gpu_peak": _gpu_peak(args.device)}


def _summary_row(summary: dict, wall: float) -> dict:
    """Turn infer_slide's summary.json into a result row."""
    seconds = summary["seconds"]
    tiles = summary["tiles"]
    tile_size = summary["tile_core"] + 2 * summary["tile_halo"]
    scale = summary["read_mpp"] / summary["slide_mpp"]
    width, height = summary["slide_dimensions"]
    return {
        "read_mpp": summary["read_mpp"],
        "region": [int(np.ceil(width / scale)), int(np.ceil(height / scale))],
        "output_pixels": tiles * summary["tile_core"] ** 2,
        "windows": tiles,
        "model_pixels": tiles * tile_size**2,
        "halo": summary["tile_halo"],
        "tile_size": tile_size,
        "nuclei": summary["nuclei"],
        "seconds": {
            "plan": seconds.get("plan", 0.0),
            "read": seconds["read_seconds"],
            "model": seconds["predict_seconds"],
            "stitch": seconds["stitch_seconds"],
            "postprocess": seconds["postprocess"],
            "export": seconds["export"],
        },
        "wall_seconds": wall,
    }


def run_cli(args: argparse.Namespace) -> tuple[dict, int]:
    """Run ``histo-gedl infer`` in a new process; return its row and peak RSS in bytes."""
    from histo_gedl.inference.run import SUMMARY_NAME

    with tempfile.TemporaryDirectory(prefix="histo-gedl-bench-") as folder:
        command = [
            sys.executable, "-c", "import sys; from histo_gedl.cli import main; sys.exit(main())",
            "infer", str(args.slide), "--out", folder, "--model", str(args.model),
            "--tile-size", str(args.tile_size), "--batch-size", str(args.batch_size), "--device", args.device,
        ]
        status, wall, peak, output = run_measured(command, args.threads)
        summaries = list(Path(folder).glob(f"*/{SUMMARY_NAME}"))
        if status != 0 or not summaries:
            raise RuntimeError(f"histo-gedl infer failed with exit status {status}:\n{output[-3000:]}")
        summary = json.loads(summaries[0].read_text())
    return _summary_row(summary, wall) | {"gpu_peak": float("nan")}, peak


def worker_monai_channels_last(args: argparse.Namespace) -> dict:
    """Run :func:`worker_monai` with channels-last windows."""
    return worker_monai(args, channels_last=True)


def worker_monai_one_window(args: argparse.Namespace) -> dict:
    """Run :func:`worker_monai` with channels-last windows, one window per forward pass."""
    return worker_monai(args, channels_last=True, one_window=True)


WORKERS = {
    "monai": worker_monai,
    "monai-channels-last": worker_monai_channels_last,
    "monai-one-window": worker_monai_one_window,
    "ours-predict": worker_ours_predict,
    "ours-end-to-end": worker_ours_end_to_end,
}


def write_crop(slide_path: Path, side: int, folder: Path) -> Path:
    """Write the centre ``side`` x ``side`` level-0 pixels of a slide as a one-level tiled TIFF."""
    from histo_gedl.slides import open_slide

    with open_slide(slide_path) as slide:
        width, height = slide.dimensions
        side = min(side, width, height)
        location = ((width - side) // 2, (height - side) // 2)
        mpp = slide.require_mpp()
        image = slide.read_region(location, (side, side), mpp)
    source = RepeatedTissue(image, 1)
    return write_pyramidal_tiff(folder / f"crop-{side}.tiff", side, side, source.read, 1, mpp)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--slide", type=Path, default=DEFAULT_SLIDE, help=f"slide file (default {DEFAULT_SLIDE.name})")
    parser.add_argument(
        "--model", default=None, metavar="NAME_OR_PATH",
        help="model name or .safetensors file (default: the shipped nuclei model, else an untrained C8 stand-in)",
    )
    parser.add_argument("--width", type=int, default=3, help="width of the untrained stand-in model (default 3)")
    parser.add_argument("--depth", type=int, default=3, help="depth of the untrained stand-in model (default 3)")
    parser.add_argument("--tile-size", type=int, default=512, metavar="PX",
                        help="histo-gedl tile size and MONAI roi size, in pixels (default 512)")
    parser.add_argument("--batch-size", type=int, default=4, metavar="N", help="tiles or windows per forward pass (default 4)")
    parser.add_argument("--overlap", type=float, default=0.25,
                        help="MONAI window overlap as a fraction of the roi size, from 0 to below 1 (default 0.25)")
    parser.add_argument("--monai-backend", choices=("openslide", "tifffile"), default="openslide",
                        help="backend of MONAI's WSIReader (default openslide)")
    parser.add_argument("--monai-region", choices=("tissue-bbox", "slide"), default="tissue-bbox",
                        help="what MONAI reads and runs on: the tissue bounding box or the whole slide (default tissue-bbox)")
    parser.add_argument("--crop", type=int, default=None, metavar="PX",
                        help="run on the centre PX x PX level-0 pixels of the slide, written to a temporary TIFF "
                        "(default: the whole slide; 1024 with --quick)")
    parser.add_argument("--repeats", type=int, default=None, metavar="N",
                        help="runs of each pipeline; the table shows the run with the median wall time and "
                        "the largest peak RSS of all runs (default 3; 1 with --quick)")
    parser.add_argument("--no-cli", action="store_true", help="leave out the histo-gedl command-line row")
    parser.add_argument("--worker", choices=tuple(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser


def _worker_arguments(args: argparse.Namespace, kind: str) -> list[str]:
    return [
        kind, "--slide", str(args.slide), "--model", str(args.model), "--tile-size", str(args.tile_size),
        "--batch-size", str(args.batch_size), "--overlap", str(args.overlap),
        "--monai-backend", args.monai_backend, "--monai-region", args.monai_region,
        "--device", args.device, "--threads", str(args.threads),
    ]


def _median_run(runs: list[tuple[dict, int]]) -> tuple[dict, int]:
    """Return the run with the median wall time, with the largest peak RSS of all runs."""
    ordered = sorted(runs, key=lambda run: run[0]["wall_seconds"])
    row = dict(ordered[(len(ordered) - 1) // 2][0])
    row["repeats"] = len(runs)
    return row, max(peak for _, peak in runs)


def _format_rows(rows: list[tuple[str, dict, int]], slide_pixels: int) -> list[list[object]]:
    baseline = rows[0][1]["wall_seconds"]
    table = []
    for name, row, peak in rows:
        seconds = row["seconds"]
        if "halo" in row:
            overlap = f"halo {row['halo']} px/side ({2 * row['halo'] / row['tile_size']:.0%} of tile)"
        else:
            overlap = f"{row['overlap']:g} of roi"
        wall = row["wall_seconds"]
        table.append([
            name, f"{row['region'][0]}x{row['region'][1]}", row["windows"], overlap,
            ratio(row["model_pixels"], row["output_pixels"]),
            seconds.get("plan"), seconds.get("read"), seconds.get("model"), seconds.get("stitch"),
            seconds.get("postprocess"), seconds.get("export"), wall, slide_pixels / 1e6 / wall,
            gib(peak), gib(row.get("gpu_peak", float("nan"))), ratio(wall, baseline),
        ])
    return table


HEADERS = [
    "pipeline", "region at read mpp (px)", "tiles or windows", "overlap", "model px per output px",
    "plan s", "read s", "model s", "stitch s", "post-process s", "export s", "wall s", "slide MP/s",
    "peak RSS GiB", "peak GPU GiB", "time / MONAI",
]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_common_arguments(parser, args)
    if not 0 <= args.overlap < 1:
        parser.error(f"--overlap must be from 0 to below 1, got {args.overlap}")
    if args.worker:
        write_json_atomically(args.result, WORKERS[args.worker](args))
        return 0

    if not args.slide.exists():
        parser.error(f"slide not found: {args.slide}")
    repeats = args.repeats
    if repeats is None:
        repeats = 1 if args.quick else 3
    if repeats < 1:
        parser.error(f"--repeats must be at least 1, got {repeats}")
    crop = args.crop
    if crop is None and args.quick:
        crop = 1024
    with tempfile.TemporaryDirectory(prefix="histo-gedl-bench-") as folder:
        folder = Path(folder)
        model_path, model_label = prepare_model(args.model, folder, args.width, args.depth)
        args.model = str(model_path)
        slide_label = args.slide.name
        if crop is not None:
            args.slide = write_crop(args.slide, crop, folder)
            slide_label += f", centre crop {crop}x{crop} px"

        pipelines = [
            (f"MONAI SlidingWindowInferer, {args.monai_region}, probabilities", "monai"),
            ("MONAI as above, windows converted to channels-last", "monai-channels-last"),
            ("MONAI channels-last, one window per forward pass", "monai-one-window"),
            ("histo-gedl prediction only (tissue tiles, zarr canvas)", "ours-predict"),
            ("histo-gedl end to end with exports", "ours-end-to-end"),
        ]
        if not args.no_cli:
            pipelines.append(("histo-gedl infer command (whole process)", "cli"))
        runs: dict[str, list[tuple[dict, int]]] = {kind: [] for _, kind in pipelines}
        # Repeats go round the pipelines in turn, so that a slow spell of a shared machine hits all of them.
        for _ in range(repeats):
            for _, kind in pipelines:
                if kind == "cli":
                    runs[kind].append(run_cli(args))
                else:
                    runs[kind].append(run_worker(SCRIPT, _worker_arguments(args, kind), args.threads))
        rows = [(name, *_median_run(runs[kind])) for name, kind in pipelines]
        for row in rows[:3]:
            row[1]["overlap"] = args.overlap

    monai, monai_channels_last, monai_one_window, predict = (row[1] for row in rows[:4])
    width, height = predict["region"]
    slide_pixels = width * height
    print(environment_header("histo-gedl vs MONAI, whole-slide inference", args))
    print(f"- slide: {slide_label}; read at {predict['read_mpp']:.4g} µm/px by both "
          f"(MONAI read {monai['read_mpp']:.4g}), {width}x{height} px = {slide_pixels / 1e6:.2f} MP")
    print(f"- model: {model_label}; exported with export_torch in every row but the command-line one")
    print(f"- tile (roi) {args.tile_size} px, batch {args.batch_size}, MONAI mode gaussian, "
          f"overlap {args.overlap:g}, WSIReader backend {args.monai_backend}; "
          f"{repeats} run(s) per pipeline, median wall time shown")
    print()
    print(markdown_table(HEADERS, _format_rows(rows, slide_pixels)))
    print()
    for label, baseline in (
        ("MONAI", monai),
        ("MONAI with channels-last windows", monai_channels_last),
        ("MONAI with channels-last windows, one per pass", monai_one_window),
    ):
        measured = ratio(predict["wall_seconds"], baseline["wall_seconds"])
        verdict = "met" if measured <= TARGET_RATIO else "not met"
        print(f"Prediction-only time / {label} time: {measured:.2f} (target at most {TARGET_RATIO}: {verdict}).")
    print("histo-gedl's predictor permutes (B, H, W, 3) tiles to (B, 3, H, W) and converts them to float "
          "in that memory layout, so its convolutions get channels-last input, and on the CPU it runs the "
          f"model on one tile at a time while reading and stitching {args.batch_size} at a time. The "
          "channels-last MONAI rows show how much of the difference those two choices explain.")
    print("slide MP/s is the slide's area at the read mpp divided by the row's wall time. Seconds of "
          "every row but the command-line one exclude process start, imports and model loading; peak RSS "
          "includes them. "
          "histo-gedl runs only tiles that touch tissue; MONAI runs every window of its region.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
