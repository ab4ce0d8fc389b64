"""The patch-set format and the split by patient (paper 1, 3.1); ``data.sources.phantom_patches`` renders
the set from the phantom.

Every labelled nodule (read by >= 3 radiologists, median malignancy != 3) gives one 64 x 64 patch
covering 45 mm per axial slice of its consensus mask, with the nodule, spicule and calcification masks
on the same grid. Patients, not patches, are split into train / validation / test with a fixed seed, so
no patient's nodules sit on both sides of a split. The split is that of the full set (all labelled LIDC
patients, whatever part of them a set holds), so a set of a few scans, a partial download or one shard of
the archive puts every patient where the whole set puts it.

Paper 1's protocol differs in two ways, both options of a training run (``select_protocol``): one patch per
nodule, the slice through its midpoint (``central``), and a 70 / 30 % train / test split. The 70 / 30 split
cuts the same seeded order of patients as the 70 / 15 / 15 one, so its training patients are the same.

Files in the output folder:
- ``patches.npz`` (load with ``numpy.load(path, allow_pickle=False)``): ``images`` int16 HU (N, 64, 64),
  ``nodule_mask``, ``spicule_mask``, ``calcification_mask`` bool (N, 64, 64; a set of real images has only
  ``nodule_mask``, the readers' consensus, since nothing else is known of them), ``label`` int8 (1 malignant,
  0 benign), ``nodule`` int32 (row of ``nodules.json``), ``split`` int8 (0 train, 1 validation, 2 test),
  ``center_lps`` float32 (N, 3);
- ``nodules.json``: one row per nodule (LIDC record, split, first patch row and patch count);
- ``lung_patches.npz`` (where the set has them, ``data.lung_patches``): nodule-free lung patches of the same
  scans, ``images`` int16 HU, ``split`` int8 (the patient's), ``center_lps`` float32 (N, 3), ``patient_id`` str;
- ``dataset.json``: how it was made and the counts.
"""
from __future__ import annotations

import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from xaiexplain.data import lidc
from xaiexplain.data.lung_patches import LUNG_PATCH_FILE
from xaiexplain.errors import XAIExplainError
from xaiexplain.io.files import output_set
from xaiexplain.io.json_input import read_json

PATCH_SET_MANIFEST = "dataset.json"
SPLITS = ("train", "validation", "test")
SPLIT_FRACTIONS = (0.70, 0.15, 0.15)
# Train / validation / test fractions by name; paper 1 trains on 70 % and tests on 30 %, with no validation.
PAPER_1_SPLIT = "70/30"
SPLIT_PROTOCOLS = {"70/15/15": SPLIT_FRACTIONS, PAPER_1_SPLIT: (0.70, 0.0, 0.30)}
SLICE_CHOICES = ("all", "central")
# What an evaluation runs on: a split of the set's own 70 / 15 / 15, or the test part of paper 1's 70 / 30
EVALUATION_SPLITS = SPLITS + (PAPER_1_SPLIT,)


def check_seed(seed) -> int:
    """``seed`` if it is a seed of the split (a whole number from 0, as numpy's generators take); else
    XAIExplainError, so that a command refuses it before it reads anything."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise XAIExplainError(f"the seed {seed!r} is not a whole number from 0")
    return int(seed)


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


def full_set_split(seed: int, fractions=SPLIT_FRACTIONS) -> dict[str, str]:
    """Patient id -> split of every labelled LIDC patient: the split of the full patch set with ``seed``."""
    return split_patients([patient for patient, _ in labelled_scans()], seed, fractions)


def held_out_patients(seed: int = 0, split: str = "test") -> list[str]:
    """The patients of one split of the full patch set made with ``seed``."""
    return sorted(patient for patient, s in full_set_split(seed).items() if s == split)


class PatchSetRows:
    """A patch set assembled nodule by nodule: its arrays (``label``, ``nodule``, ``split`` added to those
    given per nodule) and its ``nodules.json`` rows (the LIDC record, split, first patch row, patch count)."""

    def __init__(self):
        self.parts = defaultdict(list)
        self.rows: list[dict] = []
        self.patches = 0

    def add(self, record: dict, split: str, patches: dict[str, np.ndarray]) -> None:
        count = len(patches["images"])
        for name, value in patches.items():
            self.parts[name].append(value)
        self.parts["label"].append(np.full(count, record["label"] == "malignant", np.int8))
        self.parts["nodule"].append(np.full(count, len(self.rows), np.int32))
        self.parts["split"].append(np.full(count, SPLITS.index(split), np.int8))
        self.rows.append({**record, "split": split, "first_patch": self.patches, "patch_count": count})
        self.patches += count

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: np.concatenate(parts) for name, parts in self.parts.items()}

    def counts(self) -> dict:
        """Nodules and patches per split and label, as ``dataset.json`` lists them."""
        return {split: {label: {"nodules": sum(r["split"] == split and r["label"] == label for r in self.rows),
                                "patches": sum(r["patch_count"] for r in self.rows
                                               if r["split"] == split and r["label"] == label)}
                        for label in ("benign", "malignant")}
                for split in SPLITS}


def check_patch_shape(images: np.ndarray, shape, patch_set, reader: str) -> None:
    """One sentence unless the patch set's ``images`` are patches of ``shape``, the patches ``reader`` reads."""
    if tuple(images.shape[1:]) != tuple(shape):
        raise XAIExplainError(f"the patch set {patch_set} holds patches of {' x '.join(map(str, images.shape[1:]))} "
                              f"px, but {reader} reads {' x '.join(map(str, shape))}")


def protocol_array_names(slices: str) -> tuple[str, ...]:
    """The arrays ``select_protocol`` reads for ``slices``."""
    return ("split", "nodule") + (("center_lps",) if slices == "central" else ())


def select_protocol(arrays: dict[str, np.ndarray], nodules: list[dict], summary: dict, slices: str = "all",
                    split: str = "70/15/15") -> tuple[np.ndarray, np.ndarray]:
    """The patch rows a training protocol uses and their split (indices into ``SPLITS``).

    ``slices``: ``all`` (every slice through each nodule) or ``central`` (paper 1: one patch per nodule, the
    slice nearest its midpoint). ``split``: ``70/15/15`` (the set's own) or ``70/30`` (paper 1: train and
    test, no validation), cut from the full set's seeded order of patients."""
    if slices not in SLICE_CHOICES:
        raise XAIExplainError(f"slices {slices!r} is not one of {', '.join(SLICE_CHOICES)}")
    if split not in SPLIT_PROTOCOLS:
        raise XAIExplainError(f"split {split!r} is not one of {', '.join(SPLIT_PROTOCOLS)}")
    if slices == "all":
        chosen = np.arange(len(arrays["split"]))
    elif "center_lps" not in arrays or any("centroid_lps" not in row for row in nodules):
        raise XAIExplainError("the central slice of each nodule needs a nodule patch set (with center_lps), "
                              "such as `xaiexplain phantom --patches` or `xaiexplain dataset` write")
    else:
        chosen = np.array([row["first_patch"] + int(np.argmin(np.abs(
            arrays["center_lps"][row["first_patch"]:row["first_patch"] + row["patch_count"], 2]
            - row["centroid_lps"][2]))) for row in nodules], dtype=np.int64)
    if split == "70/15/15":
        return chosen, arrays["split"][chosen]
    split_of = full_set_split(int(summary["seed"]), SPLIT_PROTOCOLS[split])
    patients = [row.get("patient_id") for row in nodules]
    unknown = sorted({str(p) for p in patients if p not in split_of})
    if unknown:
        raise XAIExplainError(f"the {split} split is one of LIDC patients, and this patch set holds nodules of "
                              f"others ({unknown[0]}{' and more' if len(unknown) > 1 else ''})")
    by_nodule = np.array([SPLITS.index(split_of[p]) for p in patients], dtype=np.int8)
    return chosen, by_nodule[arrays["nodule"][chosen]]


def write_patch_set(out_dir, arrays: dict[str, np.ndarray], nodules: list[dict], summary: dict,
                    lung_arrays: dict[str, np.ndarray] | None = None) -> None:
    """Write a patch set folder (one output set) in the format ``load_patch_set`` reads."""
    with output_set(out_dir, PATCH_SET_MANIFEST) as written:
        write_patch_set_files(written, arrays, nodules, summary, lung_arrays)


def write_patch_set_files(written, arrays, nodules, summary, lung_arrays=None) -> None:
    np.savez_compressed(written.path("patches.npz"), **arrays)
    if lung_arrays is not None:
        np.savez_compressed(written.path(LUNG_PATCH_FILE), **lung_arrays)
    written.write_json("nodules.json", nodules)
    written.manifest_data = summary


def load_patch_set(folder, names=None) -> tuple[dict[str, np.ndarray], list[dict], dict]:
    """Arrays, nodule rows and summary of a patch set (no pickles); ``names``: only these arrays (each is
    decompressed only when asked for, so a training run need not hold the masks)."""
    folder = Path(folder)
    files = [folder / "patches.npz", folder / "nodules.json", folder / PATCH_SET_MANIFEST]
    if not all(f.is_file() for f in files):
        raise XAIExplainError(f"{folder} is not a patch set: it lacks patches.npz, nodules.json or dataset.json "
                              "(make one with `xaiexplain phantom --patches --out FOLDER`)")
    try:
        with np.load(files[0], allow_pickle=False) as data:
            missing = sorted(set(names or ()) - set(data.files))
            if missing:
                raise ValueError(f"it has no array {missing[0]}")
            arrays = {name: data[name] for name in (names or data.files)}
        return arrays, read_json(files[1]), read_json(files[2])
    except (ValueError, OSError, zipfile.BadZipFile) as error:
        raise XAIExplainError(f"the patch set in {folder} cannot be read ({error})") from None


def load_lung_patches(folder) -> dict[str, np.ndarray] | None:
    """The nodule-free lung patches of a patch set (``images``, ``split``, ``center_lps``, ``patient_id``), or
    None for a set made without them."""
    path = Path(folder) / LUNG_PATCH_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (ValueError, OSError, zipfile.BadZipFile) as error:
        raise XAIExplainError(f"the lung patches of the patch set in {folder} cannot be read ({error})") from None


def lung_patch_split(lung: dict[str, np.ndarray], summary: dict, split: str = "70/15/15") -> np.ndarray:
    """The split (indices into ``SPLITS``) of each lung patch under a training protocol's ``split``: the set's
    own, or paper 1's 70 / 30 cut from the full set's seeded order of patients, as for the nodules."""
    if split == "70/15/15":
        return lung["split"]
    if split not in SPLIT_PROTOCOLS:
        raise XAIExplainError(f"split {split!r} is not one of {', '.join(SPLIT_PROTOCOLS)}")
    split_of = full_set_split(int(summary["seed"]), SPLIT_PROTOCOLS[split])
    return np.array([SPLITS.index(split_of[str(p)]) for p in lung["patient_id"]], dtype=np.int8)
