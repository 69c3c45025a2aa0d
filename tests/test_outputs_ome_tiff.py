"""Tests for the pyramidal OME-TIFF writer, read back with tifffile and OpenSlide."""

from __future__ import annotations

import numpy as np
import openslide
import pytest
import tifffile
import zarr

from histo_gedl.errors import InvalidParameterError
from histo_gedl.outputs import ome_tiff
from histo_gedl.outputs.ome_tiff import pyramid_shapes, write_pyramidal_ome_tiff

MPP = 0.4975


@pytest.fixture(scope="module")
def instance_labels() -> np.ndarray:
    rng = np.random.default_rng(0)
    # Large ids so that a uint32 value above 2**16 must survive the round trip.
    return rng.integers(0, 2**32 - 1, size=(700, 1000), dtype=np.uint32)


@pytest.fixture(scope="module")
def class_map() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 3, size=(530, 610), dtype=np.uint8)


def read_levels(path) -> list[np.ndarray]:
    with tifffile.TiffFile(path) as tif:
        return [level.asarray() for level in tif.series[0].levels]


def physical_size(path) -> tuple[float, float, str]:
    with tifffile.TiffFile(path) as tif:
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
    return pixels["PhysicalSizeX"], pixels["PhysicalSizeY"], pixels["PhysicalSizeXUnit"]


def test_pyramid_shapes_halve_and_round_up():
    assert pyramid_shapes((700, 1001), 256) == [(700, 1001), (350, 501), (175, 251)]


def test_pyramid_shapes_small_image_single_level():
    assert pyramid_shapes((200, 256), 256) == [(200, 256)]


def test_labels_round_trip_uint32(tmp_path, instance_labels):
    path = write_pyramidal_ome_tiff(tmp_path / "labels.ome.tif", instance_labels, MPP)
    levels = read_levels(path)
    assert [level.shape for level in levels] == [(700, 1000), (350, 500), (175, 250)]
    assert levels[0].dtype == np.uint32
    assert np.array_equal(levels[0], instance_labels)


def test_labels_levels_are_strided(tmp_path, instance_labels):
    path = write_pyramidal_ome_tiff(tmp_path / "labels.ome.tif", instance_labels, MPP)
    levels = read_levels(path)
    assert np.array_equal(levels[1], instance_labels[::2, ::2])
    assert np.array_equal(levels[2], instance_labels[::4, ::4])


def test_physical_size_in_micrometres(tmp_path, class_map):
    path = write_pyramidal_ome_tiff(tmp_path / "classes.ome.tif", class_map, MPP)
    size_x, size_y, unit = physical_size(path)
    assert size_x == pytest.approx(MPP)
    assert size_y == pytest.approx(MPP)
    assert unit == "µm"


def test_resolution_tags_scale_per_level(tmp_path, class_map):
    path = write_pyramidal_ome_tiff(tmp_path / "classes.ome.tif", class_map, MPP)
    with tifffile.TiffFile(path) as tif:
        level0, level1 = (level.keyframe for level in tif.series[0].levels[:2])
        assert level0.resolutionunit == tifffile.RESUNIT.CENTIMETER
        assert level0.get_resolution()[0] == pytest.approx(1e4 / MPP, rel=1e-6)
        # Level 1 has 305 of 610 columns, so half the pixels per centimetre.
        assert level1.get_resolution()[0] == pytest.approx(1e4 / MPP / 2, rel=1e-6)


def test_pages_tiled_and_compressed(tmp_path, class_map):
    path = write_pyramidal_ome_tiff(tmp_path / "classes.ome.tif", class_map, MPP, tile_size=128, min_level_size=64)
    with tifffile.TiffFile(path) as tif:
        pages = [level.keyframe for level in tif.series[0].levels]
        assert len(pages) == 5
        for page in pages:
            assert page.is_tiled
            assert (page.tilelength, page.tilewidth) == (128, 128)
            assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        # Reduced levels live in SubIFDs of the first page, not as top-level pages.
        assert len(tif.pages) == 1
        assert len(tif.pages[0].subifds) == 4


@pytest.mark.parametrize("compression", ["lzw", "zstd", None])
def test_other_compressions_exact(tmp_path, class_map, compression):
    path = write_pyramidal_ome_tiff(tmp_path / "classes.ome.tif", class_map, MPP, compression=compression)
    assert np.array_equal(read_levels(path)[0], class_map)


def test_image_levels_are_rounded_mean(tmp_path):
    image = np.zeros((3, 5, 3), dtype=np.uint8)
    image[..., 0] = [[0, 1, 10, 20, 7], [2, 4, 30, 41, 7], [100, 200, 0, 0, 255]]
    path = write_pyramidal_ome_tiff(tmp_path / "image.ome.tif", image, MPP, kind="image", tile_size=16, min_level_size=2)
    levels = read_levels(path)
    assert [level.shape for level in levels] == [(3, 5, 3), (2, 3, 3), (1, 2, 3)]
    # Means of 2 x 2 blocks, rounded half up; the odd last row and column repeat:
    # (0+1+2+4)/4 = 1.75 -> 2, (10+20+30+41)/4 = 25.25 -> 25, (7+7+7+7)/4 = 7,
    # (100+200+100+200)/4 = 150, (0+0+0+0)/4 = 0, (255*4)/4 = 255.
    assert levels[1][..., 0].tolist() == [[2, 25, 7], [150, 0, 255]]
    assert np.array_equal(levels[0], image)


def test_zarr_source_matches_numpy(tmp_path, instance_labels):
    source = zarr.create_array(
        store=str(tmp_path / "canvas.zarr"), shape=instance_labels.shape, chunks=(128, 128), dtype="uint32"
    )
    source[:] = instance_labels
    from_zarr = read_levels(write_pyramidal_ome_tiff(tmp_path / "z.ome.tif", source, MPP))
    from_numpy = read_levels(write_pyramidal_ome_tiff(tmp_path / "n.ome.tif", instance_labels, MPP))
    for zarr_level, numpy_level in zip(from_zarr, from_numpy, strict=True):
        assert np.array_equal(zarr_level, numpy_level)


class RecordingArray:
    """Array-like over a numpy array that records the row span of every read."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.shape = array.shape
        self.dtype = array.dtype
        self.ndim = array.ndim
        self.row_spans: list[int] = []

    def __getitem__(self, key):
        rows = key[0] if isinstance(key, tuple) else key
        start, stop, _ = rows.indices(self.shape[0])
        self.row_spans.append(stop - start)
        return self.array[key]


def test_source_read_by_tile_rows(tmp_path, class_map):
    source = RecordingArray(class_map)
    path = write_pyramidal_ome_tiff(tmp_path / "classes.ome.tif", source, MPP, tile_size=64)
    assert np.array_equal(read_levels(path)[0], class_map)
    assert max(source.row_spans) <= 2 * 64
    assert len(source.row_spans) > 10


def test_failed_write_leaves_nothing(tmp_path, class_map):
    class FailingArray(RecordingArray):
        def __getitem__(self, key):
            if len(self.row_spans) == 3:
                raise OSError("disk read failed")
            return super().__getitem__(key)

    path = tmp_path / "classes.ome.tif"
    path.write_bytes(b"previous")
    with pytest.raises(OSError, match="disk read failed"):
        write_pyramidal_ome_tiff(path, FailingArray(class_map), MPP, tile_size=64)
    assert path.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.ome.tif"]


def test_success_leaves_no_temporary_files(tmp_path, class_map):
    write_pyramidal_ome_tiff(tmp_path / "classes.ome.tif", zarr.array(class_map, chunks=(100, 100)), MPP)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.ome.tif"]


def test_bigtiff_when_large(tmp_path, class_map, monkeypatch):
    monkeypatch.setattr(ome_tiff, "BIGTIFF_THRESHOLD_BYTES", 0)
    path = write_pyramidal_ome_tiff(tmp_path / "classes.ome.tif", class_map, MPP)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff
    assert np.array_equal(read_levels(path)[0], class_map)


# OpenSlide 4.0.1 reads these files as generic TIFF, level 0 only.


def test_openslide_reads_uint8_class_map(tmp_path, class_map):
    path = write_pyramidal_ome_tiff(tmp_path / "classes.ome.tif", class_map, MPP)
    with openslide.OpenSlide(path) as slide:
        assert slide.dimensions == (610, 530)
        assert slide.level_count == 1
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(MPP)
        region = np.asarray(slide.read_region((40, 30), 0, (300, 200)))
    for channel in range(3):
        assert np.array_equal(region[..., channel], class_map[30:230, 40:340])


def test_openslide_cannot_read_uint32_pixels(tmp_path, instance_labels):
    path = write_pyramidal_ome_tiff(tmp_path / "labels.ome.tif", instance_labels, MPP)
    with openslide.OpenSlide(path) as slide:
        assert slide.dimensions == (1000, 700)
        with pytest.raises(openslide.OpenSlideError, match="32-bit"):
            slide.read_region((0, 0), 0, (10, 10))


def test_openslide_uint16_keeps_high_byte(tmp_path):
    labels = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16
    path = write_pyramidal_ome_tiff(tmp_path / "labels.ome.tif", labels, MPP, tile_size=32)
    with openslide.OpenSlide(path) as slide:
        region = np.asarray(slide.read_region((0, 0), 0, (64, 64)))
    assert np.array_equal(region[..., 0], (labels >> 8).astype(np.uint8))


def test_openslide_reads_rgb_from_real_slide(tmp_path, slides_dir):
    with openslide.OpenSlide(slides_dir / "cmu-1-small-region.svs") as slide:
        tile = np.asarray(slide.read_region((600, 900), 0, (777, 521)).convert("RGB"))
    path = write_pyramidal_ome_tiff(tmp_path / "tile.ome.tif", tile, 0.499, kind="image", min_level_size=128)
    with openslide.OpenSlide(path) as written:
        region = np.asarray(written.read_region((0, 0), 0, (777, 521)).convert("RGB"))
    assert np.array_equal(region, tile)
    assert [level.shape for level in read_levels(path)] == [(521, 777, 3), (261, 389, 3), (131, 195, 3), (66, 98, 3)]


def test_jpeg_for_images(tmp_path, slides_dir):
    with openslide.OpenSlide(slides_dir / "cmu-1-small-region.svs") as slide:
        tile = np.asarray(slide.read_region((600, 900), 0, (512, 384)).convert("RGB"))
    path = write_pyramidal_ome_tiff(tmp_path / "tile.ome.tif", tile, 0.499, kind="image", compression="jpeg")
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.JPEG
    level0 = read_levels(path)[0]
    assert level0.shape == tile.shape
    # JPEG is lossy; at tifffile's default quality the mean error is a few grey levels.
    assert np.abs(level0.astype(int) - tile.astype(int)).mean() < 5


@pytest.mark.parametrize(
    ("image", "options", "message"),
    [
        (np.zeros((8, 8), np.uint8), {"mpp": 0.0}, "mpp"),
        (np.zeros((8, 8), np.uint8), {"mpp": -0.5}, "mpp"),
        (np.zeros((8, 8), np.uint8), {"mpp": float("nan")}, "mpp"),
        (np.zeros((8, 8), np.float32), {}, "uint8, uint16 or uint32"),
        (np.zeros((8, 8, 3), np.uint8), {}, "kind"),
        (np.zeros((8, 8), np.uint8), {"kind": "image"}, r"\(H, W, 3\)"),
        (np.zeros((8, 8), np.uint8), {"kind": "mask"}, "kind"),
        (np.zeros((8, 8), np.uint8), {"tile_size": 100}, "multiple of 16"),
        (np.zeros((8, 8), np.uint8), {"compression": "jpeg"}, "lossy"),
        (np.zeros((8, 8), np.uint8), {"compression": "webp"}, "compression"),
        (np.zeros((8, 8), np.uint8), {"min_level_size": 0}, "min_level_size"),
        (np.zeros((0, 8), np.uint8), {}, "empty"),
    ],
)
def test_rejects_bad_input(tmp_path, image, options, message):
    arguments = {"mpp": MPP, **options}
    with pytest.raises(InvalidParameterError, match=message):
        write_pyramidal_ome_tiff(tmp_path / "out.ome.tif", image, **arguments)
    assert list(tmp_path.iterdir()) == []


def test_rejects_missing_folder(tmp_path, class_map):
    with pytest.raises(InvalidParameterError, match="does not exist"):
        write_pyramidal_ome_tiff(tmp_path / "missing" / "out.ome.tif", class_map, MPP)


@pytest.mark.parametrize("kind", ["labels", "image"])
def test_blocks_match_whole_rows(tmp_path, monkeypatch, kind):
    rng = np.random.default_rng(5)
    if kind == "labels":
        pixels = rng.integers(0, 2**20, size=(1030, 1370), dtype=np.uint32)
    else:
        pixels = rng.integers(0, 256, size=(1030, 1371, 3), dtype=np.uint8)
    source = zarr.create_array(
        store=str(tmp_path / "source.zarr"), shape=pixels.shape, chunks=(256, 256, *pixels.shape[2:]),
        dtype=pixels.dtype,
    )
    source[:] = pixels
    whole_rows = read_levels(write_pyramidal_ome_tiff(tmp_path / "rows.ome.tif", source, MPP, kind=kind))
    monkeypatch.setattr(ome_tiff, "BLOCK_TILES", 1)  # blocks of one tile, with a partial last block
    blocks = read_levels(write_pyramidal_ome_tiff(tmp_path / "blocks.ome.tif", source, MPP, kind=kind))
    assert len(blocks) == len(whole_rows) == 4
    for by_block, by_row in zip(blocks, whole_rows, strict=True):
        assert np.array_equal(by_block, by_row)
