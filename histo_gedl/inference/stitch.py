"""A probability canvas on disk (zarr) that tile predictions are stitched into.

Two methods:

- ``"exact"`` (default): each tile writes only its core, after dropping the
  halo. With the plan's stride-aligned tiles and a halo of at least the
  receptive field, the result does not depend on the tiling and equals one
  pass of the model over the whole padded slide. Writes are idempotent, so a
  resumed run can rewrite a tile safely.
- ``"gaussian"``: each tile adds its whole prediction, core and halo,
  weighted by a Gaussian window centred on the tile, and the canvas is
  divided by the summed weights when read. Seams fade out, but every pixel
  mixes predictions made with different context, so the result depends on
  the tiling. This is what sliding-window inferers such as MONAI's do.
  Accumulation is not idempotent, so gaussian runs cannot be resumed.

Memory is bounded by one batch of tiles; the canvas lives in ``path``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import zarr

from histo_gedl.errors import InvalidParameterError
from histo_gedl.inference.plan import InferencePlan, InferenceTile

log = logging.getLogger(__name__)

STITCH_METHODS = ("exact", "gaussian")
CHUNK = 256


def gaussian_window(size: int, sigma_scale: float = 0.125) -> np.ndarray:
    """Return a (size, size) Gaussian weight window with sigma ``sigma_scale * size``.

    Its minimum is clipped to 1e-3 of the peak so that edge pixels of the
    slide, which only one tile covers, keep a usable weight.
    """
    centre = (size - 1) / 2
    axis = np.exp(-((np.arange(size) - centre) ** 2) / (2 * (sigma_scale * size) ** 2))
    window = np.outer(axis, axis)
    return np.maximum(window / window.max(), 1e-3).astype(np.float32)


class ProbabilityCanvas:
    """Per-class scores (C, H, W) float32 at the read resolution, stored as zarr.

    Use :meth:`create` for a new canvas and :meth:`open` to continue one.
    """

    def __init__(self, path: Path, method: str, scores: zarr.Array, weights: zarr.Array | None) -> None:
        self.path = path
        self.method = method
        self.scores = scores
        self.weights = weights
        self._window: np.ndarray | None = None

    @classmethod
    def create(cls, path: str | Path, classes: int, canvas_size: tuple[int, int], method: str = "exact") -> "ProbabilityCanvas":
        if method not in STITCH_METHODS:
            raise InvalidParameterError(
                f"unknown stitching method {method!r}; use one of {', '.join(STITCH_METHODS)}"
            )
        path = Path(path)
        width, height = canvas_size
        scores = zarr.open_array(
            store=str(path / "scores"), mode="w", shape=(classes, height, width),
            chunks=(classes, CHUNK, CHUNK), dtype="float32",
            fill_value=float("nan") if method == "exact" else 0.0,
        )
        weights = None
        if method == "gaussian":
            weights = zarr.open_array(
                store=str(path / "weights"), mode="w", shape=(height, width),
                chunks=(CHUNK, CHUNK), dtype="float32", fill_value=0.0,
            )
        return cls(path, method, scores, weights)

    @classmethod
    def open(cls, path: str | Path, method: str) -> "ProbabilityCanvas":
        path = Path(path)
        scores = zarr.open_array(store=str(path / "scores"), mode="r+")
        weights = zarr.open_array(store=str(path / "weights"), mode="r+") if method == "gaussian" else None
        return cls(path, method, scores, weights)

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the canvas."""
        return tuple(self.scores.shape[1:])

    def add_tile(self, plan: InferencePlan, tile: InferenceTile, prediction: np.ndarray) -> None:
        """Stitch one tile's prediction (C, tile_size, tile_size) into the canvas."""
        expected = (self.scores.shape[0], plan.tile_size, plan.tile_size)
        if prediction.shape != expected:
            raise InvalidParameterError(f"tile prediction has shape {prediction.shape}, expected {expected}")
        height, width = self.shape
        if self.method == "exact":
            row1 = min(tile.row + plan.core, height)
            col1 = min(tile.col + plan.core, width)
            core = prediction[:, plan.halo : plan.halo + row1 - tile.row, plan.halo : plan.halo + col1 - tile.col]
            self.scores[:, tile.row : row1, tile.col : col1] = core
            return
        if self._window is None:
            self._window = gaussian_window(plan.tile_size)
        top, left = tile.row - plan.halo, tile.col - plan.halo
        row0, col0 = max(top, 0), max(left, 0)
        row1, col1 = min(top + plan.tile_size, height), min(left + plan.tile_size, width)
        window = self._window[row0 - top : row1 - top, col0 - left : col1 - left]
        part = prediction[:, row0 - top : row1 - top, col0 - left : col1 - left]
        self.scores[:, row0:row1, col0:col1] = self.scores[:, row0:row1, col0:col1] + part * window
        self.weights[row0:row1, col0:col1] = self.weights[row0:row1, col0:col1] + window

    def read(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        """Return stitched scores (C, row1 - row0, col1 - col0); never-covered pixels are background."""
        scores = np.asarray(self.scores[:, row0:row1, col0:col1])
        if self.method == "gaussian":
            weights = np.asarray(self.weights[row0:row1, col0:col1])
            covered = weights > 0
            scores = np.where(covered, scores / np.where(covered, weights, 1.0), 0.0)
        else:
            covered = ~np.isnan(scores[0])
            scores = np.nan_to_num(scores, nan=0.0)
        # Pixels that no tile covered (no tissue there) count as certain background.
        scores[0][~covered] = 1.0
        return scores.astype(np.float32)
