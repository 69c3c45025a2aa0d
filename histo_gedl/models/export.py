"""Export trained models to plain PyTorch (TorchScript) and ONNX.

:func:`export_torch` rebuilds any :class:`~histo_gedl.models.SegmentationModel`
as an :class:`ExportedUNet`: ordinary ``nn.Conv2d`` layers, fixed 1x1 maps and
pooling, with the input normalisation inside. It needs neither escnn nor
lie_learn at inference, and the TorchScript file it writes loads with
``torch.jit.load`` alone. The conversion, per kind:

- regular: each lifting or group convolution becomes the ``nn.Conv2d`` of
  its ``expanded_weight()``, regular maps (B, C, |G|, H, W) are kept flat as
  (B, C * |G|, H, W), and orientation pooling is a max or mean over each
  block of |G| channels.
- steerable: each escnn ``R2Conv`` becomes its ``export()``. The Fourier ReLU
  becomes a fixed grouped 1x1 map (inverse Fourier transform), ReLU, and a
  second fixed map (Fourier transform). Group pooling samples each field on
  the group and pools over the samples.
- plain: the same layers with batch norm folded in.

Every batch norm (any kind) is folded into the convolution before it: in
evaluation mode it is an affine map of the channels at each pixel, which is
measured by running it on the unit vectors.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from histo_gedl.errors import InvalidParameterError, ModelFileError
from histo_gedl.models.unet import PlainUNet, RegularUNet, SegmentationModel, build_model

log = logging.getLogger(__name__)

#: Name of the JSON file with the model's configuration and metadata inside a TorchScript export.
TORCHSCRIPT_METADATA_FILE = "histo_gedl.json"
#: Largest absolute difference between ONNX Runtime and PyTorch outputs that export_onnx accepts.
ONNX_TOLERANCE = 1e-3


class FieldLinearMap(nn.Module):
    """The same fixed linear map applied to every field at every pixel (a grouped 1x1 convolution).

    Args:
        fields: number of fields.
        matrix: tensor (out_size, in_size), the map of one field.

    Shapes: (B, fields * in_size, H, W) -> (B, fields * out_size, H, W).
    """

    def __init__(self, fields: int, matrix: torch.Tensor) -> None:
        super().__init__()
        self.fields = fields
        weight = matrix.detach().float().repeat(fields, 1)[:, :, None, None]
        self.register_buffer("weight", weight.contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, groups=self.fields)


class ChannelGroupPool(nn.Module):
    """Max or mean over consecutive blocks of ``group_size`` channels.

    Shapes: (B, C * group_size, H, W) -> (B, C, H, W).
    """

    def __init__(self, group_size: int, mode: str) -> None:
        super().__init__()
        if mode not in ("max", "mean"):
            raise InvalidParameterError(f"group pooling mode must be 'max' or 'mean', got {mode!r}")
        self.group_size = group_size
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks = x.reshape(x.shape[0], -1, self.group_size, x.shape[2], x.shape[3])
        if self.mode == "max":
            return blocks.amax(dim=2)
        return blocks.mean(dim=2)


class ExportedUNet(nn.Module):
    """A U-Net of plain PyTorch layers with the same outputs as the model it was exported from.

    Args:
        mean: tensor (1, C, 1, 1), subtracted from the input.
        std: tensor (1, C, 1, 1), divides the input after the mean.
        encoder: stages from full resolution to the deepest level.
        decoder: stages in the order they run, deepest first; each takes
            the upsampled features concatenated with the skip connection.
        pool: "max" or "avg", the 2x2 downsampling between encoder stages.
        invariant_map: maps the last features to the head's input.
        head: 1x1 convolution to class logits.

    Shapes: input (B, C, H, W) RGB in [0, 1], output logits (B, classes, H, W);
    H and W must be multiples of ``2 ** len(decoder)``.
    """

    def __init__(
        self,
        mean: torch.Tensor,
        std: torch.Tensor,
        encoder: list[nn.Module],
        decoder: list[nn.Module],
        pool: str,
        invariant_map: nn.Module,
        head: nn.Conv2d,
    ) -> None:
        super().__init__()
        if pool not in ("max", "avg"):
            raise InvalidParameterError(f"pool must be 'max' or 'avg', got {pool!r}")
        self.register_buffer("mean", mean.detach().clone())
        self.register_buffer("std", std.detach().clone())
        self.encoder = nn.ModuleList(encoder)
        self.decoder = nn.ModuleList(decoder)
        self.pool = pool
        self.invariant_map = invariant_map
        self.head = head
        self.stride = 2 ** len(decoder)
        self.in_channels = int(mean.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing():
            if x.dim() != 4 or x.shape[1] != self.in_channels:
                raise ValueError(f"expected images (B, {self.in_channels}, H, W), got {x.shape}")
            if x.shape[2] % self.stride != 0 or x.shape[3] % self.stride != 0:
                raise ValueError(
                    f"image height and width must be multiples of {self.stride}, got {x.shape}; "
                    "pad or crop the input"
                )
        x = (x - self.mean) / self.std
        skips: list[torch.Tensor] = []
        for level, stage in enumerate(self.encoder):
            if level > 0:
                if self.pool == "max":
                    x = F.max_pool2d(x, 2)
                else:
                    x = F.avg_pool2d(x, 2)
            x = stage(x)
            skips.append(x)
        for step, stage in enumerate(self.decoder):
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            x = stage(torch.cat([x, skips[len(skips) - 2 - step]], dim=1))
        return self.head(self.invariant_map(x))


def export_torch(model: SegmentationModel, path: str | os.PathLike | None = None) -> ExportedUNet:
    """Rebuild ``model`` from plain PyTorch layers, and optionally save it as TorchScript.

    The original model is not changed. The exported module is in evaluation
    mode and gives the same outputs as ``model.eval()`` up to float rounding.

    Args:
        model: a model of any kind, e.g. from :func:`~histo_gedl.models.load_model`.
        path: if given, the TorchScript file to write (atomically). It also
            contains the configuration and metadata as JSON, readable with
            :func:`read_torchscript_metadata`.

    Returns:
        The exported module: input (B, 3, H, W) RGB in [0, 1], output
        logits (B, classes, H, W).
    """
    if not isinstance(model, SegmentationModel):
        raise InvalidParameterError(
            f"export needs a histo_gedl SegmentationModel (e.g. from load_model), got {type(model).__name__}"
        )
    # A fresh copy, because escnn caches expanded filters as non-leaf tensors
    # that copy.deepcopy rejects, and the caller's model keeps its mode.
    source = build_model(model.config, model.metadata)
    source.load_state_dict(model.state_dict())
    source.eval()
    kind = source.config.kind
    with torch.no_grad():
        if kind == "regular":
            exported = _export_regular(source)
        elif kind == "plain":
            exported = _export_plain(source)
        else:
            exported = _export_steerable(source)
    exported.eval()
    if path is not None:
        _save_torchscript(exported, model, Path(path))
    return exported


def export_onnx(model: SegmentationModel, path: str | os.PathLike, opset: int = 17) -> Path:
    """Write ``model`` as an ONNX file with dynamic batch, height and width; return the path.

    The file is checked with ``onnx.checker`` and run with ONNX Runtime on an
    input of another size than the one used for tracing. Its logits must
    match the exported PyTorch module to within ``ONNX_TOLERANCE``. The
    model's name, mpp, classes and normalisation are stored as ONNX
    metadata properties.

    Args:
        model: the model to export.
        path: output ``.onnx`` file, written atomically.
        opset: ONNX opset version; 13, 17, 18 and 20 were tried with
            torch 2.13 and onnxruntime 1.32.

    Raises:
        ModelFileError: ONNX Runtime's outputs differ from PyTorch's.
    """
    import onnx
    import onnxruntime

    if not isinstance(opset, int) or opset < 13:
        raise InvalidParameterError(f"opset must be an integer of at least 13, got {opset!r}")
    exported = export_torch(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial")
    stride = model.config.total_stride
    example = torch.rand(1, model.config.in_channels, 2 * stride, 2 * stride)
    axes = {0: "batch", 2: "height", 3: "width"}
    # The TorchScript-based exporter (dynamo=False) is used because the
    # torch.export-based one needs the onnxscript package, which is not a dependency.
    # NOTE: torch 2.13 marks this exporter deprecated (DeprecationWarning); a later
    # torch may remove it, and then onnxscript and dynamo=True are needed.
    torch.onnx.export(
        exported, (example,), str(temporary), dynamo=False, opset_version=opset,
        input_names=["image"], output_names=["logits"],
        dynamic_axes={"image": axes, "logits": axes},
    )
    proto = onnx.load(str(temporary))
    for key, value in _describe_model(model).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(temporary))

    probe = torch.rand(2, model.config.in_channels, 3 * stride, 5 * stride, generator=torch.Generator().manual_seed(0))
    session = onnxruntime.InferenceSession(str(temporary), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(["logits"], {"image": probe.numpy()})
    with torch.no_grad():
        torch_logits = exported(probe).numpy()
    difference = float(np.abs(onnx_logits - torch_logits).max())
    if onnx_logits.shape != torch_logits.shape or difference > ONNX_TOLERANCE:
        temporary.unlink(missing_ok=True)
        raise ModelFileError(
            f"ONNX export of {model.metadata.name} does not reproduce the PyTorch outputs "
            f"(shape {onnx_logits.shape} vs {torch_logits.shape}, max difference {difference:.3g}); "
            f"try another opset than {opset}"
        )
    os.replace(temporary, path)
    log.info("wrote ONNX model %s (opset %d, max difference %.3g)", path, opset, difference)
    return path


def read_torchscript_metadata(path: str | os.PathLike) -> dict:
    """Return the configuration and metadata stored in a TorchScript export."""
    extra = {TORCHSCRIPT_METADATA_FILE: ""}
    try:
        torch.jit.load(str(path), _extra_files=extra, map_location="cpu")
    except (RuntimeError, OSError, ValueError) as error:
        raise ModelFileError(f"{path} is not a readable TorchScript file: {error}") from error
    if not extra[TORCHSCRIPT_METADATA_FILE]:
        raise ModelFileError(f"{path} is a TorchScript file but was not exported by histo_gedl")
    return json.loads(extra[TORCHSCRIPT_METADATA_FILE])


def _describe_model(model: SegmentationModel) -> dict[str, str]:
    return {
        "histo_gedl.config": json.dumps(model.config.to_dict(), sort_keys=True),
        "histo_gedl.metadata": model.metadata.to_json(),
    }


def _save_torchscript(exported: ExportedUNet, model: SegmentationModel, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial")
    scripted = torch.jit.script(exported)
    extra = {TORCHSCRIPT_METADATA_FILE: json.dumps(_describe_model(model), sort_keys=True)}
    torch.jit.save(scripted, str(temporary), _extra_files=extra)
    os.replace(temporary, path)
    log.info("wrote TorchScript model %s", path)


# Folding batch norm into convolutions.


def _affine_of(function, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Measure a per-pixel affine map of channels: return ``matrix`` (C, C) and ``offset`` (C,).

    ``function`` takes and returns tensors (N, C, 1, 1) and must compute
    ``matrix @ v + offset`` at each pixel, as batch norm in evaluation mode does.
    """
    offset = function(torch.zeros(1, channels, 1, 1)).reshape(channels)
    images = function(torch.eye(channels).reshape(channels, channels, 1, 1)).reshape(channels, channels)
    # Row j of ``images`` is the output for unit vector j, i.e. column j of the matrix.
    return (images - offset).T, offset


def _fold(weight: torch.Tensor, bias: torch.Tensor | None, norm, channels: int) -> nn.Conv2d:
    """Return one Conv2d computing ``norm(conv2d(x, weight, bias))`` with "same" padding.

    Args:
        weight: tensor (C_out, C_in, k, k).
        bias: tensor (C_out,) or None.
        norm: per-pixel affine map on tensors (N, C_out, 1, 1), or None.
        channels: C_out.
    """
    weight = weight.detach().double()
    bias = torch.zeros(channels, dtype=torch.float64) if bias is None else bias.detach().double()
    if norm is not None:
        matrix, offset = _affine_of(norm, channels)
        matrix, offset = matrix.double(), offset.double()
        weight = torch.einsum("oc,cikl->oikl", matrix, weight)
        bias = matrix @ bias + offset
    kernel_size = weight.shape[-1]
    conv = nn.Conv2d(weight.shape[1], channels, kernel_size, padding=kernel_size // 2, bias=True)
    conv.weight.data = weight.float().contiguous()
    conv.bias.data = bias.float().contiguous()
    return conv


def _export_regular(model: SegmentationModel) -> ExportedUNet:
    net: RegularUNet = model.net
    order = net.group.order

    def stage(block) -> nn.Sequential:
        layers = []
        for conv, norm in ((block.conv1, block.norm1), (block.conv2, block.norm2)):
            channels = conv.out_channels * order
            bias = None if conv.bias is None else conv.bias.repeat_interleave(order)

            def regular_norm(x, norm=norm, c=conv.out_channels):
                return norm(x.unflatten(1, (c, order))).flatten(1, 2)

            layers += [_fold(conv.expanded_weight(), bias, regular_norm, channels), nn.ReLU()]
        return nn.Sequential(*layers)

    return ExportedUNet(
        model.mean, model.std,
        encoder=[stage(block) for block in net.encoder],
        decoder=[stage(block) for block in reversed(net.decoder)],
        pool="max",
        invariant_map=ChannelGroupPool(order, net.orientation_pool.mode),
        head=copy.deepcopy(net.head),
    )


def _export_plain(model: SegmentationModel) -> ExportedUNet:
    net: PlainUNet = model.net

    def stage(block: nn.Sequential) -> nn.Sequential:
        conv1, norm1, _, conv2, norm2, _ = block
        return nn.Sequential(
            _fold(conv1.weight, conv1.bias, norm1, conv1.out_channels), nn.ReLU(),
            _fold(conv2.weight, conv2.bias, norm2, conv2.out_channels), nn.ReLU(),
        )

    return ExportedUNet(
        model.mean, model.std,
        encoder=[stage(block) for block in net.encoder],
        decoder=[stage(block) for block in reversed(net.decoder)],
        pool="max",
        invariant_map=nn.Identity(),
        head=copy.deepcopy(net.head),
    )


def _export_steerable(model: SegmentationModel) -> ExportedUNet:
    from histo_gedl.models.steerable_unet import SteerableUNet

    net: SteerableUNet = model.net

    def fourier(activation) -> nn.Sequential:
        return nn.Sequential(
            FieldLinearMap(activation.fields, activation.sampling_matrix),
            nn.ReLU(),
            FieldLinearMap(activation.fields, activation.projection_matrix),
        )

    def stage(block) -> nn.Sequential:
        layers = []
        for conv, norm, activation in (
            (block.conv1, block.norm1, block.act1),
            (block.conv2, block.norm2, block.act2),
        ):
            plain = conv.module.export()

            def steerable_norm(x, norm=norm):
                return norm(x).tensor

            layers += [_fold(plain.weight, plain.bias, steerable_norm, plain.out_channels), fourier(activation)]
        return nn.Sequential(*layers)

    pool = net.group_pool
    return ExportedUNet(
        model.mean, model.std,
        encoder=[stage(block) for block in net.encoder],
        decoder=[stage(block) for block in reversed(net.decoder)],
        pool="avg",
        invariant_map=nn.Sequential(
            FieldLinearMap(pool.fields, pool.sampling_matrix),
            ChannelGroupPool(pool.sampling_matrix.shape[0], pool.mode),
        ),
        head=copy.deepcopy(net.head),
    )
