"""Explain CT series without a GUI and save each as a Slicer scene with NRRD overlays.

Under 3D Slicer:
    Slicer --no-main-window --python-script Scripts/XAIExplainBatch.py --series DIR [DIR ...] --out OUT [options]
    Slicer --no-main-window --python-script Scripts/XAIExplainBatch.py --lidc-root LIDC-IDRI/ --out OUT [options]
Under plain Python with the xaiexplain library and slicer-core installed:
    python Scripts/XAIExplainBatch.py --series DIR [DIR ...] --out OUT [options]

For each series folder it writes OUT/<PatientID>_<SeriesInstanceUID>/ holding scene.mrml (open it in
Slicer: the relevance overlay, evidence outlines, counterfactuals and results table are set up), the NRRD,
.seg.nrrd, TSV and JSON files it references (relative to scene.mrml, so the folder can be moved), and
nodules.json; with --format dicom,nifti also the DICOM objects and NIfTI files `xaiexplain explain --format`
writes (the same names and UIDs). Each series' folder is written whole or not at all; files already in OUT
survive. One bad series never stops the others. Exit status 0 when every series worked; otherwise 1, with one
line per failed series on stderr (2 for a bad command line, 130 or 143 when interrupted).
"""
import sys
from pathlib import Path


def parse_arguments(argv, parse_point):
    from xaiexplain.apps.archive_commands import add_implausible_hu_argument
    from xaiexplain.apps.arguments import output_formats
    from xaiexplain.apps.cli import ArgumentParser  # a bad command line is one line, as the command line's

    parser = ArgumentParser(
        prog="XAIExplainBatch.py", description=__doc__.split("\n\n")[0],
        epilog="Points are LPS millimetres, as in the xaiexplain command line and DICOM; without --point the "
               "LIDC annotations of each series are used (found by its SeriesInstanceUID).")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--series", nargs="+", type=Path, metavar="DIR", help="folders each holding one DICOM series")
    where.add_argument("--lidc-root", type=Path, metavar="DIR",
                       help="a LIDC-IDRI download tree: every CT series in it that the LIDC readers annotated "
                            "(found by SeriesInstanceUID from the headers, in any folder layout)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (one subfolder per series)")
    parser.add_argument("--method", action="append", dest="methods", metavar="NAME",
                        help="explanation method, repeatable (default grad-cam); e.g. cycle-am, iterative:lrp")
    parser.add_argument("--point", action="append", type=parse_point, dest="points", metavar="X,Y,Z",
                        help="a nodule location in LPS mm, repeatable; applies to every series")
    parser.add_argument("--model", help="classifier bundle folder or shipped name (default demo-classifier)")
    parser.add_argument("--cycle-am", dest="cycle_am", help="cycle-am bundle (default demo-cycle-am)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--allow-gaps", action="store_true", dest="allow_gaps",
                        help="explain series with missing slices on interpolated ones (recorded in nodules.json)")
    add_implausible_hu_argument(parser)
    parser.add_argument("--format", action="append", type=output_formats, default=[], dest="formats",
                        metavar="FORMATS", help="also write dicom (a Segmentation and a Parametric Map per method) "
                                                "and/or nifti, as xaiexplain explain --format: comma-separated or "
                                                "repeated (the scene's images are NRRD)")
    return parser.parse_args(argv)


def run(argv) -> int:
    try:
        import xaiexplain.slicer as xs
        from xaiexplain.apps.arguments import parse_point
        from xaiexplain.errors import XAIExplainError
        from xaiexplain.termination import handle_termination_signals, interrupted_exit_status
    except ImportError as error:
        print(f"the xaiexplain library or its requirements are missing here ({error}): in Slicer add the XAIExplain "
              "module (it puts the library on the path) and press Apply once (it installs the requirements); "
              "under plain Python pip install XAIExplainLib", file=sys.stderr)
        return 1
    handle_termination_signals()
    arguments = parse_arguments(argv, parse_point)
    methods = arguments.methods or ["grad-cam"]
    failures, written = [], {}
    try:
        if arguments.lidc_root is not None:
            from xaiexplain.io.archive_explanation import lidc_archive_series

            try:
                found = lidc_archive_series(arguments.lidc_root)
            except XAIExplainError as error:
                print(f"{arguments.lidc_root}: {error}", file=sys.stderr)
                return 2
            if not found:
                print(f"{arguments.lidc_root} holds no CT series that the LIDC readers annotated", file=sys.stderr)
                return 2
            series = [(entry.folder, entry.series_instance_uid) for entry in found]
        else:
            series = [(folder, None) for folder in arguments.series]
        for folder, series_uid in series:
            try:
                scene_file = xs.explain_series_folder(folder, arguments.out, methods, arguments.points,
                                                      arguments.model, arguments.cycle_am, arguments.device,
                                                      series_instance_uid=series_uid, allow_gaps=arguments.allow_gaps,
                                                      allow_implausible_hu=arguments.allow_implausible_hu,
                                                      written_by_this_run=written,
                                                      formats=[f for chosen in arguments.formats for f in chosen])
                print(f"{folder}: {scene_file}")
            except XAIExplainError as error:
                failures.append(f"{folder}: {error}")
            except OSError as error:
                failures.append(f"{folder}: {error.strerror or error}: {error.filename}")
            except Exception as error:  # a defect, not the input: still one line, and the batch goes on
                failures.append(f"{folder}: internal error {type(error).__name__}: {error}")
    except KeyboardInterrupt as interruption:
        failures.append("interrupted; the series written so far are whole, the one being written was removed")
        for line in failures:
            print(line, file=sys.stderr)
        return interrupted_exit_status(interruption)
    for line in failures:
        print(line, file=sys.stderr)
    return 1 if failures else 0


def main():
    """Run, then end the process with the status: under Slicer through ``slicer.util.exit`` whatever
    happened (Slicer stays open after a ``--python-script`` until the script asks it to exit), elsewhere
    through ``sys.exit``."""
    status = 1  # anything that escapes run() is a failure
    try:
        status = run(sys.argv[1:])
    except SystemExit as request:  # argparse: 2 for a bad command line, 0 after --help
        status = request.code if isinstance(request.code, int) else (0 if request.code is None else 1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        status = 130
    except OSError as error:  # e.g. a --lidc-root folder this user may not list
        print(f"{error.strerror or error}: {error.filename}", file=sys.stderr)
    except Exception as error:  # outside the per-series handler: one line, not a traceback
        print(f"XAIExplainBatch.py: internal error {type(error).__name__}: {error}", file=sys.stderr)
    finally:
        end(status)


def end(status):
    try:
        import slicer

        in_slicer_application = hasattr(slicer, "app")
    except ImportError:
        in_slicer_application = False
    if in_slicer_application:
        slicer.util.exit(status)
    else:
        sys.exit(status)


if __name__ == "__main__":
    main()
