"""Write class maps, instance labels and RGB images as tiled pyramidal OME-TIFF.

The file stores level 0 in the first IFD and the reduced levels in its
SubIFDs, the pyramid layout of the OME-TIFF format, which tifffile reads as
one series with several levels. Each level is half the size of the one above (rounded up), reduced
by striding for labels so that ids stay exact, and by a 2 x 2 mean for images.

Memory stays bounded by a strip of tile rows, not the image: level 0 is read
from the source one tile row at a time, and the reduced levels are built one
strip at a time into temporary zarr arrays on disk next to the output (for a
numpy source, in memory, which adds at most a third of the source's size).

What OpenSlide 4.0.1 makes of these files (checked by tests/test_outputs_ome_tiff.py):
it opens them as ``generic-tiff`` and reports level 0 only, because it does
not follow SubIFDs. Its ``read_region`` decodes uint8 single-channel files as
grey RGBA, so a uint8 class map reads back exactly in each of R, G and B.
It reduces uint16 samples to their high byte, so uint16 ids do not survive,
and it raises ``OpenSlideError`` ("can not handle images with 32-bit samples")
on ``read_region`` of a uint32 file, although it opens it and reports its
dimensions. Read uint16 and uint32 label files with tifffile.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import zarr

from histo_gedl.errors import InvalidParameterError
from histo_gedl.outputs._atomic import atomic_path

log = logging.getLogger(__name__)

LABEL_DTYPES = (np.uint8, np.uint16, np.uint32)
#: Levels are built and written in blocks of one tile row by this many tiles,
#: so memory does not grow with the image's width.
BLOCK_TILES = 8
COMPRESSIONS = ("zlib", "lzw", "zstd", "jpeg", None)
#: Above this many uncompressed bytes in all levels the file is written as
#: BigTIFF, because classic TIFF offsets are 32-bit. Compression usually
#: keeps files far below it, but the final size is not known in advance.
BIGTIFF_THRESHOLD_BYTES = 2**31


def write_pyramidal_ome_tiff(
    path: str | os.PathLike[str],
    image: Any,
    mpp: float,
    tile_size: int = 256,
    compression: str | None = "zlib",
    min_level_size: int = 256,
    kind: str = "labels",
) -> Path:
    """Write a tiled, compressed, pyramidal OME-TIFF with the pixel size in µm.

    Levels: level 0 is ``image``; level k+1 has shape ``ceil(h_k / 2) x
    ceil(w_k / 2)``. Levels are added while the longer side of the last
    level is above ``min_level_size``, so the smallest level has a longer
    side of at most ``min_level_size`` (a level 0 that already fits gives a
    single level). Labels are reduced as ``level[::2, ::2]``. Images are
    reduced to the rounded mean of each 2 x 2 block, and the last row or
    column is repeated when a side is odd.

    The OME metadata gives PhysicalSizeX and PhysicalSizeY in µm for level
    0, and the TIFF resolution tags of every level carry the same pixel size
    in pixels per centimetre, scaled for that level.

    The file appears at ``path`` only when complete: it is written under a
    temporary name in the same folder and then renamed.

    Args:
        path: Output file; ``.ome.tif`` is the usual suffix.
        image: For ``kind="labels"``, shape (H, W) with dtype uint8 (class
            map), uint16 or uint32 (instance labels). For ``kind="image"``,
            shape (H, W, 3), uint8 RGB. A numpy array or a zarr array.
        mpp: Level-0 pixel size in µm per pixel, > 0.
        tile_size: Side of the square TIFF tiles in pixels, a multiple of 16.
        compression: "zlib", "lzw", "zstd", or None; "jpeg" too for
            ``kind="image"`` (it is lossy, so it is rejected for labels).
        min_level_size: Longer side, in pixels, at which the pyramid stops.
        kind: "labels" (nearest reduction) or "image" (mean reduction).

    Returns:
        The path written.

    Raises:
        InvalidParameterError: On a bad kind, dtype, shape, mpp, tile size,
            compression, level size, or a missing output folder.
    """
    _check_arguments(image, mpp, tile_size, compression, min_level_size, kind)
    final = Path(path)
    if not final.parent.is_dir():
        raise InvalidParameterError(f"output folder {final.parent} does not exist; create it first")

    shapes = pyramid_shapes(image.shape[:2], min_level_size)
    channels = image.shape[2:] if image.ndim == 3 else ()
    itemsize = np.dtype(image.dtype).itemsize * (channels[0] if channels else 1)
    bigtiff = sum(h * w for h, w in shapes) * itemsize > BIGTIFF_THRESHOLD_BYTES

    with tempfile.TemporaryDirectory(prefix=f".{final.name}.levels.", dir=final.parent) as scratch:
        levels = _build_levels(image, shapes, kind, tile_size, Path(scratch))
        with atomic_path(final) as temporary:
            _write_levels(temporary, levels, mpp, tile_size, compression, kind, bigtiff)
    log.info("wrote %s: %d levels, level 0 %dx%d, %.4f µm/px", final, len(shapes), shapes[0][1], shapes[0][0], mpp)
    return final


def pyramid_shapes(shape: tuple[int, int], min_level_size: int) -> list[tuple[int, int]]:
    """List the (height, width) of every pyramid level, level 0 first.

    Args:
        shape: Level-0 (height, width).
        min_level_size: Longer side at which halving stops (see
            :func:`write_pyramidal_ome_tiff`).

    Returns:
        Shapes from level 0 down; the last has a longer side <= ``min_level_size``
        unless level 0 already does, in which case it is the only one.
    """
    height, width = int(shape[0]), int(shape[1])
    shapes = [(height, width)]
    while max(height, width) > min_level_size:
        height, width = math.ceil(height / 2), math.ceil(width / 2)
        shapes.append((height, width))
    return shapes


def _check_arguments(
    image: Any, mpp: float, tile_size: int, compression: str | None, min_level_size: int, kind: str
) -> None:
    if kind not in ("labels", "image"):
        raise InvalidParameterError(f'kind must be "labels" or "image", got {kind!r}')
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        raise InvalidParameterError(
            f"image must be a numpy or zarr array, got {type(image).__name__}"
        )
    dtype = np.dtype(image.dtype)
    if kind == "labels":
        if len(image.shape) != 2 or dtype not in LABEL_DTYPES:
            raise InvalidParameterError(
                f"labels must be a 2-D (H, W) array of uint8, uint16 or uint32, got shape "
                f"{tuple(image.shape)} and dtype {dtype}; pass kind=\"image\" for RGB"
            )
    elif len(image.shape) != 3 or image.shape[2] != 3 or dtype != np.uint8:
        raise InvalidParameterError(
            f"an image must be (H, W, 3) uint8 RGB, got shape {tuple(image.shape)} and dtype {dtype}"
        )
    if min(image.shape[:2]) < 1:
        raise InvalidParameterError(f"image is empty: shape {tuple(image.shape)}")

    if isinstance(mpp, bool) or not isinstance(mpp, (int, float, np.floating, np.integer)):
        raise InvalidParameterError(f"mpp must be a number of µm per pixel, got {mpp!r}")
    if not (math.isfinite(mpp) and mpp > 0):
        raise InvalidParameterError(f"mpp must be a finite number > 0 (µm per pixel), got {mpp!r}")
    if isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size < 16 or tile_size % 16:
        raise InvalidParameterError(
            f"tile_size must be a positive multiple of 16 (a TIFF rule), got {tile_size!r}"
        )
    if compression not in COMPRESSIONS:
        raise InvalidParameterError(
            f"compression must be one of {COMPRESSIONS}, got {compression!r}"
        )
    if compression == "jpeg" and kind == "labels":
        raise InvalidParameterError(
            'compression "jpeg" is lossy and would change label values; use "zlib" for labels'
        )
    if isinstance(min_level_size, bool) or not isinstance(min_level_size, int) or min_level_size < 1:
        raise InvalidParameterError(f"min_level_size must be an integer >= 1, got {min_level_size!r}")


def _build_levels(
    image: Any, shapes: list[tuple[int, int]], kind: str, tile_size: int, scratch: Path
) -> list[Any]:
    """Compute the reduced levels, each from the one above, one block of :data:`BLOCK_TILES` tiles at a time."""
    levels = [image]
    channels = tuple(image.shape[2:])
    in_memory = isinstance(image, np.ndarray)
    for index, (height, width) in enumerate(shapes[1:], start=1):
        if in_memory:
            level = np.empty((height, width, *channels), dtype=image.dtype)
        else:
            level = zarr.create_array(
                store=str(scratch / f"level{index}.zarr"),
                shape=(height, width, *channels),
                chunks=(tile_size, tile_size, *channels),
                dtype=image.dtype,
            )
        above = levels[-1]
        block_width = BLOCK_TILES * tile_size
        for row0 in range(0, height, tile_size):
            row1 = min(row0 + tile_size, height)
            for col0 in range(0, width, block_width):
                col1 = min(col0 + block_width, width)
                block = np.asarray(above[2 * row0 : 2 * row1, 2 * col0 : 2 * col1])
                level[row0:row1, col0:col1] = _reduce(block, kind)
        levels.append(level)
    return levels


def _reduce(strip: np.ndarray, kind: str) -> np.ndarray:
    """Halve a strip: stride for labels, rounded 2 x 2 mean for images."""
    if kind == "labels":
        return strip[::2, ::2]
    pad_rows = strip.shape[0] % 2
    pad_cols = strip.shape[1] % 2
    if pad_rows or pad_cols:
        strip = np.pad(strip, ((0, pad_rows), (0, pad_cols), (0, 0)), mode="edge")
    total = strip.astype(np.uint16)
    total = total[0::2, 0::2] + total[1::2, 0::2] + total[0::2, 1::2] + total[1::2, 1::2]
    return ((total + 2) // 4).astype(np.uint8)


def _iter_tiles(level: Any, tile_size: int) -> Iterator[np.ndarray]:
    """Yield the tiles of a level in TIFF order (row by row), reading :data:`BLOCK_TILES` tiles at a time."""
    height, width = level.shape[:2]
    block_width = BLOCK_TILES * tile_size
    for row0 in range(0, height, tile_size):
        for block0 in range(0, width, block_width):
            block = np.asarray(level[row0 : row0 + tile_size, block0 : block0 + block_width])
            for col0 in range(0, block.shape[1], tile_size):
                yield np.ascontiguousarray(block[:, col0 : col0 + tile_size])


def _write_levels(
    path: Path,
    levels: list[Any],
    mpp: float,
    tile_size: int,
    compression: str | None,
    kind: str,
    bigtiff: bool,
) -> None:
    is_rgb = kind == "image"
    options: dict[str, Any] = {
        "tile": (tile_size, tile_size),
        "compression": compression,
        "photometric": "rgb" if is_rgb else "minisblack",
        "resolutionunit": "CENTIMETER",
    }
    metadata = {
        "axes": "YXS" if is_rgb else "YX",
        "PhysicalSizeX": float(mpp),
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": float(mpp),
        "PhysicalSizeYUnit": "µm",
    }
    level0 = levels[0]
    pixels_per_cm = 1e4 / float(mpp)
    with tifffile.TiffWriter(path, bigtiff=bigtiff, ome=True) as writer:
        writer.write(
            _iter_tiles(level0, tile_size),
            shape=tuple(level0.shape),
            dtype=level0.dtype,
            subifds=len(levels) - 1,
            metadata=metadata,
            resolution=(pixels_per_cm, pixels_per_cm),
            **options,
        )
        for level in levels[1:]:
            # Level sizes are rounded up, so the true scale is the size ratio.
            scale_y = level.shape[0] / level0.shape[0]
            scale_x = level.shape[1] / level0.shape[1]
            writer.write(
                _iter_tiles(level, tile_size),
                shape=tuple(level.shape),
                dtype=level.dtype,
                subfiletype=1,
                metadata=None,
                resolution=(pixels_per_cm * scale_x, pixels_per_cm * scale_y),
                **options,
            )
