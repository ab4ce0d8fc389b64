"""The patch-set format and the split by patient (paper 1, 3.1); ``data.sources.phantom_patches`` renders
the set from the phantom.

Every labelled nodule (read by >= 3 radiologists, median malignancy != 3) gives one 64 x 64 patch
covering 45 mm per axial slice of its consensus mask, with the nodule, spicule and calcification masks
on the same grid. Patients, not patches, are split into train / validation / test with a fixed seed, so
no patient's nodules sit on both sides of a split.

Files in the output folder:
- ``patches.npz`` (load with ``numpy.load(path, allow_pickle=False)``): ``images`` int16 HU (N, 64, 64),
  ``nodule_mask``, ``spicule_mask``, ``calcification_mask`` bool (N, 64, 64), ``label`` int8 (1 malignant,
  0 benign), ``nodule`` int32 (row of ``nodules.json``), ``split`` int8 (0 train, 1 validation, 2 test),
  ``center_lps`` float32 (N, 3);
- ``nodules.json``: one row per nodule (LIDC record, split, first patch row and patch count);
- ``dataset.json``: how it was made and the counts.
"""
from __future__ import annotations

import json
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from xaiexplain.data import lidc
from xaiexplain.errors import XAIExplainError
from xaiexplain.io.files import output_set

PATCH_SET_MANIFEST = "dataset.json"
SPLITS = ("train", "validation", "test")
SPLIT_FRACTIONS = (0.70, 0.15, 0.15)


def split_patients(patient_ids, seed: int, fractions=SPLIT_FRACTIONS) -> dict[str, str]:
    """Patient id -> split name, a seeded shuffle of the sorted unique ids cut by ``fractions``."""
    patients = sorted(set(patient_ids))
    order = np.random.default_rng(seed).permutation(len(patients))
    cuts = np.round(np.cumsum(fractions)[:-1] * len(patients)).astype(int)
    split_of = {}
    for split, members in zip(SPLITS, np.split(order, cuts)):
        for m in members:
            split_of[patients[m]] = split
    return split_of


def labelled_scans(patient_ids: list[str] | None = None) -> dict[tuple[str, str], list[lidc.LidcNodule]]:
    """(patient id, series UID) -> all nodules of each scan that has a labelled nodule."""
    by_series = defaultdict(list)
    for nodule in lidc.nodule_table():
        if patient_ids is None or nodule.patient_id in patient_ids:
            by_series[(nodule.patient_id, nodule.series_instance_uid)].append(nodule)
    return {key: nodules for key, nodules in by_series.items() if any(n.label for n in nodules)}


def held_out_patients(seed: int = 0, split: str = "test") -> list[str]:
    """The patients of one split of the full patch set made with ``seed``."""
    split_of = split_patients([patient for patient, _ in labelled_scans()], seed)
    return sorted(patient for patient, s in split_of.items() if s == split)


def write_patch_set(out_dir, arrays: dict[str, np.ndarray], nodules: list[dict], summary: dict) -> None:
    """Write a patch set folder (one output set) in the format ``load_patch_set`` reads."""
    with output_set(out_dir, PATCH_SET_MANIFEST) as written:
        write_patch_set_files(written, arrays, nodules, summary)


def write_patch_set_files(written, arrays, nodules, summary) -> None:
    np.savez_compressed(written.path("patches.npz"), **arrays)
    written.write_json("nodules.json", nodules)
    written.manifest_data = summary


def load_patch_set(folder) -> tuple[dict[str, np.ndarray], list[dict], dict]:
    """Arrays, nodule rows and summary of a patch set written by ``render_patch_set`` (no pickles)."""
    folder = Path(folder)
    files = [folder / "patches.npz", folder / "nodules.json", folder / PATCH_SET_MANIFEST]
    if not all(f.is_file() for f in files):
        raise XAIExplainError(f"{folder} is not a patch set: it lacks patches.npz, nodules.json or dataset.json "
                              "(make one with `xaiexplain phantom --patches --out FOLDER`)")
    try:
        with np.load(files[0], allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        return arrays, json.loads(files[1].read_text()), json.loads(files[2].read_text())
    except (ValueError, OSError, zipfile.BadZipFile) as error:
        raise XAIExplainError(f"the patch set in {folder} cannot be read ({error})") from None
