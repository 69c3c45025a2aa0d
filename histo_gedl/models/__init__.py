"""Segmentation models: configuration, U-Nets, saving and loading."""

from histo_gedl.models.config import DEFAULT_CLASSES, ModelConfig, ModelMetadata
from histo_gedl.models.export import export_onnx, export_torch
from histo_gedl.models.io import (
    DEFAULT_MODEL,
    file_sha256,
    load_model,
    read_model_header,
    resolve_model_path,
    save_model,
)
from histo_gedl.models.unet import (
    SegmentationModel,
    build_model,
    count_parameters,
    exact_sizes,
    matched_plain_width,
)

__all__ = [
    "DEFAULT_MODEL",
    "export_onnx",
    "export_torch",
    "file_sha256",
    "load_model",
    "read_model_header",
    "resolve_model_path",
    "save_model",
    "DEFAULT_CLASSES",
    "ModelConfig",
    "ModelMetadata",
    "SegmentationModel",
    "build_model",
    "count_parameters",
    "exact_sizes",
    "matched_plain_width",
]
