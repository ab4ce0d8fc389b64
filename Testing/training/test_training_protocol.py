"""Paper 1's protocol as options of a training run (one patch per nodule, a 70 / 30 split), and a training
process that holds only the int16 patches it needs."""
import json
import subprocess
import sys

import numpy as np
import pytest
from xaiexplain.data.patch_set import SPLIT_PROTOCOLS, SPLITS, full_set_split, load_patch_set, select_protocol
from xaiexplain.data.sources.phantom_patches import render_patch_set
from xaiexplain_train.classifier import PatchImages, normalise

# Training patients of both splits, and, in paper 1's 70 / 30 split, test patients with both labels.
PATIENTS = ["LIDC-IDRI-0078", "LIDC-IDRI-0012", "LIDC-IDRI-0013", "LIDC-IDRI-0974"]


@pytest.fixture(scope="module")
def protocol_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("protocol") / "set"
    render_patch_set(folder, seed=0, patient_ids=PATIENTS, progress=False)
    return folder


def test_the_70_30_split_keeps_the_training_patients_and_has_no_validation():
    usual, paper = full_set_split(0), full_set_split(0, SPLIT_PROTOCOLS["70/30"])
    assert usual.keys() == paper.keys()
    assert {p for p, s in usual.items() if s == "train"} == {p for p, s in paper.items() if s == "train"}
    assert {p for p, s in paper.items() if s == "test"} == {p for p, s in usual.items() if s != "train"}
    assert abs(sum(s == "test" for s in paper.values()) / len(paper) - 0.30) < 0.01


def test_central_slices_give_one_patch_per_nodule_through_its_midpoint(protocol_set):
    arrays, nodules, summary = load_patch_set(protocol_set)
    chosen, split = select_protocol(arrays, nodules, summary, slices="central", split="70/30")
    assert len(chosen) == len(nodules) and np.array_equal(arrays["nodule"][chosen], np.arange(len(nodules)))
    paper = full_set_split(0, SPLIT_PROTOCOLS["70/30"])
    for row, index, s in zip(nodules, chosen, split):
        own = arrays["center_lps"][row["first_patch"]:row["first_patch"] + row["patch_count"], 2]
        distance = np.abs(own - row["centroid_lps"][2])
        assert abs(arrays["center_lps"][index, 2] - row["centroid_lps"][2]) == distance.min()
        assert SPLITS[s] == paper[row["patient_id"]]
    every, usual = select_protocol(arrays, nodules, summary)
    assert np.array_equal(every, np.arange(len(arrays["label"]))) and np.array_equal(usual, arrays["split"])


def test_a_process_holds_only_the_int16_patches_it_needs(protocol_set):
    arrays, _, _ = load_patch_set(protocol_set, ("images", "split"))
    assert set(arrays) == {"images", "split"}  # no masks decompressed
    train = np.flatnonzero(arrays["split"] == 0)
    held = PatchImages(arrays["images"], train)
    assert held.images.dtype == np.int16 and len(held.images) == len(train) < len(arrays["images"])
    batch = train[[3, 0, 5]]
    np.testing.assert_array_equal(held[batch].numpy(), normalise(arrays["images"][batch]).numpy())


def test_classifier_in_paper_1s_protocol(protocol_set, tmp_path):
    command = [sys.executable, "-m", "xaiexplain_train.cli", "classifier", "--device", "cpu", "--bootstrap", "20",
               "--widths", "8,16,16,32", "--batch-size", "8", "--epochs", "2", "--slices", "central",
               "--split", "70/30", "--data", str(protocol_set), "--out", str(tmp_path / "paper1")]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((tmp_path / "paper1" / "config.json").read_text())
    provenance, metrics = config["provenance"], config["metrics"]
    assert provenance["protocol"] == {"slices": "central", "split": "70/30",
                                      "model_selection": "last epoch (no validation split)"}
    assert provenance["best_epoch"] == 2 and config["decision_threshold"] == 0.5
    assert metrics["validation_auc"] is None
    # one patch per nodule: the test patches are the test nodules
    assert metrics["test_counts"]["patches"] == metrics["test_counts"]["nodules"] == 3
