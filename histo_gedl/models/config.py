"""Model configuration and metadata that travel with every saved model."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from histo_gedl.errors import InvalidParameterError

KINDS = ("regular", "steerable", "plain")

#: Default classes: touching nuclei are separated by the boundary class.
DEFAULT_CLASSES = ("background", "nucleus_interior", "nucleus_boundary")


@dataclass
class ModelConfig:
    """Architecture of a U-Net.

    Attributes:
        kind: "regular" (lifting and group convolutions over ``group``),
            "steerable" (escnn fields over ``group``) or "plain" (ordinary
            convolutions, the baseline).
        group: rotation group name, C<N> or D<N>; ignored for "plain".
        width: channels of the first stage (fields of |G| orientations for the
            equivariant kinds, ordinary channels for "plain"); doubled at each
            downsampling.
        depth: number of 2x downsamplings.
        kernel_size: odd convolution kernel width in pixels.
        classes: names of the output classes, in logit order.
        orientation_pool: "max" or "mean" pooling over orientations before the head.
    """

    kind: str = "regular"
    group: str = "C8"
    width: int = 4
    depth: int = 3
    kernel_size: int = 3
    in_channels: int = 3
    classes: tuple[str, ...] = DEFAULT_CLASSES
    orientation_pool: str = "max"

    def __post_init__(self) -> None:
        self.classes = tuple(self.classes)
        if self.kind not in KINDS:
            raise InvalidParameterError(f"unknown model kind {self.kind!r}; use one of {', '.join(KINDS)}")
        if self.width < 1 or self.depth < 0:
            raise InvalidParameterError(
                f"width must be >= 1 and depth >= 0, got width={self.width}, depth={self.depth}"
            )
        if len(self.classes) < 2:
            raise InvalidParameterError(f"a model needs at least 2 classes, got {self.classes!r}")

    @property
    def total_stride(self) -> int:
        """Factor by which the deepest stage is downsampled (2 ** depth)."""
        return 2**self.depth

    def receptive_field_radius(self) -> int:
        """Return an upper bound, in input pixels, on the distance from an output pixel to the input pixels it depends on.

        Each convolution at scale ``s`` adds ``s * (k // 2)``; each 2x max
        pooling adds ``s``; each bilinear 2x upsampling from scale ``2s`` adds
        ``2s``. Two convolutions per stage, on the way down and up.
        """
        half = self.kernel_size // 2
        radius = 2 * half  # first stage
        for level in range(1, self.depth + 1):
            scale = 2**level
            radius += scale // 2  # pooling into this level
            radius += 2 * half * scale  # two convolutions
        for level in range(self.depth - 1, -1, -1):
            scale = 2**level
            radius += 2 * scale  # bilinear upsampling from the level below
            radius += 2 * half * scale
        return radius

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["classes"] = list(self.classes)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InvalidParameterError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**data)


@dataclass
class ModelMetadata:
    """Facts needed to run a saved model correctly and to cite its data.

    Attributes:
        name: versioned model name, e.g. "nuclei-c8-v1".
        mpp: resolution the model was trained at, in µm per pixel.
        mean, std: per-channel RGB normalisation applied inside the model to
            inputs scaled to [0, 1].
        training_data: description of the data the weights were trained on.
        training_data_licence: licence of that data (it binds the weights).
        metrics: validation numbers, e.g. {"dice": 0.8}.
        extra: free-form details (training time, hardware, versions).
    """

    name: str = "untrained"
    mpp: float = 0.5
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    training_data: str = ""
    training_data_licence: str = ""
    metrics: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ModelMetadata":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)
