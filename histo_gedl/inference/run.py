"""Whole-slide inference, one slide at a time: plan, predict, stitch, post-process, export.

Each stage is a separate function with plain inputs and outputs. Work in
progress lives in ``DIR/<slide>/.partial/``: the plan (``plan.json``), the
probability canvas (zarr), and the indices of finished tiles
(``done.json``, rewritten atomically after each batch). Final files are
written under temporary names and renamed, and ``summary.json`` is written
last, so a folder without it is not a finished result. ``resume=True``
continues from the finished tiles.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import zarr
from tqdm.auto import tqdm

from histo_gedl import __version__
from histo_gedl._memory import release_free_memory
from histo_gedl.errors import HistoGedlError, InvalidParameterError
from histo_gedl.inference.plan import InferencePlan, choose_read_mpp, plan_inference
from histo_gedl.inference.postprocess import class_map_from_probabilities, label_instances_tiled
from histo_gedl.inference.predict import TilePredictor
from histo_gedl.inference.stitch import CHUNK, ProbabilityCanvas

log = logging.getLogger(__name__)

PARTIAL_DIR = ".partial"
SUMMARY_NAME = "summary.json"
#: Smallest nucleus kept by default, in pixels at the read mpp; evaluation uses the same value.
MIN_NUCLEUS_AREA = 12
#: Upsampling a slide by more than this factor to reach the model's mpp is an error.
MAX_UPSAMPLING = 2.0
#: Freed heap memory goes back to the system after every this many batches and after each stage.
TRIM_EVERY_BATCHES = 8


@dataclass
class InferenceOptions:
    """Settings of a whole-slide run; the command line sets each of them.

    Attributes:
        tile_size: width of the model input per tile, in pixels at
            the read mpp (core plus halos); rounded down to the model's stride.
        batch_size: tiles read and stitched per step; the predictor decides
            how many of them go through the model at once.
        stitch: "exact" (default) or "gaussian"; see :mod:`histo_gedl.inference.stitch`.
        resume: continue an interrupted run from its finished tiles.
        overwrite: delete earlier outputs of the same slide first.
        tissue_only: skip tiles whose core touches no tissue.
        slide_mpp: µm per pixel for slides whose metadata has none.
        mpp_tolerance: read a native level whose mpp is within this relative
            difference of the model's, without resampling.
        thumbnail_size: longer side of ``overlay.png`` in pixels.
        min_nucleus_area: smallest nucleus kept, in pixels at the read mpp,
            unless the model's metadata sets its own post-processing.
    """

    tile_size: int = 512
    batch_size: int = 4
    stitch: str = "exact"
    resume: bool = False
    overwrite: bool = False
    tissue_only: bool = True
    slide_mpp: float | None = None
    mpp_tolerance: float = 0.05
    thumbnail_size: int = 2048
    min_nucleus_area: int = MIN_NUCLEUS_AREA


@dataclass
class SlideResult:
    """Outcome of one slide: where its outputs are, or why it failed."""

    slide: str
    status: str  # "finished", "skipped" or "failed"
    output_dir: str | None = None
    error: str | None = None
    nuclei: int | None = None


def _write_json(path: Path, data) -> None:
    temporary = path.with_name(f".{path.name}.partial")
    temporary.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(temporary, path)


def prepare_output_dir(out_dir: Path, name: str, resume: bool, overwrite: bool) -> tuple[Path, bool]:
    """Create ``out_dir/name`` and its work folder; return (slide folder, finished already).

    Raises:
        HistoGedlError: the folder is a file, is not writable, or contains
            earlier outputs that neither ``resume`` nor ``overwrite`` allows
            touching.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidParameterError(f"output path {out_dir} exists and is a file; pass a folder for --out")
    slide_dir = out_dir / name
    if overwrite and slide_dir.exists():
        shutil.rmtree(slide_dir)
    summary = slide_dir / SUMMARY_NAME
    if summary.exists():
        if resume:
            return slide_dir, True
        raise HistoGedlError(
            f"{slide_dir} already contains finished outputs; pass --overwrite to replace them "
            "or --resume to skip finished slides"
        )
    if (slide_dir / PARTIAL_DIR).exists() and not resume:
        raise HistoGedlError(
            f"{slide_dir} contains an interrupted run; pass --resume to continue it or --overwrite to start over"
        )
    try:
        (slide_dir / PARTIAL_DIR).mkdir(parents=True, exist_ok=True)
        probe = slide_dir / PARTIAL_DIR / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise HistoGedlError(f"cannot write to output folder {slide_dir}: {error.strerror or error}") from error
    return slide_dir, False


def make_plan(slide, predictor: TilePredictor, model_mpp: float, options: InferenceOptions) -> tuple[InferencePlan, dict]:
    """Choose the read mpp, find tissue and plan the tiles; return the plan and facts for the summary."""
    from histo_gedl.slides import detect_tissue

    slide_mpp = slide.require_mpp()
    level_mpps = [slide.level_mpp(level) for level in range(slide.level_count)]
    read_mpp = choose_read_mpp(level_mpps, model_mpp, options.mpp_tolerance)
    if read_mpp < slide_mpp / MAX_UPSAMPLING * (1 - options.mpp_tolerance):
        raise HistoGedlError(
            f"{slide.path}: the model works at {model_mpp} µm/px but the slide's finest level is "
            f"{slide_mpp:.4g} µm/px; upsampling by more than {MAX_UPSAMPLING:g}x would invent detail, "
            "so use a model trained at a coarser mpp (or check --slide-mpp)"
        )
    if read_mpp < slide_mpp * (1 - options.mpp_tolerance):
        log.warning(
            "%s: upsampling from %.4g to %.4g µm/px to match the model; results may be worse",
            slide.name, slide_mpp, read_mpp,
        )
    tissue_mask = tissue_mpp = None
    facts: dict = {"tissue_area_mm2": None}
    if options.tissue_only:
        tissue = detect_tissue(slide)
        tissue_mask, tissue_mpp = tissue.mask, tissue.mpp
        facts["tissue_area_mm2"] = round(float(tissue.mask.sum()) * tissue.mpp**2 / 1e6, 4)
    plan = plan_inference(
        str(slide.path), slide.dimensions, slide_mpp, read_mpp, predictor.stride,
        predictor.receptive_field, options.tile_size, tissue_mask, tissue_mpp,
    )
    return plan, facts


def stain_transform(slide, stain: dict | None):
    """Return a function that normalises tiles of ``slide`` as the model was trained, or None.

    The slide's colour statistics come from its thumbnail, so every tile
    gets the same colour map and stitching stays independent of the tiling.
    """
    if not stain:
        return None
    from histo_gedl.slides.stain import LabStatistics, lab_statistics, reinhard_normalise

    source = lab_statistics(slide.get_thumbnail(1024))
    target = LabStatistics.from_dict(stain["target"])
    return lambda image: reinhard_normalise(image, source, target)


def predict_tiles(slide, plan: InferencePlan, predictor: TilePredictor, canvas: ProbabilityCanvas,
                  done_path: Path, batch_size: int, transform=None) -> dict:
    """Read, predict and stitch every tile not yet listed in ``done_path``; return stage times.

    ``transform``, when given, maps each RGB tile (H, W, 3) uint8 before prediction.
    """
    done = set(json.loads(done_path.read_text())) if done_path.exists() else set()
    todo = [tile for tile in plan.tiles if tile.index not in done]
    times = {"read_seconds": 0.0, "predict_seconds": 0.0, "stitch_seconds": 0.0}
    size = (plan.tile_size, plan.tile_size)
    progress = tqdm(
        total=len(plan.tiles), initial=len(done), desc=f"infer {slide.name}", unit="tile", disable=None
    )
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        began = time.perf_counter()
        images = np.stack([slide.read_region(plan.location(t), size, plan.read_mpp) for t in batch])
        if transform is not None:
            images = np.stack([transform(image) for image in images])
        read_done = time.perf_counter()
        predictions = predictor(images)
        predict_done = time.perf_counter()
        for tile, prediction in zip(batch, predictions):
            canvas.add_tile(plan, tile, prediction)
        done.update(t.index for t in batch)
        _write_json(done_path, sorted(done))
        times["read_seconds"] += read_done - began
        times["predict_seconds"] += predict_done - read_done
        times["stitch_seconds"] += time.perf_counter() - predict_done
        progress.update(len(batch))
        if (start // batch_size) % TRIM_EVERY_BATCHES == TRIM_EVERY_BATCHES - 1:
            release_free_memory()
    progress.close()
    return times


def postprocess(canvas: ProbabilityCanvas, work_dir: Path, instance_options: dict) -> tuple[zarr.Array, zarr.Array, int]:
    """Turn the stitched scores into a class map and nucleus instances at the read mpp.

    ``instance_options`` are passed to
    :func:`~histo_gedl.inference.postprocess.instances_from_probabilities`.

    Returns:
        (class map (H, W) uint8, instances (H, W) uint32, number of nuclei).
    """
    height, width = canvas.shape
    classes = zarr.open_array(
        store=str(work_dir / "classes"), mode="w", shape=(height, width),
        chunks=(CHUNK, CHUNK), dtype="uint8", fill_value=0,
    )
    block = 4 * CHUNK
    for row in range(0, height, block):
        for col in range(0, width, block):
            scores = canvas.read(row, min(row + block, height), col, min(col + block, width))
            classes[row : row + scores.shape[1], col : col + scores.shape[2]] = class_map_from_probabilities(scores)
    instances = zarr.open_array(
        store=str(work_dir / "instances"), mode="w", shape=(height, width),
        chunks=(CHUNK, CHUNK), dtype="uint32", fill_value=0,
    )
    count = label_instances_tiled(canvas.read, (height, width), instances, block=block, margin=64, **instance_options)
    return classes, instances, count


def to_level0(source: zarr.Array, plan: InferencePlan, work_dir: Path, name: str) -> zarr.Array:
    """Resample a read-resolution map to level-0 size by nearest neighbour, block by block.

    Level-0 pixel ``[r, c]`` takes read pixel ``[floor((r + 0.5) / scale),
    floor((c + 0.5) / scale)]``, the one under its centre. When the read mpp
    is the slide's own, the map is only cropped to the slide.
    """
    width, height = plan.slide_dimensions
    scale = plan.scale
    if abs(scale - 1.0) < 1e-9 and source.shape == (height, width):
        return source
    target = zarr.open_array(
        store=str(work_dir / f"{name}_level0"), mode="w", shape=(height, width),
        chunks=(CHUNK, CHUNK), dtype=source.dtype, fill_value=0,
    )
    source_height, source_width = source.shape
    block = 4 * CHUNK
    for row in range(0, height, block):
        rows = np.minimum(((np.arange(row, min(row + block, height)) + 0.5) / scale).astype(int), source_height - 1)
        for col in range(0, width, block):
            cols = np.minimum(((np.arange(col, min(col + block, width)) + 0.5) / scale).astype(int), source_width - 1)
            # Read only the source window this block needs, so memory stays bounded by the block.
            part = np.asarray(source[int(rows[0]) : int(rows[-1]) + 1, int(cols[0]) : int(cols[-1]) + 1])
            target[row : row + rows.size, col : col + cols.size] = part[np.ix_(rows - rows[0], cols - cols[0])]
    return target


def export_outputs(slide, plan: InferencePlan, classes, instances, slide_dir: Path, work_dir: Path,
                   thumbnail_size: int) -> None:
    """Write mask.ome.tif, instances.ome.tif, nuclei.geojson and overlay.png."""
    from histo_gedl.outputs.geojson import features_from_label_source, write_geojson
    from histo_gedl.outputs.ome_tiff import write_pyramidal_ome_tiff
    from histo_gedl.outputs.overlay import downsample_labels, write_overlay

    mask0 = to_level0(classes, plan, work_dir, "classes")
    write_pyramidal_ome_tiff(slide_dir / "mask.ome.tif", mask0, plan.slide_mpp, kind="labels")
    release_free_memory()
    instances0 = to_level0(instances, plan, work_dir, "instances")
    write_pyramidal_ome_tiff(slide_dir / "instances.ome.tif", instances0, plan.slide_mpp, kind="labels")
    release_free_memory()
    features = features_from_label_source(
        lambda r0, r1, c0, c1: instances[r0:r1, c0:c1], instances.shape, block=4 * CHUNK, margin=64,
        scale=plan.scale,
    )
    write_geojson(slide_dir / "nuclei.geojson", features)
    release_free_memory()
    thumbnail = slide.get_thumbnail(thumbnail_size)
    height, width = thumbnail.shape[:2]
    write_overlay(slide_dir / "overlay.png", thumbnail, downsample_labels(instances0, (width, height)))


def infer_slide(slide_path: str | Path, out_dir: str | Path, predictor: TilePredictor, model_info: dict,
                options: InferenceOptions) -> SlideResult:
    """Segment one slide and write its outputs to ``out_dir/<slide name>/``.

    Args:
        slide_path: slide file.
        out_dir: output folder; created when missing.
        predictor: model wrapper (see :class:`~histo_gedl.inference.predict.ModelPredictor`).
        model_info: at least ``name``, ``sha256`` and ``mpp`` of the model,
            recorded in the summary and checked on resume.
        options: run settings.

    Raises:
        HistoGedlError: unreadable slide, unusable output folder, or a
            resume that does not match the interrupted run.
    """
    from histo_gedl.slides import open_slide

    started = time.perf_counter()
    stage_seconds: dict[str, float] = {}
    with open_slide(slide_path, slide_mpp=options.slide_mpp) as slide:
        # Fail on a missing mpp before anything is written for this slide.
        slide.require_mpp()
        slide_dir, finished = prepare_output_dir(Path(out_dir), slide.name, options.resume, options.overwrite)
        if finished:
            earlier = json.loads((slide_dir / SUMMARY_NAME).read_text())["model"]
            if earlier.get("sha256") != model_info["sha256"]:
                raise HistoGedlError(
                    f"{slide_dir} was finished with model {earlier.get('name')} (SHA-256 "
                    f"{str(earlier.get('sha256'))[:12]}...), not {model_info['name']}; pass --overwrite to "
                    "run the new model"
                )
            log.info("%s: already finished in %s, skipped", slide.name, slide_dir)
            return SlideResult(str(slide_path), "skipped", str(slide_dir))
        work_dir = slide_dir / PARTIAL_DIR
        log.info("%s: start (%dx%d px, %s)", slide.name, *slide.dimensions, slide.backend)

        plan_path = work_dir / "plan.json"
        run_key = {"model_sha256": model_info["sha256"], "stitch": options.stitch}
        if plan_path.exists():
            saved = json.loads(plan_path.read_text())
            if saved["run"] != run_key:
                changed = ", ".join(
                    f"{key} was {saved['run'].get(key)!r}, now {value!r}"
                    for key, value in run_key.items() if saved["run"].get(key) != value
                )
                raise HistoGedlError(
                    f"{slide_dir} contains an interrupted run with other settings ({changed}); "
                    "pass --overwrite to start over with the new ones"
                )
            if options.stitch == "gaussian":
                raise HistoGedlError(
                    "gaussian stitching accumulates tiles and cannot be resumed; pass --overwrite to start over"
                )
            plan, facts = InferencePlan.from_dict(saved["plan"]), saved["facts"]
            canvas = ProbabilityCanvas.open(work_dir / "canvas", options.stitch)
            log.info("%s: resuming", slide.name)
        else:
            began = time.perf_counter()
            try:
                plan, facts = make_plan(slide, predictor, model_info["mpp"], options)
            except HistoGedlError:
                # Nothing was computed yet, so leave no interrupted run behind.
                shutil.rmtree(work_dir, ignore_errors=True)
                if not any(slide_dir.iterdir()):
                    slide_dir.rmdir()
                raise
            stage_seconds["plan"] = time.perf_counter() - began
            canvas = ProbabilityCanvas.create(work_dir / "canvas", len(predictor.classes), plan.canvas_size, options.stitch)
            _write_json(plan_path, {"run": run_key, "plan": plan.to_dict(), "facts": facts})

        began = time.perf_counter()
        transform = stain_transform(slide, model_info.get("stain_normalisation"))
        stage_seconds.update(
            predict_tiles(slide, plan, predictor, canvas, work_dir / "done.json", options.batch_size, transform)
        )
        stage_seconds["predict_total"] = time.perf_counter() - began
        release_free_memory()
        log.debug("%s: predicted %d tiles in %.1f s", slide.name, len(plan.tiles), stage_seconds["predict_total"])

        began = time.perf_counter()
        instance_options = {"min_area": options.min_nucleus_area, **model_info.get("postprocess", {})}
        classes, instances, count = postprocess(canvas, work_dir, instance_options)
        stage_seconds["postprocess"] = time.perf_counter() - began
        release_free_memory()
        log.debug("%s: post-processed in %.1f s", slide.name, stage_seconds["postprocess"])

        began = time.perf_counter()
        export_outputs(slide, plan, classes, instances, slide_dir, work_dir, options.thumbnail_size)
        stage_seconds["export"] = time.perf_counter() - began

        summary = {
            "slide": str(Path(slide_path).resolve()),
            "slide_dimensions": list(slide.dimensions),
            "slide_mpp": plan.slide_mpp,
            "read_mpp": plan.read_mpp,
            "model": model_info,
            "options": asdict(options),
            # What the watershed used: the model's own settings override min_nucleus_area.
            "postprocess": instance_options,
            "predictor": {
                key: getattr(predictor, key) for key in ("tta", "device", "micro_batch") if hasattr(predictor, key)
            },
            "tiles": len(plan.tiles),
            "tile_core": plan.core,
            "tile_halo": plan.halo,
            "nuclei": count,
            "tissue_area_mm2": facts.get("tissue_area_mm2"),
            "seconds": {k: round(v, 3) for k, v in stage_seconds.items()},
            "wall_seconds": round(time.perf_counter() - started, 3),
            "versions": _versions(),
            "finished": True,
        }
        _write_json(slide_dir / SUMMARY_NAME, summary)
        shutil.rmtree(work_dir, ignore_errors=True)
        log.info("%s: finished, %d nuclei in %.1f s", slide.name, count, summary["wall_seconds"])
        return SlideResult(str(slide_path), "finished", str(slide_dir), nuclei=count)


def infer_slides(slide_paths: list[str | Path], out_dir: str | Path, predictor: TilePredictor,
                 model_info: dict, options: InferenceOptions) -> list[SlideResult]:
    """Run :func:`infer_slide` on each slide; a failing slide is logged and the others go on."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidParameterError(f"output path {out_dir} exists and is a file; pass a folder for --out")
    results = []
    for number, path in enumerate(slide_paths, start=1):
        try:
            results.append(infer_slide(path, out_dir, predictor, model_info, options))
        except HistoGedlError as error:
            # The error itself goes into the result, which the caller reports.
            if number < len(slide_paths):
                log.warning("%s: failed (%s), continuing with the next slide", path, type(error).__name__)
            results.append(SlideResult(str(path), "failed", error=str(error)))
    return results


def _versions() -> dict:
    import torch

    return {
        "histo_gedl": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
