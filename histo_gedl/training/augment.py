"""Augmentation for training on H&E tiles, built on albumentations.

Geometric: flips and quarter turns (which an exactly equivariant model does
not need but which cost nothing), optional arbitrary rotations for models
that are not exactly equivariant to them, and mild elastic deformation.
Photometric: blur and stain jitter in haematoxylin-eosin-DAB space, using
scikit-image's colour deconvolution.
"""

from __future__ import annotations

import albumentations as A
import numpy as np
from skimage.color import hed2rgb, rgb2hed


class HEDJitter(A.ImageOnlyTransform):
    """Scale and shift each stain channel in HED space: ``s' = s * (1 + a) + b``.

    ``a`` and ``b`` are drawn per image and channel from ``U(-scale, scale)``
    and ``U(-shift, shift)``. Works on RGB uint8 (H, W, 3) images.
    """

    def __init__(self, scale: float = 0.05, shift: float = 0.01, p: float = 0.5) -> None:
        super().__init__(p=p)
        self.scale = scale
        self.shift = shift

    def get_params(self) -> dict:
        rng = self.random_generator
        return {
            "alpha": rng.uniform(-self.scale, self.scale, size=3),
            "beta": rng.uniform(-self.shift, self.shift, size=3),
        }

    def apply(self, img: np.ndarray, alpha: np.ndarray, beta: np.ndarray, **params) -> np.ndarray:
        stains = rgb2hed(img)
        stains = stains * (1.0 + alpha) + beta
        rgb = hed2rgb(stains)
        return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scale", "shift")


def training_augmentation(patch_size: int, arbitrary_rotation: bool = False) -> A.Compose:
    """Return the augmentation pipeline for image and class-map patches of ``patch_size``.

    The pipeline crops a random ``patch_size`` square (padding with white and
    background where a tile is smaller), then applies the transforms above.
    """
    steps = [
        A.PadIfNeeded(patch_size, patch_size, border_mode=0, fill=255, fill_mask=0),
        A.RandomCrop(patch_size, patch_size),
        A.RandomRotate90(p=1.0),
        A.HorizontalFlip(p=0.5),
    ]
    if arbitrary_rotation:
        steps.append(A.Rotate(limit=180, border_mode=2, p=0.5))
    steps += [
        A.ElasticTransform(alpha=20, sigma=5, p=0.2),
        A.GaussianBlur(blur_limit=(3, 3), p=0.1),
        HEDJitter(scale=0.05, shift=0.01, p=0.7),
        A.RandomBrightnessContrast(0.1, 0.1, p=0.3),
    ]
    return A.Compose(steps)
