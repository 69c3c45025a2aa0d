"""Resampling on an absolute pixel grid.

Every output pixel is computed from the source level by a rule that depends
only on the pixel's absolute position: blur the level with a Gaussian whose
width depends on the scale, then interpolate bilinearly at the pixel's centre.
Two reads that share output pixels therefore return the same values for them,
however the reads are cut into tiles.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import ndimage

#: Gaussian kernels are cut off at this many standard deviations (the SciPy default).
GAUSSIAN_TRUNCATE = 4.0

#: Source windows are kept under about this many pixels a side, by cutting the
#: output into blocks, to bound memory for reads far coarser than the level.
#: A float32 RGB window of this side takes 12 MiB.
MAX_WINDOW_SIDE = 1024

WindowReader = Callable[[int, int, int, int], np.ndarray]


def antialias_sigma(factor: float) -> float:
    """Return the Gaussian sigma, in source pixels, for shrinking by ``factor``.

    This is ``max(0, (factor - 1) / 2)``, the default of
    ``skimage.transform.resize`` with ``anti_aliasing=True`` (scikit-image 0.26).
    """
    return max(0.0, (factor - 1.0) / 2.0)


def _margin(sigma: float) -> int:
    # The blur reaches int(truncate * sigma + 0.5) pixels; bilinear
    # interpolation needs one more pixel on each side.
    return int(GAUSSIAN_TRUNCATE * sigma + 0.5) + 2


def resample(
    read_window: WindowReader,
    origin: tuple[float, float],
    size: tuple[int, int],
    factor: float,
) -> np.ndarray:
    """Resample a level to an output grid that is ``factor`` times coarser.

    Output pixel ``(row, col)`` has its centre at level coordinates
    ``u = origin_x + (col + 0.5) * factor - 0.5`` and
    ``v = origin_y + (row + 0.5) * factor - 0.5``, where integer level
    coordinates are pixel centres.

    Args:
        read_window: ``read_window(x, y, width, height)`` returns the level's
            pixels as uint8 array of shape (height, width, 3), padded with
            white where the rectangle leaves the level.
        origin: ``(x, y)`` of the output's top-left corner in level pixels.
        size: ``(width, height)`` of the output in output pixels.
        factor: Level pixels per output pixel; above 1 shrinks, below 1 enlarges.

    Returns:
        uint8 array of shape (height, width, 3).
    """
    width, height = size
    sigma = antialias_sigma(factor)
    margin = _margin(sigma)
    # Where the blur margins would fill most of a window, let windows grow so
    # that at least half of each one is the block itself.
    core = max(MAX_WINDOW_SIDE - 2 * margin, 2 * margin)
    block = max(1, int(core / max(factor, 1.0)))
    output = np.empty((height, width, 3), dtype=np.uint8)
    for row in range(0, height, block):
        for col in range(0, width, block):
            block_size = (min(block, width - col), min(block, height - row))
            output[row : row + block_size[1], col : col + block_size[0]] = _resample_block(
                read_window, origin, (col, row), block_size, factor, sigma, margin
            )
    return output


def _centres(origin: float, first: int, count: int, factor: float) -> np.ndarray:
    return origin + (np.arange(first, first + count) + 0.5) * factor - 0.5


def _resample_block(
    read_window: WindowReader,
    origin: tuple[float, float],
    first: tuple[int, int],
    size: tuple[int, int],
    factor: float,
    sigma: float,
    margin: int,
) -> np.ndarray:
    u = _centres(origin[0], first[0], size[0], factor)
    v = _centres(origin[1], first[1], size[1], factor)
    x0 = math.floor(u[0]) - margin
    y0 = math.floor(v[0]) - margin
    window_width = math.floor(u[-1]) + margin + 1 - x0 + 1
    window_height = math.floor(v[-1]) + margin + 1 - y0 + 1
    source = read_window(x0, y0, window_width, window_height).astype(np.float32)
    if sigma > 0:
        source = ndimage.gaussian_filter(
            source, sigma=(sigma, sigma, 0), mode="nearest", truncate=GAUSSIAN_TRUNCATE
        )

    # Bilinear interpolation, rows first and then columns.
    v_floor = np.floor(v)
    v_weight = (v - v_floor).astype(np.float32)[:, np.newaxis, np.newaxis]
    top = v_floor.astype(np.int64) - y0
    rows = source[top] * (1.0 - v_weight) + source[top + 1] * v_weight

    u_floor = np.floor(u)
    u_weight = (u - u_floor).astype(np.float32)[np.newaxis, :, np.newaxis]
    left = u_floor.astype(np.int64) - x0
    pixels = rows[:, left] * (1.0 - u_weight) + rows[:, left + 1] * u_weight
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
