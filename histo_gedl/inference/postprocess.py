"""Turn per-pixel class probabilities into a class map and nucleus instances.

The segmentation model predicts three classes per pixel: 0 background,
1 nucleus interior and 2 nucleus boundary. The boundary class lets touching
nuclei be separated: interior regions become watershed markers, and the
flood stops where the interior probability is low, which is on the boundary
between two nuclei.

All sizes here are in pixels of the probability map, that is at the mpp the
model ran at, not at level 0 of the slide.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import disk
from skimage.segmentation import watershed

from histo_gedl.errors import InvalidParameterError

log = logging.getLogger(__name__)

NUM_CLASSES = 3
BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2

#: Callable that returns probabilities ``(3, row1 - row0, col1 - col0)`` for
#: the canvas window ``[row0:row1, col0:col1]``.
ProbabilitySource = Callable[[int, int, int, int], Any]


def _check_probabilities(probabilities: Any) -> np.ndarray:
    array = np.asarray(probabilities)
    if array.ndim != 3 or array.shape[0] != NUM_CLASSES:
        raise InvalidParameterError(
            f"probabilities must have shape (3, H, W) for background, interior and "
            f"boundary, got shape {array.shape}; pass the softmax output of one image"
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise InvalidParameterError(
            f"probabilities must be a float array, got dtype {array.dtype}; "
            "apply softmax to the logits first"
        )
    return array


def _check_positive_int(name: str, value: int, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidParameterError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_threshold(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0.0 <= value < 1.0:
        raise InvalidParameterError(f"{name} must be a number in [0, 1), got {value!r}")


def class_map_from_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """Pick the most probable class of every pixel.

    Args:
        probabilities: Class probabilities or logits, shape (3, H, W), float.

    Returns:
        Class map, shape (H, W), uint8, with values 0 background, 1 interior
        and 2 boundary. Ties go to the lower class index.

    Raises:
        InvalidParameterError: If the shape is not (3, H, W) or the dtype is not float.
    """
    array = _check_probabilities(probabilities)
    return np.argmax(array, axis=0).astype(np.uint8)


def instances_from_probabilities(
    probabilities: np.ndarray,
    min_area: int = 16,
    interior_threshold: float = 0.5,
    foreground_threshold: float = 0.5,
    marker_erosion: int = 0,
    min_marker_area: int = 4,
) -> np.ndarray:
    """Label nucleus instances by a marker-controlled watershed.

    Steps: markers are the 4-connected components of ``p_interior >
    interior_threshold``, each eroded by a disk of radius ``marker_erosion``
    and dropped when smaller than ``min_marker_area``. The foreground is
    ``1 - p_background > foreground_threshold``. The markers are flooded over
    the foreground on the elevation ``-p_interior``, so two touching nuclei
    meet on their shared boundary. Objects smaller than ``min_area`` are
    removed, and the remaining ones are numbered 1..n in raster order of
    their first pixel. Foreground regions that contain no marker stay 0.

    Args:
        probabilities: Softmax output, shape (3, H, W), float, channels
            background, interior and boundary.
        min_area: Smallest nucleus kept, in pixels at the model's mpp.
        interior_threshold: Interior probability above which a pixel seeds a marker.
        foreground_threshold: Value of ``1 - p_background`` above which a pixel
            belongs to some nucleus.
        marker_erosion: Radius in pixels of the disk that erodes the interior
            mask before the markers are labelled; 0 means no erosion.
        min_marker_area: Smallest marker kept, in pixels after erosion.

    Returns:
        Instance labels, shape (H, W), uint32, 0 background and 1..n nuclei.

    Raises:
        InvalidParameterError: On a bad shape, dtype, threshold or size.
    """
    array = _check_probabilities(probabilities)
    _check_positive_int("min_area", min_area)
    _check_positive_int("min_marker_area", min_marker_area)
    _check_positive_int("marker_erosion", marker_erosion, minimum=0)
    _check_threshold("interior_threshold", interior_threshold)
    _check_threshold("foreground_threshold", foreground_threshold)

    p_background = array[BACKGROUND].astype(np.float32, copy=False)
    p_interior = array[INTERIOR].astype(np.float32, copy=False)

    foreground = (1.0 - p_background) > foreground_threshold
    seeds = (p_interior > interior_threshold) & foreground
    if marker_erosion > 0:
        seeds = ndi.binary_erosion(seeds, structure=disk(marker_erosion))

    markers, num_markers = ndi.label(seeds)
    if num_markers == 0:
        return np.zeros(foreground.shape, dtype=np.uint32)
    marker_areas = np.bincount(markers.ravel(), minlength=num_markers + 1)
    small_markers = marker_areas < min_marker_area
    small_markers[0] = False
    markers[small_markers[markers]] = 0

    labels = watershed(-p_interior, markers=markers, mask=foreground)
    return _drop_small_and_renumber(labels, min_area)


def _drop_small_and_renumber(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Remove objects under ``min_area`` pixels and number the rest 1..n in raster order."""
    ids, first_index, areas = np.unique(labels.ravel(), return_index=True, return_counts=True)
    keep = (ids != 0) & (areas >= min_area)
    kept_ids = ids[keep][np.argsort(first_index[keep], kind="stable")]

    lookup = np.zeros(int(ids.max()) + 1, dtype=np.uint32)
    lookup[kept_ids] = np.arange(1, kept_ids.size + 1, dtype=np.uint32)
    return lookup[labels]


def label_instances_tiled(
    prob_source: ProbabilitySource,
    shape: tuple[int, int],
    out: Any,
    block: int = 1024,
    margin: int = 64,
    **instance_options: Any,
) -> int:
    """Label nuclei on a large canvas block by block, writing into ``out``.

    The canvas is cut into ``block`` x ``block`` cores. Each core is read
    with ``margin`` extra pixels on every side, labelled by
    :func:`instances_from_probabilities`, and only the nuclei whose centroid
    lies inside the core are written out. A nucleus that crosses a core
    border is therefore written once, whole, by one block. Each block writes
    only pixels that are still 0 in ``out``, so where two windows disagree
    on a pixel, the earlier block in raster order keeps it. A nucleus with
    more than half of its pixels already written is skipped as a duplicate.
    Ids are globally unique and numbered 1..n in block raster order.

    The result matches the untiled one up to a few pixels where touching
    nuclei meet, as long as no nucleus, together with the watershed context
    that decides its outline, is wider than ``margin``. Those pixels differ
    because the watershed breaks ties on flat probabilities by flooding
    order, which depends on the window. A kept nucleus that touches an inner
    window edge may be cut, so it is logged as a warning; increase
    ``margin`` if that happens.

    Memory: one window of probabilities, ``3 x (block + 2 margin)^2``
    floats, plus the labels of that window.

    Args:
        prob_source: Called as ``prob_source(row0, row1, col0, col1)``, it
            returns probabilities of shape (3, row1 - row0, col1 - col0).
        shape: Canvas size as (height, width) in pixels, the array shape of ``out``.
        out: Output array, shape (height, width), uint32, all 0 on entry. A
            numpy array or a zarr array, written by window slices.
        block: Side of a core block, in pixels at the model's mpp.
        margin: Context added on each side of a core, in pixels.
        **instance_options: Passed to :func:`instances_from_probabilities`
            (``min_area``, thresholds, marker settings).

    Returns:
        The number of nuclei written, which is also the largest id in ``out``.

    Raises:
        InvalidParameterError: On a bad shape, block, margin, output array, or
            a ``prob_source`` result of the wrong shape.
    """
    height, width = _check_canvas(shape, out, block, margin)
    next_id = 1
    for row0 in range(0, height, block):
        for col0 in range(0, width, block):
            core = (row0, min(row0 + block, height), col0, min(col0 + block, width))
            next_id = _label_one_block(prob_source, (height, width), out, core, margin, next_id, instance_options)
    count = next_id - 1
    log.debug("labelled %d nuclei on a %dx%d canvas in blocks of %d", count, height, width, block)
    return count


def _check_canvas(shape: tuple[int, int], out: Any, block: int, margin: int) -> tuple[int, int]:
    if len(shape) != 2 or min(shape) < 1:
        raise InvalidParameterError(f"shape must be (height, width) with both >= 1, got {shape!r}")
    height, width = int(shape[0]), int(shape[1])
    _check_positive_int("block", block)
    _check_positive_int("margin", margin, minimum=0)
    out_shape = tuple(getattr(out, "shape", ()))
    if out_shape != (height, width):
        raise InvalidParameterError(
            f"out must be an array of shape {(height, width)}, got shape {out_shape}; "
            "allocate it with the canvas shape"
        )
    if np.dtype(out.dtype) != np.uint32:
        raise InvalidParameterError(f"out must have dtype uint32, got {out.dtype}")
    return height, width


def _label_one_block(
    prob_source: ProbabilitySource,
    canvas: tuple[int, int],
    out: Any,
    core: tuple[int, int, int, int],
    margin: int,
    next_id: int,
    instance_options: dict[str, Any],
) -> int:
    """Label one window, write the nuclei centred in its core, and return the next free id."""
    height, width = canvas
    core_row0, core_row1, core_col0, core_col1 = core
    row0, row1 = max(core_row0 - margin, 0), min(core_row1 + margin, height)
    col0, col1 = max(core_col0 - margin, 0), min(core_col1 + margin, width)

    window = np.asarray(prob_source(row0, row1, col0, col1))
    expected = (NUM_CLASSES, row1 - row0, col1 - col0)
    if window.shape != expected:
        raise InvalidParameterError(
            f"prob_source({row0}, {row1}, {col0}, {col1}) returned shape {window.shape}, "
            f"expected {expected}"
        )
    labels = instances_from_probabilities(window, **instance_options)
    count = int(labels.max())
    if count == 0:
        return next_id

    index = np.arange(1, count + 1)
    centroids = np.asarray(ndi.center_of_mass(np.ones(labels.shape, np.uint8), labels, index))
    centroid_rows = centroids[:, 0] + row0
    centroid_cols = centroids[:, 1] + col0
    in_core = (
        (centroid_rows >= core_row0 - 0.5)
        & (centroid_rows < core_row1 - 0.5)
        & (centroid_cols >= core_col0 - 0.5)
        & (centroid_cols < core_col1 - 0.5)
    )
    core_ids = index[in_core]
    if core_ids.size == 0:
        return next_id

    _warn_cut_nuclei(labels, core_ids, canvas, (row0, row1, col0, col1))

    # A nucleus whose pixels are mostly written already was kept by an
    # earlier block. That window saw a slightly different outline, which put
    # the centroid on the other side of the border.
    target = np.asarray(out[row0:row1, col0:col1])
    free = target == 0
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    free_areas = np.bincount(labels[free], minlength=count + 1)
    core_ids = core_ids[2 * free_areas[core_ids] > areas[core_ids]]

    lookup = np.zeros(count + 1, dtype=np.uint32)
    lookup[core_ids] = np.arange(next_id, next_id + core_ids.size, dtype=np.uint32)
    new_ids = lookup[labels]
    writable = (new_ids != 0) & free
    target[writable] = new_ids[writable]
    out[row0:row1, col0:col1] = target
    return next_id + core_ids.size


def _warn_cut_nuclei(
    labels: np.ndarray,
    core_ids: np.ndarray,
    canvas: tuple[int, int],
    window: tuple[int, int, int, int],
) -> None:
    """Log kept nuclei that touch a window edge that is not also a canvas edge."""
    height, width = canvas
    row0, row1, col0, col1 = window
    edges = []
    if row0 > 0:
        edges.append(labels[0, :])
    if row1 < height:
        edges.append(labels[-1, :])
    if col0 > 0:
        edges.append(labels[:, 0])
    if col1 < width:
        edges.append(labels[:, -1])
    if not edges:
        return
    touching = np.intersect1d(np.concatenate(edges), core_ids)
    if touching.size:
        log.warning(
            "%d nuclei in window rows %d:%d, cols %d:%d touch the window edge and may be cut; "
            "increase margin",
            touching.size,
            row0,
            row1,
            col0,
            col1,
        )
