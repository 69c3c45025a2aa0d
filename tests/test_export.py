"""Export to TorchScript and ONNX: same outputs as the original on a real H&E tile, without escnn."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime
import pytest
import tifffile
import torch

from histo_gedl.cli import main
from histo_gedl.errors import InvalidParameterError, ModelFileError
from histo_gedl.groups import parse_group
from histo_gedl.groups.actions import rotate_image
from histo_gedl.models import ModelConfig, ModelMetadata, build_model, save_model
from histo_gedl.models.export import (
    ExportedUNet,
    export_onnx,
    export_torch,
    read_torchscript_metadata,
)

KINDS = [("regular", "C8"), ("steerable", "C8"), ("plain", "C8")]


@pytest.fixture(scope="module")
def tile(monuseg_dir) -> torch.Tensor:
    """A 128x128 crop of a real MoNuSeg H&E tile: (1, 3, 128, 128) in [0, 1]."""
    image = tifffile.imread(monuseg_dir / "images" / "TCGA-21-5784-01Z-00-DX1.tif")
    crop = np.ascontiguousarray(image[300:428, 400:528, :3])
    return torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255.0


def trained_like(kind: str, group: str, tile: torch.Tensor, width: int = 2):
    """A small model whose batch norms have statistics from the tile, in evaluation mode."""
    torch.manual_seed(0)
    metadata = ModelMetadata(name=f"test-{kind}-{group}", mean=(0.7, 0.5, 0.7), std=(0.15, 0.2, 0.1))
    model = build_model(ModelConfig(kind=kind, group=group, width=width, depth=2), metadata)
    model.train()
    batch = torch.cat([tile, torch.flip(tile, dims=(-1,))])
    with torch.no_grad():
        for _ in range(3):
            model(batch)
    return model.eval()


@pytest.mark.parametrize(("kind", "group"), KINDS)
def test_torch_matches_original(kind, group, tile):
    model = trained_like(kind, group, tile)
    exported = export_torch(model)
    assert isinstance(exported, ExportedUNet)
    with torch.no_grad():
        difference = (exported(tile) - model(tile)).abs().max().item()
    assert difference < 1e-4


@pytest.mark.parametrize(("kind", "group"), KINDS)
def test_onnx_matches_original(kind, group, tile, tmp_path):
    model = trained_like(kind, group, tile)
    path = export_onnx(model, tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"image": tile.numpy()})
    with torch.no_grad():
        expected = model(tile).numpy()
    assert logits.shape == expected.shape
    assert np.abs(logits - expected).max() < 1e-4


def test_onnx_dynamic_axes(tile, tmp_path):
    model = trained_like("regular", "C4", tile)
    path = export_onnx(model, tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    image = torch.cat([tile[..., :64, :96]] * 3)
    (logits,) = session.run(["logits"], {"image": image.numpy()})
    assert logits.shape == (3, 3, 64, 96)


def test_onnx_metadata(tile, tmp_path):
    model = trained_like("plain", "C8", tile)
    proto = onnx.load(str(export_onnx(model, tmp_path / "model.onnx")))
    properties = {entry.key: entry.value for entry in proto.metadata_props}
    assert '"name": "test-plain-C8"' in properties["histo_gedl.metadata"]
    assert '"kind": "plain"' in properties["histo_gedl.config"]


def test_onnx_opset_invalid(tile, tmp_path):
    model = trained_like("plain", "C8", tile)
    with pytest.raises(InvalidParameterError, match="opset"):
        export_onnx(model, tmp_path / "model.onnx", opset=7)


def test_onnx_leaves_no_partial(tile, tmp_path):
    model = trained_like("plain", "C8", tile)
    export_onnx(model, tmp_path / "model.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


@pytest.mark.parametrize(("kind", "group"), [("regular", "C4"), ("regular", "C8"), ("steerable", "C4"), ("steerable", "C8")])
def test_exported_rotation(kind, group, tile):
    rotations = parse_group(group)
    exported = export_torch(trained_like(kind, group, tile))
    with torch.no_grad():
        out = exported(tile)
        for g in rotations.elements():
            if rotations.quarter_turns(g) is None:
                continue
            error = (exported(rotate_image(tile, rotations, g)) - rotate_image(out, rotations, g)).abs().max()
            assert error.item() < 1e-4, f"element {g}: {error.item():.2e}"


def test_exported_size_checked(tile):
    exported = export_torch(trained_like("plain", "C8", tile))
    with pytest.raises(ValueError, match="multiples of 4"):
        exported(tile[..., :126, :])


def test_original_unchanged(tile):
    model = trained_like("steerable", "C8", tile)
    model.train()
    export_torch(model)
    assert model.training


def test_export_rejects_module():
    with pytest.raises(InvalidParameterError, match="SegmentationModel"):
        export_torch(torch.nn.Conv2d(3, 3, 1))


BLOCKED_IMPORT = """
import sys
# Importing any of these now raises ImportError.
for name in ("escnn", "lie_learn", "histo_gedl"):
    sys.modules[name] = None
import torch
model = torch.jit.load(sys.argv[1])
image = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save(model(image), sys.argv[3])
try:
    import escnn
except ImportError:
    print("escnn blocked")
"""


@pytest.mark.parametrize(("kind", "group"), [("steerable", "D4"), ("regular", "C8")])
def test_torchscript_without_escnn(kind, group, tile, tmp_path):
    model = trained_like(kind, group, tile)
    export_torch(model, tmp_path / "model.pt")
    torch.save(tile, tmp_path / "tile.pt")
    result = subprocess.run(
        [sys.executable, "-c", BLOCKED_IMPORT, str(tmp_path / "model.pt"), str(tmp_path / "tile.pt"),
         str(tmp_path / "logits.pt")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "escnn blocked" in result.stdout
    with torch.no_grad():
        expected = model(tile)
    assert (torch.load(tmp_path / "logits.pt") - expected).abs().max().item() < 1e-4


def test_torchscript_metadata(tile, tmp_path):
    model = trained_like("regular", "C4", tile)
    export_torch(model, tmp_path / "model.pt")
    stored = read_torchscript_metadata(tmp_path / "model.pt")
    assert '"group": "C4"' in stored["histo_gedl.config"]
    assert '"mpp": 0.5' in stored["histo_gedl.metadata"]


def test_torchscript_foreign(tmp_path):
    torch.jit.save(torch.jit.script(torch.nn.ReLU()), str(tmp_path / "foreign.pt"))
    with pytest.raises(ModelFileError, match="not exported by histo_gedl"):
        read_torchscript_metadata(tmp_path / "foreign.pt")


def test_cli_export_onnx(tile, tmp_path, capsys):
    model_path = save_model(trained_like("steerable", "C4", tile), tmp_path / "model.safetensors")
    out = tmp_path / "exported.onnx"
    status = main(["export-model", str(model_path), "--format", "onnx", "--out", str(out)])
    assert status == 0
    assert out.exists()
    assert f"wrote {out}" in capsys.readouterr().out


def test_cli_export_torch(tile, tmp_path):
    model_path = save_model(trained_like("regular", "C4", tile), tmp_path / "model.safetensors")
    out = tmp_path / "exported.pt"
    assert main(["export-model", str(model_path), "--format", "torch", "--out", str(out)]) == 0
    with torch.no_grad():
        difference = (torch.jit.load(str(out))(tile) - trained_like("regular", "C4", tile)(tile)).abs().max()
    assert difference.item() < 1e-4


def test_cli_corrupt_model(tmp_path, capsys):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all")
    status = main(["export-model", str(corrupt), "--format", "torch", "--out", str(tmp_path / "x.pt")])
    assert status == 2
    assert "not a readable histo-gedl model file" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_cli_missing_model(tmp_path, capsys):
    status = main(["export-model", str(tmp_path / "none.safetensors"), "--format", "onnx", "--out", str(tmp_path / "x.onnx")])
    assert status == 2
    assert "not found" in capsys.readouterr().err


def test_export_to_existing_folder_rejected(tmp_path, capsys):
    from histo_gedl.cli import main
    from histo_gedl.models import ModelConfig, ModelMetadata, build_model, save_model

    model = build_model(ModelConfig(kind="plain", width=2, depth=2), ModelMetadata(name="tiny", mpp=0.5))
    path = save_model(model.eval(), tmp_path / "tiny.safetensors")
    folder = tmp_path / "folder"
    folder.mkdir()
    assert main(["export-model", str(path), "--format", "onnx", "--out", str(folder)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "tiny.safetensors"]
