"""Every model kind and group: build, train step, gradients, export, save and load."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from histo_gedl.errors import ModelFileError
from histo_gedl.models import ModelConfig, ModelMetadata, build_model, load_model, save_model
from histo_gedl.models.export import export_torch

GROUPS = ["C4", "C8", "C16", "D4", "D8"]
CASES = [("regular", g) for g in GROUPS] + [("steerable", g) for g in GROUPS] + [("plain", "C8")]


@pytest.mark.parametrize(("kind", "group"), CASES)
def test_sweep(kind, group, tmp_path):
    torch.manual_seed(0)
    config = ModelConfig(kind=kind, group=group, width=2, depth=2)
    model = build_model(config, ModelMetadata(name=f"sweep-{kind}-{group}"))
    images = torch.rand(2, 3, 32, 32)

    # One training step: every parameter gets a finite, non-zero gradient.
    model.train()
    logits = model(images)
    assert logits.shape == (2, 3, 32, 32)
    target = torch.randint(0, 3, (2, 32, 32))
    torch.nn.functional.cross_entropy(logits, target).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{name} has no gradient"
        assert torch.isfinite(parameter.grad).all(), f"{name} has a non-finite gradient"
        assert parameter.grad.abs().sum() > 0, f"{name} has a zero gradient"

    model.eval()
    with torch.no_grad():
        expected = model(images)
        exported = export_torch(model)(images)
    assert (exported - expected).abs().max().item() < 1e-4

    path = save_model(model, tmp_path / "model.safetensors")
    loaded = load_model(path)
    with torch.no_grad():
        assert torch.equal(loaded(images), expected)
    assert loaded.metadata.name == f"sweep-{kind}-{group}"


def test_load_corrupt(tmp_path):
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(ModelFileError, match="not a readable histo-gedl model file"):
        load_model(path)


def test_load_truncated(tmp_path):
    model = build_model(ModelConfig(kind="plain", width=2, depth=1))
    path = save_model(model, tmp_path / "model.safetensors")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ModelFileError, match=str(path.name)):
        load_model(path)


def test_load_foreign(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(3, 3)}, str(path), metadata={"format": "pt"})
    with pytest.raises(ModelFileError, match="not a histo-gedl model"):
        load_model(path)
