"""Training the nodule classifier (paper 1, 3.2): weighted cross entropy, CT-suited augmentation, model
selection on validation AUC, the decision threshold at the validation ROC point closest to the top-left
corner (paper 2), test metrics with bootstrap confidence intervals.

Reproducible: shuffling and augmentation draw from generators seeded by (seed, epoch, rank), so a run
resumed from a checkpoint continues exactly as the uninterrupted one (on CPU). Several processes under
torchrun train with DistributedDataParallel (gloo on CPU, nccl on GPU); rank 0 validates and writes.
"""
from __future__ import annotations

import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import xaiexplain
from sklearn.metrics import roc_auc_score
from torch import nn
from xaiexplain.data.patch_set import SPLITS, load_patch_set
from xaiexplain.errors import XAIExplainError
from xaiexplain.evaluate import classifier_metrics as metrics
from xaiexplain.io.files import write_csv_rows
from xaiexplain.models.architectures import CLASS_NAMES, NoduleClassifier
from xaiexplain.models.bundles import save_bundle

from . import checkpoints
from .devices import describe, start_run

HU_WINDOW = (-1000.0, 400.0)


@dataclass
class ClassifierSettings:
    data: Path
    out: Path
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    widths: tuple[int, ...] = (32, 64, 128, 256)
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    checkpoint_dir: Path | None = None
    bootstrap_samples: int = 1000
    max_train_patches: int | None = None  # a subset for quick runs and tests
    command: str = ""


def normalise(images_hu: np.ndarray) -> torch.Tensor:
    low, high = HU_WINDOW
    return torch.from_numpy(np.clip((images_hu.astype(np.float32) - low) / (high - low), 0, 1)[:, None])


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flips, quarter turns, shifts of up to 3 pixels, HU gain and offset: what changes between CT scans
    of the same nodule without changing its malignancy."""
    n = x.shape[0]
    flip_lr = torch.rand(n, generator=generator) < 0.5
    flip_ud = torch.rand(n, generator=generator) < 0.5
    turns = torch.randint(0, 4, (n,), generator=generator)
    shifts = torch.randint(-3, 4, (n, 2), generator=generator)
    gain = 1 + 0.05 * (2 * torch.rand(n, generator=generator) - 1)
    offset = 0.015 * (2 * torch.rand(n, generator=generator) - 1)  # about +/- 20 HU
    size = x.shape[-1]
    padded = nn.functional.pad(x, (3, 3, 3, 3), mode="replicate")
    base = torch.arange(size)
    rows = (base[None, :] + shifts[:, :1] + 3)[:, :, None]
    columns = (base[None, :] + shifts[:, 1:] + 3)[:, None, :]
    out = padded[torch.arange(n)[:, None, None], 0, rows, columns][:, None]
    out = torch.where(flip_lr[:, None, None, None], out.flip(-1), out)
    out = torch.where(flip_ud[:, None, None, None], out.flip(-2), out)
    for quarter in range(1, 4):
        chosen = turns == quarter
        if chosen.any():
            out[chosen] = torch.rot90(out[chosen], quarter, (-2, -1))
    return (out * gain[:, None, None, None] + offset[:, None, None, None]).clamp(0, 1)


@torch.no_grad()
def _probabilities(model, x: torch.Tensor, device, batch_size: int = 512) -> np.ndarray:
    model.eval()
    parts = []
    for n in range(0, len(x), batch_size):
        logits = model(x[n:n + batch_size].to(device)).float()
        parts.append(torch.softmax(logits, 1)[:, 1].cpu())
    return torch.cat(parts).numpy()


def train_classifier(settings: ClassifierSettings, progress: bool = True) -> dict | None:
    """Train and write the bundle; returns its config on rank 0 (None on other ranks)."""
    device, rank, world = start_run(settings.device, settings.seed)
    arrays, nodules, summary = load_patch_set(settings.data)
    split = arrays["split"]
    train_index = np.flatnonzero(split == SPLITS.index("train"))
    if settings.max_train_patches:
        train_index = np.sort(np.random.default_rng(settings.seed).permutation(train_index)[:settings.max_train_patches])
    validation_index = np.flatnonzero(split == SPLITS.index("validation"))
    test_index = np.flatnonzero(split == SPLITS.index("test"))
    labels = torch.from_numpy(arrays["label"].astype(np.int64))
    x = normalise(arrays["images"])
    if len(np.unique(arrays["label"][train_index])) < 2 or len(np.unique(arrays["label"][validation_index])) < 2:
        raise XAIExplainError(f"the patch set in {settings.data} needs benign and malignant nodules in its train "
                              "and validation splits")

    model = NoduleClassifier(widths=settings.widths, input_size=int(summary["patch_size"])).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    trained = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    counts = np.bincount(arrays["label"][train_index], minlength=2)
    class_weights = torch.tensor(len(train_index) / (2.0 * counts), dtype=torch.float32, device=device)
    loss_function = nn.CrossEntropyLoss(weight=class_weights)

    checkpoint = checkpoints.prepare_run_folders(settings.out, settings.checkpoint_dir, rank)
    start_epoch, history = 0, []
    best = {"epoch": -1, "auc": -1.0, "state": {}}
    if settings.resume:
        if not checkpoints.exists(checkpoint):
            raise XAIExplainError(f"--resume: no checkpoint in {checkpoint}")
        states, info = checkpoints.load_checkpoint(checkpoint, ["model", "best"], {"optimiser": optimiser})
        model.load_state_dict(states["model"])
        best = {"epoch": info["best_epoch"], "auc": info["best_auc"], "state": states["best"]}
        start_epoch, history = info["epoch"] + 1, info["history"]

    started = time.time()
    epochs = range(start_epoch, settings.epochs)
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=settings.epochs, initial=start_epoch, desc="classifier", unit="epoch", file=sys.stderr)
    for epoch in epochs:
        trained.train()
        generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + epoch)
        order = train_index[torch.randperm(len(train_index), generator=generator).numpy()]
        order = order[rank::world]  # each process its share of one shuffled epoch
        augment_generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + epoch * 101 + rank)
        total, seen = 0.0, 0
        for n in range(0, len(order), settings.batch_size):
            batch = order[n:n + settings.batch_size]
            inputs = augment(x[batch], augment_generator).to(device)
            targets = labels[batch].to(device)
            if device.type == "cuda":
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = loss_function(trained(inputs).float(), targets)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
            seen += len(batch)
        if rank == 0:
            validation_p = _probabilities(model, x[validation_index], device)
            validation_y = arrays["label"][validation_index]
            auc = float(roc_auc_score(validation_y, validation_p))
            history.append({"epoch": epoch + 1, "train_loss": total / max(seen, 1), "validation_auc": auc,
                            "seconds": round(time.time() - started, 1)})
            if auc > best["auc"]:
                best = {"epoch": epoch + 1, "auc": auc,
                        "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
            checkpoints.save_checkpoint(checkpoint, {"model": model.state_dict(), "best": best["state"]},
                                        {"optimiser": optimiser}, {"epoch": epoch, "best_epoch": best["epoch"],
                                                                   "best_auc": best["auc"], "history": history})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{history[-1]['train_loss']:.3f}", val_auc=f"{auc:.3f}")
        if world > 1:
            dist.barrier()
    if bar is not None:
        bar.close()
    if rank != 0:
        return None

    model.load_state_dict(best["state"])
    validation_p = _probabilities(model, x[validation_index], device)
    threshold = metrics.threshold_closest_to_top_left(arrays["label"][validation_index], validation_p)
    test_p = _probabilities(model, x[test_index], device)
    test_y = arrays["label"][test_index]
    test_nodules = arrays["nodule"][test_index]
    per_nodule_ids = np.unique(test_nodules)
    per_nodule_p = np.array([test_p[test_nodules == n].mean() for n in per_nodule_ids])
    per_nodule_y = np.array([test_y[test_nodules == n][0] for n in per_nodule_ids])
    config = {
        "kind": "classifier",
        "architecture": "NoduleClassifier",
        "arguments": {"widths": list(settings.widths), "input_size": int(summary["patch_size"])},
        "input": {"patch_size": int(summary["patch_size"]), "field_of_view_mm": float(summary["field_of_view_mm"]),
                  "hu_window": list(HU_WINDOW), "normalisation": "HU clipped to hu_window, mapped to [0, 1]",
                  "class_names": list(CLASS_NAMES)},
        "decision_threshold": threshold,
        "provenance": {
            "command": settings.command,
            "data": {"path": str(settings.data), "summary": summary},
            "seed": settings.seed, "epochs": settings.epochs, "batch_size": settings.batch_size,
            "learning_rate": settings.learning_rate, "weight_decay": settings.weight_decay,
            "train_patches": int(len(train_index)), "best_epoch": best["epoch"],
            "library_version": xaiexplain.__version__, "torch_version": torch.__version__,
            "python": platform.python_version(), "device": describe(device), "processes": world,
        },
        "metrics": {
            "validation_auc": best["auc"],
            "threshold_rule": "validation ROC point closest to the top-left corner",
            "test_patches": metrics.bootstrap_metrics(test_y, test_p, threshold, groups=test_nodules,
                                                      samples=settings.bootstrap_samples, seed=settings.seed),
            "test_nodules": metrics.bootstrap_metrics(per_nodule_y, per_nodule_p, threshold,
                                                      samples=settings.bootstrap_samples, seed=settings.seed),
            "test_counts": {"patches": int(len(test_index)), "nodules": int(len(per_nodule_ids)),
                            "malignant_nodules": int(per_nodule_y.sum())},
            "confidence_intervals": "95 % percentile bootstrap; patches resampled by nodule",
        },
    }
    save_bundle(settings.out, model, config, {"training_curves.csv": lambda path: write_csv_rows(path, history)})
    return config
