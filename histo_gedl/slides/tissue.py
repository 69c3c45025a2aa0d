"""Find tissue on a slide at low resolution.

Stained tissue is coloured and empty glass is nearly grey-white, so the
saturation channel separates them. Otsu's method picks the threshold, which
is then clamped so that an image of glass alone finds no tissue and an image
that is tissue from edge to edge does not lose its paler half.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage import filters, morphology

from histo_gedl.errors import InvalidParameterError
from histo_gedl.slides.slide import Slide, validate_mpp

log = logging.getLogger(__name__)

#: Tissue methods that :func:`detect_tissue` accepts.
TISSUE_METHODS = ("otsu",)

#: Saturation (0 to 1) below which a pixel is never tissue. The glass of
#: the CMU-1 sample region measures under 0.02 after the blur below.
MIN_SATURATION = 0.07

#: Saturation above which a pixel is always tissue before the morphology
#: steps, even when Otsu's threshold is higher because the whole image is tissue.
MAX_SATURATION_THRESHOLD = 0.15

#: Tissue pieces and holes smaller than this (in µm²) are removed or filled.
MIN_OBJECT_AREA_UM2 = 2500.0
MAX_HOLE_AREA_UM2 = 10000.0

#: Radius of the closing that joins nearby tissue fragments, in µm.
CLOSING_RADIUS_UM = 16.0

#: The mask is made finer than the requested mpp where needed to have at
#: least this many pixels along the slide's longer side.
MIN_MASK_SIDE = 256


@dataclass(frozen=True)
class TissueMask:
    """Tissue mask of a slide at low resolution.

    Mask pixel ``[row, col]`` covers the level-0 rectangle from
    ``(col * downsample, row * downsample)`` with sides ``downsample``.

    Attributes:
        mask: bool array of shape (h, w); True where there is tissue.
        mpp: Micrometres per mask pixel.
        downsample: Level-0 pixels per mask pixel.
    """

    mask: np.ndarray
    mpp: float
    downsample: float

    def fraction(self, location: Sequence[float], size_level0: Sequence[float]) -> float:
        """Return the tissue fraction of a level-0 rectangle.

        Mask pixels count by the area they share with the rectangle; the
        part of the rectangle outside the slide counts as no tissue.

        Args:
            location: ``(x, y)`` of the top-left corner in level-0 pixels.
            size_level0: ``(width, height)`` in level-0 pixels, both above 0.

        Returns:
            Tissue area over rectangle area, from 0 to 1.

        Raises:
            InvalidParameterError: A size entry is not above 0.
        """
        width, height = (float(value) for value in size_level0)
        if not (width > 0 and height > 0):
            raise InvalidParameterError(
                f"invalid rectangle size {tuple(size_level0)!r}: pass (width, height) above 0"
            )
        x, y = (float(value) for value in location)
        column_weights = _overlaps(x / self.downsample, width / self.downsample, self.mask.shape[1])
        row_weights = _overlaps(y / self.downsample, height / self.downsample, self.mask.shape[0])
        tissue = row_weights @ self.mask.astype(np.float64) @ column_weights
        return float(tissue / ((width / self.downsample) * (height / self.downsample)))


def _overlaps(start: float, length: float, count: int) -> np.ndarray:
    """Return the length that each unit cell ``[i, i + 1)``, i < count, shares with ``[start, start + length)``."""
    edges = np.arange(count + 1, dtype=np.float64)
    return np.clip(np.minimum(edges[1:], start + length) - np.maximum(edges[:-1], start), 0.0, None)


def detect_tissue(slide: Slide, mpp: float = 8.0, method: str = "otsu") -> TissueMask:
    """Find tissue on ``slide`` at about ``mpp`` micrometres per pixel.

    The slide is read at ``mpp``, or finer for small images so that the
    mask has at least 256 pixels along the longer side (never finer than
    level 0). Pixels whose saturation is above Otsu's threshold, clamped to
    0.07 to 0.15, are tissue. Then gaps are closed with a 16 µm disk, pieces
    under 2500 µm² are removed, and holes under 10000 µm² are filled.

    Args:
        slide: An open slide with a known mpp.
        mpp: Mask resolution in micrometres per pixel.
        method: ``"otsu"``, the only method so far.

    Returns:
        The mask and its resolution.

    Raises:
        InvalidParameterError: ``mpp`` is not a finite number above 0, or
            ``method`` is unknown.
        MissingMppError: The slide's mpp is unknown.
    """
    mpp = validate_mpp(mpp)
    if method not in TISSUE_METHODS:
        raise InvalidParameterError(
            f"invalid tissue method {method!r}: choose one of {', '.join(TISSUE_METHODS)}"
        )
    slide_mpp = slide.require_mpp()
    longer_side_um = max(slide.dimensions) * slide_mpp
    mask_mpp = max(slide_mpp, min(mpp, longer_side_um / MIN_MASK_SIDE))
    downsample = mask_mpp / slide_mpp
    width, height = slide.dimensions
    size = (max(1, math.ceil(width / downsample)), max(1, math.ceil(height / downsample)))
    image = slide.read_region((0, 0), size, mask_mpp)

    mask = _threshold_saturation(image)
    pixel_area = mask_mpp**2
    mask = _close(mask, radius=max(1, round(CLOSING_RADIUS_UM / mask_mpp)))
    mask = _remove_small_components(mask, MIN_OBJECT_AREA_UM2 / pixel_area)
    mask = ~_remove_small_components(~mask, MAX_HOLE_AREA_UM2 / pixel_area)
    log.info("%s: tissue covers %.1f%% of the mask at %.3g µm/px", slide.path, 100 * mask.mean(), mask_mpp)
    return TissueMask(mask=mask, mpp=mask_mpp, downsample=downsample)


def _remove_small_components(mask: np.ndarray, min_area: float) -> np.ndarray:
    """Return (h, w) bool ``mask`` without its 4-connected components of fewer than ``min_area`` pixels."""
    labels, _ = ndimage.label(mask)
    keep = np.bincount(labels.ravel()) >= min_area
    keep[0] = False
    return keep[labels]


def _close(mask: np.ndarray, radius: int) -> np.ndarray:
    """Apply a morphological closing with a disk to (h, w) bool ``mask``.

    The mask is first extended by copying its edge pixels, so that tissue
    reaching the image border is not eroded there.
    """
    padded = np.pad(mask, radius, mode="edge")
    closed = ndimage.binary_closing(padded, structure=morphology.disk(radius))
    return closed[radius:-radius, radius:-radius]


def _threshold_saturation(image: np.ndarray) -> np.ndarray:
    """Return pixels of (h, w, 3) uint8 ``image`` that are saturated enough to be tissue, as (h, w) bool."""
    # HSV saturation, (max - min) / max, in float32: skimage's rgb2hsv works in
    # float64 with several full-size temporaries, about 0.5 GB for a 2500 px mask.
    brightest = image.max(axis=2)
    spread = (brightest - image.min(axis=2)).astype(np.float32)
    saturation = np.divide(spread, brightest, out=np.zeros_like(spread), where=brightest > 0)
    saturation = ndimage.gaussian_filter(saturation, sigma=1.0, mode="nearest", truncate=4.0)
    if np.ptp(saturation) > 0:
        threshold = float(filters.threshold_otsu(saturation))
    else:
        threshold = MIN_SATURATION
    threshold = min(max(threshold, MIN_SATURATION), MAX_SATURATION_THRESHOLD)
    log.debug("saturation threshold %.3f", threshold)
    return saturation > threshold
