"""Writing outputs without ever losing a user's data.

The rules every command that writes follows:
- A single file appears whole or not at all: it is written to a temporary name beside it and renamed.
- An **output set** (the files one command writes into one folder, listed by a manifest written last)
  is whole or absent under its final name. A new folder is written as a hidden temporary sibling and
  renamed in one step. Into an existing folder the set's files are staged in a hidden temporary folder
  inside it, then renamed into place one by one with the manifest last; a re-run removes only the files
  that the earlier manifest lists, and refuses to replace a file that no earlier set of this kind wrote.
- Nothing is ever removed that the library did not create: temporaries of its own (left by a process
  that is known to be dead, on this host) and files its own earlier manifests list. A manifest records the
  command that wrote the set (``"written_by"``); a set of another command under the same manifest name is
  refused, never replaced.
- Commits into one folder are serialised (a lock on the folder above the set) and read the earlier set
  at that moment, so that runs writing the same set at once end with one whole set: the last one's.
- A full disk and other OS errors while writing are one sentence naming the output, never a temporary.
- Catchable signals (SIGINT, SIGTERM, SIGHUP) end the computation through the normal clean-up, and are
  held back while a set is being committed, so that a commit is never half done.
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Callable

from xaiexplain.errors import XAIExplainError
from xaiexplain.io.json_input import read_json
from xaiexplain.io.temporaries import remove_stale_temporaries, temporary_name
from xaiexplain.termination import signals_held

MANIFEST_FILES_KEY = "output_files"
MANIFEST_OWNER_KEY = "written_by"
_DISK_FULL_BYTES = 1 << 20  # less free space than this after a failed write: the disk is full


def safe_name(text: str, fallback: str = "unnamed", max_length: int = 80) -> str:
    """A file name made from untrusted text (a DICOM header): letters, digits and ``._+-`` only, no
    separators or control characters, never ``.``, ``..`` or hidden, never empty."""
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", str(text)).strip("._-")[:max_length].strip("._-")
    return name or fallback


# -- single files ---------------------------------------------------------------------------------------

def json_text(data) -> str:
    """``data`` as strict JSON: a NaN or infinite float (an undefined metric) becomes null, since JSON has
    no NaN and readers other than Python's refuse it. (Values a user acts on, such as probabilities, are
    checked to be finite where they are computed.)"""
    def strict(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {key: strict(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [strict(item) for item in value]
        return value

    return json.dumps(strict(data), indent=1, allow_nan=False)


def write_json_atomic(path, data) -> None:
    """Write ``data`` as JSON (``json_text``) to ``path`` through a temporary file and a rename."""
    text = json_text(data)
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def write_csv_rows(path, rows: list[dict]) -> None:
    """``rows`` (dicts with the same keys) as a CSV file with a header line."""
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)


@contextlib.contextmanager
def atomic_path(path, written_by_us: Callable[[Path], bool] | None = None):
    """Yield a temporary file path beside ``path``; on success it is renamed to ``path``, on error removed.
    ``path`` must not be an existing folder or a symbolic link (a link is the user's, not a file to replace).
    With ``written_by_us``, an existing ``path`` is replaced only where ``written_by_us(path)`` says an
    earlier run of this command wrote it, as output sets replace only their own files."""
    path = Path(path)
    if path.is_symlink():
        raise XAIExplainError(f"{path} is a symbolic link{_link_target(path)}; give the name of a file to write, "
                              "not a link")
    if path.is_dir():
        raise XAIExplainError(f"{path} is a folder, not a file that can be written")
    if written_by_us is not None and path.exists() and not written_by_us(path):
        raise XAIExplainError(f"{path} already exists and no earlier run of this command wrote it; choose a new "
                              "file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise XAIExplainError(f"cannot write into {path.parent} ({error.strerror or error})") from None
    remove_stale_temporaries(path.parent)
    temporary = path.parent / temporary_name(path.stem, path.suffix)
    try:
        with _errors_named(path, temporary):
            yield temporary
            _give_default_permissions(temporary)
            os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _link_target(path: Path) -> str:
    target = os.readlink(path)
    return f" to {target}, which does not exist" if not path.exists() else f" to {target}"


def _free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


@contextlib.contextmanager
def _errors_named(target: Path, temporary: Path):
    """OS errors (and a writer's own errors on a full disk, such as SimpleITK's RuntimeError) while
    ``target`` is written through ``temporary`` as one sentence that names ``target``, never the temporary."""
    try:
        yield
    except XAIExplainError as error:
        if str(temporary) not in str(error):
            raise
        # a writer's own sentence (a file written through atomic_path inside a set) names the temporary
        raise XAIExplainError(str(error).replace(str(temporary), str(target))) from None
    except Exception as error:
        free = _free_bytes(temporary if temporary.exists() else temporary.parent)
        os_error = isinstance(error, OSError)
        if (os_error and error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))) or (
                free is not None and free < _DISK_FULL_BYTES):
            raise XAIExplainError(f"the disk holding {target} is full (No space left on device); {target} was not "
                                  "written") from None
        if not os_error:
            raise
        name = error.filename
        if name is not None and not _is_within(Path(os.fsdecode(name)), temporary):
            raise  # not the output: the error names its own path
        where = target if name is None else target / Path(os.fsdecode(name)).relative_to(temporary)
        raise XAIExplainError(f"could not write {where} ({error.strerror or error})") from None


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _give_default_permissions(path: Path) -> None:
    """Files made through temporary files (mkstemp, some writers) are private; give them the user's default."""
    umask = os.umask(0)
    os.umask(umask)
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if item.is_file():
            os.chmod(item, 0o666 & ~umask)


# -- output sets ----------------------------------------------------------------------------------------

class OutputSet:
    """The files of one output set while they are written: ``path(name)`` gives where to write a file
    of the set (a plain relative name), ``write_json`` writes one; the manifest is written by the commit."""

    def __init__(self, folder: Path, staging: Path, manifest: str | None):
        self.folder = folder
        self.staging = staging
        self.manifest = manifest
        self.names: list[str] = []
        self.manifest_data: dict | None = None  # the caller's, written as the manifest by the commit

    def path(self, name: str) -> Path:
        parts = Path(name).parts
        if not parts or Path(name).is_absolute() or any(p in ("", ".", "..") for p in parts) or name == self.manifest:
            raise ValueError(f"{name!r} is not a file name of this output set")
        if name not in self.names:
            self.names.append(name)
        target = self.staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def write_json(self, name: str, data) -> Path:
        path = self.path(name)
        path.write_text(json_text(data))
        return path


def _earlier_set(folder: Path, manifest: str | None, owner: str | None = None) -> list[str] | None:
    """The files an earlier set of this kind in ``folder`` lists; None where there is none. A manifest that
    this library did not write, or that another command (``owner``) wrote, refuses the set."""
    if manifest is None or not (folder / manifest).exists():
        return None
    try:
        data = read_json(folder / manifest)
        names = data[MANIFEST_FILES_KEY]
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise TypeError
    except (OSError, ValueError, TypeError, KeyError, XAIExplainError):
        raise XAIExplainError(f"{folder} already holds a {manifest} that this library did not write; choose a "
                              "new or empty output folder") from None
    written_by = data.get(MANIFEST_OWNER_KEY)
    if written_by is not None and written_by != owner:
        raise XAIExplainError(f"{folder} holds the output of {written_by} ({manifest}), which this command never "
                              "replaces; choose another output folder")
    return [n for n in names if ".." not in Path(n).parts and not Path(n).is_absolute()]


@contextlib.contextmanager
def output_set(folder, manifest: str | None, written_by_us: Callable[[Path], bool] | None = None,
               owner: str | None = None):
    """Write one output set into ``folder``; yields an :class:`OutputSet`. On success the caller's
    ``manifest_data`` (set as ``writer.manifest_data``) is written last as ``manifest`` with the list of
    the set's files under ``"output_files"`` (every file staged, also those a writer adds by itself) and
    ``owner`` (the command, e.g. ``"xaiexplain explain"``) under ``"written_by"``; on any error or signal
    nothing of the set is left, nor a folder that was made for it.

    The folder is created new, or, if it exists, only the set's own files are written into it. The earlier
    set there is what the earlier manifest lists (read again when committing, so that a set another run
    committed meanwhile is replaced as a rerun would replace it), or, for sets without a manifest (a DICOM
    series), the files directly in the folder for which ``written_by_us(path)`` is true; its files are
    replaced or, if this set lacks them, removed. Any other file of the same name as one of this set's, and
    a manifest of another owner, refuse the set with one sentence. Writability is checked here, before the
    caller computes anything.
    """
    folder = Path(folder)
    staging, made = _start(folder, manifest, owner)
    writer = OutputSet(folder, staging, manifest)
    committed = False
    try:
        with _errors_named(folder, staging):
            yield writer
            _stage_manifest(writer, owner)
            _give_default_permissions(staging)
            with _commit_lock(folder.parent), signals_held():
                _commit(folder, writer, written_by_us, owner)
        committed = True
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        if not committed:
            remove_empty_folders(made)


def _start(folder: Path, manifest: str | None, owner: str | None):
    """A new staging folder for this set, after the checks that can fail before any work; and the folders
    made for it (to be removed again if the set is not written)."""
    if folder.is_symlink() and not folder.exists():
        raise XAIExplainError(f"{folder} is a symbolic link{_link_target(folder)}; give a folder to write into")
    if folder.exists() and not folder.is_dir():
        raise XAIExplainError(f"{folder} exists and is not a folder; give a folder to write into")
    existing = folder.is_dir()
    if existing:
        _earlier_set(folder, manifest, owner)
    home = folder if existing else folder.parent
    try:
        made = make_folders(home)
        remove_stale_temporaries(home)
        staging = home / temporary_name(folder.name, inside=existing)
        staging.mkdir()
    except OSError as error:
        raise XAIExplainError(f"cannot write into {home} ({error.strerror or error})") from None
    return staging, made


def make_folders(folder: Path) -> list[Path]:
    """``mkdir -p folder``; returns the folders it made, deepest first."""
    folder = Path(folder)
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove those of ``folders`` (deepest first; folders this process made) that are still empty."""
    for made in folders:
        try:
            made.rmdir()
        except OSError:
            return  # not empty (another run wrote into it meanwhile), or gone


def check_output_folder(folder, manifest: str | None, owner: str | None = None) -> None:
    """Fail now, with one sentence, where ``output_set(folder, manifest)`` would fail to start: for commands
    that compute long before they write (training). Leaves nothing behind."""
    staging, made = _start(Path(folder), manifest, owner)
    staging.rmdir()
    remove_empty_folders(made)


def _stage_manifest(writer: OutputSet, owner: str | None) -> None:
    """Add the files a writer staged by itself (a table's .schema.tsv beside its .tsv) to the set, and write
    the manifest into the staging folder."""
    for path in sorted(writer.staging.rglob("*")):
        name = path.relative_to(writer.staging).as_posix()
        if path.is_file() and name not in writer.names and name != writer.manifest:
            writer.names.append(name)
    if writer.manifest is not None:
        data = dict(writer.manifest_data or {})
        data[MANIFEST_FILES_KEY] = sorted(writer.names)
        if owner is not None:
            data[MANIFEST_OWNER_KEY] = owner
        (writer.staging / writer.manifest).write_text(json_text(data))


@contextlib.contextmanager
def _commit_lock(folder: Path):
    """An exclusive lock on ``folder`` (the one above the set) while a set is committed, so that the commits of
    runs writing the same set at once follow one another. Best effort: without ``fcntl`` (Windows) or where
    the file system has no locks, commits are not serialised."""
    try:
        import fcntl

        descriptor = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _commit(folder: Path, writer: OutputSet, written_by_us, owner: str | None) -> None:
    """Put the staged set in place: the folder renamed whole where there is none, else the set's files into it."""
    if not folder.exists() and not folder.is_symlink():
        os.rename(writer.staging, folder)
        return
    if not folder.is_dir():
        raise XAIExplainError(f"{folder} was made while this run computed and is not a folder; nothing was written")
    earlier = _earlier_set(folder, writer.manifest, owner) or []
    if written_by_us is not None:
        earlier += [p.name for p in folder.iterdir() if p.is_file() and written_by_us(p)]
    _commit_into(folder, writer, earlier)


def _commit_into(folder: Path, writer: OutputSet, earlier: list[str]) -> None:
    new = set(writer.names)
    foreign = [n for n in writer.names if (folder / n).exists() and n not in earlier]
    if foreign:
        raise XAIExplainError(f"{folder} already holds {foreign[0]}, which no earlier run of this command wrote; "
                              "choose a new or empty output folder")
    if writer.manifest is not None and (folder / writer.manifest).exists():
        (folder / writer.manifest).unlink()  # from here until the new manifest the earlier set is absent
    for name in writer.names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(writer.staging / name, folder / name)
    for name in earlier:
        stale = folder / name
        if name not in new and stale.is_file() and not stale.is_symlink():
            stale.unlink()
    if writer.manifest is not None:
        os.replace(writer.staging / writer.manifest, folder / writer.manifest)
