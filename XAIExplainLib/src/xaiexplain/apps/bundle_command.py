"""``xaiexplain bundle``: a classifier bundle from a user's model (``xaiexplain.models.making``)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from xaiexplain.errors import XAIExplainError

EXAMPLES = """examples:
  xaiexplain bundle --torchscript my_model.pt --out bundles/mine
  xaiexplain bundle --python net.py --class Net --arguments '{"width": 32}' --weights net.safetensors \\
      --patch-size 96 --field-of-view-mm 60 --slices 3 --output-form logit --output-entry logit --out bundles/net
  xaiexplain bundle --monai DenseNet121 --arguments '{"spatial_dims": 2, "in_channels": 1, "out_channels": 2}' \\
      --weights densenet.safetensors --threshold-from patchset --out bundles/densenet
"""


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"'{text}' is not a JSON object")
    return value


def _numbers(text: str, kind=float) -> list:
    try:
        values = [kind(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not one to three numbers separated by commas") from None
    if len(values) not in (1, 2, 3):
        raise argparse.ArgumentTypeError(f"'{text}' is not one to three numbers separated by commas")
    return values


def _layer(text: str) -> tuple[str, str]:
    name, _, path = text.partition("=")
    if not name or not path:
        raise argparse.ArgumentTypeError(f"'{text}' is not NAME=MODULE.PATH")
    return name, path


def _entry(text: str):
    return int(text) if text.lstrip("-").isdigit() else text


def add_bundle_command(commands) -> None:
    bundle = commands.add_parser(
        "bundle", help="a classifier bundle from your own model: TorchScript, a Python class, or a MONAI network",
        description="Make a classifier bundle that every command, the benchmark and the Slicer module read: the "
                    "model (a TorchScript file; a class of a Python file with safetensors weights, which runs that "
                    "file's code now and whenever the bundle is loaded; or a network of monai.networks.nets with "
                    "safetensors weights) and its contract: the patches it reads, how its output becomes the "
                    "decision, its named layers and the decision threshold. The model is checked on flat patches "
                    "of its input before anything is written; the bundle records which methods it allows.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = bundle.add_mutually_exclusive_group(required=True)
    source.add_argument("--torchscript", type=Path, help="a TorchScript file (torch.jit.save)")
    source.add_argument("--python", type=Path, help="a Python file defining the model class (its code runs)")
    source.add_argument("--monai", metavar="NETWORK", help="a network of monai.networks.nets, e.g. DenseNet121")
    bundle.add_argument("--class", dest="class_name", help="with --python: the torch.nn.Module class")
    bundle.add_argument("--arguments", type=_json_object, help="the class's or network's constructor arguments (JSON)")
    bundle.add_argument("--weights", type=Path, help="with --python or --monai: the weights (safetensors)")
    spec = bundle.add_argument_group("input: the patches the model reads")
    spec.add_argument("--patch-size", type=lambda t: _numbers(t, int), default=[64],
                      help="pixels (rows[,columns]; with --spatial-dims 3: depth[,rows,columns])")
    spec.add_argument("--field-of-view-mm", type=_numbers, default=[45.0],
                      help="mm across (rows[,columns]; with --spatial-dims 3: depth[,rows,columns])")
    spec.add_argument("--spatial-dims", type=int, choices=(2, 3), default=2,
                      help="2: axial patches; 3: volumes (depth along z, rows, columns)")
    spec.add_argument("--slices", type=int, default=1, help="neighbouring axial slices as channels (odd; 1: 2D)")
    spec.add_argument("--hu-window", type=_numbers, default=[-1000.0, 400.0], help="LOW,HIGH in HU")
    spec.add_argument("--normalisation", choices=("window", "standardise"), default="window",
                      help="window: the HU window mapped to [0, 1]; standardise: (HU - mean) / std")
    spec.add_argument("--mean", type=float, default=0.0, help="with --normalisation standardise (HU)")
    spec.add_argument("--std", type=float, default=1.0, help="with --normalisation standardise (HU)")
    output = bundle.add_argument_group("output: how the model's output becomes the decision")
    output.add_argument("--output-form", choices=("logits", "logit", "probabilities"), default="logits",
                        help="class logits (softmax), one logit (sigmoid) or class probabilities")
    output.add_argument("--positive-index", type=int, default=1, help="the positive (malignant) class's index")
    output.add_argument("--output-entry", type=_entry, help="the entry of a tuple (index) or dict (key) output")
    output.add_argument("--class-names", help="comma-separated, in the output's order (default benign,malignant)")
    bundle.add_argument("--layer", type=_layer, action="append", metavar="NAME=PATH",
                        help="a name for a layer by its module path (repeatable)")
    bundle.add_argument("--default-layer", help="the CAM methods' default layer (default: the last one whose "
                                                "output is a map over the patch)")
    threshold = bundle.add_mutually_exclusive_group()
    threshold.add_argument("--threshold", type=float, help="decision threshold on p(positive) (default 0.5)")
    threshold.add_argument("--threshold-from", type=Path, metavar="PATCH_SET",
                           help="choose it on this labelled patch set's validation split")
    bundle.add_argument("--out", required=True, type=Path, help="the bundle folder to write")


def run_bundle(args, command_line: str) -> int:
    from xaiexplain.explainers import registry
    from xaiexplain.models.making import make_bundle

    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise XAIExplainError("--threshold must be a probability from 0 to 1")
    if args.python is not None:
        print(f"running the code of {args.python} to build {args.class_name}")
    input_spec = {"patch_size": args.patch_size, "field_of_view_mm": args.field_of_view_mm, "slices": args.slices,
                  "spatial_dims": args.spatial_dims,
                  "hu_window": args.hu_window, "normalisation": args.normalisation, "mean": args.mean, "std": args.std}
    output_spec = {"form": args.output_form, "entry": args.output_entry}
    if args.output_form != "logit":
        output_spec["positive_index"] = args.positive_index
    if args.class_names:
        output_spec["class_names"] = args.class_names.split(",")
    bundle = make_bundle(args.out, torchscript=args.torchscript, python=args.python, class_name=args.class_name,
                         monai=args.monai, arguments=args.arguments, weights=args.weights, input_spec=input_spec,
                         output_spec=output_spec, layers=dict(args.layer or []), default_layer=args.default_layer,
                         threshold=args.threshold, threshold_from=args.threshold_from)
    check = bundle.config["check"]
    print(", ".join(f"p({bundle.contract.output.positive_name}) {p:.3f} on {name}"
                    for name, p in check["flat_probabilities"].items()))
    for name in registry.base_methods():
        reason = check["methods"][name]
        print(f"  {name}: {'yes' if reason is None else 'no, ' + reason.removeprefix(name + ' ')}")
    print(f"decision threshold {bundle.threshold:.3f}; wrote {args.out}")
    return 0
