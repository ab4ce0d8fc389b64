"""Shared test set-up: the LIDC nodule-table cache lives in the repository (reused between runs, never in
$HOME), and matplotlib draws without a display."""
import os
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
os.environ.setdefault("XAIEXPLAIN_CACHE", str(REPOSITORY / ".xaiexplain-test-cache"))
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def nodules_0078():
    """The four nodules of LIDC-IDRI-0078 with their consensus masks."""
    from xaiexplain import lidc

    return lidc.scan_nodules("LIDC-IDRI-0078", with_masks=True)
