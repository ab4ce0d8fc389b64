"""Training cycle-consistent activation maximization (paper 1, 2.5): per batch, first both
discriminators, then both generators, on random pairs (x_a, x_b) of training images; no labels are used.

Reproducible like the classifier trainer: pairs and the discriminators' patch orders draw from generators
seeded by (seed, step, rank), so a resumed run continues exactly as the uninterrupted one on CPU.
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
from torch import nn
from xaiexplain.data.patch_set import SPLITS, load_patch_set
from xaiexplain.errors import XAIExplainError
from xaiexplain.io.files import write_csv_rows
from xaiexplain.models import cycle_am
from xaiexplain.models.architectures import MALIGNANT, CycleAMGenerators
from xaiexplain.models.bundles import load_bundle, save_bundle

from . import checkpoints
from .devices import describe, start_run

LOSS_NAMES = ("discriminators", "cycle", "similarity", "adversarial", "activation")


@dataclass
class CycleAMSettings:
    data: Path
    classifier: str
    out: Path
    steps: int = 20000
    batch_size: int = 16
    learning_rate: float = 2e-4
    widths: tuple[int, ...] = cycle_am.PAPER_WIDTHS
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 500
    sample_every: int = 1000
    command: str = ""


def _set_trainable(module: nn.Module, trainable: bool) -> None:
    for parameter in module.parameters():
        parameter.requires_grad_(trainable)


def training_step(networks: dict, classifier: nn.Module, optimisers: dict, x_a, x_b, generator: torch.Generator,
                  device: torch.device) -> dict[str, float]:
    """One batch: the discriminators, then both generators (eq. 4 for G+ and, mirrored, for G-)."""
    plus, minus = networks["plus"], networks["minus"]
    d_plus, d_minus = networks["d_plus"], networks["d_minus"]
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    with autocast:
        with torch.no_grad():
            fake_plus, fake_minus = plus(x_a), minus(x_a)
        _set_trainable(d_plus, True)
        _set_trainable(d_minus, True)
        discriminator_loss = d_plus(x_b, fake_plus, generator) + d_minus(x_b, fake_minus, generator)
    optimisers["discriminators"].zero_grad(set_to_none=True)
    discriminator_loss.backward()
    optimisers["discriminators"].step()

    # the generators learn against frozen discriminators (their modules, outside DDP's gradient sync)
    frozen_plus = getattr(d_plus, "module", d_plus)
    frozen_minus = getattr(d_minus, "module", d_minus)
    _set_trainable(frozen_plus, False)
    _set_trainable(frozen_minus, False)
    with autocast:
        generated_plus, generated_minus = plus(x_a), minus(x_a)
        cycle = cycle_am.cycle_loss(x_a, minus(generated_plus)) + cycle_am.cycle_loss(x_a, plus(generated_minus))
        similarity = cycle_am.similarity_loss(x_a, generated_plus) + cycle_am.similarity_loss(x_a, generated_minus)
        adversarial = (frozen_plus(x_b, generated_plus, generator, fake_is_real=True)
                       + frozen_minus(x_b, generated_minus, generator, fake_is_real=True))
        activation = (cycle_am.activation_maximization_loss(classifier, generated_plus, MALIGNANT)
                      + cycle_am.activation_maximization_loss(classifier, generated_minus, 1 - MALIGNANT))
        generator_loss = cycle + similarity + adversarial + activation
    optimisers["generators"].zero_grad(set_to_none=True)
    generator_loss.backward()
    optimisers["generators"].step()
    return {"discriminators": discriminator_loss.item(), "cycle": cycle.item(), "similarity": similarity.item(),
            "adversarial": adversarial.item(), "activation": activation.item()}


def train_cycle_am(settings: CycleAMSettings, progress: bool = True) -> dict | None:
    device, rank, world = start_run(settings.device, settings.seed)
    classifier_bundle = load_bundle(settings.classifier, device=device)
    classifier = classifier_bundle.model.eval()
    _set_trainable(classifier, False)
    arrays, _, summary = load_patch_set(settings.data, ("images", "split"))
    train_index = np.flatnonzero(arrays["split"] == SPLITS.index("train"))
    if len(train_index) < 2 * settings.batch_size:
        raise XAIExplainError(f"the patch set in {settings.data} has too few training patches "
                              f"({len(train_index)}) for batches of {settings.batch_size} pairs")
    images = arrays.pop("images")[train_index]  # int16 HU, mapped to the network's input batch by batch

    generators = CycleAMGenerators(settings.widths).to(device)
    networks = {"plus": generators.plus, "minus": generators.minus,
                "d_plus": cycle_am.PairDiscriminator(settings.widths).to(device),
                "d_minus": cycle_am.PairDiscriminator(settings.widths).to(device)}
    if device.type == "cuda":
        networks = {k: v.to(memory_format=torch.channels_last) for k, v in networks.items()}
    optimisers = {
        "generators": torch.optim.Adam(list(networks["plus"].parameters()) + list(networks["minus"].parameters()),
                                       lr=settings.learning_rate, betas=(0.5, 0.999)),
        "discriminators": torch.optim.Adam(list(networks["d_plus"].parameters()) + list(networks["d_minus"].parameters()),
                                           lr=settings.learning_rate, betas=(0.5, 0.999)),
    }
    checkpoint = checkpoints.prepare_run_folders(settings.out, settings.checkpoint_dir, rank)
    start_step, history = 0, []
    if settings.resume:
        if not checkpoints.exists(checkpoint):
            raise XAIExplainError(f"--resume: no checkpoint in {checkpoint}")
        states, info = checkpoints.load_checkpoint(checkpoint, list(networks), optimisers)
        for name, network in networks.items():
            network.load_state_dict(states[name])
        start_step, history = info["step"], info["history"]
    trained = {name: nn.parallel.DistributedDataParallel(network) if world > 1 else network
               for name, network in networks.items()}

    samples_dir = settings.out.with_name(settings.out.name + ".samples")
    # sample grids show the same eight training patches, spread over the set (other nodules, both labels)
    sample_images = classifier_bundle.to_tensor(images[np.linspace(0, len(images) - 1, 8).astype(int)]).to(device)
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=settings.steps, initial=start_step, desc="cycle-am", unit="step", file=sys.stderr)
    started = time.time()
    running = {name: 0.0 for name in LOSS_NAMES}
    for step in range(start_step, settings.steps):
        generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + step * 7919 + rank)
        pairs = torch.randint(0, len(images), (2, settings.batch_size), generator=generator).numpy()
        x_a, x_b = (classifier_bundle.to_tensor(images[p]).to(device) for p in pairs)
        if device.type == "cuda":
            x_a, x_b = (t.contiguous(memory_format=torch.channels_last) for t in (x_a, x_b))
        for network in networks.values():
            network.train()
        losses = training_step(trained, classifier, optimisers, x_a, x_b, generator, device)
        for name in LOSS_NAMES:
            running[name] += losses[name]
        done = step + 1
        if rank == 0 and (done % settings.checkpoint_every == 0 or done == settings.steps):
            count = settings.checkpoint_every if done % settings.checkpoint_every == 0 else done % settings.checkpoint_every
            history.append({"step": done, **{name: running[name] / max(count, 1) for name in LOSS_NAMES},
                            "seconds": round(time.time() - started, 1)})
            running = {name: 0.0 for name in LOSS_NAMES}
            checkpoints.save_checkpoint(checkpoint, {name: n.state_dict() for name, n in networks.items()}, optimisers,
                                        {"step": done, "history": history})
        if rank == 0 and (done % settings.sample_every == 0 or done == settings.steps):
            write_sample_grid(networks["plus"], networks["minus"], classifier, sample_images,
                              samples_dir / f"step_{done:07d}.png", f"step {done}")
        if bar is not None:
            bar.update(1)
            bar.set_postfix({name[:5]: f"{value:.3f}" for name, value in losses.items()})
        if world > 1:
            dist.barrier()
    if bar is not None:
        bar.close()
    if rank != 0:
        return None

    config = {
        "kind": "cycle-am",
        "architecture": "CycleAMGenerators",
        "arguments": {"widths": list(settings.widths)},
        "input": classifier_bundle.input_spec,
        "classifier": {"path": str(settings.classifier),
                       "decision_threshold": classifier_bundle.threshold},
        "decision_threshold": classifier_bundle.threshold,
        "provenance": {
            "command": settings.command, "data": {"path": str(settings.data), "summary": summary},
            "seed": settings.seed, "steps": settings.steps, "batch_size": settings.batch_size,
            "learning_rate": settings.learning_rate, "train_patches": int(len(train_index)),
            "library_version": xaiexplain.__version__, "torch_version": torch.__version__,
            "python": platform.python_version(), "device": describe(device), "processes": world,
            "seconds": round(time.time() - started, 1),
        },
        "training_losses": history[-1] if history else {},
    }
    save_bundle(settings.out, generators, config, loss_curve_files(history))
    return config


def loss_curve_files(history: list[dict]) -> dict:
    """``loss_curves.csv`` and ``loss_curves.png``, as ``save_bundle``'s extra files."""
    if not history:
        return {}
    from xaiexplain.io.figures import line_plot

    steps = [row["step"] for row in history]
    return {"loss_curves.csv": lambda path: write_csv_rows(path, history),
            "loss_curves.png": lambda path: line_plot(
                {name: (steps, [row[name] for row in history]) for name in LOSS_NAMES}, path, "step",
                "loss (mean over the interval)", "cycle-consistent activation maximization: training losses")}


@torch.no_grad()
def write_sample_grid(plus, minus, classifier, images, path: Path, title: str) -> None:
    """Columns x, G+(x), G-(x), R = G+(x) - G-(x), with the classifier's probabilities."""
    from xaiexplain.io.figures import counterfactual_grid

    was_training = plus.training
    plus.eval()
    minus.eval()
    generated_plus, generated_minus = plus(images).float(), minus(images).float()
    probabilities = [torch.softmax(classifier(t).float(), 1)[:, MALIGNANT].cpu().numpy()
                     for t in (images, generated_plus, generated_minus)]
    counterfactual_grid(images[:, 0].cpu().numpy(), generated_plus[:, 0].cpu().numpy(),
                        generated_minus[:, 0].cpu().numpy(), probabilities, path, title)
    plus.train(was_training)
    minus.train(was_training)
