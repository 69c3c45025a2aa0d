"""Reinhard stain normalisation on real tiles."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from histo_gedl.errors import InvalidParameterError
from histo_gedl.slides.stain import lab_statistics, reinhard_normalise


@pytest.fixture(scope="module")
def two_stains(monuseg_dir, shared_data):
    he = tifffile.imread(monuseg_dir / "images" / "TCGA-21-5784-01Z-00-DX1.tif")[:300, :300]
    with Image.open(shared_data / "cpm15" / "images" / "image01.png") as handle:
        other = np.asarray(handle.convert("RGB"))[:300, :300]
    return he, other


def test_normalised_image_takes_target_statistics(two_stains):
    he, other = two_stains
    target = lab_statistics(he)
    normalised = reinhard_normalise(other, lab_statistics(other), target)
    measured = lab_statistics(normalised)
    # Clipping to the RGB gamut and rounding move the statistics a little.
    np.testing.assert_allclose(measured.mean, target.mean, atol=3.0)
    np.testing.assert_allclose(measured.std, target.std, rtol=0.25)


def test_normalisation_to_own_statistics_is_near_identity(two_stains):
    he, _ = two_stains
    statistics = lab_statistics(he)
    normalised = reinhard_normalise(he, statistics, statistics)
    assert np.abs(normalised.astype(int) - he).mean() < 1.0


def test_glass_is_unchanged(two_stains):
    he, other = two_stains
    image = other.copy()
    image[:20] = 250  # a strip of empty glass
    normalised = reinhard_normalise(image, lab_statistics(image), lab_statistics(he))
    np.testing.assert_array_equal(normalised[:20], image[:20])


def test_blank_image_rejected():
    with pytest.raises(InvalidParameterError, match="too little tissue"):
        lab_statistics(np.full((64, 64, 3), 255, np.uint8))
