"""Training the nodule classifier (paper 1, 3.2): weighted cross entropy, CT-suited augmentation, model
selection on validation AUC, the decision threshold at the validation ROC point closest to the top-left
corner (paper 2), test metrics with bootstrap confidence intervals.

Nodule-free lung patches (``lung_patches.npz`` of the patch set, ``data.lung_patches``) train as benign, so
the classifier learns that lung without a nodule is not malignant: the loss weighs malignant nodules half,
and of the benign half nodule-free lung ``lung_weight`` and benign nodules the rest (per-sample weights, each
group's total fixed whatever its size). Model selection and the threshold use the nodules alone; the share of
nodule-free lung called benign (specificity on lung) is a metric beside them.

Paper 1's protocol is an option (``slices="central"``: one patch per nodule; ``split="70/30"``: train and
test, no validation, so the last epoch is kept and the decision threshold is the softmax's argmax, 0.5).

Reproducible: shuffling and augmentation draw from generators seeded by (seed, epoch, rank), so a run
resumed from a checkpoint continues exactly as the uninterrupted one (on CPU). Several processes under
torchrun train with DistributedDataParallel (gloo on CPU, nccl on GPU); rank 0 validates and writes.
Each process holds the int16 patches it needs (rank 0 all splits, the others the training split) and
normalises them batch by batch, not a float copy of the whole set.
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
from xaiexplain.data.patch_set import (
    SPLITS,
    load_lung_patches,
    load_patch_set,
    lung_patch_split,
    protocol_array_names,
    select_protocol,
)
from xaiexplain.errors import XAIExplainError
from xaiexplain.evaluate import classifier_metrics as metrics
from xaiexplain.explainers.references import reference_check
from xaiexplain.io.files import write_csv_rows
from xaiexplain.models.architectures import CLASS_NAMES, NoduleClassifier
from xaiexplain.models.bundles import save_bundle

from . import checkpoints
from .devices import describe, start_run

HU_WINDOW = (-1000.0, 400.0)
# Without validation patients (paper 1's 70 / 30 split) the decision is the two-way softmax's argmax.
ARGMAX_THRESHOLD = 0.5


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
    lung_weight: float = 0.5  # share of the benign side of the loss given to nodule-free lung (0: not used)
    slices: str = "all"  # or "central": one patch per nodule (paper 1)
    split: str = "70/15/15"  # or "70/30": train and test (paper 1)
    command: str = ""


def normalise(images_hu: np.ndarray) -> torch.Tensor:
    low, high = HU_WINDOW
    return torch.from_numpy(np.clip((images_hu.astype(np.float32) - low) / (high - low), 0, 1)[:, None])


class PatchImages:
    """The int16 HU patches of the rows a process needs; indexed by patch-set row, they come normalised."""

    def __init__(self, images: np.ndarray, rows: np.ndarray):
        self.rows = np.unique(rows)
        self.images = images[self.rows]

    def __getitem__(self, index) -> torch.Tensor:
        return normalise(self.images[np.searchsorted(self.rows, index)])


# The standard deviation of the noise added in training is drawn per patch up to this (HU): the phantom's
# lung has 18-27 HU of noise, real CT more and varying with dose and kernel (40-57 HU in the lung of the real
# LIDC-IDRI-0001 series), so a classifier trained on the phantom alone reads real noise as structure.
NOISE_SD_HU = 40.0


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flips, quarter turns (in the axial plane), shifts of up to 3 pixels along every axis, HU gain and
    offset, white noise of 0 to NOISE_SD_HU: what changes between CT scans of the same nodule without changing
    its malignancy. ``x``: (N, 1, H, W) patches or (N, 1, D, H, W) volumes."""
    n, dims = x.shape[0], x.dim() - 2
    per_patch = (n,) + (1,) * (dims + 1)
    flip_lr = torch.rand(n, generator=generator) < 0.5
    flip_ud = torch.rand(n, generator=generator) < 0.5
    turns = torch.randint(0, 4, (n,), generator=generator)
    shifts = torch.randint(-3, 4, (n, dims), generator=generator)
    gain = 1 + 0.05 * (2 * torch.rand(n, generator=generator) - 1)
    offset = 0.015 * (2 * torch.rand(n, generator=generator) - 1)  # about +/- 20 HU
    padded = nn.functional.pad(x, (3, 3) * dims, mode="replicate")
    out = torch.stack([padded[(k, slice(None), *(slice(3 + int(s), 3 + int(s) + side)
                                                  for s, side in zip(shifts[k], x.shape[2:])))]
                       for k in range(n)]) if n else x.clone()
    out = torch.where(flip_lr.view(per_patch), out.flip(-1), out)
    out = torch.where(flip_ud.view(per_patch), out.flip(-2), out)
    for quarter in range(1, 4):
        chosen = turns == quarter
        if chosen.any():
            out[chosen] = torch.rot90(out[chosen], quarter, (-2, -1))
    noise_sd = NOISE_SD_HU / (HU_WINDOW[1] - HU_WINDOW[0]) * torch.rand(n, generator=generator)
    noise = noise_sd.view(per_patch) * torch.randn(out.shape, generator=generator)
    return (out * gain.view(per_patch) + offset.view(per_patch) + noise).clamp(0, 1)


def process_share(order: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This process's share of one shuffled epoch. Every process gets the same number of patches, so the
    same number of steps: DistributedDataParallel's all-reduce waits for every process at each step, and one
    step more on one process hangs the run. As torch's DistributedSampler does (drop_last=False), the order
    is padded with its own first patches up to a multiple of the number of processes."""
    padding = -len(order) % world
    padded = np.concatenate([order, np.resize(order, padding)]) if padding else order
    return padded[rank::world]


def loss_weights(labels: np.ndarray, nodule_patches: int, train_index: np.ndarray, lung_weight: float) -> np.ndarray:
    """Per-row loss weights (float32, one per row of ``labels``; rows from ``nodule_patches`` on are nodule-free
    lung): over ``train_index`` malignant nodules weigh half, benign nodules ``(1 - lung_weight) / 2`` and lung
    ``lung_weight / 2`` (all benign, ``1 / 2``, without lung rows), each row its group's share; mean 1 over
    the training rows."""
    is_lung = np.arange(len(labels)) >= nodule_patches
    groups = {"malignant": (labels == 1) & ~is_lung, "benign": (labels == 0) & ~is_lung, "lung": is_lung}
    trained = np.zeros(len(labels), bool)
    trained[train_index] = True
    counts = {name: int((member & trained).sum()) for name, member in groups.items()}
    lung_share = lung_weight if counts["lung"] else 0.0
    shares = {"malignant": 0.5, "benign": 0.5 * (1 - lung_share), "lung": 0.5 * lung_share}
    weights = np.zeros(len(labels), np.float32)
    for name, member in groups.items():
        if counts[name]:
            weights[member] = shares[name] * len(train_index) / counts[name]
    return weights


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
    names = ("images", "label") + protocol_array_names(settings.slices)
    arrays, nodules, summary = load_patch_set(settings.data, names)
    chosen, split = select_protocol(arrays, nodules, summary, settings.slices, settings.split)
    nodule_patches = len(arrays["label"])
    lung = load_lung_patches(settings.data) if settings.lung_weight > 0 else None
    lung_count = 0 if lung is None else len(lung["images"])
    lung_rows = nodule_patches + np.arange(lung_count)
    lung_split = lung_patch_split(lung, summary, settings.split) if lung_count else np.zeros(0, np.int8)
    lung_index = {name: lung_rows[lung_split == n] for n, name in enumerate(SPLITS)}
    train_index = np.concatenate([chosen[split == SPLITS.index("train")], lung_index["train"]])
    if settings.max_train_patches:
        train_index = np.sort(np.random.default_rng(settings.seed).permutation(train_index)[:settings.max_train_patches])
    validation_index = chosen[split == SPLITS.index("validation")]
    test_index = chosen[split == SPLITS.index("test")]
    all_labels = np.concatenate([arrays["label"], np.zeros(lung_count, arrays["label"].dtype)])
    labels = torch.from_numpy(all_labels.astype(np.int64))
    images = arrays.pop("images") if not lung_count else np.concatenate([arrays.pop("images"), lung.pop("images")])
    needed = np.concatenate([chosen, lung_rows]) if rank == 0 else train_index
    x = PatchImages(images, needed)
    selection = "validation" if len(validation_index) else "test"  # the split that must hold both labels too
    if len(np.unique(arrays["label"][train_index[train_index < nodule_patches]])) < 2 or \
            len(np.unique(arrays["label"][chosen[split == SPLITS.index(selection)]])) < 2:
        raise XAIExplainError(f"the patch set in {settings.data} needs benign and malignant nodules in its train "
                              f"and {selection} splits")
    validating = len(validation_index) > 0

    spatial_dims = int(summary.get("spatial_dims", 2))
    # a 2D set records one patch size and field of view, a set of volumes one per axis (depth, rows, columns)
    patch_size = summary["patch_size"] if spatial_dims == 3 else int(summary["patch_size"])
    field_of_view = summary["field_of_view_mm"] if spatial_dims == 3 else float(summary["field_of_view_mm"])
    model = NoduleClassifier(widths=settings.widths, input_size=patch_size, spatial_dims=spatial_dims).to(device)
    memory_format = torch.channels_last_3d if spatial_dims == 3 else torch.channels_last
    if device.type == "cuda":
        model = model.to(memory_format=memory_format)
    trained = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    sample_weights = torch.from_numpy(loss_weights(all_labels, nodule_patches, train_index, settings.lung_weight))
    loss_function = nn.CrossEntropyLoss(reduction="none")

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

    # seconds count on from the checkpoint's, so a resumed run's curves and total time stay whole
    started = time.time() - (history[-1]["seconds"] if history else 0.0)
    epochs = range(start_epoch, settings.epochs)
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=settings.epochs, initial=start_epoch, desc="classifier", unit="epoch", file=sys.stderr)
    for epoch in epochs:
        trained.train()
        generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + epoch)
        order = process_share(train_index[torch.randperm(len(train_index), generator=generator).numpy()], rank, world)
        augment_generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + epoch * 101 + rank)
        total, seen = 0.0, 0
        for n in range(0, len(order), settings.batch_size):
            batch = order[n:n + settings.batch_size]
            inputs = augment(x[batch], augment_generator).to(device)
            targets = labels[batch].to(device)
            weights = sample_weights[batch].to(device)
            if device.type == "cuda":
                inputs = inputs.contiguous(memory_format=memory_format)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = (loss_function(trained(inputs).float(), targets) * weights).sum() / weights.sum()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
            seen += len(batch)
        if rank == 0:
            auc = None
            if validating:
                validation_p = _probabilities(model, x[validation_index], device)
                auc = float(roc_auc_score(arrays["label"][validation_index], validation_p))
            history.append({"epoch": epoch + 1, "train_loss": total / max(seen, 1), "validation_auc": auc,
                            "seconds": round(time.time() - started, 1)})
            if not validating or auc > best["auc"]:  # without validation: the last epoch
                best = {"epoch": epoch + 1, "auc": auc,
                        "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
            checkpoints.save_checkpoint(checkpoint, {"model": model.state_dict(), "best": best["state"]},
                                        {"optimiser": optimiser}, {"epoch": epoch, "best_epoch": best["epoch"],
                                                                   "best_auc": best["auc"], "history": history})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{history[-1]['train_loss']:.3f}", val_auc="-" if auc is None else f"{auc:.3f}")
        if world > 1:
            dist.barrier()
    if bar is not None:
        bar.close()
    if rank != 0:
        return None

    model.load_state_dict(best["state"])
    if validating:
        validation_p = _probabilities(model, x[validation_index], device)
        threshold = metrics.threshold_closest_to_top_left(arrays["label"][validation_index], validation_p)
    else:
        threshold = ARGMAX_THRESHOLD
    test_p = _probabilities(model, x[test_index], device)
    test_y = arrays["label"][test_index]
    test_nodules = arrays["nodule"][test_index]
    per_nodule_ids = np.unique(test_nodules)
    per_nodule_p = np.array([test_p[test_nodules == n].mean() for n in per_nodule_ids])
    per_nodule_y = np.array([test_y[test_nodules == n][0] for n in per_nodule_ids])
    lung_metrics = {name: metrics.bootstrap_specificity(
        _probabilities(model, x[lung_index[name]], device) if len(lung_index[name]) else [], threshold,
        groups=lung["patient_id"][lung_index[name] - nodule_patches] if len(lung_index[name]) else None,
        samples=settings.bootstrap_samples, seed=settings.seed) for name in ("validation", "test")}

    def predict(patches_hu):
        return _probabilities(model, normalise(np.asarray(patches_hu)), device)

    lung_test_hu = x.images[np.searchsorted(x.rows, lung_index["test"])] if len(lung_index["test"]) else None
    config = {
        "kind": "classifier",
        "architecture": "NoduleClassifier",
        "arguments": {"widths": list(settings.widths), "input_size": patch_size,
                      **({"spatial_dims": 3} if spatial_dims == 3 else {})},
        "input": {"patch_size": patch_size, "field_of_view_mm": field_of_view, "hu_window": list(HU_WINDOW),
                  "normalisation": "window", "class_names": list(CLASS_NAMES),
                  **({"spatial_dims": 3} if spatial_dims == 3 else {})},
        "decision_threshold": threshold,
        "provenance": {
            "command": settings.command,
            "data": {"path": str(settings.data), "summary": summary},
            "seed": settings.seed, "epochs": settings.epochs, "batch_size": settings.batch_size,
            "global_batch_size": settings.batch_size * world,
            "learning_rate": settings.learning_rate, "weight_decay": settings.weight_decay,
            "train_patches": int(len(train_index)), "best_epoch": best["epoch"],
            "nodule_free_lung": {
                "train_patches": int(np.sum(train_index >= nodule_patches)),
                "loss_weight": settings.lung_weight if lung_count else 0.0,
                "weighting": "loss shares per group of training patches: malignant nodules 1/2, benign nodules "
                             "(1 - loss_weight) / 2, nodule-free lung (labelled benign) loss_weight / 2",
                "criterion": summary.get("lung_patches", {}).get("criterion")},
            "protocol": {"slices": settings.slices, "split": settings.split,
                         "model_selection": "best validation AUC" if validating else
                                            "last epoch (no validation split)"},
            "library_version": xaiexplain.__version__, "torch_version": torch.__version__,
            "python": platform.python_version(), "device": describe(device), "processes": world,
        },
        "metrics": {
            "validation_auc": best["auc"] if validating else None,
            "threshold_rule": "validation ROC point closest to the top-left corner" if validating else
                              "0.5, the two-way softmax's argmax (no validation split)",
            "test_patches": metrics.bootstrap_metrics(test_y, test_p, threshold, groups=test_nodules,
                                                      samples=settings.bootstrap_samples, seed=settings.seed),
            "test_nodules": metrics.bootstrap_metrics(per_nodule_y, per_nodule_p, threshold,
                                                      samples=settings.bootstrap_samples, seed=settings.seed),
            "test_counts": {"patches": int(len(test_index)), "nodules": int(len(per_nodule_ids)),
                            "malignant_nodules": int(per_nodule_y.sum())},
            "confidence_intervals": "95 % percentile bootstrap; patches resampled by nodule (lung patches by patient)",
            "nodule_free_lung_specificity": lung_metrics,
        },
        "reference_check": reference_check(predict, threshold, lung_test_hu,
                                           tuple(patch_size) if spatial_dims == 3 else patch_size),
    }
    save_bundle(settings.out, model, config, {"training_curves.csv": lambda path: write_csv_rows(path, history)})
    return config
