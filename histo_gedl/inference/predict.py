"""Running a model on batches of tiles, with optional test-time augmentation."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from histo_gedl.errors import InvalidParameterError
from histo_gedl.models.unet import SegmentationModel

TTA_MODES = ("none", "rot90", "dihedral")


class TilePredictor(Protocol):
    """Interface that the stitching engine requires of a predictor.

    ``__call__`` maps RGB tiles (B, H, W, 3) uint8 to per-pixel class scores
    (B, C, H, W) float32. ``stride`` is the size multiple it needs, and
    ``receptive_field`` the number of pixels of context on each side that
    fully determines one output pixel.
    """

    classes: tuple[str, ...]
    stride: int
    receptive_field: int

    def __call__(self, tiles: np.ndarray) -> np.ndarray: ...


class ModelPredictor:
    """Class probabilities of a :class:`SegmentationModel` for batches of RGB tiles.

    Args:
        model: the model, put in evaluation mode.
        tta: "none"; "rot90" averages the four quarter turns; "dihedral"
            averages all eight quarter turns and flips. For a model that is
            exactly invariant to these, TTA changes nothing but costs time.
        device: torch device name, e.g. "cpu" or "cuda".
        export: run the plain-PyTorch equivalent from
            :func:`~histo_gedl.models.export_torch`, which expands the
            equivariant filters once instead of in every forward pass and
            folds batch norm into the convolutions. Outputs agree with the
            original model up to float rounding.
        micro_batch: tiles per forward pass of the model. A call's batch is
            cut into parts of this many tiles. None means 1 on the CPU and
            the whole batch on CUDA. On the CPU, one tile at a time took 0.80
            of the time and under half the peak memory of four tiles at once
            (docs/benchmarks.md, shipped model, 512 px tiles).
    """

    def __init__(
        self,
        model: SegmentationModel,
        tta: str = "none",
        device: str = "cpu",
        export: bool = True,
        micro_batch: int | None = None,
    ) -> None:
        if tta not in TTA_MODES:
            raise InvalidParameterError(f"unknown TTA mode {tta!r}; use one of {', '.join(TTA_MODES)}")
        if not (device == "cpu" or device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())):
            raise InvalidParameterError(f"unknown device {device!r}; use cpu, cuda or cuda:N")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise InvalidParameterError(
                f"device {device!r} requested but CUDA is not available in this torch build "
                f"({torch.__version__}); use --device cpu or install a CUDA build of torch"
            )
        if micro_batch is not None and (
            isinstance(micro_batch, bool) or not isinstance(micro_batch, int) or micro_batch < 1
        ):
            raise InvalidParameterError(f"invalid micro_batch {micro_batch!r}: pass a whole number above 0 or None")
        if export:
            from histo_gedl.models.export import export_torch

            self.model = export_torch(model).eval().to(device)
        else:
            self.model = model.eval().to(device)
        self.device = device
        if micro_batch is None and device == "cpu":
            micro_batch = 1
        self.micro_batch = micro_batch
        self.tta = tta
        self.classes = tuple(model.config.classes)
        self.stride = model.config.total_stride
        self.receptive_field = model.config.receptive_field_radius()

    def _transforms(self) -> list[tuple[int, bool]]:
        turns = [0] if self.tta == "none" else [0, 1, 2, 3]
        flips = [False, True] if self.tta == "dihedral" else [False]
        return [(k, flip) for flip in flips for k in turns]

    @torch.no_grad()
    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        if tiles.ndim != 4 or tiles.shape[-1] != 3 or tiles.dtype != np.uint8:
            raise InvalidParameterError(
                f"expected RGB tiles (B, H, W, 3) uint8, got {tiles.shape} {tiles.dtype}"
            )
        x = torch.from_numpy(np.ascontiguousarray(tiles)).to(self.device)
        # Tiles arrive as (B, H, W, 3); keeping that memory order (channels-last)
        # made PyTorch's CPU convolutions about 1.8x faster in benchmarks/bench_vs_monai.py.
        x = x.permute(0, 3, 1, 2).float().contiguous(memory_format=torch.channels_last) / 255.0
        total = None
        transforms = self._transforms()
        for turns, flip in transforms:
            view = x
            if flip:
                view = torch.flip(view, dims=(-1,))
            if turns:
                # torch.rot90 drops the channels-last layout (by 0 turns too, where it
                # copies to contiguous), and contiguous input made the model about 1.8x slower.
                view = torch.rot90(view, turns, dims=(-2, -1)).contiguous(memory_format=torch.channels_last)
            parts = torch.split(view, self.micro_batch) if self.micro_batch else (view,)
            probabilities = torch.cat([torch.softmax(self.model(part), dim=1) for part in parts])
            if turns:
                probabilities = torch.rot90(probabilities, -turns, dims=(-2, -1))
            if flip:
                probabilities = torch.flip(probabilities, dims=(-1,))
            total = probabilities if total is None else total + probabilities
        return (total / len(transforms)).float().cpu().numpy()
