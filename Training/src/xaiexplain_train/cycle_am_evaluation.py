"""Domain-transfer evaluation of a cycle-am bundle (paper 1, 4.1) on one split of a patch set, over its
nodules (``xaiexplain.evaluate.domain_transfer``)."""
from __future__ import annotations

import json

import numpy as np
from xaiexplain.data.patch_set import SPLITS, load_patch_set
from xaiexplain.errors import XAIExplainError
from xaiexplain.evaluate.domain_transfer import domain_transfer, domain_transfer_table
from xaiexplain.explainers.counterfactuals import (counterfactuals, generators_for, probabilities_through_blur,
                                                   proximity)
from xaiexplain.io.files import output_set, write_json_atomic
from xaiexplain.models.bundles import load_bundle


def evaluate_cycle_am(classifier, generators, data, out, split: str = "test", record: bool = False,
                      command: str = "") -> dict:
    if split not in SPLITS:
        raise XAIExplainError(f"--split {split} is not one of {', '.join(SPLITS)}")
    classifier = load_bundle(classifier)
    generator_bundle = generators_for(classifier, generators)  # refused unless trained against this classifier
    arrays, _, summary = load_patch_set(data)
    chosen = np.flatnonzero(arrays["split"] == SPLITS.index(split))
    if len(chosen) < 2:
        raise XAIExplainError(f"the {split} split of {data} has fewer than two patches")
    images = arrays["images"][chosen].astype(np.float32)
    pair = counterfactuals(classifier, images, generator_bundle)
    ssim_plus, ssim_minus = proximity(classifier, images, pair)
    result = domain_transfer(classifier.predict(images), pair.malignant_probability, pair.benign_probability,
                             ssim_plus, ssim_minus, classifier.threshold, arrays["nodule"][chosen],
                             through_blur=probabilities_through_blur(classifier, images, pair))
    result.update({"split": split, "data": str(data), "data_seed": summary.get("seed"), "command": command,
                   "classifier": str(classifier.path), "cycle_am": str(generator_bundle.path)})
    with output_set(out, "evaluation.json") as written:
        table = domain_transfer_table(result)
        written.path("evaluation.md").write_text(
            f"# Domain transfer of {generator_bundle.path.name} on the {split} split\n\n{table}")
        written.manifest_data = result
    if record:
        config_file = generator_bundle.path / "config.json"
        config = json.loads(config_file.read_text())
        config["evaluation"] = result
        write_json_atomic(config_file, config)
    return result
