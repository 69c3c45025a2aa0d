"""Reinhard stain normalisation: match the colour statistics of an image to a target.

Reinhard et al. (IEEE CG&A 2001) move each channel of an image in CIELAB
space to the target's mean and standard deviation:
``out = (lab - mean_source) / std_source * std_target + mean_target``.
Statistics are taken over tissue pixels only (not near-white glass), so the
amount of background does not shift them. The map is the same for every
pixel, so applying one slide's statistics to each of its tiles gives the same
result however the slide is tiled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.color import lab2rgb, rgb2lab

from histo_gedl.errors import InvalidParameterError

#: Pixels with CIELAB lightness above this count as glass, not tissue.
GLASS_LIGHTNESS = 88.0


@dataclass(frozen=True)
class LabStatistics:
    """Per-channel mean and standard deviation in CIELAB (L, a, b)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict) -> "LabStatistics":
        return cls(tuple(data["mean"]), tuple(data["std"]))


def lab_statistics(images: list[np.ndarray] | np.ndarray) -> LabStatistics:
    """Measure CIELAB statistics over the tissue pixels of RGB images (H, W, 3) uint8."""
    if isinstance(images, np.ndarray):
        images = [images]
    pixels = []
    for image in images:
        lab = rgb2lab(image).reshape(-1, 3)
        pixels.append(lab[lab[:, 0] < GLASS_LIGHTNESS])
    tissue = np.concatenate(pixels)
    if len(tissue) < 100:
        raise InvalidParameterError(
            f"too little tissue for stain statistics ({len(tissue)} pixels darker than L={GLASS_LIGHTNESS}); "
            "use an image with more tissue"
        )
    std = np.maximum(tissue.std(axis=0), 1e-3)
    return LabStatistics(tuple(float(v) for v in tissue.mean(axis=0)), tuple(float(v) for v in std))


def reinhard_normalise(image: np.ndarray, source: LabStatistics, target: LabStatistics) -> np.ndarray:
    """Map an RGB image (H, W, 3) uint8 from ``source`` statistics to ``target``; glass stays as it is."""
    lab = rgb2lab(image)
    glass = lab[..., 0] >= GLASS_LIGHTNESS
    mapped = (lab - np.array(source.mean)) / np.array(source.std) * np.array(target.std) + np.array(target.mean)
    mapped[glass] = lab[glass]
    rgb = lab2rgb(mapped)
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)
