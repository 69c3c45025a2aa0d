"""Training configuration read from YAML files such as ``pipelines/train-nuclei-c8.yaml``.

Paths may use environment variables (``${HISTO_GEDL_DATA}`` defaults to the
shared data folder) and are otherwise relative to the YAML file's folder.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from histo_gedl.config import DATA_DIR_ENV, shared_data_dir
from histo_gedl.errors import InvalidParameterError
from histo_gedl.models.config import ModelConfig

FREEZE_CHOICES = ("none", "encoder", "all_but_head")
STAIN_CHOICES = ("none", "reinhard")
BINARY_MASK_CHOICES = ("partial", "components")
SELECT_BY_CHOICES = ("aji", "dice")


@dataclass
class DataConfig:
    """Location and description of the labelled tiles.

    Attributes:
        images: folder of images.
        labels: label folders searched in order (instance masks first).
        mpp: the images' resolution, a number or a CSV with columns image,mpp.
        validation: stems of the tiles held out for validation.
        train: stems used for training (all the others when empty).
        description: what the data is, recorded in the model's metadata.
        licence: the data's licence, recorded in the model's metadata.
    """

    images: str = ""
    labels: list[str] = field(default_factory=list)
    mpp: float | str | None = None
    validation: list[str] = field(default_factory=list)
    train: list[str] = field(default_factory=list)
    description: str = ""
    licence: str = ""


@dataclass
class TrainConfig:
    """Everything one training run needs; see the YAML files in ``pipelines/``."""

    name: str = "model"
    output_dir: str = "runs/model"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    mpp: float = 0.5
    patch_size: int = 256
    batch_size: int = 4
    steps: int = 1000
    validate_every: int = 100
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    seed: int = 0
    threads: int = 0
    arbitrary_rotation: bool = False
    freeze: str = "none"
    #: "reinhard" maps every tile's colours to the training set's CIELAB
    #: statistics; the model then does the same to each slide at inference.
    stain_normalisation: str = "none"
    #: Stop early once this much wall time (seconds) has passed; 0 means no limit.
    time_limit: float = 0.0
    #: Targets from binary masks. "partial" leaves the inside of blobs that may be
    #: merged nuclei without an interior/boundary class (see
    #: histo_gedl.training.targets). "components" takes every blob as one nucleus.
    binary_masks: str = "partial"
    #: Validation score that picks best.safetensors: "aji" (Dice where the
    #: validation labels do not separate nuclei) or "dice".
    select_by: str = "aji"
    #: Extra cross-entropy weight on boundary pixels where two nuclei touch
    #: (see histo_gedl.training.losses.contact_pixels); 0 turns it off.
    contact_weight: float = 0.0
    #: Decay of an exponential moving average of the weights, updated after
    #: every step; validation and best.safetensors then use the average.
    #: 0 turns it off. Early steps use a smaller decay (see
    #: histo_gedl.training.trainer.WeightAverage), so 0.995 takes effect only
    #: from step 1,790 on.
    ema_decay: float = 0.0
    #: Thickness in pixels of the boundary class: the rim of each nucleus that
    #: is not interior (see histo_gedl.training.targets.three_class_target).
    boundary_width: int = 1

    def __post_init__(self) -> None:
        if self.stain_normalisation not in STAIN_CHOICES:
            raise InvalidParameterError(
                f"stain_normalisation must be one of {STAIN_CHOICES}, got {self.stain_normalisation!r}"
            )
        if self.binary_masks not in BINARY_MASK_CHOICES:
            raise InvalidParameterError(
                f"binary_masks must be one of {', '.join(BINARY_MASK_CHOICES)}, got {self.binary_masks!r}"
            )
        if self.select_by not in SELECT_BY_CHOICES:
            raise InvalidParameterError(
                f"select_by must be one of {', '.join(SELECT_BY_CHOICES)}, got {self.select_by!r}"
            )
        if self.freeze not in FREEZE_CHOICES:
            raise InvalidParameterError(f"freeze must be one of {FREEZE_CHOICES}, got {self.freeze!r}")
        for name, (kind, minimum, strict) in NUMBER_FIELDS.items():
            setattr(self, name, _number(name, getattr(self, name), kind, minimum, strict))
        # NUMBER_FIELDS has checked the signs; these checks need more than a bound.
        stride = self.model.total_stride
        if self.patch_size % stride:
            raise InvalidParameterError(
                f"patch_size must be a positive multiple of {stride} (2 ** model depth), got {self.patch_size}"
            )
        if not self.ema_decay < 1:
            raise InvalidParameterError(
                f"ema_decay must be a number in [0, 1), for example 0.995, or 0 for no averaging; "
                f"got {self.ema_decay!r}"
            )


#: Numeric keys: (type, smallest value, whether the smallest value itself is invalid).
NUMBER_FIELDS = {
    "mpp": (float, 0.0, True),
    "patch_size": (int, 1, False),
    "batch_size": (int, 1, False),
    "steps": (int, 1, False),
    "validate_every": (int, 1, False),
    "learning_rate": (float, 0.0, True),
    "weight_decay": (float, 0.0, False),
    "warmup_steps": (int, 0, False),
    "seed": (int, 0, False),
    "threads": (int, 0, False),
    "time_limit": (float, 0.0, False),
    "contact_weight": (float, 0.0, False),
    "ema_decay": (float, 0.0, False),
    "boundary_width": (int, 1, False),
}


def _number(name: str, value, kind: type, minimum: float, strict: bool):
    """Return ``value`` as ``kind``, reading numeric strings such as "3e-3", or raise a clear error."""
    text = value
    if isinstance(value, str):
        # YAML 1.1 reads 3e-3 (no dot) as a string.
        try:
            value = float(value.strip())
        except ValueError:
            pass
    valid = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if valid and kind is int:
        valid = float(value).is_integer()
        value = int(value) if valid else value
    if valid:
        valid = value > minimum if strict else value >= minimum
    if not valid:
        bound = ">" if strict else ">="
        expected = "a whole number" if kind is int else "a finite number"
        raise InvalidParameterError(f"{name} must be {expected} {bound} {minimum:g}, got {text!r}")
    return kind(value)


def _expand(value: str, base: Path) -> str:
    expanded = os.path.expanduser(os.path.expandvars(str(value)))
    path = Path(expanded)
    return str(path if path.is_absolute() else (base / path).resolve())


def load_train_config(path: str | os.PathLike, overrides: dict | None = None) -> TrainConfig:
    """Read a training YAML file into a :class:`TrainConfig`."""
    path = Path(path)
    if not path.is_file():
        raise InvalidParameterError(f"training config {path} not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise InvalidParameterError(f"training config {path} is not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise InvalidParameterError(f"training config {path} must be a mapping of keys to values")
    raw.update(overrides or {})
    os.environ.setdefault(DATA_DIR_ENV, str(shared_data_dir()))
    base = path.resolve().parent
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(raw) - known
    if unknown:
        raise InvalidParameterError(f"unknown keys in {path}: {', '.join(sorted(unknown))}")
    data = dict(raw.pop("data", {}) or {})
    data_known = {f.name for f in dataclasses.fields(DataConfig)}
    if set(data) - data_known:
        raise InvalidParameterError(
            f"unknown keys under data: in {path}: {', '.join(sorted(set(data) - data_known))}"
        )
    if data.get("images"):
        data["images"] = _expand(data["images"], base)
    labels = data.get("labels", [])
    data["labels"] = [_expand(v, base) for v in ([labels] if isinstance(labels, str) else labels)]
    if isinstance(data.get("mpp"), str):
        data["mpp"] = _expand(data["mpp"], base)
    model = ModelConfig.from_dict(raw.pop("model", {}) or {})
    if "output_dir" in raw:
        raw["output_dir"] = _expand(raw["output_dir"], Path.cwd())
    try:
        config = TrainConfig(model=model, data=DataConfig(**data), **raw)
    except InvalidParameterError as error:
        raise InvalidParameterError(f"{path}: {error}") from error
    # Checked last, so that a file with only a few keys still reports their errors first.
    if not config.data.images:
        raise InvalidParameterError(f"{path}: data.images is missing; set it to the folder of the training images")
    if not config.data.labels:
        raise InvalidParameterError(
            f"{path}: data.labels is missing or empty; list the label folders, instance masks first"
        )
    return config
