"""Labelled tiles from folders: images with instance masks, binary masks or XML polygons.

Labels are matched to images by file stem. For each image, the label folders
are searched in the order given, so a folder of instance masks can come
before a folder of binary masks that covers more images. Supported labels:

- instance masks: 16- or 32-bit PNG/TIFF, 0 background and 1..n nuclei;
- binary masks: 8-bit or 1-bit PNG/TIFF, 0 background and any non-zero value
  nucleus. Touching nuclei merge in them, so their connected components stand
  in for instances (the fallback);
- Aperio ImageScope XML: one polygon per nucleus, as in MoNuSeg; the file's
  ``MicronsPerPixel`` attribute gives the resolution.

Every tile is resampled to the requested mpp: the image with antialiasing,
the labels with nearest neighbour.
"""

from __future__ import annotations

import csv
import logging
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from skimage import measure, transform
from skimage.draw import polygon as draw_polygon

from histo_gedl.errors import DatasetError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
LABEL_SUFFIXES = (".png", ".tif", ".tiff", ".xml")


@dataclass
class LabelledTile:
    """One image and its nuclei at the training mpp.

    Attributes:
        name: file stem shared by the image and its labels.
        image: RGB (H, W, 3) uint8.
        instances: (H, W) uint32, 0 background and 1..n nuclei.
        label_kind: "instances", "polygons" or "binary" (binary means touching
            nuclei may share one label).
        mpp: resolution of ``image`` in µm per pixel.
    """

    name: str
    image: np.ndarray
    instances: np.ndarray
    label_kind: str
    mpp: float

    @property
    def has_instances(self) -> bool:
        return self.label_kind != "binary"


DAMAGED_HINT = "The file may be truncated or damaged: copy or export it again."


def _read_tiff(path: Path, role: str) -> np.ndarray:
    """Read the first image of a TIFF file, or raise a DatasetError that names the file and its ``role``.

    A file cut short is an error even where the decoder would fill the
    missing pixels (JPEG does), because the pixel data must end inside the file.
    """
    # tifffile logs an error for each damaged tag before it raises. Its logger is muted
    # here, so the damage is reported once, by the DatasetError below.
    tifffile_log = logging.getLogger("tifffile")
    was_disabled, tifffile_log.disabled = tifffile_log.disabled, True
    try:
        with tifffile.TiffFile(path) as tiff:
            if not tiff.pages:
                raise DatasetError(f"cannot read {role} {path}: the TIFF contains no readable image. {DAMAGED_HINT}")
            page = tiff.pages.first
            size = path.stat().st_size
            if any(offset + count > size for offset, count in zip(page.dataoffsets, page.databytecounts)):
                raise DatasetError(
                    f"cannot read {role} {path}: its pixel data runs past the end of the file "
                    f"({size} bytes). {DAMAGED_HINT}"
                )
            return page.asarray()
    except (OSError, ValueError, RuntimeError, tifffile.TiffFileError) as error:
        # RuntimeError covers the decoders of compressed TIFFs (imagecodecs) failing on bad data.
        raise DatasetError(f"cannot read {role} {path}: {error}. {DAMAGED_HINT}") from error
    finally:
        tifffile_log.disabled = was_disabled


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as RGB (H, W, 3) uint8; alpha is composited on white."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            array = _read_tiff(path, "image")
        else:
            with Image.open(path) as handle:
                array = np.asarray(handle.convert("RGBA") if handle.mode in ("RGBA", "LA", "P") else handle.convert("RGB"))
    except (OSError, ValueError, tifffile.TiffFileError) as error:
        raise DatasetError(f"cannot read image {path}: {error}") from error
    return _to_rgb(array, path)


def _to_rgb(array: np.ndarray, path: Path) -> np.ndarray:
    if array.dtype != np.uint8:
        raise DatasetError(f"image {path} has dtype {array.dtype}; expected 8-bit RGB")
    if array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=2)
    if array.ndim == 3 and array.shape[2] == 4:
        alpha = array[..., 3:4].astype(np.float32) / 255.0
        blended = array[..., :3] * alpha + 255.0 * (1.0 - alpha)
        return np.round(blended).astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 3:
        return np.ascontiguousarray(array)
    raise DatasetError(f"image {path} has shape {array.shape}; expected (H, W, 3) RGB or RGBA")


def read_xml_polygons(path: str | Path, shape: tuple[int, int]) -> tuple[np.ndarray, float | None]:
    """Rasterise Aperio ImageScope XML polygons; return (instances (H, W) uint32, mpp or None)."""
    path = Path(path)
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as error:
        raise DatasetError(f"cannot parse annotation XML {path}: {error}") from error
    mpp_text = root.get("MicronsPerPixel")
    mpp = float(mpp_text) if mpp_text else None
    instances = np.zeros(shape, dtype=np.uint32)
    label = 0
    for region in root.iter("Region"):
        vertices = [(float(v.get("Y")), float(v.get("X"))) for v in region.iter("Vertex")]
        if len(vertices) < 3:
            continue
        rows, cols = np.array(vertices).T
        rr, cc = draw_polygon(rows, cols, shape=shape)
        if rr.size == 0:
            continue
        label += 1
        instances[rr, cc] = label
    return instances, mpp


def read_label_array(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """Read a PNG or TIFF label image as stored (first channel only) and check its size.

    Raises:
        DatasetError: the file cannot be decoded, or its size is not ``shape`` (H, W).
    """
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            array = _read_tiff(path, "labels")
        else:
            with Image.open(path) as handle:
                array = np.asarray(handle)
    except (OSError, ValueError, tifffile.TiffFileError) as error:
        raise DatasetError(f"cannot read labels {path}: {error}") from error
    if array.ndim == 3:
        array = array[..., 0]
    if array.shape != tuple(shape):
        raise DatasetError(
            f"labels {path} are {array.shape[1]}x{array.shape[0]} (width x height) but the image is "
            f"{shape[1]}x{shape[0]}; labels must have the image's size"
        )
    return array


def read_labels(path: str | Path, shape: tuple[int, int]) -> tuple[np.ndarray, str, float | None]:
    """Read a label file; return (instances (H, W) uint32, kind, mpp from the file or None)."""
    path = Path(path)
    if path.suffix.lower() == ".xml":
        instances, mpp = read_xml_polygons(path, shape)
        return instances, "polygons", mpp
    array = read_label_array(path, shape)
    if array.dtype in (np.uint8, np.bool_):
        instances = measure.label(array > 0, connectivity=1).astype(np.uint32)
        return instances, "binary", None
    if np.issubdtype(array.dtype, np.integer):
        if array.min() < 0:
            raise DatasetError(f"instance labels {path} contain negative values")
        return array.astype(np.uint32), "instances", None
    raise DatasetError(f"labels {path} have dtype {array.dtype}; expected integer labels")


def read_mpp_table(path: str | Path) -> dict[str, float]:
    """Read a CSV with columns ``image`` and ``mpp`` into {stem: mpp}."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            columns = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DatasetError(f"cannot read mpp table {path}: {error}") from error
    if "image" not in columns or "mpp" not in columns:
        raise DatasetError(f"mpp table {path} needs a header with columns 'image' and 'mpp'")
    if not rows:
        raise DatasetError(f"mpp table {path} has a header but no rows; add one row per image")
    table = {}
    for line, row in enumerate(rows, start=2):
        text = (row.get("mpp") or "").strip()
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not np.isfinite(value) or value <= 0:
            raise DatasetError(
                f"mpp table {path}, line {line}: mpp {text!r} of image {row.get('image')!r} is not a "
                "positive number of µm per pixel; fix the value"
            )
        table[Path(row["image"] or "").stem] = value
    return table


def _find_by_stem(folder: Path, suffixes: tuple[str, ...], role: str = "") -> dict[str, Path]:
    """Map file stems to the files in ``folder`` with one of ``suffixes``; ``role`` names the folder in errors."""
    named = f"{role} folder" if role else "folder"
    if folder.is_file():
        raise DatasetError(f"{named} {folder} is a file, not a folder; pass the folder that contains it")
    if not folder.is_dir():
        raise DatasetError(f"{named} {folder} not found; pass an existing folder")
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in suffixes}


def rescale_tile(image: np.ndarray, instances: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Resample an image (antialiased) and its labels (nearest) by ``factor``."""
    if abs(factor - 1.0) < 1e-3:
        return image, instances
    height = max(1, int(round(image.shape[0] * factor)))
    width = max(1, int(round(image.shape[1] * factor)))
    resized = transform.resize(
        image, (height, width), order=1, anti_aliasing=factor < 1, preserve_range=True
    )
    labels = transform.resize(
        instances, (height, width), order=0, anti_aliasing=False, preserve_range=True
    )
    return np.round(resized).clip(0, 255).astype(np.uint8), labels.astype(np.uint32)


def load_labelled_tiles(
    images: str | Path,
    labels: list[str | Path] | str | Path,
    target_mpp: float,
    mpp: float | str | Path | None = None,
    names: list[str] | None = None,
    roles: tuple[str, str] = ("images", "labels"),
) -> list[LabelledTile]:
    """Load every image with its labels, resampled to ``target_mpp``.

    Args:
        images: folder of images.
        labels: one folder or a list of folders searched in order for a label
            file with the image's stem.
        target_mpp: resolution to resample to, in µm per pixel.
        mpp: the images' resolution: one number for all, or a CSV with columns
            ``image`` and ``mpp``. XML labels that give ``MicronsPerPixel``
            override it.
        names: load only these stems (all when None).
        roles: how errors name the image and label folders, e.g. the command
            line options or configuration keys they came from.

    Raises:
        DatasetError: a missing folder (named by ``roles``), an image without labels, labels of another size, or an
            image whose mpp is unknown.
    """
    image_files = _find_by_stem(Path(images), IMAGE_SUFFIXES, roles[0])
    label_folders = [Path(f) for f in ([labels] if isinstance(labels, (str, Path)) else labels)]
    if not label_folders:
        raise DatasetError(f"no {roles[1]} folder given; pass at least one folder of label files")
    label_files = [_find_by_stem(folder, LABEL_SUFFIXES, roles[1]) for folder in label_folders]
    table = read_mpp_table(mpp) if isinstance(mpp, (str, Path)) else None
    if names is not None:
        missing = sorted(set(names) - set(image_files))
        if missing:
            raise DatasetError(f"images not found in {images}: {', '.join(missing)}")
        image_files = {name: image_files[name] for name in names}
    if not image_files:
        raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {images}")
    tiles = []
    for stem, image_path in image_files.items():
        label_path = next((found[stem] for found in label_files if stem in found), None)
        if label_path is None:
            raise DatasetError(
                f"image {image_path.name} has no labels in {', '.join(map(str, label_folders))}; "
                "add a label file with the same stem or remove the image"
            )
        image = read_rgb(image_path)
        instances, kind, file_mpp = read_labels(label_path, image.shape[:2])
        source_mpp = file_mpp or (table.get(stem) if table is not None else mpp)
        if not isinstance(source_mpp, (int, float)) or source_mpp <= 0:
            raise DatasetError(
                f"mpp of image {image_path.name} is unknown; give mpp as a number or a CSV "
                "with columns image,mpp"
            )
        image, instances = rescale_tile(image, instances, float(source_mpp) / target_mpp)
        tiles.append(LabelledTile(stem, image, instances, kind, target_mpp))
        log.debug("loaded %s (%s labels, %d nuclei)", stem, kind, int(instances.max()))
    log.info("loaded %d labelled tiles from %s", len(tiles), images)
    return tiles
