"""The library's temporary names, and removing those a killed process of the library left behind (never
one whose owner may still be running). ``io.files`` writes every output through them."""
from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
from pathlib import Path

# Temporary names: ".<name>.xaiexplain-partial~<host>~<pid>~<token><suffix>" beside the target, or
# ".xaiexplain-partial~<host>~<pid>~<token>" inside an existing output folder. Host and pid tell
# whether the owner may still be running; the suffix keeps writers that choose a format by it working.
# The name and host are shortened so that a temporary is never longer than a legal name it stands for.
_TEMPORARY = re.compile(r"\.xaiexplain-partial~(?P<host>[^~/]+)~(?P<pid>\d+)~(?P<token>[A-Za-z0-9]+)(\.[^~/]*)?$")
_NAME_IN_TEMPORARY, _HOST_IN_TEMPORARY, _SUFFIX_IN_TEMPORARY = 16, 32, 16

def _host() -> str:
    return (re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "host")[:_HOST_IN_TEMPORARY]


def temporary_name(name: str, suffix: str = "", inside: bool = False) -> str:
    """A hidden temporary name owned by this process (see ``remove_stale_temporaries``), at most about 90
    characters whatever the length of ``name`` and ``suffix``."""
    if len(suffix) > _SUFFIX_IN_TEMPORARY or "~" in suffix:
        suffix = ""
    tag = f".xaiexplain-partial~{_host()}~{os.getpid()}~{secrets.token_hex(4)}{suffix}"
    return tag if inside else f".{name[:_NAME_IN_TEMPORARY]}{tag}"


def _owner_is_dead(name: str) -> bool:
    match = _TEMPORARY.search(name)
    if match is None or match["host"] != _host():
        return False  # not ours, or another machine's (a shared disk): its owner may be alive
    pid = int(match["pid"])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, someone else's
    return False


def remove_stale_temporaries(folder) -> list[Path]:
    """Remove the temporaries in ``folder`` that a process of this library left when it was killed;
    never those of a process that may still be running. Returns what was removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if _TEMPORARY.search(entry.name) and _owner_is_dead(entry.name):
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed
