"""Saving and loading models: one safetensors file with weights and metadata."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from histo_gedl.errors import InvalidParameterError, ModelFileError
from histo_gedl.models import (
    ModelConfig,
    ModelMetadata,
    build_model,
    count_parameters,
    exact_sizes,
    load_model,
    matched_plain_width,
    read_model_header,
    save_model,
)


@pytest.fixture()
def small_model():
    torch.manual_seed(0)
    metadata = ModelMetadata(name="test-c4", mpp=0.5, training_data="none", training_data_licence="CC0")
    model = build_model(ModelConfig(kind="regular", group="C4", width=2, depth=2), metadata)
    return model.eval()


def test_round_trip_same_outputs(tmp_path, small_model):
    path = save_model(small_model, tmp_path / "model.safetensors")
    loaded = load_model(path)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), small_model(x), rtol=0, atol=0)


def test_round_trip_keeps_metadata(tmp_path, small_model):
    path = save_model(small_model, tmp_path / "model.safetensors")
    config, metadata = read_model_header(path)
    assert config == small_model.config
    assert metadata.name == "test-c4"
    assert metadata.training_data_licence == "CC0"


def test_load_missing_name_lists_shipped(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "absent.safetensors")


def test_load_folder_is_named(tmp_path):
    with pytest.raises(ModelFileError, match="is a folder; pass a .safetensors file"):
        load_model(tmp_path)


def test_shipped_name_wins_over_folder(tmp_path, monkeypatch):
    (tmp_path / "nuclei-c8-v1").mkdir()
    monkeypatch.chdir(tmp_path)
    assert load_model("nuclei-c8-v1").metadata.name == "nuclei-c8-v1"


def test_load_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(b"\x00\x01not a model at all")
    with pytest.raises(ModelFileError, match="not a readable histo-gedl model"):
        load_model(path)


def test_load_foreign_safetensors(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(3)}, str(path), metadata={"format": "pt"})
    with pytest.raises(ModelFileError, match="not a histo-gedl model"):
        load_model(path)


def test_load_truncated_file(tmp_path, small_model):
    path = save_model(small_model, tmp_path / "model.safetensors")
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError):
        load_model(truncated)


def test_load_weights_of_other_architecture(tmp_path, small_model):
    path = save_model(small_model, tmp_path / "model.safetensors")
    other = build_model(ModelConfig(kind="regular", group="C4", width=3, depth=2))
    header = {
        "histo_gedl.format": "1",
        "histo_gedl.config": json.dumps(other.config.to_dict()),
        "histo_gedl.metadata": small_model.metadata.to_json(),
    }
    from safetensors.torch import load_file

    mismatched = tmp_path / "mismatched.safetensors"
    save_file(load_file(str(path)), str(mismatched), metadata=header)
    with pytest.raises(ModelFileError, match="do not match the architecture"):
        load_model(mismatched)


def test_save_leaves_no_partial_file(tmp_path, small_model):
    save_model(small_model, tmp_path / "model.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_model_rejects_size_not_multiple_of_stride(small_model):
    with pytest.raises(InvalidParameterError, match="multiples of 4"):
        small_model(torch.rand(1, 3, 30, 32))


def test_model_rejects_wrong_channels(small_model):
    with pytest.raises(InvalidParameterError, match="expects images"):
        small_model(torch.rand(1, 1, 32, 32))


def test_config_rejects_unknown_kind():
    with pytest.raises(InvalidParameterError, match="unknown model kind"):
        ModelConfig(kind="fancy")


def test_exact_sizes_are_stride_multiples():
    assert exact_sizes(ModelConfig(depth=3), 40) == [8, 16, 24, 32, 40]


def test_receptive_field_bound_holds(small_model):
    # Changing pixels just outside the claimed radius must not change the centre output.
    radius = small_model.config.receptive_field_radius()
    stride = small_model.config.total_stride
    size = (2 * radius + 2 * stride) // stride * stride
    torch.manual_seed(1)
    x = torch.rand(1, 3, size, size)
    centre = size // 2
    y = x.clone()
    y[..., : centre - radius - 1, :] = torch.rand_like(y[..., : centre - radius - 1, :])
    y[..., centre + radius + 1 :, :] = torch.rand_like(y[..., centre + radius + 1 :, :])
    with torch.no_grad():
        a, b = small_model(x), small_model(y)
    torch.testing.assert_close(a[..., centre, centre], b[..., centre, centre], rtol=0, atol=1e-5)
    # A change inside the radius does reach the centre, so the test can fail.
    z = x.clone()
    z[..., centre - 2 : centre + 2, centre - 2 : centre + 2] = 0.0
    with torch.no_grad():
        assert (small_model(z)[..., centre, centre] - a[..., centre, centre]).abs().max() > 1e-4


def test_matched_plain_width_is_close():
    config = ModelConfig(kind="regular", group="C8", width=3, depth=3)
    target = count_parameters(build_model(config))
    width = matched_plain_width(config, target)
    plain = build_model(ModelConfig(kind="plain", width=width, depth=3))
    assert abs(count_parameters(plain) - target) / target < 0.1


def test_orientation_map_turns_with_input():
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="regular", group="C4", width=2, depth=2)).eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        logits, angle = model.forward_with_orientation(x)
        logits_turned, angle_turned = model.forward_with_orientation(torch.rot90(x, 1, dims=(-2, -1)))
    torch.testing.assert_close(logits_turned, torch.rot90(logits, 1, dims=(-2, -1)), rtol=0, atol=1e-4)
    expected = torch.rot90(angle, 1, dims=(-2, -1)) + math.pi / 2
    difference = torch.remainder(angle_turned - expected + math.pi, 2 * math.pi) - math.pi
    # Where all orientations respond equally (e.g. all zero after ReLU) the angle is undefined.
    with torch.no_grad():
        features = model.net.features((x - model.mean) / model.std).sum(dim=1)[0]
    spread = torch.rot90(features.amax(dim=0) - features.amin(dim=0), 1, dims=(-2, -1))
    defined = spread > 1e-3
    assert defined.float().mean() > 0.9
    assert difference[0][defined].abs().max() < 1e-3


def test_orientation_map_needs_cyclic_regular_model():
    model = build_model(ModelConfig(kind="plain", width=2, depth=2))
    with pytest.raises(InvalidParameterError, match="no orientation output"):
        model.forward_with_orientation(torch.rand(1, 3, 8, 8))
