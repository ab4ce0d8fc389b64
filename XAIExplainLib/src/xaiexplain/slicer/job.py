"""The module panel's side of a worker run: write the request, start the worker process, read its
progress lines without blocking, kill it on Cancel, and hand over its results (see ``job_files`` for the
protocol). The panel calls ``poll`` from a QTimer on the main thread; nothing here uses threads or Qt, so
the same class runs under plain Python in the tests, started with the same ``launchConsoleProcess`` call.
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from xaiexplain.errors import XAIExplainError
from xaiexplain.slicer import job_files
from xaiexplain.slicer.processes import job_folder_prefix, sweep_stale_job_folders
from xaiexplain.slicer.request import ExplanationOutput, ExplanationRequest

WORKER_MODULE = "xaiexplain.apps.slicer_worker"
# after the process has exited, how long to wait for the end of its output (a grandchild may hold the pipe)
_END_OF_OUTPUT_WAIT_S = 2.0
_KILL = getattr(signal, "SIGKILL", signal.SIGTERM)  # SIGTERM is TerminateProcess on Windows


def library_source_folder() -> Path:
    """The folder that holds the ``xaiexplain`` package this process runs, for the worker's PYTHONPATH."""
    import xaiexplain

    return Path(xaiexplain.__file__).resolve().parent.parent


def worker_environment() -> dict[str, str]:
    """Environment variables for the worker: this library first on its path."""
    paths = [str(library_source_folder()), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


def usable_devices(launch, python: str | None = None, timeout: float = 120.0) -> list[str]:
    """The devices the worker's PyTorch can use ("cpu", then "cuda" and "mps" where there are such GPUs),
    asked of the worker's Python started as the worker is (``launch``, see ``ExplanationJob``); an
    XAIExplainError with its last line when it cannot say (e.g. torch not installed yet)."""
    import subprocess

    process = launch([python or sys.executable, "-m", "xaiexplain.devices"], worker_environment())
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise XAIExplainError(f"PyTorch did not say within {timeout:g} s which devices it can use") from None
    lines = [line for line in (output.decode("utf-8", "replace") if isinstance(output, bytes) else output)
             .splitlines() if line.strip()]
    events = [event for event in map(job_files.parse_line, lines) if event and event[job_files.LINE_KEY] == "devices"]
    if process.returncode != 0 or not events:
        last = lines[-1] if lines else f"exit status {process.returncode}"
        raise XAIExplainError(f"PyTorch could not say which devices it can use: {last}")
    return [str(device) for device in events[-1]["devices"]]


class ExplanationJob:
    """One explanation in a worker process.

    ``launch(command, environment)`` starts it and returns a ``subprocess.Popen`` whose stdout is a pipe
    (in Slicer ``slicer.util.launchConsoleProcess(command, useStartupEnvironment=False,
    updateEnvironment=environment)``); ``python`` is the interpreter (in Slicer, PythonSlicer, which is
    ``sys.executable`` there). ``state`` is "running", then "finished", "failed" or "cancelled"."""

    def __init__(self, request: ExplanationRequest, launch, python: str | None = None, temporary_root=None):
        self.request = request
        if temporary_root is not None:
            Path(temporary_root).mkdir(parents=True, exist_ok=True)
        sweep_stale_job_folders(temporary_root or tempfile.gettempdir())  # a crashed Slicer's copies of CTs
        self.folder = Path(tempfile.mkdtemp(prefix=job_folder_prefix(), dir=temporary_root))
        self.state, self.fraction, self.message, self.error = "running", 0.0, "starting the worker", None
        self.log: list[str] = []  # the worker's lines that are not progress (warnings, tracebacks)
        self.worker_pid: int | None = None
        self._pending, self._end_of_output, self._exited_at, self._done = b"", False, None, False
        try:
            # this process's id: the worker ends itself when it is gone (the launcher may outlive a crash)
            job_files.write_request(self.folder, request, slicer_pid=os.getpid())
            self.process = launch([python or sys.executable, "-m", WORKER_MODULE, str(self.folder)],
                                  worker_environment())
            os.set_blocking(self.process.stdout.fileno(), False)  # pipes too on Windows, from Python 3.12
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise

    @property
    def running(self) -> bool:
        return self.state == "running"

    def poll(self) -> list[dict]:
        """Read what the worker has written so far (never waits) and update ``fraction``, ``message`` and,
        once it has exited and its output is read, ``state``; returns the new events."""
        if not self.running:
            return []
        self._read_available()
        events = []
        *lines, self._pending = self._pending.split(b"\n")
        if self._end_of_output and self._pending:
            lines.append(self._pending)
            self._pending = b""
        for raw in lines:
            text = raw.decode("utf-8", "replace").rstrip("\r")
            event = job_files.parse_line(text)
            if event is None:
                if text.strip():
                    self.log.append(text)
                continue
            events.append(event)
            self._take(event)
        self._check_exit()
        return events

    def _read_available(self) -> None:
        descriptor = self.process.stdout.fileno()
        while not self._end_of_output:
            try:
                chunk = os.read(descriptor, 65536)
            except BlockingIOError:
                return
            if not chunk:
                self._end_of_output = True
            self._pending += chunk

    def _take(self, event: dict) -> None:
        kind = event["xaiexplain"]
        if kind == "started":
            self.worker_pid = int(event["pid"])
        elif kind == "progress":
            self.fraction, self.message = float(event["fraction"]), str(event["message"])
        elif kind == "error":
            self.error = str(event["message"])
        elif kind == "done":
            self._done = True

    def _check_exit(self) -> None:
        status = self.process.poll()
        if status is None:
            return
        now = time.monotonic()
        self._exited_at = self._exited_at or now
        if not self._end_of_output and now - self._exited_at < _END_OF_OUTPUT_WAIT_S:
            return
        if status == 0 and self._done and self.error is None:
            self.state, self.fraction, self.message = "finished", 1.0, "done"
            return
        self.state = "failed"
        if self.error is None:
            last = f": {self.log[-1]}" if self.log else ""
            self.error = f"the explanation process stopped with exit status {status} without a result{last}"
        self.message = self.error
        shutil.rmtree(self.folder, ignore_errors=True)

    def wait(self, timeout: float | None = None, interval: float = 0.1, between=None) -> str:
        """Poll until the job ends (``between()`` after each poll, e.g. to let a GUI draw); its state.
        After ``timeout`` seconds the job is cancelled."""
        started = time.monotonic()
        while self.running:
            self.poll()
            if between is not None:
                between()
            if self.running:
                if timeout is not None and time.monotonic() - started > timeout:
                    self.cancel()
                    break
                time.sleep(interval)
        return self.state

    def results(self) -> ExplanationOutput:
        """The results of a finished job (read from its files), or XAIExplainError with the worker's
        sentence."""
        if self.state != "finished":
            raise XAIExplainError(self.error or f"the explanation is {self.state}, it has no results")
        return job_files.read_results(self.folder)

    def cancel(self) -> None:
        """Kill the worker (and the launcher it runs under) and remove the job folder: nothing of the run is
        left to load."""
        if self.running:
            if self.worker_pid is not None and self.process.poll() is None:  # the launcher waits for it
                try:
                    os.kill(self.worker_pid, _KILL)
                except OSError:  # already gone
                    pass
            try:
                self.process.kill()
            except OSError:
                pass
            self.process.wait()
            self.state, self.message = "cancelled", "cancelled; nothing was added to the scene"
        self.close()

    def close(self) -> None:
        """Remove the job folder (after its results were loaded, or when it is abandoned)."""
        if self.running:
            self.cancel()
            return
        self.process.stdout.close()
        shutil.rmtree(self.folder, ignore_errors=True)
