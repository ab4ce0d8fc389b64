"""`xaiexplain explain --lidc-root` when things go wrong: one bad series is that series' line while the others are
written and summarised (one worker or many), a folder another command or a --point run wrote is not taken for
its own, a run writing the same series at once does not fail it, signals to the workers leave nothing behind
and stop at once, and a run that wrote nothing leaves no --out."""
import csv
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from conftest import TREE_PHANTOM_PATIENTS
from xaiexplain.apps import cli
from xaiexplain.data import lidc
from xaiexplain.io import archive_explanation, explanation_files
from xaiexplain.io.archive_explanation import explain_archive
from xaiexplain.io.explanation_files import write_series_explanation
from xaiexplain.slicer.scene_files import series_output_name

GOOD, OTHER = TREE_PHANTOM_PATIENTS  # 65 and 99 slices


def series_folder(patient_folder: Path) -> Path:
    """The folder of the patient's annotated CT series (the phantom writes <patient>/<study>/<series uid>/)."""
    [folder] = patient_folder.glob(f"*/{lidc.find_scan_by_key(patient_folder.name).series_instance_uid}")
    return folder


def output_name(patient: str) -> str:
    return series_output_name(patient, lidc.find_scan_by_key(patient).series_instance_uid)


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if "xaiexplain-partial" in p.name]


def table(out: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO((out / "nodules.csv").read_text())))


def download_of(tree: Path, folder: Path, linked=(), copied=()) -> Path:
    """A download in ``folder`` of some patients of ``tree``: linked (never changed) or copied."""
    root = folder / "LIDC-IDRI"
    root.mkdir()
    for patient in linked:
        (root / patient).symlink_to(tree / patient, target_is_directory=True)
    for patient in copied:
        shutil.copytree(tree / patient, root / patient)
    return root


@pytest.fixture(scope="module")
def two_series(lidc_download_tree, tmp_path_factory):
    return download_of(lidc_download_tree, tmp_path_factory.mktemp("two"), linked=TREE_PHANTOM_PATIENTS)


@pytest.fixture(scope="module")
def one_series(lidc_download_tree, tmp_path_factory):
    return download_of(lidc_download_tree, tmp_path_factory.mktemp("one"), linked=[GOOD])


@pytest.fixture(scope="module")
def one_bad_series(lidc_download_tree, tmp_path_factory):
    """The good series beside a copy of the other whose third slice says InstanceNumber 'abc'."""
    root = download_of(lidc_download_tree, tmp_path_factory.mktemp("bad"), linked=[GOOD], copied=[OTHER])
    victim = sorted(series_folder(root / OTHER).iterdir())[2]
    header = pydicom.dcmread(victim)
    # raw: pydicom refuses to write "abc" as an IS value, a hostile header's writer does not
    header[0x00200013] = RawDataElement(Tag(0x00200013), "IS", 4, b"abc ", 0,
                                        bool(getattr(header, "is_implicit_VR", False)), True)
    header.save_as(victim)
    return root


def _explain_cli(root, out, *extra):
    return subprocess.run([sys.executable, "-m", "xaiexplain.apps.cli", "explain", "--lidc-root", str(root),
                           "--method", "grad-cam", "--device", "cpu", "--out", str(out), *map(str, extra)],
                          capture_output=True, text=True)


# -- one bad series ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("workers", [1, 2])
def test_one_bad_series_is_its_line_and_the_others_are_written_and_summarised(one_bad_series, tmp_path, workers):
    out = tmp_path / "out"
    result = _explain_cli(one_bad_series, out, "--workers", workers)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    [line] = result.stderr.strip().splitlines()[-1:]
    assert f"failed {output_name(OTHER)}: " in line
    assert "1 series explained, 0 kept from an earlier run, 1 failed" in result.stdout
    summary = json.loads((out / "archive.json").read_text())
    assert {r["series"]: r["status"] for r in summary["series"]} == {output_name(GOOD): "explained",
                                                                     output_name(OTHER): "failed"}
    assert {row["patient_id"] for row in table(out)} == {GOOD}
    assert not (out / output_name(OTHER)).exists() and temporaries(tmp_path) == []


def test_any_error_of_one_series_is_its_line(two_series, tmp_path, monkeypatch):
    real = archive_explanation.write_series_explanation

    def a_defect_in_one_series(series, out, *args, **kwargs):
        if Path(out).name == output_name(OTHER):
            raise RuntimeError("a defect")
        return real(series, out, *args, **kwargs)

    monkeypatch.setattr(archive_explanation, "write_series_explanation", a_defect_in_one_series)
    summary = explain_archive(two_series, tmp_path / "out", ["grad-cam"], device="cpu", progress=False)
    failed = {r["series"]: r.get("reason") for r in summary["series"] if r["status"] == "failed"}
    assert failed == {output_name(OTHER): "internal error RuntimeError: a defect"}
    assert {row["patient_id"] for row in table(tmp_path / "out")} == {GOOD}
    assert json.loads((tmp_path / "out" / "archive.json").read_text())["series"] == summary["series"]


# -- folders the archive did not write --------------------------------------------------------------------

def test_a_point_explanation_in_a_series_folder_is_not_kept_as_the_archives(one_series, tmp_path):
    out = tmp_path / "out"
    [nodule, *_] = lidc.scan_nodules(GOOD)
    write_series_explanation(series_folder(one_series / GOOD), out / output_name(GOOD), ["grad-cam"],
                             points=[tuple(nodule.centroid_lps)], device="cpu")
    summary = explain_archive(one_series, out, ["grad-cam"], device="cpu", progress=False)
    assert [r["status"] for r in summary["series"]] == ["explained"]
    assert len(table(out)) == len(lidc.scan_nodules(GOOD))
    assert json.loads((out / output_name(GOOD) / "nodules.json").read_text())["nodules_from"] == "lidc"


def test_a_run_that_wrote_the_same_series_meanwhile_does_not_fail_it(one_series, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = explanation_files.explain_series
    other_run = []

    def the_other_run_finishes_first(*args, **kwargs):
        if not other_run:
            other_run.append("started")  # its own series goes straight to the real computation
            other_run[0] = explain_archive(one_series, out, ["grad-cam"], device="cpu", progress=False)
        return real(*args, **kwargs)

    monkeypatch.setattr(explanation_files, "explain_series", the_other_run_finishes_first)
    summary = explain_archive(one_series, out, ["grad-cam"], device="cpu", progress=False)
    assert [r["status"] for r in other_run[0]["series"]] == ["explained"]
    assert [r["status"] for r in summary["series"]] == ["explained"]
    assert len(table(out)) == len(lidc.scan_nodules(GOOD))
    assert json.loads((out / "archive.json").read_text())["series"] == summary["series"]
    assert temporaries(tmp_path) == []


# -- nothing left behind ----------------------------------------------------------------------------------

def test_a_full_disk_run_that_wrote_nothing_leaves_no_out(one_series, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(explanation_files, "explain_series", no_space)
    monkeypatch.setattr(archive_explanation, "summary_table", no_space)
    assert cli.main(["explain", "--lidc-root", str(one_series), "--method", "grad-cam", "--device", "cpu",
                     "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert "full" in lines[-1] and str(out) in lines[-1] and "None" not in lines[-1]
    assert list(tmp_path.iterdir()) == []


def _slow_archive_run(root, out):
    """Minutes of computing per series (integrated gradients of 1000 steps, one image a pass) in two workers, in a process
    group of its own; SIGINT as a terminal delivers it (a test run in the background inherits it ignored)."""
    def own_group_and_default_sigint():
        os.setsid()
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    return subprocess.Popen([sys.executable, "-m", "xaiexplain.apps.cli", "explain", "--lidc-root", str(root),
                             "--method", "integrated-gradients", "--option", "steps=1000", "--option",
                             "internal_batch_size=1", "--workers", "2",
                             "--device", "cpu", "--out", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, preexec_fn=own_group_and_default_sigint)


def _wait_for_both_workers(out: Path, process, timeout=180.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if len(temporaries(out)) >= 2 if out.exists() else False:
            return
        time.sleep(0.05)
    process.kill()
    pytest.fail(f"the workers never started writing: {process.poll()} {process.stderr.read()[-2000:]}")


@pytest.mark.parametrize("to_group, signum, status", [(True, signal.SIGTERM, 143), (False, signal.SIGINT, 130)])
def test_a_signal_stops_the_workers_at_once_and_leaves_nothing(two_series, tmp_path, to_group, signum, status):
    out = tmp_path / "out"
    process = _slow_archive_run(two_series, out)
    _wait_for_both_workers(out, process)
    started = time.time()
    if to_group:
        os.killpg(process.pid, signum)  # as a terminal's Ctrl-C or a scheduler's cancel reaches every process
    else:
        process.send_signal(signum)  # the main process alone
    try:
        _, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("the run did not stop within a minute of the signal")
    seconds = time.time() - started
    assert process.returncode == status, stderr[-2000:]
    assert "Traceback" not in stderr and "interrupted" in stderr
    assert seconds < 20, seconds  # not the minutes the running series would take
    assert not out.exists() and temporaries(tmp_path) == []  # nothing written: no staging folder, no empty --out
