"""Backends that read pixels and metadata from one slide file.

A backend exposes the pyramid levels of one image and reads rectangles that
lie inside a level, in that level's pixel coordinates. Clipping, white
padding, level choice and resampling live in :mod:`histo_gedl.slides.slide`,
so every backend only has to implement :meth:`SlideBackend.read_level`.
"""

from __future__ import annotations

import collections
import logging
import math
import re
import threading
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: Names of the associated images that are kept, in lower case.
ASSOCIATED_IMAGE_NAMES = ("label", "macro", "thumbnail")

#: A level-0 resolution from TIFF resolution tags that is coarser than this
#: (in µm/px, that is under 1270 dpi) is a screen or print default written by
#: image editors, not a scanner's resolution, so it is ignored.
MAX_PLAUSIBLE_TAG_MPP = 20.0

#: Side in pixels of the blocks in which OpenSlide levels with a fractional
#: downsample are read, and how many recently read blocks are kept
#: (about 24 MiB at 512 pixels).
OPENSLIDE_BLOCK_SIZE = 512
OPENSLIDE_CACHED_BLOCKS = 32

#: File formats that the Pillow backend opens. TIFF is left out so that a
#: TIFF that tifffile rejects fails with tifffile's reason: Pillow 13 opens
#: 16-bit RGB as 8-bit RGB by keeping the high byte, which turns 0-255 data black.
PILLOW_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")

_MICRONS_PER_UNIT = {
    "pm": 1e-6,
    "nm": 1e-3,
    "µm": 1.0,
    "μm": 1.0,  # Greek mu, which some writers use in place of the micro sign.
    "um": 1.0,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
    "Å": 1e-4,
}


def to_rgb(pixels: np.ndarray) -> np.ndarray:
    """Convert greyscale, grey + alpha, RGB or RGBA pixels to RGB.

    Alpha is composited on white, so transparent pixels become white like
    empty glass.

    Args:
        pixels: uint8 array of shape (h, w), (h, w, 1), (h, w, 2), (h, w, 3)
            or (h, w, 4).

    Returns:
        uint8 array of shape (h, w, 3).
    """
    if pixels.ndim == 2:
        pixels = pixels[:, :, np.newaxis]
    channels = pixels.shape[2]
    if channels in (2, 4):
        alpha = pixels[:, :, -1]
        # Slides are almost always opaque, and then no float copy is needed.
        pixels = pixels[:, :, :-1] if alpha.min() == 255 else _composite_on_white(pixels)
        channels -= 1
    if channels == 1:
        return np.repeat(pixels, 3, axis=2)
    return np.ascontiguousarray(pixels)


def _composite_on_white(pixels: np.ndarray, rows_per_block: int = 256) -> np.ndarray:
    """Composite (h, w, c + 1) uint8 colour + alpha on white, a block of rows at a time to bound memory."""
    out = np.empty(pixels.shape[:2] + (pixels.shape[2] - 1,), dtype=np.uint8)
    for row in range(0, pixels.shape[0], rows_per_block):
        block = pixels[row : row + rows_per_block]
        colour = block[:, :, :-1].astype(np.float32)
        alpha = block[:, :, -1:].astype(np.float32) / 255.0
        out[row : row + rows_per_block] = np.rint(colour * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return out


def _downsamples(level_dimensions: list[tuple[int, int]]) -> tuple[float, ...]:
    # The mean of the width and height ratios, as OpenSlide computes it.
    width0, height0 = level_dimensions[0]
    return tuple((width0 / width + height0 / height) / 2.0 for width, height in level_dimensions)


def _positive_float(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number) or number <= 0:
        return None
    return number


class SlideBackend:
    """Pixels and metadata of one slide file, read through one library."""

    name = ""

    def __init__(self) -> None:
        self.level_dimensions: tuple[tuple[int, int], ...] = ()
        self.level_downsamples: tuple[float, ...] = ()
        self.mpp: float | None = None
        self.objective_power: float | None = None

    def read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Read a rectangle that lies inside ``level``.

        Args:
            level: Pyramid level.
            x: Left edge in pixels of that level.
            y: Top edge in pixels of that level.
            width: Width in pixels, at least 1.
            height: Height in pixels, at least 1.

        Returns:
            uint8 RGB array of shape (height, width, 3).
        """
        raise NotImplementedError

    def associated_images(self) -> dict[str, np.ndarray]:
        """Read the label, macro and thumbnail images that the file contains.

        Returns:
            Name to uint8 RGB array of shape (h, w, 3).
        """
        return {}

    def close(self) -> None:
        """Release the file."""


#: Size of the decoded-tile cache of each open OpenSlide slide; None keeps
#: OpenSlide's own cache. Inference reads tiles in raster order, so only the
#: slide tiles shared with the previous read are worth keeping. OpenSlide's
#: own cache kept all 26 MB of the decoded sample slide (tests/test_memory.py).
OPENSLIDE_CACHE_BYTES: int | None = 8 << 20


class OpenSlideBackend(SlideBackend):
    """Vendor formats that OpenSlide reads: SVS, NDPI, MRXS, generic tiled TIFF, DICOM."""

    name = "openslide"

    def __init__(self, path: Path) -> None:
        super().__init__()
        import openslide

        self._slide = openslide.OpenSlide(str(path))
        if OPENSLIDE_CACHE_BYTES is not None and hasattr(openslide, "OpenSlideCache"):
            self._slide.set_cache(openslide.OpenSlideCache(OPENSLIDE_CACHE_BYTES))
        self.vendor = self._slide.properties.get(openslide.PROPERTY_NAME_VENDOR)
        self.level_dimensions = tuple(tuple(size) for size in self._slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        properties = self._slide.properties
        self.mpp = _positive_float(properties.get(openslide.PROPERTY_NAME_MPP_X)) or _positive_float(
            properties.get(openslide.PROPERTY_NAME_MPP_Y)
        )
        self.objective_power = _positive_float(properties.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER))
        if self.vendor == "generic-tiff" and self.mpp is not None and self.mpp > MAX_PLAUSIBLE_TAG_MPP:
            # OpenSlide takes a generic TIFF's mpp from its resolution tags.
            log.debug("ignoring TIFF resolution tags that give %.3g µm/px", self.mpp)
            self.mpp = None
        self._blocks: collections.OrderedDict[tuple[int, int, int], np.ndarray] = collections.OrderedDict()
        self._lock = threading.Lock()

    def read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        downsample = self.level_downsamples[level]
        if downsample == round(downsample):
            return self._read(level, x, y, width, height)

        # OpenSlide takes the origin in level-0 pixels and divides it by the
        # level's downsample. When the downsample is not a whole number, the
        # quotient has a fraction of up to 0.5 / downsample pixel, and
        # OpenSlide shifts the level's pixels by that fraction. Reading in
        # blocks on a fixed grid gives each pixel the same shift in every
        # read, so overlapping reads agree.
        size = OPENSLIDE_BLOCK_SIZE
        pixels = np.empty((height, width, 3), dtype=np.uint8)
        for block_y in range(y // size, (y + height - 1) // size + 1):
            for block_x in range(x // size, (x + width - 1) // size + 1):
                block = self._block(level, block_x, block_y)
                left, top = max(x, block_x * size), max(y, block_y * size)
                right = min(x + width, block_x * size + block.shape[1])
                bottom = min(y + height, block_y * size + block.shape[0])
                pixels[top - y : bottom - y, left - x : right - x] = block[
                    top - block_y * size : bottom - block_y * size,
                    left - block_x * size : right - block_x * size,
                ]
        return pixels

    def _block(self, level: int, block_x: int, block_y: int) -> np.ndarray:
        key = (level, block_x, block_y)
        with self._lock:
            if key in self._blocks:
                self._blocks.move_to_end(key)
                return self._blocks[key]
        size = OPENSLIDE_BLOCK_SIZE
        level_width, level_height = self.level_dimensions[level]
        x, y = block_x * size, block_y * size
        block = self._read(level, x, y, min(size, level_width - x), min(size, level_height - y))
        with self._lock:
            self._blocks[key] = block
            while len(self._blocks) > OPENSLIDE_CACHED_BLOCKS:
                self._blocks.popitem(last=False)
        return block

    def _read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        downsample = self.level_downsamples[level]
        location = (round(x * downsample), round(y * downsample))
        region = self._slide.read_region(location, level, (width, height))
        return to_rgb(np.asarray(region))

    def associated_images(self) -> dict[str, np.ndarray]:
        images = {}
        for name, image in self._slide.associated_images.items():
            if name.lower() in ASSOCIATED_IMAGE_NAMES:
                images[name.lower()] = to_rgb(np.asarray(image))
        return images

    def close(self) -> None:
        self._slide.close()


class TifffileBackend(SlideBackend):
    """TIFF files through tifffile: OME-TIFF pyramids with SubIFDs, plain TIFF, SVS.

    tifffile decodes JPEG tiles with imagecodecs, so it also reads files that
    OpenSlide rejects, such as JPEG tiles with 2x2 chroma subsampling that
    are tagged as RGB.
    """

    name = "tifffile"

    def __init__(self, path: Path) -> None:
        super().__init__()
        import tifffile
        import zarr

        self._file = tifffile.TiffFile(str(path))
        try:
            self._series = self._main_series()
            self._axes = self._series.axes
            self._check_pixel_type()
            self._levels = [
                zarr.open(self._series.aszarr(level=index), mode="r")
                for index in range(len(self._series.levels))
            ]
            dimensions = []
            for level in self._series.levels:
                shape = dict(zip(self._axes, level.shape))
                dimensions.append((int(shape["X"]), int(shape["Y"])))
            self.level_dimensions = tuple(dimensions)
            self.level_downsamples = _downsamples(dimensions)
            self.mpp, self.objective_power = self._read_resolution()
        except BaseException:
            self._file.close()
            raise

    def _main_series(self):
        candidates = [
            series for series in self._file.series if "Y" in series.axes and "X" in series.axes
        ]
        if not candidates:
            raise ValueError("no readable image series with Y and X axes was found")

        def area(series) -> int:
            shape = dict(zip(series.axes, series.shape))
            return int(shape["Y"]) * int(shape["X"])

        return max(candidates, key=area)

    def _check_pixel_type(self) -> None:
        if self._series.dtype != np.uint8:
            raise ValueError(
                f"pixels are {self._series.dtype}; only 8-bit greyscale, RGB and RGBA images are supported"
            )
        shape = dict(zip(self._axes, self._series.shape))
        channels = int(shape.get("S", 1)) * int(shape.get("C", 1))
        if channels not in (1, 2, 3, 4):
            raise ValueError(
                f"the image has {channels} channels (axes {self._axes}, shape {self._series.shape}); "
                "only greyscale, RGB and RGBA images are supported"
            )

    def _read_resolution(self) -> tuple[float | None, float | None]:
        page = self._file.pages[0]
        mpp = objective = None
        if self._file.is_ome and self._file.ome_metadata:
            mpp, objective = _ome_resolution(self._file.ome_metadata)
        if self._file.is_svs:
            svs = _svs_description(page.description)
            mpp = mpp or _positive_float(svs.get("MPP"))
            objective = objective or _positive_float(svs.get("AppMag"))
        if mpp is None:
            mpp = _tag_resolution(page)
        return mpp, objective

    def read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        selection = []
        for axis in self._axes:
            if axis == "Y":
                selection.append(slice(y, y + height))
            elif axis == "X":
                selection.append(slice(x, x + width))
            elif axis in "SC":
                selection.append(slice(None))
            else:
                # Time points, focal planes and other extra axes: the first one.
                selection.append(0)
        pixels = np.asarray(self._levels[level][tuple(selection)])
        kept_axes = [axis for axis in self._axes if axis in "YXSC"]
        order = [kept_axes.index("Y"), kept_axes.index("X")]
        order += [index for index, axis in enumerate(kept_axes) if axis in "SC"]
        pixels = pixels.transpose(order).reshape(height, width, -1)
        return to_rgb(pixels)

    def associated_images(self) -> dict[str, np.ndarray]:
        images = {}
        for series in self._file.series:
            name = series.name.lower()
            if name not in ASSOCIATED_IMAGE_NAMES or series is self._series:
                continue
            pixels = series.asarray()
            if pixels.dtype == np.uint8 and series.axes in ("YXS", "YX"):
                images[name] = to_rgb(pixels)
        return images

    def close(self) -> None:
        self._file.close()


class PillowBackend(SlideBackend):
    """Single images through Pillow: PNG, JPEG, BMP, GIF and WebP tiles.

    The whole image is decoded into memory when the file is opened. Resolution
    fields in PNG and JPEG files (dpi) are screen defaults in practice, so the
    backend reports no mpp.
    """

    name = "pillow"

    def __init__(self, path: Path) -> None:
        super().__init__()
        from PIL import Image

        with Image.open(path, formats=PILLOW_FORMATS) as image:
            image.load()
            if image.mode not in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr"):
                raise ValueError(
                    f"Pillow pixel mode {image.mode} is not supported; "
                    "convert the image to 8-bit RGB"
                )
            if image.mode in ("P", "PA") or (image.mode == "L" and "transparency" in image.info):
                image = image.convert("RGBA")
            elif image.mode in ("1", "CMYK", "YCbCr"):
                image = image.convert("RGB")
            self._pixels = to_rgb(np.asarray(image))
        height, width = self._pixels.shape[:2]
        self.level_dimensions = ((width, height),)
        self.level_downsamples = (1.0,)

    def read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        return self._pixels[y : y + height, x : x + width].copy()


def _ome_resolution(ome_xml: str) -> tuple[float | None, float | None]:
    """Read PhysicalSizeX (converted to µm) and the nominal magnification from OME-XML."""
    try:
        root = ElementTree.fromstring(ome_xml)
    except ElementTree.ParseError as error:
        log.warning("ignoring OME-XML metadata that does not parse: %s", error)
        return None, None
    mpp = objective = None
    for element in root.iter():
        tag = element.tag.rsplit("}", 1)[-1]
        if tag == "Pixels" and mpp is None:
            size = _positive_float(element.get("PhysicalSizeX"))
            unit = element.get("PhysicalSizeXUnit", "µm")
            if size is not None and unit in _MICRONS_PER_UNIT:
                mpp = size * _MICRONS_PER_UNIT[unit]
            elif size is not None:
                log.warning("ignoring OME PhysicalSizeX in unknown unit %r", unit)
        elif tag == "Objective" and objective is None:
            objective = _positive_float(element.get("NominalMagnification"))
    return mpp, objective


def _svs_description(description: str) -> dict[str, str]:
    """Parse the ``key = value`` fields that Aperio writes into ImageDescription, split by ``|``."""
    fields = {}
    for part in description.split("|")[1:]:
        match = re.fullmatch(r"\s*([^=]+?)\s*=\s*(.*?)\s*", part)
        if match:
            fields[match.group(1)] = match.group(2)
    return fields


def _tag_resolution(page) -> float | None:
    """Read µm/px from the XResolution and ResolutionUnit tags (inch or centimetre only)."""
    unit_tag = page.tags.get("ResolutionUnit")
    resolution_tag = page.tags.get("XResolution")
    if unit_tag is None or resolution_tag is None:
        return None
    microns_per_unit = {2: 25400.0, 3: 10000.0}.get(int(unit_tag.value))
    numerator, denominator = resolution_tag.value
    if microns_per_unit is None or numerator <= 0 or denominator <= 0:
        return None
    mpp = microns_per_unit * denominator / numerator
    if mpp > MAX_PLAUSIBLE_TAG_MPP:
        log.debug("ignoring TIFF resolution tags that give %.3g µm/px", mpp)
        return None
    return mpp
