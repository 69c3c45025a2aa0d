"""Save and load models as one safetensors file: weights plus JSON metadata.

Loading parses the safetensors header and tensors only, so no code from the
file is executed. The header's metadata contains ``histo_gedl.format``,
``histo_gedl.config`` (the architecture) and ``histo_gedl.metadata`` (mpp,
normalisation, classes, training data and its licence, metrics).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from histo_gedl.config import bundled_data_dir
from histo_gedl.errors import InvalidParameterError, ModelFileError
from histo_gedl.models.config import ModelConfig, ModelMetadata
from histo_gedl.models.unet import SegmentationModel, build_model

log = logging.getLogger(__name__)

FORMAT_VERSION = "1"
#: Folder of the models shipped with the package, looked up by name.
SHIPPED_MODELS_DIR = bundled_data_dir() / "models"
#: Model used when none is named.
DEFAULT_MODEL = "nuclei-c8-v1"


def save_model(model: SegmentationModel, path: str | os.PathLike) -> Path:
    """Write ``model`` to ``path`` (a ``.safetensors`` file) atomically; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {
        "histo_gedl.format": FORMAT_VERSION,
        "histo_gedl.config": json.dumps(model.config.to_dict(), sort_keys=True),
        "histo_gedl.metadata": model.metadata.to_json(),
    }
    tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    temporary = path.with_name(f".{path.name}.partial")
    save_file(tensors, str(temporary), metadata=header)
    # Give the file the permissions of any new file under the current umask.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    os.replace(temporary, path)
    return path


def resolve_model_path(name_or_path: str | os.PathLike | None) -> Path:
    """Return the file for a shipped model name (e.g. ``nuclei-c8-v1``) or a path."""
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    candidate = Path(name_or_path)
    if candidate.is_file():
        return candidate
    # A shipped name wins over a folder of that name, such as a training run's output folder.
    shipped = SHIPPED_MODELS_DIR / f"{name_or_path}.safetensors"
    if shipped.is_file():
        return shipped
    if candidate.is_dir():
        raise ModelFileError(f"model {candidate} is a folder; pass a .safetensors file or a shipped model name")
    available = sorted(p.stem for p in SHIPPED_MODELS_DIR.glob("*.safetensors"))
    raise ModelFileError(
        f"model {str(name_or_path)!r} not found: it is neither a file nor a shipped model name; "
        f"shipped models: {', '.join(available) or 'none'}"
    )


def read_model_header(path: str | os.PathLike) -> tuple[ModelConfig, ModelMetadata]:
    """Return the configuration and metadata stored in a model file, without its weights."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelFileError(
            f"{path} is not a readable histo-gedl model file (safetensors): {error}"
        ) from error
    if header.get("histo_gedl.format") != FORMAT_VERSION:
        raise ModelFileError(
            f"{path} is a safetensors file but not a histo-gedl model (format "
            f"{header.get('histo_gedl.format')!r}, expected {FORMAT_VERSION!r}); "
            "save models with histo_gedl.models.save_model"
        )
    try:
        config = ModelConfig.from_dict(json.loads(header["histo_gedl.config"]))
        metadata = ModelMetadata.from_dict(json.loads(header["histo_gedl.metadata"]))
    except (KeyError, json.JSONDecodeError, TypeError, InvalidParameterError) as error:
        raise ModelFileError(f"{path} has invalid histo-gedl metadata: {error}") from error
    return config, metadata


def load_model(name_or_path: str | os.PathLike | None = None) -> SegmentationModel:
    """Load a model in evaluation mode from a shipped name or a file path."""
    path = resolve_model_path(name_or_path)
    config, metadata = read_model_header(path)
    model = build_model(config, metadata)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise ModelFileError(f"{path}: weights could not be read: {error}") from error
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ModelFileError(
            f"{path}: weights do not match the architecture stored in the file: {error}"
        ) from error
    model.eval()
    log.info("loaded model %s (%s %s) from %s", metadata.name, config.kind, config.group, path)
    return model


def file_sha256(path: str | os.PathLike) -> str:
    """Return the SHA-256 of a file, for provenance records."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
