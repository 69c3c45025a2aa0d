"""Per-pixel training targets derived from instance labels.

Labels that separate touching nuclei give every nucleus pixel a definite
class: interior or boundary. Binary masks do not: where nuclei touch, the
mask contains one blob, and calling all of it one nucleus would teach the model
to merge. :func:`binary_mask_target` therefore keeps full targets only for
blobs shaped like one nucleus and marks the inside of the others
:data:`UNKNOWN_FOREGROUND`, a pixel known to be nucleus whose interior or
boundary class is not known. :class:`~histo_gedl.training.losses.PartialDiceCELoss`
scores such pixels only on nucleus against background.
"""

from __future__ import annotations

import numpy as np
from skimage import measure
from skimage.segmentation import find_boundaries

from histo_gedl.errors import InvalidParameterError

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2
UNKNOWN_FOREGROUND = 3

# A connected component of a binary mask counts as one nucleus when it is this
# convex (area over convex-hull area) and at most this many times the median
# component area of its tile. On the 13 MoNuSeg tiles that have both binary and
# instance masks, resampled to 0.5 µm/px, these keep 71% of the components, of
# which 1.7% are in fact merged nuclei, and send 91% of the merged components
# to UNKNOWN_FOREGROUND.
MIN_SOLIDITY = 0.9
MAX_AREA_RATIO = 2.0


def check_boundary_width(boundary_width: int) -> int:
    """Return ``boundary_width`` as an int, or raise InvalidParameterError unless it is a whole number >= 1."""
    if isinstance(boundary_width, bool) or not isinstance(boundary_width, (int, np.integer)) or boundary_width < 1:
        raise InvalidParameterError(f"boundary_width must be a whole number >= 1, got {boundary_width!r}")
    return int(boundary_width)


def three_class_target(instances: np.ndarray, boundary_width: int = 1) -> np.ndarray:
    """Return classes (H, W) uint8: 0 background, 1 nucleus interior, 2 nucleus boundary.

    The boundary is the inner rim of each nucleus, ``boundary_width`` pixels
    thick, so two touching nuclei are separated by ``2 * boundary_width``
    boundary pixels. Where the second or a later layer would cover a small
    nucleus entirely, that layer stays interior, so such a nucleus keeps an
    interior and its side of the separation is thinner. The first layer is
    always boundary: a nucleus at most two pixels wide has no interior.

    Args:
        instances: (H, W) integer labels, 0 background.
        boundary_width: rim thickness in pixels, at least 1.
    """
    check_boundary_width(boundary_width)
    target = np.zeros(instances.shape, dtype=np.uint8)
    target[instances > 0] = INTERIOR
    remaining = np.asarray(instances).copy()
    for layer in range(boundary_width):
        rim = find_boundaries(remaining, mode="inner") & (remaining > 0)
        if layer > 0:
            # Keep as interior the nuclei that this layer would remove completely.
            vanishing = np.setdiff1d(np.unique(remaining[rim]), np.unique(remaining[~rim & (remaining > 0)]))
            rim &= ~np.isin(remaining, vanishing)
        target[rim] = BOUNDARY
        remaining[rim] = 0
    return target


def binary_mask_target(
    components: np.ndarray,
    min_solidity: float = MIN_SOLIDITY,
    max_area_ratio: float = MAX_AREA_RATIO,
    boundary_width: int = 1,
) -> np.ndarray:
    """Return classes (H, W) uint8 for a binary mask, with 3 marking nucleus pixels of unknown class.

    Components that are convex (solidity at least ``min_solidity``) and not
    large (area at most ``max_area_ratio`` times the median component area)
    are taken as single nuclei and get :func:`three_class_target`. Other
    components may be several touching nuclei: their outer rim is still
    boundary, and their inside becomes :data:`UNKNOWN_FOREGROUND`.

    Args:
        components: (H, W) connected-component labels of the mask, 0 background.
        boundary_width: rim thickness in pixels (see :func:`three_class_target`).
    """
    target = three_class_target(components, boundary_width)
    regions = measure.regionprops(components.astype(np.int32))
    if not regions:
        return target
    median_area = float(np.median([region.area for region in regions]))
    for region in regions:
        if region.solidity >= min_solidity and region.area <= max_area_ratio * median_area:
            continue
        rows, cols = region.coords[:, 0], region.coords[:, 1]
        inside = target[rows, cols] == INTERIOR
        target[rows[inside], cols[inside]] = UNKNOWN_FOREGROUND
    return target


def training_target(
    instances: np.ndarray, has_instances: bool, binary_masks: str = "partial", boundary_width: int = 1
) -> np.ndarray:
    """Return the training target for a tile.

    Tiles with instance labels get :func:`three_class_target`. Binary masks
    get :func:`binary_mask_target` when ``binary_masks`` is "partial", and
    :func:`three_class_target` of their connected components when it is
    "components". ``boundary_width`` is the rim thickness in pixels for both.
    """
    if has_instances or binary_masks == "components":
        return three_class_target(instances, boundary_width)
    return binary_mask_target(instances, boundary_width=boundary_width)
