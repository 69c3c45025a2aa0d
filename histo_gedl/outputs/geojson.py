"""Export nucleus instances as GeoJSON polygons that QuPath imports as detections.

Coordinate rule: pixel ``[row, col]`` of a label array covers the square
``col <= x < col + 1``, ``row <= y < row + 1`` in label pixels. A point
``(x, y)`` there maps to level-0 pixels as ``X = x * scale + offset_x`` and
``Y = y * scale + offset_y``. Here ``scale`` is the number of level-0 pixels
per label pixel, for example 2 for labels predicted at 0.5 µm/px on a
0.25 µm/px slide. ``offset`` is the level-0 position of the top-left corner
of label pixel ``[0, 0]``.

Each outline is the 0.5 iso-line of the nucleus mask between pixel centres
(:func:`skimage.measure.find_contours`). Its straight edges lie on pixel
edges, and each convex corner is cut by a triangle of 1/8 pixel, so the
polygon area is slightly below the pixel count before simplification.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from scipy import ndimage as ndi
from shapely.affinity import affine_transform
from shapely.geometry import MultiPolygon, Polygon, mapping
from shapely.geometry.polygon import orient
from skimage.measure import find_contours

from histo_gedl.errors import InvalidParameterError
from histo_gedl.outputs._atomic import atomic_path

log = logging.getLogger(__name__)

#: Callable that returns labels of shape (row1 - row0, col1 - col0) for the
#: window ``[row0:row1, col0:col1]`` of a label canvas.
LabelSource = Callable[[int, int, int, int], Any]

#: Decimal places kept in coordinates; 0.001 level-0 pixels is far below what
#: a viewer can show and keeps files small.
COORDINATE_DECIMALS = 3


def instances_to_features(
    labels: np.ndarray,
    scale: float = 1.0,
    offset: tuple[float, float] = (0.0, 0.0),
    classification: str = "Nucleus",
    color: tuple[int, int, int] = (255, 0, 0),
    simplify_tolerance: float = 0.25,
) -> list[dict[str, Any]]:
    """Convert instance labels to one GeoJSON Polygon feature per nucleus.

    Each feature follows QuPath's GeoJSON conventions: ``id`` is a random
    UUID string, ``properties.objectType`` is ``"detection"`` and
    ``properties.classification`` is ``{"name": classification, "color":
    [r, g, b]}``. ``properties.label`` stores the instance id. Holes in a
    nucleus are filled. A nucleus in several pieces keeps its largest piece,
    and so does an outline that is invalid after simplification and is
    repaired with :func:`shapely.make_valid`. Every geometry written is valid.

    Args:
        labels: Instance labels, shape (H, W), integer, 0 background.
        scale: Level-0 pixels per label pixel, > 0.
        offset: Level-0 (x, y) of the top-left corner of label pixel [0, 0].
        classification: Class name shown by QuPath.
        color: Class colour as (r, g, b), each 0..255.
        simplify_tolerance: Douglas-Peucker tolerance in label pixels, applied
            before scaling; 0 keeps every contour vertex.

    Returns:
        Features in order of increasing label id.

    Raises:
        InvalidParameterError: On a bad label array, scale, offset, colour or tolerance.
    """
    return list(_iter_features(labels, scale, offset, classification, color, simplify_tolerance))


def features_from_label_source(
    label_source: LabelSource,
    shape: tuple[int, int],
    block: int = 1024,
    margin: int = 128,
    scale: float = 1.0,
    offset: tuple[float, float] = (0.0, 0.0),
    classification: str = "Nucleus",
    color: tuple[int, int, int] = (255, 0, 0),
    simplify_tolerance: float = 0.25,
) -> Iterator[dict[str, Any]]:
    """Yield the features of a large label canvas, reading it block by block.

    Each ``block`` x ``block`` core is read with ``margin`` extra pixels on
    every side. A nucleus is emitted by the block whose core contains its
    centroid, so it is emitted once, and whole as long as it is narrower
    than ``margin``. A nucleus that touches an inner window edge may be cut and is
    logged as a warning. Memory stays bounded by one window of labels.

    Args:
        label_source: Called as ``label_source(row0, row1, col0, col1)``, it
            returns labels of shape (row1 - row0, col1 - col0), for example a
            slice of a zarr array.
        shape: Canvas size as (height, width) in label pixels.
        block: Side of a core block, in label pixels.
        margin: Context added on each side of a core, in label pixels.
        scale: See :func:`instances_to_features`.
        offset: See :func:`instances_to_features`.
        classification: See :func:`instances_to_features`.
        color: See :func:`instances_to_features`.
        simplify_tolerance: See :func:`instances_to_features`.

    Yields:
        Features, block by block in raster order.

    Raises:
        InvalidParameterError: On a bad shape, block or margin, or a window of the wrong shape.
    """
    if len(shape) != 2 or min(shape) < 1:
        raise InvalidParameterError(f"shape must be (height, width) with both >= 1, got {shape!r}")
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise InvalidParameterError(f"block must be an integer >= 1, got {block!r}")
    if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
        raise InvalidParameterError(f"margin must be an integer >= 0, got {margin!r}")
    height, width = int(shape[0]), int(shape[1])

    for core_row0 in range(0, height, block):
        for core_col0 in range(0, width, block):
            core_row1 = min(core_row0 + block, height)
            core_col1 = min(core_col0 + block, width)
            row0, row1 = max(core_row0 - margin, 0), min(core_row1 + margin, height)
            col0, col1 = max(core_col0 - margin, 0), min(core_col1 + margin, width)
            window = np.asarray(label_source(row0, row1, col0, col1))
            if window.shape != (row1 - row0, col1 - col0):
                raise InvalidParameterError(
                    f"label_source({row0}, {row1}, {col0}, {col1}) returned shape "
                    f"{window.shape}, expected {(row1 - row0, col1 - col0)}"
                )

            def in_core(row: float, col: float) -> bool:
                return (
                    core_row0 - 0.5 <= row + row0 < core_row1 - 0.5
                    and core_col0 - 0.5 <= col + col0 < core_col1 - 0.5
                )

            inner_edges = (row0 > 0, row1 < height, col0 > 0, col1 < width)
            window_offset = (offset[0] + col0 * scale, offset[1] + row0 * scale)
            yield from _iter_features(
                window, scale, window_offset, classification, color, simplify_tolerance, in_core, inner_edges
            )


def write_geojson(path: str | os.PathLike[str], features: Iterable[dict[str, Any]]) -> int:
    """Write features as a GeoJSON FeatureCollection, streaming one feature at a time.

    ``features`` may be a generator (for example
    :func:`features_from_label_source`), so a slide's nuclei need not fit in
    memory. The file appears at ``path`` only when complete.

    Args:
        path: Output file, usually ``.geojson``.
        features: GeoJSON Feature objects.

    Returns:
        The number of features written.

    Raises:
        InvalidParameterError: If an item is not a Feature or the output folder is missing.
    """
    final = Path(path)
    if not final.parent.is_dir():
        raise InvalidParameterError(f"output folder {final.parent} does not exist; create it first")

    count = 0
    with atomic_path(final) as temporary, open(temporary, "w", encoding="utf-8") as stream:
        stream.write('{"type": "FeatureCollection", "features": [\n')
        for feature in features:
            if not isinstance(feature, dict) or feature.get("type") != "Feature":
                raise InvalidParameterError(
                    f"item {count} is not a GeoJSON Feature dict: {str(feature)[:80]}"
                )
            if count:
                stream.write(",\n")
            stream.write(json.dumps(feature, separators=(",", ":"), ensure_ascii=False))
            count += 1
        stream.write("\n]}\n")
    log.info("wrote %d features to %s", count, final)
    return count


def _check_feature_options(
    labels: np.ndarray,
    scale: float,
    offset: tuple[float, float],
    classification: str,
    color: tuple[int, int, int],
    simplify_tolerance: float,
) -> None:
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise InvalidParameterError(
            f"labels must be a 2-D integer array, got shape {labels.shape} and dtype {labels.dtype}"
        )
    if labels.size and labels.min() < 0:
        raise InvalidParameterError(f"labels contain negative id {labels.min()}; use 0 for background")
    if not isinstance(classification, str) or not classification:
        raise InvalidParameterError(f"classification must be a non-empty class name, got {classification!r}")
    if not (np.isfinite(scale) and scale > 0):
        raise InvalidParameterError(f"scale must be > 0 level-0 pixels per label pixel, got {scale!r}")
    if len(offset) != 2 or not all(np.isfinite(value) for value in offset):
        raise InvalidParameterError(f"offset must be a finite (x, y) pair, got {offset!r}")
    if len(color) != 3 or not all(isinstance(c, (int, np.integer)) and 0 <= c <= 255 for c in color):
        raise InvalidParameterError(f"color must be (r, g, b) integers in 0..255, got {color!r}")
    if not (np.isfinite(simplify_tolerance) and simplify_tolerance >= 0):
        raise InvalidParameterError(f"simplify_tolerance must be >= 0 label pixels, got {simplify_tolerance!r}")


def _iter_features(
    labels: Any,
    scale: float,
    offset: tuple[float, float],
    classification: str,
    color: tuple[int, int, int],
    simplify_tolerance: float,
    keep: Callable[[float, float], bool] | None = None,
    inner_edges: tuple[bool, bool, bool, bool] = (False, False, False, False),
) -> Iterator[dict[str, Any]]:
    """Yield one feature per label; ``keep(row, col)`` filters by centroid in window pixels."""
    labels = np.asarray(labels)
    _check_feature_options(labels, scale, offset, classification, color, simplify_tolerance)
    ids, compact = _compact_labels(labels)
    boxes = ndi.find_objects(compact)
    height, width = labels.shape
    cut = 0

    for index, box in enumerate(boxes, start=1):
        if box is None:
            continue
        mask = compact[box] == index
        rows, cols = np.nonzero(mask)
        row_offset, col_offset = box[0].start, box[1].start
        if keep is not None and not keep(rows.mean() + row_offset, cols.mean() + col_offset):
            continue
        if _touches_edges(box, (height, width), inner_edges):
            cut += 1

        polygon = _mask_to_polygon(mask, simplify_tolerance)
        if polygon is None:
            continue
        polygon = affine_transform(
            polygon,
            [scale, 0.0, 0.0, scale, offset[0] + col_offset * scale, offset[1] + row_offset * scale],
        )
        polygon = _valid_polygon(shapely.set_precision(polygon, 10.0**-COORDINATE_DECIMALS))
        if polygon is None:
            continue
        yield _feature(polygon, int(ids[index]), classification, color)

    if cut:
        log.warning("%d nuclei touch an inner window edge and may be cut; increase margin", cut)


def _compact_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber labels 1..k; return (ids, compact) with ``ids[compact] == labels`` and ``ids[0] == 0``.

    Works on the labelled pixels only, so its temporary memory grows with the
    nuclei in the window, not with the window (``np.unique`` with
    ``return_inverse`` on the whole window made several int64 copies of it).
    """
    flat = labels.reshape(-1)
    where = np.flatnonzero(flat)
    ids, inverse = np.unique(flat[where], return_inverse=True)
    compact = np.zeros(flat.size, dtype=np.int32)
    compact[where] = inverse.astype(np.int32) + 1
    return np.concatenate(([0], ids)).astype(labels.dtype, copy=False), compact.reshape(labels.shape)


def _touches_edges(box: tuple[slice, slice], shape: tuple[int, int], inner_edges: tuple[bool, bool, bool, bool]) -> bool:
    top, bottom, left, right = inner_edges
    return (
        (top and box[0].start == 0)
        or (bottom and box[0].stop == shape[0])
        or (left and box[1].start == 0)
        or (right and box[1].stop == shape[1])
    )


def _mask_to_polygon(mask: np.ndarray, simplify_tolerance: float) -> Polygon | None:
    """Trace a mask crop into a valid polygon in crop pixel-edge coordinates (x = col)."""
    filled = np.pad(ndi.binary_fill_holes(mask), 1)
    contours = find_contours(filled.astype(np.float32), 0.5)
    pieces = []
    for contour in contours:
        if len(contour) < 4:
            continue
        # Contour points are (row, col) in the padded crop, pixel centres at
        # integers; -1 removes the padding and +0.5 moves to pixel-edge coordinates.
        piece = Polygon(contour[:, ::-1] - 0.5)
        if piece.area > 0:
            pieces.append(piece)
    if not pieces:
        return None
    polygon = max(pieces, key=lambda piece: piece.area)
    if simplify_tolerance > 0:
        polygon = polygon.simplify(simplify_tolerance, preserve_topology=True)
    return _valid_polygon(polygon)


def _valid_polygon(geometry: Any) -> Polygon | None:
    """Return a valid, counter-clockwise polygon, repairing with make_valid and keeping the largest piece."""
    if not geometry.is_valid:
        geometry = shapely.make_valid(geometry)
    polygon = _largest_polygon(geometry)
    if polygon is None or polygon.is_empty or polygon.area == 0:
        return None
    return orient(polygon, sign=1.0)


def _largest_polygon(geometry: Any) -> Polygon | None:
    if isinstance(geometry, Polygon):
        return geometry
    if isinstance(geometry, MultiPolygon):
        return max(geometry.geoms, key=lambda polygon: polygon.area)
    parts = [part for part in getattr(geometry, "geoms", []) if isinstance(part, (Polygon, MultiPolygon))]
    polygons = [p for part in parts for p in (part.geoms if isinstance(part, MultiPolygon) else [part])]
    return max(polygons, key=lambda polygon: polygon.area) if polygons else None


def _feature(polygon: Polygon, label: int, classification: str, color: tuple[int, int, int]) -> dict[str, Any]:
    geometry = mapping(polygon)
    return {
        "type": "Feature",
        "id": str(uuid.uuid4()),
        "geometry": {
            "type": "Polygon",
            "coordinates": [[list(point) for point in ring] for ring in geometry["coordinates"]],
        },
        "properties": {
            "objectType": "detection",
            "classification": {"name": classification, "color": [int(c) for c in color]},
            "label": label,
        },
    }
