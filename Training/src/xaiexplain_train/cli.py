"""The ``xaiexplain-train`` command line."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xaiexplain.errors import XAIExplainError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xaiexplain-train",
        description="Train the XAIExplain models headless on a patch set from `xaiexplain phantom --patches` "
                    "(or LIDC patches in the same format): on a GPU when there is one, on several with torchrun.",
        epilog="examples:\n  xaiexplain phantom --patches --out patchset/\n"
               "  xaiexplain-train data --data patchset/ --device auto",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data = commands.add_parser("data", help="check a patch set and show what a training run would see",
                               description="Check a patch set and print its nodules and patches per split and "
                                           "label, and the device --device would choose.")
    data.add_argument("--data", required=True, type=Path, help="patch set folder")
    data.add_argument("--device", default="auto", help="auto (GPU when present), cpu or cuda")
    return parser


def run_data(args) -> int:
    from xaiexplain.dataset import SPLITS, load_patch_set

    from .devices import describe, select_device

    device = select_device(args.device)
    arrays, nodules, summary = load_patch_set(args.data)
    print(f"patch set {args.data}: {len(arrays['images'])} patches of {len(nodules)} nodules, "
          f"{summary['patch_size']} px covering {summary['field_of_view_mm']} mm, seed {summary['seed']}")
    for index, split in enumerate(SPLITS):
        in_split = arrays["split"] == index
        malignant = int((arrays["label"][in_split] == 1).sum())
        benign = int(in_split.sum()) - malignant
        print(f"  {split:<10} {benign:6d} benign {malignant:6d} malignant patches")
    print(f"device: {describe(device)}")
    return 0


COMMANDS = {"data": run_data}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except XAIExplainError as error:
        print(f"xaiexplain-train {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
