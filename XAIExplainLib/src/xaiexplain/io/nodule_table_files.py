"""What ``xaiexplain nodules`` writes: the LIDC nodule table as CSV or JSON, one file that replaces only a
table an earlier run wrote (``files.atomic_path``), never a user's file of the same name."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from xaiexplain.errors import XAIExplainError
from xaiexplain.io.files import atomic_path, json_text
from xaiexplain.io.json_input import read_json

TABLE_SUFFIXES = (".csv", ".json")


def check_table_name(out: Path) -> None:
    if out.suffix.lower() not in TABLE_SUFFIXES:
        raise XAIExplainError(f"--out {out} must end in .csv or .json")


def write_nodule_table(table, out: Path) -> None:
    """``table`` (``lidc.nodule_table``) into ``out``, CSV or JSON by its suffix."""
    check_table_name(out)
    text = json_text([n.to_json() for n in table]) if out.suffix.lower() == ".json" else nodule_table_csv(table)
    with atomic_path(out, written_by_us=is_nodule_table) as temporary:  # replaces only an earlier table
        temporary.write_text(text)


def nodule_table_columns() -> list[str]:
    from xaiexplain.data.lidc import RATING_NAMES

    return ["patient_id", "series_instance_uid", "nodule_index", "n_readers", "label", "exclusion", *RATING_NAMES,
            "diameter_mm", "volume_mm3", "centroid_i", "centroid_j", "centroid_k", "centroid_x_mm", "centroid_y_mm",
            "centroid_z_mm", "bbox_i0", "bbox_i1", "bbox_j0", "bbox_j1", "bbox_k0", "bbox_k1", "annotation_ids"]


def is_nodule_table(path: Path) -> bool:
    """Whether ``path`` holds a table ``nodules --out`` wrote (.csv: its header line; .json: a list of its
    records), which a rerun may replace; any other file is the user's."""
    try:
        if path.suffix.lower() == ".csv":
            with open(path, newline="") as f:
                return next(csv.reader([f.readline()]), []) == nodule_table_columns()
        records = read_json(path)
    except (OSError, UnicodeDecodeError, ValueError, XAIExplainError):
        return False
    return isinstance(records, list) and all(isinstance(r, dict) and {"series_instance_uid", "nodule_index",
                                                                      "annotation_ids"} <= r.keys() for r in records)


def nodule_table_csv(table) -> str:
    from xaiexplain.data.lidc import RATING_NAMES

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(nodule_table_columns())
    for n in table:
        writer.writerow([n.patient_id, n.series_instance_uid, n.nodule_index, n.n_readers, n.label or "",
                         n.exclusion or "", *(n.ratings[r] for r in RATING_NAMES), f"{n.diameter_mm:.2f}",
                         f"{n.volume_mm3:.1f}", *(f"{c:.2f}" for c in n.centroid_ijk),
                         *(f"{c:.2f}" for c in n.centroid_lps), *(v for box in n.bbox_ijk for v in box),
                         " ".join(str(a) for a in n.annotation_ids)])
    return buffer.getvalue()
