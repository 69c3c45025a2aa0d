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


def test_instances_markers_4_connected():
    # Two interior squares that touch only at one corner are two markers.
    probabilities = np.zeros((3, 20, 20), dtype=np.float32)
    probabilities[0] = 1.0
    interior = np.zeros((20, 20), dtype=bool)
    interior[2:8, 2:8] = True
    interior[8:14, 8:14] = True
    probabilities[0][interior] = 0.0
    probabilities[1][interior] = 1.0
    assert int(instances_from_probabilities(probabilities).max()) == 2


def test_instances_interior_threshold():
    labels = np.zeros((20, 20), dtype=np.uint32)
    labels[4:14, 4:14] = 1
    probabilities = probabilities_from_labels(labels, confidence=0.6)
    assert int(instances_from_probabilities(probabilities, interior_threshold=0.5).max()) == 1
    assert int(instances_from_probabilities(probabilities, interior_threshold=0.7).max()) == 0


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
        ({"interior_threshold": "high"}, "interior_threshold"),
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


def _shares(untiled: np.ndarray, tiled: np.ndarray, nucleus: int) -> tuple[int, float, float]:
    """The tiled id that covers most of an untiled nucleus, its share, and the next largest share."""
    ids, counts = np.unique(tiled[untiled == nucleus], return_counts=True)
    order = np.argsort(counts)[::-1]
    shares = counts[order] / counts.sum()
    second = float(shares[1]) if shares.size > 1 else 0.0
    return int(ids[order[0]]), float(shares[0]), second


# The synthetic probabilities are flat inside each class, so the watershed
# breaks ties by flooding order, which differs between windows. A few pixels
# where touching nuclei meet may therefore change owner. "Split" below means
# that a second tiled id takes more than 10 % of a nucleus.


def test_tiled_matches_untiled():
    labels = random_nuclei((300, 340), count=220, seed=1)
    untiled, tiled, count = _compare_tiled(labels, block=96, margin=32)
    assert count == int(untiled.max())
    changed = np.count_nonzero((tiled > 0) != (untiled > 0))
    assert changed <= 0.005 * np.count_nonzero(untiled)
    owners = set()
    for nucleus in range(1, count + 1):
        owner, share, _ = _shares(untiled, tiled, nucleus)
        assert share >= 0.9, f"nucleus {nucleus}: tiled id {owner} covers only {share:.2f}"
        owners.add(owner)
    assert len(owners) == count


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
        owner, share, second = _shares(untiled, tiled, nucleus)
        assert owner != 0
        assert second <= 0.1, f"nucleus {nucleus} split: shares {share:.2f} and {second:.2f}"


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
    assert count == int(untiled.max())
    crossing = _crossing_nuclei(untiled, block)
    assert len(crossing) > 20
    split = [n for n in crossing if _shares(untiled, tiled, n)[2] > 0.1]
    assert split == []


def test_tiled_reads_bounded_windows():
    labels = random_nuclei((200, 230), count=80, seed=5)
    probabilities = probabilities_from_labels(labels)
    windows = []

    def source(row0, row1, col0, col1):
        windows.append((row1 - row0, col1 - col0))
        return probabilities[:, row0:row1, col0:col1]

    out = np.zeros(labels.shape, dtype=np.uint32)
    label_instances_tiled(source, labels.shape, out, block=64, margin=16)
    assert len(windows) == 4 * 4
    assert max(max(window) for window in windows) <= 64 + 2 * 16
