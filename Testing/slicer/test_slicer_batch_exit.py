"""The batch script under Slicer (``Slicer --no-main-window --python-script XAIExplainBatch.py ...``):
Slicer stays open after the script until it calls ``slicer.util.exit``, so the script must call it with its
documented status whatever happens, and CTest must judge the batch test by that status."""
import importlib.util

import pytest
from helpers import REPOSITORY

slicer = pytest.importorskip("slicer")

BATCH = REPOSITORY / "XAIExplain" / "Scripts" / "XAIExplainBatch.py"
CTEST_FILE = REPOSITORY / "XAIExplain" / "Testing" / "Python" / "CMakeLists.txt"


@pytest.fixture()
def batch_in_slicer(monkeypatch):
    """The batch script's module, in a process that looks like Slicer's application to it; the statuses it
    passed to slicer.util.exit."""
    exits = []
    monkeypatch.setattr(slicer, "app", object(), raising=False)
    monkeypatch.setattr(slicer.util, "exit", exits.append, raising=False)
    specification = importlib.util.spec_from_file_location("XAIExplainBatch", BATCH)
    module = importlib.util.module_from_spec(specification)
    specification.loader.exec_module(module)
    return module, exits


def test_a_failure_outside_the_per_series_handler_still_exits_slicer_with_1(batch_in_slicer, monkeypatch,
                                                                               tmp_path, capsys):
    """Listing a --lidc-root tree this user may not read raises outside the per-series handler."""
    import xaiexplain.io.archive_explanation as archive

    module, exits = batch_in_slicer

    def unreadable(root, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(root))

    monkeypatch.setattr(archive, "lidc_archive_series", unreadable)
    monkeypatch.setattr("sys.argv", ["XAIExplainBatch.py", "--lidc-root", str(tmp_path), "--out", str(tmp_path / "o")])
    module.main()
    assert exits == [1]
    error = capsys.readouterr().err
    assert error.strip() == f"Permission denied: {tmp_path}" and "Traceback" not in error


def test_a_defect_exits_slicer_with_1_and_one_line(batch_in_slicer, monkeypatch, capsys):
    module, exits = batch_in_slicer

    def defect(argv):
        raise RuntimeError("a defect")

    monkeypatch.setattr(module, "run", defect)
    module.main()
    assert exits == [1] and "internal error RuntimeError: a defect" in capsys.readouterr().err


def test_a_bad_command_line_exits_slicer_with_2(batch_in_slicer, monkeypatch):
    module, exits = batch_in_slicer
    monkeypatch.setattr("sys.argv", ["XAIExplainBatch.py", "--out"])  # argparse exits with 2
    module.main()
    assert exits == [2]


def test_ctest_judges_the_batch_test_by_its_exit_status():
    """With PASS_REGULAR_EXPRESSION CTest ignores the exit status: a batch that failed on one series but
    printed another's scene.mrml would pass."""
    text = CTEST_FILE.read_text()
    assert "XAIExplainBatch.py" in text and "PASS_REGULAR_EXPRESSION" not in text
