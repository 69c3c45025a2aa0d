"""Tests for GeoJSON export of nucleus instances, read back with json and shapely."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
import zarr
from PIL import Image
from scipy import ndimage as ndi
from shapely.geometry import Polygon, shape
from skimage.draw import disk

from histo_gedl.errors import InvalidParameterError
from histo_gedl.outputs.geojson import features_from_label_source, instances_to_features, write_geojson


def random_disks(shape: tuple[int, int], count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype=np.uint32)
    for index in range(1, count + 1):
        centre = (rng.integers(0, shape[0]), rng.integers(0, shape[1]))
        rows, cols = disk(centre, rng.uniform(3, 9), shape=shape)
        labels[rows, cols] = index
    return labels


@pytest.fixture
def rectangle() -> np.ndarray:
    labels = np.zeros((12, 14), dtype=np.int32)
    labels[2:6, 3:9] = 7  # rows 2-5, cols 3-8: 24 pixels
    return labels


def test_rectangle_outlines_its_pixels(rectangle):
    (feature,) = instances_to_features(rectangle, simplify_tolerance=0)
    polygon = shape(feature["geometry"])
    # Edges on pixel edges: x from col 3 to col 9, y from row 2 to row 6.
    assert polygon.bounds == (3.0, 2.0, 9.0, 6.0)
    # Each of the 4 convex corners is cut by a 1/8 pixel triangle.
    assert polygon.area == pytest.approx(24 - 4 / 8)


def test_scale_and_offset_to_level0(rectangle):
    (feature,) = instances_to_features(rectangle, scale=2.0, offset=(100.0, 50.0), simplify_tolerance=0)
    polygon = shape(feature["geometry"])
    assert polygon.bounds == (106.0, 54.0, 118.0, 62.0)
    assert polygon.area == pytest.approx((24 - 4 / 8) * 4)


def test_qupath_properties(rectangle):
    (feature,) = instances_to_features(rectangle, classification="Tumor nucleus", color=(10, 20, 30))
    assert feature["type"] == "Feature"
    assert feature["geometry"]["type"] == "Polygon"
    assert feature["properties"]["objectType"] == "detection"
    assert feature["properties"]["classification"] == {"name": "Tumor nucleus", "color": [10, 20, 30]}
    assert feature["properties"]["label"] == 7
    assert uuid.UUID(feature["id"]).version == 4


def largest_piece_areas(labels: np.ndarray) -> dict[int, int]:
    """Pixel count of the largest 4-connected piece of each label, holes filled."""
    areas = {}
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        pieces, count = ndi.label(ndi.binary_fill_holes(labels[box] == index))
        areas[index] = int(np.bincount(pieces.ravel())[1:].max())
    return areas


def test_many_nuclei_valid_and_close_in_area():
    # Overlapping disks leave some labels in pieces, so the reference is each
    # label's largest piece.
    labels = random_disks((1000, 1000), count=3000, seed=0)
    features = instances_to_features(labels)
    present = np.unique(labels)[1:]
    assert [f["properties"]["label"] for f in features] == present.tolist()
    assert len({f["id"] for f in features}) == len(features)
    piece_areas = largest_piece_areas(labels)
    for feature in features:
        polygon = shape(feature["geometry"])
        assert polygon.is_valid
        pixels = piece_areas[feature["properties"]["label"]]
        # Corner cuts and simplification remove at most a few pixels.
        assert abs(polygon.area - pixels) <= max(3.0, 0.1 * pixels), feature["properties"]["label"]


def test_polygon_counter_clockwise(rectangle):
    (feature,) = instances_to_features(rectangle)
    assert Polygon(feature["geometry"]["coordinates"][0]).exterior.is_ccw


def test_holes_filled():
    labels = np.zeros((20, 20), dtype=np.int32)
    labels[4:14, 4:14] = 1
    labels[7:11, 7:11] = 0
    (feature,) = instances_to_features(labels, simplify_tolerance=0)
    polygon = shape(feature["geometry"])
    assert len(polygon.interiors) == 0
    assert polygon.area == pytest.approx(100 - 0.5)


def test_largest_piece_kept():
    labels = np.zeros((20, 20), dtype=np.int32)
    labels[2:4, 2:4] = 3
    labels[10:16, 10:16] = 3
    (feature,) = instances_to_features(labels, simplify_tolerance=0)
    assert shape(feature["geometry"]).bounds == (10.0, 10.0, 16.0, 16.0)


def test_diagonal_pixels_valid():
    labels = np.zeros((10, 10), dtype=np.int32)
    labels[[2, 3, 4, 5, 3, 4], [2, 3, 4, 5, 2, 3]] = 1
    (feature,) = instances_to_features(labels)
    assert shape(feature["geometry"]).is_valid


def test_empty_labels_no_features():
    assert instances_to_features(np.zeros((8, 8), dtype=np.uint32)) == []


def test_tiled_matches_untiled():
    labels = random_disks((400, 360), count=400, seed=1)
    untiled = {f["properties"]["label"]: shape(f["geometry"]) for f in instances_to_features(labels, scale=2.0)}
    tiled_features = list(
        features_from_label_source(
            lambda r0, r1, c0, c1: labels[r0:r1, c0:c1], labels.shape, block=100, margin=24, scale=2.0
        )
    )
    tiled_labels = [f["properties"]["label"] for f in tiled_features]
    assert sorted(tiled_labels) == sorted(untiled)
    for feature in tiled_features:
        polygon = shape(feature["geometry"])
        assert polygon.equals_exact(untiled[feature["properties"]["label"]], tolerance=1e-6)


def test_tiled_reads_zarr_with_offset():
    labels = random_disks((200, 200), count=60, seed=2)
    canvas = zarr.array(labels, chunks=(64, 64))
    untiled = instances_to_features(labels, offset=(1000.0, 2000.0))
    tiled = list(
        features_from_label_source(
            lambda r0, r1, c0, c1: canvas[r0:r1, c0:c1], labels.shape, block=64, margin=20, offset=(1000.0, 2000.0)
        )
    )
    assert sorted(shape(f["geometry"]).bounds for f in tiled) == sorted(shape(f["geometry"]).bounds for f in untiled)


def test_tiled_rejects_wrong_window():
    with pytest.raises(InvalidParameterError, match="label_source"):
        list(features_from_label_source(lambda *window: np.zeros((3, 3), np.uint32), (10, 10), block=5))


def test_write_geojson_reads_back(tmp_path, rectangle):
    path = tmp_path / "nuclei.geojson"
    count = write_geojson(path, instances_to_features(rectangle, scale=4.0))
    document = json.loads(path.read_text(encoding="utf-8"))
    assert count == 1
    assert document["type"] == "FeatureCollection"
    assert len(document["features"]) == 1
    assert shape(document["features"][0]["geometry"]).bounds == (12.0, 8.0, 36.0, 24.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nuclei.geojson"]


def test_write_geojson_streams_generator(tmp_path):
    labels = random_disks((300, 300), count=100, seed=3)
    path = tmp_path / "nuclei.geojson"
    features = features_from_label_source(lambda r0, r1, c0, c1: labels[r0:r1, c0:c1], labels.shape, block=128)
    count = write_geojson(path, features)
    document = json.loads(path.read_text(encoding="utf-8"))
    assert count == len(np.unique(labels)) - 1
    assert len(document["features"]) == count


def test_write_geojson_empty(tmp_path):
    path = tmp_path / "none.geojson"
    assert write_geojson(path, []) == 0
    assert json.loads(path.read_text()) == {"type": "FeatureCollection", "features": []}


def test_write_geojson_bad_item_leaves_nothing(tmp_path, rectangle):
    path = tmp_path / "nuclei.geojson"
    features = [*instances_to_features(rectangle), {"type": "Point"}]
    with pytest.raises(InvalidParameterError, match="item 1"):
        write_geojson(path, features)
    assert list(tmp_path.iterdir()) == []


def test_write_geojson_missing_folder(tmp_path):
    with pytest.raises(InvalidParameterError, match="does not exist"):
        write_geojson(tmp_path / "missing" / "nuclei.geojson", [])


@pytest.mark.parametrize(
    ("labels", "options", "message"),
    [
        (np.zeros((4, 4), np.float32), {}, "integer"),
        (np.full((4, 4), -1, np.int32), {}, "negative"),
        (np.zeros((4, 4, 1), np.int32), {}, "2-D"),
        (np.zeros((4, 4), np.int32), {"scale": 0.0}, "scale"),
        (np.zeros((4, 4), np.int32), {"offset": (1.0,)}, "offset"),
        (np.zeros((4, 4), np.int32), {"color": (0, 0, 256)}, "color"),
        (np.zeros((4, 4), np.int32), {"classification": ""}, "classification"),
        (np.zeros((4, 4), np.int32), {"simplify_tolerance": -1.0}, "simplify_tolerance"),
    ],
)
def test_rejects_bad_input(labels, options, message):
    with pytest.raises(InvalidParameterError, match=message):
        instances_to_features(labels, **options)


def test_monuseg_polygons_match_masks(monuseg_dir):
    mask_path = sorted((monuseg_dir / "instance_masks").glob("*.png"))[0]
    labels = np.asarray(Image.open(mask_path)).astype(np.uint32)
    features = instances_to_features(labels)
    present = np.unique(labels)[1:]
    assert len(features) == present.size
    polygons = [shape(f["geometry"]) for f in features]
    assert all(polygon.is_valid for polygon in polygons)
    total_polygon_area = sum(polygon.area for polygon in polygons)
    total_pixels = np.count_nonzero(labels)
    assert total_polygon_area == pytest.approx(total_pixels, rel=0.05)


def test_tiled_reads_bounded_windows():
    labels = random_disks((300, 250), count=80, seed=4)
    windows = []

    def source(row0, row1, col0, col1):
        windows.append((row1 - row0, col1 - col0))
        return labels[row0:row1, col0:col1]

    list(features_from_label_source(source, labels.shape, block=100, margin=20))
    assert len(windows) == 3 * 3
    assert max(max(window) for window in windows) <= 100 + 2 * 20


@pytest.mark.parametrize("labels", [
    np.array([[0, 7, 7], [4_000_000_000, 0, 7]], dtype=np.uint32),  # ids far apart
    np.full((3, 4), 5, dtype=np.uint16),  # no background at all
    np.zeros((2, 2), dtype=np.int32),  # nothing labelled
])
def test_compact_labels_round_trip(labels):
    from histo_gedl.outputs.geojson import _compact_labels

    ids, compact = _compact_labels(labels)
    assert ids[0] == 0
    assert compact.dtype == np.int32
    assert compact.shape == labels.shape
    np.testing.assert_array_equal(ids[compact], labels)
    assert np.array_equal(np.unique(compact[compact > 0]), np.arange(1, ids.size))


def test_window_without_background_gives_one_feature():
    features = list(features_from_label_source(lambda r0, r1, c0, c1: np.full((r1 - r0, c1 - c0), 9, np.uint32),
                                               (40, 30), block=64, margin=8))
    assert len(features) == 1
    assert features[0]["properties"]["label"] == 9
    assert shape(features[0]["geometry"]).area == pytest.approx(40 * 30, rel=0.01)
