"""Segmentation metrics: pixel Dice and IoU, aggregated Jaccard index, panoptic quality.

Inputs are 2-D arrays of the same shape. Binary metrics take masks, where
any non-zero value is foreground. Per-class metrics take class maps.
Instance metrics take label arrays with 0 as background and any positive
integer as a nucleus id, and the ids need not be consecutive.

Empty cases: when neither prediction nor ground truth contains any
foreground (or any instance), every score here is 1.0, because the
prediction is exactly right. When only one of them is empty, the score is 0.0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from histo_gedl.errors import InvalidParameterError

#: Minimum IoU, exclusive, for a predicted and a true nucleus to match in
#: panoptic quality. Above 0.5, each nucleus can match at most one other.
PQ_MATCH_IOU = 0.5


def _check_pair(prediction: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    prediction = np.asarray(prediction)
    target = np.asarray(target)
    if prediction.ndim != 2 or target.ndim != 2:
        raise InvalidParameterError(
            f"prediction and target must be 2-D (H, W) arrays, got shapes "
            f"{prediction.shape} and {target.shape}"
        )
    if prediction.shape != target.shape:
        raise InvalidParameterError(
            f"prediction shape {prediction.shape} differs from target shape {target.shape}; "
            "resample one of them to the other's size first"
        )
    return prediction, target


def _check_labels(name: str, labels: np.ndarray) -> np.ndarray:
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise InvalidParameterError(f"{name} must be an integer label array, got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise InvalidParameterError(
            f"{name} contains negative label {labels.min()}; use 0 for background and positive ids"
        )
    return labels


def dice(prediction: np.ndarray, target: np.ndarray) -> float:
    """Compute the Dice coefficient of two binary masks.

    ``Dice = 2 |P ∩ T| / (|P| + |T|)``; 1.0 when both masks are empty.

    Args:
        prediction: Predicted mask, shape (H, W); non-zero is foreground.
        target: True mask, shape (H, W); non-zero is foreground.

    Returns:
        The Dice coefficient in [0, 1].

    Raises:
        InvalidParameterError: If the arrays are not 2-D or differ in shape.
    """
    prediction, target = _check_pair(prediction, target)
    predicted = prediction != 0
    true = target != 0
    total = int(predicted.sum()) + int(true.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(predicted, true).sum()) / total


def iou(prediction: np.ndarray, target: np.ndarray) -> float:
    """Compute the intersection over union (Jaccard index) of two binary masks.

    ``IoU = |P ∩ T| / |P ∪ T|``; 1.0 when both masks are empty.

    Args:
        prediction: Predicted mask, shape (H, W); non-zero is foreground.
        target: True mask, shape (H, W); non-zero is foreground.

    Returns:
        The IoU in [0, 1].

    Raises:
        InvalidParameterError: If the arrays are not 2-D or differ in shape.
    """
    prediction, target = _check_pair(prediction, target)
    predicted = prediction != 0
    true = target != 0
    union = int(np.logical_or(predicted, true).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(predicted, true).sum()) / union


def _check_class_maps(prediction: np.ndarray, target: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    prediction, target = _check_pair(prediction, target)
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise InvalidParameterError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    for name, class_map in (("prediction", prediction), ("target", target)):
        _check_labels(name, class_map)
        if class_map.size and class_map.max() >= num_classes:
            raise InvalidParameterError(
                f"{name} contains class {class_map.max()}, but num_classes is {num_classes}; "
                "pass the number of classes the model predicts"
            )
    return prediction, target


def dice_per_class(prediction: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """Compute the Dice coefficient of each class of two class maps.

    Class ``c`` is scored as the binary masks ``prediction == c`` and
    ``target == c``; a class absent from both scores 1.0.

    Args:
        prediction: Predicted class map, shape (H, W), integer in [0, num_classes).
        target: True class map, shape (H, W), integer in [0, num_classes).
        num_classes: Number of classes, including background.

    Returns:
        Dice per class, shape (num_classes,), float64.

    Raises:
        InvalidParameterError: On a shape mismatch or a class outside [0, num_classes).
    """
    prediction, target = _check_class_maps(prediction, target, num_classes)
    return np.array([dice(prediction == c, target == c) for c in range(num_classes)])


def iou_per_class(prediction: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """Compute the IoU of each class of two class maps.

    Class ``c`` is scored as the binary masks ``prediction == c`` and
    ``target == c``; a class absent from both scores 1.0.

    Args:
        prediction: Predicted class map, shape (H, W), integer in [0, num_classes).
        target: True class map, shape (H, W), integer in [0, num_classes).
        num_classes: Number of classes, including background.

    Returns:
        IoU per class, shape (num_classes,), float64.

    Raises:
        InvalidParameterError: On a shape mismatch or a class outside [0, num_classes).
    """
    prediction, target = _check_class_maps(prediction, target, num_classes)
    return np.array([iou(prediction == c, target == c) for c in range(num_classes)])


@dataclass(frozen=True)
class _Overlaps:
    """Areas of the instances of two label arrays and of their pairwise intersections.

    Instances are renumbered 0..n-1 in order of their original ids.
    """

    true_areas: np.ndarray  # (n_true,)
    pred_areas: np.ndarray  # (n_pred,)
    pair_true: np.ndarray  # (n_pairs,) index into true_areas
    pair_pred: np.ndarray  # (n_pairs,) index into pred_areas
    pair_intersection: np.ndarray  # (n_pairs,) pixels shared by the pair

    @property
    def pair_union(self) -> np.ndarray:
        return self.true_areas[self.pair_true] + self.pred_areas[self.pair_pred] - self.pair_intersection


def _instance_overlaps(prediction: np.ndarray, target: np.ndarray) -> _Overlaps:
    """Count areas and intersections with one pass over the pixels, without a dense n x m matrix."""
    prediction, target = _check_pair(prediction, target)
    _check_labels("prediction", prediction)
    _check_labels("target", target)

    true_ids, true_index = np.unique(target.ravel(), return_inverse=True)
    pred_ids, pred_index = np.unique(prediction.ravel(), return_inverse=True)
    # Shift indices so that background becomes -1 and instances 0..n-1.
    true_index = true_index.reshape(-1).astype(np.int64) - int(true_ids[0] == 0)
    pred_index = pred_index.reshape(-1).astype(np.int64) - int(pred_ids[0] == 0)
    n_true = true_ids.size - int(true_ids[0] == 0)
    n_pred = pred_ids.size - int(pred_ids[0] == 0)

    true_areas = np.bincount(true_index[true_index >= 0], minlength=n_true)
    pred_areas = np.bincount(pred_index[pred_index >= 0], minlength=n_pred)

    both = (true_index >= 0) & (pred_index >= 0)
    pair_codes = true_index[both] * max(n_pred, 1) + pred_index[both]
    codes, intersections = np.unique(pair_codes, return_counts=True)
    return _Overlaps(
        true_areas=true_areas,
        pred_areas=pred_areas,
        pair_true=codes // max(n_pred, 1),
        pair_pred=codes % max(n_pred, 1),
        pair_intersection=intersections,
    )


def aggregated_jaccard_index(prediction: np.ndarray, target: np.ndarray) -> float:
    """Compute the aggregated Jaccard index (AJI) of Kumar et al., IEEE TMI 2017.

    For each true nucleus ``G_i``, the predicted nucleus ``S_j`` with the
    highest IoU is chosen (ties go to the lowest predicted id). ``|G_i ∩
    S_j|`` is added to C and ``|G_i ∪ S_j|`` to U. A true nucleus that
    overlaps no prediction adds ``|G_i|`` to U only. Every predicted nucleus
    that was never chosen then adds its area to U, and ``AJI = C / U``.
    As in the original definition, one prediction may be chosen by several
    true nuclei, and then it counts in each of their unions.

    Both arrays empty gives 1.0; only one of them empty gives 0.0.

    Args:
        prediction: Predicted instance labels, shape (H, W), integer, 0 background.
        target: True instance labels, shape (H, W), integer, 0 background.

    Returns:
        The AJI in [0, 1].

    Raises:
        InvalidParameterError: On a shape mismatch, a non-integer dtype or a negative label.
    """
    overlaps = _instance_overlaps(prediction, target)
    n_true = overlaps.true_areas.size
    n_pred = overlaps.pred_areas.size
    if n_true == 0 and n_pred == 0:
        return 1.0

    pair_iou = overlaps.pair_intersection / overlaps.pair_union
    # Sort by true nucleus, then by IoU descending, then by predicted id, and
    # take the first pair of each true nucleus.
    order = np.lexsort((overlaps.pair_pred, -pair_iou, overlaps.pair_true))
    sorted_true = overlaps.pair_true[order]
    first = order[np.r_[True, sorted_true[1:] != sorted_true[:-1]]] if order.size else order

    matched_true = overlaps.pair_true[first]
    matched_pred = overlaps.pair_pred[first]
    correct = int(overlaps.pair_intersection[first].sum())
    union = int(overlaps.pair_union[first].sum())

    unmatched_true = np.ones(n_true, dtype=bool)
    unmatched_true[matched_true] = False
    union += int(overlaps.true_areas[unmatched_true].sum())

    unused_pred = np.ones(n_pred, dtype=bool)
    unused_pred[matched_pred] = False
    union += int(overlaps.pred_areas[unused_pred].sum())
    return correct / union


@dataclass(frozen=True)
class PanopticQuality:
    """Panoptic quality and its parts, with matches at IoU > 0.5.

    ``PQ = DQ x SQ``, where ``DQ = TP / (TP + FP/2 + FN/2)`` is the detection
    quality (an F1 score) and ``SQ`` is the mean IoU of the matched pairs.
    """

    pq: float
    dq: float
    sq: float
    true_positives: int
    false_positives: int
    false_negatives: int


def panoptic_quality(prediction: np.ndarray, target: np.ndarray) -> PanopticQuality:
    """Compute panoptic quality for nucleus instances (Kirillov et al., CVPR 2019).

    A predicted and a true nucleus match when their IoU is above 0.5; such a
    match is unique. Unmatched predictions are false positives and unmatched
    true nuclei false negatives. SQ is 0.0 when nothing matches. Both arrays
    empty gives PQ = DQ = SQ = 1.0.

    Args:
        prediction: Predicted instance labels, shape (H, W), integer, 0 background.
        target: True instance labels, shape (H, W), integer, 0 background.

    Returns:
        PQ, DQ, SQ and the counts of true positives, false positives and false negatives.

    Raises:
        InvalidParameterError: On a shape mismatch, a non-integer dtype or a negative label.
    """
    overlaps = _instance_overlaps(prediction, target)
    n_true = overlaps.true_areas.size
    n_pred = overlaps.pred_areas.size
    if n_true == 0 and n_pred == 0:
        return PanopticQuality(1.0, 1.0, 1.0, 0, 0, 0)

    pair_iou = overlaps.pair_intersection / overlaps.pair_union
    matched_iou = pair_iou[pair_iou > PQ_MATCH_IOU]
    tp = int(matched_iou.size)
    fp = n_pred - tp
    fn = n_true - tp
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = float(matched_iou.mean()) if tp else 0.0
    return PanopticQuality(dq * sq, dq, sq, tp, fp, fn)
