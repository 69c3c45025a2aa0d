"""Tissue detection and the tissue fraction of rectangles."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histo_gedl.errors import InvalidParameterError, MissingMppError
from histo_gedl.slides import TissueMask, detect_tissue, open_slide


def _png_slide(path: Path, pixels: np.ndarray, mpp: float = 0.5):
    Image.fromarray(pixels).save(path)
    return open_slide(path, slide_mpp=mpp)


def test_cmu_tissue_fraction(slides_dir: Path) -> None:
    with open_slide(slides_dir / "cmu-1-small-region.svs") as slide:
        tissue = detect_tissue(slide)
    # Measured 0.37: a strip of skin across the middle of the region.
    assert 0.2 < tissue.mask.mean() < 0.6
    assert tissue.mask.dtype == bool


def test_cmu_tissue_location(slides_dir: Path) -> None:
    with open_slide(slides_dir / "cmu-1-small-region.svs") as slide:
        tissue = detect_tissue(slide)
    # The top-left corner is glass; the epidermis crosses (1000, 2000).
    assert tissue.fraction((0, 0), (300, 300)) < 0.05
    assert tissue.fraction((900, 1900), (200, 200)) > 0.9


def test_mask_resolution(slides_dir: Path) -> None:
    with open_slide(slides_dir / "tcga-cr-7395-01a-01-ts1.svs", slide_mpp=1.0) as slide:
        tissue = detect_tissue(slide, mpp=8.0)
    assert tissue.mpp == 8.0
    assert tissue.downsample == 8.0
    assert tissue.mask.shape == (math.ceil(3567 / 8), math.ceil(4443 / 8))
    assert 0.3 < tissue.mask.mean() < 0.9


def test_small_image_finer_mask(slides_dir: Path) -> None:
    with open_slide(slides_dir / "he-tile-stardist.jpg", slide_mpp=0.5) as slide:
        tissue = detect_tissue(slide)
    assert max(tissue.mask.shape) >= 256
    assert tissue.mpp < 8.0


def test_mask_never_finer_than_slide(tmp_path: Path) -> None:
    pixels = np.full((40, 50, 3), 255, dtype=np.uint8)
    with _png_slide(tmp_path / "tiny.png", pixels, mpp=0.5) as slide:
        tissue = detect_tissue(slide)
    assert tissue.mpp == 0.5
    assert tissue.mask.shape == (40, 50)


@pytest.mark.parametrize("name", ["he-tile-stardist.jpg", "he-tile-tiatoolbox.png", "ihc.png"])
def test_full_tissue_tile(slides_dir: Path, name: str) -> None:
    # These tiles are cut from inside tissue; Otsu alone would split the
    # stain into two classes and drop the paler one.
    with open_slide(slides_dir / name, slide_mpp=0.5) as slide:
        tissue = detect_tissue(slide)
    assert tissue.mask.mean() > 0.9


def test_pale_ihc_tissue(slides_dir: Path) -> None:
    # Ki67 stain with pale haematoxylin: most of the crop is tissue.
    with open_slide(slides_dir / "OS-2-vsi.ome.tif") as slide:
        tissue = detect_tissue(slide)
    assert tissue.mask.mean() > 0.6


def test_blank_white_image(tmp_path: Path) -> None:
    pixels = np.full((400, 600, 3), 255, dtype=np.uint8)
    with _png_slide(tmp_path / "white.png", pixels) as slide:
        tissue = detect_tissue(slide)
    assert tissue.mask.sum() == 0


def test_noisy_glass_image(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).normal(0, 3, (400, 600, 3))
    pixels = np.clip(240 + noise, 0, 255).astype(np.uint8)
    path = tmp_path / "glass.jpg"
    Image.fromarray(pixels).save(path, quality=70)
    with open_slide(path, slide_mpp=0.5) as slide:
        tissue = detect_tissue(slide)
    assert tissue.mask.mean() < 0.01


def test_tissue_on_glass(tmp_path: Path) -> None:
    pixels = np.full((400, 600, 3), 245, dtype=np.uint8)
    pixels[100:300, 200:500] = (200, 110, 170)  # eosin pink
    with _png_slide(tmp_path / "patch.png", pixels) as slide:
        tissue = detect_tissue(slide)
    assert tissue.fraction((200, 100), (300, 200)) > 0.95
    assert tissue.fraction((0, 0), (150, 400)) == 0.0


def test_small_specks_removed(tmp_path: Path) -> None:
    # A 10 µm speck (20 px at 0.5 mpp) is under the 2500 µm² minimum.
    pixels = np.full((400, 600, 3), 245, dtype=np.uint8)
    pixels[50:70, 50:70] = (200, 110, 170)
    with _png_slide(tmp_path / "speck.png", pixels) as slide:
        tissue = detect_tissue(slide)
    assert tissue.mask.sum() == 0


def test_missing_mpp(slides_dir: Path) -> None:
    with open_slide(slides_dir / "tcga-cr-7395-01a-01-ts1.svs") as slide:
        with pytest.raises(MissingMppError):
            detect_tissue(slide)


def test_invalid_method(slides_dir: Path) -> None:
    with open_slide(slides_dir / "ihc.png", slide_mpp=0.5) as slide:
        with pytest.raises(InvalidParameterError, match="invalid tissue method 'magic'"):
            detect_tissue(slide, method="magic")


@pytest.mark.parametrize("mpp", [0, -8.0, math.nan])
def test_invalid_mask_mpp(slides_dir: Path, mpp: float) -> None:
    with open_slide(slides_dir / "ihc.png", slide_mpp=0.5) as slide:
        with pytest.raises(InvalidParameterError, match="invalid mpp"):
            detect_tissue(slide, mpp=mpp)


def _half_mask() -> TissueMask:
    # 4 x 4 mask pixels of 10 level-0 pixels each; the left half is tissue.
    mask = np.zeros((4, 4), dtype=bool)
    mask[:, :2] = True
    return TissueMask(mask=mask, mpp=5.0, downsample=10.0)


def test_fraction_whole_mask() -> None:
    assert _half_mask().fraction((0, 0), (40, 40)) == pytest.approx(0.5)


def test_fraction_partial_pixels() -> None:
    # Columns 15 to 25 cover half of tissue pixel 1 and half of glass pixel 2.
    assert _half_mask().fraction((15, 0), (10, 40)) == pytest.approx(0.5)
    assert _half_mask().fraction((5, 5), (10, 10)) == pytest.approx(1.0)


def test_fraction_outside_slide() -> None:
    # Half of the rectangle lies left of the slide, where there is no tissue.
    assert _half_mask().fraction((-20, 0), (40, 40)) == pytest.approx(0.5)
    assert _half_mask().fraction((100, 100), (10, 10)) == 0.0


def test_fraction_invalid_size() -> None:
    with pytest.raises(InvalidParameterError, match="invalid rectangle size"):
        _half_mask().fraction((0, 0), (0, 10))


def test_holes_filled_by_size(tmp_path: Path) -> None:
    # At 0.5 µm/px: an 80 µm hole (6400 µm²) is filled, a 150 µm one is not.
    pixels = np.full((800, 1000, 3), 245, dtype=np.uint8)
    pixels[50:750, 50:950] = (200, 110, 170)
    pixels[100:260, 100:260] = 245
    pixels[300:600, 500:800] = 245
    with _png_slide(tmp_path / "holes.png", pixels) as slide:
        tissue = detect_tissue(slide)
    assert tissue.fraction((120, 120), (120, 120)) == 1.0
    assert tissue.fraction((550, 350), (200, 200)) == 0.0


def test_saturation_matches_skimage_hsv(slides_dir: Path) -> None:
    from skimage import color, filters

    from histo_gedl.slides.tissue import MAX_SATURATION_THRESHOLD, MIN_SATURATION, _threshold_saturation

    with open_slide(slides_dir / "cmu-1-small-region.svs") as slide:
        image = slide.read_region((0, 0), (555, 742), 2.0)
    saturation = filters.gaussian(color.rgb2hsv(image)[:, :, 1], sigma=1.0)
    threshold = min(max(filters.threshold_otsu(saturation), MIN_SATURATION), MAX_SATURATION_THRESHOLD)
    expected = saturation > threshold
    mask = _threshold_saturation(image)
    assert mask.mean() > 0.2
    assert np.mean(mask != expected) < 1e-4
