"""``xaiexplain benchmark``: every method measured side by side on held-out phantom nodules.

The nodules are those of the test-split patients of the patch set (never seen in training), one patch
per nodule: the slice with the largest consensus area. For every method and its ``iterative:`` variant,
and ``cycle-am``:

- localization (``xaiexplain.evaluate.localization``) of the evidence for a malignant decision against the
  nodule mask on the patches called malignant, and of the evidence for the decision made against the
  spicule and calcification masks on all patches that have them (calcification speaks for benign, and
  most calcified nodules are called benign);
- faithfulness: RISE deletion and insertion AUC of p(malignant) on the patches called malignant, pixels
  replaced by the patch's lung parenchyma;
- sanity: the model-parameter randomization test, Spearman correlation of |map| between the trained
  classifier and one with all parameters re-initialized (low is good); not applicable to cycle-am, whose
  generators belong to the trained classifier;
- counterfactual validity for cycle-am (flip rates, probabilities, SSIM);
- cost: wall time per patch, its ratio to one input-gradient pass of the classifier on the same batch (a
  forward pass and the gradient with respect to the input only),
  and the peak resident memory the method added.
It writes ``benchmark.json``, ``benchmark.md`` (one table, methods as rows) and plots (``benchmark_report``).
"""
from __future__ import annotations

import copy
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from xaiexplain import __version__
from xaiexplain.data.patch_set import held_out_patients, labelled_scans, load_lung_patches, load_patch_set
from xaiexplain.data.sources.phantom_patches import render_patch_set
from xaiexplain.evaluate import faithfulness, localization
from xaiexplain.evaluate.benchmark_report import knows_the_nodule, write_outputs
from xaiexplain.evaluate.cost import (
    FAST_METHOD_REPEATS,
    REPEAT_BELOW_SECONDS,
    generator_forward_seconds,
    input_gradient_seconds,
    timed,
    whole_series_seconds,
)
from xaiexplain.explainers import references, registry
from xaiexplain.errors import XAIExplainError
from xaiexplain.explainers.counterfactuals import Counterfactuals, generators_for
from xaiexplain.explainers.iterative import IterativeResult
from xaiexplain.explainers.on_patches import explain
from xaiexplain.io.files import output_set
from xaiexplain.models.architectures import build
from xaiexplain.models.bundles import Bundle, load_bundle, shown_name
from xaiexplain.models.layer_chain import is_torchscript
from xaiexplain.data.patches import FIELD_OF_VIEW_MM, PATCH_SIZE

QUICK_NODULES = 8
FULL_NODULES = 60
QUICK_RANDOMIZATION_PATCHES = 4
FULL_RANDOMIZATION_PATCHES = 16
POINTING_TOLERANCE_PX = 2


def all_methods() -> list[str]:
    """The benchmark's rows: every method of the registry, each beside its ``iterative:`` variant."""
    return [name for base in registry.base_methods() for name in (base, registry.ITERATIVE_PREFIX + base)]


def cost_targets() -> tuple[dict, dict]:
    """The registry's cost targets on a CPU (method time / reference time, the reference being that many
    input-gradient passes of the classifier; for a method of the generators, one pass of G+ and G-)."""
    records = [registry.get(name) for name in registry.base_methods()]
    return ({r.name: r.cost_target for r in records if r.cost_target is not None},
            {r.name: r.reference_passes for r in records if r.reference_passes != 1})


def held_out_patches(nodules: int, seed: int = 0, progress: bool = False, size=PATCH_SIZE,
                     field_of_view_mm=FIELD_OF_VIEW_MM, slices: int = 1, spatial_dims: int = 2) -> dict:
    """One patch per held-out nodule (its largest consensus slice), with masks and the LIDC labels, of ``size``
    px across ``field_of_view_mm`` and ``slices`` neighbouring slices as channels (a model's input spec; the
    masks are those of the patch's own slice); ``spatial_dims`` 3: its volume, with 3D masks."""
    patients, chosen = [], 0
    by_scan = labelled_scans(held_out_patients(seed))
    for (patient, _), scan_nodules in sorted(by_scan.items()):
        if chosen >= nodules:
            break
        patients.append(patient)
        chosen += sum(n.label is not None for n in scan_nodules)
    with tempfile.TemporaryDirectory() as folder:
        render_patch_set(Path(folder) / "patches", seed=seed, patient_ids=patients, progress=progress, size=size,
                         field_of_view_mm=field_of_view_mm, slices=slices, spatial_dims=spatial_dims)
        arrays, rows, _ = load_patch_set(Path(folder) / "patches")
        lung = load_lung_patches(Path(folder) / "patches")
    picked = []
    for row in rows[:nodules]:
        span = np.arange(row["first_patch"], row["first_patch"] + row["patch_count"])
        picked.append(span[np.argmax(arrays["nodule_mask"][span].reshape(len(span), -1).sum(axis=1))])
    picked = np.array(picked)
    return {"images": arrays["images"][picked].astype(np.float32),
            "nodule_mask": arrays["nodule_mask"][picked], "spicule_mask": arrays["spicule_mask"][picked],
            "calcification_mask": arrays["calcification_mask"][picked], "label": arrays["label"][picked],
            "names": [f"{r['patient_id']} nodule {r['nodule_index']}" for r in rows[:nodules]],
            "lung_images": lung["images"].astype(np.float32)}


def randomized(bundle: Bundle, seed: int) -> Bundle:
    """The classifier with every parameter re-initialized (same network and input spec): each layer's own
    initialization (``reset_parameters``) where the network is a module; for TorchScript, whose layers' Python
    methods are gone, every parameter drawn from a normal distribution with its trained standard deviation."""
    torch.manual_seed(seed)
    if bundle.source["kind"] == "architecture":
        model = build(bundle.config["architecture"], bundle.config.get("arguments", {}))
    else:
        model = copy.deepcopy(bundle.model)
        if is_torchscript(model):
            with torch.no_grad():
                for parameter in model.parameters():
                    spread = parameter.std() if parameter.numel() > 1 else parameter.abs().mean()
                    parameter.copy_(torch.randn_like(parameter) * (spread if spread > 0 else 1.0))
        else:
            for module in model.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
    return Bundle(path=bundle.path, config=bundle.config, model=model.eval().to(bundle.device))


# -- one method --------------------------------------------------------------------------------------------

def _mean(values) -> float | None:
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else None


def measure_method(method: str, bundle: Bundle, data: dict, decisions: np.ndarray,
                   random_bundle: Bundle, randomization_patches: int, reference_seconds: float,
                   options: dict | None = None) -> dict:
    images = data["images"]
    options = options or {}
    explain(bundle, images[:1], method, **options)  # warm-up: imports and first-call set-up are not its cost
    (maps, details), seconds, memory = timed(lambda: explain(bundle, images, method, return_details=True, **options),
                                              FAST_METHOD_REPEATS, REPEAT_BELOW_SECONDS)
    # every measure on the same patches for every method: those called malignant (iterative methods augment
    # the evidence for the positive decision only), on the map reduced to that evidence as Algorithm 1 sees it
    called_malignant = np.flatnonzero(decisions)
    record = registry.get(method)
    evidence = record.map_kind.positive_evidence(maps)
    for_decision = np.stack([record.map_kind.for_decision(m, bool(d)) for m, d in zip(maps, decisions)])
    # a 2.5D model's maps (N, S, H, W) are measured on the patch's own slice, where its masks are; deletion and
    # insertion change every channel, each value in the order of its own map
    slices = bundle.input.slices
    own_evidence, own_for_decision = on_own_slice(evidence, slices), on_own_slice(for_decision, slices)
    entry = {"seconds_per_patch": seconds / len(images), "ratio_to_input_gradient": seconds / reference_seconds,
             "peak_memory_mb": memory, "measured_patches": called_malignant.tolist()}
    explained = [n for n in called_malignant if (evidence[n] > 0).any()]
    entry["patches_with_evidence"] = len(explained)
    if isinstance(details, IterativeResult):
        passes = [p for n in called_malignant for p in details.passes[n]]
        entry["iterations_mean"] = float(details.iterations[called_malignant].mean()) if called_malignant.size else None
        entry["mask_fraction_median"] = float(np.median([p.mask.mean() for p in passes])) if passes else None
        # Algorithm 1 stops when the prediction falls below the threshold or at T: how often its premise held
        entry["ended_below_threshold"] = int((details.final_probability[called_malignant] < bundle.threshold).sum())
    for mask_name, maps_measured, patches in (("nodule_mask", own_evidence, explained),
                                              ("spicule_mask", own_for_decision, range(len(images))),
                                              ("calcification_mask", own_for_decision, range(len(images)))):
        masks = data[mask_name]
        with_mask = [n for n in patches if masks[n].any() and (maps_measured[n] > 0).any()]
        entry[mask_name.removesuffix("_mask")] = localization_entry(maps_measured, masks, with_mask)
    if called_malignant.size:
        curves = faithfulness.deletion_insertion(images[called_malignant], evidence[called_malignant], bundle.predict)
        entry.update({"faithfulness_patches": int(called_malignant.size),
                      "deletion_auc": float(curves.deletion_auc.mean()),
                      "insertion_auc": float(curves.insertion_auc.mean()),
                      "deletion_curve": curves.deletion.mean(axis=0).tolist(),
                      "insertion_curve": curves.insertion.mean(axis=0).tolist(),
                      "curve_fractions": curves.fractions.tolist()})
    if record.randomization_not_applicable:
        entry["randomization_not_applicable"] = record.randomization_not_applicable
    else:
        subset = images[:randomization_patches]
        random_maps = explain(random_bundle, subset, method, **options)
        entry["randomization_spearman"] = _mean([faithfulness.rank_correlation(maps[n], random_maps[n])
                                                 for n in range(len(subset))])
        # e.g. an iterative method with a randomized classifier that calls nothing malignant: no map to compare
        entry["randomized_maps_empty"] = int(sum(not random_map.any() for random_map in random_maps))
    if isinstance(details, Counterfactuals):
        entry["counterfactuals"] = _counterfactual_validity(bundle, images, details)
    return entry


def on_own_slice(maps: np.ndarray, slices: int) -> np.ndarray:
    """Maps as they are (patches (N, H, W), volumes (N, D, H, W)); of a 2.5D model reading ``slices``, the
    middle channel of its per-channel maps (N, S, H, W): the patch's own slice."""
    return maps[:, slices // 2] if slices > 1 and maps.ndim == 4 else maps


def localization_entry(maps: np.ndarray, masks: np.ndarray, measured) -> dict:
    """Pointing game, relevance mass and rank accuracy of non-negative ``maps`` against ``masks``, averaged
    over the ``measured`` patches."""
    return {"patches": len(measured),
            "pointing_game": _mean([localization.pointing_game(maps[n], masks[n], POINTING_TOLERANCE_PX)
                                    for n in measured]),
            "mass_accuracy": _mean([localization.relevance_mass_accuracy(maps[n], masks[n]) for n in measured]),
            "rank_accuracy": _mean([localization.relevance_rank_accuracy(maps[n], masks[n]) for n in measured])}


def _counterfactual_validity(bundle: Bundle, images: np.ndarray, pair) -> dict:
    """Domain transfer on the benchmark's patches: one per nodule."""
    from xaiexplain.evaluate.domain_transfer import counterfactual_transfer

    return counterfactual_transfer(bundle, images, pair, np.arange(len(images)))


# -- the whole benchmark -----------------------------------------------------------------------------------

def machine() -> str:
    return (f"{platform.machine()} {platform.processor() or ''}".strip() + f", {os.cpu_count()} cores, "
            f"torch {torch.__version__} with {torch.get_num_threads()} threads, Python {platform.python_version()}")


def context_l1_factor(generators: Bundle | None):
    """The context factor a cycle-am bundle was trained with, as it records it (None: not recorded)."""
    return None if generators is None else generators.config.get("provenance", {}).get("context_l1_factor")


def compared_row(generators: Bundle) -> str:
    """The table row of a further cycle-am bundle: its name and the prior it was trained with, if any."""
    factor = context_l1_factor(generators)
    prior = f", context_l1_factor {factor:g}" if knows_the_nodule(factor) else ""
    return f"cycle-am ({shown_name(generators.path)}{prior})"


def run_benchmark(out, quick: bool = False, methods=None, model=None, cycle_am=None, nodules: int | None = None,
                  seed: int = 0, progress: bool = True, command: str = "", data: dict | None = None,
                  compare_cycle_am=()) -> dict:
    """``data``: the ``held_out_patches`` to use when the caller has them already. ``compare_cycle_am``:
    further cycle-am bundles for the same classifier (one trained with a prior, say), each measured as a row of
    its own beside cycle-am's."""
    started = time.time()
    bundle = load_bundle(model) if model else load_bundle()
    spec = bundle.input
    if not spec.is_square:
        raise XAIExplainError(f"the benchmark renders square patches; {shown_name(bundle.path)} reads "
                              f"{' x '.join(map(str, bundle.patch_shape))} (other input specs: not yet)")
    compared = {}
    for other in compare_cycle_am:  # generators of another classifier: one sentence, before any work or output
        other_generators = generators_for(bundle, other)
        compared[compared_row(other_generators)] = other_generators
    with output_set(out, "benchmark.json") as written:  # checks that out is writable before measuring
        methods = list(methods or all_methods())
        count = nodules or (QUICK_NODULES if quick else FULL_NODULES)
        volumes = spec.spatial_dims == 3
        data = data or held_out_patches(count, seed, progress=progress,
                                        size=list(spec.patch_size) if volumes else spec.patch_size[0],
                                        field_of_view_mm=list(spec.field_of_view_mm) if volumes else
                                        spec.field_of_view_mm[0], slices=spec.slices, spatial_dims=spec.spatial_dims)
        images = data["images"]
        probabilities = bundle.predict(images)
        decisions = probabilities >= bundle.threshold

        series = whole_series_seconds(bundle)
        reference = input_gradient_seconds(bundle, images)
        generators, generator_reference, skipped = None, None, {}
        for method in list(methods):  # what the model cannot serve is skipped with the reason
            if refusal := registry.get(method).refusal(bundle):
                skipped[method] = refusal
                methods.remove(method)
        needing_generators = [m for m in methods if "generators" in registry.get(m).defaults]
        if needing_generators:
            try:  # cycle-am's generators belong to one classifier: skipped, with the reason, for another
                generators = generators_for(bundle, cycle_am)
                generator_reference = generator_forward_seconds(generators, bundle, images)
            except XAIExplainError as refusal:
                skipped.update({m: str(refusal) for m in needing_generators})
                methods = [m for m in methods if m not in skipped]
        random_bundle = randomized(bundle, seed)
        targets, reference_passes = cost_targets()
        randomization_patches = QUICK_RANDOMIZATION_PATCHES if quick else FULL_RANDOMIZATION_PATCHES
        results = {}
        runs = [(method, method, generators if "generators" in registry.get(method).defaults else None)
                for method in methods] + [(row, "cycle-am", other) for row, other in compared.items()]
        if progress:
            from tqdm import tqdm

            runs = tqdm(runs, desc="benchmark", unit="method", file=sys.stderr)
        for row, method, row_generators in runs:
            results[row] = measure_method(method, bundle, data, decisions, random_bundle, randomization_patches,
                                          reference, {} if row_generators is None else {"generators": row_generators})
            results[row]["method"] = method  # a compared cycle-am bundle's row is named after its bundle
            if "counterfactuals" in results[row]:
                seconds = results[row]["seconds_per_patch"] * len(images)
                results[row]["ratio_to_two_generator_passes"] = seconds / (
                    generator_reference if row_generators is generators else
                    generator_forward_seconds(row_generators, bundle, images))
        summary = {
            "command": command, "library_version": __version__, "machine": machine(), "quick": quick, "seed": seed,
            "model": str(bundle.path), "cycle_am": str(generators.path) if generators else None,
            "cycle_am_context_l1_factor": context_l1_factor(generators),
            "compared_cycle_am": {row: {"path": str(other.path), "context_l1_factor": context_l1_factor(other)}
                                  for row, other in compared.items()},
            "reference_check": references.reference_check(bundle.predict, bundle.threshold, data.get("lung_images"),
                                                          bundle.patch_shape),
            "method_references": {m: c.to_json() for m in methods
                                  if (c := references.reference_choice(bundle, m)) is not None},
            "skipped": skipped, "patches": int(len(images)),
            "patch_names": data["names"], "labels": {"malignant": int(data["label"].sum()),
                                                     "benign": int((1 - data["label"]).sum())},
            "decided_malignant": int(decisions.sum()), "threshold": bundle.threshold,
            "patches_with_calcification": int(data["calcification_mask"].reshape(len(images), -1).any(axis=1).sum()),
            "pointing_tolerance_px": POINTING_TOLERANCE_PX, "randomization_patches": randomization_patches,
            "input_gradient_seconds": reference, "two_generator_passes_seconds": generator_reference,
            "targets": targets, "reference_passes": reference_passes, "whole_series": series,
            "methods": results, "seconds": round(time.time() - started, 1),
        }
        write_outputs(written, summary)
    return summary
