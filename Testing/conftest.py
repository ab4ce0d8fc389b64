"""Shared test set-up: the LIDC nodule-table cache lives in the repository (reused between runs, never in
$HOME), and matplotlib draws without a display."""
import os
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
os.environ.setdefault("XAIEXPLAIN_CACHE", str(REPOSITORY / ".xaiexplain-test-cache"))
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def nodules_0078():
    """The four nodules of LIDC-IDRI-0078 with their consensus masks."""
    from xaiexplain.data import lidc

    return lidc.scan_nodules("LIDC-IDRI-0078", with_masks=True)


TINY_SET_PATIENTS = ["LIDC-IDRI-0078", "LIDC-IDRI-0001", "LIDC-IDRI-0003", "LIDC-IDRI-0005", "LIDC-IDRI-0010",
                     "LIDC-IDRI-0011", "LIDC-IDRI-0012", "LIDC-IDRI-0013", "LIDC-IDRI-0014", "LIDC-IDRI-0016"]


@pytest.fixture(scope="session")
def tiny_patch_set(tmp_path_factory):
    """A few patients' patches, split by nodule so that each split holds both labels."""
    from xaiexplain.data.patch_set import SPLITS, load_patch_set, write_patch_set
    from xaiexplain.data.sources.phantom_patches import render_patch_set

    root = tmp_path_factory.mktemp("tiny")
    render_patch_set(root / "rendered", seed=0, patient_ids=TINY_SET_PATIENTS, progress=False)
    arrays, nodules, summary = load_patch_set(root / "rendered")
    for label in ("benign", "malignant"):
        of_label = [n for n, row in enumerate(nodules) if row["label"] == label]
        assert len(of_label) >= 3, label
        for position, n in enumerate(of_label):
            split = SPLITS[position] if position < 3 else "train"
            nodules[n]["split"] = split
            rows = slice(nodules[n]["first_patch"], nodules[n]["first_patch"] + nodules[n]["patch_count"])
            arrays["split"][rows] = SPLITS.index(split)
    write_patch_set(root / "tiny", arrays, nodules, summary)
    return root / "tiny"
