"""Targets for binary masks with nuclei of unknown class, and the loss that accepts them."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import yaml
from skimage import measure

from histo_gedl.training.data import load_labelled_tiles
from histo_gedl.training.losses import PartialDiceCELoss, contact_pixels
from histo_gedl.training.targets import (
    BACKGROUND,
    BOUNDARY,
    INTERIOR,
    UNKNOWN_FOREGROUND,
    binary_mask_target,
    three_class_target,
    training_target,
)
from histo_gedl.training.trainer import WeightAverage, selection_score


def _disc(shape, centre, radius):
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def _mask_with_single_and_merged_nuclei() -> np.ndarray:
    """Three lone discs and one blob of two overlapping discs (a dumbbell)."""
    shape = (48, 96)
    mask = _disc(shape, (10, 10), 5) | _disc(shape, (10, 30), 5) | _disc(shape, (35, 12), 5)
    mask |= _disc(shape, (30, 60), 6) | _disc(shape, (30, 71), 6)
    return measure.label(mask, connectivity=1).astype(np.uint32)


def test_single_nuclei_keep_full_targets():
    components = _mask_with_single_and_merged_nuclei()
    target = binary_mask_target(components)
    full = three_class_target(components)
    lone = components == components[10, 10]
    assert (target[lone] == full[lone]).all()
    assert target[10, 10] == INTERIOR


def test_merged_blob_marked_unknown():
    components = _mask_with_single_and_merged_nuclei()
    target = binary_mask_target(components)
    blob = components == components[30, 60]
    assert target[30, 60] == UNKNOWN_FOREGROUND
    assert target[30, 66] == UNKNOWN_FOREGROUND  # the waist where the two nuclei meet
    rim = blob & (three_class_target(components) == BOUNDARY)
    assert (target[rim] == BOUNDARY).all()
    assert set(np.unique(target[blob])) == {BOUNDARY, UNKNOWN_FOREGROUND}
    assert (target[components == 0] == BACKGROUND).all()


def test_large_convex_blob_is_unknown():
    components = np.zeros((64, 64), np.uint32)
    for index, (row, col) in enumerate([(8, 8), (8, 24), (24, 8)], start=1):
        components[_disc(components.shape, (row, col), 6)] = index
    components[_disc(components.shape, (45, 45), 15)] = 4  # convex, but about six times the median area
    target = binary_mask_target(components)
    assert target[45, 45] == UNKNOWN_FOREGROUND
    assert target[8, 8] == INTERIOR


def test_training_target_modes():
    components = _mask_with_single_and_merged_nuclei()
    assert (training_target(components, True) == three_class_target(components)).all()
    assert (training_target(components, False) == binary_mask_target(components)).all()
    assert (training_target(components, False, "components") == three_class_target(components)).all()
    assert (binary_mask_target(np.zeros((5, 5), np.uint32)) == BACKGROUND).all()


def test_loss_equals_monai_dice_ce_on_definite_targets():
    from monai.losses import DiceCELoss

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 24, 24, generator=generator)
    target = torch.randint(0, 3, (2, 1, 24, 24), generator=generator)
    expected = DiceCELoss(to_onehot_y=True, softmax=True)(logits, target)
    assert PartialDiceCELoss()(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_loss_ignores_unknown_pixel_split():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 3, 16, 16, generator=generator)
    target = torch.randint(0, 3, (1, 16, 16), generator=generator)
    target[0, 4:10, 4:10] = UNKNOWN_FOREGROUND
    swapped = logits.clone()
    swapped[0, 1:, 4:10, 4:10] = logits[0, [2, 1], 4:10, 4:10]
    loss = PartialDiceCELoss()
    assert loss(swapped, target).item() == pytest.approx(loss(logits, target).item(), rel=1e-6)
    # The same swap on pixels of known class changes the loss.
    target[0, 4:10, 4:10] = INTERIOR
    assert loss(swapped, target).item() != pytest.approx(loss(logits, target).item(), rel=1e-3)


def test_loss_pushes_unknown_pixels_towards_nucleus():
    logits = torch.zeros(1, 3, 8, 8, requires_grad=True)
    target = torch.full((1, 8, 8), UNKNOWN_FOREGROUND)
    target[0, :, :2] = BACKGROUND
    PartialDiceCELoss()(logits, target).backward()
    gradient = logits.grad[0, :, 4, 4]
    assert gradient[0] > 0  # descending lowers the background score
    assert gradient[1] < 0
    assert gradient[2] < 0


def test_loss_rejects_other_class_counts():
    with pytest.raises(ValueError, match="3 classes"):
        PartialDiceCELoss()(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))


def test_selection_prefers_aji():
    assert selection_score({"dice": 0.9, "aji": 0.5}) == 0.5
    assert selection_score({"dice": 0.9}) == 0.9
    assert selection_score({"dice": 0.9, "aji": 0.5}, "dice") == 0.9


@pytest.mark.parametrize("key, value", [("binary_masks", "merged"), ("select_by", "pq")])
def test_config_rejects_unknown_choice(tmp_path, key, value):
    from histo_gedl.errors import InvalidParameterError
    from histo_gedl.training.config import load_train_config

    path = tmp_path / "config.yaml"
    path.write_text(f"{key}: {value}\n")
    with pytest.raises(InvalidParameterError, match=f"{key} must be one of"):
        load_train_config(path)


def test_solidity_rule_on_monuseg_masks(monuseg_dir):
    """The figures given next to MIN_SOLIDITY and MAX_AREA_RATIO in targets.py, at 0.5 µm/px."""
    names = sorted(path.stem for path in (monuseg_dir / "instance_masks").glob("*.png"))
    loaded = {
        folder: load_labelled_tiles(monuseg_dir / "images", [monuseg_dir / folder], 0.5, monuseg_dir / "mpp.csv", names)
        for folder in ("instance_masks", "binary_masks")
    }
    kept_count = merged_kept = merged = merged_caught = total = 0
    for with_instances, binary in zip(loaded["instance_masks"], loaded["binary_masks"]):
        assert binary.label_kind == "binary"
        components = binary.instances
        target = binary_mask_target(components)
        for region in measure.regionprops(components.astype(np.int32)):
            rows, cols = region.coords[:, 0], region.coords[:, 1]
            labels, counts = np.unique(with_instances.instances[rows, cols], return_counts=True)
            # A component is merged when more than one nucleus has over 4 of its pixels.
            is_merged = int(((labels > 0) & (counts > 4)).sum()) > 1
            is_kept = not (target[rows, cols] == UNKNOWN_FOREGROUND).any()
            total += 1
            kept_count += is_kept
            merged += is_merged
            merged_kept += is_kept and is_merged
            merged_caught += is_merged and not is_kept
    assert kept_count / total == pytest.approx(0.71, abs=0.01)
    assert merged_kept / kept_count == pytest.approx(0.017, abs=0.002)
    assert merged_caught / merged == pytest.approx(0.91, abs=0.01)


# --- contact weighting --------------------------------------------------------------------


def _two_touching_squares() -> np.ndarray:
    """Instances: two 6x6 squares side by side, touching along one column, inside a 16x20 canvas."""
    instances = np.zeros((16, 20), dtype=np.uint32)
    instances[5:11, 3:9] = 1
    instances[5:11, 9:15] = 2
    return instances


def test_contact_pixels_are_where_nuclei_touch():
    target = torch.from_numpy(three_class_target(_two_touching_squares()).astype(np.int64))[None]
    contact = contact_pixels(target)[0].numpy()
    # The two facing columns, less their end pixels, which touch background above or below.
    expected = np.zeros_like(contact)
    expected[6:10, 8:10] = True
    np.testing.assert_array_equal(contact, expected)


def test_lone_nucleus_has_no_contact_pixels():
    instances = _two_touching_squares()
    instances[instances == 2] = 0
    target = torch.from_numpy(three_class_target(instances).astype(np.int64))[None]
    assert not contact_pixels(target).any()


def test_patch_edge_makes_no_contacts():
    """Pixels outside the patch count as background."""
    instances = np.zeros((8, 8), dtype=np.uint32)
    instances[:, :4] = 1  # fills the left half, top to bottom
    target = torch.from_numpy(three_class_target(instances).astype(np.int64))[None]
    target[0, 0, 0] = BOUNDARY  # the corner as if the nucleus continued beyond the edge
    assert not contact_pixels(target).any()


def test_contact_weight_raises_only_contact_pixel_loss():
    target = torch.from_numpy(three_class_target(_two_touching_squares()).astype(np.int64))[None]
    contact = contact_pixels(target)
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 3, *target.shape[1:], generator=generator)
    plain, weighted = PartialDiceCELoss(), PartialDiceCELoss(contact_weight=3.0)
    log_p = torch.log_softmax(logits, dim=1)
    nll = -log_p.gather(1, target[:, None])[:, 0]
    # The weighted loss adds 3 x the contact pixels' cross-entropy, averaged over all pixels.
    extra = 3.0 * nll[contact].sum() / nll.numel()
    assert weighted(logits, target).item() == pytest.approx((plain(logits, target) + extra).item(), rel=1e-6)
    # With the logits of the contact pixels made perfect, the weight no longer matters.
    perfect = logits.clone()
    perfect[0, :, contact[0]] = torch.tensor([-20.0, -20.0, 20.0])[:, None]
    assert weighted(perfect, target).item() == pytest.approx(plain(perfect, target).item(), rel=1e-5)


def test_contact_weight_must_not_be_negative():
    with pytest.raises(ValueError, match="contact_weight"):
        PartialDiceCELoss(contact_weight=-1.0)


@pytest.mark.parametrize(
    "key, value, message",
    [("contact_weight", -1, "contact_weight must be"), ("contact_weight", "high", "contact_weight must be"),
     ("ema_decay", 1.0, "ema_decay must be"), ("ema_decay", -0.1, "ema_decay must be")],
)
def test_config_rejects_bad_weights(tmp_path, key, value, message):
    from histo_gedl.errors import InvalidParameterError
    from histo_gedl.training.config import load_train_config

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({key: value}))
    with pytest.raises(InvalidParameterError, match=message):
        load_train_config(path)


# --- weight averaging ---------------------------------------------------------------------


def test_weight_average_follows_the_formula():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    average = WeightAverage(model, decay=0.9)
    start = average.model[0].weight.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model.train()
    model(torch.randn(2, 1, 5, 5))  # moves the batch-norm statistics, counts one batch
    step = 100  # late enough that the decay is 0.9, not the warm-up value
    average.update(model, step)
    np.testing.assert_allclose(average.model[0].weight, start + 0.1, rtol=1e-6)
    np.testing.assert_allclose(
        average.model[1].running_mean, 0.1 * model[1].running_mean, rtol=1e-5, atol=1e-7
    )
    assert average.model[1].num_batches_tracked.item() == 1  # integers are copied
    assert not any(p.requires_grad for p in average.model.parameters())


def test_weight_average_forgets_the_start_early():
    """At step 0 the decay is 1/10, so the average moves 90% of the way."""
    model = torch.nn.Linear(2, 2)
    average = WeightAverage(model, decay=0.999)
    start = average.model.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    average.update(model, 0)
    np.testing.assert_allclose(average.model.weight, start + 0.9, rtol=1e-6)


@pytest.mark.parametrize("line, key, expected", [
    ("learning_rate: 3e-3", "learning_rate", 0.003),  # YAML 1.1 reads this as a string
    ("steps: '6'", "steps", 6),
    ("contact_weight: 1e1", "contact_weight", 10.0),
    ("time_limit: 60", "time_limit", 60.0),
    ("boundary_width: '2'", "boundary_width", 2),
])
def test_config_reads_numeric_strings(tmp_path, line, key, expected):
    from histo_gedl.training.config import load_train_config

    path = tmp_path / "config.yaml"
    path.write_text(line + "\ndata: {images: images, labels: [labels]}\n")
    value = getattr(load_train_config(path), key)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize("line, message", [
    ("weight_decay: -1", "weight_decay must be a finite number >= 0, got -1"),
    ("learning_rate: -0.01", "learning_rate must be a finite number > 0"),
    ("learning_rate: 0", "learning_rate must be a finite number > 0"),
    ("time_limit: abc", "time_limit must be a finite number >= 0, got 'abc'"),
    ("warmup_steps: -5", "warmup_steps must be a whole number >= 0"),
    ("steps: 2.5", "steps must be a whole number >= 1, got 2.5"),
    ("batch_size: true", "batch_size must be a whole number >= 1, got True"),
    ("contact_weight: .inf", "contact_weight must be a finite number >= 0, got inf"),
    ("boundary_width: 0", "boundary_width must be a whole number >= 1, got 0"),
    ("boundary_width: 1.5", "boundary_width must be a whole number >= 1, got 1.5"),
    ("validate_every: 0", "validate_every must be a whole number >= 1, got 0"),
    ("patch_size: 0", "patch_size must be a whole number >= 1, got 0"),
    ("mpp: 0", "mpp must be a finite number > 0, got 0"),
])
def test_config_rejects_bad_numbers(tmp_path, line, message):
    from histo_gedl.errors import InvalidParameterError
    from histo_gedl.training.config import load_train_config

    path = tmp_path / "config.yaml"
    path.write_text(line + "\n")
    with pytest.raises(InvalidParameterError, match=re.escape(message)):
        load_train_config(path)


def test_loss_rejects_infinite_contact_weight():
    with pytest.raises(ValueError, match="finite"):
        PartialDiceCELoss(contact_weight=float("inf"))


# --- thicker boundaries -------------------------------------------------------------------


def _target_tensor(instances: np.ndarray, boundary_width: int) -> torch.Tensor:
    """Return the three-class target of ``instances`` as a (1, H, W) int64 tensor, as the loss receives it."""
    return torch.from_numpy(three_class_target(instances, boundary_width).astype(np.int64))[None]


def test_wide_boundary_separates_touching_nuclei():
    target = three_class_target(_two_touching_squares(), boundary_width=2)
    # Each 6x6 square keeps a 2x2 interior, and four boundary columns lie between the two.
    assert (target[7:9, 5:7] == INTERIOR).all()
    assert (target[7:9, 11:13] == INTERIOR).all()
    assert (target == INTERIOR).sum() == 8
    assert (target[5:11, 7:11] == BOUNDARY).all()


def test_width_one_matches_default_target():
    instances = _two_touching_squares()
    np.testing.assert_array_equal(three_class_target(instances, boundary_width=1), three_class_target(instances))


def test_small_nucleus_keeps_an_interior():
    instances = np.zeros((12, 12), dtype=np.uint32)
    instances[4:8, 4:8] = 1  # 4x4: a rim of 2 would remove it
    target = three_class_target(instances, boundary_width=3)
    assert (target[5:7, 5:7] == INTERIOR).all()
    assert (target[instances > 0] != BACKGROUND).all()


@pytest.mark.parametrize("width", [0, -1, 1.5, True])
def test_target_rejects_bad_boundary_width(width):
    from histo_gedl.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="boundary_width must be a whole number >= 1"):
        three_class_target(_two_touching_squares(), boundary_width=width)


def test_wide_boundary_contacts_are_between_nuclei():
    contact = contact_pixels(_target_tensor(_two_touching_squares(), 2), boundary_width=2)[0].numpy()
    # The four columns between the squares, less two rows at each end, which lie within two steps of background.
    expected = np.zeros_like(contact)
    expected[7:9, 7:11] = True
    np.testing.assert_array_equal(contact, expected)


def test_width_one_contacts_include_inner_rims():
    """Scoring a two-pixel rim as if it were one pixel thick marks its inner layer as contact."""
    instances = _two_touching_squares()
    instances[instances == 2] = 0
    target = _target_tensor(instances, 2)
    assert contact_pixels(target, boundary_width=1).any()
    assert not contact_pixels(target, boundary_width=2).any()


def test_loss_rejects_bad_boundary_width():
    with pytest.raises(ValueError, match="boundary_width"):
        PartialDiceCELoss(boundary_width=0)


def test_loss_accepts_numpy_boundary_width():
    assert PartialDiceCELoss(boundary_width=np.int64(2)).boundary_width == 2


def test_thin_nucleus_is_all_rim():
    instances = np.zeros((8, 8), dtype=np.uint32)
    instances[2:6, 3:5] = 1  # two pixels wide
    for width in (1, 2):
        target = three_class_target(instances, boundary_width=width)
        assert (target[instances > 0] == BOUNDARY).all()
