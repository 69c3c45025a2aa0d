"""Opening slides: backend choice, metadata and errors on bad files."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from histo_gedl.errors import InvalidParameterError, SlideReadError
from histo_gedl.slides import open_slide
from histo_gedl.slides.backends import TifffileBackend

# file: (backend, level-0 (width, height), mpp or None, level count)
EXPECTED = {
    "cmu-1-small-region.svs": ("openslide", (2220, 2967), 0.499, 1),
    "tcga-cr-7395-01a-01-ts1.svs": ("openslide", (4443, 3567), None, 2),
    "cmu-1-small-region_pyramid_generic.tiff": ("openslide", (2220, 2967), 0.499, 4),
    "cmu-1-small-region_pyramid.ome.tif": ("tifffile", (2220, 2967), 0.499, 4),
    "OS-1-detail.ome.tif": ("tifffile", (1101, 1101), 0.2271, 1),
    "OS-2-ndpi.ome.tif": ("tifffile", (2202, 2202), 0.2271, 1),
    "OS-2-vsi.ome.tif": ("tifffile", (1445, 1445), 0.3461, 1),
    "ihc.png": ("pillow", (512, 512), None, 1),
    "he-tile-stardist.jpg": ("pillow", (500, 300), None, 1),
    "he-tile-tiatoolbox.png": ("pillow", (1000, 1000), None, 1),
}
UNREADABLE = {"small_dicom.dcm"}


def test_table_covers_every_slide(slides_dir: Path) -> None:
    names = {path.name for path in slides_dir.iterdir()}
    assert names == set(EXPECTED) | UNREADABLE


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_open_slide_metadata(slides_dir: Path, name: str) -> None:
    backend, dimensions, mpp, level_count = EXPECTED[name]
    with open_slide(slides_dir / name) as slide:
        assert slide.backend == backend
        assert slide.dimensions == dimensions
        assert slide.level_count == level_count
        assert slide.level_dimensions[0] == dimensions
        assert slide.level_downsamples[0] == 1.0
        if mpp is None:
            assert slide.mpp is None
        else:
            assert slide.mpp == pytest.approx(mpp, abs=1e-4)


def test_dicom_lists_backends(slides_dir: Path) -> None:
    path = slides_dir / "small_dicom.dcm"
    with pytest.raises(SlideReadError) as caught:
        open_slide(path)
    message = str(caught.value)
    assert str(path) in message
    for backend in ("openslide:", "tifffile:", "pillow:"):
        assert backend in message


def test_ome_pyramid_prefers_tifffile(slides_dir: Path) -> None:
    with open_slide(slides_dir / "cmu-1-small-region_pyramid.ome.tif") as slide:
        downsamples = slide.level_downsamples
    assert downsamples == pytest.approx((1.0, 2.0, 4.0, 8.0), rel=2e-3)


def test_name_strips_ome(slides_dir: Path) -> None:
    with open_slide(slides_dir / "cmu-1-small-region_pyramid.ome.tif") as slide:
        assert slide.name == "cmu-1-small-region_pyramid"
    with open_slide(slides_dir / "cmu-1-small-region.svs") as slide:
        assert slide.name == "cmu-1-small-region"


def test_svs_objective_and_associated(slides_dir: Path) -> None:
    with open_slide(slides_dir / "cmu-1-small-region.svs") as slide:
        assert slide.objective_power == 20
        images = slide.associated_images
    assert set(images) == {"label", "macro", "thumbnail"}
    for image in images.values():
        assert image.dtype == np.uint8
        assert image.ndim == 3
        assert image.shape[2] == 3


def test_generic_tiff_has_no_objective(slides_dir: Path) -> None:
    with open_slide(slides_dir / "cmu-1-small-region_pyramid_generic.tiff") as slide:
        assert slide.objective_power is None
        assert slide.associated_images == {}


def test_tifffile_reads_svs_metadata(slides_dir: Path) -> None:
    backend = TifffileBackend(slides_dir / "cmu-1-small-region.svs")
    try:
        assert backend.mpp == pytest.approx(0.499)
        assert backend.objective_power == 20
        assert set(backend.associated_images()) == {"label", "macro", "thumbnail"}
        pixels = backend.read_level(0, 1000, 1000, 64, 48)
    finally:
        backend.close()
    with open_slide(slides_dir / "cmu-1-small-region.svs") as slide:
        reference = slide.read_region((1000, 1000), (64, 48), slide.mpp)
    # Both libraries decode the same JPEG tiles; allow for decoder rounding.
    assert np.abs(pixels.astype(int) - reference).max() <= 2


def test_level_mpp(slides_dir: Path) -> None:
    with open_slide(slides_dir / "cmu-1-small-region_pyramid_generic.tiff") as slide:
        assert slide.level_mpp(0) == pytest.approx(0.499)
        assert slide.level_mpp(1) == pytest.approx(0.499 * slide.level_downsamples[1])
        with pytest.raises(InvalidParameterError, match="invalid level 4"):
            slide.level_mpp(4)
        with pytest.raises(InvalidParameterError, match="invalid level -1"):
            slide.level_mpp(-1)


def test_level_mpp_unknown(slides_dir: Path) -> None:
    with open_slide(slides_dir / "tcga-cr-7395-01a-01-ts1.svs") as slide:
        assert slide.level_mpp(1) is None


def test_slide_mpp_supplies_mpp(slides_dir: Path) -> None:
    with open_slide(slides_dir / "tcga-cr-7395-01a-01-ts1.svs", slide_mpp=1.0) as slide:
        assert slide.mpp == 1.0
        assert slide.level_mpp(1) == pytest.approx(2.0005, abs=1e-3)


def test_slide_mpp_overrides_metadata(slides_dir: Path) -> None:
    with open_slide(slides_dir / "cmu-1-small-region.svs", slide_mpp=0.25) as slide:
        assert slide.mpp == 0.25


@pytest.mark.parametrize("value", [0, -0.5, math.nan, math.inf, "abc"])
def test_slide_mpp_invalid(slides_dir: Path, value: object) -> None:
    with pytest.raises(InvalidParameterError) as caught:
        open_slide(slides_dir / "cmu-1-small-region.svs", slide_mpp=value)  # type: ignore[arg-type]
    assert f"invalid slide_mpp {value!r}" in str(caught.value)


def test_missing_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.svs"
    with pytest.raises(SlideReadError, match="not found") as caught:
        open_slide(path)
    assert str(path) in str(caught.value)


def test_directory_path(tmp_path: Path) -> None:
    with pytest.raises(SlideReadError, match="is a folder, not a slide file") as caught:
        open_slide(tmp_path)
    assert str(tmp_path) in str(caught.value)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.svs"
    path.touch()
    with pytest.raises(SlideReadError, match=r"empty \(0 bytes\)") as caught:
        open_slide(path)
    assert str(path) in str(caught.value)


def test_truncated_slide(slides_dir: Path, tmp_path: Path) -> None:
    data = (slides_dir / "cmu-1-small-region.svs").read_bytes()
    path = tmp_path / "truncated.svs"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideReadError, match="cannot read") as caught:
        open_slide(path)
    assert str(path) in str(caught.value)
    assert "openslide:" in str(caught.value)


def test_truncated_pyramid_levels(slides_dir: Path, tmp_path: Path) -> None:
    # The generic TIFF stores level 0 first; half of it leaves the level's
    # last tiles unreadable, which the probe at open time detects.
    data = (slides_dir / "cmu-1-small-region_pyramid_generic.tiff").read_bytes()
    path = tmp_path / "truncated.tiff"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideReadError, match="tifffile:"):
        open_slide(path)


def test_text_file_as_svs(tmp_path: Path) -> None:
    path = tmp_path / "notes.svs"
    path.write_text("not a slide\n")
    with pytest.raises(SlideReadError) as caught:
        open_slide(path)
    message = str(caught.value)
    assert str(path) in message
    assert "openslide:" in message
    assert "tifffile:" in message
    assert "pillow:" in message


def _random_rgb(height: int = 300, width: int = 400) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_tiff_resolution_centimetre(tmp_path: Path) -> None:
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, _random_rgb(), resolution=(20000, 20000), resolutionunit="CENTIMETER")
    with open_slide(path) as slide:
        assert slide.backend == "tifffile"
        assert slide.mpp == pytest.approx(0.5)


def test_tiled_tiff_resolution_inch(tmp_path: Path) -> None:
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(
        path, _random_rgb(), tile=(128, 128), resolution=(50800, 50800), resolutionunit="INCH"
    )
    with open_slide(path) as slide:
        assert slide.backend == "openslide"
        assert slide.mpp == pytest.approx(0.5)


@pytest.mark.parametrize("tile", [None, (128, 128)], ids=["stripped", "tiled"])
def test_tiff_screen_dpi_ignored(tmp_path: Path, tile: tuple[int, int] | None) -> None:
    path = tmp_path / "screen.tif"
    tifffile.imwrite(path, _random_rgb(), tile=tile, resolution=(72, 72), resolutionunit="INCH")
    with open_slide(path) as slide:
        assert slide.mpp is None


def test_tiff_16_bit_rejected(tmp_path: Path) -> None:
    path = tmp_path / "deep.tif"
    tifffile.imwrite(path, _random_rgb().astype(np.uint16), photometric="rgb")
    with pytest.raises(SlideReadError, match="uint16"):
        open_slide(path)


def test_tiff_greyscale_to_rgb(tmp_path: Path) -> None:
    grey = _random_rgb()[:, :, 0]
    path = tmp_path / "grey.tif"
    tifffile.imwrite(path, grey, resolution=(20000, 20000), resolutionunit="CENTIMETER")
    with open_slide(path) as slide:
        pixels = slide.read_region((0, 0), (400, 300), 0.5)
    for channel in range(3):
        assert np.array_equal(pixels[:, :, channel], grey)


def test_png_alpha_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((20, 30, 4), dtype=np.uint8)
    rgba[:, :, 0] = 200  # red where transparent, so compositing must hide it
    rgba[:10, :, 3] = 255
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba).save(path)
    with open_slide(path, slide_mpp=1.0) as slide:
        pixels = slide.read_region((0, 0), (30, 20), 1.0)
    assert np.array_equal(pixels[:10], np.broadcast_to([200, 0, 0], (10, 30, 3)))
    assert np.all(pixels[10:] == 255)


def test_png_greyscale_to_rgb(tmp_path: Path) -> None:
    grey = _random_rgb(20, 30)[:, :, 0]
    path = tmp_path / "grey.png"
    Image.fromarray(grey).save(path)
    with open_slide(path, slide_mpp=1.0) as slide:
        pixels = slide.read_region((0, 0), (30, 20), 1.0)
    assert pixels.shape == (20, 30, 3)
    for channel in range(3):
        assert np.array_equal(pixels[:, :, channel], grey)


def test_png_has_no_mpp(slides_dir: Path) -> None:
    # ihc.png stores 96 dpi, a screen default.
    with open_slide(slides_dir / "ihc.png") as slide:
        assert slide.mpp is None


def test_slide_mpp_override_logged(slides_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="histo_gedl.slides.slide"):
        open_slide(slides_dir / "cmu-1-small-region.svs", slide_mpp=0.25).close()
    assert "overrides the metadata's 0.499" in caplog.text


def test_ome_extra_axes_first_plane(tmp_path: Path) -> None:
    planes = np.random.default_rng(3).integers(0, 256, (2, 30, 40, 3), dtype=np.uint8)
    path = tmp_path / "stack.ome.tif"
    tifffile.imwrite(path, planes, photometric="rgb", metadata={"axes": "ZYXS"})
    with open_slide(path, slide_mpp=1.0) as slide:
        assert slide.name == "stack"
        pixels = slide.read_region((0, 0), (40, 30), 1.0)
    assert np.array_equal(pixels, planes[0])


def test_ome_planar_channels(tmp_path: Path) -> None:
    channels = np.random.default_rng(4).integers(0, 256, (3, 30, 40), dtype=np.uint8)
    path = tmp_path / "planar.ome.tif"
    tifffile.imwrite(path, channels, photometric="minisblack", metadata={"axes": "CYX"})
    with open_slide(path, slide_mpp=1.0) as slide:
        pixels = slide.read_region((0, 0), (40, 30), 1.0)
    assert np.array_equal(pixels, channels.transpose(1, 2, 0))


def test_many_channels_rejected(tmp_path: Path) -> None:
    channels = np.zeros((5, 30, 40), dtype=np.uint8)
    path = tmp_path / "fluorescence.ome.tif"
    tifffile.imwrite(path, channels, photometric="minisblack", metadata={"axes": "CYX"})
    with pytest.raises(SlideReadError, match="has 5 channels"):
        open_slide(path)


OME_XML = """<?xml version="1.0" encoding="UTF-8"?>
<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">
<Instrument ID="Instrument:0"><Objective ID="Objective:0" NominalMagnification="40"/></Instrument>
<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint8" SizeX="40" SizeY="30"
 SizeC="3" SizeZ="1" SizeT="1" PhysicalSizeX="250" PhysicalSizeXUnit="nm" Interleaved="true">
<Channel ID="Channel:0:0" SamplesPerPixel="3"/><TiffData/></Pixels></Image></OME>"""


def test_ome_unit_and_objective(tmp_path: Path) -> None:
    path = tmp_path / "nm.ome.tif"
    tifffile.imwrite(path, _random_rgb(30, 40), photometric="rgb", description=OME_XML, metadata=None)
    with open_slide(path) as slide:
        assert slide.backend == "tifffile"
        assert slide.mpp == pytest.approx(0.25)
        assert slide.objective_power == 40


def test_tifffile_log_kept_quiet(slides_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = (slides_dir / "cmu-1-small-region_pyramid_generic.tiff").read_bytes()
    path = tmp_path / "truncated.tiff"
    path.write_bytes(data[: len(data) // 2])
    with caplog.at_level("DEBUG"):
        with pytest.raises(SlideReadError):
            open_slide(path)
    tifffile_records = [record for record in caplog.records if record.name == "tifffile"]
    forwarded = [record for record in caplog.records if "invalid page offset" in record.getMessage()]
    assert tifffile_records == []
    assert forwarded[0].levelname == "DEBUG"
    assert logging.getLogger("tifffile").propagate


def test_to_rgb_composites_alpha_on_white() -> None:
    from histo_gedl.slides.backends import _composite_on_white, to_rgb

    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 256, (600, 7, 4), dtype=np.uint8)
    colour = pixels[:, :, :3].astype(np.float64)
    alpha = pixels[:, :, 3:].astype(np.float64) / 255.0
    expected = np.rint(colour * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    assert np.array_equal(to_rgb(pixels), expected)
    assert np.array_equal(_composite_on_white(pixels, rows_per_block=64), expected)  # several blocks
    opaque = pixels.copy()
    opaque[:, :, 3] = 255
    assert np.array_equal(to_rgb(opaque), pixels[:, :, :3])
    grey_alpha = pixels[:, :, [0, 3]]
    assert np.array_equal(to_rgb(grey_alpha), np.repeat(expected[:, :, :1], 3, axis=2))
