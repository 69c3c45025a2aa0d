"""Training data, targets, augmentation, the training loop, resuming, fine-tuning and evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml
from PIL import Image

from histo_gedl.cli import main
from histo_gedl.errors import DatasetError, InvalidParameterError
from histo_gedl.models import ModelConfig, ModelMetadata, build_model, load_model, save_model
from histo_gedl.training.augment import HEDJitter, training_augmentation
from histo_gedl.training.config import load_train_config
from histo_gedl.training.data import load_labelled_tiles, read_labels, read_rgb
from histo_gedl.training.evaluate import rotate_pair, score_prediction
from histo_gedl.training.targets import BACKGROUND, BOUNDARY, INTERIOR, three_class_target
from histo_gedl.training.trainer import train

TILE = "TCGA-21-5784-01Z-00-DX1"


# --- data -------------------------------------------------------------------


def test_instance_and_xml_labels_agree(monuseg_dir):
    tiles = {}
    for folder in ("instance_masks", "annotations_xml"):
        tiles[folder] = load_labelled_tiles(
            monuseg_dir / "images", [monuseg_dir / folder], 0.5, monuseg_dir / "mpp.csv", names=[TILE]
        )[0]
    from_png, from_xml = tiles["instance_masks"], tiles["annotations_xml"]
    assert from_png.label_kind == "instances"
    assert from_xml.label_kind == "polygons"
    assert from_png.image.shape == (505, 505, 3)  # 1000 px at 0.2527 µm/px, resampled to 0.5
    overlap = np.logical_and(from_png.instances > 0, from_xml.instances > 0).sum()
    dice = 2 * overlap / ((from_png.instances > 0).sum() + (from_xml.instances > 0).sum())
    assert dice > 0.95


def test_binary_masks_fall_back_to_components(monuseg_dir):
    tile = load_labelled_tiles(monuseg_dir / "images", [monuseg_dir / "binary_masks"], 0.5,
                               monuseg_dir / "mpp.csv", names=[TILE])[0]
    assert tile.label_kind == "binary"
    assert not tile.has_instances
    assert tile.instances.max() > 100


def test_image_without_labels_is_an_error(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    with pytest.raises(DatasetError, match="a.png has no labels"):
        load_labelled_tiles(tmp_path / "images", [tmp_path / "labels"], 0.5, 0.5)


def test_labels_of_other_size_are_an_error(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.zeros((8, 9), np.uint16)).save(tmp_path / "labels" / "a.png")
    with pytest.raises(DatasetError, match="9x8 .* but the image is 8x8"):
        load_labelled_tiles(tmp_path / "images", [tmp_path / "labels"], 0.5, 0.5)


def test_unknown_mpp_is_an_error(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "labels" / "a.png")
    with pytest.raises(DatasetError, match="mpp of image a.png is unknown"):
        load_labelled_tiles(tmp_path / "images", [tmp_path / "labels"], 0.5, None)


def _damaged_tiff(tmp_path: Path, cut: str) -> bytes:
    """Return the bytes of a 64 x 64 RGB TIFF damaged in the way ``cut`` names."""
    whole = tmp_path / "whole.tif"
    compression = {"compressed pixels cut": "zlib", "JPEG pixels cut": "jpeg"}.get(cut)
    tifffile.imwrite(whole, np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8), compression=compression)
    data = whole.read_bytes()
    if cut == "JPEG pixels cut":
        # The JPEG decoder fills a cut stream with grey instead of failing.
        return data[: len(data) // 2]
    if cut == "first page past the end":
        # A little-endian TIFF header whose first page lies beyond the end of the file.
        return b"II*\x00" + (len(data) + 1000).to_bytes(4, "little") + data[8:100]
    if cut == "compressed pixels cut":
        # tifffile writes the pixels before the page directory, so overwrite the middle of the pixels.
        middle = len(data) // 3
        return data[:middle] + bytes(200) + data[middle + 200:]
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "cut", ["first page past the end", "half of the pixels", "compressed pixels cut", "JPEG pixels cut"]
)
def test_truncated_tiff_error(tmp_path, cut):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    (tmp_path / "images" / "a.tif").write_bytes(_damaged_tiff(tmp_path, cut))
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "labels" / "a.png")
    with pytest.raises(DatasetError, match="cannot read image .*a.tif: .*truncated or damaged"):
        load_labelled_tiles(tmp_path / "images", [tmp_path / "labels"], 0.5, 0.5)


def test_cut_tiff_logs_nothing_extra(tmp_path, caplog):
    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, np.zeros((64, 64, 3), np.uint8), compression="zlib")
    (tmp_path / "cut.tif").write_bytes(whole.read_bytes()[:200])
    with pytest.raises(DatasetError, match="truncated or damaged"):
        read_rgb(tmp_path / "cut.tif")
    assert not [record for record in caplog.records if record.name == "tifffile"]


def test_damaged_label_tiff_error(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    (tmp_path / "labels" / "a.tif").write_bytes(_damaged_tiff(tmp_path, "compressed pixels cut"))
    with pytest.raises(DatasetError, match="cannot read labels .*a.tif: .*truncated or damaged"):
        load_labelled_tiles(tmp_path / "images", [tmp_path / "labels"], 0.5, 0.5)


def test_folder_that_is_a_file_error(tmp_path):
    (tmp_path / "images").write_text("not a folder")
    with pytest.raises(DatasetError, match="images folder .* is a file, not a folder"):
        load_labelled_tiles(tmp_path / "images", [tmp_path], 0.5, 0.5)


def test_no_label_folders_error(tmp_path):
    with pytest.raises(DatasetError, match="no labels folder given"):
        load_labelled_tiles(tmp_path, [], 0.5, 0.5)


def test_sixteen_bit_png_reads_as_instances(tmp_path):
    labels = np.zeros((6, 6), np.uint16)
    labels[1:3, 1:3] = 1
    labels[3:5, 3:5] = 300
    Image.fromarray(labels).save(tmp_path / "l.png")
    instances, kind, mpp = read_labels(tmp_path / "l.png", (6, 6))
    assert kind == "instances"
    assert mpp is None
    assert sorted(np.unique(instances).tolist()) == [0, 1, 300]


# --- targets and augmentation --------------------------------------------------


def test_three_class_target_separates_touching_nuclei():
    instances = np.zeros((6, 8), np.uint32)
    instances[1:5, 1:4] = 1
    instances[1:5, 4:7] = 2  # touches nucleus 1 along a column
    target = three_class_target(instances)
    assert target[0, 0] == BACKGROUND
    assert target[2, 2] == INTERIOR
    assert target[2, 3] == BOUNDARY  # nucleus 1's rim where it meets nucleus 2
    assert target[2, 4] == BOUNDARY
    assert (target[instances == 0] == BACKGROUND).all()


def test_hed_jitter_changes_colour_not_shape():
    image = np.full((16, 16, 3), (200, 120, 180), np.uint8)
    jitter = HEDJitter(scale=0.2, shift=0.05, p=1.0)
    jitter.set_random_seed(0)
    out = jitter(image=image)["image"]
    assert out.shape == image.shape
    assert out.dtype == np.uint8
    assert np.abs(out.astype(int) - image).max() > 0


def test_augmentation_crops_and_pads():
    augment = training_augmentation(64)
    augment.set_random_seed(0)
    sample = augment(image=np.zeros((40, 50, 3), np.uint8), mask=np.zeros((40, 50), np.uint8))
    assert sample["image"].shape == (64, 64, 3)
    assert sample["mask"].shape == (64, 64)


# --- evaluation --------------------------------------------------------------------


def _probabilities_from(instances: np.ndarray) -> np.ndarray:
    target = three_class_target(instances)
    return np.stack([(target == c).astype(np.float32) for c in range(3)])


def test_score_perfect_prediction():
    instances = np.zeros((32, 32), np.uint32)
    instances[4:12, 4:12] = 1
    instances[16:26, 10:22] = 2
    scores = score_prediction(_probabilities_from(instances), instances, has_instances=True)
    assert scores["dice"] == pytest.approx(1.0)
    assert scores["iou"] == pytest.approx(1.0)
    assert scores["aji"] == pytest.approx(1.0)
    assert scores["pq"] == pytest.approx(1.0)


def test_score_shifted_square():
    truth = np.zeros((32, 32), np.uint32)
    truth[8:16, 8:16] = 1  # 64 pixels
    predicted = np.zeros_like(truth)
    predicted[8:16, 10:18] = 1  # shifted by 2 columns: 48 shared, union 80
    scores = score_prediction(_probabilities_from(predicted), truth, has_instances=True)
    assert scores["dice"] == pytest.approx(2 * 48 / 128)
    assert scores["iou"] == pytest.approx(48 / 80)
    assert scores["aji"] == pytest.approx(48 / 80)
    assert scores["pq"] == pytest.approx(48 / 80)  # one match at IoU 0.6


def test_score_binary_labels_have_no_instance_scores():
    truth = np.zeros((16, 16), np.uint32)
    truth[4:8, 4:8] = 1
    scores = score_prediction(_probabilities_from(truth), truth, has_instances=False)
    assert set(scores) == {"dice", "iou"}


def test_rotate_pair_quarter_turn_is_exact():
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    labels = np.arange(35, dtype=np.uint32).reshape(5, 7)
    rotated_image, rotated_labels = rotate_pair(image, labels, 90)
    np.testing.assert_array_equal(rotated_image, np.rot90(image))
    np.testing.assert_array_equal(rotated_labels, np.rot90(labels))


# --- training loop ----------------------------------------------------------------------


def _config_file(tmp_path: Path, monuseg_dir: Path, steps: int, **extra) -> Path:
    config = {
        "name": "tiny-test",
        "output_dir": str(tmp_path / "run"),
        "model": {"kind": "regular", "group": "C4", "width": 2, "depth": 2},
        "mpp": 0.5,
        "patch_size": 64,
        "batch_size": 2,
        "steps": steps,
        "validate_every": 4,
        "learning_rate": 0.01,
        "warmup_steps": 2,
        "threads": 1,
        "data": {
            "images": str(monuseg_dir / "images"),
            "labels": [str(monuseg_dir / "instance_masks")],
            "mpp": str(monuseg_dir / "mpp.csv"),
            "train": [TILE, "TCGA-AR-A1AK-01Z-00-DX1"],
            "validation": ["TCGA-21-5786-01Z-00-DX1"],
            "description": "two MoNuSeg tiles",
            "licence": "CC BY-NC-SA 4.0",
        },
        **extra,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def twenty_step_run(tmp_path_factory, monuseg_dir):
    tmp_path = tmp_path_factory.mktemp("train")
    result = train(load_train_config(_config_file(tmp_path, monuseg_dir, steps=20)))
    return tmp_path, result


def test_training_loss_falls(twenty_step_run):
    _, result = twenty_step_run
    losses = result.history["loss"]
    assert len(losses) == 20
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_training_writes_its_files(twenty_step_run):
    tmp_path, result = twenty_step_run
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"checkpoint.pt", "best.safetensors", "history.json", "curves.png"} <= names
    model = load_model(result.best_model)
    assert model.metadata.name == "tiny-test"
    assert model.metadata.training_data_licence == "CC BY-NC-SA 4.0"
    assert "dice" in model.metadata.metrics


def test_resumed_run_matches_uninterrupted(tmp_path, monuseg_dir, twenty_step_run):
    _, uninterrupted = twenty_step_run
    config_path = _config_file(tmp_path, monuseg_dir, steps=20)
    interrupted = train(load_train_config(config_path), stop_at=8)
    assert interrupted.steps_done == 8
    resumed = train(load_train_config(config_path), resume=True)
    assert resumed.steps_done == 20
    np.testing.assert_allclose(resumed.history["loss"], uninterrupted.history["loss"], rtol=1e-4)


def test_existing_run_needs_resume(tmp_path, monuseg_dir):
    config_path = _config_file(tmp_path, monuseg_dir, steps=2, validate_every=2)
    train(load_train_config(config_path))
    with pytest.raises(InvalidParameterError, match="pass --resume"):
        train(load_train_config(config_path))


def test_resume_without_checkpoint(tmp_path, monuseg_dir):
    config_path = _config_file(tmp_path, monuseg_dir, steps=2)
    with pytest.raises(InvalidParameterError, match="no checkpoint"):
        train(load_train_config(config_path), resume=True)


def test_config_rejects_unknown_key(tmp_path, monuseg_dir):
    config_path = _config_file(tmp_path, monuseg_dir, steps=2, learning_rat=0.1)
    with pytest.raises(InvalidParameterError, match="learning_rat"):
        load_train_config(config_path)


def test_config_rejects_patch_not_multiple_of_stride(tmp_path, monuseg_dir):
    config_path = _config_file(tmp_path, monuseg_dir, steps=2, patch_size=66)
    with pytest.raises(InvalidParameterError, match="multiple of 4"):
        load_train_config(config_path)


def test_finetune_head_only_keeps_encoder(tmp_path, monuseg_dir, capsys):
    torch.manual_seed(0)
    base = build_model(ModelConfig(kind="regular", group="C4", width=2, depth=2),
                       ModelMetadata(name="base", mpp=0.5))
    base_path = save_model(base.eval(), tmp_path / "base.safetensors")
    config_path = _config_file(tmp_path, monuseg_dir, steps=3, validate_every=3, freeze="all_but_head")
    code = main(["finetune", str(config_path), "--from", str(base_path)])
    assert code == 0
    assert "trained 3 steps" in capsys.readouterr().out
    tuned = load_model(tmp_path / "run" / "best.safetensors")
    before, after = base.state_dict(), tuned.state_dict()
    assert torch.equal(before["net.encoder.0.conv1.weight"], after["net.encoder.0.conv1.weight"])
    assert not torch.equal(before["net.head.weight"], after["net.head.weight"])
    assert tuned.metadata.extra["finetuned_from"] == "base"


def test_finetune_rejects_other_mpp(tmp_path, monuseg_dir):
    base = build_model(ModelConfig(kind="regular", group="C4", width=2, depth=2),
                       ModelMetadata(name="base", mpp=0.25))
    base_path = save_model(base.eval(), tmp_path / "base.safetensors")
    config = load_train_config(_config_file(tmp_path, monuseg_dir, steps=2))
    with pytest.raises(InvalidParameterError, match="trained at 0.25 mpp"):
        train(config, init_from=str(base_path))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("key", ["images", "labels"])
def test_config_requires_data_folders(tmp_path, monuseg_dir, key):
    config_path = _config_file(tmp_path, monuseg_dir, steps=2)
    config = yaml.safe_load(config_path.read_text())
    del config["data"][key]
    config_path.write_text(yaml.safe_dump(config))
    with pytest.raises(InvalidParameterError, match=f"data.{key} is missing"):
        load_train_config(config_path)


def test_train_missing_folder_names_key(tmp_path, monuseg_dir, capsys):
    config_path = _config_file(tmp_path, monuseg_dir, steps=2)
    config = yaml.safe_load(config_path.read_text())
    config["data"]["labels"] = [str(tmp_path / "no-such-labels")]
    config_path.write_text(yaml.safe_dump(config))
    assert main(["train", str(config_path)]) == 2
    assert "data.labels folder " + str(tmp_path / "no-such-labels") + " not found" in capsys.readouterr().err
    # A run that could not start leaves no run folder behind.
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("option", ["--images", "--labels"])
def test_evaluate_missing_folder_names_option(tmp_path, option, capsys):
    model = build_model(ModelConfig(kind="plain", width=2, depth=2), ModelMetadata(name="tiny", mpp=0.5))
    model_path = save_model(model.eval(), tmp_path / "tiny.safetensors")
    folders = {"--images": tmp_path / "images", "--labels": tmp_path / "labels"}
    for folder in folders.values():
        folder.mkdir()
    missing = tmp_path / "missing"
    folders[option] = missing
    code = main(["evaluate", "--model", str(model_path), "--images", str(folders["--images"]),
                 "--labels", str(folders["--labels"]), "--mpp", "0.5"])
    assert code == 2
    assert f"{option} folder {missing} not found" in capsys.readouterr().err


def test_evaluate_command_json(tmp_path, monuseg_dir, capsys):
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="plain", width=2, depth=2), ModelMetadata(name="tiny", mpp=0.5))
    model_path = save_model(model.eval(), tmp_path / "tiny.safetensors")
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    image = tifffile.imread(monuseg_dir / "images" / f"{TILE}.tif")[:200, :200]
    truth = np.asarray(Image.open(monuseg_dir / "instance_masks" / f"{TILE}.png"))[:200, :200]
    Image.fromarray(image).save(images / "crop.png")
    Image.fromarray(truth.astype(np.uint16)).save(labels / "crop.png")
    code = main(["evaluate", "--model", str(model_path), "--images", str(images), "--labels", str(labels),
                 "--mpp", "0.5", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["tiles"]) == {"crop"}
    assert list(report["mean"]) == ["dice", "iou", "aji", "pq"]
    assert all(0.0 <= v <= 1.0 for v in report["mean"].values())


def test_reinhard_option_recorded_in_model(tmp_path, monuseg_dir):
    config_path = _config_file(tmp_path, monuseg_dir, steps=2, validate_every=2, stain_normalisation="reinhard")
    result = train(load_train_config(config_path))
    stain = load_model(result.best_model).metadata.extra["stain_normalisation"]
    assert stain["method"] == "reinhard"
    assert len(stain["target"]["mean"]) == 3


def test_unknown_stain_option_rejected(tmp_path, monuseg_dir):
    config_path = _config_file(tmp_path, monuseg_dir, steps=2, stain_normalisation="macenko")
    with pytest.raises(InvalidParameterError, match="stain_normalisation"):
        load_train_config(config_path)


def test_tuned_postprocess_beats_or_matches_default(monuseg_dir):
    from histo_gedl.training.evaluate import MIN_NUCLEUS_AREA
    from histo_gedl.training.tune import tune_postprocess

    tile = load_labelled_tiles(monuseg_dir / "images", [monuseg_dir / "instance_masks"], 0.5,
                               monuseg_dir / "mpp.csv", names=[TILE])[0]
    tile.image = tile.image[:128, :128]
    tile.instances = tile.instances[:128, :128]

    class Oracle(torch.nn.Module):
        """Returns the labels' own target, blurred, as if a model had predicted it."""

        def __init__(self):
            super().__init__()
            self.config = ModelConfig(kind="plain", width=1, depth=2)

        def forward(self, x):
            target = torch.from_numpy(three_class_target(tile.instances)).long()
            onehot = torch.nn.functional.one_hot(target, 3).permute(2, 0, 1).float()[None]
            return torch.log(torch.nn.functional.avg_pool2d(onehot, 3, 1, 1) + 1e-3)

    options, score = tune_postprocess(Oracle(), [tile])
    from histo_gedl import metrics
    from histo_gedl.inference.postprocess import instances_from_probabilities
    from histo_gedl.training.trainer import predict_tile

    default = metrics.aggregated_jaccard_index(
        instances_from_probabilities(predict_tile(Oracle(), tile.image), min_area=MIN_NUCLEUS_AREA), tile.instances
    )
    assert score >= default
    assert set(options) == {"interior_threshold", "foreground_threshold", "marker_erosion", "min_area"}


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parents[1].glob("pipelines/*.yaml")), ids=lambda p: p.name)
def test_shipped_pipeline_configs_load(path, shared_data):
    config = load_train_config(path)
    assert config.data.images
    assert Path(config.data.images).is_dir()
    for folder in config.data.labels:
        assert Path(folder).is_dir()


def test_weight_average_is_saved_and_resumed(tmp_path, monuseg_dir):
    """best.safetensors contains the averaged weights, and a resumed run continues the same average."""
    extra = {"ema_decay": 0.9, "contact_weight": 2.0, "validate_every": 8}
    whole_dir, split_dir = tmp_path / "whole", tmp_path / "split"
    whole_dir.mkdir()
    split_dir.mkdir()
    whole = train(load_train_config(_config_file(whole_dir, monuseg_dir, steps=8, **extra)))
    state = torch.load(whole_dir / "run" / "checkpoint.pt", weights_only=True)
    best_model = load_model(whole.best_model)
    assert best_model.metadata.extra["training_options"]["ema_decay"] == 0.9
    assert best_model.metadata.extra["training_options"]["contact_weight"] == 2.0
    best = best_model.state_dict()
    for name, value in state["average"].items():
        torch.testing.assert_close(best[name], value)
    assert any(not torch.equal(state["model"][name], value)
               for name, value in state["average"].items() if value.is_floating_point())

    config_path = _config_file(split_dir, monuseg_dir, steps=8, **extra)
    train(load_train_config(config_path), stop_at=4)
    train(load_train_config(config_path), resume=True)
    resumed = torch.load(split_dir / "run" / "checkpoint.pt", weights_only=True)
    for name, value in state["average"].items():
        torch.testing.assert_close(resumed["average"][name], value, rtol=1e-4, atol=1e-6)
