"""The training loop: patches, loss, schedule, validation, checkpoints and resuming.

Each step draws ``batch_size`` random patches from the training tiles, with
the tile choice and the augmentation seeded by ``(seed, step)``. A run that
is interrupted and resumed from its checkpoint therefore draws the same
batches as one that was not.

Files in ``output_dir``: ``checkpoint.pt`` (the latest state, for
``--resume``), ``best.safetensors`` (the model with the best validation score,
AJI or Dice, chosen by ``select_by``),
``history.json`` (loss and validation metrics per step) and ``curves.png``.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from histo_gedl.errors import DatasetError, InvalidParameterError
from histo_gedl.models import ModelMetadata, build_model, load_model, save_model
from histo_gedl.models.unet import SegmentationModel
from histo_gedl.training.augment import training_augmentation
from histo_gedl.training.config import TrainConfig
from histo_gedl.training.data import LabelledTile, load_labelled_tiles
from histo_gedl.slides.stain import lab_statistics, reinhard_normalise
from histo_gedl.training.losses import PartialDiceCELoss
from histo_gedl.training.targets import training_target

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
BEST_NAME = "best.safetensors"


@dataclass
class TrainResult:
    """Output files and outcome of a finished run."""

    output_dir: Path
    best_model: Path
    steps_done: int
    best_metrics: dict
    history: dict


def _image_statistics(tiles: list[LabelledTile]) -> tuple[list[float], list[float]]:
    pixels = np.concatenate([t.image.reshape(-1, 3) for t in tiles]).astype(np.float64) / 255.0
    return pixels.mean(axis=0).round(4).tolist(), pixels.std(axis=0).round(4).tolist()


def _split(config: TrainConfig, tiles: list[LabelledTile]) -> tuple[list[LabelledTile], list[LabelledTile]]:
    names = {t.name for t in tiles}
    unknown = set(config.data.validation) - names
    if unknown:
        raise DatasetError(f"validation tiles not found among the images: {', '.join(sorted(unknown))}")
    validation = [t for t in tiles if t.name in config.data.validation]
    training = [t for t in tiles if t.name not in config.data.validation]
    if config.data.train:
        training = [t for t in training if t.name in config.data.train]
    if not training:
        raise DatasetError("no training tiles left after holding out the validation tiles")
    return training, validation


def _batch(
    tiles: list[LabelledTile], targets: list[np.ndarray], config: TrainConfig, step: int, augment
) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng([config.seed, step])
    augment.set_random_seed(int(rng.integers(2**31)))
    # Larger tiles are drawn more often, in proportion to their area.
    areas = np.array([t.image.shape[0] * t.image.shape[1] for t in tiles], dtype=np.float64)
    chosen = rng.choice(len(tiles), size=config.batch_size, p=areas / areas.sum())
    images, masks = [], []
    for index in chosen:
        sample = augment(image=tiles[index].image, mask=targets[index])
        images.append(torch.from_numpy(sample["image"]).permute(2, 0, 1).float() / 255.0)
        masks.append(torch.from_numpy(sample["mask"].astype(np.int64)))
    return torch.stack(images), torch.stack(masks)


def predict_tile(model: SegmentationModel, image: np.ndarray) -> np.ndarray:
    """Return class probabilities (classes, H, W) for one RGB tile (H, W, 3) of any size.

    The tile is padded with white up to a multiple of the model's total
    stride, then cropped back.
    """
    stride = model.config.total_stride
    height, width = image.shape[:2]
    pad_h, pad_w = (-height) % stride, (-width) % stride
    padded = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=255)
    x = torch.from_numpy(padded).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        probabilities = torch.softmax(model(x), dim=1)[0]
    return probabilities[:, :height, :width].numpy()


def validate(model: SegmentationModel, tiles: list[LabelledTile]) -> dict:
    """Return validation metrics averaged over tiles: foreground Dice, and AJI and PQ where instances exist."""
    from histo_gedl.training.evaluate import postprocess_options, score_prediction

    was_training = model.training
    model.eval()
    options = postprocess_options(model)
    scores = [score_prediction(predict_tile(model, t.image), t.instances, t.has_instances, options) for t in tiles]
    model.train(was_training)
    result = {"dice": float(np.mean([s["dice"] for s in scores]))}
    ajis = [s["aji"] for s in scores if "aji" in s]
    if ajis:
        result["aji"] = float(np.mean(ajis))
    pqs = [s["pq"] for s in scores if "pq" in s]
    if pqs:
        result["pq"] = float(np.mean(pqs))
    return result


def selection_score(metrics: dict, select_by: str = "aji") -> float:
    """Return the validation score that picks the best model.

    That is AJI where it was measured and ``select_by`` is "aji", else Dice.
    """
    if select_by == "aji" and "aji" in metrics:
        return metrics["aji"]
    return metrics.get("dice", float("nan"))


def _freeze(model: SegmentationModel, mode: str) -> None:
    if mode == "none":
        return
    for name, parameter in model.net.named_parameters():
        if mode == "encoder" and name.startswith("encoder."):
            parameter.requires_grad_(False)
        if mode == "all_but_head" and not name.startswith("head."):
            parameter.requires_grad_(False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("freeze=%s leaves %d trainable parameters", mode, trainable)


def _learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.learning_rate * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class WeightAverage:
    """Exponential moving average of a model's weights, kept in a copy of the model.

    Floating-point parameters and buffers (batch-norm statistics included)
    move towards the live model's by ``1 - d`` per update, and integer
    buffers are copied. The decay in effect is ``d = min(decay, (1 + step) /
    (10 + step))``, so the average follows the live weights closely early
    in a run. It reaches 0.99 at step 890 and 0.995 at step 1,790; a run
    shorter than that averages over fewer steps than ``decay`` alone implies.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model)
        self.model.eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        """Move the average towards ``model``'s weights after optimiser step ``step`` (0-based)."""
        decay = min(self.decay, (1 + step) / (10 + step))
        live = model.state_dict()
        for name, value in self.model.state_dict().items():
            if value.is_floating_point():
                value.lerp_(live[name], 1.0 - decay)
            else:
                value.copy_(live[name])


def _save_checkpoint(path: Path, model, optimizer, step: int, history: dict, average=None) -> None:
    temporary = path.with_name(f".{path.name}.partial")
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "history": history}
    if average is not None:
        state["average"] = average.model.state_dict()
    torch.save(state, temporary)
    os.replace(temporary, path)


def _plot_curves(history: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    steps, losses = history["loss_steps"], history["loss"]
    left.plot(steps, losses, linewidth=0.8)
    left.set_xlabel("step")
    left.set_ylabel("training loss (Dice + cross-entropy)")
    for key in ("dice", "aji"):
        values = [v.get(key) for v in history["validation"]]
        if any(v is not None for v in values):
            right.plot(history["validation_steps"], values, marker="o", label=f"validation {key}")
    right.set_xlabel("step")
    right.set_ylim(0, 1)
    right.legend()
    figure.tight_layout()
    temporary = path.with_name(f".{path.stem}.partial.png")
    figure.savefig(temporary, dpi=100)
    plt.close(figure)
    os.replace(temporary, path)


def train(
    config: TrainConfig, resume: bool = False, init_from: str | None = None, stop_at: int | None = None
) -> TrainResult:
    """Train a model with the settings in ``config``; fine-tune when ``init_from`` names a model.

    Args:
        config: the run's settings.
        resume: continue from ``output_dir/checkpoint.pt`` instead of starting over.
        init_from: a model name or file to start from (fine-tuning). Its
            architecture, normalisation and classes are kept.
        stop_at: stop after this step with a checkpoint, keeping the
            schedule of the full run, so that a long run can be split into
            sessions and continued with ``resume=True``.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    output_dir = Path(config.output_dir)
    checkpoint_path = output_dir / CHECKPOINT_NAME
    if resume and not checkpoint_path.exists():
        raise InvalidParameterError(
            f"cannot resume: no checkpoint at {checkpoint_path}; run without --resume to start"
        )
    if not resume and checkpoint_path.exists():
        raise InvalidParameterError(
            f"{output_dir} already contains a run; pass --resume to continue it or choose another output_dir"
        )

    # With an explicit training list, only the listed tiles need labels.
    names = (config.data.train + config.data.validation) if config.data.train else None
    tiles = load_labelled_tiles(
        config.data.images, config.data.labels, config.mpp, config.data.mpp, names, roles=("data.images", "data.labels")
    )
    training, validation = _split(config, tiles)
    stain_target = None
    if config.stain_normalisation == "reinhard":
        stain_target = lab_statistics([t.image for t in training])
        for tile in training + validation:
            tile.image = reinhard_normalise(tile.image, lab_statistics(tile.image), stain_target)
    targets = [
        training_target(t.instances, t.has_instances, config.binary_masks, config.boundary_width) for t in training
    ]
    log.info("%d training and %d validation tiles at %.3f mpp", len(training), len(validation), config.mpp)

    if init_from is not None:
        model = load_model(init_from)
        model.metadata.extra = dict(model.metadata.extra, finetuned_from=model.metadata.name)
        if abs(model.metadata.mpp - config.mpp) > 1e-6:
            raise InvalidParameterError(
                f"model {init_from} was trained at {model.metadata.mpp} mpp but the config asks for "
                f"{config.mpp}; set mpp: {model.metadata.mpp} in the config"
            )
    else:
        mean, std = _image_statistics(training)
        model = build_model(config.model, ModelMetadata(mean=tuple(mean), std=tuple(std)))
    model.metadata.name = config.name
    model.metadata.mpp = config.mpp
    model.metadata.training_data = config.data.description
    model.metadata.training_data_licence = config.data.licence
    if stain_target is not None:
        model.metadata.extra = dict(
            model.metadata.extra,
            stain_normalisation={"method": "reinhard", "target": stain_target.to_dict()},
        )
    _freeze(model, config.freeze)
    model.train()
    # Created only now, so that bad data or a bad starting model leaves no empty run folder.
    output_dir.mkdir(parents=True, exist_ok=True)

    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
    )
    history = {"loss_steps": [], "loss": [], "validation_steps": [], "validation": [], "seconds": 0.0}
    start_step = 0
    if resume:
        state = torch.load(checkpoint_path, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_step, history = int(state["step"]), state["history"]
        log.info("resuming %s at step %d", output_dir, start_step)
    average = WeightAverage(model, config.ema_decay) if config.ema_decay else None
    if average is not None and resume:
        if "average" in state:
            average.model.load_state_dict(state["average"])
        else:
            log.warning("the checkpoint has no weight average; starting one from the weights at step %d", start_step)
    # Validation and best.safetensors use the average where there is one.
    evaluated = average.model if average is not None else model
    evaluated.metadata = model.metadata

    loss_function = PartialDiceCELoss(config.contact_weight, config.boundary_width)
    augment = training_augmentation(config.patch_size, config.arbitrary_rotation)
    best_score = max((selection_score(v, config.select_by) for v in history["validation"]), default=-1.0)
    started = time.monotonic() - history["seconds"]
    progress = tqdm(
        range(start_step, config.steps), initial=start_step, total=config.steps,
        desc=f"train {config.name}", unit="step", disable=None,
    )
    step = start_step
    for step in progress:
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(config, step)
        images, masks = _batch(training, targets, config, step, augment)
        loss = loss_function(model(images), masks[:, None])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if average is not None:
            average.update(model, step)
        history["loss_steps"].append(step + 1)
        history["loss"].append(loss.item())
        done = step + 1
        out_of_time = config.time_limit and time.monotonic() - started > config.time_limit
        stopping = out_of_time or done == stop_at
        if done % config.validate_every == 0 or done == config.steps or stopping:
            metrics = validate(evaluated, validation) if validation else {"dice": float("nan")}
            history["validation_steps"].append(done)
            history["validation"].append(metrics)
            history["seconds"] = time.monotonic() - started
            progress.set_postfix(loss=f"{loss.item():.3f}", **{k: f"{v:.3f}" for k, v in metrics.items()})
            log.info("step %d loss %.4f validation %s", done, loss.item(), metrics)
            if not validation or selection_score(metrics, config.select_by) > best_score:
                best_score = selection_score(metrics, config.select_by)
                model.metadata.metrics = {**metrics, "step": done}
                model.metadata.extra = dict(
                    model.metadata.extra, train_seconds=round(history["seconds"], 1), torch=torch.__version__,
                    training_options={
                        "binary_masks": config.binary_masks, "contact_weight": config.contact_weight,
                        "ema_decay": config.ema_decay, "select_by": config.select_by,
                        "boundary_width": config.boundary_width,
                    },
                )
                save_model(evaluated, output_dir / BEST_NAME)
            _save_checkpoint(checkpoint_path, model, optimizer, done, history, average)
            (output_dir / "history.json").write_text(json.dumps(history, indent=1))
            _plot_curves(history, output_dir / "curves.png")
        if out_of_time:
            log.warning("stopping at step %d: time limit of %.0f s reached", done, config.time_limit)
        if stopping:
            break
    progress.close()
    best = max(history["validation"], key=lambda v: selection_score(v, config.select_by), default={})
    steps_done = history["loss_steps"][-1] if history["loss_steps"] else 0
    return TrainResult(output_dir, output_dir / BEST_NAME, steps_done, best, history)
