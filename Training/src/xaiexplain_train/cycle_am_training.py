"""Training cycle-consistent activation maximization (paper 1, 2.5): per batch, first both
discriminators, then both generators, on random pairs (x_a, x_b) of training images; no labels are used.

Reproducible like the classifier trainer: pairs and the discriminators' patch orders draw from generators
seeded by (seed, step, rank), so a resumed run continues exactly as the uninterrupted one on CPU.

Batch norm in the generators learns its running statistics from real images only: in the cycle pass each
generator reads the other's output, and those batches would otherwise enter the statistics the generator
uses at inference on real images. After the last step the statistics are recomputed over the training
images with the final weights (precise batch norm, Wu & Johnson 2021), and the remaining gap between a
generator in training mode (batch statistics) and in inference mode is recorded in the bundle.

``activation_blur`` (G+, G-) lets the classifier read each generator's images through a Gaussian blur of
that many pixels in the activation-maximization loss (``cycle_am.activation_maximization_loss``; 0 is paper
1's plain read). The default blurs for G- only: trained without it, G- lowered p(malignant) partly with
checkered pixel patterns that a 1 px blur undoes (p(G-(x)) 0.18, through the blur 0.51), while G+'s changes
held (0.89 -> 0.90); a trial blurring for both removed the checkers but cut G+'s flip rate from 0.71 to
0.42 (README). ``activation_symmetries`` lets the classifier read each generated image flipped and turned at
random, so that a change in one corner of the patch (G-'s blob) does not pay, and ``activation_shift_px``
moves each read by up to that many pixels, so that a change tuned to one place of the patch pays only
sometimes. ``identity_weight`` adds CycleGAN's identity loss, weighted per image by the classifier's
probability of the generator's class on x
(``cycle_am.identity_loss``), so that G- leaves patches already called benign alone (and G+ malignant ones).
``floor_weight`` keeps each generated pixel no darker than the darkest of the input around it
(``cycle_am.floor_loss``), so that G- does not ring nodules with pixels darker than the lung.
``context_l1_factor`` (1, off, by default) makes changes of the context cost more than the nodule's at the
centre (``cycle_am.context_weights``): a prior that knows where the nodule is, so never a default."""
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
from xaiexplain.data.patch_set import SPLITS, check_patch_shape, load_patch_set, protocol_array_names, select_protocol
from xaiexplain.errors import XAIExplainError
from xaiexplain.io.files import write_csv_rows
from xaiexplain.models import cycle_am
from xaiexplain.models.architectures import MALIGNANT, CycleAMGenerators
from xaiexplain.models.bundles import load_bundle, network_input, save_bundle

from . import checkpoints
from .batch_norm_statistics import recompute_running_statistics, running_statistics_frozen, train_inference_gap_hu
from .devices import describe, start_run

LOSS_NAMES = ("discriminators", "cycle", "similarity", "identity", "floor", "adversarial", "activation")


@dataclass
class CycleAMSettings:
    data: Path
    classifier: str
    out: Path
    steps: int = 20000
    batch_size: int = 16
    learning_rate: float = 2e-4
    lr_decay_from: int | None = None  # linear decay to zero from this step (CycleGAN's schedule)
    similarity: str = "l1+dssim"  # or paper 1's "dssim" (cycle_am.similarity_loss)
    similarity_l1_weight: float = cycle_am.SIMILARITY_L1_WEIGHT
    context_l1_factor: float = cycle_am.CONTEXT_L1_FACTOR  # 1: the same L1 weight everywhere
    identity_weight: float = cycle_am.IDENTITY_WEIGHT  # 0: none, as in paper 1 (cycle_am.identity_loss)
    floor_weight: float = cycle_am.FLOOR_WEIGHT  # 0: none, as in paper 1 (cycle_am.floor_loss)
    activation_blur: tuple[float, float] = (0.0, 1.0)  # px for (G+, G-); 0: unblurred, as in paper 1
    activation_symmetries: bool = True  # the classifier reads G(x) flipped and turned at random; False: paper 1
    activation_shift_px: int = cycle_am.ACTIVATION_SHIFT_PX  # ... and moved by up to this many px; 0: paper 1
    widths: tuple[int, ...] = cycle_am.PAPER_WIDTHS
    discriminator_scales: tuple[int, ...] = cycle_am.DISCRIMINATOR_SCALES  # encoder stages the PatchGANs read
    slices: str = "all"  # or "central": one patch per nodule (paper 1)
    split: str = "70/15/15"  # or "70/30": train on paper 1's 70 %
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


def learning_rate_at(step: int, settings: CycleAMSettings) -> float:
    """Constant, then (from ``lr_decay_from``) falling linearly to zero at the last step, as CycleGAN (Zhu et
    al. 2017) trains; a function of the step, so a resumed run follows the same schedule."""
    start = settings.lr_decay_from
    if start is None or step < start:
        return settings.learning_rate
    return settings.learning_rate * (settings.steps - step) / max(settings.steps - start, 1)


def training_step(networks: dict, classifier: nn.Module, optimisers: dict, x_a, x_b, generator: torch.Generator,
                  device: torch.device, similarity_kind: str = "l1+dssim",
                  similarity_l1_weight: float = cycle_am.SIMILARITY_L1_WEIGHT,
                  activation_blur: tuple[float, float] = (0.0, 0.0),
                  activation_symmetries: bool = False, activation_shift_px: int = 0, identity_weight: float = 0.0,
                  floor_weight: float = 0.0, context_l1_factor: float = 1.0) -> dict[str, torch.Tensor]:
    """One batch: the discriminators, then both generators (eq. 4 for G+ and, mirrored, for G-). The losses
    come back as detached tensors on the device: reading them (``.item()``) waits for the device, so the
    caller sums them there and reads them once per checkpoint."""
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
        with running_statistics_frozen(plus, minus):  # generated batches do not enter the running statistics
            cycled = minus(generated_plus), plus(generated_minus)
        cycle = cycle_am.cycle_loss(x_a, cycled[0]) + cycle_am.cycle_loss(x_a, cycled[1])
        similarity = sum(cycle_am.similarity_loss(x_a, generated, similarity_kind, similarity_l1_weight,
                                                  context_l1_factor)
                         for generated in (generated_plus, generated_minus))
        if identity_weight:
            with torch.no_grad():
                decided = cycle_am.class_probabilities(classifier, x_a)
            identity = (cycle_am.identity_loss(x_a, generated_plus, decided[:, MALIGNANT], identity_weight)
                        + cycle_am.identity_loss(x_a, generated_minus, decided[:, 1 - MALIGNANT], identity_weight))
        else:
            identity = torch.zeros((), device=x_a.device)
        floor = sum(cycle_am.floor_loss(x_a, generated, floor_weight)
                    for generated in (generated_plus, generated_minus))
        adversarial = (frozen_plus(x_b, generated_plus, generator, fake_is_real=True)
                       + frozen_minus(x_b, generated_minus, generator, fake_is_real=True))
        reads = {"symmetries": generator if activation_symmetries else None, "shift_px": activation_shift_px,
                 "shifts": generator if activation_shift_px else None}
        activation = (cycle_am.activation_maximization_loss(classifier, generated_plus, MALIGNANT, activation_blur[0],
                                                            **reads)
                      + cycle_am.activation_maximization_loss(classifier, generated_minus, 1 - MALIGNANT,
                                                              activation_blur[1], **reads))
        generator_loss = cycle + similarity + identity + floor + adversarial + activation
    optimisers["generators"].zero_grad(set_to_none=True)
    generator_loss.backward()
    optimisers["generators"].step()
    return {name: value.detach() for name, value in (
        ("discriminators", discriminator_loss), ("cycle", cycle), ("similarity", similarity), ("identity", identity),
        ("floor", floor), ("adversarial", adversarial), ("activation", activation))}


def train_cycle_am(settings: CycleAMSettings, progress: bool = True) -> dict | None:
    if settings.lr_decay_from is not None and not 0 <= settings.lr_decay_from < settings.steps:
        raise XAIExplainError(f"--lr-decay-from {settings.lr_decay_from} must be a step from 0 to {settings.steps - 1}")
    device, rank, world = start_run(settings.device, settings.seed)
    classifier_bundle = load_bundle(settings.classifier, device=device)
    _set_trainable(classifier_bundle.model.eval(), False)
    # the classifier read through its model contract: its decision's log-odds for window-scale images
    classifier = cycle_am.WindowScaleScore(classifier_bundle).eval()
    arrays, nodules, summary = load_patch_set(settings.data, ("images",) + protocol_array_names(settings.slices))
    rows, row_splits = select_protocol(arrays, nodules, summary, settings.slices, settings.split)
    train_index = rows[row_splits == SPLITS.index("train")]
    check_patch_shape(arrays["images"], classifier_bundle.patch_shape, settings.data,
                      f"the classifier {settings.classifier}")
    if len(train_index) < 2 * settings.batch_size:
        raise XAIExplainError(f"the patch set in {settings.data} has too few training patches "
                              f"({len(train_index)}) for batches of {settings.batch_size} pairs")
    # the generators' scale: the classifier's window, HU beyond it kept (cycle_am.input_spec)
    generator_input = cycle_am.input_spec(classifier_bundle.input_spec)

    def to_input(hu: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(network_input(hu, generator_input)[:, None]).to(device)

    # int16 HU, mapped to the generators' input batch by batch; rank 0 keeps the validation split for the
    # batch-norm check at the end
    validation_images = arrays["images"][rows[row_splits == SPLITS.index("validation")]] if rank == 0 else None
    images = arrays.pop("images")[train_index]
    # the training images on the device once, and the step's random draws made there (pairs, the
    # discriminators' orders, the flips and turns), so that a GPU step waits for nothing on the host
    device_images = to_input(images)

    # 3D U-Nets and discriminators for a 3D classifier (the same design with 3D convolutions: ours, paper 1 is 2D)
    spatial_dims = classifier_bundle.input.spatial_dims
    memory_format = torch.channels_last_3d if spatial_dims == 3 else torch.channels_last
    generators = CycleAMGenerators(settings.widths, output_range=cycle_am.output_range_for(
        classifier_bundle.input_spec["hu_window"]), spatial_dims=spatial_dims).to(device)
    networks = {"plus": generators.plus, "minus": generators.minus,
                **{name: cycle_am.PairDiscriminator(settings.widths, scales=settings.discriminator_scales,
                                                    spatial_dims=spatial_dims).to(device)
                   for name in ("d_plus", "d_minus")}}
    if device.type == "cuda":
        networks = {k: v.to(memory_format=memory_format) for k, v in networks.items()}
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
    sample_images = to_input(images[np.linspace(0, len(images) - 1, 8).astype(int)])
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=settings.steps, initial=start_step, desc="cycle-am", unit="step", file=sys.stderr)
    # seconds count on from the checkpoint's, so a resumed run's curves and total time stay whole
    started = time.time() - (history[-1]["seconds"] if history else 0.0)
    running = {name: 0.0 for name in LOSS_NAMES}
    for step in range(start_step, settings.steps):
        generator = torch.Generator(device=device).manual_seed(settings.seed * 1_000_003 + step * 7919 + rank)
        pairs = torch.randint(0, len(images), (2, settings.batch_size), generator=generator, device=device)
        x_a, x_b = device_images[pairs[0]], device_images[pairs[1]]
        for optimiser in optimisers.values():
            for group in optimiser.param_groups:
                group["lr"] = learning_rate_at(step, settings)
        if device.type == "cuda":
            x_a, x_b = (t.contiguous(memory_format=memory_format) for t in (x_a, x_b))
        for network in networks.values():
            network.train()
        losses = training_step(trained, classifier, optimisers, x_a, x_b, generator, device,
                               similarity_kind=settings.similarity, similarity_l1_weight=settings.similarity_l1_weight,
                               activation_blur=settings.activation_blur,
                               activation_symmetries=settings.activation_symmetries,
                               activation_shift_px=settings.activation_shift_px,
                               identity_weight=settings.identity_weight, floor_weight=settings.floor_weight,
                               context_l1_factor=settings.context_l1_factor)
        for name in LOSS_NAMES:
            running[name] += losses[name]
        done = step + 1
        if rank == 0 and (done % settings.checkpoint_every == 0 or done == settings.steps):
            count = settings.checkpoint_every if done % settings.checkpoint_every == 0 else done % settings.checkpoint_every
            history.append({"step": done, **{name: float(running[name]) / max(count, 1) for name in LOSS_NAMES},
                            "seconds": round(time.time() - started, 1)})
            if bar is not None:
                bar.set_postfix({name[:5]: f"{value:.3f}" for name, value in history[-1].items() if name in LOSS_NAMES})
            running = {name: 0.0 for name in LOSS_NAMES}
            checkpoints.save_checkpoint(checkpoint, {name: n.state_dict() for name, n in networks.items()}, optimisers,
                                        {"step": done, "history": history})
        if rank == 0 and (done % settings.sample_every == 0 or done == settings.steps):
            write_sample_grid(networks["plus"], networks["minus"], classifier, sample_images,
                              generator_input["hu_window"], samples_dir / f"step_{done:07d}.png", f"step {done}")
        if bar is not None:
            bar.update(1)
    # DistributedDataParallel's all-reduce keeps the processes in step; one barrier before rank 0 writes
    if world > 1:
        dist.barrier()
    if bar is not None:
        bar.close()
    if rank != 0:
        return None

    low, high = generator_input["hu_window"]
    # the gap measured on images the statistics were not computed from: the validation split, where there is one
    held_out = validation_images if len(validation_images) >= settings.batch_size else images
    batch_norm = {"measured_on": "validation" if held_out is validation_images else "train"}
    for name in ("plus", "minus"):
        gap_before = train_inference_gap_hu(networks[name], held_out, to_input, settings.batch_size, high - low)
        recompute_running_statistics(networks[name], images, to_input, settings.batch_size)
        gap_after = train_inference_gap_hu(networks[name], held_out, to_input, settings.batch_size, high - low)
        batch_norm[name] = {"train_inference_gap_hu_before": round(gap_before, 2),
                            "train_inference_gap_hu_after": round(gap_after, 2)}

    config = {
        "kind": "cycle-am",
        "architecture": "CycleAMGenerators",
        "arguments": {"widths": list(settings.widths), "max_change": generators.plus.max_change,
                      "output_range": list(generators.plus.output_range),
                      **({"spatial_dims": 3} if spatial_dims == 3 else {})},
        "input": generator_input,
        "output": "bounded residual: G(x) = clamp(x + max_change tanh(U(x) / max_change), output_range) on the "
                  "input's scale (output_range: hu_range), clipped to hu_window only where the classifier reads it",
        "classifier": {"path": str(settings.classifier), "weights_sha256": classifier_bundle.fingerprint,
                       "decision_threshold": classifier_bundle.threshold},
        "decision_threshold": classifier_bundle.threshold,
        "provenance": {
            "command": settings.command, "data": {"path": str(settings.data), "summary": summary},
            "seed": settings.seed, "steps": settings.steps, "batch_size": settings.batch_size,
            "learning_rate": settings.learning_rate, "lr_decay_from": settings.lr_decay_from,
            "similarity_loss": settings.similarity,
            "similarity_l1_weight": settings.similarity_l1_weight if settings.similarity == "l1+dssim" else None,
            # the L1 term and its weights exist only in the l1+dssim similarity
            "context_l1_factor": settings.context_l1_factor if settings.similarity == "l1+dssim" else None,
            "protocol": {"slices": settings.slices, "split": settings.split},
            "identity_weight": settings.identity_weight,
            "floor_weight": settings.floor_weight, "floor_radius_px": cycle_am.FLOOR_RADIUS,
            "discriminator_scales": list(settings.discriminator_scales),
            "activation_blur_px": dict(zip(("G+", "G-"), settings.activation_blur)),
            "activation_read_flipped_and_turned": settings.activation_symmetries,
            "activation_read_shifted_px": settings.activation_shift_px,
            "train_patches": int(len(train_index)),
            "library_version": xaiexplain.__version__, "torch_version": torch.__version__,
            "python": platform.python_version(), "device": describe(device), "processes": world,
            "seconds": round(time.time() - started, 1),
        },
        "training_losses": history[-1] if history else {},
        "batch_norm": {"running_statistics": "real images only; recomputed over the training images at the end",
                       **batch_norm},
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
def write_sample_grid(plus, minus, classifier, images, hu_window, path: Path, title: str) -> None:
    """Columns x, G+(x), G-(x), R = G+(x) - G-(x) in HU, with the classifier's probabilities; ``images`` on
    the generators' scale (``hu_window`` mapped to [0, 1]); of volumes, their middle planes."""
    from xaiexplain.io.figures import counterfactual_grid

    was_training = plus.training
    plus.eval()
    minus.eval()
    low, high = hu_window
    columns = [images, plus(images).float(), minus(images).float()]
    probabilities = [cycle_am.class_probabilities(classifier, t)[:, MALIGNANT].cpu().numpy() for t in columns]
    shown = [t[:, 0] if t.dim() == 4 else t[:, 0, t.shape[2] // 2] for t in columns]
    counterfactual_grid(*(t.cpu().numpy() * (high - low) + low for t in shown), probabilities, path, title)
    plus.train(was_training)
    minus.train(was_training)
