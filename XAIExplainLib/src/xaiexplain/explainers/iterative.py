"""Iterative augmentation of visual evidence (paper 2, Algorithm 1), around any attribution method.

While an image's malignancy probability is at or above the decision threshold and t < T: explain it,
binarize the map with Otsu's threshold, inpaint the binarized region (Navier-Stokes, radius 3), classify
again. The augmented map is sum_t exp(-alpha t) M_t, each M_t as the method returns it: no normalisation
between passes, as Algorithm 1 writes it (paper 2 states none). Each image stops on its own; the images still
running are explained together in one batch per pass. An image below the threshold from the start
makes no pass and has an all-zero augmented map (``iterations`` 0): there is no evidence to augment.

Volumes (a 3D model's input, (D, H, W)): Otsu's threshold over the whole volume, and the binarized region
inpainted with the same Navier-Stokes method plane by plane in the axial plane (OpenCV's is 2D). That
choice is ours (paper 2 is 2D): it keeps the paper's inpainting where a nodule is seen as a radiologist sees
it, and fills each plane from the lung around the nodule in that plane.

Neighbouring slices as channels (a 2.5D model's input, (S, H, W)): the same, with the channels as the planes. A
method that gives each channel its own map (gradients) is binarized over all channels at once and each channel
inpainted where its own map is high; an in-plane map (Grad-CAM's, (H, W)) is binarized once and inpainted in
every channel, since the evidence it locates lies across the neighbouring slices at that place. The augmented
map has the method's own shape.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from skimage.filters import threshold_otsu

MAX_ITERATIONS = 20  # T
DECAY = 0.6  # alpha
INPAINT_RADIUS = 3  # r_inp, pixels


@dataclass
class IterationPass:
    """One pass t for one image: its map, the binarized mask, the inpainted image and the new prediction."""

    t: int
    relevance: np.ndarray  # M_t (H, W); (D, H, W) for a volume; (S, H, W) or (H, W) for neighbouring slices
    mask: np.ndarray  # B_t, its shape, bool
    inpainted: np.ndarray  # I_t after inpainting, the image's shape, HU
    probability: float  # prediction on the inpainted image


@dataclass
class IterativeResult:
    augmented: np.ndarray  # (N, *M_t's shape)
    initial_probability: np.ndarray  # (N,)
    final_probability: np.ndarray  # (N,)
    passes: list[list[IterationPass]] = field(default_factory=list)  # per image

    @property
    def iterations(self) -> np.ndarray:
        return np.array([len(p) for p in self.passes])


def binarize(relevance: np.ndarray) -> np.ndarray:
    """Otsu binarization of one map (B_t = M_t >= th_bin); a constant map gives an empty mask."""
    if np.ptp(relevance) <= 0:
        return np.zeros(relevance.shape, bool)
    return relevance >= threshold_otsu(relevance)


def inpaint(image_hu: np.ndarray, mask: np.ndarray, radius: int = INPAINT_RADIUS) -> np.ndarray:
    """Navier-Stokes inpainting of the masked pixels (OpenCV); the others are returned unchanged. A volume
    (D, H, W) or neighbouring slices (S, H, W) are inpainted plane by plane (axial); a mask of one plane (H, W)
    on every plane."""
    if mask.ndim < image_hu.ndim:  # an in-plane mask on every plane
        mask = np.broadcast_to(mask, image_hu.shape)
    if image_hu.ndim == 3:
        return np.stack([inpaint(plane, plane_mask, radius) if plane_mask.any() else plane.astype(np.float32)
                         for plane, plane_mask in zip(image_hu, mask)])
    filled = cv2.inpaint(np.ascontiguousarray(image_hu, np.float32), mask.astype(np.uint8), radius, cv2.INPAINT_NS)
    return np.where(mask, filled, image_hu).astype(np.float32)


def augment_evidence(patches_hu: np.ndarray, attribute, predict, threshold: float, max_iterations: int = MAX_ITERATIONS,
                     decay: float = DECAY, radius: int = INPAINT_RADIUS) -> IterativeResult:
    """Algorithm 1 for a batch of HU patches (N, H, W), neighbouring slices (N, S, H, W) or volumes (N, D, H, W).

    ``attribute(patches_hu) -> maps`` and ``predict(patches_hu) -> probabilities`` work on batches."""
    images = np.array(patches_hu, dtype=np.float32, copy=True)
    probability = np.asarray(predict(images), float)
    initial = probability.copy()
    augmented = None  # the method's maps' shape: an in-plane map of neighbouring slices is (N, H, W)
    passes: list[list[IterationPass]] = [[] for _ in range(len(images))]
    t = 1
    running = np.flatnonzero(probability >= threshold)
    while len(running) and t < max_iterations:
        maps = attribute(images[running])
        if augmented is None:
            augmented = np.zeros((len(images), *maps.shape[1:]), np.float32)
        for n, index in enumerate(running):
            mask = binarize(maps[n])
            images[index] = inpaint(images[index], mask, radius)
            augmented[index] += np.exp(-decay * t) * maps[n]
            passes[index].append(IterationPass(t=t, relevance=maps[n], mask=mask, inpainted=images[index].copy(),
                                               probability=float("nan")))
        new_probability = np.asarray(predict(images[running]), float)
        for n, index in enumerate(running):
            probability[index] = new_probability[n]
            passes[index][-1].probability = float(new_probability[n])
        running = running[new_probability >= threshold]
        t += 1
    if augmented is None:  # no image at or above the threshold: no pass and no evidence, in the method's shape
        augmented = np.zeros((len(images), *attribute(images[:1]).shape[1:]) if len(images) else images.shape,
                             np.float32)
    return IterativeResult(augmented=augmented, initial_probability=initial, final_probability=probability,
                           passes=passes)
