"""Draw nucleus outlines on a slide thumbnail and save it as PNG."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from skimage.segmentation import find_boundaries

from histo_gedl.errors import InvalidParameterError
from histo_gedl.outputs._atomic import atomic_path

log = logging.getLogger(__name__)

BOUNDARY_MODES = ("inner", "outer", "thick")


def downsample_labels(labels: Any, size: tuple[int, int]) -> np.ndarray:
    """Shrink a label or class map to ``size`` by picking the nearest pixel.

    Output pixel ``[i, j]`` takes source pixel ``[floor((i + 0.5) * H / h),
    floor((j + 0.5) * W / w)]``, the source pixel under its centre, so ids are
    never mixed. For a zarr array only the selected pixels are copied out,
    although zarr decodes every chunk that contains one of them.

    Args:
        labels: Labels or class map, shape (H, W), a numpy or zarr array.
        size: Output size as (width, height) in pixels, each between 1 and the
            source size.

    Returns:
        The shrunk map, shape (height, width), same dtype as ``labels``.

    Raises:
        InvalidParameterError: If ``labels`` is not 2-D or ``size`` is out of range.
    """
    shape = tuple(getattr(labels, "shape", ()))
    if len(shape) != 2:
        raise InvalidParameterError(f"labels must be a 2-D (H, W) array, got shape {shape}")
    if len(size) != 2:
        raise InvalidParameterError(f"size must be (width, height), got {size!r}")
    width, height = int(size[0]), int(size[1])
    source_height, source_width = shape
    if not (1 <= width <= source_width and 1 <= height <= source_height):
        raise InvalidParameterError(
            f"size (width, height) = {size} must be between (1, 1) and the source size "
            f"{(source_width, source_height)}"
        )
    rows = ((np.arange(height) + 0.5) * source_height / height).astype(np.int64)
    cols = ((np.arange(width) + 0.5) * source_width / width).astype(np.int64)
    if isinstance(labels, np.ndarray):
        return labels[np.ix_(rows, cols)]
    # zarr arrays support orthogonal selection with index lists.
    return np.asarray(labels.oindex[rows, cols])


def draw_outlines(
    thumbnail_rgb: np.ndarray,
    labels: np.ndarray,
    color: tuple[int, int, int] = (0, 255, 0),
    mode: str = "inner",
) -> np.ndarray:
    """Colour the boundary pixels of every labelled region in a copy of the thumbnail.

    Boundaries come from :func:`skimage.segmentation.find_boundaries`, so a
    line is drawn wherever the label changes: around each nucleus of an
    instance map, or between classes of a class map.

    Args:
        thumbnail_rgb: Thumbnail, shape (h, w, 3), uint8 RGB.
        labels: Labels or class map at thumbnail scale, shape (h, w), integer, 0 background.
        color: Outline colour (r, g, b), each 0..255.
        mode: "inner" (pixels inside the objects), "outer" (pixels outside)
            or "thick" (both), as in find_boundaries.

    Returns:
        The thumbnail with outlines, shape (h, w, 3), uint8.

    Raises:
        InvalidParameterError: On a shape mismatch, bad dtype, colour or mode.
    """
    thumbnail = np.asarray(thumbnail_rgb)
    labels = np.asarray(labels)
    if thumbnail.ndim != 3 or thumbnail.shape[2] != 3 or thumbnail.dtype != np.uint8:
        raise InvalidParameterError(
            f"thumbnail_rgb must be (h, w, 3) uint8, got shape {thumbnail.shape} and dtype {thumbnail.dtype}"
        )
    if labels.shape != thumbnail.shape[:2]:
        raise InvalidParameterError(
            f"labels shape {labels.shape} differs from thumbnail size {thumbnail.shape[:2]}; "
            "shrink the labels with downsample_labels first"
        )
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise InvalidParameterError(f"labels must be integer, got dtype {labels.dtype}")
    if len(color) != 3 or not all(isinstance(c, (int, np.integer)) and 0 <= c <= 255 for c in color):
        raise InvalidParameterError(f"color must be (r, g, b) integers in 0..255, got {color!r}")
    if mode not in BOUNDARY_MODES:
        raise InvalidParameterError(f"mode must be one of {BOUNDARY_MODES}, got {mode!r}")

    boundaries = find_boundaries(labels, mode=mode, background=0)
    overlay = thumbnail.copy()
    overlay[boundaries] = np.asarray(color, dtype=np.uint8)
    return overlay


def write_overlay(
    path: str | os.PathLike[str],
    thumbnail_rgb: np.ndarray,
    labels: np.ndarray,
    color: tuple[int, int, int] = (0, 255, 0),
    mode: str = "inner",
) -> Path:
    """Draw outlines with :func:`draw_outlines` and write the result as a PNG.

    The file appears at ``path`` only when complete: it is written under a
    temporary name in the same folder and then renamed.

    Args:
        path: Output PNG file.
        thumbnail_rgb: Thumbnail, shape (h, w, 3), uint8 RGB.
        labels: Labels or class map at thumbnail scale, shape (h, w), integer.
        color: Outline colour (r, g, b), each 0..255.
        mode: "inner", "outer" or "thick", see :func:`draw_outlines`.

    Returns:
        The path written.

    Raises:
        InvalidParameterError: On bad arrays or options, or a missing output folder.
    """
    final = Path(path)
    if not final.parent.is_dir():
        raise InvalidParameterError(f"output folder {final.parent} does not exist; create it first")
    overlay = draw_outlines(thumbnail_rgb, labels, color=color, mode=mode)
    with atomic_path(final) as temporary:
        Image.fromarray(overlay).save(temporary, format="PNG")
    log.info("wrote overlay %s (%dx%d)", final, overlay.shape[1], overlay.shape[0])
    return final
