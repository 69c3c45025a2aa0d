"""Command-line entry point ``histo-gedl``.

This module only parses options and calls the library; each subcommand has
an ``_add_<name>`` function that declares its options and a ``_run_<name>``
function that calls into ``histo_gedl``. Errors that the library raises as
:class:`histo_gedl.errors.HistoGedlError` are printed as one line and exit
with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from histo_gedl import __version__
from histo_gedl.errors import HistoGedlError

log = logging.getLogger(__name__)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="histo-gedl",
        description="Rotation-equivariant segmentation of whole-slide histopathology images.",
    )
    parser.add_argument("--version", action="version", version=f"histo-gedl {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0,
        help="log more detail (-v: info, -vv: debug); the default logs warnings only",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for add in _SUBCOMMANDS:
        add(subparsers)
    # Accept -v after the subcommand too; there it replaces any count given before it.
    for subparser in subparsers.choices.values():
        subparser.add_argument(
            "-v", "--verbose", action="count", default=argparse.SUPPRESS,
            help="log more detail (-v: info, -vv: debug)",
        )
    return parser


_SUBCOMMANDS: list = []


def _subcommand(function):
    _SUBCOMMANDS.append(function)
    return function


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.run(args) or 0)
    except HistoGedlError as error:
        print(f"histo-gedl {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"histo-gedl {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (e.g. `histo-gedl info ... | head`).
        # Point stdout at devnull so the interpreter's final flush does not fail too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


# Subcommands are registered below, one pair of functions each.


_SLIDE_MPP_HELP = (
    "resolution of the slide's level 0 in micrometres per pixel; overrides the metadata and "
    "is required when the metadata has none (for example 0.25 for a 40x scan, 0.5 for 20x)"
)


@_subcommand
def _add_info(subparsers) -> None:
    parser = subparsers.add_parser(
        "info",
        help="show a slide's size, pyramid levels and resolution",
        description=(
            "Show which library reads the slide, its size, pyramid levels, resolution "
            "(mpp, micrometres per pixel), objective power and associated images."
        ),
    )
    parser.add_argument("slide", metavar="SLIDE", help="slide file (SVS, NDPI, MRXS, TIFF, OME-TIFF, PNG, JPEG)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--slide-mpp", type=float, metavar="MPP", help=_SLIDE_MPP_HELP)
    parser.set_defaults(run=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    import json

    from histo_gedl.slides import open_slide

    with open_slide(args.slide, slide_mpp=args.slide_mpp) as slide:
        levels = [
            {
                "level": level,
                "dimensions": list(slide.level_dimensions[level]),
                "downsample": slide.level_downsamples[level],
                "mpp": slide.level_mpp(level),
            }
            for level in range(slide.level_count)
        ]
        associated = {
            name: [image.shape[1], image.shape[0]] for name, image in slide.associated_images.items()
        }
        info = {
            "path": str(slide.path),
            "name": slide.name,
            "backend": slide.backend,
            "dimensions": list(slide.dimensions),
            "mpp": slide.mpp,
            "objective_power": slide.objective_power,
            "levels": levels,
            "associated_images": associated,
        }
    if args.json:
        print(json.dumps(info))
        return 0

    width, height = info["dimensions"]
    mpp = f"{slide.mpp:.4g} µm/px" if slide.mpp is not None else "unknown (pass --slide-mpp)"
    power = f"{slide.objective_power:g}x" if slide.objective_power is not None else "unknown"
    print(f"file: {info['path']}")
    print(f"backend: {info['backend']}")
    print(f"dimensions: {width} x {height} px")
    print(f"mpp: {mpp}")
    print(f"objective power: {power}")
    print(f"levels: {len(levels)}")
    for level in levels:
        level_width, level_height = level["dimensions"]
        level_mpp = f"{level['mpp']:.4g} µm/px" if level["mpp"] is not None else "unknown"
        print(
            f"  {level['level']}: {level_width} x {level_height} px, "
            f"downsample {level['downsample']:.4f}, {level_mpp}"
        )
    names = ", ".join(f"{name} ({w} x {h})" for name, (w, h) in associated.items()) or "none"
    print(f"associated images: {names}")
    return 0


@_subcommand
def _add_tile(subparsers) -> None:
    parser = subparsers.add_parser(
        "tile",
        help="cut the tissue of a slide into PNG tiles at a resolution",
        description=(
            "Find tissue, lay a grid of square tiles at the target resolution over the slide and "
            "write the tiles that touch tissue as PNG files, with manifest.json (level-0 position, "
            "size, mpp and tissue fraction of each tile) and thumbnail.png (the grid on the slide). "
            "Tiles in the last row and column may reach past the slide's edge; that part is white."
        ),
    )
    parser.add_argument("slide", metavar="SLIDE", help="slide file (SVS, NDPI, MRXS, TIFF, OME-TIFF, PNG, JPEG)")
    parser.add_argument(
        "--out", required=True, metavar="DIR",
        help="output folder; it must not exist or be empty, unless --overwrite is given",
    )
    parser.add_argument(
        "--mpp", type=float, default=0.5,
        help="resolution of the tiles in micrometres per pixel (default: 0.5, about 20x)",
    )
    parser.add_argument(
        "--tile-size", type=int, default=256, metavar="PX",
        help="width and height of each tile in pixels at --mpp (default: 256)",
    )
    parser.add_argument(
        "--overlap", type=int, default=0, metavar="PX",
        help="pixels at --mpp that neighbouring tiles share; below --tile-size (default: 0)",
    )
    parser.add_argument("--slide-mpp", type=float, metavar="MPP", help=_SLIDE_MPP_HELP)
    parser.add_argument(
        "--min-tissue", type=float, default=0.0, metavar="FRACTION",
        help="keep tiles whose tissue area is at least this fraction of the tile, from 0 to 1 "
        "(default: 0, keep every tile that touches tissue)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the output folder and everything in it"
    )
    parser.set_defaults(run=_run_tile)


def _run_tile(args: argparse.Namespace) -> int:
    from histo_gedl.slides import detect_tissue, open_slide, plan_tiles, write_tiles
    from histo_gedl.slides.slide import validate_mpp
    from histo_gedl.slides.tiling import MANIFEST_NAME, THUMBNAIL_NAME, check_output_folder, validate_tiling

    # Check every option before the slow steps, so a typo fails at once.
    validate_mpp(args.mpp)
    validate_tiling(args.tile_size, args.overlap, args.min_tissue)
    check_output_folder(args.out, args.overwrite)
    with open_slide(args.slide, slide_mpp=args.slide_mpp) as slide:
        tissue = detect_tissue(slide)
        plans = plan_tiles(
            slide, args.mpp, args.tile_size, args.overlap,
            tissue=tissue, min_tissue_fraction=args.min_tissue,
        )
        out_dir = write_tiles(slide, plans, args.out, overwrite=args.overwrite)
    print(f"wrote {len(plans)} tiles of {args.tile_size} px at {args.mpp:g} µm/px to {out_dir / 'tiles'}")
    print(f"manifest: {out_dir / MANIFEST_NAME}")
    print(f"thumbnail with the tile grid: {out_dir / THUMBNAIL_NAME}")
    return 0


@_subcommand
def _add_infer(subparsers) -> None:
    parser = subparsers.add_parser(
        "infer",
        help="segment nuclei on whole slides and export masks, instances, GeoJSON and an overlay",
        description=(
            "Segment nuclei on one or more slides. For each slide, writes DIR/<slide name>/ with "
            "mask.ome.tif (class map: 0 background, 1 nucleus interior, 2 nucleus boundary), "
            "instances.ome.tif (nucleus ids), nuclei.geojson (QuPath detections in level-0 pixels), "
            "overlay.png and summary.json. A slide that fails is reported and the others go on; the exit "
            "status is then 1."
        ),
    )
    parser.add_argument("slides", nargs="+", metavar="SLIDE", help="slide files (svs, tiff, ome.tif, ndpi, png, ...)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder; one subfolder per slide")
    parser.add_argument(
        "--model", default=None, metavar="NAME_OR_PATH",
        help="shipped model name or .safetensors file (default: the shipped nuclei model)",
    )
    parser.add_argument(
        "--slide-mpp", type=float, default=None, metavar="MPP",
        help="resolution in µm per pixel for slides whose metadata has none (e.g. 0.25 for 40x, 0.5 for 20x)",
    )
    parser.add_argument(
        "--tile-size", type=int, default=512, metavar="N",
        help="pixels per side of the region the model sees per tile, halo included, at the model's mpp "
        "(default 512; rounded down to the model's stride)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=4, metavar="N",
        help="tiles read and stitched per step, and per forward pass on CUDA; on the CPU the model "
        "runs one tile at a time, which is faster there (default 4)",
    )
    parser.add_argument(
        "--tta", choices=("none", "rot90", "dihedral"), default="none",
        help="test-time augmentation: average over quarter turns (rot90) or turns and flips (dihedral); "
        "an exactly equivariant model gains nothing from it (default none)",
    )
    parser.add_argument("--device", default="cpu", metavar="DEVICE", help="torch device: cpu or cuda (default cpu)")
    parser.add_argument(
        "--stitch", choices=("exact", "gaussian"), default="exact",
        help="exact: overlap-tile with a halo, independent of the tiling (default); gaussian: weighted blending",
    )
    parser.add_argument("--resume", action="store_true", help="continue interrupted slides and skip finished ones")
    parser.add_argument("--overwrite", action="store_true", help="delete earlier outputs of the same slides first")
    parser.add_argument(
        "--all-tiles", action="store_true", help="run on every tile, not only those that touch tissue"
    )
    parser.set_defaults(run=_run_infer)


def _run_infer(args: argparse.Namespace) -> int:
    from histo_gedl._memory import limit_retained_memory
    from histo_gedl.errors import InvalidParameterError
    from histo_gedl.inference.plan import halo_and_min_tile_size
    from histo_gedl.inference.predict import ModelPredictor
    from histo_gedl.inference.run import InferenceOptions, infer_slides
    from histo_gedl.models import file_sha256, load_model, resolve_model_path

    # zarr and PyTorch threads would each keep a heap of freed memory otherwise.
    limit_retained_memory()
    if args.batch_size < 1:
        raise InvalidParameterError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.slide_mpp is not None and not 0 < args.slide_mpp < float("inf"):
        raise InvalidParameterError(
            f"--slide-mpp must be a positive finite number of µm per pixel, for example 0.25 or 0.5, got {args.slide_mpp}"
        )
    if args.resume and args.overwrite:
        raise InvalidParameterError("--resume and --overwrite contradict each other; pass one of them")
    model_path = resolve_model_path(args.model)
    model = load_model(model_path)
    halo, smallest = halo_and_min_tile_size(model.config.total_stride, model.config.receptive_field_radius())
    if args.tile_size < smallest:
        raise InvalidParameterError(
            f"--tile-size {args.tile_size} is too small for model {model.metadata.name}: it needs a halo of "
            f"{halo} px on each side, so use at least {smallest} (512 is the default)"
        )
    model_info = {
        "name": model.metadata.name,
        "path": str(model_path),
        "sha256": file_sha256(model_path),
        "mpp": model.metadata.mpp,
        "kind": model.config.kind,
        "group": model.config.group,
        "stain_normalisation": model.metadata.extra.get("stain_normalisation"),
        "postprocess": model.metadata.extra.get("postprocess", {}),
    }
    options = InferenceOptions(
        tile_size=args.tile_size, batch_size=args.batch_size, stitch=args.stitch, resume=args.resume,
        overwrite=args.overwrite, tissue_only=not args.all_tiles, slide_mpp=args.slide_mpp,
    )
    predictor = ModelPredictor(model, tta=args.tta, device=args.device)
    results = infer_slides(args.slides, args.out, predictor, model_info, options)
    for result in results:
        if result.status == "failed":
            print(f"FAILED   {result.slide}: {result.error}")
        elif result.status == "skipped":
            print(f"skipped  {result.slide}: already finished in {result.output_dir}")
        else:
            print(f"finished {result.slide}: {result.nuclei} nuclei, outputs in {result.output_dir}")
    failed = sum(r.status == "failed" for r in results)
    done = len(results) - failed
    where = f"; outputs in {args.out}" if done else ""
    print(f"{done} of {len(results)} slides done{where}")
    return 1 if failed else 0


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG", help="training YAML file, e.g. pipelines/train-nuclei-c8.yaml")
    parser.add_argument("--resume", action="store_true", help="continue the run in the config's output_dir")
    parser.add_argument("--steps", type=int, default=None, metavar="N", help="override the number of steps")
    parser.add_argument("--output-dir", default=None, metavar="DIR", help="override the config's output_dir")


@_subcommand
def _add_train(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train a segmentation model from a YAML config",
        description="Train a model. Writes checkpoint.pt, best.safetensors, history.json and curves.png "
        "to the config's output_dir.",
    )
    _add_training_options(parser)
    parser.set_defaults(run=_run_train, init_from=None)


@_subcommand
def _add_finetune(subparsers) -> None:
    parser = subparsers.add_parser(
        "finetune", help="fine-tune an existing model on new labelled tiles",
        description="Fine-tune MODEL on the data in CONFIG; set freeze: encoder or all_but_head in the "
        "config to train only part of the network.",
    )
    _add_training_options(parser)
    parser.add_argument(
        "--from", dest="init_from", required=True, metavar="MODEL", help="shipped model name or .safetensors file"
    )
    parser.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from histo_gedl.training.config import load_train_config
    from histo_gedl.training.trainer import train

    overrides = {}
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.output_dir is not None:
        overrides["output_dir"] = args.output_dir
    config = load_train_config(args.config, overrides)
    result = train(config, resume=args.resume, init_from=args.init_from)
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in result.best_metrics.items() if isinstance(v, float))
    print(f"trained {result.steps_done} steps; best validation (selected by {config.select_by}): {metrics or 'none'}")
    print(f"model: {result.best_model}")
    return 0


@_subcommand
def _add_evaluate(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="score a model on labelled tiles (Dice, IoU, AJI, panoptic quality)",
        description="Predict each image in --images, post-process into nuclei as inference does, and score "
        "against the label file with the same stem in --labels.",
    )
    parser.add_argument("--model", required=True, metavar="NAME_OR_PATH", help="shipped model name or .safetensors file")
    parser.add_argument("--images", required=True, metavar="DIR", help="folder of RGB tiles")
    parser.add_argument(
        "--labels", required=True, action="append", metavar="DIR",
        help="folder of instance masks, binary masks or ImageScope XML; repeat to search several in order",
    )
    parser.add_argument(
        "--mpp", default=None, metavar="MPP_OR_CSV",
        help="the images' resolution: µm per pixel, or a CSV with columns image,mpp (default: the model's mpp)",
    )
    parser.add_argument(
        "--rotate", type=float, default=0.0, metavar="DEGREES",
        help="rotate every image and its labels by this angle before scoring (default 0)",
    )
    parser.add_argument("--json", action="store_true", help="print the scores as one JSON object")
    parser.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    import json

    from histo_gedl.models import load_model
    from histo_gedl.training.evaluate import evaluate_model

    model = load_model(args.model)
    mpp = args.mpp
    if mpp is not None:
        try:
            mpp = float(mpp)
        except ValueError:
            pass
    report = evaluate_model(
        model, args.images, args.labels, mpp=mpp, rotate_degrees=args.rotate, roles=("--images", "--labels")
    )
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    assumed = "the model's mpp" if args.mpp is None else f"--mpp {args.mpp}"
    print(f"model {report['model']} at {report['mpp']} µm/px; images resampled from {assumed}")
    print(f"{'tile':40s} {'dice':>6s} {'iou':>6s} {'aji':>6s} {'pq':>6s}")
    for name, scores in report["tiles"].items():
        cells = " ".join(f"{scores[k]:6.3f}" if k in scores else f"{'-':>6s}" for k in ("dice", "iou", "aji", "pq"))
        print(f"{name:40s} {cells}")
    mean = report["mean"]
    cells = " ".join(f"{mean[k]:6.3f}" if k in mean else f"{'-':>6s}" for k in ("dice", "iou", "aji", "pq"))
    print(f"{'mean':40s} {cells}")
    return 0


@_subcommand
def _add_pseudo_label(subparsers) -> None:
    parser = subparsers.add_parser(
        "pseudo-label", help="split binary masks into nuclei with a trained model, for training",
        description="For each image in --images with a binary mask in --masks, predict with --model and split "
        "the mask's blobs into nuclei along the model's interior map; write uint16 instance PNGs to --out. "
        "List --out before the binary masks in a training config's labels.",
    )
    parser.add_argument("--model", required=True, metavar="NAME_OR_PATH", help="shipped model name or .safetensors file")
    parser.add_argument("--images", required=True, metavar="DIR", help="folder of RGB tiles")
    parser.add_argument("--masks", required=True, metavar="DIR", help="folder of binary masks, one per image")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write the instance labels to")
    parser.add_argument(
        "--mpp", required=True, metavar="MPP_OR_CSV",
        help="the images' resolution: µm per pixel, or a CSV with columns image,mpp",
    )
    parser.add_argument(
        "--skip-labelled", action="append", default=[], metavar="DIR",
        help="leave out images that have labels in DIR (for example instance masks); repeatable",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace label files that exist in --out")
    parser.set_defaults(run=_run_pseudo_label)


def _run_pseudo_label(args: argparse.Namespace) -> int:
    from pathlib import Path

    from histo_gedl.errors import InvalidParameterError
    from histo_gedl.models import load_model
    from histo_gedl.training.pseudo import pseudo_label_folder

    try:
        mpp = float(args.mpp)
    except ValueError:
        mpp = args.mpp
        if not Path(mpp).is_file():
            raise InvalidParameterError(
                f"--mpp {args.mpp!r} is neither a number nor a CSV file; give µm per pixel (for example 0.25) "
                "or the path of a CSV with columns image,mpp"
            ) from None
    model = load_model(args.model)
    result = pseudo_label_folder(
        model, args.images, args.masks, args.out, mpp, skip_labelled=args.skip_labelled, overwrite=args.overwrite
    )
    print(
        f"wrote {len(result.written)} label files to {args.out}: {sum(result.nuclei.values())} nuclei, "
        f"{sum(result.split.values())} mask blobs split; skipped {len(result.skipped)} labelled images"
    )
    return 0


@_subcommand
def _add_export_model(subparsers) -> None:
    parser = subparsers.add_parser(
        "export-model",
        help="export a model to TorchScript or ONNX for inference without histo-gedl",
        description=(
            "Export a model to plain PyTorch (a TorchScript file that loads with torch.jit.load "
            "and needs neither escnn nor histo-gedl) or to ONNX with dynamic batch, height and "
            "width. Both take RGB images scaled to [0, 1], shape (B, 3, H, W), and return logits "
            "(B, classes, H, W); H and W must be multiples of 2 ** depth."
        ),
    )
    parser.add_argument("model", metavar="MODEL", help="shipped model name or path to a .safetensors model file")
    parser.add_argument(
        "--format", choices=("torch", "onnx"), required=True,
        help="torch: TorchScript file; onnx: ONNX file checked with ONNX Runtime",
    )
    parser.add_argument("--out", required=True, metavar="PATH", help="output file to write")
    parser.add_argument(
        "--opset", type=int, default=17, choices=range(13, 21), metavar="N",
        help="ONNX opset version, 13 to 20 (default: 17)",
    )
    parser.set_defaults(run=_run_export_model)


def _run_export_model(args: argparse.Namespace) -> int:
    from pathlib import Path

    from histo_gedl.errors import InvalidParameterError
    from histo_gedl.models import load_model
    from histo_gedl.models.export import export_onnx, export_torch

    out = Path(args.out)
    if out.is_dir():
        raise InvalidParameterError(f"--out {out} is a folder; pass a file name such as {out / 'model.onnx'}")
    if not out.parent.is_dir():
        raise InvalidParameterError(f"the folder of --out {out} does not exist; create {out.parent} first")
    model = load_model(args.model)
    if args.format == "torch":
        export_torch(model, args.out)
    else:
        export_onnx(model, args.out, opset=args.opset)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
