"""Issue 28 inside Slicer: the panel's export (``ExportChoice``) through the worker writes the DICOM objects and
NIfTI files ``explain --format`` writes for the volume's series (the same names and UIDs) and lists them in its
results, and the DICOM objects then go into Slicer's DICOM database (a stand-in here: slicer-core has none); the
batch script writes them with ``--format``; what cannot be exported is refused in one sentence with nothing
written; on macOS DICOM output is one sentence and dcmqi is not installed."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pydicom
import pytest
from helpers import CENTRE, REPOSITORY, small_series

slicer = pytest.importorskip("slicer")
import xaiexplain.slicer as xs  # noqa: E402
from xaiexplain.apps import slicer_worker  # noqa: E402
from xaiexplain.errors import XAIExplainError  # noqa: E402
from xaiexplain.slicer import environment, job_files  # noqa: E402
from xaiexplain.slicer.job import ExplanationJob  # noqa: E402

BATCH = REPOSITORY / "XAIExplain" / "Scripts" / "XAIExplainBatch.py"
METHODS = ["saliency", "cycle-am"]
POINT_LPS = [float(v) for v in CENTRE.split(",")]


def sop_instance_uid(path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


class StandInDicomDatabase:
    """Stands for ``slicer.dicomDatabase`` (files by SOPInstanceUID) and for ``DICOMUtils.importDicom(folder,
    database, copyFiles=True)`` (``import_folder``: copies of the folder's files kept in ``store``)."""

    isOpen = True

    def __init__(self, store, files=()):
        self.store, self.imported = store, []
        self.files = {sop_instance_uid(path): str(path) for path in files}

    def fileForInstance(self, uid):
        return self.files.get(uid, "")

    def import_folder(self, folder):
        from pathlib import Path

        for path in sorted(Path(folder).iterdir()):
            copy = self.store / f"{len(self.files):04d}.dcm"
            shutil.copyfile(path, copy)
            self.files[sop_instance_uid(copy)] = str(copy)
            self.imported.append(path.name)
        return True


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """A small DICOM series and ``explain --format dicom,nifti`` of it (in this process) about CENTRE: (series
    folder, its files in slice order, the explain output folder)."""
    from xaiexplain.data.series import read_series
    from xaiexplain.io.explanation_files import write_series_explanation

    root = tmp_path_factory.mktemp("exports")
    folder, _ = small_series(root / "series", slices=8)
    write_series_explanation(folder, root / "explained", METHODS, points=[tuple(POINT_LPS)], panels=False,
                             formats=["dicom", "nifti"])
    return folder, [str(path) for path in read_series(folder).files], root / "explained"


def digest(folder) -> dict:
    import hashlib

    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def scene():
    return slicer.vtkMRMLScene()  # passed to every call: slicer.mrmlScene is not needed


def loaded_volume(scene, files):
    """The series as Slicer's DICOM module loads it: a volume node with its slices' SOPInstanceUIDs."""
    from xaiexplain.data.series import read_series
    from pathlib import Path

    volume = xs.add_volume_node(read_series(Path(files[0]).parent).image, "PHANTOM-1", scene)
    volume.SetAttribute("DICOM.instanceUIDs", " ".join(sop_instance_uid(path) for path in files))
    return volume


def launch(command, environment):  # XAIExplainLogic.launch
    return slicer.util.launchConsoleProcess(command, useStartupEnvironment=False, updateEnvironment=environment)


def dicom_uids(folder) -> dict:
    return {path.name: (sop_instance_uid(path), pydicom.dcmread(path).SeriesInstanceUID)
            for path in sorted(folder.glob("*.dcm"))}


def test_the_panels_export_writes_what_explain_writes_and_adds_the_dicom_to_the_database(series, scene, tmp_path):
    folder, files, explained = series
    before = digest(folder)
    (tmp_path / "database").mkdir()
    database = StandInDicomDatabase(tmp_path / "database", files)
    volume = loaded_volume(scene, files)
    export = xs.ExportChoice(dicom=True, nifti=True, folder=str(tmp_path / "export"))
    request = xs.prepare(volume, [xs.lps_to_ras(POINT_LPS)], METHODS, scene=scene, export=export,
                         dicom_database=database)
    assert request.export_formats == ("nrrd", "dicom", "nifti") and request.source_files == files
    job = ExplanationJob(request, launch, temporary_root=tmp_path / "jobs")
    assert job.wait(timeout=300) == "finished", (job.error, job.log)
    output = job.results()
    job.close()

    # the results list the export, which is explain's output set (no PNG panels): the same files and UIDs
    assert output.export["folder"] == str(tmp_path / "export")
    manifest = json.loads((tmp_path / "export" / "nodules.json").read_text())
    assert output.export["files"] == manifest["files"] and manifest["formats"] == ["nrrd", "dicom", "nifti"]
    assert manifest["written_by"] == "xaiexplain explain"
    expected = json.loads((explained / "nodules.json").read_text())["files"]
    assert manifest["files"] == expected
    assert dicom_uids(tmp_path / "export") == dicom_uids(explained) and len(dicom_uids(explained)) == 6
    for method in METHODS:
        for name in manifest["files"][method].values():
            assert (tmp_path / "export" / name).is_file(), name
    assert digest(folder) == before  # the series is read, never written

    # then into Slicer's DICOM database, beside the input series (its patient and study)
    dicom = xs.exported_dicom_files(output.export)
    assert sorted(p.name for p in dicom) == sorted(dicom_uids(explained))
    added = xs.add_to_dicom_database(dicom, database.import_folder, database, tmp_path)
    assert sorted(database.imported) == sorted(p.name for p in dicom)  # only the DICOM objects, not NRRD or NIfTI
    assert all(database.fileForInstance(uid) for uid in added) and len(added) == 6
    study = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    assert {pydicom.dcmread(database.fileForInstance(uid)).StudyInstanceUID for uid in added} == {study}


def test_without_a_folder_the_dicom_objects_go_only_into_the_database(series, scene, tmp_path):
    _, files, explained = series
    (tmp_path / "database").mkdir()
    database = StandInDicomDatabase(tmp_path / "database", files)
    volume = loaded_volume(scene, files)
    request = xs.prepare(volume, [xs.lps_to_ras(POINT_LPS)], ["saliency"], scene=scene,
                         export=xs.ExportChoice(dicom=True), dicom_database=database)
    assert request.export_folder is None
    job = ExplanationJob(request, launch, temporary_root=tmp_path / "jobs")
    assert job.wait(timeout=300) == "finished", (job.error, job.log)
    output = job.results()
    assert output.export["folder"] == str(job.folder / "export")
    added = xs.add_to_dicom_database(xs.exported_dicom_files(output.export), database.import_folder, database)
    job.close()
    assert not job.folder.exists() and all(database.fileForInstance(uid) for uid in added)
    assert {pydicom.dcmread(database.fileForInstance(uid)).SeriesInstanceUID for uid in added} == \
        {uid for name, (_, uid) in dicom_uids(explained).items() if name.endswith("_saliency.dcm")}


def test_the_batch_script_writes_the_dicom_and_nifti_files_explain_writes(series, tmp_path):
    folder, _, explained = series
    result = subprocess.run([sys.executable, str(BATCH), "--series", str(folder), "--point", CENTRE, "--method",
                             METHODS[0], "--method", METHODS[1], "--format", "dicom", "--format", "nifti", "--out",
                             str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    [written] = (tmp_path / "out").iterdir()
    manifest = json.loads((written / "nodules.json").read_text())
    assert manifest["formats"] == ["nrrd", "dicom", "nifti"] and (written / "scene.mrml").is_file()
    for method in METHODS:
        for kind in ("relevance", "labels"):
            for suffix in ("dicom", "nifti"):
                assert (written / manifest["files"][method][f"{kind}_{suffix}"]).is_file()
    assert dicom_uids(written) == dicom_uids(explained)  # the same UIDs as explain's: the same explanation


# -- refused, with nothing written --------------------------------------------------------------------------

def job_asking(job, **changes):
    """A job folder holding a request for saliency on a small volume, its request.json fields then changed."""
    import SimpleITK as sitk
    from xaiexplain.slicer.request import ExplanationRequest

    image = sitk.Image(16, 16, 4, sitk.sitkFloat32)
    job_files.write_request(job, ExplanationRequest(volume_id="vtkMRMLScalarVolumeNode1", volume_name="CT", image=image,
                                                    methods=["saliency"], points_lps=np.zeros((1, 3)),
                                                    series_instance_uid=None))
    manifest = job / "request" / "request.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), **changes}))
    return job


def test_an_unknown_format_is_one_sentence_from_the_batch_the_worker_and_explain_lidc_root(tmp_path, capsys):
    batch = subprocess.run([sys.executable, str(BATCH), "--series", str(tmp_path), "--format", "dicom,png", "--out",
                            str(tmp_path / "out")], capture_output=True, text=True)
    assert batch.returncode == 2 and len(batch.stderr.strip().splitlines()) == 1, batch.stderr
    assert "'png' is not an output format" in batch.stderr and not (tmp_path / "out").exists()

    job = job_asking(tmp_path / "job", export_formats=["dicom", "png"], export_folder=str(tmp_path / "export"),
                     source_files=[str(tmp_path / "slice.dcm")])
    status = slicer_worker.run(job)
    errors = [e["message"] for e in map(job_files.parse_line, capsys.readouterr().out.splitlines())
              if e and e["xaiexplain"] == "error"]
    assert status == job_files.EXIT_USER_ERROR and len(errors) == 1 and "'png' is not an output format" in errors[0]
    assert not (job / "results").exists() and not (tmp_path / "export").exists()

    archive = subprocess.run([sys.executable, "-m", "xaiexplain.apps.cli", "explain", "--lidc-root", str(tmp_path),
                              "--method", "saliency", "--format", "nifti,png", "--out", str(tmp_path / "archive")],
                             capture_output=True, text=True)
    assert archive.returncode == 2 and len(archive.stderr.strip().splitlines()) == 1, archive.stderr
    assert "'png' is not an output format" in archive.stderr and not (tmp_path / "archive").exists()


def test_a_volume_off_its_series_grid_is_refused_before_the_models_run(series, scene, tmp_path, capsys):
    _, files, _ = series
    database = StandInDicomDatabase(tmp_path, files)
    volume = loaded_volume(scene, files)
    request = xs.prepare(volume, [xs.lps_to_ras(POINT_LPS)], ["saliency"], scene=scene,
                         export=xs.ExportChoice(dicom=True, folder=str(tmp_path / "export")), dicom_database=database)
    request.image.SetOrigin(tuple(np.add(request.image.GetOrigin(), (0.0, 0.0, 1.0))))  # as a resampled volume
    job_files.write_request(tmp_path / "job", request)
    status = slicer_worker.run(tmp_path / "job")
    printed = capsys.readouterr().out
    [error] = [e["message"] for e in map(job_files.parse_line, printed.splitlines()) if e and e["xaiexplain"] == "error"]
    assert status == job_files.EXIT_USER_ERROR and "is not on the grid of its DICOM series (its origin" in error
    assert "loading the models" not in printed
    assert not (tmp_path / "export").exists() and not (tmp_path / "job" / "results").exists()


def test_what_the_panel_cannot_export_is_one_sentence(scene, series, tmp_path):
    _, files, _ = series
    assert xs.ExportChoice().formats is None and xs.ExportChoice(folder=str(tmp_path)).formats == ("nrrd",)
    assert xs.ExportChoice(nifti=True).problem() == "Choose an export folder for the NIfTI files."
    assert xs.ExportChoice(dicom=True, to_dicom_database=False).problem().startswith("Choose an export folder")
    assert xs.ExportChoice(dicom=True).problem("linux") is None
    volume = loaded_volume(scene, files)
    volume.RemoveAttribute("DICOM.instanceUIDs")  # e.g. a volume loaded from NRRD
    with pytest.raises(XAIExplainError, match="was not loaded through Slicer's DICOM module") as refused:
        xs.prepare(volume, [xs.lps_to_ras(POINT_LPS)], ["saliency"], scene=scene,
                   export=xs.ExportChoice(dicom=True), dicom_database=StandInDicomDatabase(tmp_path, files))
    assert "\n" not in str(refused.value)
    volume = loaded_volume(scene, files)
    with pytest.raises(XAIExplainError, match="1 of the 8 DICOM files of volume 'PHANTOM-1' are no longer"):
        xs.prepare(volume, [xs.lps_to_ras(POINT_LPS)], ["saliency"], scene=scene,
                   export=xs.ExportChoice(dicom=True), dicom_database=StandInDicomDatabase(tmp_path, files[1:]))
    with pytest.raises(XAIExplainError, match="Slicer has no DICOM database open"):
        xs.prepare(volume, [xs.lps_to_ras(POINT_LPS)], ["saliency"], scene=scene, export=xs.ExportChoice(dicom=True))


def test_dicom_output_on_macos_is_one_sentence_and_dcmqi_is_installed_on_linux_and_windows():
    requirements = environment.library_requirements()
    missing = {}.get  # nothing installed: every requirement that applies is in the plan
    for platform in ("linux", "win32"):
        plan = environment.install_plan(requirements, missing, platform=platform)
        assert any(r.startswith("dcmqi>=") for r in plan.pip_requirements) and plan.notes == [], platform
    mac = environment.install_plan(requirements, missing, platform="darwin")
    assert not any(r.startswith("dcmqi") for r in mac.pip_requirements)
    sentence = environment.dicom_output_unavailable("darwin")
    assert mac.notes == [sentence] and sentence.count(". ") == 0 and sentence.startswith(
        "DICOM output is unavailable on macOS: dcmqi")
    assert xs.ExportChoice(dicom=True, folder="out").problem("darwin") == sentence
    assert xs.ExportChoice(nifti=True, folder="out").problem("darwin") is None
