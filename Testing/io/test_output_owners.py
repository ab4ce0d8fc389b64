"""Output sets that know their owner: the Slicer batch script and `xaiexplain explain` never remove each other's
files, a single output file is replaced only where an earlier run wrote it, runs writing one set at once end
with one whole set, and a full disk, a dangling link or a long name are one sentence that never names a
temporary."""
import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import CENTRE, REPOSITORY, assert_one_line_error, small_series, xaiexplain
from xaiexplain.apps import cli
from xaiexplain.errors import XAIExplainError
from xaiexplain.io import explanation_files, files
from xaiexplain.slicer.scene_files import series_output_name

BATCH = REPOSITORY / "XAIExplain" / "Scripts" / "XAIExplainBatch.py"
SERIES_UID = "1.2.826.0.1.3680043.8.498.1"  # small_series'


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if "xaiexplain-partial" in p.name]


def whole(folder: Path, manifest="nodules.json") -> bool:
    """Whether ``folder`` holds exactly one set: its manifest and the files it lists (and ``keep.txt``)."""
    listed = json.loads((folder / manifest).read_text())["output_files"]
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    return present - {"keep.txt"} == {manifest, *listed}


# -- the batch script and explain: the same folder names, never each other's files ------------------------

def test_a_set_of_another_owner_under_the_same_manifest_is_refused_and_kept(tmp_path):
    out = tmp_path / "out"
    with files.output_set(out, "m.json", owner="one command") as written:
        written.path("a.txt").write_text("one's")
    before = snapshot(out)
    with pytest.raises(XAIExplainError, match="holds the output of one command"):
        with files.output_set(out, "m.json", owner="another command"):
            pytest.fail("refused before any work")
    assert snapshot(out) == before
    assert json.loads((out / "m.json").read_text())["written_by"] == "one command"


def test_files_a_writer_adds_by_itself_belong_to_the_set(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for run in (1, 2):  # the second into the existing folder: the side file must come along, listed
        with files.output_set(out, "m.json") as written:
            table = written.path("table.tsv")
            table.write_text(f"run {run}")
            table.with_suffix(".schema.tsv").write_text("written by the table's writer")  # not asked for
        assert (out / "table.schema.tsv").is_file() and whole(out, "m.json")


def _batch(*arguments):
    return subprocess.run([sys.executable, str(BATCH), *map(str, arguments), "--point", CENTRE],
                          capture_output=True, text=True)


def test_the_batch_and_explain_never_remove_each_others_series_folders(tmp_path):
    series, _ = small_series(tmp_path / "series")
    name = series_output_name("PHANTOM-1", SERIES_UID)
    batch_out, explain_out = tmp_path / "batch", tmp_path / "explain"
    # the batch first, then explain into the same series folder
    result = _batch("--series", series, "--out", batch_out)
    assert result.returncode == 0, result.stderr
    before = snapshot(batch_out)
    assert "scene.mrml" in before[f"{name}/nodules.json"].decode() and whole(batch_out / name)
    assert any(n.endswith(".schema.tsv") for n in json.loads(before[f"{name}/nodules.json"])["output_files"])
    result = xaiexplain("explain", "--series", series, "--point", CENTRE, "--method", "saliency",
                        "--out", batch_out / name)
    assert_one_line_error(result, str(batch_out / name), "XAIExplainBatch.py")
    assert result.returncode == 2 and snapshot(batch_out) == before
    # explain first, then the batch
    result = xaiexplain("explain", "--series", series, "--point", CENTRE, "--method", "saliency",
                        "--out", explain_out / name)
    assert result.returncode == 0, result.stderr
    before = snapshot(explain_out)
    result = _batch("--series", series, "--out", explain_out)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"{series}: ") and "xaiexplain explain" in line
    assert snapshot(explain_out) == before and temporaries(tmp_path) == []


# -- a single output file: nodules --out -----------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_nodules_out_replaces_only_a_table_it_wrote(tmp_path, suffix):
    mine = tmp_path / f"mine{suffix}"
    mine.write_text("the user's own file")
    assert cli.main(["nodules", "--out", str(mine)]) == 2
    assert mine.read_text() == "the user's own file"
    target = tmp_path / "target.txt"
    target.write_text("the user's own file")
    link = tmp_path / f"link{suffix}"
    link.symlink_to(target)
    assert cli.main(["nodules", "--out", str(link)]) == 2
    assert link.is_symlink() and target.read_text() == "the user's own file"
    table = tmp_path / f"table{suffix}"
    assert cli.main(["nodules", "--out", str(table)]) == 0
    first = table.read_bytes()
    assert cli.main(["nodules", "--out", str(table)]) == 0  # an earlier run's table: replaced
    assert table.read_bytes() == first and temporaries(tmp_path) == []


def test_a_dangling_link_as_an_output_file_is_refused(tmp_path, capsys):
    link = tmp_path / "nodules.csv"
    link.symlink_to(tmp_path / "nowhere.csv")
    assert cli.main(["nodules", "--out", str(link)]) == 2
    message = capsys.readouterr().err
    assert "symbolic link" in message and "xaiexplain-partial" not in message
    assert link.is_symlink() and not (tmp_path / "nowhere.csv").exists()


# -- --out a dangling link, a long name ------------------------------------------------------------------

def test_out_a_dangling_link_is_refused_before_computing_without_naming_a_temporary(tmp_path, monkeypatch, capsys):
    series, _ = small_series(tmp_path / "series")
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "nowhere")

    def must_not_compute(*args, **kwargs):
        raise AssertionError("computed before checking --out")

    monkeypatch.setattr(explanation_files, "explain_series", must_not_compute)
    assert cli.main(["explain", "--series", str(series), "--point", CENTRE, "--method", "saliency",
                     "--out", str(link)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert str(link) in line and "symbolic link" in line and "xaiexplain-partial" not in line
    assert link.is_symlink() and not (tmp_path / "nowhere").exists() and temporaries(tmp_path) == []


def test_any_legal_out_name_can_be_written(tmp_path):
    out = tmp_path / ("o" * 240)
    with files.output_set(out, "m.json") as written:
        written.path("a.txt").write_text("x")
    with files.output_set(out, "m.json") as written:  # into the existing folder
        written.path("a.txt").write_text("y")
    assert (out / "a.txt").read_text() == "y"
    single = tmp_path / ("f" * 240 + ".json")
    files.write_json_atomic(single, {"a": 1})
    assert json.loads(single.read_text()) == {"a": 1} and temporaries(tmp_path) == []


# -- runs writing the same set at once --------------------------------------------------------------------

@pytest.mark.parametrize("existing", [False, True])
def test_a_set_committed_by_another_run_meanwhile_is_replaced_as_a_rerun_would(tmp_path, existing):
    out = tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "keep.txt").write_text("the user's own file")
    with files.output_set(out, "m.json", owner="cmd") as late:
        late.path("a.txt").write_text("late")
        late.path("only-late.txt").write_text("late")
        with files.output_set(out, "m.json", owner="cmd") as early:  # another run, done first
            early.path("a.txt").write_text("early")
            early.path("only-early.txt").write_text("early")
    assert (out / "a.txt").read_text() == "late" and not (out / "only-early.txt").exists()
    assert whole(out, "m.json") and temporaries(tmp_path) == []


def test_two_explain_runs_into_one_new_out_at_once_both_succeed_with_one_whole_set(tmp_path, monkeypatch, capsys):
    series, _ = small_series(tmp_path / "series")
    out = tmp_path / "out"
    real = explanation_files.explain_series
    other_run_done = []

    def the_other_run_finishes_first(*args, **kwargs):
        if not other_run_done:
            other_run_done.append(True)
            assert cli.main(["explain", "--series", str(series), "--point", CENTRE, "--method", "grad-cam",
                             "--out", str(out)]) == 0
        return real(*args, **kwargs)

    monkeypatch.setattr(explanation_files, "explain_series", the_other_run_finishes_first)
    status = cli.main(["explain", "--series", str(series), "--point", CENTRE, "--method", "saliency", "--out", str(out)])
    assert status == 0, capsys.readouterr().err
    assert json.loads((out / "nodules.json").read_text())["methods"] == ["saliency"]
    assert whole(out) and temporaries(tmp_path) == []


# -- a full disk ------------------------------------------------------------------------------------------

def test_a_full_disk_is_one_sentence_naming_the_output(tmp_path, monkeypatch, capsys):
    series, _ = small_series(tmp_path / "series")
    out = tmp_path / "out"

    def no_space(*args, **kwargs):  # what SimpleITK says when the disk is full
        raise RuntimeError("Exception thrown in SimpleITK ImageFileWriter_Execute: ... _nrrdGzWrite: failed to "
                           "write to file")

    monkeypatch.setattr(explanation_files.sitk, "WriteImage", no_space)
    monkeypatch.setattr(files, "_free_bytes", lambda path: 0, raising=False)
    assert cli.main(["explain", "--series", str(series), "--point", CENTRE, "--method", "saliency",
                     "--out", str(out)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "disk" in line and "full" in line and str(out) in line
    assert "SimpleITK" not in line and "xaiexplain-partial" not in line
    assert not out.exists() and temporaries(tmp_path) == []


def test_an_os_error_without_a_file_name_names_the_output(tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setattr(files, "_free_bytes", lambda path: 1 << 30, raising=False)

    def write_fails(self, *args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")  # as a failed write() says it: no file name

    with pytest.raises(XAIExplainError) as raised:
        with files.output_set(out, "m.json") as written:
            target = written.path("a.txt")
            monkeypatch.setattr(Path, "write_text", write_fails)
            target.write_text("x")
    message = str(raised.value)
    assert str(out) in message and "Input/output error" in message
    assert "None" not in message and "xaiexplain-partial" not in message
    monkeypatch.undo()
    with pytest.raises(XAIExplainError, match="disk holding .* is full"):
        with files.output_set(out, "m.json") as written:
            raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(XAIExplainError) as raised:  # a file of the set written through atomic_path (a panel)
        with files.output_set(out, "m.json") as written:
            with files.atomic_path(written.path("panel.png")):
                raise OSError(errno.ENOSPC, "No space left on device")
    assert str(out / "panel.png") in str(raised.value) and "xaiexplain-partial" not in str(raised.value)
    assert list(tmp_path.iterdir()) == []
