"""Pseudo-labels: binary masks split into nuclei by a model's interior map."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from histo_gedl.cli import main
from histo_gedl.errors import DatasetError, InvalidParameterError
from histo_gedl.models import load_model
from histo_gedl.training.data import load_labelled_tiles, read_labels
from histo_gedl.training.pseudo import pseudo_label_folder, split_binary_mask


def _disc(shape, centre, radius):
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def _dumbbell():
    """Mask: two overlapping discs (one blob) and a lone disc; interior: high at the three centres."""
    shape = (40, 80)
    mask = _disc(shape, (20, 20), 8) | _disc(shape, (20, 33), 8) | _disc(shape, (20, 65), 6)
    interior = np.zeros(shape, dtype=np.float32)
    for centre in ((20, 20), (20, 33), (20, 65)):
        interior = np.maximum(interior, np.where(_disc(shape, centre, 4), 0.9, 0.0))
    return mask, interior


def test_blob_is_split_at_its_waist():
    mask, interior = _dumbbell()
    labels = split_binary_mask(interior, mask)
    assert labels.max() == 3
    left, right = labels[20, 20], labels[20, 33]
    assert left > 0
    assert right > 0
    assert left != right
    # Each disc's own half belongs to its marker: the line falls between the centres.
    assert labels[20, 24] == left
    assert labels[20, 29] == right


def test_labels_cover_exactly_the_mask():
    mask, interior = _dumbbell()
    interior[_disc(mask.shape, (20, 65), 4)] = 0.0  # the lone disc gets no marker
    labels = split_binary_mask(interior, mask)
    assert np.array_equal(labels > 0, mask)
    assert labels[20, 65] > 0
    assert sorted(np.unique(labels)) == [0, 1, 2, 3]


def test_markers_outside_the_mask_are_ignored():
    mask, interior = _dumbbell()
    interior[0:5, 0:10] = 1.0
    assert split_binary_mask(interior, mask).max() == 3


def test_small_markers_are_dropped():
    mask, interior = _dumbbell()
    interior[:] = 0.0
    interior[20, 20] = interior[20, 33] = 0.9  # one-pixel markers
    assert split_binary_mask(interior, mask, min_marker_area=1).max() == 3  # two markers + the lone disc
    assert split_binary_mask(interior, mask, min_marker_area=2).max() == 2  # each blob whole


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"interior": np.zeros((4, 5))}, "same shape"),
        ({"interior_threshold": 1.0}, "interior_threshold"),
        ({"min_marker_area": 0}, "min_marker_area"),
    ],
)
def test_split_rejects_bad_arguments(kwargs, message):
    arguments = {"interior": np.zeros((4, 4)), "mask": np.ones((4, 4), bool)} | kwargs
    with pytest.raises(InvalidParameterError, match=message):
        split_binary_mask(**arguments)


MERGED_TILE = "TCGA-21-5784-01Z-00-DX1"  # has binary and instance masks


@pytest.fixture()
def one_tile(tmp_path, monuseg_dir):
    """A folder with one MoNuSeg image, its binary mask and its instance mask."""
    for kind, suffix in (("images", ".tif"), ("binary_masks", ".png"), ("instance_masks", ".png")):
        (tmp_path / kind).mkdir()
        shutil.copy(monuseg_dir / kind / f"{MERGED_TILE}{suffix}", tmp_path / kind)
    return tmp_path


def test_real_tile_merged_nuclei_split(one_tile):
    model = load_model("nuclei-c8-v1")
    result = pseudo_label_folder(model, one_tile / "images", one_tile / "binary_masks", one_tile / "out", 0.2527)
    assert [p.name for p in result.written] == [f"{MERGED_TILE}.png"]
    labels, kind, _ = read_labels(result.written[0], (1000, 1000))
    assert kind == "instances"
    components, _, _ = read_labels(one_tile / "binary_masks" / f"{MERGED_TILE}.png", (1000, 1000))
    truth, _, _ = read_labels(one_tile / "instance_masks" / f"{MERGED_TILE}.png", (1000, 1000))
    assert np.array_equal(labels > 0, components > 0)
    # The binary mask has fewer blobs than there are nuclei; the split brings
    # the count closer to the true one.
    assert components.max() < labels.max() <= truth.max() * 1.1
    assert result.split[MERGED_TILE] > 0
    assert result.nuclei[MERGED_TILE] == labels.max()
    # Training reads the written folder as instance labels.
    tiles = load_labelled_tiles(one_tile / "images", [one_tile / "out"], 0.5, 0.2527)
    assert tiles[0].has_instances


def test_skip_labelled_and_overwrite(one_tile, capsys):
    arguments = [
        "pseudo-label", "--model", "nuclei-c8-v1", "--images", str(one_tile / "images"),
        "--masks", str(one_tile / "binary_masks"), "--out", str(one_tile / "out"), "--mpp", "0.2527",
    ]
    assert main(arguments + ["--skip-labelled", str(one_tile / "instance_masks")]) == 0
    assert "wrote 0 label files" in capsys.readouterr().out
    assert main(arguments) == 0
    assert "wrote 1 label files" in capsys.readouterr().out
    assert main(arguments) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(arguments + ["--overwrite"]) == 0


def test_instance_masks_rejected(one_tile):
    model = load_model("nuclei-c8-v1")
    with pytest.raises(DatasetError, match="instance mask, not a binary one"):
        pseudo_label_folder(model, one_tile / "images", one_tile / "instance_masks", one_tile / "out", 0.25)
    assert not list((one_tile / "out").glob("*.png"))


def test_missing_folder_named_by_option(one_tile):
    model = load_model("nuclei-c8-v1")
    with pytest.raises(DatasetError, match="masks folder .*nope not found"):
        pseudo_label_folder(model, one_tile / "images", one_tile / "nope", one_tile / "out", 0.25)


def test_missing_mask_and_bad_mpp(one_tile):
    model = load_model("nuclei-c8-v1")
    Image.new("RGB", (32, 32), "white").save(one_tile / "images" / "extra.png")
    with pytest.raises(DatasetError, match="no mask in .*extra"):
        pseudo_label_folder(model, one_tile / "images", one_tile / "binary_masks", one_tile / "out", 0.25)
    (one_tile / "images" / "extra.png").unlink()
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(InvalidParameterError, match="positive number"):
            pseudo_label_folder(model, one_tile / "images", one_tile / "binary_masks", one_tile / "out", bad)
    assert not (one_tile / "out").exists()


def test_out_cannot_be_an_input_folder(one_tile):
    model = load_model("nuclei-c8-v1")
    masks = one_tile / "binary_masks"
    before = (masks / f"{MERGED_TILE}.png").read_bytes()
    with pytest.raises(InvalidParameterError, match="also the masks folder"):
        pseudo_label_folder(model, one_tile / "images", masks, masks, 0.25, overwrite=True)
    (one_tile / "more_labels").mkdir()
    with pytest.raises(InvalidParameterError, match="also the skip-labelled folder"):
        pseudo_label_folder(
            model, one_tile / "images", masks, one_tile / "instance_masks", 0.25,
            skip_labelled=[one_tile / "instance_masks", one_tile / "more_labels"],
        )
    assert (masks / f"{MERGED_TILE}.png").read_bytes() == before


def test_bad_mask_fails_before_any_file_is_written(one_tile):
    model = load_model("nuclei-c8-v1")
    image = one_tile / "images" / f"{MERGED_TILE}.tif"
    shutil.copy(image, one_tile / "images" / "b-second.tif")
    shutil.copy(image, one_tile / "images" / "c-third.tif")
    shutil.copy(one_tile / "binary_masks" / f"{MERGED_TILE}.png", one_tile / "binary_masks" / "b-second.png")
    Image.new("L", (1000, 900)).save(one_tile / "binary_masks" / "c-third.png")
    with pytest.raises(DatasetError, match="c-third.png are 1000x900"):
        pseudo_label_folder(model, one_tile / "images", one_tile / "binary_masks", one_tile / "out", 0.25)
    assert not (one_tile / "out").exists()


def test_mask_judged_by_values_not_dtype(one_tile):
    model = load_model("nuclei-c8-v1")
    mask = np.asarray(Image.open(one_tile / "binary_masks" / f"{MERGED_TILE}.png"))
    Image.fromarray(mask.astype(np.uint16)).save(one_tile / "binary_masks" / f"{MERGED_TILE}.png")
    result = pseudo_label_folder(model, one_tile / "images", one_tile / "binary_masks", one_tile / "out", 0.25)
    assert result.nuclei[MERGED_TILE] > 0
    eight_bit_instances = (np.arange(mask.size).reshape(mask.shape) % 7 + 1) * (mask > 0)
    Image.fromarray(eight_bit_instances.astype(np.uint8)).save(one_tile / "binary_masks" / f"{MERGED_TILE}.png")
    with pytest.raises(DatasetError, match="7 different nucleus values"):
        pseudo_label_folder(model, one_tile / "images", one_tile / "binary_masks", one_tile / "out2", 0.25)


@pytest.mark.parametrize(
    "content, message",
    [
        ("image,mpp\nTCGA,abc\n", "line 2: mpp 'abc'"),
        ("image,mpp\nTCGA,\n", "line 2: mpp ''"),
        ("image,mpp\nTCGA,0\n", "line 2: mpp '0'"),
        ("image,mpp\n", "no rows"),
        ("name,value\nTCGA,0.25\n", "needs a header"),
    ],
)
def test_mpp_table_errors(tmp_path, content, message):
    from histo_gedl.training.data import read_mpp_table

    path = tmp_path / "mpp.csv"
    path.write_text(content)
    with pytest.raises(DatasetError, match=message):
        read_mpp_table(path)


def test_mpp_table_not_utf8(tmp_path):
    from histo_gedl.training.data import read_mpp_table

    path = tmp_path / "mpp.csv"
    path.write_bytes(b"image,mpp\n\xff\xfe,0.25\n")
    with pytest.raises(DatasetError, match="cannot read mpp table"):
        read_mpp_table(path)


def test_cli_bad_mpp_and_out(one_tile, capsys):
    arguments = [
        "pseudo-label", "--model", "nuclei-c8-v1", "--images", str(one_tile / "images"),
        "--masks", str(one_tile / "binary_masks"), "--out", str(one_tile / "out"), "--mpp", "abc",
    ]
    assert main(arguments) == 2
    assert "neither a number nor a CSV file" in capsys.readouterr().err
    (one_tile / "afile").write_text("not a folder")
    arguments[arguments.index("--out") + 1] = str(one_tile / "afile" / "sub")
    assert main(arguments[:-1] + ["0.25"]) == 2
    assert "cannot create output folder" in capsys.readouterr().err
