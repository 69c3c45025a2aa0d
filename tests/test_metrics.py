"""Tests for Dice, IoU, AJI and panoptic quality on hand-made label pairs.

Each expected value is worked out by hand in the test, from pixel counts.
"""

from __future__ import annotations

import numpy as np
import pytest

from histo_gedl.errors import InvalidParameterError
from histo_gedl.metrics import (
    aggregated_jaccard_index,
    dice,
    dice_per_class,
    iou,
    iou_per_class,
    panoptic_quality,
)

SHAPE = (12, 16)


def square(row: int, col: int, size: int = 4, label: int = 1, labels: np.ndarray | None = None) -> np.ndarray:
    """Paint a ``size`` x ``size`` square of ``label`` with top-left pixel [row, col]."""
    if labels is None:
        labels = np.zeros(SHAPE, dtype=np.int32)
    labels[row : row + size, col : col + size] = label
    return labels


# Binary Dice and IoU


def test_dice_shifted_square():
    # Two 4 x 4 squares two columns apart share 4 x 2 = 8 pixels: 2 * 8 / (16 + 16).
    assert dice(square(0, 2), square(0, 0)) == pytest.approx(0.5)


def test_iou_shifted_square():
    # 8 shared pixels over a union of 16 + 16 - 8 = 24.
    assert iou(square(0, 2), square(0, 0)) == pytest.approx(1 / 3)


def test_dice_iou_identical():
    mask = square(3, 5)
    assert dice(mask, mask) == 1.0
    assert iou(mask, mask) == 1.0


def test_dice_iou_both_empty():
    empty = np.zeros(SHAPE, dtype=bool)
    assert dice(empty, empty) == 1.0
    assert iou(empty, empty) == 1.0


def test_dice_iou_one_empty():
    empty = np.zeros(SHAPE, dtype=bool)
    assert dice(square(0, 0), empty) == 0.0
    assert iou(empty, square(0, 0)) == 0.0


def test_dice_nonzero_is_foreground():
    # Instance ids 1 and 2 both count as foreground.
    prediction = square(0, 0, label=2)
    assert dice(prediction, square(0, 0, label=1)) == 1.0


def test_dice_rejects_shape_mismatch():
    with pytest.raises(InvalidParameterError, match="differs"):
        dice(np.zeros((4, 4)), np.zeros((4, 5)))


def test_iou_rejects_3d():
    with pytest.raises(InvalidParameterError, match="2-D"):
        iou(np.zeros((4, 4, 3)), np.zeros((4, 4, 3)))


# Per-class Dice and IoU

PRED_CLASSES = np.array([[0, 1, 1], [2, 2, 0]])
TRUE_CLASSES = np.array([[0, 1, 2], [2, 2, 0]])


def test_dice_per_class_values():
    # Class 0: same two pixels. Class 1: predicted {(0,1), (0,2)}, true {(0,1)}, so
    # 2 * 1 / 3. Class 2: predicted {(1,0), (1,1)}, true adds (0,2), so 2 * 2 / 5.
    # Class 3 is absent from both.
    scores = dice_per_class(PRED_CLASSES, TRUE_CLASSES, num_classes=4)
    assert scores.shape == (4,)
    assert scores == pytest.approx([1.0, 2 / 3, 0.8, 1.0])


def test_iou_per_class_values():
    # Class 1: 1 shared of 2 in the union. Class 2: 2 shared of 3.
    scores = iou_per_class(PRED_CLASSES, TRUE_CLASSES, num_classes=3)
    assert scores == pytest.approx([1.0, 0.5, 2 / 3])


def test_per_class_rejects_class_out_of_range():
    with pytest.raises(InvalidParameterError, match="num_classes"):
        dice_per_class(PRED_CLASSES, TRUE_CLASSES, num_classes=2)


def test_per_class_rejects_float_map():
    with pytest.raises(InvalidParameterError, match="integer"):
        iou_per_class(PRED_CLASSES.astype(float), TRUE_CLASSES, num_classes=3)


# Aggregated Jaccard index


def test_aji_identical():
    labels = square(6, 8, label=2, labels=square(0, 0))
    assert aggregated_jaccard_index(labels, labels) == 1.0


def test_aji_shifted_square():
    # One pair: intersection 8, union 24.
    assert aggregated_jaccard_index(square(0, 2), square(0, 0)) == pytest.approx(8 / 24)


def test_aji_split_nucleus():
    # True 4 x 4 square; prediction splits it into two 4 x 2 halves, ids 1 and 2,
    # each with IoU 8 / 16. The tie goes to id 1: C = 8, U = 16. The unused half
    # adds its 8 pixels to U: 8 / 24.
    target = square(0, 0)
    prediction = np.zeros(SHAPE, dtype=np.int32)
    prediction[0:4, 0:2] = 1
    prediction[0:4, 2:4] = 2
    assert aggregated_jaccard_index(prediction, target) == pytest.approx(8 / 24)


def test_aji_extra_false_positive():
    # Exact match (C = U = 16) plus a 2 x 2 false positive that adds 4 to U.
    target = square(0, 0)
    prediction = square(8, 10, size=2, label=2, labels=square(0, 0))
    assert aggregated_jaccard_index(prediction, target) == pytest.approx(16 / 20)


def test_aji_missed_nucleus():
    # The second true square overlaps nothing: it adds its 16 pixels to U only.
    target = square(6, 8, label=2, labels=square(0, 0))
    assert aggregated_jaccard_index(square(0, 0), target) == pytest.approx(16 / 32)


def test_aji_merged_prediction_reused():
    # Two true squares side by side, one predicted 4 x 8 rectangle. Each true
    # square picks it (IoU 16 / 32), so C = 16 + 16 and U = 32 + 32.
    target = square(0, 4, label=2, labels=square(0, 0))
    prediction = np.zeros(SHAPE, dtype=np.int32)
    prediction[0:4, 0:8] = 5
    assert aggregated_jaccard_index(prediction, target) == pytest.approx(32 / 64)


def test_aji_best_iou_chosen():
    # True square rows 4-7, cols 4-7 (16 px). Id 1 covers cols 0-4 (20 px) and
    # meets it in 4 px: IoU 4 / 32. Id 2 covers cols 5-8 (16 px) and meets it in
    # 12 px: IoU 12 / 20. Id 2 wins: C = 12, U = 20, then unused id 1 adds 20.
    target = square(4, 4)
    prediction = np.zeros(SHAPE, dtype=np.int32)
    prediction[4:8, 0:5] = 1
    prediction[4:8, 5:9] = 2
    assert aggregated_jaccard_index(prediction, target) == pytest.approx(12 / 40)


def test_aji_ids_need_not_be_consecutive():
    target = square(6, 8, label=2, labels=square(0, 0))
    prediction = square(6, 9, label=70_000, labels=square(0, 0, label=9))
    sequential = square(6, 9, label=2, labels=square(0, 0, label=1))
    assert aggregated_jaccard_index(prediction, target) == aggregated_jaccard_index(sequential, target)


def test_aji_both_empty():
    empty = np.zeros(SHAPE, dtype=np.int32)
    assert aggregated_jaccard_index(empty, empty) == 1.0


def test_aji_one_empty():
    empty = np.zeros(SHAPE, dtype=np.int32)
    assert aggregated_jaccard_index(empty, square(0, 0)) == 0.0
    assert aggregated_jaccard_index(square(0, 0), empty) == 0.0


def test_aji_rejects_negative_label():
    with pytest.raises(InvalidParameterError, match="negative"):
        aggregated_jaccard_index(square(0, 0, label=-1), square(0, 0))


def test_aji_rejects_shape_mismatch():
    with pytest.raises(InvalidParameterError, match="differs"):
        aggregated_jaccard_index(np.zeros((4, 4), np.int32), np.zeros((5, 4), np.int32))


# Panoptic quality


def test_pq_identical():
    labels = square(6, 8, label=2, labels=square(0, 0))
    result = panoptic_quality(labels, labels)
    assert result.pq == 1.0
    assert result.true_positives == 2


def test_pq_shift_one_column():
    # 12 shared pixels over a union of 20: IoU 0.6 > 0.5, one match.
    result = panoptic_quality(square(0, 1), square(0, 0))
    assert result.true_positives == 1
    assert result.dq == pytest.approx(1.0)
    assert result.sq == pytest.approx(0.6)
    assert result.pq == pytest.approx(0.6)


def test_pq_shift_two_columns_no_match():
    # IoU 1/3: no match, one false positive and one false negative.
    result = panoptic_quality(square(0, 2), square(0, 0))
    assert (result.true_positives, result.false_positives, result.false_negatives) == (0, 1, 1)
    assert result.dq == 0.0
    assert result.sq == 0.0
    assert result.pq == 0.0


def test_pq_split_halves_at_threshold():
    # Each half has IoU exactly 0.5, which does not match (the rule is IoU > 0.5).
    target = square(0, 0)
    prediction = np.zeros(SHAPE, dtype=np.int32)
    prediction[0:4, 0:2] = 1
    prediction[0:4, 2:4] = 2
    result = panoptic_quality(prediction, target)
    assert (result.true_positives, result.false_positives, result.false_negatives) == (0, 2, 1)
    assert result.pq == 0.0


def test_pq_extra_false_positive():
    # TP 1, FP 1: DQ = 1 / (1 + 0.5) and SQ = 1.
    target = square(0, 0)
    prediction = square(8, 10, size=2, label=2, labels=square(0, 0))
    result = panoptic_quality(prediction, target)
    assert result.false_positives == 1
    assert result.dq == pytest.approx(2 / 3)
    assert result.sq == pytest.approx(1.0)
    assert result.pq == pytest.approx(2 / 3)


def test_pq_mixed_case():
    # True squares A and B; prediction: A shifted one column (IoU 0.6), B missed,
    # and a false positive. TP 1, FP 1, FN 1: DQ = 1 / 2, SQ = 0.6, PQ = 0.3.
    target = square(6, 8, label=2, labels=square(0, 0))
    prediction = square(8, 0, size=3, label=4, labels=square(0, 1, label=3))
    result = panoptic_quality(prediction, target)
    assert (result.true_positives, result.false_positives, result.false_negatives) == (1, 1, 1)
    assert result.dq == pytest.approx(0.5)
    assert result.sq == pytest.approx(0.6)
    assert result.pq == pytest.approx(0.3)


def test_pq_both_empty():
    empty = np.zeros(SHAPE, dtype=np.int32)
    result = panoptic_quality(empty, empty)
    assert (result.pq, result.dq, result.sq) == (1.0, 1.0, 1.0)


def test_pq_prediction_empty():
    result = panoptic_quality(np.zeros(SHAPE, dtype=np.int32), square(0, 0))
    assert result.false_negatives == 1
    assert result.pq == 0.0


def test_pq_rejects_float_labels():
    with pytest.raises(InvalidParameterError, match="integer"):
        panoptic_quality(np.zeros(SHAPE), np.zeros(SHAPE, dtype=np.int32))
