"""Per-pixel training targets derived from instance labels."""

from __future__ import annotations

import numpy as np
from skimage.segmentation import find_boundaries

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2


def three_class_target(instances: np.ndarray) -> np.ndarray:
    """Return classes (H, W) uint8: 0 background, 1 nucleus interior, 2 nucleus boundary.

    The boundary is the one-pixel inner rim of each nucleus, so two touching
    nuclei are separated by two boundary pixels. With binary masks, whose
    connected components stand in for instances, only the outer rim of merged
    nuclei becomes boundary.

    Args:
        instances: (H, W) integer labels, 0 background.
    """
    target = np.zeros(instances.shape, dtype=np.uint8)
    target[instances > 0] = INTERIOR
    target[find_boundaries(instances, mode="inner") & (instances > 0)] = BOUNDARY
    return target
