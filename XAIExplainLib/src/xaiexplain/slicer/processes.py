"""Processes by their id: whether one still runs, and the job folders of the ones that are gone.

A job folder is named after the process that made it (``xaiexplain-job-<pid>-<random>``, in Slicer's
temporary folder): a Slicer that crashed or was killed never removed its folders, each an uncompressed copy
of a CT, so the next job sweeps those whose process is gone. Folders of a running Slicer (another instance,
the same one) are kept, and nothing not named so is touched.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

JOB_FOLDER_PREFIX = "xaiexplain-job-"
_OWNED_JOB_FOLDER = re.compile(rf"^{re.escape(JOB_FOLDER_PREFIX)}(\d+)-")


def process_alive(pid: int) -> bool:
    """Whether the process ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    if pid <= 0:
        return False
    if os.name == "nt":
        import ctypes

        synchronize, wait_timeout = 0x00100000, 0x102
        kernel32 = ctypes.windll.kernel32
        handle = kernel32.OpenProcess(synchronize, False, pid)
        if not handle:
            return False
        try:
            return kernel32.WaitForSingleObject(handle, 0) == wait_timeout
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it runs
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc (macOS), or it ended meanwhile
        return True


def job_folder_prefix(pid: int | None = None) -> str:
    """The name a job folder of process ``pid`` (default this one) starts with."""
    return f"{JOB_FOLDER_PREFIX}{os.getpid() if pid is None else pid}-"


def owner_of(folder) -> int | None:
    """The id of the process that made a job folder, by its name; None for any other folder."""
    match = _OWNED_JOB_FOLDER.match(Path(folder).name)
    return int(match.group(1)) if match else None


def sweep_stale_job_folders(root, alive=process_alive) -> list[Path]:
    """Remove the job folders in ``root`` whose process is gone; returns them."""
    swept = []
    try:
        entries = list(Path(root).iterdir())
    except OSError:  # no such folder yet
        return swept
    for folder in entries:
        owner = owner_of(folder)
        if owner is None or not folder.is_dir() or folder.is_symlink() or alive(owner):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        swept.append(folder)
    return swept
