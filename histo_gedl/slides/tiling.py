"""Plan a grid of tiles over a slide and write them to a folder.

The grid lives at the target resolution: tile ``(col, row)`` origins are
whole multiples of the stride in target pixels, so the tiles match the parts
of one large :meth:`~histo_gedl.slides.slide.Slide.read_region` at the same
mpp: pixel for pixel where nothing is resampled, within 1 grey level otherwise. The last row and column reach past the slide's edge unless the
grid fits exactly, and ``read_region`` pads that part with white.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from histo_gedl import __version__
from histo_gedl.errors import InvalidParameterError
from histo_gedl.slides.slide import Slide, validate_mpp
from histo_gedl.slides.tissue import TissueMask

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
THUMBNAIL_NAME = "thumbnail.png"
TILES_FOLDER = "tiles"


@dataclass(frozen=True)
class TilePlan:
    """One tile of a grid at a target resolution.

    Attributes:
        index: Position of the tile in the plan, from 0.
        col: Left edge of the tile in target-mpp pixels from the slide's left edge.
        row: Top edge of the tile in target-mpp pixels from the slide's top edge.
        location: ``(x, y)`` of the top-left corner in level-0 pixels.
        size: ``(width, height)`` in pixels at ``mpp``.
        mpp: Target resolution in micrometres per pixel.
        tissue_fraction: Tissue area over tile area, or None when no tissue mask was given.
    """

    index: int
    col: int
    row: int
    location: tuple[float, float]
    size: tuple[int, int]
    mpp: float
    tissue_fraction: float | None

    def read(self, slide: Slide) -> np.ndarray:
        """Read this tile from ``slide`` as uint8 RGB array of shape (height, width, 3)."""
        return slide.read_region(self.location, self.size, self.mpp)


def validate_tiling(tile_size: object, overlap: object, min_tissue_fraction: object = 0.0) -> None:
    """Check the grid parameters of :func:`plan_tiles`.

    Raises:
        InvalidParameterError: ``tile_size`` is not a whole number above 0,
            ``overlap`` is not a whole number from 0 to ``tile_size - 1``, or
            ``min_tissue_fraction`` is not from 0 to 1.
    """
    whole = isinstance(tile_size, (int, np.integer)) and not isinstance(tile_size, bool)
    if not whole or tile_size < 1:
        raise InvalidParameterError(
            f"invalid tile size {tile_size!r}: pass a whole number of pixels above 0, for example 256"
        )
    whole = isinstance(overlap, (int, np.integer)) and not isinstance(overlap, bool)
    if not whole or overlap < 0:
        raise InvalidParameterError(
            f"invalid overlap {overlap!r}: pass a whole number of pixels, 0 or more"
        )
    if overlap >= tile_size:
        raise InvalidParameterError(
            f"tile size {tile_size} must be larger than the overlap {overlap}, because the "
            "grid advances by tile size minus overlap; lower the overlap or raise the tile size"
        )
    if not isinstance(min_tissue_fraction, (int, float)) or not 0.0 <= min_tissue_fraction <= 1.0:
        raise InvalidParameterError(
            f"invalid minimum tissue fraction {min_tissue_fraction!r}: pass a number from 0 to 1"
        )


def grid_origins(extent: float, tile_size: int, stride: int) -> list[int]:
    """Return tile origins, in target pixels, that cover ``[0, extent)`` with the fewest tiles.

    The first tile starts at 0 and each next one ``stride`` pixels later; the
    last one is the first whose end reaches ``extent``.
    """
    count = max(1, math.ceil((extent - tile_size) / stride) + 1)
    return [index * stride for index in range(count)]


def plan_tiles(
    slide: Slide,
    mpp: float,
    tile_size: int,
    overlap: int = 0,
    tissue: TissueMask | None = None,
    min_tissue_fraction: float = 0.0,
) -> list[TilePlan]:
    """Plan a grid of square tiles at ``mpp`` over the whole slide.

    Tiles advance by ``tile_size - overlap`` target pixels, row by row. Tiles
    in the last row and column reach past the slide's edge unless the grid
    fits exactly, and reading them pads that part with white. With a ``tissue`` mask, a tile is kept
    when its tissue fraction is above 0 and at least ``min_tissue_fraction``;
    without one, every tile is kept.

    Args:
        slide: An open slide with a known mpp.
        mpp: Target resolution in micrometres per pixel.
        tile_size: Width and height of a tile in target pixels.
        overlap: Pixels that neighbouring tiles share, from 0 to ``tile_size - 1``.
        tissue: Tissue mask from :func:`~histo_gedl.slides.tissue.detect_tissue`.
        min_tissue_fraction: Minimum tissue fraction, from 0 to 1; needs ``tissue`` when above 0.

    Returns:
        The kept tiles, numbered from 0 in row-major order.

    Raises:
        InvalidParameterError: ``mpp``, ``tile_size``, ``overlap`` or
            ``min_tissue_fraction`` is invalid, or ``min_tissue_fraction`` is
            above 0 without a ``tissue`` mask.
        MissingMppError: The slide's mpp is unknown.
    """
    mpp = validate_mpp(mpp)
    validate_tiling(tile_size, overlap, min_tissue_fraction)
    if min_tissue_fraction > 0 and tissue is None:
        raise InvalidParameterError(
            f"minimum tissue fraction {min_tissue_fraction} needs a tissue mask; "
            "pass tissue=detect_tissue(slide)"
        )
    downsample = mpp / slide.require_mpp()
    if downsample < 1.0:
        log.warning(
            "%s: target %.4g µm/px is finer than the slide's %.4g µm/px; tiles are enlarged",
            slide.path, mpp, slide.mpp,
        )
    width, height = slide.dimensions
    if width / downsample < tile_size and height / downsample < tile_size:
        raise InvalidParameterError(
            f"at {mpp:g} µm/px {slide.path.name} is only {width / downsample:.0f}x{height / downsample:.0f} px, "
            f"smaller than one {tile_size} px tile; mpp is micrometres per pixel, not a magnification "
            "(20x is about 0.5, 40x about 0.25)"
        )
    stride = tile_size - overlap
    cols = grid_origins(width / downsample, tile_size, stride)
    rows = grid_origins(height / downsample, tile_size, stride)
    tile_level0 = tile_size * downsample

    plans = []
    for row in rows:
        for col in cols:
            location = (col * downsample, row * downsample)
            fraction = None
            if tissue is not None:
                fraction = tissue.fraction(location, (tile_level0, tile_level0))
                if fraction <= 0 or fraction < min_tissue_fraction:
                    continue
            plans.append(
                TilePlan(
                    index=len(plans), col=col, row=row, location=location,
                    size=(tile_size, tile_size), mpp=mpp, tissue_fraction=fraction,
                )
            )
    log.info(
        "%s: planned %d of %d tiles of %d px at %.4g µm/px",
        slide.path, len(plans), len(rows) * len(cols), tile_size, mpp,
    )
    return plans


def tile_file_name(plan: TilePlan) -> str:
    """Return the PNG name of a tile, from its grid origin in target pixels."""
    return f"tile_row{plan.row:06d}_col{plan.col:06d}.png"


def check_output_folder(out_dir: str | os.PathLike[str], overwrite: bool = False) -> None:
    """Check that :func:`write_tiles` may write to ``out_dir``.

    Raises:
        InvalidParameterError: ``out_dir`` is a file, or a folder that is not
            empty while ``overwrite`` is False.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidParameterError(f"output folder {out_dir} is a file; choose another output path")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise InvalidParameterError(
            f"output folder {out_dir} already exists and is not empty; choose another folder "
            "or pass overwrite=True (--overwrite on the command line) to replace it"
        )


def write_tiles(
    slide: Slide,
    plans: Sequence[TilePlan],
    out_dir: str | os.PathLike[str],
    overwrite: bool = False,
    thumbnail_size: int = 1024,
    progress: bool | None = None,
) -> Path:
    """Write tiles as PNG files, a manifest and a thumbnail with the grid.

    ``out_dir`` gets ``tiles/*.png``, ``manifest.json`` (the slide, and per
    tile its file, level-0 position, size, mpp and tissue fraction) and
    ``thumbnail.png`` with each tile's outline. Everything is written into a
    temporary sibling folder that is renamed to ``out_dir`` when complete. On
    any error the temporary folder is removed and ``out_dir`` is unchanged.

    Args:
        slide: The slide that ``plans`` were made for.
        plans: Tiles from :func:`plan_tiles`.
        out_dir: Output folder; it must not exist or be empty unless ``overwrite``.
        overwrite: Replace an existing ``out_dir`` and everything in it.
        thumbnail_size: Longer side of ``thumbnail.png`` in pixels.
        progress: Show a progress bar; by default only when stderr is a terminal.

    Returns:
        ``out_dir``.

    Raises:
        InvalidParameterError: ``out_dir`` is a file, or a folder that is not
            empty while ``overwrite`` is False.
        SlideReadError: Reading a tile failed.
    """
    out_dir = Path(out_dir)
    check_output_folder(out_dir, overwrite)
    if progress is None:
        progress = sys.stderr.isatty()

    created_parents = _make_parents(out_dir.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    log.info("%s: writing %d tiles to %s", slide.path, len(plans), out_dir)
    try:
        (staging / TILES_FOLDER).mkdir()
        records = []
        for plan in tqdm(plans, desc="tiles", unit="tile", disable=not progress):
            name = f"{TILES_FOLDER}/{tile_file_name(plan)}"
            Image.fromarray(plan.read(slide)).save(staging / name)
            records.append({"file": name, **_plan_record(plan)})
        _write_manifest(staging / MANIFEST_NAME, slide, records)
        Image.fromarray(draw_grid(slide, plans, thumbnail_size)).save(staging / THUMBNAIL_NAME)
        _replace_folder(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in reversed(created_parents):
            _remove_if_empty(folder)
        raise
    log.info("%s: wrote %d tiles to %s", slide.path, len(plans), out_dir)
    return out_dir


def _plan_record(plan: TilePlan) -> dict:
    record = asdict(plan)
    record["location"] = list(plan.location)
    record["size"] = list(plan.size)
    return record


def _write_manifest(path: Path, slide: Slide, records: list[dict]) -> None:
    manifest = {
        "format": "histo-gedl tiles",
        "histo_gedl_version": __version__,
        "coordinates": "location is (x, y) in level-0 pixels; size is (width, height) in pixels at mpp",
        "slide": {
            "path": str(slide.path),
            "name": slide.name,
            "backend": slide.backend,
            "dimensions": list(slide.dimensions),
            "mpp": slide.mpp,
        },
        "tiles": records,
    }
    path.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")


def draw_grid(slide: Slide, plans: Sequence[TilePlan], max_size: int = 1024) -> np.ndarray:
    """Draw the outline of each planned tile on a thumbnail of the slide.

    Args:
        slide: The slide that ``plans`` were made for.
        plans: Tiles to outline.
        max_size: Longer side of the thumbnail in pixels.

    Returns:
        uint8 RGB array of shape (h, w, 3) with ``max(h, w) <= max_size``.
    """
    thumbnail = slide.get_thumbnail(max_size)
    scale = thumbnail.shape[1] / slide.dimensions[0]
    image = Image.fromarray(thumbnail)
    draw = ImageDraw.Draw(image)
    for plan in plans:
        downsample = plan.mpp / slide.require_mpp()
        left, top = plan.location[0] * scale, plan.location[1] * scale
        right = left + plan.size[0] * downsample * scale
        bottom = top + plan.size[1] * downsample * scale
        draw.rectangle((left, top, right, bottom), outline=(0, 160, 0))
    return np.asarray(image)


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return the ones created, outermost first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    created = []
    for path in reversed(missing):
        path.mkdir()
        created.append(path)
    return created


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def _replace_folder(staging: Path, out_dir: Path) -> None:
    """Rename ``staging`` to ``out_dir``, replacing an existing ``out_dir``."""
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    # Move the old folder aside first, so the rename of a complete folder is
    # the only step that puts new files at out_dir.
    retired = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
    os.replace(out_dir, retired / out_dir.name)
    try:
        os.replace(staging, out_dir)
    except OSError:
        os.replace(retired / out_dir.name, out_dir)
        retired.rmdir()
        raise
    shutil.rmtree(retired, ignore_errors=True)
