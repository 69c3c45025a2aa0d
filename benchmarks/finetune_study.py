"""Fine-tuning with few labels: Dice and AJI on held-out CPM-15 tiles before and after.

Fine-tunes a model on 3, 5 and 10 labelled CPM-15 tiles (brain tumour H&E,
another organ and lab than MoNuSeg) with the settings of
``pipelines/finetune-cpm15.yaml``, and scores each result on five held-out
tiles that no run trains on. Prints a markdown table.

    python benchmarks/finetune_study.py --model nuclei-c8-v1 --out runs/finetune-study
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import platform
import shutil
import time
from pathlib import Path

import torch

from histo_gedl.models import load_model
from histo_gedl.training.config import load_train_config
from histo_gedl.training.evaluate import evaluate_model
from histo_gedl.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "pipelines" / "finetune-cpm15.yaml"
HELD_OUT = ["image01", "image04", "image08", "image11", "image14"]
POOL = ["image02", "image09", "image12", "image05", "image13", "image03", "image06", "image10", "image07", "image15"]


def _score(model, config) -> dict:
    report = evaluate_model(model, config.data.images, config.data.labels, config.data.mpp, names=HELD_OUT)
    return report["mean"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nuclei-c8-v1", help="model to fine-tune (name or file)")
    parser.add_argument("--out", default="runs/finetune-study", help="folder for the fine-tuned models")
    parser.add_argument("--steps", type=int, default=None, help="override the config's steps")
    parser.add_argument("--sizes", default="3,5,10", help="numbers of labelled tiles, comma-separated")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    base = load_model(args.model)
    config = load_train_config(CONFIG)
    rows = [("none (shipped model)", 0, _score(base, config), 0.0)]
    for size in [int(s) for s in args.sizes.split(",")]:
        output_dir = Path(args.out) / f"tiles-{size}"
        shutil.rmtree(output_dir, ignore_errors=True)
        overrides = {"output_dir": str(output_dir), "name": f"nuclei-c8-cpm15-{size}"}
        if args.steps:
            overrides["steps"] = args.steps
        run_config = load_train_config(CONFIG, overrides)
        run_config.data.train = POOL[:size]
        began = time.perf_counter()
        result = train(run_config, init_from=args.model)
        seconds = time.perf_counter() - began
        rows.append((", ".join(POOL[:size]), size, _score(load_model(result.best_model), config), seconds))

    print(f"# Fine-tuning on CPM-15, {datetime.date.today()}, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"Held-out tiles: {', '.join(HELD_OUT)}; steps per run: {config.steps if not args.steps else args.steps}\n")
    print("| labelled tiles | n | Dice | IoU | AJI | PQ | fine-tuning time (s) |")
    print("|---|---|---|---|---|---|---|")
    for names, size, scores, seconds in rows:
        print(f"| {names} | {size} | {scores['dice']:.3f} | {scores['iou']:.3f} | {scores['aji']:.3f} | "
              f"{scores['pq']:.3f} | {seconds:.0f} |")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(
        json.dumps([{"tiles": n, "count": s, "scores": sc, "seconds": t} for n, s, sc, t in rows], indent=1)
    )


if __name__ == "__main__":
    main()
