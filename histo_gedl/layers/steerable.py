"""Steerable layers on escnn 1.0.11: fields of irreps over C_N and D_N.

A steerable feature map is a stack of fields. Each field is a vector at
every pixel that transforms under a representation ``rho`` of the group:
``(g . F)(x) = rho(g) F(g^-1 x)``. The fields used here are band-limited:
they hold the Fourier coefficients, up to a maximum frequency ``L``, of a
function on the group (escnn's ``spectral_regular_representation``).

Every module in this file is a plain ``nn.Module`` that declares the escnn
field types it takes (``in_type``) and gives (``out_type``). Its input may
be an escnn ``GeometricTensor`` of exactly ``in_type`` or a plain tensor
(B, in_type.size, H, W), which is wrapped. The output is a
``GeometricTensor``. Anything else raises
:class:`~histo_gedl.errors.InvalidParameterError`.

Equivariance law of every layer: ``layer(g . F) = g . layer(F)``. It is exact
(up to float rounding) when ``g`` turns by a multiple of 90 degrees or
reflects and the spatial sizes are even where a layer pools, and it holds
only approximately for other angles, because the pixel grid is square.

The group conventions match :mod:`histo_gedl.groups.finite`: rotations are
counterclockwise and the reflection of D_N maps ``(x, y)`` to ``(x, -y)``,
which is escnn's ``flipRot2dOnR2(N, axis=0)``.
"""

from __future__ import annotations

import torch
from escnn import gspaces
from escnn import nn as enn
from torch import nn

from histo_gedl.errors import InvalidParameterError
from histo_gedl.groups.finite import FiniteRotationGroup

#: Largest frequency kept by default in band-limited fields.
DEFAULT_MAX_FREQUENCY = 3


def make_gspace(group: FiniteRotationGroup) -> gspaces.GSpace2D:
    """Return the escnn gspace of ``group`` acting on the plane.

    C_N gives ``rot2dOnR2(N)``; D_N gives ``flipRot2dOnR2(N, axis=0)``, whose
    reflection flips the y axis as in :mod:`histo_gedl.groups.finite`.
    """
    if not isinstance(group, FiniteRotationGroup):
        raise InvalidParameterError(
            f"expected a FiniteRotationGroup (e.g. parse_group('C8')), got {type(group).__name__}"
        )
    if group.reflections:
        return gspaces.flipRot2dOnR2(group.rotations, axis=0.0)
    return gspaces.rot2dOnR2(group.rotations)


def default_max_frequency(group: FiniteRotationGroup) -> int:
    """Return the band limit used when none is given: ``min(N // 2, 3)``."""
    return min(group.rotations // 2, DEFAULT_MAX_FREQUENCY)


def band_limited_irreps(gspace: gspaces.GSpace2D, max_frequency: int) -> list[tuple]:
    """Return the escnn ids of the irreps of rotational frequency ``0 .. max_frequency``."""
    limit = gspace.rotations_order // 2
    if not isinstance(max_frequency, int) or not 0 <= max_frequency <= limit:
        raise InvalidParameterError(
            f"max_frequency must be an integer from 0 to {limit} for {gspace.fibergroup.name}, "
            f"got {max_frequency!r}"
        )
    return gspace.fibergroup.bl_irreps(max_frequency)


def trivial_type(gspace: gspaces.GSpace2D, channels: int) -> enn.FieldType:
    """Return ``channels`` scalar fields, e.g. the RGB channels of an image."""
    _check_count("channels", channels)
    return enn.FieldType(gspace, [gspace.trivial_repr] * channels)


def regular_type(gspace: gspaces.GSpace2D, fields: int) -> enn.FieldType:
    """Return ``fields`` fields of the regular representation (|G| channels each)."""
    _check_count("fields", fields)
    return enn.FieldType(gspace, [gspace.regular_repr] * fields)


def band_limited_type(gspace: gspaces.GSpace2D, fields: int, max_frequency: int) -> enn.FieldType:
    """Return ``fields`` fields of the band-limited regular representation.

    Each field is the direct sum of the irreps of frequency ``0 ..
    max_frequency``, each repeated as often as in the regular representation,
    so it contains the Fourier coefficients of a band-limited function on G.
    """
    _check_count("fields", fields)
    irreps = band_limited_irreps(gspace, max_frequency)
    representation = gspace.fibergroup.spectral_regular_representation(*irreps)
    return enn.FieldType(gspace, [representation] * fields)


def irrep_type(gspace: gspaces.GSpace2D, frequencies: list[int]) -> enn.FieldType:
    """Return one field per entry of ``frequencies``, each an irrep of that rotational frequency.

    For D_N, frequency 0 is the trivial irrep and frequency ``k >= 1`` is the
    2-dimensional irrep ``(1, k)``.
    """
    group = gspace.fibergroup
    representations = []
    for frequency in frequencies:
        band_limited_irreps(gspace, frequency)  # validates the frequency
        if gspace.flips_order > 0:
            representations.append(group.irrep(1 if frequency else 0, frequency))
        else:
            representations.append(group.irrep(frequency))
    return enn.FieldType(gspace, representations)


def _check_count(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise InvalidParameterError(f"{name} must be a positive integer, got {value!r}")


def as_geometric(x: torch.Tensor | enn.GeometricTensor, field_type: enn.FieldType, layer: str) -> enn.GeometricTensor:
    """Return ``x`` as a GeometricTensor of ``field_type``, or raise a clear error.

    Args:
        x: GeometricTensor of ``field_type``, or a tensor (B, field_type.size, H, W).
        field_type: the type that ``layer`` takes.
        layer: name used in the error message.

    Returns:
        GeometricTensor (B, field_type.size, H, W).
    """
    if isinstance(x, enn.GeometricTensor):
        if x.type != field_type:
            raise InvalidParameterError(
                f"{layer} expects fields {_describe(field_type)}, got {_describe(x.type)}; "
                "connect it to a layer whose out_type equals this in_type"
            )
        return x
    if isinstance(x, torch.Tensor):
        if x.dim() != 4 or x.shape[1] != field_type.size:
            raise InvalidParameterError(
                f"{layer} expects a tensor (B, {field_type.size}, H, W) for fields "
                f"{_describe(field_type)}, got shape {tuple(x.shape)}"
            )
        return enn.GeometricTensor(x, field_type)
    raise InvalidParameterError(
        f"{layer} expects a torch.Tensor or escnn GeometricTensor, got {type(x).__name__}"
    )


def _describe(field_type: enn.FieldType) -> str:
    names = sorted({rep.name for rep in field_type.representations})
    return (
        f"{len(field_type)} fields over {field_type.gspace.fibergroup.name} "
        f"({field_type.size} channels; representations {', '.join(names)})"
    )


class SteerableModule(nn.Module):
    """Base class: an escnn module with declared field types and an input check.

    Subclasses set ``self.module`` (the escnn module), ``self.in_type`` and
    ``self.out_type``.
    """

    in_type: enn.FieldType
    out_type: enn.FieldType
    module: enn.EquivariantModule

    def forward(self, x: torch.Tensor | enn.GeometricTensor) -> enn.GeometricTensor:
        return self.module(as_geometric(x, self.in_type, type(self).__name__))

    def extra_repr(self) -> str:
        return f"in: {_describe(self.in_type)}\nout: {_describe(self.out_type)}"


class SteerableConv(SteerableModule):
    """Steerable convolution between two field types (escnn ``R2Conv``).

    The kernel is a learned combination of escnn's equivariant kernel basis,
    so ``conv(g . F) = g . conv(F)``. Padding ``kernel_size // 2`` keeps the
    spatial size. Shapes: (B, in_type.size, H, W) -> (B, out_type.size, H, W).
    """

    def __init__(
        self, in_type: enn.FieldType, out_type: enn.FieldType, kernel_size: int = 3, bias: bool = True
    ) -> None:
        super().__init__()
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise InvalidParameterError(
                f"kernel_size must be a positive odd integer so that the kernel has a centre, "
                f"got {kernel_size!r}"
            )
        self.in_type, self.out_type = in_type, out_type
        self.module = enn.R2Conv(in_type, out_type, kernel_size, padding=kernel_size // 2, bias=bias)
        # R2Conv stores its expanded kernel as the buffers "filter" and
        # "expanded_bias" only while in evaluation mode (and a zero "filter"
        # after construction), so its state dict depends on the mode. They are
        # derived from the weights, so they are kept out of state dicts and
        # recomputed after loading, which makes saved files independent of the mode.
        self.module.train(self.training)
        self.register_state_dict_post_hook(_drop_cached_kernel)
        self.register_load_state_dict_pre_hook(_fill_cached_kernel)
        self.register_load_state_dict_post_hook(_refresh_cached_kernel)


_CACHED_KERNEL = ("module.filter", "module.expanded_bias")


def _drop_cached_kernel(module: SteerableConv, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    for name in _CACHED_KERNEL:
        state_dict.pop(prefix + name, None)


def _fill_cached_kernel(module: SteerableConv, state_dict: dict, prefix: str, *args) -> None:
    for name in _CACHED_KERNEL:
        state_dict.pop(prefix + name, None)
        current = getattr(module.module, name.split(".")[1], None)
        if isinstance(current, torch.Tensor):
            state_dict[prefix + name] = current


def _refresh_cached_kernel(module: SteerableConv, incompatible_keys) -> None:
    if not module.module.training:
        module.module.train(True)
        module.module.train(False)


class SteerableBatchNorm(SteerableModule):
    """Equivariant batch normalisation.

    Fields whose representation permutes channels (regular, trivial) use
    ``InnerBatchNorm``: one mean and variance per field, shared by its
    channels. Other fields use ``IIDBatchNorm2d``: a mean only on the
    trivial irreps and one variance per field, which keeps the norm of
    each field equivariant. Shapes: input and output (B, in_type.size, H, W).
    """

    def __init__(self, in_type: enn.FieldType) -> None:
        super().__init__()
        self.in_type = self.out_type = in_type
        if all("pointwise" in rep.supported_nonlinearities for rep in in_type.representations):
            self.module = enn.InnerBatchNorm(in_type)
        else:
            self.module = enn.IIDBatchNorm2d(in_type)


class FourierNonlinearity(SteerableModule):
    """ReLU applied to the function on G that band-limited fields describe.

    Each field contains Fourier coefficients ``f_hat``. The layer samples the
    function at every group element (inverse Fourier transform, a fixed
    matrix ``A``), applies ReLU to the samples, and projects back onto the
    band-limited coefficients (the least-squares inverse ``A_inv``):
    ``out = A_inv relu(A f_hat)``. Sampling on all of G makes the samples
    permute under the group, so ``fourier(g . F) = g . fourier(F)`` for every
    ``g`` in G, exactly up to rounding. Shapes: input and output
    (B, fields * F, H, W) with F the size of one field.
    """

    def __init__(self, gspace: gspaces.GSpace2D, fields: int, max_frequency: int) -> None:
        super().__init__()
        _check_count("fields", fields)
        irreps = band_limited_irreps(gspace, max_frequency)
        # The "regular" grid of N rotations (and their reflections) is all of G.
        self.module = enn.FourierPointwise(
            gspace, fields, irreps, function="p_relu", inplace=False, type="regular", N=gspace.rotations_order
        )
        self.in_type = self.out_type = self.module.in_type
        self.fields = fields

    @property
    def sampling_matrix(self) -> torch.Tensor:
        """Inverse Fourier transform ``A`` (|G|, F): samples of one field at each group element."""
        return self.module.A

    @property
    def projection_matrix(self) -> torch.Tensor:
        """Fourier transform ``A_inv`` (F, |G|): least-squares inverse of ``A``."""
        return self.module.Ainv


class NormNonlinearity(SteerableModule):
    """ReLU on the norm of each field: ``out = relu(|f| - b) / |f| * f``.

    Rotating a field does not change its norm, so the layer is equivariant
    for any representation with orthogonal matrices. The threshold
    ``b = exp(log_bias) > 0`` is learned per field and starts at 1.
    Shapes: input and output (B, in_type.size, H, W).
    """

    def __init__(self, in_type: enn.FieldType) -> None:
        super().__init__()
        self.in_type = self.out_type = in_type
        self.module = enn.NormNonLinearity(in_type, function="n_relu", bias=True)


class GatedNonlinearity(SteerableModule):
    """Gated nonlinearity: each field is scaled by the sigmoid of its own scalar gate.

    ``out_i = sigmoid(s_i - b_i) f_i``, with a learned bias ``b_i``. The input holds one trivial gate ``s_i``
    per gated field, first, followed by the gated fields, so ``in_type`` is
    ``gates + gated_type`` and ``out_type`` is ``gated_type``.
    Shapes: (B, len(gated_type) + gated_type.size, H, W) -> (B, gated_type.size, H, W).
    """

    def __init__(self, gated_type: enn.FieldType) -> None:
        super().__init__()
        gates = trivial_type(gated_type.gspace, len(gated_type))
        self.in_type = gates + gated_type
        self.out_type = gated_type
        labels = ["gate"] * len(gates) + ["gated"] * len(gated_type)
        self.module = enn.GatedNonLinearity1(self.in_type, gates=labels)


class SteerablePool2d(SteerableModule):
    """2x2 spatial pooling with stride 2.

    ``mode="max"`` (escnn ``PointwiseMaxPool2D``) is equivariant only for
    fields whose representation permutes channels (trivial, regular);
    ``mode="avg"`` (escnn ``PointwiseAvgPool2D``) is linear, so it is
    equivariant for every field type. Quarter turns are exact only when H
    and W are even, because then the windows map onto each other.
    Shapes: (B, C, H, W) -> (B, C, H / 2, W / 2).
    """

    def __init__(self, in_type: enn.FieldType, mode: str = "avg") -> None:
        super().__init__()
        self.in_type = self.out_type = in_type
        if mode == "max":
            permutation = all("pointwise" in rep.supported_nonlinearities for rep in in_type.representations)
            if not permutation:
                raise InvalidParameterError(
                    f"max pooling is not equivariant for fields {_describe(in_type)}; "
                    "use mode='avg' for fields of irreps"
                )
            self.module = enn.PointwiseMaxPool2D(in_type, 2)
        elif mode == "avg":
            self.module = enn.PointwiseAvgPool2D(in_type, 2)
        else:
            raise InvalidParameterError(f"pooling mode must be 'max' or 'avg', got {mode!r}")
        self.mode = mode


class SteerableUpsample(SteerableModule):
    """Bilinear 2x upsampling of every channel (escnn ``R2Upsampling``).

    With ``align_corners=False`` the interpolation weights are symmetric under
    flips of the grid, so it commutes with quarter turns and reflections
    exactly. Shapes: (B, C, H, W) -> (B, C, 2H, 2W).
    """

    def __init__(self, in_type: enn.FieldType) -> None:
        super().__init__()
        self.in_type = self.out_type = in_type
        self.module = enn.R2Upsampling(in_type, scale_factor=2, mode="bilinear", align_corners=False)


class FourierGroupPool(SteerableModule):
    """Invariant map: max or mean over the samples of each band-limited field on G.

    The layer samples each field's function at every group element with the
    same matrix ``A`` as :class:`FourierNonlinearity`, then pools over the
    samples. The samples permute under the group, so the pooled value of a
    field at ``x`` does not change: ``pool(g . F) = g . pool(F)`` with ``g``
    acting on the plane only. This is escnn's ``GroupPooling`` applied to the
    sampled regular field. Shapes: (B, fields * F, H, W) -> (B, fields, H, W).
    """

    def __init__(self, gspace: gspaces.GSpace2D, fields: int, max_frequency: int, mode: str = "max") -> None:
        super().__init__()
        if mode not in ("max", "mean"):
            raise InvalidParameterError(f"group pooling mode must be 'max' or 'mean', got {mode!r}")
        sampler = FourierNonlinearity(gspace, fields, max_frequency)
        self.in_type = sampler.in_type
        self.out_type = trivial_type(gspace, fields)
        self.fields = fields
        self.mode = mode
        # A fixed function of the group, so it is rebuilt rather than saved.
        self.register_buffer("sampling_matrix", sampler.sampling_matrix.clone(), persistent=False)

    def forward(self, x: torch.Tensor | enn.GeometricTensor) -> enn.GeometricTensor:
        x = as_geometric(x, self.in_type, type(self).__name__)
        batch, _, height, width = x.tensor.shape
        coefficients = x.tensor.reshape(batch, self.fields, -1, height, width)
        samples = torch.einsum("bcfhw,gf->bcghw", coefficients, self.sampling_matrix)
        pooled = samples.amax(dim=2) if self.mode == "max" else samples.mean(dim=2)
        return enn.GeometricTensor(pooled, self.out_type)


class NormPool(SteerableModule):
    """Invariant map: the Euclidean norm of each field (escnn ``NormPool``).

    Shapes: (B, in_type.size, H, W) -> (B, len(in_type), H, W).
    """

    def __init__(self, in_type: enn.FieldType) -> None:
        super().__init__()
        self.in_type = in_type
        self.module = enn.NormPool(in_type)
        self.out_type = self.module.out_type
