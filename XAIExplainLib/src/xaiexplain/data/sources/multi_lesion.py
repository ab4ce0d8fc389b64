"""Multi-lesion phantom images for the weakly-supervised localization study of paper 2, on CT.

Each image is one axial 128 x 128 slice of the phantom (native pixel spacing of its scan) around a real
labelled LIDC nodule, with zero to three more real nodules of the same split moved into it (their
consensus masks and ratings, drawn by the phantom in lung pockets of their own). The image is positive
(label 1) while any malignant nodule is in it, so a classifier trained on these image-level labels
should stay positive until every malignant nodule is gone: the setting of iterative augmentation. The
malignant nodules are the lesions of the FROC analysis; benign ones are distractors.

Written in the patch-set format (``load_patch_set`` reads it; the training package trains on it), with
``lesion_labels`` (int16, 1..L for the malignant nodules on the slice), ``distractor_mask``,
``lesions_removed`` (each image rendered again with its malignant nodules left undrawn and nothing else
changed, ``phantom.render_region_without``; a negative image is its own) and ``paired_with``.

Paired negatives (``paired_negatives=True``): each positive training image is followed by its
``lesions_removed`` rendering as a training image of its own, labelled negative (``paired_with`` its
source's row; -1 elsewhere): the same anatomy with the lesions gone, so a classifier trained on them must
depend on the lesions. Validation and test images are never paired.
"""
from __future__ import annotations

import sys
import time
from collections import defaultdict
from dataclasses import replace

import numpy as np

from xaiexplain import __version__
from xaiexplain.data import lidc
from xaiexplain.data.patch_set import SPLITS, labelled_scans, split_patients, write_patch_set
from xaiexplain.data.sources import phantom
from xaiexplain.errors import XAIExplainError

IMAGE_SIZE = 128
MAX_EXTRA_NODULES = 3
BORDER_PX = 20  # nodule centres stay this far inside the image
MIN_DISTANCE_PX = 22  # between nodule centres


def _relocated(nodule: lidc.LidcNodule, center_ijk, index: int) -> lidc.LidcNodule:
    """The nodule moved so its centroid lies at ``center_ijk`` (i, j, k) of another scan's grid."""
    ci, cj, ck = nodule.centroid_ijk
    di, dj, dk = (int(round(t - c)) for t, c in zip(center_ijk, (ci, cj, ck)))
    (i0, i1), (j0, j1), (k0, k1) = nodule.bbox_ijk
    mask = nodule.consensus
    consensus = lidc.NoduleMask(mask=mask.mask, offset=(mask.offset[0] + dk, mask.offset[1] + di, mask.offset[2] + dj))
    return replace(nodule, nodule_index=index, bbox_ijk=((i0 + di, i1 + di), (j0 + dj, j1 + dj), (k0 + dk, k1 + dk)),
                   centroid_ijk=(ci + di, cj + dj, ck + dk), consensus=consensus)


def _pools(seed: int, per_split: dict[str, int]) -> dict[str, list[lidc.LidcNodule]]:
    """Labelled nodules per split (patients split as in the patch set), consensus masks loaded."""
    scans = labelled_scans()
    split_of = split_patients([patient for patient, _ in scans], seed)
    pools = defaultdict(list)
    for (patient, _), nodules in sorted(scans.items()):
        pools[split_of[patient]] += [n for n in nodules if n.label is not None]
    rng = np.random.default_rng(seed)
    chosen = {}
    for split, pool in pools.items():
        picked = [pool[n] for n in rng.permutation(len(pool))[:per_split[split]]]
        for nodule in picked:
            lidc.load_consensus(nodule)
        chosen[split] = picked
    return chosen


SOURCE_NODULES = {"train": 150, "validation": 50, "test": 50}


def _image_arrays(volume, placed) -> dict:
    """One image's arrays from its rendered slice: the malignant nodules drawn on it are its lesions."""
    labels_on_slice = volume.nodule_labels[0]
    lesion_labels = np.zeros(labels_on_slice.shape, np.int16)
    distractors = np.zeros(labels_on_slice.shape, bool)
    for nodule in placed:
        inside = labels_on_slice == nodule.nodule_index + 1
        if nodule.label == "malignant" and inside.any():
            lesion_labels[inside] = lesion_labels.max() + 1
        elif inside.any():
            distractors |= inside
    return {"images": np.clip(volume.hu[0], -32768, 32767).astype(np.int16), "lesion_labels": lesion_labels,
            "nodule_mask": lesion_labels > 0, "distractor_mask": distractors,
            "spicule_mask": volume.spicules[0].astype(bool), "calcification_mask": volume.calcification[0].astype(bool),
            "label": np.int8(lesion_labels.max() > 0)}


def render_multi_lesion_set(out_dir, images: int = 1200, seed: int = 0, progress: bool = True,
                            command: str | None = None, source_nodules: dict | None = None,
                            paired_negatives: bool = False) -> dict:
    """Render ``images`` multi-lesion images (70 / 15 / 15 % train / validation / test, nodules of each
    split from that split's patients only) into ``out_dir`` in the patch-set format. ``source_nodules``:
    how many labelled nodules per split to draw from (their consensus masks take pylidc 0.25 s each);
    ``paired_negatives``: add each positive training image without its malignant nodules, labelled
    negative (see the module's text)."""
    if images < 20:
        raise XAIExplainError("a multi-lesion set needs at least 20 images")
    started = time.time()
    counts = {"train": int(round(0.7 * images)), "validation": int(round(0.15 * images))}
    counts["test"] = images - counts["train"] - counts["validation"]
    pools = _pools(seed, source_nodules or SOURCE_NODULES)
    rng = np.random.default_rng([seed, 7])
    geometries = {}
    arrays = defaultdict(list)
    rows = []
    plan = [(split, n) for split in SPLITS for n in range(counts[split])]
    if progress:
        from tqdm import tqdm

        plan = tqdm(plan, desc="multi-lesion images", unit="image", file=sys.stderr)
    for split, index_in_split in plan:
        pool = pools[split]
        malignant = [n for n in pool if n.label == "malignant"]
        benign = [n for n in pool if n.label == "benign"]
        positive = index_in_split % 2 == 0  # every split half positive, half negative
        extra = int(rng.integers(0, MAX_EXTRA_NODULES + 1))
        # positives: at least one malignant nodule, others of either label; negatives: benign only
        members = [malignant[rng.integers(len(malignant))]] if positive else [benign[rng.integers(len(benign))]]
        for _ in range(extra):
            source = pool if positive else benign
            members.append(source[rng.integers(len(source))])
        anchor = members[0]
        if anchor.series_instance_uid not in geometries:
            geometries[anchor.series_instance_uid] = lidc.scan_geometry(anchor.series_instance_uid)
        geometry = geometries[anchor.series_instance_uid]
        ci, cj, ck = (int(round(c)) for c in anchor.centroid_ijk)
        half = IMAGE_SIZE // 2
        i0 = min(max(ci - half, 0), geometry.rows - IMAGE_SIZE)
        j0 = min(max(cj - half, 0), geometry.columns - IMAGE_SIZE)
        centres = [(ci, cj)]
        placed = [_relocated(anchor, (ci, cj, ck), 0)]
        for member in members[1:]:
            for _ in range(50):  # a free spot inside the image, away from the others
                spot = (i0 + int(rng.integers(BORDER_PX, IMAGE_SIZE - BORDER_PX)),
                        j0 + int(rng.integers(BORDER_PX, IMAGE_SIZE - BORDER_PX)))
                if all(np.hypot(spot[0] - a, spot[1] - b) >= MIN_DISTANCE_PX for a, b in centres):
                    centres.append(spot)
                    placed.append(_relocated(member, (*spot, ck), len(placed)))
                    break
        box = ((ck, ck + 1), (i0, i0 + IMAGE_SIZE), (j0, j0 + IMAGE_SIZE))
        image_seed = int(rng.integers(1 << 30))
        volume, without = phantom.render_region_without(
            geometry, placed, image_seed, *box, hidden=[n.nodule_index for n in placed if n.label == "malignant"])
        image, removed = _image_arrays(volume, placed), _image_arrays(without, placed)
        row = {"split": split, "series_instance_uid": anchor.series_instance_uid, "slice": ck, "box_ij": [i0, j0],
               "pixel_spacing": geometry.pixel_spacing,
               "nodules": [{"patient_id": n.patient_id, "source_index": m.nodule_index, "label": n.label,
                            "center_ij": list(c)} for n, m, c in zip(placed, members, centres)]}
        pairs = [(image, row, -1)]
        if paired_negatives and split == "train" and image["label"]:
            pairs.append((removed, {**row, "nodules": [n for n in row["nodules"] if n["label"] != "malignant"]},
                          len(rows)))
        for values, image_row, paired_with in pairs:
            for name, value in values.items():
                arrays[name].append(value)
            arrays["lesions_removed"].append(removed["images"])
            arrays["paired_with"].append(np.int32(paired_with))
            arrays["nodule"].append(np.int32(len(rows)))
            arrays["split"].append(np.int8(SPLITS.index(split)))
            lesions = int(values["lesion_labels"].max())
            rows.append({**image_row, "lesions": lesions, "first_patch": len(rows), "patch_count": 1,
                         "label": "malignant" if lesions > 0 else "benign",
                         **({"paired_with": paired_with} if paired_with >= 0 else {})})
    stacked = {name: np.stack(values) if np.ndim(values[0]) else np.array(values) for name, values in arrays.items()}
    summary = {"format": "xaiexplain-patch-set", "version": 1, "kind": "multi-lesion", "library_version": __version__,
               "command": command, "seed": seed, "patch_size": IMAGE_SIZE,
               "field_of_view_mm": float(np.median([r["pixel_spacing"] for r in rows]) * IMAGE_SIZE),
               "images": len(rows), "positives": int(stacked["label"].sum()),
               "paired_negatives": int((stacked["paired_with"] >= 0).sum()),
               "lesions_removed": "each image rendered again with its malignant nodules left undrawn, the lung "
                                  "around them as it was (phantom.render_region_without)",
               "lesions": int(sum(r["lesions"] for r in rows)), "seconds": round(time.time() - started, 1)}
    write_patch_set(out_dir, stacked, rows, summary)
    return summary
