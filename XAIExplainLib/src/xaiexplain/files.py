"""Output files are written whole or not at all: to a temporary name beside the target, then renamed."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path


def write_json_atomic(path, data) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=1))


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``, on error removed.

    Works for files and folders alike (the caller creates what it writes at the yielded path)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary name keeps the suffix: writers such as SimpleITK choose the format by it.
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".partial{path.suffix}")
    os.close(handle)
    temporary = Path(name)
    temporary.unlink()
    try:
        yield temporary
        _give_default_permissions(temporary)
        if path.is_dir() and temporary.is_dir():
            shutil.rmtree(path)
        os.replace(temporary, path)
    finally:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        elif temporary.exists():
            temporary.unlink()


def _give_default_permissions(path: Path) -> None:
    """Files made through temporary files (mkstemp, some writers) are private; give them the user's default."""
    umask = os.umask(0)
    os.umask(umask)
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if item.is_file():
            os.chmod(item, 0o666 & ~umask)
