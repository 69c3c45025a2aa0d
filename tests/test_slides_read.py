"""Reading regions at a resolution: level choice, exact copies, grid consistency, padding."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from histo_gedl.errors import InvalidParameterError, MissingMppError
from histo_gedl.slides import open_slide

CMU_FILES = (
    "cmu-1-small-region.svs",
    "cmu-1-small-region_pyramid_generic.tiff",
    "cmu-1-small-region_pyramid.ome.tif",
)


@pytest.fixture(scope="module")
def cmu_slides(slides_dir: Path):
    slides = {name: open_slide(slides_dir / name) for name in CMU_FILES}
    yield slides
    for slide in slides.values():
        slide.close()


def _mean_abs_diff(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.abs(first.astype(np.int16) - second.astype(np.int16)).mean())


def _max_abs_diff(first: np.ndarray, second: np.ndarray) -> int:
    return int(np.abs(first.astype(np.int16) - second.astype(np.int16)).max())


# The pyramid files were re-encoded as JPEG from the SVS pixels, and their
# level 1 was re-encoded again after shrinking. Measured over the whole region
# (CPU, this code): 2.36 at 0.5 mpp and 3.57 at 1.0 mpp, SVS against either
# pyramid file; the two pyramid files agree exactly with each other.
@pytest.mark.parametrize(("mpp", "limit"), [(0.5, 3.0), (1.0, 4.5)])
def test_cmu_files_agree(cmu_slides, mpp: float, limit: float) -> None:
    size = (math.floor(2220 * 0.499 / mpp), math.floor(2967 * 0.499 / mpp))
    images = {name: slide.read_region((0, 0), size, mpp) for name, slide in cmu_slides.items()}
    reference = images["cmu-1-small-region.svs"]
    for name in CMU_FILES[1:]:
        assert images[name].shape == (size[1], size[0], 3)
        assert _mean_abs_diff(images[name], reference) < limit, name


def test_read_region_shape(cmu_slides) -> None:
    region = cmu_slides["cmu-1-small-region.svs"].read_region((100.5, 200.25), (70, 30), 0.8)
    assert region.shape == (30, 70, 3)
    assert region.dtype == np.uint8


def test_level_choice(cmu_slides) -> None:
    slide = cmu_slides["cmu-1-small-region_pyramid.ome.tif"]
    level1 = slide.level_downsamples[1]
    assert slide.best_level(1.0) == 0
    assert slide.best_level(level1) == 1
    # Within the relative tolerance of 1e-3, a level slightly coarser counts.
    assert slide.best_level(level1 * (1 - 5e-4)) == 1
    assert slide.best_level(level1 * (1 - 5e-3)) == 0
    assert slide.best_level(100.0) == 3
    assert slide.best_level(0.5) == 0


def test_exact_copy_level0(slides_dir: Path, cmu_slides) -> None:
    import openslide

    slide = cmu_slides["cmu-1-small-region.svs"]
    region = slide.read_region((300, 500), (200, 100), 0.499)
    with openslide.OpenSlide(str(slides_dir / "cmu-1-small-region.svs")) as reference:
        expected = np.asarray(reference.read_region((300, 500), 0, (200, 100)))[:, :, :3]
    assert np.array_equal(region, expected)


@pytest.mark.parametrize("level", [1, 2])
def test_exact_copy_pyramid_level(slides_dir: Path, cmu_slides, level: int) -> None:
    slide = cmu_slides["cmu-1-small-region_pyramid.ome.tif"]
    downsample = slide.level_downsamples[level]
    col, row = 37, 81
    region = slide.read_region((col * downsample, row * downsample), (90, 60), slide.level_mpp(level))
    expected = tifffile.imread(slides_dir / "cmu-1-small-region_pyramid.ome.tif", level=level)
    assert np.array_equal(region, expected[row : row + 60, col : col + 90])


def _grid_mismatch(slide, mpp: float, tile: int = 128, count: int = 5) -> int:
    """Return the largest difference between tiles on a grid and one large read."""
    scale = mpp / slide.mpp
    large = slide.read_region((0, 0), (tile * count, tile * count), mpp)
    worst = 0
    for row in range(0, tile * count, tile):
        for col in range(0, tile * count, tile):
            piece = slide.read_region((col * scale, row * scale), (tile, tile), mpp)
            worst = max(worst, _max_abs_diff(piece, large[row : row + tile, col : col + tile]))
    return worst


@pytest.mark.parametrize("name", CMU_FILES)
def test_grid_exact_native(cmu_slides, name: str) -> None:
    slide = cmu_slides[name]
    assert _grid_mismatch(slide, slide.level_mpp(0)) == 0


@pytest.mark.parametrize("name", CMU_FILES[1:])
def test_grid_exact_level1(cmu_slides, name: str) -> None:
    # For the generic TIFF, OpenSlide reads level 1 with a downsample of
    # 1.99966; block reads keep its sub-pixel shift the same in every read.
    slide = cmu_slides[name]
    assert _grid_mismatch(slide, slide.level_mpp(1)) == 0


@pytest.mark.parametrize("name", CMU_FILES)
@pytest.mark.parametrize("mpp", [0.5, 0.75, 3.0])
def test_grid_resampled(cmu_slides, name: str, mpp: float) -> None:
    assert _grid_mismatch(cmu_slides[name], mpp, tile=96, count=4) <= 1


def test_tcga_grid_resampled(slides_dir: Path) -> None:
    with open_slide(slides_dir / "tcga-cr-7395-01a-01-ts1.svs", slide_mpp=1.0) as slide:
        assert _grid_mismatch(slide, 2.6, tile=96, count=4) <= 1


@pytest.mark.parametrize("mpp", [0.499, 1.3])
def test_padding_is_white(cmu_slides, mpp: float) -> None:
    slide = cmu_slides["cmu-1-small-region.svs"]
    scale = mpp / slide.mpp
    # Reaches 40 output pixels past the left and top edges.
    region = slide.read_region((-40 * scale, -40 * scale), (80, 80), mpp)
    # Resampling blends the first few pixels inside the edge, never those
    # more than the blur's reach outside it.
    assert np.all(region[:35, :] == 255)
    assert np.all(region[:, :35] == 255)
    assert not np.all(region[45:, 45:] == 255)


def test_padding_right_bottom(cmu_slides) -> None:
    slide = cmu_slides["cmu-1-small-region.svs"]
    width, height = slide.dimensions
    region = slide.read_region((width - 20, height - 10), (64, 64), slide.mpp)
    assert np.all(region[:, 20:] == 255)
    assert np.all(region[10:, :] == 255)


def test_region_outside_slide(cmu_slides) -> None:
    slide = cmu_slides["cmu-1-small-region_pyramid.ome.tif"]
    region = slide.read_region((5000, 5000), (32, 16), 2.0)
    assert np.all(region == 255)


def test_missing_mpp(slides_dir: Path) -> None:
    path = slides_dir / "tcga-cr-7395-01a-01-ts1.svs"
    with open_slide(path) as slide:
        with pytest.raises(MissingMppError) as caught:
            slide.read_region((0, 0), (16, 16), 1.0)
    message = str(caught.value)
    assert str(path) in message
    assert "slide_mpp=" in message
    assert "--slide-mpp" in message


def test_missing_mpp_supplied(slides_dir: Path) -> None:
    with open_slide(slides_dir / "tcga-cr-7395-01a-01-ts1.svs", slide_mpp=1.0) as slide:
        region = slide.read_region((1000, 1000), (64, 32), 2.0)
    assert region.shape == (32, 64, 3)
    assert not np.all(region == 255)


@pytest.mark.parametrize("mpp", [0, -0.5, math.nan, math.inf])
def test_invalid_mpp(cmu_slides, mpp: float) -> None:
    slide = cmu_slides["cmu-1-small-region.svs"]
    with pytest.raises(InvalidParameterError, match=f"invalid mpp {mpp!r}"):
        slide.read_region((0, 0), (16, 16), mpp)


@pytest.mark.parametrize("size", [(0, 16), (16, -1), (10.5, 4), (16,), 16])
def test_invalid_size(cmu_slides, size: tuple) -> None:
    slide = cmu_slides["cmu-1-small-region.svs"]
    with pytest.raises(InvalidParameterError, match="invalid size"):
        slide.read_region((0, 0), size, 1.0)


def test_invalid_location(cmu_slides) -> None:
    slide = cmu_slides["cmu-1-small-region.svs"]
    with pytest.raises(InvalidParameterError, match="invalid location"):
        slide.read_region((math.nan, 0), (16, 16), 1.0)


def _write_png(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels).save(path)
    return path


def test_antialiasing_checkerboard(tmp_path: Path) -> None:
    # Sampling a one-pixel checkerboard every third pixel without a blur
    # would give black and white again; the antialiasing blur gives grey.
    rows, cols = np.indices((300, 300))
    board = np.where((rows + cols) % 2 == 0, 0, 255).astype(np.uint8)
    path = _write_png(tmp_path / "board.png", np.stack([board] * 3, axis=2))
    with open_slide(path, slide_mpp=1.0) as slide:
        region = slide.read_region((30, 30), (60, 60), 3.0)
    assert np.abs(region.astype(float) - 127.5).max() < 20


def test_constant_colour_kept(tmp_path: Path) -> None:
    colour = np.full((200, 300, 3), (180, 60, 120), dtype=np.uint8)
    path = _write_png(tmp_path / "flat.png", colour)
    with open_slide(path, slide_mpp=0.5) as slide:
        region = slide.read_region((20, 20), (40, 30), 1.7)
    assert np.array_equal(region, colour[:30, :40])


def test_enlarge_finer_than_slide(tmp_path: Path) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (50, 60, 3), dtype=np.uint8)
    path = _write_png(tmp_path / "small.png", pixels)
    with open_slide(path, slide_mpp=1.0) as slide:
        region = slide.read_region((10, 10), (40, 40), 0.5)
    assert region.shape == (40, 40, 3)
    # Output pixel 1 has its centre at source coordinate 10 + 1.5 * 0.5 - 0.5
    # = 10.25, so bilinear weights are 0.75 on source pixel 10 and 0.25 on 11.
    weights = np.array([0.75, 0.25])
    expected = np.einsum("r,c,rck->k", weights, weights, pixels[10:12, 10:12].astype(float))
    assert np.abs(region[1, 1] - expected).max() <= 0.5


def test_thumbnail_size(cmu_slides) -> None:
    thumbnail = cmu_slides["cmu-1-small-region_pyramid_generic.tiff"].get_thumbnail(300)
    assert thumbnail.shape == (300, 224, 3)
    assert thumbnail.dtype == np.uint8


def test_thumbnail_without_mpp(slides_dir: Path) -> None:
    with open_slide(slides_dir / "ihc.png") as slide:
        thumbnail = slide.get_thumbnail(1024)
        region = slide._read_window(0, 0, 0, 512, 512)
    assert np.array_equal(thumbnail, region)


@pytest.mark.parametrize("max_size", [0, -3, 2.5])
def test_thumbnail_invalid_size(cmu_slides, max_size: object) -> None:
    with pytest.raises(InvalidParameterError, match="invalid thumbnail size"):
        cmu_slides["cmu-1-small-region.svs"].get_thumbnail(max_size)  # type: ignore[arg-type]


def test_blocks_match_single_window(cmu_slides, monkeypatch: pytest.MonkeyPatch) -> None:
    from histo_gedl.slides import resample

    slide = cmu_slides["cmu-1-small-region_pyramid.ome.tif"]
    whole = slide.read_region((333.3, 444.4), (150, 120), 1.7)
    monkeypatch.setattr(resample, "MAX_WINDOW_SIDE", 120)
    in_blocks = slide.read_region((333.3, 444.4), (150, 120), 1.7)
    assert np.array_equal(in_blocks, whole)


def test_coarse_reads_keep_windows_mostly_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """When blur margins would fill a window, windows grow instead of shrinking to one pixel."""
    from histo_gedl.slides import resample

    source = np.random.default_rng(3).integers(0, 256, (2000, 2000, 3), dtype=np.uint8)
    windows = []

    def read_window(x: int, y: int, width: int, height: int) -> np.ndarray:
        windows.append((width, height))
        out = np.full((height, width, 3), 255, np.uint8)
        left, top = max(x, 0), max(y, 0)
        right, bottom = min(x + width, 2000), min(y + height, 2000)
        if right > left and bottom > top:
            out[top - y : bottom - y, left - x : right - x] = source[top:bottom, left:right]
        return out

    whole = resample.resample(read_window, (0.0, 0.0), (20, 20), 100.0)
    monkeypatch.setattr(resample, "MAX_WINDOW_SIDE", 256)  # smaller than the two margins of about 200 px each
    windows.clear()
    in_blocks = resample.resample(read_window, (0.0, 0.0), (20, 20), 100.0)
    assert np.array_equal(in_blocks, whole)
    assert len(windows) <= 25  # blocks of at least 4 x 4 output pixels, not 400 windows of one


def test_resample_matches_skimage(tmp_path: Path) -> None:
    from skimage.transform import resize

    pixels = np.random.default_rng(2).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    path = _write_png(tmp_path / "noise.png", pixels)
    with open_slide(path, slide_mpp=1.0) as slide:
        region = slide.read_region((0, 0), (80, 80), 2.5)
    expected = resize(pixels, (80, 80), order=1, anti_aliasing=True, preserve_range=True)
    # Border pixels differ because skimage reflects at the edge where this
    # code pads with white.
    inner = (slice(4, -4), slice(4, -4))
    assert np.abs(region[inner] - expected[inner]).max() <= 1
