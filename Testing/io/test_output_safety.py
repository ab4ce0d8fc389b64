"""Never lose a user's data: every command that writes keeps what it did not create, output sets are
whole or absent, names made from headers are safe and unique, and bad input is one sentence with exit 2."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from helpers import CENTRE, REPOSITORY, assert_one_line_error, small_series, xaiexplain
from xaiexplain.errors import XAIExplainError
from xaiexplain.io import files
from xaiexplain.io.dicom import write_dicom_series
from xaiexplain.models.bundles import load_bundle, save_bundle

BATCH = REPOSITORY / "XAIExplain" / "Scripts" / "XAIExplainBatch.py"


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes, hidden ones included."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def keep_file(folder: Path, name="keep.txt") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("the user's own file")
    return folder / name


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if "xaiexplain-partial" in p.name]


# -- the output-set rules, on their own ----------------------------------------------------------------

def test_output_set_into_an_existing_folder_keeps_other_files_and_replaces_only_its_own(tmp_path):
    out = tmp_path / "out"
    keep = keep_file(out)
    with files.output_set(out, "manifest.json") as written:
        written.path("a.txt").write_text("first a")
        written.path("sub/b.txt").write_text("first b")
        written.manifest_data = {"run": 1}
    with files.output_set(out, "manifest.json") as written:
        written.path("a.txt").write_text("second a")
        written.manifest_data = {"run": 2}
    assert keep.read_text() == "the user's own file"
    assert (out / "a.txt").read_text() == "second a"
    assert not (out / "sub" / "b.txt").exists()  # listed by the earlier manifest, not by this one: stale
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == {"run": 2, "output_files": ["a.txt"]}
    assert temporaries(tmp_path) == []


def test_output_set_refuses_to_replace_a_file_it_did_not_write(tmp_path):
    out = tmp_path / "out"
    keep_file(out, "a.txt")
    with pytest.raises(XAIExplainError, match="already holds a.txt"):
        with files.output_set(out, "manifest.json") as written:
            written.path("a.txt").write_text("mine")
    assert (out / "a.txt").read_text() == "the user's own file"
    keep_file(out, "manifest.json")  # a user's file under the manifest's name: refused before any work
    with pytest.raises(XAIExplainError, match="did not write"):
        with files.output_set(out, "manifest.json"):
            pytest.fail("the body must not run")
    assert temporaries(tmp_path) == []


def test_a_failed_set_leaves_nothing_and_a_new_folder_appears_whole(tmp_path):
    out = tmp_path / "new"
    with pytest.raises(RuntimeError):
        with files.output_set(out, "manifest.json") as written:
            written.path("a.txt").write_text("half")
            raise RuntimeError("the computation failed")
    assert list(tmp_path.iterdir()) == []
    with files.output_set(out, "manifest.json") as written:
        assert not out.exists()  # written beside, renamed in one step
        written.path("a.txt").write_text("whole")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "manifest.json"]


def test_stale_temporaries_are_removed_only_when_their_process_is_dead(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        from xaiexplain.io import temporaries

        host = temporaries._host()
        left = tmp_path / f".out.xaiexplain-partial~{host}~{dead_pid}~ab12"
        running = tmp_path / f".out.xaiexplain-partial~{host}~{alive.pid}~cd34"
        other_host = tmp_path / f".out.xaiexplain-partial~elsewhere~{dead_pid}~ef56"
        users = tmp_path / ".out.partial"
        for folder in (left, running, other_host, users):
            keep_file(folder)
        with files.output_set(tmp_path / "out", "manifest.json") as written:
            written.path("a.txt").write_text("x")
        assert not left.exists()
        assert running.exists() and other_host.exists() and users.exists()
    finally:
        alive.kill()


@pytest.mark.parametrize("text, expected", [("..", "unnamed"), (".", "unnamed"), ("../../etc", "etc"),
                                            ("a/b\\c", "a_b_c"), ("x\x1b[31m\n", "x_31m"), ("", "unnamed"),
                                            ("LIDC-IDRI-0078", "LIDC-IDRI-0078")])
def test_names_from_headers_are_safe(text, expected):
    assert files.safe_name(text) == expected


# -- each writing command keeps the files of an existing --out ------------------------------------------

def test_phantom_patches_into_an_existing_folder_and_into_the_current_folder(tmp_path):
    out = tmp_path / "d"
    keep = keep_file(out)
    result = xaiexplain("phantom", "--patches", "--scans", "LIDC-IDRI-0078", "--out", out)
    assert result.returncode == 0, result.stderr
    assert keep.read_text() == "the user's own file"
    assert {"patches.npz", "nodules.json", "dataset.json"} <= {p.name for p in out.iterdir()}
    here = tmp_path / "here"
    keep_here = keep_file(here)
    result = xaiexplain("phantom", "--patches", "--scans", "LIDC-IDRI-0078", "--out", ".", cwd=here)
    assert result.returncode == 0, result.stderr
    assert keep_here.read_text() == "the user's own file"
    assert (here / "dataset.json").exists() and temporaries(tmp_path) == []


def test_explain_keeps_other_files_and_a_rerun_removes_only_its_own_stale_files(tmp_path):
    series, _ = small_series(tmp_path / "series")
    out = tmp_path / "out"
    keep = keep_file(out)
    first = xaiexplain("explain", "--series", series, "--point", CENTRE, "--method", "saliency",
                       "--method", "grad-cam", "--out", out)
    assert first.returncode == 0, first.stderr
    assert (out / "relevance_grad-cam.nrrd").exists()
    second = xaiexplain("explain", "--series", series, "--point", CENTRE, "--method", "saliency", "--out", out)
    assert second.returncode == 0, second.stderr
    names = {p.name for p in out.iterdir()}
    manifest = json.loads((out / "nodules.json").read_text())
    assert names == {"keep.txt", "nodules.json", *manifest["output_files"]}
    assert "relevance_grad-cam.nrrd" not in names  # the earlier run's, no longer listed
    assert keep.read_text() == "the user's own file"


def test_out_naming_a_file_or_below_a_file_fails_before_computing(tmp_path, monkeypatch):
    from xaiexplain.apps import cli
    from xaiexplain.io import explanation_files

    series, _ = small_series(tmp_path / "series")
    a_file = keep_file(tmp_path, "not-a-folder")
    result = xaiexplain("explain", "--series", series, "--point", CENTRE, "--method", "saliency", "--out", a_file)
    assert_one_line_error(result, "not a folder")
    assert result.returncode == 2 and a_file.read_text() == "the user's own file"

    def must_not_compute(*args, **kwargs):
        raise AssertionError("computed before checking that --out can be written")

    monkeypatch.setattr(explanation_files, "explain_series", must_not_compute)
    for out in (a_file, a_file / "below"):
        assert cli.main(["explain", "--series", str(series), "--point", CENTRE, "--method", "saliency",
                         "--out", str(out)]) == 2


def test_save_bundle_and_checkpoints_keep_the_users_files(tmp_path):
    from xaiexplain_train import checkpoints

    bundle = load_bundle()
    folder = tmp_path / "bundle"
    keep = keep_file(folder)
    save_bundle(folder, bundle.model, {k: v for k, v in bundle.config.items() if k not in ("format", "format_version")})
    save_bundle(folder, bundle.model, {k: v for k, v in bundle.config.items() if k not in ("format", "format_version")})
    assert keep.read_text() == "the user's own file"
    assert load_bundle(folder).threshold == bundle.threshold
    checkpoint = tmp_path / "checkpoints"
    keep = keep_file(checkpoint)
    optimiser = torch.optim.SGD(bundle.model.parameters(), lr=0.1)
    for epoch in range(2):
        checkpoints.save_checkpoint(checkpoint, {"model": bundle.model.state_dict()}, {"optimiser": optimiser},
                                    {"epoch": epoch})
    assert keep.read_text() == "the user's own file"
    _, info = checkpoints.load_checkpoint(checkpoint, ["model"], {"optimiser": optimiser})
    assert info["epoch"] == 1


def test_training_refuses_an_out_it_cannot_write_before_training(tmp_path, tiny_patch_set):
    from xaiexplain_train.cli import main

    a_file = keep_file(tmp_path, "bundle")
    started = time.time()
    assert main(["classifier", "--data", str(tiny_patch_set), "--out", str(a_file), "--epochs", "50"]) == 2
    assert time.time() - started < 20 and a_file.read_text() == "the user's own file"


# -- the phantom and download trees ---------------------------------------------------------------------

def test_phantom_refuses_a_download_tree_and_replaces_only_its_own_series(tmp_path):
    tree = tmp_path / "LIDC-IDRI"
    real, geometry = small_series(tree / "real")
    for path in real.iterdir():  # a scanner's series, not the phantom's
        header = pydicom.dcmread(path)
        header.Manufacturer = "GE MEDICAL SYSTEMS"
        header.save_as(path)
    keep_file(real, "069.xml")
    before = snapshot(tree)
    result = xaiexplain("phantom", "--scans", "LIDC-IDRI-0078", "--out", tree)
    assert_one_line_error(result, "did not write", "download tree")
    assert result.returncode == 2 and snapshot(tree) == before
    # over a series the phantom wrote before: replaced, and files beside it survive
    root = tmp_path / "phantoms"
    folder, geometry = small_series(root)
    keep = keep_file(folder, "notes.txt")
    write_dicom_series(np.zeros(geometry.shape, np.int16), geometry, root)
    assert keep.read_text() == "the user's own file"
    assert pydicom.dcmread(folder / "000001.dcm").pixel_array.max() == 1024  # HU 0, the new series
    # over the scanner's series with the same UIDs: refused, nothing changed
    with pytest.raises(XAIExplainError, match="already holds"):
        write_dicom_series(np.zeros(geometry.shape, np.int16), geometry, tree / "real")
    assert snapshot(tree) == before


# -- one-sentence errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("arguments, phrase", [
    (["--point=nan,0,1500"], "finite"),
    (["--point", CENTRE, "--half-height-mm", "-2"], "positive"),
    (["--point", CENTRE, "--half-height-mm", "nan"], "positive"),
])
def test_bad_values_are_one_sentence_with_exit_2(tmp_path, arguments, phrase):
    series, _ = small_series(tmp_path / "series")
    result = xaiexplain("explain", "--series", series, *arguments, "--method", "saliency", "--out", tmp_path / "o")
    assert_one_line_error(result, phrase)
    assert result.returncode == 2 and not (tmp_path / "o").exists()


def test_bad_values_through_the_python_api(tmp_path):
    from xaiexplain.data.nodule_sites import point_sites
    from xaiexplain.data.series import read_series

    series, _ = small_series(tmp_path / "series")
    image = read_series(series).image
    with pytest.raises(XAIExplainError, match="finite"):
        point_sites(image, [(float("nan"), 0.0, -95.0)])
    with pytest.raises(XAIExplainError, match="positive"):
        point_sites(image, [(25.2, 25.2, -95.0)], half_height_mm=-1.0)


def test_a_series_with_missing_slices_is_refused_unless_allowed(tmp_path):
    from xaiexplain.data.geometry import ScanGeometry

    z = [-100.0 + 2.0 * k for k in range(10)]
    del z[4:6]  # two slices missing
    geometry = ScanGeometry(patient_id="GAPS", study_instance_uid="1.2.3", series_instance_uid="1.2.3.4",
                            pixel_spacing=0.8, slice_thickness=2.0, slice_z=tuple(z), rows=64, columns=64)
    hu = np.full(geometry.shape, -850, np.int16)
    hu[:, 28:36, 28:36] = 40
    series = write_dicom_series(hu, geometry, tmp_path / "series")
    result = xaiexplain("explain", "--series", series, "--point", CENTRE, "--method", "saliency",
                        "--out", tmp_path / "o")
    assert_one_line_error(result, "--allow-gaps", "-94")
    assert not (tmp_path / "o").exists()
    result = xaiexplain("explain", "--series", series, "--point", CENTRE, "--method", "saliency", "--allow-gaps",
                        "--out", tmp_path / "o")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "o" / "nodules.json").read_text())["slice_gaps_mm"] == [[-94.0, -88.0]]


# -- kill -9 and signals during writing ----------------------------------------------------------------

def _explain_process(series, out, *methods, extra=()):
    arguments = [a for m in methods for a in ("--method", m)] + list(extra)
    # SIGINT as a terminal delivers it: a test run started in the background inherits it ignored
    return subprocess.Popen([sys.executable, "-m", "xaiexplain.apps.cli", "explain", "--series", str(series), "--point",
                             CENTRE, *arguments, "--out", str(out)], stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_staged_file(folder: Path, process, timeout=120.0) -> None:
    """Until the run has written a file of its set into its staging folder in ``folder`` (it is writing)."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if any(p.is_file() for t in temporaries(folder) for p in t.rglob("*")):
            return
        time.sleep(0.002)
    pytest.fail(f"the run never wrote a staged file: {process.poll()}")


def _wait_for_staging(folder: Path, process, timeout=120.0) -> None:
    """Until the run has made its staging folder in ``folder``: it checked --out and is computing."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if temporaries(folder):
            return
        time.sleep(0.01)
    pytest.fail(f"the run never made its staging folder: {process.poll()}")


def test_kill_9_while_writing_leaves_the_earlier_set_or_nothing(tmp_path):
    series, _ = small_series(tmp_path / "series")
    out = tmp_path / "out"
    process = _explain_process(series, out, "saliency", "grad-cam")
    _wait_for_staged_file(tmp_path, process)
    process.kill()
    process.wait()
    assert not out.exists()  # nothing under the final name
    earlier = xaiexplain("explain", "--series", series, "--point", CENTRE, "--method", "saliency", "--out", out)
    assert earlier.returncode == 0, earlier.stderr
    assert temporaries(tmp_path) == []  # the dead run's temporary was removed by the next run
    before = snapshot(out)
    process = _explain_process(series, out, "grad-cam", "lrp")
    _wait_for_staged_file(out, process)
    process.kill()
    process.wait()
    after = {name: data for name, data in snapshot(out).items() if "xaiexplain-partial" not in name}
    assert after == before  # the complete earlier output, untouched


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_computing_leaves_nothing_and_says_so(tmp_path, signum, status):
    series, _ = small_series(tmp_path / "series")
    out = tmp_path / "out"
    keep = keep_file(out)
    # integrated gradients of 1000 steps, one image a pass: seconds of computing, long after the staging folder
    # appears (the option's range ends at 1000 steps)
    process = _explain_process(series, out, "integrated-gradients",
                               extra=("--option", "steps=1000", "--option", "internal_batch_size=1"))
    _wait_for_staging(out, process)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == status, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    assert snapshot(out) == {"keep.txt": keep.read_bytes()}


# -- the batch: names from headers -----------------------------------------------------------------------

def _retag(folder: Path, **values) -> None:
    for path in folder.iterdir():
        header = pydicom.dcmread(path)
        for key, value in values.items():
            setattr(header, key, value)
        header.save_as(path)


def _batch(*arguments, cwd=None):
    return subprocess.run([sys.executable, str(BATCH), *map(str, arguments), "--point", CENTRE],
                          capture_output=True, text=True, cwd=cwd)


def test_batch_names_from_crafted_headers_keep_everything_inside_and_outside_out(tmp_path):
    dot_dot, _ = small_series(tmp_path / "in1", series_uid="1.2.826.0.1.3680043.8.498.11")
    _retag(dot_dot, PatientID="..", SeriesInstanceUID="")
    dot, _ = small_series(tmp_path / "in2", series_uid="1.2.826.0.1.3680043.8.498.12")
    _retag(dot, PatientID=".", SeriesInstanceUID="!!/..")
    work = tmp_path / "work"
    outside = keep_file(work)
    out = work / "out"
    inside = keep_file(out)
    result = _batch("--series", dot_dot, dot, "--out", out)
    assert result.returncode == 0, result.stderr
    assert outside.read_text() == inside.read_text() == "the user's own file"
    written = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert len(written) == 2 and all(name.startswith("series_uid-") for name in written), written
    assert all((out / name / "scene.mrml").is_file() for name in written)


def test_batch_names_are_unique_by_the_whole_uid_and_a_duplicate_fails_alone(tmp_path):
    tail = "4.5.6.7.8.901234567890"
    first, _ = small_series(tmp_path / "a", series_uid=f"1.2.826.0.1.3680043.8.498.1.{tail}")
    second, _ = small_series(tmp_path / "b", series_uid=f"1.2.826.0.1.3680043.8.498.2.{tail}")
    copy, _ = small_series(tmp_path / "c", series_uid=f"1.2.826.0.1.3680043.8.498.1.{tail}")
    out = tmp_path / "out"
    result = _batch("--series", first, second, copy, "--out", out)
    assert result.returncode == 1
    assert sorted(p.name for p in out.iterdir()) == [f"PHANTOM-1_1.2.826.0.1.3680043.8.498.{n}.{tail}" for n in (1, 2)]
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"{copy}: ") and "same series" in line and str(first) in line


def test_batch_scene_refers_to_its_files_relative_to_itself_and_survives_a_move(tmp_path):
    import xaiexplain.slicer as xs

    series, _ = small_series(tmp_path / "series")
    work = tmp_path / "work"
    work.mkdir()
    result = _batch("--series", series, "--out", "relative-out", cwd=work)
    assert result.returncode == 0, result.stderr
    [folder] = (work / "relative-out").iterdir()
    text = (folder / "scene.mrml").read_text()
    assert "../" not in text and str(work) not in text
    moved = tmp_path / "moved" / "renamed"
    moved.parent.mkdir()
    folder.rename(moved)
    scene = xs.load_scene(moved / "scene.mrml")
    volumes = [scene.GetNthNodeByClass(n, "vtkMRMLScalarVolumeNode")
               for n in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]
    assert volumes and all(v.GetImageData() is not None for v in volumes)


def test_batch_goes_on_after_a_damaged_series(tmp_path):
    good, _ = small_series(tmp_path / "good")
    cut, _ = small_series(tmp_path / "cut", series_uid="1.2.826.0.1.3680043.8.498.77")
    victim = sorted(cut.iterdir())[2]
    victim.write_bytes(victim.read_bytes()[:300])
    result = _batch("--series", cut, good, "--out", tmp_path / "out")
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"{cut}: ")
    assert len(list((tmp_path / "out").iterdir())) == 1


def test_batch_with_a_bad_bundle_fails_each_series_with_one_line_and_writes_nothing(tmp_path):
    import shutil

    from xaiexplain.models.bundles import BUNDLED

    first, _ = small_series(tmp_path / "a", series_uid="1.2.826.0.1.3680043.8.498.21")
    second, _ = small_series(tmp_path / "b", series_uid="1.2.826.0.1.3680043.8.498.22")
    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLED / "demo-classifier", bundle)
    (bundle / "config.json").write_text("[]")
    result = _batch("--series", first, second, "--out", tmp_path / "out", "--model", bundle)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert [line.split(": ")[0] for line in lines] == [str(first), str(second)]
    assert all("config.json" in line for line in lines)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
