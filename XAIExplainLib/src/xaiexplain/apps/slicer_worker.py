"""The Slicer module's worker: runs one explanation of a job folder in its own process.

    PythonSlicer -m xaiexplain.apps.slicer_worker JOB_FOLDER      (any Python with the library works too)

It reads ``JOB_FOLDER/request``, writes one JSON progress line per step on stdout, writes the export the
request asks for (``xaiexplain.slicer.job_exports``: DICOM, NIfTI), and writes ``JOB_FOLDER/results`` whole
when it has finished (``xaiexplain.slicer.job_files`` describes the files and
lines). Exit status 0 with the results; 2 with one sentence on an ``error`` line for a user's error (a
missing bundle, a series without LIDC annotations); 1 for a defect (the traceback is logged); a signal's
status when interrupted. It ends itself when the process that started it is gone (the panel killed the
launcher) or the Slicer process named in the request is (Slicer quit or crashed; the PythonSlicer launcher
between them may survive a crash), so that no orphan keeps computing.
"""
from __future__ import annotations

import os
import sys
import threading
import time
import traceback

USAGE = "usage: python -m xaiexplain.apps.slicer_worker JOB_FOLDER"
EXIT_DEFECT = 1
EXIT_ORPHANED = 3
_PARENT_CHECK_S = 0.5


def emit(event: str, **fields) -> None:
    from xaiexplain.slicer.job_files import line

    print(line(event, **fields), flush=True)


def _parent_alive_check():
    """A function telling whether the process that started this one is still running. POSIX: the parent
    id changes when the parent dies; Windows keeps the id, so a handle to the parent is asked."""
    parent = os.getppid()
    if os.name != "nt":
        return lambda: os.getppid() == parent
    import ctypes

    synchronize, wait_timeout = 0x00100000, 0x102
    kernel32 = ctypes.windll.kernel32
    handle = kernel32.OpenProcess(synchronize, False, parent)
    if not handle:
        return lambda: True  # cannot watch it; the panel kills this process by its id
    return lambda: kernel32.WaitForSingleObject(handle, 0) == wait_timeout


def watch_parent() -> None:
    alive = _parent_alive_check()

    def watch():
        while alive():
            time.sleep(_PARENT_CHECK_S)
        os._exit(EXIT_ORPHANED)  # the job folder is its starter's, which removes it

    threading.Thread(target=watch, name="parent watch", daemon=True).start()


def watch_slicer(job_folder) -> None:
    """End this process when the Slicer it serves (``slicer_pid`` of the request) is gone: at once when it
    already is, else within a moment of its end."""
    from xaiexplain.slicer.job_files import read_slicer_pid
    from xaiexplain.slicer.processes import process_alive

    pid = read_slicer_pid(job_folder)
    if pid is None:
        return
    if not process_alive(pid):
        emit("error", message=f"Slicer (process {pid}) has ended; nothing was computed")
        os._exit(EXIT_ORPHANED)

    def watch():
        while process_alive(pid):
            time.sleep(_PARENT_CHECK_S)
        os._exit(EXIT_ORPHANED)  # its job folder is swept by the next Slicer's first job

    threading.Thread(target=watch, name="Slicer watch", daemon=True).start()


def run(job_folder) -> int:
    from xaiexplain.errors import XAIExplainError
    from xaiexplain.termination import interrupted_exit_status
    from xaiexplain.slicer.job_exports import plan_export, write_export
    from xaiexplain.slicer.job_files import EXIT_USER_ERROR, read_request, write_results
    from xaiexplain.slicer.request import compute

    try:
        request = read_request(job_folder)
        export = plan_export(job_folder, request)  # refused before the models run, not after
        output = compute(request, progress=lambda fraction, message: emit("progress", fraction=round(fraction, 4),
                                                                           message=message))
        if export is not None:
            emit("progress", fraction=0.96, message=f"exporting {', '.join(export.formats)} into {export.folder}")
            output.export = write_export(export, request, output)
        emit("progress", fraction=0.97, message="writing the results")
        write_results(job_folder, output)
    except XAIExplainError as error:
        emit("error", message=str(error))
        return EXIT_USER_ERROR
    except OSError as error:
        emit("error", message=f"{error.strerror or error}: {error.filename}")
        return EXIT_USER_ERROR
    except KeyboardInterrupt as interruption:
        emit("error", message="interrupted; no results were written")
        return interrupted_exit_status(interruption)
    except Exception as error:  # a defect: the traceback for the log, one line for the panel
        traceback.print_exc(file=sys.stdout)
        emit("error", message=f"internal error {type(error).__name__}: {error}")
        return EXIT_DEFECT
    emit("progress", fraction=1.0, message="done")
    emit("done")
    return 0


def main(argv: list[str] | None = None) -> int:
    from xaiexplain.termination import handle_termination_signals

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print(USAGE, file=sys.stderr)
        return 2
    handle_termination_signals()
    watch_parent()
    watch_slicer(argv[0])
    emit("started", pid=os.getpid())
    return run(argv[0])


if __name__ == "__main__":
    sys.exit(main())
