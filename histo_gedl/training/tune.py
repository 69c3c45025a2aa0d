"""Choose instance post-processing settings for a model on labelled tiles.

The watershed that splits nuclei has thresholds whose best values depend on
how sharp a model's interior map is. This module grid-searches them for the
aggregated Jaccard index on tiles with instance labels, and stores the result
in the model file, where inference and evaluation read it. Tune on training
tiles, not on the tiles used to report scores.

    python -m histo_gedl.training.tune MODEL CONFIG [--out MODEL_OUT]
"""

from __future__ import annotations

import argparse
import itertools
import logging
from pathlib import Path

import numpy as np

from histo_gedl import metrics
from histo_gedl.errors import DatasetError
from histo_gedl.inference.postprocess import instances_from_probabilities
from histo_gedl.models import load_model, save_model
from histo_gedl.models.unet import SegmentationModel
from histo_gedl.training.data import LabelledTile

log = logging.getLogger(__name__)

#: Values searched, each a keyword of instances_from_probabilities.
GRID = {
    "interior_threshold": (0.5, 0.6, 0.7, 0.8),
    "foreground_threshold": (0.4, 0.5),
    "marker_erosion": (0, 1, 2),
    "min_area": (8, 12, 20),
}


def tune_postprocess(model: SegmentationModel, tiles: list[LabelledTile]) -> tuple[dict, float]:
    """Return the settings with the best mean AJI on ``tiles`` (instance labels only) and that AJI."""
    from histo_gedl.training.trainer import predict_tile

    tiles = [t for t in tiles if t.has_instances]
    if not tiles:
        raise DatasetError("tuning needs tiles whose labels separate touching nuclei (instance masks or polygons)")
    probabilities = [predict_tile(model, t.image) for t in tiles]
    best, best_score = {}, -1.0
    for values in itertools.product(*GRID.values()):
        options = dict(zip(GRID, values))
        score = float(np.mean([
            metrics.aggregated_jaccard_index(instances_from_probabilities(p, **options), t.instances)
            for p, t in zip(probabilities, tiles)
        ]))
        log.debug("%s: AJI %.4f", options, score)
        if score > best_score:
            best, best_score = options, score
    return best, best_score


def main() -> None:
    from histo_gedl.training.config import load_train_config
    from histo_gedl.training.data import load_labelled_tiles

    parser = argparse.ArgumentParser(description="Tune a model's nucleus post-processing on its training tiles.")
    parser.add_argument("model", help="model file or shipped name")
    parser.add_argument("config", help="the training YAML; its training tiles with instance labels are used")
    parser.add_argument("--out", default=None, help="where to write the model (default: overwrite MODEL)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = load_train_config(args.config)
    model = load_model(args.model)
    # Only the first label folder, which contains the instance masks.
    folder = Path(config.data.labels[0])
    names = [p.stem for p in folder.iterdir() if p.stem not in config.data.validation]
    tiles = load_labelled_tiles(config.data.images, [folder], model.metadata.mpp, config.data.mpp, names)
    options, score = tune_postprocess(model, tiles)
    log.info("best settings on %d training tiles: %s (AJI %.4f)", len(tiles), options, score)
    model.metadata.extra = dict(model.metadata.extra, postprocess=options, postprocess_tuned_on=sorted(names))
    save_model(model, args.out or args.model)


if __name__ == "__main__":
    main()
