"""Planning whole-slide inference: which mpp to read at, and which tiles to run.

A plan is plain data (numbers and lists, JSON-serialisable), so that another
engine can hand its tiles to many workers.

Tiles are placed on the grid of the *read* resolution. Each tile has a core of
``core`` x ``core`` output pixels at ``(col, row)`` and is read with a halo of
``halo`` pixels on every side, so the model takes ``core + 2 halo`` pixels as input.
Cores and halos are multiples of the model's total stride, so the pooling
windows of every tile line up with those of one pass over the whole slide,
and the halo is at least the model's receptive-field radius. Together these
make each core pixel equal (up to float rounding) to the same pixel of one
pass of the model over the whole slide padded by ``halo`` white pixels.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from histo_gedl.errors import InvalidParameterError


@dataclass(frozen=True)
class InferenceTile:
    """One tile: its core at ``(col, row)`` in read-resolution pixels, ``size`` x ``size``."""

    index: int
    col: int
    row: int


@dataclass
class InferencePlan:
    """Everything needed to read, predict and stitch one slide.

    Attributes:
        slide_path: the slide file.
        slide_dimensions: level-0 (width, height).
        slide_mpp: level-0 resolution in µm per pixel.
        read_mpp: resolution tiles are read at (the model's mpp, or a native
            level's mpp when it is within the tolerance of it).
        canvas_size: (width, height) of the slide at ``read_mpp``.
        core: core tile width in read-resolution pixels.
        halo: context added on each side, in read-resolution pixels.
        tiles: tiles whose core touches tissue, in row-major order.
    """

    slide_path: str
    slide_dimensions: tuple[int, int]
    slide_mpp: float
    read_mpp: float
    canvas_size: tuple[int, int]
    core: int
    halo: int
    tiles: list[InferenceTile] = field(default_factory=list)

    @property
    def scale(self) -> float:
        """Level-0 pixels per read-resolution pixel."""
        return self.read_mpp / self.slide_mpp

    @property
    def tile_size(self) -> int:
        """Width of the model input per tile (core plus two halos)."""
        return self.core + 2 * self.halo

    def location(self, tile: InferenceTile) -> tuple[float, float]:
        """Level-0 (x, y) of the top-left corner of the tile's halo region."""
        return ((tile.col - self.halo) * self.scale, (tile.row - self.halo) * self.scale)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["tiles"] = [[t.index, t.col, t.row] for t in self.tiles]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "InferencePlan":
        data = dict(data)
        tiles = [InferenceTile(*t) for t in data.pop("tiles")]
        data["slide_dimensions"] = tuple(data["slide_dimensions"])
        data["canvas_size"] = tuple(data["canvas_size"])
        return cls(tiles=tiles, **data)


def choose_read_mpp(level_mpps: list[float], model_mpp: float, tolerance: float) -> float:
    """Return the mpp to read at: a native level's mpp within ``tolerance`` of the model's, else the model's.

    Reading at a native level copies pixels without resampling. Scanners
    report resolutions that differ by a few percent for the same objective,
    so a small mismatch is accepted rather than resampled.
    """
    for mpp in sorted(level_mpps):
        if abs(mpp - model_mpp) <= tolerance * model_mpp:
            return mpp
    return model_mpp


def _round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def halo_and_min_tile_size(stride: int, receptive_field: int) -> tuple[int, int]:
    """Return the halo (receptive field rounded up to the stride) and the smallest usable tile size."""
    halo = _round_up(receptive_field, stride)
    return halo, 2 * halo + stride


def plan_inference(
    slide_path: str,
    slide_dimensions: tuple[int, int],
    slide_mpp: float,
    read_mpp: float,
    stride: int,
    receptive_field: int,
    tile_size: int,
    tissue_mask: np.ndarray | None = None,
    tissue_mpp: float | None = None,
) -> InferencePlan:
    """Plan the tiles of one slide.

    Args:
        slide_path: the slide file (recorded in the plan).
        slide_dimensions: level-0 (width, height).
        slide_mpp: level-0 resolution, µm per pixel.
        read_mpp: resolution to read and predict at, µm per pixel.
        stride: the model's total stride; cores and halos are multiples of it.
        receptive_field: the model's receptive-field radius in pixels.
        tile_size: requested width of the model input per tile
            (core plus halos), in read-resolution pixels; rounded down to a
            multiple of ``stride``.
        tissue_mask: boolean (h, w) mask at ``tissue_mpp``; tiles whose core
            touches no tissue are skipped. None keeps every tile.
        tissue_mpp: resolution of ``tissue_mask``.

    Raises:
        InvalidParameterError: ``tile_size`` leaves no core after the halos.
    """
    halo, smallest = halo_and_min_tile_size(stride, receptive_field)
    size = (tile_size // stride) * stride
    core = size - 2 * halo
    if core < stride:
        raise InvalidParameterError(
            f"tile size {tile_size} px is too small for this model: it needs a halo of {halo} px "
            f"on each side (receptive field {receptive_field} px, stride {stride}), so use at least "
            f"{smallest} px"
        )
    scale = read_mpp / slide_mpp
    width = int(math.ceil(slide_dimensions[0] / scale))
    height = int(math.ceil(slide_dimensions[1] / scale))
    plan = InferencePlan(slide_path, tuple(slide_dimensions), slide_mpp, read_mpp, (width, height), core, halo)
    index = 0
    for row in range(0, height, core):
        for col in range(0, width, core):
            if tissue_mask is not None and not _touches_tissue(
                tissue_mask, tissue_mpp, col, row, core, read_mpp
            ):
                continue
            plan.tiles.append(InferenceTile(index, col, row))
            index += 1
    return plan


def _touches_tissue(mask: np.ndarray, mask_mpp: float, col: int, row: int, core: int, read_mpp: float) -> bool:
    factor = read_mpp / mask_mpp
    top, left = int(math.floor(row * factor)), int(math.floor(col * factor))
    bottom = int(math.ceil((row + core) * factor))
    right = int(math.ceil((col + core) * factor))
    return bool(mask[max(top - 1, 0) : bottom + 1, max(left - 1, 0) : right + 1].any())
