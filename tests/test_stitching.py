"""Stitching does not depend on the tiling: checked with a predictor whose exact output is known."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy import ndimage

from histo_gedl.errors import InvalidParameterError
from histo_gedl.inference.plan import plan_inference
from histo_gedl.inference.run import predict_tiles
from histo_gedl.inference.stitch import ProbabilityCanvas, gaussian_window
from histo_gedl.slides import open_slide


class PoolAndBlurPredictor:
    """Grey level, 2x2 average pooling, nearest upsampling, then a 3x3 box filter with zero padding.

    Like a U-Net it has a stride (2) and a finite receptive field (at most
    2 pixels, declared as 3), and its zero padding makes tile borders wrong.
    """

    classes = ("low", "high")
    stride = 2
    receptive_field = 3

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        return np.stack([self.apply(tile) for tile in tiles])

    @staticmethod
    def apply(tile: np.ndarray) -> np.ndarray:
        grey = tile.astype(np.float64).mean(axis=-1) / 255.0
        height, width = grey.shape
        pooled = grey.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3))
        upsampled = pooled.repeat(2, axis=0).repeat(2, axis=1)
        blurred = ndimage.uniform_filter(upsampled, size=3, mode="constant", cval=0.0)
        return np.stack([blurred, 1.0 - blurred]).astype(np.float32)


def _whole_image_reference(image: np.ndarray, halo: int, stride: int) -> np.ndarray:
    """Run the predictor once on the whole image padded by ``halo`` white pixels, then crop."""
    height, width = image.shape[:2]
    extra_h = (-(height + 2 * halo)) % stride
    extra_w = (-(width + 2 * halo)) % stride
    padded = np.pad(image, ((halo, halo + extra_h), (halo, halo + extra_w), (0, 0)), constant_values=255)
    return PoolAndBlurPredictor.apply(padded)[:, halo : halo + height, halo : halo + width]


def _stitch(path, tmp_path, tile_size: int, batch_size: int, method: str = "exact") -> np.ndarray:
    # Hypothesis reuses tmp_path across examples, so each run gets its own folder.
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    predictor = PoolAndBlurPredictor()
    with open_slide(path, slide_mpp=0.5) as slide:
        plan = plan_inference(str(path), slide.dimensions, 0.5, 0.5, predictor.stride,
                              predictor.receptive_field, tile_size)
        canvas = ProbabilityCanvas.create(work / "canvas", 2, plan.canvas_size, method)
        predict_tiles(slide, plan, predictor, canvas, work / "done.json", batch_size)
    height, width = canvas.shape
    return canvas.read(0, height, 0, width)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    width=st.integers(5, 90),
    height=st.integers(5, 90),
    tile_size=st.integers(10, 64),
    batch_size=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_exact_stitching_equals_whole_image(tmp_path, width, height, tile_size, batch_size, seed):
    image = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    path = tmp_path / f"slide-{seed}-{width}x{height}.png"
    Image.fromarray(image).save(path)
    stitched = _stitch(path, tmp_path, tile_size, batch_size)
    expected = _whole_image_reference(image, halo=4, stride=2)
    assert stitched.shape == expected.shape
    np.testing.assert_allclose(stitched, expected, atol=1e-5)


def test_exact_stitching_same_for_two_tilings(tmp_path):
    image = np.random.default_rng(7).integers(0, 256, size=(101, 77, 3), dtype=np.uint8)
    path = tmp_path / "slide.png"
    Image.fromarray(image).save(path)
    small = _stitch(path, tmp_path, tile_size=12, batch_size=3)
    large = _stitch(path, tmp_path, tile_size=60, batch_size=1)
    np.testing.assert_array_equal(small, large)


def test_gaussian_stitching_depends_on_tiling(tmp_path):
    # Blending mixes predictions made with different context, so unlike the
    # exact method its result changes with the tile size.
    image = np.random.default_rng(3).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    path = tmp_path / "slide.png"
    Image.fromarray(image).save(path)
    small = _stitch(path, tmp_path, tile_size=12, batch_size=2, method="gaussian")
    large = _stitch(path, tmp_path, tile_size=40, batch_size=2, method="gaussian")
    assert np.isfinite(small).all()
    assert np.abs(small - large).max() > 1e-3
    # Each pixel is still a weighted mean of per-tile probabilities that sum to 1.
    np.testing.assert_allclose(small.sum(axis=0), 1.0, atol=1e-5)


def test_gaussian_window_peak_and_floor():
    window = gaussian_window(33)
    assert window.shape == (33, 33)
    assert window[16, 16] == pytest.approx(1.0)
    assert window.min() >= 1e-3


def test_plan_rejects_tile_without_core():
    with pytest.raises(InvalidParameterError, match="at least 88 px"):
        plan_inference("x", (100, 100), 0.5, 0.5, stride=8, receptive_field=36, tile_size=64)


def test_plan_aligns_cores_and_halo_to_stride():
    plan = plan_inference("x", (1000, 700), 0.25, 0.5, stride=8, receptive_field=65, tile_size=512)
    assert plan.halo == 72
    assert plan.core == 512 - 144
    assert plan.canvas_size == (500, 350)
    assert all(t.col % plan.core == 0 and t.row % plan.core == 0 for t in plan.tiles)
    assert plan.location(plan.tiles[0]) == (-144.0, -144.0)


def test_plan_skips_tiles_without_tissue():
    tissue = np.zeros((100, 100), dtype=bool)
    tissue[0, 0] = True  # only the top-left corner has tissue
    plan = plan_inference("x", (2000, 2000), 0.5, 0.5, stride=8, receptive_field=24,
                          tile_size=256, tissue_mask=tissue, tissue_mpp=10.0)
    assert [(t.col, t.row) for t in plan.tiles] == [(0, 0)]


def test_to_level0_nearest_resampling(tmp_path):
    import zarr

    from histo_gedl.inference.plan import InferencePlan
    from histo_gedl.inference.run import to_level0

    source = zarr.open_array(store=str(tmp_path / "source"), mode="w", shape=(700, 900), chunks=(256, 256),
                             dtype="uint32")
    values = np.arange(700 * 900, dtype=np.uint32).reshape(700, 900)
    source[:] = values
    # Read at 0.5 µm/px from a 0.25 µm/px slide: each read pixel covers 2 x 2 level-0 pixels.
    plan = InferencePlan("x", (1799, 1400), 0.25, 0.5, (900, 700), core=64, halo=8)
    level0 = np.asarray(to_level0(source, plan, tmp_path, "values"))
    rows = ((np.arange(1400) + 0.5) / 2).astype(int)
    cols = np.minimum(((np.arange(1799) + 0.5) / 2).astype(int), 899)
    np.testing.assert_array_equal(level0, values[np.ix_(rows, cols)])
