"""Validation scores of trained models under rotation, for the model card.

For each model: Dice, IoU, AJI and PQ on the validation tiles of a training
config, as they are and rotated by 45 and 90 degrees, and the equivariance
error of its logits on a 256 x 256 crop of the first validation tile under
the C8 rotations (float32; 45 degree turns crop a 64 px border). Prints
markdown tables.

    python benchmarks/model_report.py runs/nuclei-c8-v1/best.safetensors runs/nuclei-plain-v1/best.safetensors
"""

from __future__ import annotations

import argparse
import datetime
import logging
import platform

import torch

from histo_gedl.groups import parse_group
from histo_gedl.layers.equivariance import check_equivariance
from histo_gedl.models import count_parameters, load_model
from histo_gedl.training.data import load_labelled_tiles
from histo_gedl.training.config import load_train_config
from histo_gedl.training.evaluate import evaluate_model


def equivariance_errors(model, image) -> tuple[float, float, float]:
    """Return the relative logit error at 90 degrees, and the max and mean relative error at 45 degrees."""
    x = torch.from_numpy(image[:256, :256].copy()).permute(2, 0, 1)[None].double() / 255.0
    report = check_equivariance(model, parse_group("C8"), "image", "invariant_image", inputs=x,
                                dtypes=(torch.float32,), crop=64)
    scale = max(max(r.max_abs / r.relative for r in report.rows if r.relative > 0), 1e-12)
    quarter = max(r.relative for r in report.rows if r.exact_action)
    oblique = [r for r in report.rows if not r.exact_action]
    return quarter, max(r.relative for r in oblique), max(r.mean_abs for r in oblique) / scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="model files or names")
    parser.add_argument("--config", default="pipelines/train-nuclei-c8.yaml", help="config with the validation tiles")
    parser.add_argument("--angles", default="0,45,90", help="rotations in degrees, comma-separated")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = load_train_config(args.config)
    angles = [float(a) for a in args.angles.split(",")]

    print(f"# Model report, {datetime.date.today()}, torch {torch.__version__}, "
          f"{platform.machine()}, {torch.get_num_threads()} threads")
    print(f"Validation tiles: {', '.join(config.data.validation)}\n")
    print("| model | kind | group | parameters | rotation | Dice | IoU | AJI | PQ |")
    print("|---|---|---|---|---|---|---|---|---|")
    models = [load_model(name) for name in args.models]
    for model in models:
        for angle in angles:
            scores = evaluate_model(model, config.data.images, config.data.labels, config.data.mpp,
                                    rotate_degrees=angle, names=config.data.validation)["mean"]
            print(f"| {model.metadata.name} | {model.config.kind} | {model.config.group if model.config.kind != 'plain' else '-'} "
                  f"| {count_parameters(model):,} | {angle:g}° | {scores['dice']:.3f} | {scores['iou']:.3f} | "
                  f"{scores['aji']:.3f} | {scores['pq']:.3f} |")

    tile = load_labelled_tiles(config.data.images, config.data.labels, config.mpp, config.data.mpp,
                               names=config.data.validation[:1])[0]
    print(f"\nEquivariance of the logits on a 256 x 256 crop of {tile.name} (float32, relative to the largest logit)\n")
    print("| model | 90° max | 45° max | 45° mean |")
    print("|---|---|---|---|")
    for model in models:
        quarter, oblique_max, oblique_mean = equivariance_errors(model, tile.image)
        print(f"| {model.metadata.name} | {quarter:.2e} | {oblique_max:.3f} | {oblique_mean:.4f} |")


if __name__ == "__main__":
    main()
