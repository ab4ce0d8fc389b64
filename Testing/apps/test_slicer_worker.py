"""The Slicer module's worker process under plain Python, through exactly the file protocol and the process
call the panel uses (``ExplanationJob`` and ``slicer.util.launchConsoleProcess``): request in, progress
lines, results out, one sentence for a user's error, and a kill mid-run that leaves nothing to load."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

slicer = pytest.importorskip("slicer")
from xaiexplain.apps import slicer_worker  # noqa: E402
from xaiexplain.errors import XAIExplainError  # noqa: E402
from xaiexplain.slicer import job_files  # noqa: E402
from xaiexplain.slicer.job import ExplanationJob  # noqa: E402
from xaiexplain.slicer.request import ExplanationRequest  # noqa: E402

# PythonSlicer is a launcher that starts the real interpreter as its child: so is this one
LAUNCHER = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"


def launch(command, environment):
    """The panel's call (XAIExplainLogic.launch)."""
    return slicer.util.launchConsoleProcess(command, useStartupEnvironment=False, updateEnvironment=environment)


def launch_through_launcher(command, environment):
    return launch([sys.executable, "-c", LAUNCHER, *command], environment)


def generated_ct() -> tuple[sitk.Image, np.ndarray]:
    """40 x 128 x 128 voxels of lung with one solid 16 mm nodule; the image and the nodule's LPS centre."""
    volume = np.full((40, 128, 128), -850.0, np.float32)
    z, y, x = np.ogrid[:40, :128, :128]
    volume[(z - 20) ** 2 / 9 + (y - 64) ** 2 + (x - 64) ** 2 < 64] = 30.0
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((1.0, 1.0, 2.5))
    image.SetOrigin((-64.0, -40.0, -120.0))
    return image, np.array(image.TransformIndexToPhysicalPoint((64, 64, 20)))


def request(methods, **fields) -> ExplanationRequest:
    image, centre = generated_ct()
    return ExplanationRequest(volume_id="vtkMRMLScalarVolumeNode1", volume_name="generated CT", image=image,
                              methods=list(methods), points_lps=centre.reshape(1, 3), series_instance_uid=None,
                              **fields)


def run_to_end(job, timeout=300):
    events = []
    started = time.monotonic()
    while job.running:
        events += job.poll()
        assert time.monotonic() - started < timeout, "the worker did not finish"
        time.sleep(0.05)
    return events


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")  # a killed child nobody has reaped yet is a zombie: dead
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def wait_until_dead(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not alive(pid)


def test_request_progress_lines_and_results(tmp_path):
    asked = request(["grad-cam", "cycle-am"])  # the shipped classifier and cycle-am pair
    job = ExplanationJob(asked, launch, temporary_root=tmp_path)
    assert sorted(p.name for p in (job.folder / "request").iterdir()) == ["request.json", "volume.nrrd"]
    events = run_to_end(job)
    assert job.state == "finished", (job.error, job.log)
    assert job.process.returncode == 0
    assert events[0]["xaiexplain"] == "started" and events[0]["pid"] > 0
    assert events[-1] == {"xaiexplain": "done"}
    progress = [e for e in events if e["xaiexplain"] == "progress"]
    messages = [e["message"] for e in progress]
    assert messages[:3] == ["loading the models", "explaining with grad-cam (1 of 2)",
                            "explaining with cycle-am (2 of 2)"]
    assert messages[-2:] == ["writing the results", "done"]
    fractions = [e["fraction"] for e in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and (job.fraction, job.message) == (1.0, "done")

    output = job.results()
    assert set(output.relevance) == set(output.labels) == {"grad-cam", "cycle-am"}
    for image in [*output.relevance.values(), *output.labels.values()]:
        assert image.GetSize() == asked.image.GetSize()
        np.testing.assert_allclose(image.GetOrigin(), asked.image.GetOrigin(), atol=1e-12)
        np.testing.assert_allclose(image.GetDirection(), asked.image.GetDirection(), atol=1e-12)
    assert set(output.counterfactuals) == {"malignant", "benign"}
    [row] = output.nodules
    assert 0 <= row["probability"] <= 1 and set(row["methods"]) == {"grad-cam", "cycle-am"}
    job.close()
    assert not job.folder.exists()


def test_a_user_error_is_one_sentence_and_exit_status_2(tmp_path):
    job = ExplanationJob(request(["grad-cam"], classifier=str(tmp_path / "no-such-bundle")), launch,
                         temporary_root=tmp_path)
    events = run_to_end(job)
    assert job.state == "failed" and job.process.returncode == job_files.EXIT_USER_ERROR
    [error] = [e for e in events if e["xaiexplain"] == "error"]
    assert "no model bundle" in error["message"] and "\n" not in error["message"]
    assert job.error == error["message"]
    assert not any("Traceback" in line for line in job.log)
    assert not job.folder.exists()  # a failed job leaves nothing
    with pytest.raises(XAIExplainError, match="no model bundle"):
        job.results()


def test_cancel_mid_run_kills_launcher_and_worker_and_leaves_no_results(tmp_path):
    job = ExplanationJob(request(["iterative:integrated-gradients", "deep-shap"]), launch_through_launcher,
                         temporary_root=tmp_path)
    while job.running and not job.message.startswith("explaining with"):
        job.poll()
        time.sleep(0.05)
    assert job.running, (job.error, job.log)  # mid-run: the models are computing
    worker, launcher = job.worker_pid, job.process.pid
    assert worker != launcher
    job.cancel()
    assert job.state == "cancelled"
    assert not alive(launcher) and wait_until_dead(worker, 2.0)
    assert not job.folder.exists() and not list(tmp_path.iterdir())  # no results folder, no request, nothing
    with pytest.raises(XAIExplainError):
        job.results()


def test_the_worker_ends_itself_when_its_launcher_is_killed(tmp_path):
    """A kill that reaches only the launcher (PythonSlicer's child keeps running otherwise) still ends the
    worker, which watches its parent."""
    job = ExplanationJob(request(["iterative:integrated-gradients"]), launch_through_launcher,  # 45 s alone
                         temporary_root=tmp_path)
    while job.running and job.worker_pid is None:
        job.poll()
        time.sleep(0.05)
    os.kill(job.process.pid, signal.SIGKILL)
    assert wait_until_dead(job.worker_pid, 5.0)
    events = run_to_end(job)
    assert job.state == "failed" and "writing the results" not in [e.get("message") for e in events]
    assert not job.folder.exists()


def test_progress_lines_are_read_whole_across_partial_writes(tmp_path):
    """The panel reads whatever the pipe holds at each timer tick: a line split between two reads, Windows
    line ends and other programs' lines (logged, not events)."""
    script = ("import sys, time; w = sys.stdout.write; f = sys.stdout.flush\n"
              "w('warning: something\\r\\n'); w('{\"xaiexplain\": \"progress\", \"fra'); f(); time.sleep(0.5)\n"
              "w('ction\": 0.5, \"message\": \"half\"}\\r\\n{\"xaiexplain\": \"done\"}'); f()\n")

    def fake_worker(command, environment):
        return launch([sys.executable, "-c", script], environment)

    job = ExplanationJob(request(["grad-cam"]), fake_worker, temporary_root=tmp_path)
    events = run_to_end(job)
    assert events == [{"xaiexplain": "progress", "fraction": 0.5, "message": "half"}, {"xaiexplain": "done"}]
    assert job.log == ["warning: something"]
    assert job_files.parse_line('{"other": 1}') is None and job_files.parse_line("[1, 2]") is None


def test_the_worker_refuses_a_folder_without_a_request(tmp_path):
    result = subprocess.run([sys.executable, "-m", "xaiexplain.apps.slicer_worker", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    lines = [job_files.parse_line(line) for line in result.stdout.splitlines()]
    assert lines[-1] == {"xaiexplain": "error", "message": f"{tmp_path} holds no request"}
    assert list(tmp_path.iterdir()) == []


def _ended_process_id() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _start_worker(job_folder):
    return subprocess.Popen([sys.executable, "-m", "xaiexplain.apps.slicer_worker", str(job_folder)],
                            stdout=subprocess.PIPE, text=True)


def test_a_worker_whose_slicer_has_ended_ends_itself(tmp_path):
    """The worker watches the Slicer process named in the request, not only its parent (the PythonSlicer
    launcher, which can outlive a Slicer crash): one already gone, and one that ends mid-run."""
    folder = tmp_path / "job"
    job_files.write_request(folder, request(["grad-cam"]), slicer_pid=_ended_process_id())
    worker = _start_worker(folder)
    output, _ = worker.communicate(timeout=60)
    assert worker.returncode == 3
    assert job_files.parse_line(output.splitlines()[-1])["message"].endswith("has ended; nothing was computed")
    assert not (folder / job_files.RESULTS).exists()

    slicer_process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    job_files.write_request(tmp_path / "job 2", request(["iterative:integrated-gradients"]),  # 45 s alone
                            slicer_pid=slicer_process.pid)
    worker = _start_worker(tmp_path / "job 2")
    try:
        assert job_files.parse_line(worker.stdout.readline())["xaiexplain"] == "started"
        slicer_process.kill()
        slicer_process.wait()
        assert worker.wait(timeout=10) == 3
    finally:
        worker.kill()
        slicer_process.kill()
    assert not (tmp_path / "job 2" / job_files.RESULTS).exists()


def test_the_next_job_sweeps_the_job_folders_of_ended_processes_only(tmp_path):
    """A crashed Slicer leaves its job folders (an uncompressed copy of the CT each): the next job removes
    those of processes that are gone, keeps those of running ones and anything not named as a job folder."""
    stale = tmp_path / f"xaiexplain-job-{_ended_process_id()}-x1y2"
    live = tmp_path / f"xaiexplain-job-{os.getpid()}-a3b4"
    unnamed, other = tmp_path / "xaiexplain-job-k9n8", tmp_path / "user files"
    for folder in (stale, live, unnamed, other):
        (folder / "request").mkdir(parents=True)
        (folder / "request" / "volume.nrrd").write_bytes(b"CT")

    def quiet_worker(command, environment):
        return launch([sys.executable, "-c", ""], environment)

    job = ExplanationJob(request(["grad-cam"]), quiet_worker, temporary_root=tmp_path)
    assert not stale.exists()
    assert all((folder / "request" / "volume.nrrd").read_bytes() == b"CT" for folder in (live, unnamed, other))
    assert job.folder.name.startswith(f"xaiexplain-job-{os.getpid()}-")
    assert job_files.read_slicer_pid(job.folder) == os.getpid()
    job.wait(timeout=30)
    job.close()


def test_the_gpu_choices_are_what_the_workers_pytorch_can_use(tmp_path):
    from xaiexplain.slicer.job import usable_devices

    import torch

    expected = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (
        ["mps"] if torch.backends.mps.is_available() else [])
    assert usable_devices(launch) == expected
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'ImportError: DLL load failed while importing _C'\nexit 1\n")
    broken.chmod(0o755)
    with pytest.raises(XAIExplainError, match="could not say which devices it can use: ImportError: DLL"):
        usable_devices(launch, python=str(broken))


def test_a_gpu_this_machine_lacks_is_one_sentence_from_the_worker(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    job = ExplanationJob(request(["grad-cam"], device="cuda"), launch, temporary_root=tmp_path)
    run_to_end(job)
    assert job.state == "failed" and job.process.returncode == job_files.EXIT_USER_ERROR
    assert job.error == "--device cuda was asked for, but PyTorch sees no CUDA GPU on this machine"


def job_with_request(tmp_path, methods=("saliency",), **changes) -> Path:
    """A job folder holding the panel's request for ``methods``, its request.json fields then changed."""
    job = tmp_path / "job"
    job_files.write_request(job, request(list(methods)))
    manifest = job / "request" / "request.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), **changes}))
    return job


def run_in_process(job, capsys) -> tuple[int, list[str]]:
    """The worker's exit status and error sentences, for ``job``."""
    status = slicer_worker.run(job)
    events = [job_files.parse_line(text) for text in capsys.readouterr().out.splitlines()]
    return status, [event["message"] for event in events if event and event["xaiexplain"] == "error"]


# Before: device cuda on a machine without CUDA was "internal error AssertionError" (exit 1), methods []
# exited 0 with empty results, a NaN point was shown as np.float64(nan), and the other malformed fields
# were KeyErrors, TypeErrors or a RecursionError (exit 1).
BAD_REQUESTS = {
    "cuda-without-a-gpu": ({"device": "cuda"}, "--device cuda was asked for, but PyTorch sees no CUDA GPU"),
    "unknown-device": ({"device": "tpu"}, "needs device to be one of auto, cpu, cuda"),
    "no-methods": ({"methods": []}, "needs methods to be a list of at least one method name"),
    "nan-point": ({"points_lps": [[float("nan"), 0.0, -95.0]]}, "is not valid JSON (NaN is not a JSON value)"),
    "two-coordinates": ({"points_lps": [[0.0, -95.0]]}, "needs points_lps to be null (the LIDC annotations) or"),
    "bad-option": ({"methods": ["integrated-gradients"], "options": {"steps": 0}}, "steps is a whole number"),
    "empty-classifier": ({"classifier": ""}, "needs classifier to be a name or null"),
    "unknown-method": ({"methods": ["saliency", "lpr"]}, "unknown method 'lpr'"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_a_bad_request_is_one_sentence_and_exit_status_2(case, tmp_path, capsys):
    changes, phrase = BAD_REQUESTS[case]
    if case == "cuda-without-a-gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    job = job_with_request(tmp_path, **changes)
    status, errors = run_in_process(job, capsys)
    assert status == job_files.EXIT_USER_ERROR and len(errors) == 1 and phrase in errors[0], errors
    assert "np.float64" not in errors[0] and not (job / "results").exists()


def test_a_request_nested_too_deep_is_one_sentence(tmp_path, capsys):
    job = job_with_request(tmp_path)
    (job / "request" / "request.json").write_text("[" * 100_000 + "]" * 100_000)
    status, errors = run_in_process(job, capsys)
    assert status == job_files.EXIT_USER_ERROR and "nested more than" in errors[0], errors


# Before: a results link made in the job folder took the worker's results out of it (exit 0).
def test_results_are_never_written_through_a_link_out_of_the_job(tmp_path, capsys):
    job = job_with_request(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (job / "results").symlink_to(elsewhere, target_is_directory=True)
    status, errors = run_in_process(job, capsys)
    assert status == job_files.EXIT_USER_ERROR and "exists already" in errors[0], errors
    assert list(elsewhere.iterdir()) == []


# Before: results.json's file names were joined to the results folder as they were: "../..." read files
# out of the job.
@pytest.mark.parametrize("name", ["../request/volume.nrrd", "/etc/hostname", "sub/relevance.nrrd", ".."])
def test_results_name_only_files_of_their_folder(name, tmp_path):
    job = job_with_request(tmp_path)
    (job / "results").mkdir()
    (job / "results" / "results.json").write_text(json.dumps(
        {"protocol": job_files.PROTOCOL, "files": {"relevance": {"saliency": name}, "labels": {},
                                                   "counterfactuals": {}, "consensus": None},
         "nodules": [], "lidc_nodules": []}))
    with pytest.raises(XAIExplainError, match="not a file of its results folder"):
        job_files.read_results(job)


def test_the_worker_explains_a_users_2_5d_module_through_the_same_protocol(tmp_path):
    """Issue 26: a user's module (residual blocks with GELU, a dict with one logit, 96 px / 60 mm, three slices)
    through the panel's protocol; a method it cannot serve is one sentence from the worker."""
    from user_models import USER_MODEL, module_bundle

    bundle = module_bundle(tmp_path / "user", USER_MODEL, "UserNet", {"width": 8},
                           input_spec={"patch_size": 96, "field_of_view_mm": 60.0, "slices": 3},
                           output_spec={"form": "logit", "entry": "logit"})
    asked = request(["saliency", "grad-cam"], classifier=str(bundle.path))
    job = ExplanationJob(asked, launch, temporary_root=tmp_path)
    run_to_end(job)
    assert job.state == "finished", (job.error, job.log)
    output = job.results()
    assert set(output.relevance) == {"saliency", "grad-cam"}
    assert all(image.GetSize() == asked.image.GetSize() for image in output.relevance.values())
    job.close()
    refused = ExplanationJob(request(["lrp"], classifier=str(bundle.path)), launch, temporary_root=tmp_path)
    events = run_to_end(refused)
    [error] = [e for e in events if e["xaiexplain"] == "error"]
    assert refused.state == "failed" and "no rule for GELU at blocks.0.act" in error["message"]
    assert "\n" not in error["message"]


def test_the_worker_explains_a_3d_model_through_the_same_protocol(tmp_path):
    """Issue 27: a 3D model's maps come back from the worker in the series' geometry."""
    from user_models import VOLUME_MODEL, VOLUME_SPEC, module_bundle

    bundle = module_bundle(tmp_path / "volume", VOLUME_MODEL, "VolumeNet", {"width": 4, "pool": "avg"},
                           input_spec=VOLUME_SPEC)
    asked = request(["integrated-gradients", "grad-cam", "lrp"], classifier=str(bundle.path))
    job = ExplanationJob(asked, launch, temporary_root=tmp_path)
    run_to_end(job)
    assert job.state == "finished", (job.error, job.log)
    output = job.results()
    assert set(output.relevance) == {"integrated-gradients", "grad-cam", "lrp"}
    for image in output.relevance.values():
        assert image.GetSize() == asked.image.GetSize() and image.GetOrigin() == asked.image.GetOrigin()
        assert np.abs(sitk.GetArrayViewFromImage(image)).max() > 0
    job.close()
