"""Tests for outline overlays on thumbnails and for label downsampling."""

from __future__ import annotations

import numpy as np
import openslide
import pytest
import zarr
from PIL import Image

from histo_gedl.errors import InvalidParameterError
from histo_gedl.outputs.overlay import downsample_labels, draw_outlines, write_overlay

RED = (255, 0, 0)


@pytest.fixture
def squares() -> np.ndarray:
    labels = np.zeros((40, 60), dtype=np.uint32)
    labels[5:15, 5:15] = 1
    labels[5:15, 15:25] = 2  # touches nucleus 1
    labels[25:35, 40:55] = 3
    return labels


@pytest.fixture
def grey_thumbnail() -> np.ndarray:
    return np.full((40, 60, 3), 128, dtype=np.uint8)


def test_overlay_png_reads_back(tmp_path, squares, grey_thumbnail):
    path = write_overlay(tmp_path / "overlay.png", grey_thumbnail, squares, color=RED)
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (60, 40)
        pixels = np.asarray(image.convert("RGB"))
    # Inner outline of nucleus 3: its first row and first column.
    assert pixels[25, 40:55].tolist() == [list(RED)] * 15
    assert pixels[25:35, 40].tolist() == [list(RED)] * 10
    # Inside and outside keep the thumbnail.
    assert pixels[30, 47].tolist() == [128, 128, 128]
    assert pixels[0, 0].tolist() == [128, 128, 128]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overlay.png"]


def test_outline_between_touching_nuclei(squares, grey_thumbnail):
    overlay = draw_outlines(grey_thumbnail, squares, color=RED)
    # Columns 14 and 15 are where nuclei 1 and 2 meet; both are inner boundary.
    assert overlay[10, 14].tolist() == list(RED)
    assert overlay[10, 15].tolist() == list(RED)
    assert overlay[10, 10].tolist() == [128, 128, 128]


def test_outer_mode_outside_pixels(squares, grey_thumbnail):
    overlay = draw_outlines(grey_thumbnail, squares, color=RED, mode="outer")
    assert overlay[24, 45].tolist() == list(RED)
    assert overlay[25, 45].tolist() == [128, 128, 128]


def test_class_map_outlines(grey_thumbnail):
    class_map = np.zeros((40, 60), dtype=np.uint8)
    class_map[10:20, 10:30] = 1
    class_map[10:20, 30:40] = 2
    overlay = draw_outlines(grey_thumbnail, class_map, color=RED)
    assert overlay[10, 20].tolist() == list(RED)
    assert overlay[15, 29].tolist() == list(RED)
    assert overlay[15, 20].tolist() == [128, 128, 128]


def test_thumbnail_not_modified(squares, grey_thumbnail):
    draw_outlines(grey_thumbnail, squares)
    assert (grey_thumbnail == 128).all()


def test_overlay_on_real_thumbnail(tmp_path, slides_dir):
    with openslide.OpenSlide(slides_dir / "cmu-1-small-region.svs") as slide:
        thumbnail = np.asarray(slide.get_thumbnail((400, 400)).convert("RGB"))
    height, width = thumbnail.shape[:2]
    canvas = np.zeros((height * 8, width * 8), dtype=np.uint32)
    canvas[800:960, 800:960] = 5
    labels = downsample_labels(canvas, (width, height))
    path = write_overlay(tmp_path / "overlay.png", thumbnail, labels, color=(0, 255, 0))
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape == thumbnail.shape
    assert pixels[100, 100:120].tolist() == [[0, 255, 0]] * 20
    assert np.array_equal(pixels[:90], thumbnail[:90])


def test_downsample_picks_centre_pixel():
    labels = np.arange(36, dtype=np.uint32).reshape(6, 6)
    small = downsample_labels(labels, (3, 2))
    # Rows floor((i + 0.5) * 6 / 2) = 1, 4; cols floor((j + 0.5) * 6 / 3) = 1, 3, 5.
    assert small.tolist() == [[7, 9, 11], [25, 27, 29]]
    assert small.dtype == np.uint32


def test_downsample_zarr_matches_numpy():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 1000, size=(500, 300), dtype=np.uint32)
    canvas = zarr.array(labels, chunks=(128, 128))
    assert np.array_equal(downsample_labels(canvas, (97, 61)), downsample_labels(labels, (97, 61)))


def test_downsample_rejects_upsampling():
    with pytest.raises(InvalidParameterError, match="size"):
        downsample_labels(np.zeros((10, 10), np.uint32), (20, 5))


def test_overlay_rejects_size_mismatch(tmp_path, squares):
    with pytest.raises(InvalidParameterError, match="downsample_labels"):
        write_overlay(tmp_path / "o.png", np.zeros((20, 30, 3), np.uint8), squares)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("thumbnail", "options", "message"),
    [
        (np.zeros((40, 60), np.uint8), {}, "thumbnail_rgb"),
        (np.zeros((40, 60, 3), np.float32), {}, "thumbnail_rgb"),
        (np.zeros((40, 60, 3), np.uint8), {"color": (0, 0)}, "color"),
        (np.zeros((40, 60, 3), np.uint8), {"mode": "subpixel"}, "mode"),
    ],
)
def test_overlay_rejects_bad_input(squares, thumbnail, options, message):
    with pytest.raises(InvalidParameterError, match=message):
        draw_outlines(thumbnail, squares, **options)


def test_overlay_missing_folder(tmp_path, squares, grey_thumbnail):
    with pytest.raises(InvalidParameterError, match="does not exist"):
        write_overlay(tmp_path / "missing" / "o.png", grey_thumbnail, squares)
