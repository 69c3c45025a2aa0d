"""Scoring predictions against labels, for validation and ``histo-gedl evaluate``.

Instances are made by the same post-processing that whole-slide inference
uses (:func:`histo_gedl.inference.postprocess.instances_from_probabilities`),
so the instance scores describe what a user gets.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from scipy import ndimage

from histo_gedl import metrics
from histo_gedl.inference.postprocess import instances_from_probabilities
from histo_gedl.inference.run import MIN_NUCLEUS_AREA
from histo_gedl.models.unet import SegmentationModel
from histo_gedl.slides.stain import LabStatistics, lab_statistics, reinhard_normalise

log = logging.getLogger(__name__)



def postprocess_options(model: SegmentationModel) -> dict:
    """Return the instance post-processing settings stored with a model, with defaults filled in.

    Whole-slide inference and evaluation both use these, so scores describe
    what users get. Keys are the options of
    :func:`~histo_gedl.inference.postprocess.instances_from_probabilities`.
    """
    options = {"min_area": MIN_NUCLEUS_AREA}
    options.update(model.metadata.extra.get("postprocess", {}))
    return options


def score_prediction(
    probabilities: np.ndarray, instances: np.ndarray, has_instances: bool, postprocess: dict | None = None
) -> dict:
    """Score class probabilities (3, H, W) against instance labels (H, W).

    Returns pixel Dice and IoU of the nucleus foreground and, when the labels
    separate touching nuclei (``has_instances``), the aggregated Jaccard
    index and panoptic quality of the instances that ``postprocess`` (options
    of :func:`~histo_gedl.inference.postprocess.instances_from_probabilities`)
    makes.
    """
    foreground = probabilities[0] < 0.5
    truth = instances > 0
    scores = {"dice": metrics.dice(foreground, truth), "iou": metrics.iou(foreground, truth)}
    if has_instances:
        options = postprocess if postprocess is not None else {"min_area": MIN_NUCLEUS_AREA}
        predicted = instances_from_probabilities(probabilities, **options)
        scores["aji"] = metrics.aggregated_jaccard_index(predicted, instances)
        scores["pq"] = metrics.panoptic_quality(predicted, instances).pq
    return scores


def rotate_pair(image: np.ndarray, instances: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate an RGB image (H, W, 3) and its labels (H, W) counterclockwise by ``degrees``.

    Quarter turns are exact. Other angles enlarge the canvas to hold the whole
    rotated tile, fill the corners with white (image) and background
    (labels), and interpolate the image bilinearly and the labels by nearest
    neighbour.
    """
    if degrees % 90 == 0:
        turns = int(degrees // 90) % 4
        return np.rot90(image, turns).copy(), np.rot90(instances, turns).copy()
    rotated = ndimage.rotate(image, degrees, axes=(1, 0), reshape=True, order=1, cval=255.0)
    labels = ndimage.rotate(instances, degrees, axes=(1, 0), reshape=True, order=0, cval=0)
    return np.clip(rotated, 0, 255).astype(np.uint8), labels


def evaluate_model(
    model: SegmentationModel,
    images: str | Path,
    labels: list[str | Path],
    mpp: float | str | Path | None = None,
    rotate_degrees: float = 0.0,
    names: list[str] | None = None,
    roles: tuple[str, str] = ("images", "labels"),
) -> dict:
    """Predict and score every labelled tile; return per-tile and mean scores.

    Args:
        model: the model to score.
        images: folder of RGB tiles.
        labels: label folders searched in order (see :mod:`histo_gedl.training.data`).
        mpp: the images' resolution (number or CSV); None means the model's mpp.
        rotate_degrees: rotate each tile and its labels first, to measure how
            the model copes with orientations.
        names: score only these stems.
        roles: how errors name the image and label folders (e.g. the command
            line options).

    Returns:
        ``{"tiles": {name: scores}, "mean": scores, "model": name, "mpp": mpp,
        "rotate_degrees": angle}``; AJI and PQ appear only for tiles whose
        labels separate touching nuclei.
    """
    from histo_gedl.training.data import load_labelled_tiles
    from histo_gedl.training.trainer import predict_tile

    model.eval()
    target_mpp = model.metadata.mpp
    tiles = load_labelled_tiles(images, labels, target_mpp, mpp if mpp is not None else target_mpp, names, roles)
    stain = model.metadata.extra.get("stain_normalisation")
    per_tile = {}
    for tile in tiles:
        image = tile.image
        if stain:
            target = LabStatistics.from_dict(stain["target"])
            image = reinhard_normalise(image, lab_statistics(image), target)
        image, instances = rotate_pair(image, tile.instances, rotate_degrees)
        per_tile[tile.name] = score_prediction(
            predict_tile(model, image), instances, tile.has_instances, postprocess_options(model)
        )
        log.info("%s: %s", tile.name, per_tile[tile.name])
    # Keys keep the order of the per-tile scores (dice, iou, aji, pq), and a key that only some tiles have is kept.
    keys = list(dict.fromkeys(key for scores in per_tile.values() for key in scores))
    mean = {key: float(np.mean([s[key] for s in per_tile.values() if key in s])) for key in keys}
    return {
        "model": model.metadata.name,
        "mpp": target_mpp,
        "rotate_degrees": rotate_degrees,
        "tiles": per_tile,
        "mean": mean,
    }
