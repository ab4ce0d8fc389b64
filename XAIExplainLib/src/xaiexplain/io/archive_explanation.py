"""A whole LIDC-IDRI archive explained (``xaiexplain explain --lidc-root DIR --method M --out OUT``).

Every CT series of the download tree that the LIDC readers annotated is explained as ``xaiexplain explain
--series ... --lidc`` explains one, into ``OUT/<PatientID>_<SeriesInstanceUID>/`` (the batch script's
folder name), in the formats asked for (``--format dicom,nifti`` as for one series). A series whose folder
already holds the explanation with the same methods, options and model, in every format asked for, is kept,
so a rerun does only what is missing; ``--shard K/N`` explains one part of the series (the same
part on every machine) and writes no summary; a run without ``--shard`` explains what is still missing and
writes ``OUT/nodules.csv``, one row per nodule and method: the readers' label and ratings, the
classifier's probability and decision, and where the evidence for the decision peaks against the readers'
consensus mask (inside, distance in mm, on how many slices each slice's own peak lies inside), with
``OUT/archive.json`` (what was explained, what failed and why) as its manifest.
"""
from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from pathlib import Path

from xaiexplain import __version__
from xaiexplain.data import lidc
from xaiexplain.data.dicom_index import index_series
from xaiexplain.devices import select_device
from xaiexplain.errors import XAIExplainError
from xaiexplain.io.json_input import read_json
from xaiexplain.explainers.on_patches import split_options
from xaiexplain.io.explanation_files import (
    EXPLAIN_OWNER,
    SERIES_MANIFEST,
    recorded_options,
    write_series_explanation,
)
from xaiexplain.io.dicom_outputs import check_dicom_writer
from xaiexplain.io.files import check_output_folder, make_folders, output_set, remove_empty_folders
from xaiexplain.io.output_formats import DICOM, NRRD, checked_formats
from xaiexplain.models.bundles import DEFAULT_CLASSIFIER, load_bundle
from xaiexplain.parallel import Shard, map_in_workers
from xaiexplain.slicer.scene_files import series_output_name

ARCHIVE_MANIFEST = "archive.json"
SUMMARY_TABLE = "nodules.csv"


@dataclass(frozen=True)
class ArchiveSeries:
    """A CT series of a download tree with the LIDC readers' nodules."""

    patient_id: str
    series_instance_uid: str
    folder: Path  # the deepest folder holding its files: read it with this SeriesInstanceUID
    files: tuple[Path, ...]
    nodules: tuple[lidc.LidcNodule, ...]  # every annotated nodule (any number of readers; see label)

    @property
    def output_name(self) -> str:
        return series_output_name(self.patient_id, self.series_instance_uid)


def lidc_archive_series(root, workers: int = 1, progress: bool = False) -> list[ArchiveSeries]:
    """Every CT series under ``root`` that the LIDC readers annotated, by patient and SeriesInstanceUID, found
    from the DICOM headers in any folder layout (``data.dicom_index``); for the batch script as well."""
    by_series = {}
    for nodule in lidc.nodule_table():
        by_series.setdefault(nodule.series_instance_uid, []).append(nodule)
    series = [ArchiveSeries(patient_id=entry.patient_id, series_instance_uid=uid, folder=entry.folder,
                            files=tuple(entry.files), nodules=tuple(by_series[uid]))
              for uid, entry in index_series(root, workers, progress).of_modality("CT").items() if uid in by_series]
    return sorted(series, key=lambda s: (s.patient_id, s.series_instance_uid))


@dataclass(frozen=True)
class _SeriesTask:
    series: ArchiveSeries
    out: str
    methods: tuple[str, ...]
    model: str
    options: tuple
    device: str
    allow_gaps: bool
    command: str
    allow_implausible_hu: bool = False
    formats: tuple[str, ...] = (NRRD,)


def _is_done(folder: Path, task: _SeriesTask) -> bool:
    """Whether ``folder`` holds this task's explanation (same methods, options and model, of the LIDC
    annotations, written by ``explain``, in every format asked for), whole."""
    try:
        written = read_json(folder / SERIES_MANIFEST)
    except (OSError, XAIExplainError):
        return False
    return (isinstance(written, dict) and written.get("written_by", EXPLAIN_OWNER) == EXPLAIN_OWNER
            and _of_lidc_annotations(written)
            and written.get("series_instance_uid") == task.series.series_instance_uid
            and written.get("methods") == list(task.methods) and written.get("model") == task.model
            and written.get("options") == recorded_options(dict(task.options))
            # written before formats were recorded: NRRD only
            and set(task.formats) <= set(written.get("formats", [NRRD])))


def _of_lidc_annotations(written: dict) -> bool:
    """Whether an explanation's manifest is of the LIDC annotations (not of --point); manifests written
    before "nodules_from" was recorded say it by the readers' record on every nodule."""
    if "nodules_from" in written:
        return written["nodules_from"] == "lidc"
    rows = written.get("nodules")
    return isinstance(rows, list) and bool(rows) and all(isinstance(row, dict) and "lidc" in row for row in rows)


def _explain_series(task: _SeriesTask) -> dict:
    """Explain one series into its folder, unless it is there already. Any error of one series is its
    result, so that the others are explained and summarised (a defect too: it is said as one)."""
    folder = Path(task.out) / task.series.output_name
    try:
        if _is_done(folder, task):
            return {"series": task.series.output_name, "status": "kept"}
        write_series_explanation(task.series.folder, folder, list(task.methods), model=task.model,
                                 series_uid=task.series.series_instance_uid, use_lidc=True,
                                 options=dict(task.options), command=task.command, allow_gaps=task.allow_gaps,
                                 device=task.device, allow_implausible_hu=task.allow_implausible_hu,
                                 formats=task.formats)
    except XAIExplainError as error:
        return {"series": task.series.output_name, "status": "failed", "reason": str(error)}
    except OSError as error:
        return {"series": task.series.output_name, "status": "failed",
                "reason": f"{error.strerror or error}: {error.filename}"}
    except Exception as error:
        return {"series": task.series.output_name, "status": "failed",
                "reason": f"internal error {type(error).__name__}: {error}"}
    return {"series": task.series.output_name, "status": "explained"}


def explain_archive(root, out, methods, model=None, options: dict | None = None, workers: int = 1,
                    shard: Shard | None = None, device: str = "auto", allow_gaps: bool = False,
                    progress: bool = True, command: str = "", allow_implausible_hu: bool = False,
                    formats=None) -> dict:
    """Explain (``shard``: one part of) the annotated series of the download under ``root`` into ``out``;
    returns the summary (``archive.json``; without ``shard`` also written, with ``nodules.csv``). ``formats``:
    each series' as ``write_series_explanation`` takes them (NRRD always; DICOM, NIfTI)."""
    started = time.time()
    options = dict(options or {})
    split_options(methods, options)  # unknown methods and options end here, before anything is read
    formats = checked_formats(formats)
    if DICOM in formats:
        check_dicom_writer()  # no dcmqi here: one sentence, not one failure per series
    select_device(device)  # --device cuda on a machine without a GPU ends here
    model = str(load_bundle(model or DEFAULT_CLASSIFIER).path)
    check_output_folder(out, ARCHIVE_MANIFEST, EXPLAIN_OWNER)
    every = lidc_archive_series(root, workers, progress)
    if not every:
        raise XAIExplainError(f"{root} holds no CT series that the LIDC readers annotated")
    mine = shard.take(every) if shard else every
    tasks = [_SeriesTask(series, str(out), tuple(methods), model, tuple(sorted(options.items())), device, allow_gaps,
                         command, allow_implausible_hu=allow_implausible_hu, formats=formats) for series in mine]
    made = make_folders(out)  # here, not by the first series: a run that writes nothing leaves no empty --out
    try:
        results = map_in_workers(_explain_series, tasks, workers, "series", progress, unit="series")
        summary = {"root": str(root), "methods": list(methods), "model": model, "options": recorded_options(options),
                   "formats": list(formats),
                   "shard": str(shard) if shard else None, "series_in_archive": len(every), "series": results,
                   "command": command, "library_version": __version__}
        if shard is None:
            with output_set(out, ARCHIVE_MANIFEST, owner=EXPLAIN_OWNER) as written:
                written.path(SUMMARY_TABLE).write_text(summary_table(out, mine, methods, results))
                summary["seconds"] = round(time.time() - started, 1)
                written.manifest_data = summary
        else:
            summary["seconds"] = round(time.time() - started, 1)
    finally:
        remove_empty_folders(made)
    return summary


SUMMARY_COLUMNS = ("patient_id", "series_instance_uid", "nodule", "n_readers", "label", "exclusion",
                   *lidc.RATING_NAMES, "diameter_mm", "slices", "probability", "decision", "threshold", "method",
                   "peak_x_mm", "peak_y_mm", "peak_z_mm", "peak_relevance", "peak_in_consensus",
                   "peak_distance_to_consensus_mm", "slices_with_peak_in_consensus")


def summary_table(out, series: list[ArchiveSeries], methods, results: list[dict]) -> str:
    """``nodules.csv``: one row per nodule and method of every series explained, read from its folder; a
    series whose folder cannot be read (changed meanwhile) becomes failed in ``results``, with the reason."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(SUMMARY_COLUMNS)
    for entry, result in zip(series, results):
        if result["status"] == "failed":
            continue
        manifest = Path(out) / entry.output_name / SERIES_MANIFEST
        try:
            writer.writerows(_summary_rows(entry, read_json(manifest), methods))
        except (OSError, ValueError, LookupError, TypeError, XAIExplainError) as error:
            result.update(status="failed", reason=f"{manifest} could not be read for the summary "
                                                  f"({type(error).__name__}: {error})")
    return buffer.getvalue()


def _summary_rows(entry: ArchiveSeries, written: dict, methods) -> list[list]:
    rows = []
    for row in written["nodules"]:
        record = row["lidc"]
        for method in methods:
            found = row["methods"][method]
            rows.append([
                entry.patient_id, entry.series_instance_uid, row["name"], record["n_readers"],
                record["label"] or "", record["exclusion"] or "",
                *(record["ratings"][r] for r in lidc.RATING_NAMES),
                f"{record['diameter_mm']:.2f}", row["slices"], f"{row['probability']:.4f}", row["decision"],
                f"{row['threshold']:.4f}", method, *(f"{c:.2f}" for c in found["peak_lps"]),
                f"{found['peak_relevance']:.6g}", "yes" if found["peak_in_consensus"] else "no",
                f"{found['peak_distance_to_consensus_mm']:.2f}",
                f"{sum(found['slice_peaks_in_consensus'])} of {len(found['slice_peaks_in_consensus'])}"])
    return rows
