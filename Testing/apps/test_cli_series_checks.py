"""The command line on series whose headers or values are wrong (issue 23): one sentence, exit 2 (or the
series' line in an archive's summary), nothing written, the same sentence from explain and dataset."""
import json
import shutil

import pydicom
from conftest import TREE_PHANTOM_PATIENTS
from helpers import CENTRE, assert_one_line_error, set_header_text, small_series, xaiexplain

PATIENT = TREE_PHANTOM_PATIENTS[0]


def stored_as_hu_plus_1024(folder):
    for path in folder.rglob("*.dcm"):
        dataset = pydicom.dcmread(path)
        if dataset.Modality == "CT":
            dataset.RescaleIntercept = 0
            dataset.save_as(path)


def patient_tree(lidc_download_tree, tmp_path):
    """A download tree of PATIENT alone, copied, and its CT files sorted by z."""
    tree = tmp_path / "tree"
    shutil.copytree(lidc_download_tree / PATIENT, tree / PATIENT)
    files = [f for f in (tree / PATIENT).rglob("*.dcm") if pydicom.dcmread(f, stop_before_pixels=True).Modality == "CT"]
    return tree, sorted(files, key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))


def test_explain_refuses_an_instance_number_that_is_no_number(tmp_path):
    folder, _ = small_series(tmp_path / "in")
    set_header_text(folder / "000003.dcm", (0x0020, 0x0013), "abc")
    result = xaiexplain("explain", "--series", folder, "--point", CENTRE, "--method", "saliency", "--out",
                        tmp_path / "out")
    assert_one_line_error(result, "000003.dcm", "holds InstanceNumber abc, which is not a whole number")
    assert result.returncode == 2 and not (tmp_path / "out").exists()


def test_explain_refuses_implausible_ct_numbers_unless_allowed(tmp_path):
    folder, _ = small_series(tmp_path / "in")
    stored_as_hu_plus_1024(folder)
    arguments = ["explain", "--series", folder, "--point", CENTRE, "--method", "saliency", "--out", tmp_path / "out"]
    result = xaiexplain(*arguments)
    assert_one_line_error(result, "does not hold plausible CT numbers", "median is 174 HU", "--allow-implausible-hu")
    assert result.returncode == 2 and not (tmp_path / "out").exists()
    allowed = xaiexplain(*arguments, "--allow-implausible-hu")
    assert allowed.returncode == 0, allowed.stderr


def test_lidc_on_a_sagittal_series_says_that_it_is_not_axial(lidc_download_tree, tmp_path):
    _, files = patient_tree(lidc_download_tree, tmp_path)
    for k, path in enumerate(files):  # the same pixels as sagittal slices, their origins along the normal (-x)
        dataset = pydicom.dcmread(path)
        dataset.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        dataset.ImagePositionPatient = [-5.0 * k, -197.6, -80.0]
        dataset.save_as(path)
    result = xaiexplain("explain", "--series", files[0].parent, "--lidc", "--method", "saliency", "--out",
                        tmp_path / "out")
    assert_one_line_error(result, "the series is not axial with the patient's axes (ImageOrientationPatient 0, 1, 0, "
                                  "0, 0, -1), as the LIDC readers' contours assume")
    assert "outside the image" not in result.stderr and not (tmp_path / "out").exists()


def test_a_bad_header_in_an_archive_is_that_series_failure(lidc_download_tree, tmp_path):
    tree, files = patient_tree(lidc_download_tree, tmp_path)
    set_header_text(files[3], (0x0020, 0x0013), "abc")
    result = xaiexplain("explain", "--lidc-root", tree, "--method", "saliency", "--out", tmp_path / "out")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [failed] = json.loads((tmp_path / "out" / "archive.json").read_text())["series"]
    assert failed["status"] == "failed" and "holds InstanceNumber abc, which is not a whole number" in failed["reason"]
    assert failed["reason"] in result.stderr


def test_dataset_refuses_implausible_ct_numbers_unless_allowed(lidc_download_tree, tmp_path):
    tree, _ = patient_tree(lidc_download_tree, tmp_path)
    stored_as_hu_plus_1024(tree)
    result = xaiexplain("dataset", "--lidc-root", tree, "--out", tmp_path / "set")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]  # after the progress bars
    assert "1 scans refused" in error and "does not hold plausible CT numbers" in error
    assert "--allow-implausible-hu" in error
    allowed = xaiexplain("dataset", "--lidc-root", tree, "--out", tmp_path / "set", "--allow-implausible-hu")
    assert allowed.returncode == 0, allowed.stderr
    assert "1 built, 0 refused" in allowed.stdout and "(0 kept from an earlier run)" in allowed.stdout


def test_the_batch_script_refuses_implausible_ct_numbers_unless_allowed(tmp_path):
    """The Slicer batch script reads series as explain does, so it refuses HU + 1024 too; it has the same
    --allow-implausible-hu (before: no way through)."""
    import subprocess
    import sys
    from pathlib import Path

    batch = Path(__file__).resolve().parents[2] / "XAIExplain" / "Scripts" / "XAIExplainBatch.py"
    folder, _ = small_series(tmp_path / "in")
    stored_as_hu_plus_1024(folder)
    arguments = [sys.executable, str(batch), "--series", str(folder), "--point", CENTRE, "--method", "saliency"]
    refused = subprocess.run(arguments + ["--out", str(tmp_path / "refused")], capture_output=True, text=True)
    assert refused.returncode == 1 and "--allow-implausible-hu" in refused.stdout + refused.stderr
    allowed = subprocess.run(arguments + ["--out", str(tmp_path / "allowed"), "--allow-implausible-hu"],
                             capture_output=True, text=True)
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert list((tmp_path / "allowed").glob("*/scene.mrml"))
