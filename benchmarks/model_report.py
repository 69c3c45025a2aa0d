"""Validation scores of trained models under rotation, for the model card.

For each model: Dice, IoU, AJI and PQ on the validation tiles of a training
config, as they are and rotated by 45 and 90 degrees. Prints a markdown table.

    python benchmarks/model_report.py runs/nuclei-c8-v1/best.safetensors runs/nuclei-plain-v1/best.safetensors
"""

from __future__ import annotations

import argparse
import datetime
import logging
import platform

import torch

from histo_gedl.models import count_parameters, load_model
from histo_gedl.training.config import load_train_config
from histo_gedl.training.evaluate import evaluate_model


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
    for name in args.models:
        model = load_model(name)
        for angle in angles:
            scores = evaluate_model(model, config.data.images, config.data.labels, config.data.mpp,
                                    rotate_degrees=angle, names=config.data.validation)["mean"]
            print(f"| {model.metadata.name} | {model.config.kind} | {model.config.group if model.config.kind != 'plain' else '-'} "
                  f"| {count_parameters(model):,} | {angle:g}° | {scores['dice']:.3f} | {scores['iou']:.3f} | "
                  f"{scores['aji']:.3f} | {scores['pq']:.3f} |")


if __name__ == "__main__":
    main()
