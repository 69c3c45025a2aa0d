"""Instance labels for binary masks, split by a trained model (pseudo-labels).

A binary mask marks which pixels are nucleus but not where touching nuclei
meet, so a model trained on it learns little about splitting them (see
:mod:`histo_gedl.training.targets`). A model that was trained on the tiles
that do have instance labels can fill that gap: its interior probability
gives one marker per nucleus, and a watershed of those markers, confined to
the human-drawn mask, splits each blob. The mask keeps the outline that a
person drew; only the lines between touching nuclei come from the model.

Write the labels next to the others and list that folder before the binary
masks in a training config, so that tiles with real instance labels keep
them (see the comments in ``pipelines/train-nuclei-c8.yaml``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage as ndi
from skimage.segmentation import relabel_sequential, watershed

from histo_gedl.errors import DatasetError, InvalidParameterError
from histo_gedl.models.unet import SegmentationModel
from histo_gedl.training.data import (
    IMAGE_SUFFIXES,
    LABEL_SUFFIXES,
    _find_by_stem,
    read_label_array,
    read_mpp_table,
    read_rgb,
    rescale_tile,
)

log = logging.getLogger(__name__)

#: The largest label that a uint16 PNG can store.
MAX_LABEL = np.iinfo(np.uint16).max


def split_binary_mask(
    interior: np.ndarray, mask: np.ndarray, interior_threshold: float = 0.5, min_marker_area: int = 4
) -> np.ndarray:
    """Split a binary nucleus mask into instances using an interior probability map.

    Markers are the 4-connected components of ``interior >
    interior_threshold`` inside ``mask``, without those smaller than
    ``min_marker_area`` pixels. They are flooded over ``mask`` by a watershed
    of ``-interior``. Every mask pixel gets a label: a connected part of the
    mask that no marker reaches becomes one instance of its own, so the
    result covers exactly the mask.

    Args:
        interior: (H, W) probability that a pixel is inside a nucleus.
        mask: (H, W) binary mask, non-zero for nucleus.
        interior_threshold: probability above which a pixel seeds a marker.
        min_marker_area: smallest marker kept, in pixels.

    Returns:
        (H, W) uint32 labels, 0 background and 1..n nuclei.
    """
    interior = np.asarray(interior, dtype=np.float32)
    mask = np.asarray(mask) > 0
    if interior.shape != mask.shape or interior.ndim != 2:
        raise InvalidParameterError(
            f"interior {interior.shape} and mask {mask.shape} must be 2-D arrays of the same shape"
        )
    if not 0.0 <= interior_threshold < 1.0:
        raise InvalidParameterError(f"interior_threshold must be in [0, 1), got {interior_threshold}")
    if int(min_marker_area) < 1:
        raise InvalidParameterError(f"min_marker_area must be at least 1, got {min_marker_area}")
    markers, count = ndi.label((interior > interior_threshold) & mask)
    if count:
        areas = np.bincount(markers.ravel(), minlength=count + 1)
        small = areas < int(min_marker_area)
        small[0] = False
        markers[small[markers]] = 0
    labels = watershed(-interior, markers=markers, mask=mask).astype(np.int64)
    unreached, _ = ndi.label(mask & (labels == 0))
    labels = np.where(unreached > 0, unreached + labels.max(), labels)
    # Dropped markers leave gaps in the numbering, so renumber 1..n.
    return relabel_sequential(labels)[0].astype(np.uint32)


@dataclass
class PseudoLabelResult:
    """Summary of one :func:`pseudo_label_folder` run.

    Attributes:
        written: label files written, one per image.
        skipped: stems left out because a folder in ``skip_labelled`` labels them.
        nuclei: number of nuclei in each written file, by stem.
        split: number of mask components that became two or more nuclei, by stem.
    """

    written: list[Path]
    skipped: list[str]
    nuclei: dict[str, int]
    split: dict[str, int]


def _interior_at(model: SegmentationModel, image: np.ndarray, factor: float) -> np.ndarray:
    """Predict at the model's mpp and return the interior probability at the image's own size."""
    from histo_gedl.training.trainer import predict_tile

    small, _ = rescale_tile(image, np.zeros(image.shape[:2], dtype=np.uint32), factor)
    interior = predict_tile(model, small)[1]
    if interior.shape != image.shape[:2]:
        tensor = torch.from_numpy(np.ascontiguousarray(interior))[None, None]
        interior = torch.nn.functional.interpolate(
            tensor, size=image.shape[:2], mode="bilinear", align_corners=False
        )[0, 0].numpy()
    return interior


def _write_png(labels: np.ndarray, path: Path) -> None:
    temporary = path.with_name(f".{path.stem}.partial.png")
    Image.fromarray(labels.astype(np.uint16)).save(temporary)
    os.replace(temporary, path)


def _read_binary_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Read a mask and return it as bool (H, W); a file with several nucleus values is not binary."""
    if path.suffix.lower() == ".xml":
        raise DatasetError(f"{path} is an XML annotation, not a binary mask; pass its folder as --skip-labelled")
    array = read_label_array(path, shape)
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise DatasetError(f"mask {path} has dtype {array.dtype}; expected an integer or 1-bit mask")
    values = np.unique(array[array != 0])
    if values.size > 1:
        raise DatasetError(
            f"mask {path} contains {values.size} different nucleus values, so it is an instance mask, not a "
            "binary one. It needs no pseudo-labels: pass its folder as --skip-labelled"
        )
    return array != 0


def pseudo_label_folder(
    model: SegmentationModel,
    images: str | Path,
    masks: str | Path,
    out: str | Path,
    mpp: float | str | Path,
    skip_labelled: list[str | Path] | None = None,
    overwrite: bool = False,
) -> PseudoLabelResult:
    """Write instance labels (uint16 PNG) for every image that has a binary mask.

    Each image is resampled to the model's mpp and predicted. The interior
    probability is then resampled back to the image's size, where it splits
    the mask (:func:`split_binary_mask`). The model's stored interior
    threshold is used, and its smallest marker is scaled to the image's
    resolution. The files keep the image's size and stem, so training reads
    them as instance masks.

    Every image and mask is read and checked before the first prediction. If
    a later step fails, the files that this call wrote are removed again, so
    ``out`` never contains a partial set.

    Args:
        model: a trained model with the interior/boundary/background classes.
        images: folder of RGB tiles.
        masks: folder of binary masks (PNG or TIFF with one nucleus value), one per image.
        out: folder to write; created when missing. It must not be ``images``,
            ``masks`` or a ``skip_labelled`` folder.
        mpp: the images' resolution: one number, or a CSV with columns image,mpp.
        skip_labelled: folders of labels (for example instance masks); images
            labelled there are left out, as training would not read their
            pseudo-labels.
        overwrite: replace label files that already exist in ``out``.

    Raises:
        DatasetError: an image without a mask, a mask that is not binary or
            has another size, or an image whose mpp is unknown.
        InvalidParameterError: ``out`` contains label files and ``overwrite`` is
            False, ``out`` is an input folder, or the model does not predict
            three classes.
    """
    from histo_gedl.training.evaluate import postprocess_options

    if len(model.config.classes) != 3:
        raise InvalidParameterError(
            f"model {model.metadata.name} predicts the classes {', '.join(model.config.classes)}; "
            "pseudo-labels need background, interior and boundary"
        )
    image_files = _find_by_stem(Path(images), IMAGE_SUFFIXES, "images")
    mask_files = _find_by_stem(Path(masks), LABEL_SUFFIXES, "masks")
    if not image_files:
        raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {images}")
    skipped = set()
    for folder in skip_labelled or []:
        skipped |= set(_find_by_stem(Path(folder), LABEL_SUFFIXES, "skip-labelled"))
    out = Path(out)
    inputs = [("images", images), ("masks", masks)] + [("skip-labelled", f) for f in skip_labelled or []]
    for option, folder in inputs:
        if out.resolve() == Path(folder).resolve():
            raise InvalidParameterError(
                f"output folder {out} is also the {option} folder; write pseudo-labels to a folder of their own"
            )
    if out.exists() and not out.is_dir():
        raise InvalidParameterError(f"output {out} is a file; pass a folder")
    todo = {stem: path for stem, path in image_files.items() if stem not in skipped}
    if not todo:
        log.warning("every image in %s has labels in a --skip-labelled folder; nothing to write", images)
    missing = sorted(stem for stem in todo if stem not in mask_files)
    if missing:
        raise DatasetError(
            f"{len(missing)} image(s) have no mask in {masks}, for example {missing[0]}; add the masks, "
            "or pass the folder that labels them as --skip-labelled"
        )
    if not isinstance(mpp, (str, Path)) and not (isinstance(mpp, (int, float)) and np.isfinite(mpp) and mpp > 0):
        raise InvalidParameterError(
            f"mpp must be a positive number of µm per pixel or a CSV with columns image,mpp, got {mpp!r}"
        )
    table = read_mpp_table(mpp) if isinstance(mpp, (str, Path)) else None
    if table is not None:
        unknown = sorted(stem for stem in todo if stem not in table)
        if unknown:
            raise DatasetError(
                f"mpp table {mpp} has no row for {len(unknown)} image(s), for example {unknown[0]}; add them"
            )
    existing = sorted(out / f"{stem}.png" for stem in todo if (out / f"{stem}.png").exists())
    if existing and not overwrite:
        raise InvalidParameterError(
            f"{len(existing)} label file(s) already exist in {out}, for example {existing[0].name}; "
            "pass --overwrite to replace them or choose another folder"
        )
    # Read everything once before predicting, so bad input fails before any file is written.
    for stem, image_path in todo.items():
        shape = read_rgb(image_path).shape[:2]
        _read_binary_mask(mask_files[stem], shape)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InvalidParameterError(f"cannot create output folder {out}: {error}") from error

    options = postprocess_options(model)
    threshold = float(options.get("interior_threshold", 0.5))
    min_marker = int(options.get("min_marker_area", 4))
    model.eval()
    written, nuclei, split = [], {}, {}
    try:
        for index, (stem, image_path) in enumerate(todo.items(), start=1):
            image = read_rgb(image_path)
            mask = _read_binary_mask(mask_files[stem], image.shape[:2])
            source_mpp = float(table[stem] if table is not None else mpp)
            factor = source_mpp / model.metadata.mpp
            interior = _interior_at(model, image, factor)
            labels = split_binary_mask(interior, mask, threshold, max(1, round(min_marker / factor**2)))
            if labels.max() > MAX_LABEL:
                raise DatasetError(f"{stem}: {labels.max()} nuclei do not fit a uint16 PNG; split the tile")
            path = out / f"{stem}.png"
            _write_png(labels, path)
            written.append(path)
            nuclei[stem] = int(labels.max())
            components, _ = ndi.label(mask)
            pairs = np.unique(np.stack([components[mask], labels[mask]]), axis=1)
            split[stem] = int(np.sum(np.bincount(pairs[0])[1:] > 1))
            log.info(
                "%d/%d %s: %d nuclei, %d mask components split", index, len(todo), stem, nuclei[stem], split[stem]
            )
    except BaseException:
        # Leave no partial set behind: remove what this call wrote.
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return PseudoLabelResult(written, sorted(skipped & set(image_files)), nuclei, split)
