"""Domain-transfer evaluation of a cycle-am bundle (paper 1, 4.1) on one split of a patch set, over its
nodules (``xaiexplain.evaluate.domain_transfer``)."""
from __future__ import annotations

import json

import numpy as np
from xaiexplain.data.patch_set import EVALUATION_SPLITS, PAPER_1_SPLIT, SPLITS, load_patch_set, select_protocol
from xaiexplain.errors import XAIExplainError
from xaiexplain.evaluate.domain_transfer import counterfactual_transfer, domain_transfer_table
from xaiexplain.explainers.counterfactuals import counterfactuals, generators_for
from xaiexplain.io.files import output_set, write_json_atomic
from xaiexplain.models.bundles import load_bundle


def evaluate_cycle_am(classifier, generators, data, out, split: str = "test", slices: str = "all",
                      record: bool = False, command: str = "") -> dict:
    """``slices="central"`` and ``split="70/30"`` are paper 1's protocol: one patch per nodule, the slice
    nearest its midpoint, over the test nodules of its 70 / 30 split."""
    if split not in EVALUATION_SPLITS:
        raise XAIExplainError(f"--split {split} is not one of {', '.join(EVALUATION_SPLITS)}")
    classifier = load_bundle(classifier)
    generator_bundle = generators_for(classifier, generators)  # refused unless trained against this classifier
    arrays, nodules, summary = load_patch_set(data)
    rows, row_splits = select_protocol(arrays, nodules, summary, slices, PAPER_1_SPLIT if split == PAPER_1_SPLIT
                                       else "70/15/15")
    part = "test" if split == PAPER_1_SPLIT else split
    chosen = rows[row_splits == SPLITS.index(part)]
    if len(chosen) < 2:
        raise XAIExplainError(f"the {split} split of {data} has fewer than two patches")
    images = arrays["images"][chosen].astype(np.float32)
    pair = counterfactuals(classifier, images, generator_bundle)
    result = counterfactual_transfer(classifier, images, pair, arrays["nodule"][chosen])
    result.update({"split": split, "slices": slices, "data": str(data), "data_seed": summary.get("seed"),
                   "command": command, "classifier": str(classifier.path), "cycle_am": str(generator_bundle.path)})
    what = f"the {part} split" + (" of paper 1's 70 / 30" if split == PAPER_1_SPLIT else "") + \
        (", the central slice of each nodule" if slices == "central" else "")
    with output_set(out, "evaluation.json") as written:
        table = domain_transfer_table(result)
        written.path("evaluation.md").write_text(
            f"# Domain transfer of {generator_bundle.path.name} on {what}\n\n{table}")
        written.manifest_data = result
    if record:
        config_file = generator_bundle.path / "config.json"
        config = json.loads(config_file.read_text())
        config["evaluation"] = result
        write_json_atomic(config_file, config)
    return result
