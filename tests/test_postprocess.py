"""Tests for class maps, watershed instances and their tiled version."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import zarr
from PIL import Image
from skimage.draw import disk
from skimage.segmentation import find_boundaries

from histo_gedl.errors import InvalidParameterError
from histo_gedl.inference.postprocess import (
    class_map_from_probabilities,
    instances_from_probabilities,
    label_instances_tiled,
)


def probabilities_from_labels(labels: np.ndarray, confidence: float = 0.9) -> np.ndarray:
    """Build (3, H, W) probabilities whose argmax is the 3-class target of ``labels``.

    The boundary class is the inner boundary of each nucleus, as a training
    target would mark it. The true class gets ``confidence`` and the others share the rest.
    """
    boundary = find_boundaries(labels, mode="inner") & (labels > 0)
    classes = np.where(labels == 0, 0, np.where(boundary, 2, 1))
    rest = (1.0 - confidence) / 2
    probabilities = np.full((3, *labels.shape), rest, dtype=np.float32)
    for class_index in range(3):
        probabilities[class_index][classes == class_index] = confidence
    return probabilities


def random_nuclei(shape: tuple[int, int], count: int, seed: int) -> np.ndarray:
    """Paint ``count`` disks of radius 4-10 at random, later ones over earlier ones."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype=np.uint32)
    for index in range(1, count + 1):
        centre = (rng.integers(0, shape[0]), rng.integers(0, shape[1]))
        rows, cols = disk(centre, rng.uniform(4, 10), shape=shape)
        labels[rows, cols] = index
    return labels


def test_class_map_argmax():
    probabilities = np.zeros((3, 2, 3), dtype=np.float32)
    probabilities[0, 0, :] = 1.0
    probabilities[1, 1, 0] = 1.0
    probabilities[2, 1, 1:] = 1.0
    class_map = class_map_from_probabilities(probabilities)
    assert class_map.dtype == np.uint8
    assert class_map.tolist() == [[0, 0, 0], [1, 2, 2]]


def test_class_map_ties_go_to_lower_class():
    probabilities = np.full((3, 1, 1), 1 / 3, dtype=np.float32)
    assert class_map_from_probabilities(probabilities)[0, 0] == 0


def test_class_map_rejects_two_channels():
    with pytest.raises(InvalidParameterError, match=r"\(3, H, W\)"):
        class_map_from_probabilities(np.zeros((2, 4, 4), dtype=np.float32))


def test_instances_touching_squares_split():
    labels = np.zeros((30, 40), dtype=np.uint32)
    labels[5:15, 10:20] = 1
    labels[5:15, 20:30] = 2
    instances = instances_from_probabilities(probabilities_from_labels(labels))
    assert instances.dtype == np.uint32
    assert int(instances.max()) == 2
    assert np.array_equal(instances, labels)


def test_instances_numbered_in_raster_order():
    labels = np.zeros((40, 40), dtype=np.uint32)
    labels[25:35, 2:12] = 1
    labels[3:13, 20:30] = 2
    instances = instances_from_probabilities(probabilities_from_labels(labels))
    assert instances[5, 25] == 1
    assert instances[30, 5] == 2


def test_instances_min_area_boundary():
    labels = np.zeros((20, 20), dtype=np.uint32)
    labels[5:8, 5:8] = 1
    probabilities = probabilities_from_labels(labels)
    kept = instances_from_probabilities(probabilities, min_area=9, min_marker_area=1)
    dropped = instances_from_probabilities(probabilities, min_area=10, min_marker_area=1)
    assert int(kept.max()) == 1
    assert int(dropped.max()) == 0


def test_instances_small_marker_dropped():
    labels = np.zeros((20, 20), dtype=np.uint32)
    labels[5:8, 5:8] = 1
    # The 3 x 3 square has a 1-pixel interior, below the default min_marker_area of 4.
    instances = instances_from_probabilities(probabilities_from_labels(labels), min_area=1)
    assert int(instances.max()) == 0


def test_instances_marker_erosion_splits_bridge():
    probabilities = np.zeros((3, 20, 40), dtype=np.float32)
    probabilities[0] = 1.0
    interior = np.zeros((20, 40), dtype=bool)
    interior[4:16, 4:16] = True
    interior[4:16, 24:36] = True
    interior[10, 16:24] = True  # one-pixel bridge joining the two squares
    probabilities[0][interior] = 0.0
    probabilities[1][interior] = 1.0
    joined = instances_from_probabilities(probabilities, marker_erosion=0)
    split = instances_from_probabilities(probabilities, marker_erosion=1)
    assert int(joined.max()) == 1
    assert int(split.max()) == 2


def test_instances_background_pixels_stay_zero():
    labels = np.zeros((20, 20), dtype=np.uint32)
    labels[4:14, 4:14] = 1
    instances = instances_from_probabilities(probabilities_from_labels(labels))
    assert not instances[labels == 0].any()


def test_instances_foreground_threshold():
    labels = np.zeros((20, 20), dtype=np.uint32)
    labels[4:14, 4:14] = 1
    # Foreground probability is 0.55 everywhere inside the square.
    probabilities = probabilities_from_labels(labels, confidence=0.45)
    probabilities[0][labels > 0] = 0.45
    probabilities[1][labels > 0] = 0.55
    probabilities[2][labels > 0] = 0.0
    assert int(instances_from_probabilities(probabilities, foreground_threshold=0.5).max()) == 1
    assert int(instances_from_probabilities(probabilities, foreground_threshold=0.6).max()) == 0


def test_instances_all_background_empty():
    probabilities = np.zeros((3, 16, 16), dtype=np.float32)
    probabilities[0] = 1.0
    instances = instances_from_probabilities(probabilities)
    assert instances.shape == (16, 16)
    assert not instances.any()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"min_area": 0}, "min_area"),
        ({"min_marker_area": 0}, "min_marker_area"),
        ({"marker_erosion": -1}, "marker_erosion"),
        ({"interior_threshold": 1.5}, "interior_threshold"),
        ({"foreground_threshold": -0.1}, "foreground_threshold"),
    ],
)
def test_instances_rejects_bad_option(options, message):
    with pytest.raises(InvalidParameterError, match=message):
        instances_from_probabilities(np.zeros((3, 8, 8), dtype=np.float32), **options)


def test_instances_rejects_integer_input():
    with pytest.raises(InvalidParameterError, match="float"):
        instances_from_probabilities(np.zeros((3, 8, 8), dtype=np.uint8))


def _compare_tiled(labels: np.ndarray, block: int, margin: int) -> tuple[np.ndarray, np.ndarray, int]:
    probabilities = probabilities_from_labels(labels)
    untiled = instances_from_probabilities(probabilities)
    tiled = np.zeros(labels.shape, dtype=np.uint32)

    def source(row0, row1, col0, col1):
        return probabilities[:, row0:row1, col0:col1]

    count = label_instances_tiled(source, labels.shape, tiled, block=block, margin=margin)
    return untiled, tiled, count


def _crossing_nuclei(labels: np.ndarray, block: int) -> list[int]:
    """Ids of nuclei whose pixels lie in more than one block."""
    rows, cols = np.nonzero(labels)
    ids = labels[rows, cols]
    block_index = (rows // block) * 10_000 + cols // block
    crossing = []
    for nucleus in np.unique(ids):
        if np.unique(block_index[ids == nucleus]).size > 1:
            crossing.append(int(nucleus))
    return crossing


def test_tiled_matches_untiled():
    labels = random_nuclei((300, 340), count=220, seed=1)
    untiled, tiled, count = _compare_tiled(labels, block=96, margin=32)
    assert count == int(untiled.max())
    assert np.array_equal(tiled > 0, untiled > 0)
    # Same partition of the foreground: each untiled nucleus maps to one tiled id.
    pairs = np.unique(np.stack([untiled[untiled > 0], tiled[untiled > 0]]), axis=1)
    assert pairs.shape[1] == count


def test_tiled_ids_unique_and_consecutive():
    labels = random_nuclei((200, 200), count=100, seed=2)
    _, tiled, count = _compare_tiled(labels, block=64, margin=24)
    assert set(np.unique(tiled).tolist()) == set(range(count + 1))


def test_tiled_no_nucleus_split_at_border():
    labels = random_nuclei((256, 256), count=150, seed=3)
    block = 64
    untiled, tiled, _ = _compare_tiled(labels, block=block, margin=24)
    crossing = _crossing_nuclei(untiled, block)
    assert len(crossing) > 20
    for nucleus in crossing:
        ids_under = np.unique(tiled[untiled == nucleus])
        assert ids_under.size == 1, f"nucleus {nucleus} became ids {ids_under.tolist()}"
        assert ids_under[0] != 0


def test_tiled_writes_into_zarr():
    labels = random_nuclei((160, 200), count=60, seed=4)
    untiled, tiled, count = _compare_tiled(labels, block=64, margin=24)
    probabilities = probabilities_from_labels(labels)
    canvas = zarr.create_array(store={}, shape=labels.shape, chunks=(50, 50), dtype="uint32", fill_value=0)
    zarr_count = label_instances_tiled(
        lambda r0, r1, c0, c1: probabilities[:, r0:r1, c0:c1], labels.shape, canvas, block=64, margin=24
    )
    assert zarr_count == count
    assert np.array_equal(canvas[:], tiled)


def test_tiled_warns_when_margin_small(caplog):
    labels = np.zeros((100, 100), dtype=np.uint32)
    labels[30:70, 30:70] = 1
    probabilities = probabilities_from_labels(labels)
    out = np.zeros(labels.shape, dtype=np.uint32)
    with caplog.at_level(logging.WARNING, logger="histo_gedl.inference.postprocess"):
        label_instances_tiled(lambda r0, r1, c0, c1: probabilities[:, r0:r1, c0:c1], labels.shape, out, block=50, margin=4)
    assert "increase margin" in caplog.text


def test_tiled_rejects_wrong_out_dtype():
    out = np.zeros((10, 10), dtype=np.int32)
    with pytest.raises(InvalidParameterError, match="uint32"):
        label_instances_tiled(lambda *window: None, (10, 10), out)


def test_tiled_rejects_wrong_out_shape():
    out = np.zeros((10, 12), dtype=np.uint32)
    with pytest.raises(InvalidParameterError, match="shape"):
        label_instances_tiled(lambda *window: None, (10, 10), out)


def test_tiled_rejects_wrong_window_shape():
    out = np.zeros((10, 10), dtype=np.uint32)
    with pytest.raises(InvalidParameterError, match="prob_source"):
        label_instances_tiled(lambda *window: np.zeros((3, 2, 2), np.float32), (10, 10), out, block=5)


def test_tiled_matches_untiled_monuseg(monuseg_dir):
    mask_path = sorted((monuseg_dir / "instance_masks").glob("*.png"))[0]
    labels = np.asarray(Image.open(mask_path)).astype(np.uint32)
    block = 256
    untiled, tiled, count = _compare_tiled(labels, block=block, margin=48)
    assert abs(count - int(untiled.max())) <= max(2, count // 100)
    crossing = _crossing_nuclei(untiled, block)
    split = [n for n in crossing if np.unique(tiled[untiled == n]).size > 1]
    assert len(split) <= max(2, len(crossing) // 100), f"split nuclei: {split}"
