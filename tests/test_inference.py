"""Whole-slide inference through the command line, on real slides and real files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
import torch
from PIL import Image
from shapely.geometry import shape as to_shape

from histo_gedl.cli import main
from histo_gedl.errors import InvalidParameterError
from histo_gedl.models import ModelConfig, ModelMetadata, build_model, save_model
from histo_gedl.models.io import SHIPPED_MODELS_DIR, DEFAULT_MODEL

CMU = "cmu-1-small-region.svs"
TCGA = "tcga-cr-7395-01a-01-ts1.svs"


def _write_tiff(path: Path, image: np.ndarray, mpp: float) -> Path:
    """Write an RGB array as a tiled TIFF with its resolution in the TIFF tags."""
    tifffile.imwrite(
        path, image, photometric="rgb", tile=(256, 256), compression="zlib",
        resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER",
    )
    return path


@pytest.fixture(scope="module")
def cmu_crop(slides_dir, tmp_path_factory) -> np.ndarray:
    """A 512x512 tissue region of the CMU slide at level 0 (0.499 µm/px)."""
    with openslide.OpenSlide(str(slides_dir / CMU)) as slide:
        region = np.asarray(slide.read_region((900, 1200), 0, (512, 512)).convert("RGB"))
    return region


@pytest.fixture(scope="module")
def shipped_model() -> Path:
    path = SHIPPED_MODELS_DIR / f"{DEFAULT_MODEL}.safetensors"
    assert path.exists(), f"the shipped model {path} is missing from the repository"
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """An untrained C4 model, for tests where segmentation quality does not matter."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="regular", group="C4", width=1, depth=2),
                        ModelMetadata(name="tiny-untrained", mpp=0.5))
    return save_model(model.eval(), tmp_path_factory.mktemp("models") / "tiny.safetensors")


def _infer(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(["infer", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _read_levels(path: Path) -> list[np.ndarray]:
    with tifffile.TiffFile(path) as handle:
        return [level.asarray() for level in handle.series[0].levels]


def test_infer_outputs_on_real_crop(tmp_path, cmu_crop, shipped_model, capsys):
    slide = _write_tiff(tmp_path / "crop.tif", cmu_crop, 0.499)
    code, out, _ = _infer([str(slide), "--out", str(tmp_path / "out")], capsys)
    assert code == 0, out
    folder = tmp_path / "out" / "crop"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["mask.ome.tif", "instances.ome.tif", "nuclei.geojson", "overlay.png", "summary.json"]
    )
    mask = tifffile.imread(folder / "mask.ome.tif")
    instances = tifffile.imread(folder / "instances.ome.tif")
    assert mask.shape == (512, 512)
    assert instances.shape == (512, 512)
    assert mask.dtype == np.uint8
    assert instances.dtype == np.uint32
    # A second reader: OpenSlide opens both files, reads the class map pixel for pixel.
    with openslide.OpenSlide(str(folder / "mask.ome.tif")) as reopened:
        assert reopened.dimensions == (512, 512)
        pixels = np.asarray(reopened.read_region((0, 0), 0, (512, 512)))[..., 0]
    np.testing.assert_array_equal(pixels, mask)
    with openslide.OpenSlide(str(folder / "instances.ome.tif")) as reopened:
        assert reopened.dimensions == (512, 512)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["finished"] is True
    assert summary["nuclei"] == int(instances.max())
    assert summary["nuclei"] > 20
    # The shipped model's tuned settings, not the command's default smallest area, were used.
    assert summary["postprocess"]["min_area"] == 20
    assert summary["options"]["min_nucleus_area"] == 12
    assert summary["predictor"] == {"tta": "none", "device": "cpu", "micro_batch": 1}
    features = json.loads((folder / "nuclei.geojson").read_text())["features"]
    assert len(features) == summary["nuclei"]
    polygons = [to_shape(f["geometry"]) for f in features]
    assert all(p.is_valid for p in polygons)
    assert all(f["properties"]["objectType"] == "detection" for f in features)
    # Polygons are in level-0 pixels: their bounds lie inside the slide.
    assert max(p.bounds[2] for p in polygons) <= 512
    with Image.open(folder / "overlay.png") as overlay:
        assert overlay.size == (512, 512)


def test_nuclei_darker_than_surroundings(tmp_path, cmu_crop, shipped_model, capsys):
    slide = _write_tiff(tmp_path / "crop.tif", cmu_crop, 0.499)
    code, out, _ = _infer([str(slide), "--out", str(tmp_path / "out")], capsys)
    assert code == 0, out
    mask = tifffile.imread(tmp_path / "out" / "crop" / "mask.ome.tif")
    grey = cmu_crop.astype(np.float64).mean(axis=2)
    nuclei = grey[mask > 0].mean()
    others = grey[mask == 0].mean()
    # Haematoxylin stains nuclei dark blue-purple, darker than the pink stroma.
    assert nuclei < others - 20, (nuclei, others)


def test_rotating_slide_rotates_outputs(tmp_path, cmu_crop, shipped_model, capsys):
    original = _write_tiff(tmp_path / "original.tif", cmu_crop, 0.499)
    rotated = _write_tiff(tmp_path / "rotated.tif", np.ascontiguousarray(np.rot90(cmu_crop)), 0.499)
    code, out, _ = _infer([str(original), str(rotated), "--out", str(tmp_path / "out"), "--all-tiles"], capsys)
    assert code == 0, out
    mask = tifffile.imread(tmp_path / "out" / "original" / "mask.ome.tif")
    mask_rotated = tifffile.imread(tmp_path / "out" / "rotated" / "mask.ome.tif")
    np.testing.assert_array_equal(np.rot90(mask), mask_rotated)
    instances = tifffile.imread(tmp_path / "out" / "original" / "instances.ome.tif")
    instances_rotated = tifffile.imread(tmp_path / "out" / "rotated" / "instances.ome.tif")
    # Ids are numbered in raster order, so compare the partitions, not the ids.
    turned = np.rot90(instances)
    pairs = set(zip(turned[turned > 0].tolist(), instances_rotated[turned > 0].tolist()))
    assert len(pairs) == int(instances.max())
    assert (instances_rotated[turned == 0] == 0).all()
    summaries = [json.loads((tmp_path / "out" / n / "summary.json").read_text()) for n in ("original", "rotated")]
    assert summaries[0]["nuclei"] == summaries[1]["nuclei"]


def test_resume_after_kill_gives_identical_masks(tmp_path, slides_dir, tiny_model):
    with openslide.OpenSlide(str(slides_dir / CMU)) as source:
        region = np.asarray(source.read_region((600, 900), 0, (768, 768)).convert("RGB"))
    slide = _write_tiff(tmp_path / "region.tif", region, 0.499)
    command = [sys.executable, "-m", "histo_gedl.cli", "infer", str(slide), "--model", str(tiny_model),
               "--tile-size", "192", "--batch-size", "1", "--all-tiles"]
    reference = subprocess.run([*command, "--out", str(tmp_path / "reference")], capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr
    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen([*command, "--out", str(interrupted)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    done = interrupted / "region" / ".partial" / "done.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if done.exists() and len(json.loads(done.read_text() or "[]")) >= 5:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be interrupted"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (interrupted / "region" / "summary.json").exists()
    assert not (interrupted / "region" / "mask.ome.tif").exists()
    resumed = subprocess.run([*command, "--out", str(interrupted), "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    for name in ("mask.ome.tif", "instances.ome.tif"):
        expected = _read_levels(tmp_path / "reference" / "region" / name)
        actual = _read_levels(interrupted / "region" / name)
        assert len(actual) == len(expected)
        for level_expected, level_actual in zip(expected, actual):
            assert level_actual.tobytes() == level_expected.tobytes()


def test_slide_without_mpp_needs_slide_mpp(tmp_path, slides_dir, capsys):
    model = build_model(ModelConfig(kind="regular", group="C4", width=1, depth=2),
                        ModelMetadata(name="tiny-1mpp", mpp=1.0))
    model_path = save_model(model.eval(), tmp_path / "tiny-1mpp.safetensors")
    slide = str(slides_dir / TCGA)
    code, out, _ = _infer([slide, "--out", str(tmp_path / "out"), "--model", str(model_path)], capsys)
    assert code == 1
    assert "no resolution" in out
    assert "--slide-mpp" in out
    code, out, _ = _infer([slide, "--out", str(tmp_path / "out"), "--model", str(model_path),
                           "--slide-mpp", "1.0"], capsys)
    assert code == 0, out
    mask = tifffile.imread(tmp_path / "out" / "tcga-cr-7395-01a-01-ts1" / "mask.ome.tif")
    assert mask.shape == (3567, 4443)


def test_bad_slide_does_not_stop_others(tmp_path, cmu_crop, tiny_model, capsys):
    good = _write_tiff(tmp_path / "good.tif", cmu_crop, 0.499)
    bad = tmp_path / "broken.svs"
    bad.write_text("this is not a slide")
    code, out, _ = _infer([str(bad), str(good), "--out", str(tmp_path / "out"), "--model", str(tiny_model)], capsys)
    assert code == 1
    assert "FAILED" in out
    assert "broken.svs" in out
    assert "1 of 2 slides done" in out
    assert (tmp_path / "out" / "good" / "summary.json").exists()
    assert not (tmp_path / "out" / "broken").exists()


def test_output_path_is_a_file(tmp_path, cmu_crop, tiny_model, capsys):
    good = _write_tiff(tmp_path / "good.tif", cmu_crop, 0.499)
    target = tmp_path / "taken"
    target.write_text("a file")
    code, _, err = _infer([str(good), "--out", str(target), "--model", str(tiny_model)], capsys)
    assert code == 2
    assert "is a file" in err


@pytest.mark.skipif(os.access("/sys", os.W_OK) and not os.path.ismount("/sys"), reason="needs a read-only /sys")
def test_output_folder_not_writable(tmp_path, cmu_crop, tiny_model, capsys):
    good = _write_tiff(tmp_path / "good.tif", cmu_crop, 0.499)
    code, out, _ = _infer([str(good), "--out", "/sys/histo-gedl-test", "--model", str(tiny_model)], capsys)
    assert code == 1
    assert "cannot write to output folder" in out


def test_corrupt_model_file(tmp_path, cmu_crop, capsys):
    good = _write_tiff(tmp_path / "good.tif", cmu_crop, 0.499)
    model = tmp_path / "corrupt.safetensors"
    model.write_bytes(os.urandom(256))
    code, _, err = _infer([str(good), "--out", str(tmp_path / "out"), "--model", str(model)], capsys)
    assert code == 2
    assert "not a readable histo-gedl model" in err
    assert not (tmp_path / "out").exists()


def test_model_for_much_finer_mpp(tmp_path, cmu_crop, capsys):
    model = build_model(ModelConfig(kind="regular", group="C4", width=1, depth=2),
                        ModelMetadata(name="tiny-fine", mpp=0.1))
    model_path = save_model(model.eval(), tmp_path / "fine.safetensors")
    good = _write_tiff(tmp_path / "good.tif", cmu_crop, 0.499)
    code, out, _ = _infer([str(good), "--out", str(tmp_path / "out"), "--model", str(model_path)], capsys)
    assert code == 1
    assert "0.1 µm/px" in out
    assert "upsampling" in out


def test_finished_outputs_need_overwrite(tmp_path, cmu_crop, tiny_model, capsys):
    good = _write_tiff(tmp_path / "good.tif", cmu_crop, 0.499)
    args = [str(good), "--out", str(tmp_path / "out"), "--model", str(tiny_model)]
    assert _infer(args, capsys)[0] == 0
    code, out, _ = _infer(args, capsys)
    assert code == 1
    assert "--overwrite" in out
    assert _infer([*args, "--resume"], capsys)[0] == 0
    assert _infer([*args, "--overwrite"], capsys)[0] == 0


def test_stain_normalising_model_runs(tmp_path, cmu_crop, capsys):
    from histo_gedl.slides.stain import lab_statistics

    target = lab_statistics(cmu_crop).to_dict()
    model = build_model(ModelConfig(kind="regular", group="C4", width=1, depth=2),
                        ModelMetadata(name="tiny-stain", mpp=0.5,
                                      extra={"stain_normalisation": {"method": "reinhard", "target": target}}))
    model_path = save_model(model.eval(), tmp_path / "stain.safetensors")
    good = _write_tiff(tmp_path / "good.tif", cmu_crop, 0.499)
    code, out, _ = _infer([str(good), "--out", str(tmp_path / "out"), "--model", str(model_path)], capsys)
    assert code == 0, out
    summary = json.loads((tmp_path / "out" / "good" / "summary.json").read_text())
    assert summary["model"]["stain_normalisation"]["method"] == "reinhard"


def test_exported_predictor_matches_model(cmu_crop, shipped_model):
    from histo_gedl.inference.predict import ModelPredictor
    from histo_gedl.models import load_model

    model = load_model(shipped_model)
    tiles = cmu_crop[None, :256, :256]
    exported = ModelPredictor(model, export=True)(tiles)
    original = ModelPredictor(model, export=False)(tiles)
    assert np.abs(exported - original).max() < 1e-4


def test_resume_with_other_model_rejected(tmp_path, cmu_crop, tiny_model, capsys):
    good = _write_tiff(tmp_path / "good.tif", cmu_crop, 0.499)
    assert _infer([str(good), "--out", str(tmp_path / "out"), "--model", str(tiny_model)], capsys)[0] == 0
    other = build_model(ModelConfig(kind="plain", width=2, depth=2), ModelMetadata(name="other", mpp=0.5))
    other_path = save_model(other.eval(), tmp_path / "other.safetensors")
    code, out, _ = _infer([str(good), "--out", str(tmp_path / "out"), "--model", str(other_path), "--resume"], capsys)
    assert code == 1
    assert "was finished with model tiny-untrained" in out


def test_tile_size_below_halo_rejected(tmp_path, cmu_crop, tiny_model, capsys):
    good = _write_tiff(tmp_path / "good.tif", cmu_crop, 0.499)
    code, _, err = _infer([str(good), "--out", str(tmp_path / "out"), "--model", str(tiny_model),
                           "--tile-size", "40"], capsys)
    assert code == 2
    assert "--tile-size 40 is too small" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["-1", "0", "inf"])
def test_bad_slide_mpp_rejected_before_start(tmp_path, cmu_crop, tiny_model, capsys, value):
    good = _write_tiff(tmp_path / "good.tif", cmu_crop, 0.499)
    code, _, err = _infer([str(good), "--out", str(tmp_path / "out"), "--model", str(tiny_model),
                           "--slide-mpp", value], capsys)
    assert code == 2
    assert "--slide-mpp must be a positive finite number" in err
    assert not (tmp_path / "out").exists()


def test_single_failed_slide_logs_no_next_slide(tmp_path, tiny_model, capsys, caplog):
    bad = tmp_path / "broken.svs"
    bad.write_text("this is not a slide")
    code, out, _ = _infer([str(bad), "--out", str(tmp_path / "out"), "--model", str(tiny_model)], capsys)
    assert code == 1
    assert "0 of 1 slides done" in out
    assert "outputs in" not in out
    assert "continuing with the next slide" not in caplog.text


def test_unknown_device_rejected(tmp_path, cmu_crop, tiny_model, capsys):
    good = _write_tiff(tmp_path / "good.tif", cmu_crop, 0.499)
    code, _, err = _infer([str(good), "--out", str(tmp_path / "out"), "--model", str(tiny_model),
                           "--device", "tpu"], capsys)
    assert code == 2
    assert "unknown device 'tpu'" in err


def test_micro_batches_match_whole_batch(cmu_crop, shipped_model):
    from histo_gedl.inference.predict import ModelPredictor
    from histo_gedl.models import load_model

    model = load_model(shipped_model)
    tiles = np.stack([cmu_crop[:128, :128], cmu_crop[128:256, :128], np.rot90(cmu_crop[:128, :128]).copy()])
    assert ModelPredictor(model).micro_batch == 1  # the CPU default
    whole = ModelPredictor(model, micro_batch=3)(tiles)
    for micro_batch in (1, 2):
        parts = ModelPredictor(model, micro_batch=micro_batch)(tiles)
        assert parts.shape == whole.shape == (3, 3, 128, 128)
        assert np.abs(parts - whole).max() < 1e-5


@pytest.mark.parametrize("micro_batch", [0, -1, 1.5, True, "2"])
def test_invalid_micro_batch_rejected(micro_batch, tiny_model):
    from histo_gedl.inference.predict import ModelPredictor
    from histo_gedl.models import load_model

    with pytest.raises(InvalidParameterError, match="invalid micro_batch"):
        ModelPredictor(load_model(tiny_model), micro_batch=micro_batch)


@pytest.mark.parametrize("tta", ["none", "rot90", "dihedral"])
def test_model_gets_channels_last_input(tta):
    from histo_gedl.inference.predict import ModelPredictor

    model = build_model(ModelConfig(kind="plain", width=1, depth=1), ModelMetadata(name="spy", mpp=0.5))
    layouts = []
    model.net.register_forward_pre_hook(
        lambda module, inputs: layouts.append(inputs[0].is_contiguous(memory_format=torch.channels_last))
    )
    tiles = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    ModelPredictor(model, tta=tta, export=False)(tiles)
    assert len(layouts) == {"none": 2, "rot90": 8, "dihedral": 16}[tta]
    assert all(layouts)
