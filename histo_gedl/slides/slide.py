"""Open a slide through the first backend that reads it, and read regions at a resolution.

:func:`open_slide` tries OpenSlide, then tifffile, then Pillow, and returns a
:class:`Slide`. :meth:`Slide.read_region` reads a rectangle at a requested
resolution in µm/px (mpp), choosing the pyramid level and resampling so that
tiles cut on one grid agree with one large read.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from histo_gedl.errors import InvalidParameterError, MissingMppError, SlideReadError
from histo_gedl.slides.backends import (
    OpenSlideBackend,
    PillowBackend,
    SlideBackend,
    TifffileBackend,
)
from histo_gedl.slides.resample import resample

log = logging.getLogger(__name__)

#: A level is fine enough for a requested mpp when its mpp is at most the
#: requested mpp times (1 + this).
LEVEL_MPP_TOLERANCE = 1e-3

#: A requested mpp within this relative distance of a level's mpp, at an
#: origin on that level's pixel grid, is read without resampling.
EXACT_MPP_TOLERANCE = 1e-6

#: Value of the pixels outside the slide: white, the colour of empty glass.
PADDING_VALUE = 255


@functools.cache
def _decode_errors() -> tuple[type[BaseException], ...]:
    """Return the errors that the backends' libraries raise on data they cannot decode.

    imagecodecs' codec errors derive from RuntimeError, tifffile's from
    ValueError, and OpenSlide's from Exception only.
    """
    import openslide

    return (OSError, RuntimeError, ValueError, openslide.OpenSlideError)


_BACKENDS = {
    "openslide": OpenSlideBackend,
    "tifffile": TifffileBackend,
    "pillow": PillowBackend,
}


def validate_mpp(value: object, name: str = "mpp") -> float:
    """Return ``value`` as a float if it is a finite number above 0.

    Raises:
        InvalidParameterError: ``value`` is not a number, not finite, or not above 0.
    """
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number <= 0:
        raise InvalidParameterError(
            f"invalid {name} {value!r}: a resolution must be a finite number of micrometres "
            "per pixel above 0, for example 0.25 for a 40x scan or 0.5 for 20x"
        )
    return number


def _validate_size(size: Sequence[int], name: str = "size") -> tuple[int, int]:
    try:
        size = tuple(size)
    except TypeError:
        size = (size,)
    valid = (
        len(size) == 2
        and all(isinstance(value, (int, np.integer)) and not isinstance(value, bool) for value in size)
        and all(value > 0 for value in size)
    )
    if not valid:
        raise InvalidParameterError(
            f"invalid {name} {tuple(size)!r}: pass (width, height) as two whole numbers of pixels above 0"
        )
    return int(size[0]), int(size[1])


def _validate_location(location: Sequence[float]) -> tuple[float, float]:
    try:
        x, y = (float(value) for value in location)
    except (TypeError, ValueError):
        x = y = math.nan
    if not (math.isfinite(x) and math.isfinite(y)):
        raise InvalidParameterError(
            f"invalid location {location!r}: pass (x, y) as two finite numbers of level-0 pixels"
        )
    return x, y


def _slide_name(path: Path) -> str:
    stem = path.stem
    if stem.lower().endswith(".ome"):
        stem = stem[: -len(".ome")]
    return stem


class Slide:
    """A whole-slide image or image tile, opened through one backend.

    Positions are ``(x, y)`` in level-0 pixels and sizes are
    ``(width, height)``; returned images are uint8 RGB arrays of shape
    ``(height, width, 3)``. Use it as a context manager or call :meth:`close`.

    Attributes:
        path: The slide file.
        backend: Library that reads the file: ``"openslide"``, ``"tifffile"`` or ``"pillow"``.
        mpp: Micrometres per pixel at level 0, from the metadata or from
            ``slide_mpp``; None when unknown.
        objective_power: Magnification of the scanner's objective, or None when unknown.
    """

    def __init__(self, path: Path, backend: SlideBackend, slide_mpp: float | None = None) -> None:
        self.path = path
        self._backend = backend
        self.backend = backend.name
        self.objective_power = backend.objective_power
        self.mpp = backend.mpp
        if slide_mpp is not None:
            if self.mpp is not None and abs(slide_mpp - self.mpp) > 0.01 * self.mpp:
                log.warning(
                    "%s: slide_mpp %.4g overrides the metadata's %.4g µm/px", path, slide_mpp, self.mpp
                )
            self.mpp = slide_mpp

    @property
    def name(self) -> str:
        """File name without its extension or a ``.ome`` before it."""
        return _slide_name(self.path)

    @property
    def dimensions(self) -> tuple[int, int]:
        """``(width, height)`` of level 0 in pixels."""
        return self._backend.level_dimensions[0]

    @property
    def level_count(self) -> int:
        """Number of pyramid levels."""
        return len(self._backend.level_dimensions)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """``(width, height)`` of each level in pixels, level 0 first."""
        return self._backend.level_dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        """Level-0 pixels per pixel of each level; 1.0 for level 0."""
        return self._backend.level_downsamples

    @functools.cached_property
    def associated_images(self) -> dict[str, np.ndarray]:
        """Label, macro and thumbnail images that the file contains, each (h, w, 3) uint8 RGB."""
        return self._backend.associated_images()

    def level_mpp(self, level: int) -> float | None:
        """Return the µm/px of ``level``, or None when the slide's mpp is unknown.

        Raises:
            InvalidParameterError: ``level`` is not a level of this slide.
        """
        if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 0 <= level < self.level_count:
            raise InvalidParameterError(
                f"invalid level {level!r}: {self.path} has levels 0 to {self.level_count - 1}"
            )
        if self.mpp is None:
            return None
        return self.mpp * self.level_downsamples[level]

    def best_level(self, downsample: float) -> int:
        """Return the coarsest level at least as fine as ``downsample`` level-0 pixels per pixel.

        A level qualifies when its downsample is at most ``downsample * (1 +
        LEVEL_MPP_TOLERANCE)``; level 0 is returned when none does.
        """
        limit = downsample * (1.0 + LEVEL_MPP_TOLERANCE)
        candidates = [level for level, d in enumerate(self.level_downsamples) if d <= limit]
        if not candidates:
            return 0
        return max(candidates, key=lambda level: self.level_downsamples[level])

    def read_region(
        self, location: Sequence[float], size: Sequence[int], mpp: float
    ) -> np.ndarray:
        """Read a rectangle of the slide at ``mpp`` micrometres per pixel.

        The region is read from the coarsest level whose mpp is at most
        ``mpp`` (within a relative 1e-3). It is resampled to ``mpp`` with a
        Gaussian antialiasing blur and bilinear interpolation, both computed
        on the absolute pixel grid, so tiles on one grid equal the matching
        parts of one large read. When ``mpp`` equals the level's mpp
        (relative 1e-6) and ``location`` is a whole multiple of the level's
        downsample, the level's pixels are copied without resampling. Output
        pixels outside the slide are white (255, 255, 255), the colour of
        empty glass, and resampling blends pixels at the edge with that white.

        Args:
            location: ``(x, y)`` of the top-left corner in level-0 pixels; may be fractional.
            size: ``(width, height)`` of the output in pixels at ``mpp``.
            mpp: Output resolution in micrometres per pixel.

        Returns:
            uint8 RGB array of shape (height, width, 3).

        Raises:
            InvalidParameterError: ``mpp`` is not a finite number above 0, or
                ``size`` has an entry that is not a whole number above 0.
            MissingMppError: The slide's mpp is unknown.
            SlideReadError: The backend failed to decode the pixels.
        """
        mpp = validate_mpp(mpp)
        size = _validate_size(size)
        location = _validate_location(location)
        return self._read_scaled(location, size, mpp / self.require_mpp())

    def require_mpp(self) -> float:
        """Return the slide's mpp.

        Raises:
            MissingMppError: The metadata has no mpp and none was given to :func:`open_slide`.
        """
        if self.mpp is None:
            raise MissingMppError(
                f"{self.path}: no resolution (micrometres per pixel, mpp) was found in the "
                "slide's metadata; pass it with slide_mpp= to open_slide() in Python or "
                "--slide-mpp on the command line, for example 0.25 for a 40x scan or 0.5 for 20x"
            )
        return self.mpp

    def get_thumbnail(self, max_size: int) -> np.ndarray:
        """Read the whole slide shrunk so that its longer side is at most ``max_size`` pixels.

        Slides that already fit are returned at level-0 size. This works
        without a known mpp.

        Args:
            max_size: Maximum width and height of the result in pixels.

        Returns:
            uint8 RGB array of shape (h, w, 3) with ``max(h, w) <= max_size``.

        Raises:
            InvalidParameterError: ``max_size`` is not a whole number above 0.
        """
        if isinstance(max_size, bool) or not isinstance(max_size, (int, np.integer)) or max_size < 1:
            raise InvalidParameterError(
                f"invalid thumbnail size {max_size!r}: pass a whole number of pixels above 0"
            )
        width, height = self.dimensions
        downsample = max(1.0, max(width, height) / max_size)
        size = (
            min(max_size, max(1, round(width / downsample))),
            min(max_size, max(1, round(height / downsample))),
        )
        return self._read_scaled((0.0, 0.0), size, downsample)

    def _read_scaled(
        self, location: tuple[float, float], size: tuple[int, int], downsample: float
    ) -> np.ndarray:
        """Read ``size`` output pixels of ``downsample`` level-0 pixels each, from ``location``."""
        level = self.best_level(downsample)
        level_downsample = self.level_downsamples[level]
        factor = downsample / level_downsample
        origin_x = location[0] / level_downsample
        origin_y = location[1] / level_downsample
        if factor < 1.0 - LEVEL_MPP_TOLERANCE:
            log.debug(
                "%s: enlarging level 0 by %.3g because the request is finer than the slide", self.path, 1 / factor
            )

        def read_window(x: int, y: int, width: int, height: int) -> np.ndarray:
            return self._read_window(level, x, y, width, height)

        on_grid = (
            abs(origin_x - round(origin_x)) <= EXACT_MPP_TOLERANCE
            and abs(origin_y - round(origin_y)) <= EXACT_MPP_TOLERANCE
        )
        if abs(factor - 1.0) <= EXACT_MPP_TOLERANCE and on_grid:
            return read_window(round(origin_x), round(origin_y), size[0], size[1])
        return resample(read_window, (origin_x, origin_y), size, factor)

    def _read_window(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Read a rectangle of ``level`` in its pixels, padding white outside the level."""
        window = np.full((height, width, 3), PADDING_VALUE, dtype=np.uint8)
        level_width, level_height = self.level_dimensions[level]
        left, top = max(x, 0), max(y, 0)
        right, bottom = min(x + width, level_width), min(y + height, level_height)
        if right <= left or bottom <= top:
            return window
        try:
            pixels = self._backend.read_level(level, left, top, right - left, bottom - top)
        except _decode_errors() as error:
            raise SlideReadError(
                f"{self.path}: {self.backend} failed to read level {level} at ({left}, {top}) "
                f"size ({right - left}, {bottom - top}): {error}; the file may be truncated or corrupt"
            ) from error
        window[top - y : bottom - y, left - x : right - x] = pixels
        return window

    def close(self) -> None:
        """Release the file."""
        self._backend.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        width, height = self.dimensions
        return (
            f"Slide({str(self.path)!r}, backend={self.backend!r}, dimensions=({width}, {height}), "
            f"levels={self.level_count}, mpp={self.mpp!r})"
        )


def _check_path(path: Path) -> None:
    if not path.exists():
        raise SlideReadError(f"slide file not found: {path}; check the path and the working folder")
    if path.is_dir():
        raise SlideReadError(
            f"{path} is a folder, not a slide file; pass the slide file itself "
            "(for MIRAX, the .mrxs file beside its data folder)"
        )
    if path.stat().st_size == 0:
        raise SlideReadError(f"{path} is empty (0 bytes); the copy is incomplete, so copy the slide again")


def _is_ome_pyramid(path: Path) -> bool:
    """Tell whether ``path`` is an OME-TIFF whose main image has SubIFD pyramid levels."""
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tiff:
            return bool(tiff.is_ome and tiff.series and len(tiff.series[0].levels) > 1)
    except Exception:  # noqa: BLE001 - any failure means "not an OME pyramid"; the backends report why.
        return False


def _open_backend(path: Path) -> tuple[SlideBackend | None, list[str]]:
    """Return the first backend that reads ``path`` (or None), and each failed backend's error."""
    order = ["openslide", "tifffile", "pillow"]
    if _is_ome_pyramid(path):
        order = ["tifffile", "openslide", "pillow"]
    failures = []
    for name in order:
        backend = None
        try:
            backend = _BACKENDS[name](path)
            _probe(backend)
        except Exception as error:  # noqa: BLE001 - each library has its own errors; all are reported.
            if backend is not None:
                backend.close()
            message = str(error).strip() or type(error).__name__
            failures.append(f"{name}: {message}")
            log.debug("%s: %s cannot read it: %r", path, name, error)
            continue
        log.debug("%s: opened with %s", path, name)
        return backend, failures
    return None, failures


def _probe(backend: SlideBackend) -> None:
    """Decode the bottom-right pixel of every level, which is stored last in most files."""
    for level, (width, height) in enumerate(backend.level_dimensions):
        if width < 1 or height < 1:
            raise ValueError(f"level {level} has size {width} x {height}")
        backend.read_level(level, width - 1, height - 1, 1, 1)


class _ForwardAsDebug(logging.Handler):
    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def emit(self, record: logging.LogRecord) -> None:
        log.debug("%s: %s: %s", self.path, record.name, record.getMessage())


@contextlib.contextmanager
def _tifffile_log_as_debug(path: Path) -> Iterator[None]:
    """Turn tifffile's log records into debug records of this module while the block runs.

    tifffile logs warnings and errors about damaged files as it parses
    them. open_slide reports each backend's failure in its exception, so
    on the command line those records would repeat it on extra lines.
    """
    tifffile_log = logging.getLogger("tifffile")
    handler = _ForwardAsDebug(path)
    propagate = tifffile_log.propagate
    tifffile_log.addHandler(handler)
    tifffile_log.propagate = False
    try:
        yield
    finally:
        tifffile_log.removeHandler(handler)
        tifffile_log.propagate = propagate


def open_slide(path: str | os.PathLike[str], slide_mpp: float | None = None) -> Slide:
    """Open a slide file with the first backend that reads it.

    The backends are tried in the order OpenSlide, tifffile, Pillow, except
    that OME-TIFF files with SubIFD pyramid levels go to tifffile first,
    because OpenSlide reads only their first level. A backend counts as
    working when it opens the file and decodes the bottom-right pixel of
    every level.

    Args:
        path: The slide file.
        slide_mpp: Micrometres per pixel at level 0; overrides the metadata,
            and supplies the mpp where the metadata has none.

    Returns:
        The open slide.

    Raises:
        SlideReadError: The path is missing, a folder or an empty file, or no
            backend reads it; the message lists each backend's error.
        InvalidParameterError: ``slide_mpp`` is not a finite number above 0.
    """
    path = Path(path)
    if slide_mpp is not None:
        slide_mpp = validate_mpp(slide_mpp, name="slide_mpp")
    _check_path(path)

    with _tifffile_log_as_debug(path):
        backend, failures = _open_backend(path)
    if backend is not None:
        return Slide(path, backend, slide_mpp)
    raise SlideReadError(
        f"cannot read {path} as a slide; tried " + "; ".join(failures) + ". Check that the "
        "file is complete and is a format that OpenSlide, tifffile or Pillow reads "
        "(SVS, NDPI, MRXS, tiled TIFF, OME-TIFF, PNG, JPEG)"
    )
