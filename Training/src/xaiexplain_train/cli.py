"""The ``xaiexplain-train`` command line."""
from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

from xaiexplain.apps.archive_commands import whole_number_from_0
from xaiexplain.apps.cli import ArgumentParser, run_reporting_errors
from xaiexplain.data.patch_set import EVALUATION_SPLITS, SLICE_CHOICES, SPLIT_PROTOCOLS
from xaiexplain.termination import handle_termination_signals


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
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
    classifier = commands.add_parser(
        "classifier", help="train the nodule classifier into a model bundle",
        description="Train the paper's ConvNet (four blocks of 32/64/128/256 kernels) with weighted cross "
                    "entropy and augmentation, keep the epoch with the best validation AUC, set the decision "
                    "threshold at the validation ROC point closest to the top-left corner, and store test "
                    "metrics with bootstrap 95 % intervals in the bundle. Several processes: "
                    "torchrun --nproc-per-node N $(which xaiexplain-train) classifier ...",
        epilog="examples:\n  xaiexplain-train classifier --data patchset/ --out classifier/\n"
               "  xaiexplain-train classifier --data patchset/ --out classifier/ --resume\n"
               "  torchrun --nproc-per-node 2 $(which xaiexplain-train) classifier --data patchset/ --out c/\n"
               "  xaiexplain-train classifier --data patchset/ --slices central --split 70/30 --out p1/  # paper 1\n"
               "  torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\\n"
               "      --rdzv-id job1 $(which xaiexplain-train) classifier --data patchset/ --out c/  # on each node",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    classifier.add_argument("--data", required=True, type=Path, help="patch set folder")
    classifier.add_argument("--out", required=True, type=Path, help="bundle folder to write")
    classifier.add_argument("--epochs", type=int, default=30)
    classifier.add_argument("--batch-size", type=int, default=64, help="per process")
    classifier.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    classifier.add_argument("--weight-decay", type=float, default=1e-4)
    classifier.add_argument("--widths", type=_widths, default=(32, 64, 128, 256),
                            help="kernels per block (default 32,64,128,256)")
    _add_run_arguments(classifier)
    classifier.add_argument("--bootstrap", type=int, default=1000, help="bootstrap samples of the test metrics")
    classifier.add_argument("--max-train-patches", type=int, help="train on a seeded subset (quick runs)")
    classifier.add_argument("--lung-weight", type=_share, default=0.5,
                            help="share of the benign half of the loss given to the set's nodule-free lung patches "
                                 "(labelled benign; default 0.5, 0 leaves them out)")
    _add_protocol_arguments(classifier, "no validation, the last epoch kept, threshold 0.5")
    cycle = commands.add_parser(
        "cycle-am", help="train cycle-consistent activation maximization (G+, G-) for a classifier",
        description="Train two U-Net generators on the same images, G+ towards malignant and G- towards benign "
                    "on the frozen classifier, with cycle (L1 + MS-DSSIM), similarity (L1, dearer away from the "
                    "patch's centre, + DSSIM), adversarial "
                    "(pair PatchGAN at three scales) and activation-maximization losses (paper 1, eq. 1-4), and "
                    "CycleGAN's identity loss on images the classifier already assigns to a generator's class, "
                    "and a floor loss: no generated pixel darker than the darkest of the input around it. "
                    "Writes a bundle with both generators, loss curves (CSV, PNG) and sample grids.",
        epilog="examples:\n  xaiexplain-train cycle-am --classifier demo-classifier --data patchset/ --out cycle_am/\n"
               "  xaiexplain-train cycle-am --classifier demo-classifier --data patchset/ --out cycle_am/ --resume",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    cycle.add_argument("--classifier", required=True, help="classifier bundle folder or shipped name")
    cycle.add_argument("--data", required=True, type=Path, help="patch set folder")
    cycle.add_argument("--out", required=True, type=Path, help="bundle folder to write")
    cycle.add_argument("--steps", type=int, default=20000)
    cycle.add_argument("--batch-size", type=int, default=16, help="pairs per step and process")
    cycle.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate (betas 0.5, 0.999)")
    cycle.add_argument("--lr-decay-from", type=int, default=None, metavar="STEP",
                       help="from this step on, the learning rate falls linearly to zero at the last step, as "
                            "CycleGAN trains (default: constant)")
    cycle.add_argument("--similarity", choices=("l1+dssim", "dssim"), default="l1+dssim",
                       help="similarity loss: W x L1 + DSSIM / 2 (default; the generators' residual output can move "
                            "pixels by any amount, which DSSIM alone barely bounds) or paper 1's DSSIM")
    cycle.add_argument("--similarity-l1-weight", type=float, default=None, metavar="W",
                       help="W, the L1 weight of the similarity loss on the window-width scale (default 20, "
                            "xaiexplain.models.cycle_am.SIMILARITY_L1_WEIGHT: keeps the background from drifting; "
                            "0.5 prices a 30 HU shift of the whole patch at a tenth of the activation loss)")
    cycle.add_argument("--context-l1-factor", type=float, default=None, metavar="F",
                       help="the similarity's L1 weight rises with the squared distance from the patch's centre (the "
                            "nodule) to F times it at the middle of the edges (default 1: the same weight everywhere; above 1 "
                            "a prior that tells the generators where the nodule is, which the benchmark names)")
    cycle.add_argument("--identity-weight", type=float, default=None, metavar="W",
                       help="W, the weight of CycleGAN's identity loss, W x p(class of G | x) x L1(x, G(x)): a "
                            "generator leaves images the classifier already assigns to its class unchanged "
                            "(default 60, xaiexplain.models.cycle_am.IDENTITY_WEIGHT; 0: none, as in paper 1)")
    cycle.add_argument("--floor-weight", type=float, default=None, metavar="W",
                       help="W, the weight of the floor loss, W x mean(max(floor(x) - G(x), 0)) with floor(x) the "
                            "darkest input pixel within 4 px: a generator may darken a nodule down to the lung "
                            "around it, not below (default 200, xaiexplain.models.cycle_am.FLOOR_WEIGHT; 0: none, "
                            "as in paper 1)")
    cycle.add_argument("--activation-blur", type=_blur, default=(0.0, 1.0), metavar="SIGMA[,SIGMA]",
                       help="the classifier reads generated images through a Gaussian blur of SIGMA px in the "
                            "activation-maximization loss, so that a pixel pattern against the classifier does not "
                            "pay; one value for both generators or two for G+,G- (default 0,1: G- only, whose "
                            "checkered patterns a 1 px blur undid; 0: paper 1's plain read; see the README)")
    cycle.add_argument("--activation-as-read", dest="activation_symmetries", action="store_false",
                       help="the classifier reads generated images as they are (paper 1) in the activation-"
                            "maximization loss; by default it reads each flipped and turned at random, so that a "
                            "change at one place of the patch (a blob in a corner) does not pay")
    cycle.add_argument("--activation-shift", dest="activation_shift_px", type=_pixels, default=None, metavar="PX",
                       help="the classifier reads each generated image moved by up to PX px along each in-plane axis, at "
                            "random, in the activation-maximization loss, so that a change tuned to one place of the "
                            "patch pays only sometimes (default 6, xaiexplain.models.cycle_am.ACTIVATION_SHIFT_PX; 0: "
                            "read in place, as paper 1)")
    cycle.add_argument("--discriminator-scales", type=_scales, default=None, metavar="STAGES",
                       help="the encoder stages whose patch outputs the pair discriminators judge, from 1 (half "
                            "resolution) to 3 (default 1,2,3, xaiexplain.models.cycle_am.DISCRIMINATOR_SCALES: "
                            "paper 1's 'multiple intermediate scales'; without stage 1, G- painted 2 px checkers "
                            "above the window)")
    cycle.add_argument("--widths", type=_widths, default=(48, 96, 192, 384),
                       help="kernels per stage (default the paper's 48,96,192,384)")
    _add_protocol_arguments(cycle, "trains on the 70 %")
    _add_run_arguments(cycle)
    cycle.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    cycle.add_argument("--sample-every", type=int, default=1000, help="steps between sample grids (OUT.samples/)")
    evaluate = commands.add_parser(
        "evaluate-cycle-am", help="domain-transfer evaluation of a cycle-am bundle (paper 1, 4.1)",
        description="On one split of a patch set, over its nodules (each nodule's mean over its slices, which are "
                    "not independent): the classifier's mean malignancy probability on x, G-(x) and G+(x) with 95 %% "
                    "intervals, paired two-tailed t-tests with their degrees of freedom, t(df), and SSIM(x, G+/-(x)); "
                    "flip rates among the patches and nodules of the opposite decision (G+ to malignant among those "
                    "called benign, G- to benign among those called malignant) at the classifier's threshold and at "
                    "0.5, with intervals from resampling nodules; patch-level figures beside, marked as such. The "
                    "cycle-am bundle must have been trained against the classifier. Writes evaluation.json and "
                    "evaluation.md; --record also stores it in the bundle's config.json.",
        epilog="example:\n  xaiexplain-train evaluate-cycle-am --classifier demo-classifier --cycle-am cycle_am/ "
               "--data patchset/ --out evaluation/",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    evaluate.add_argument("--classifier", required=True, help="classifier bundle folder or shipped name")
    evaluate.add_argument("--cycle-am", required=True, dest="cycle_am", help="cycle-am bundle folder or shipped name")
    evaluate.add_argument("--data", required=True, type=Path, help="patch set folder")
    evaluate.add_argument("--split", default="test", choices=EVALUATION_SPLITS,
                          help="train, validation or test of the patch set's 70 / 15 / 15 (default test), or 70/30: "
                               "the test nodules of paper 1's 70 / 30 split")
    evaluate.add_argument("--slices", choices=SLICE_CHOICES, default="all",
                          help="all: every slice through each nodule, each nodule the mean over them (default); "
                               "central: one patch per nodule, the slice nearest its midpoint (paper 1's unit)")
    evaluate.add_argument("--out", required=True, type=Path, help="folder for evaluation.json and evaluation.md")
    evaluate.add_argument("--record", action="store_true", help="store the evaluation in the bundle's config.json")
    froc = commands.add_parser(
        "froc-study", help="paper 2's weakly-supervised lesion localization on multi-lesion phantom CT",
        description="Render multi-lesion phantom images (128 x 128, one to four real LIDC nodules each, positive "
                    "while a malignant one is in it), train a classifier on the image labels, and compare FROC "
                    "curves of initial and iteratively augmented maps (saliency, guided backprop, integrated "
                    "gradients, Grad-CAM, guided Grad-CAM) on the test images it calls positive: sensitivity at 10 "
                    "false positives per image, as in paper 2's Tables II-V, with a bootstrap interval over the "
                    "images. Checks Algorithm 1's premise: the truly positive test images it calls positive are "
                    "called negative once their malignant nodules are removed (rendered again without them). "
                    "Reuses OUT/data and OUT/classifier when they exist.",
        epilog="example:\n  for s in 0 1 2 3 4; do xaiexplain-train froc-study --seed $s --out out/froc/seed-$s; done",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    froc.add_argument("--out", required=True, type=Path, help="study folder (data/, classifier/, froc.*)")
    froc.add_argument("--images", type=int, default=1200, help="multi-lesion images to render (70/15/15 %% split)")
    froc.add_argument("--epochs", type=int, default=12)
    froc.add_argument("--widths", type=_widths, default=(16, 32, 64, 128), help="classifier kernels per block")
    froc.add_argument("--seed", type=int, default=0)
    froc.add_argument("--device", default="auto", help="auto (GPU when present), cpu or cuda")
    froc.add_argument("--method", action="append", dest="methods",
                      help="repeatable; default: saliency, guided-backprop, integrated-gradients, grad-cam and "
                           "guided-grad-cam, paper 2's methods")
    froc.add_argument("--no-paired-negatives", dest="paired_negatives", action="store_false",
                      help="train without paired negatives (each positive training image rendered again without "
                           "its malignant nodules, labelled negative; on by default so that the classifier depends "
                           "on the lesions, as Algorithm 1 assumes: our choice, not paper 2's)")
    froc.add_argument("--candidates", type=whole_number_from_0, default=0,
                      help="at most this many candidates per map (default 0: no cap, every local maximum above "
                           "zero, as paper 2 states none)")
    froc.add_argument("--bootstrap", type=whole_number_from_0, default=1000,
                      help="bootstrap resamples of the test images for the 95 %% intervals (default 1000; 0: none)")
    summary = commands.add_parser(
        "froc-summary", help="FROC studies of several seeds combined: mean +/- sd and intervals of the relative change",
        description="Combine froc-study folders run with different --seed values (renderings, splits, "
                    "classifiers) into one table: per method the sensitivity at 10 false positives per image of "
                    "initial and augmented maps per seed, the relative change per seed with its bootstrap "
                    "interval, and over seeds its mean +/- sd and the bootstrap interval of the mean. With "
                    "--readme, the table goes into that file between the lines <!-- froc-summary:start --> and "
                    "<!-- froc-summary:end -->, dated.",
        epilog="example:\n  for s in 0 1 2 3 4; do xaiexplain-train froc-study --seed $s --out out/froc/seed-$s; done\n"
               "  xaiexplain-train froc-summary out/froc/seed-0 out/froc/seed-1 out/froc/seed-2 out/froc/seed-3 "
               "out/froc/seed-4 --out out/froc --readme README.md",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    summary.add_argument("studies", nargs="+", type=Path, help="froc-study output folders")
    summary.add_argument("--out", required=True, type=Path, help="folder for froc-summary.json and .md")
    summary.add_argument("--readme", type=Path, help="put the table into this file between its froc-summary markers")
    return parser


def run_froc_summary(args) -> int:
    from .froc_summary import summarize

    result = summarize(args.studies, args.out, command=args.command_line, readme=args.readme)
    print((args.out / "froc-summary.md").read_text())
    print(f"wrote {args.out / 'froc-summary.md'} and froc-summary.json ({len(result['seeds'])} seeds)"
          + (f"; the table into {args.readme}" if args.readme else ""))
    return 0


def run_evaluate_cycle_am(args) -> int:
    from xaiexplain.evaluate.domain_transfer import domain_transfer_table

    from .cycle_am_evaluation import evaluate_cycle_am

    result = evaluate_cycle_am(args.classifier, args.cycle_am, args.data, args.out, split=args.split,
                               slices=args.slices, record=args.record, command=args.command_line)
    print(domain_transfer_table(result))
    print(f"wrote {args.out}")
    return 0


def run_froc_study(args) -> int:
    from .froc_study import METHODS, markdown
    from .froc_study import run_froc_study as study

    result = study(args.out, images=args.images, epochs=args.epochs, widths=args.widths, seed=args.seed,
                   device=args.device, command=args.command_line, methods=tuple(args.methods or METHODS),
                   paired_negatives=args.paired_negatives, cap=args.candidates or None, bootstrap_samples=args.bootstrap)
    print(markdown(result))
    print(f"wrote {args.out / 'froc.md'}, froc.json and froc.png ({result['seconds']} s)")
    return 0


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (GPU when present), cpu or cuda")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    parser.add_argument("--checkpoint-dir", type=Path, help="default: OUT.checkpoint beside the bundle")


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a share from 0 to 1")
    return value


def _widths(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def _scales(text: str) -> tuple[int, ...]:
    """Distinct encoder stages 1 to 3, comma-separated."""
    try:
        values = tuple(sorted({int(v) for v in text.split(",")}))
    except ValueError:
        values = ()
    if not values or values[0] < 1 or values[-1] > 3:
        raise argparse.ArgumentTypeError(f"{text!r}: encoder stages from 1 to 3, comma-separated")
    return values


def _pixels(text: str) -> int:
    """A whole number of pixels, 0 or more."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number of pixels, 0 or more")
    return int(text)


def _blur(text: str) -> tuple[float, float]:
    """SIGMA for both generators, or SIGMA_PLUS,SIGMA_MINUS."""
    values = tuple(float(v) for v in text.split(","))
    if len(values) not in (1, 2) or min(values) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: one or two blur widths in px, not negative (G+,G-)")
    return values * 2 if len(values) == 1 else values


# cycle-am options whose defaults live in the library (xaiexplain.models.cycle_am); None on the command line
# leaves them to CycleAMSettings
CYCLE_AM_DEFAULTS_IN_THE_LIBRARY = ("similarity_l1_weight", "context_l1_factor", "identity_weight", "floor_weight",
                                    "discriminator_scales", "activation_shift_px")


def _add_protocol_arguments(parser, seventy_thirty: str) -> None:
    """Paper 1's protocol options: which slices, which split."""
    parser.add_argument("--slices", choices=SLICE_CHOICES, default="all",
                        help="every slice through each nodule (default), or central: one patch per nodule, the "
                             "slice through its midpoint (paper 1)")
    parser.add_argument("--split", choices=tuple(SPLIT_PROTOCOLS), default="70/15/15",
                        help="the patch set's train / validation / test split (default), or 70/30: train and test "
                             f"by patient, {seventy_thirty} (paper 1)")


def run_cycle_am(args) -> int:
    from .cycle_am_training import CycleAMSettings, train_cycle_am

    settings = CycleAMSettings(
        data=args.data, classifier=args.classifier, out=args.out, steps=args.steps, batch_size=args.batch_size,
        learning_rate=args.lr, lr_decay_from=args.lr_decay_from, similarity=args.similarity,
        activation_blur=args.activation_blur, activation_symmetries=args.activation_symmetries, widths=args.widths,
        slices=args.slices, split=args.split,
        **{name: getattr(args, name) for name in CYCLE_AM_DEFAULTS_IN_THE_LIBRARY if getattr(args, name) is not None},
        seed=args.seed, device=args.device, resume=args.resume, checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=args.checkpoint_every, sample_every=args.sample_every, command=args.command_line)
    config = train_cycle_am(settings)
    if config is not None:
        print(f"wrote {args.out} ({config['provenance']['seconds']} s)")
    return 0


def run_classifier(args) -> int:
    from .classifier import ClassifierSettings, train_classifier

    settings = ClassifierSettings(
        data=args.data, out=args.out, epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
        weight_decay=args.weight_decay, widths=args.widths, seed=args.seed, device=args.device,
        resume=args.resume, checkpoint_dir=args.checkpoint_dir, bootstrap_samples=args.bootstrap,
        max_train_patches=args.max_train_patches, slices=args.slices, split=args.split, command=args.command_line,
        lung_weight=args.lung_weight)
    config = train_classifier(settings)
    if config is not None:
        test = config["metrics"]["test_patches"]
        auc = config["metrics"]["validation_auc"]
        chosen = f"best validation AUC {auc:.3f}" if auc is not None else "no validation split: the last epoch"
        print(f"{chosen} (epoch {config['provenance']['best_epoch']}), threshold {config['decision_threshold']:.3f}; "
              f"test AUC {test['auc']['value']:.3f} [{test['auc']['ci95'][0]:.3f}, {test['auc']['ci95'][1]:.3f}]")
        lung = config["metrics"]["nodule_free_lung_specificity"]["test"]
        if lung["patches"]:
            print(f"nodule-free lung called benign (test): {lung['value']:.3f} [{lung['ci95'][0]:.3f}, "
                  f"{lung['ci95'][1]:.3f}] of {lung['patches']} patches")
        for name, flat in config["reference_check"]["flat"].items():
            print(f"{name}: p(malignant) {flat['probability']:.3f}")
        print(f"wrote {args.out}")
    return 0


def run_data(args) -> int:
    from xaiexplain.data.patch_set import SPLITS, load_patch_set

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


COMMANDS = {"data": run_data, "classifier": run_classifier, "cycle-am": run_cycle_am,
            "evaluate-cycle-am": run_evaluate_cycle_am, "froc-study": run_froc_study,
            "froc-summary": run_froc_summary}


def main(argv: list[str] | None = None) -> int:
    handle_termination_signals()
    args = build_parser().parse_args(argv)
    args.command_line = "xaiexplain-train " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    return run_reporting_errors(f"xaiexplain-train {args.command}", lambda: COMMANDS[args.command](args),
                                "the bundle and the last checkpoint are whole or absent (resume with --resume)")

if __name__ == "__main__":
    sys.exit(main())
