"""Issue 29: a method's reference must be on the benign side of the model it explains; chosen per model where
one is, a one-line warning from `explain` where none is, and recorded in nodules.json."""
import copy
import json
from dataclasses import dataclass

import pytest
import torch

from xaiexplain.explainers.references import reference_choice
from xaiexplain.models.bundles import load_bundle, save_bundle

from helpers import CENTRE, small_series, xaiexplain


@dataclass
class FlatScores:
    """A stand-in bundle: only the scores of flat patches and the threshold."""

    scores: dict
    threshold: float = 0.5

    def flat_probability(self, hu):
        return self.scores[hu]


def test_integrated_gradients_takes_the_first_benign_candidate_towards_air():
    model = FlatScores({-850.0: 0.83, -900.0: 0.45, -950.0: 0.3, -1000.0: 0.2})
    choice = reference_choice(model, "integrated-gradients")
    assert choice.hu == (-900.0,) and choice.neutral and choice.warning() is None
    assert reference_choice(model, "iterative:integrated-gradients").hu == (-900.0,)
    malignant_everywhere = FlatScores(dict.fromkeys(model.scores, 0.9))
    choice = reference_choice(malignant_everywhere, "integrated-gradients")
    assert choice.hu == (-850.0,) and not choice.neutral  # the published default, with the warning
    assert "integrated-gradients: its reference (flat image at -850 HU) scores p(malignant) 0.90" in choice.warning()
    assert reference_choice(model, "saliency") is None and reference_choice(model, "lrp") is None


def test_deep_shap_keeps_the_baselines_the_model_calls_benign():
    from xaiexplain.explainers.captum_methods import SHAP_BASELINES_HU

    scores = {float(hu): (0.9 if hu > -800 else 0.1) for hu in SHAP_BASELINES_HU}
    choice = reference_choice(FlatScores(scores), "deep-shap")
    assert choice.hu == tuple(float(hu) for hu in SHAP_BASELINES_HU if hu <= -800) and choice.neutral


@pytest.fixture(scope="module")
def biased_classifier(tmp_path_factory):
    """The shipped classifier with its malignant logit raised by 30: every input, references too, malignant."""
    bundle = load_bundle()
    model = copy.deepcopy(bundle.model)
    with torch.no_grad():
        model.classifier.bias[1] += 30.0
    config = {key: value for key, value in bundle.config.items() if key not in ("format", "format_version")}
    return save_bundle(tmp_path_factory.mktemp("biased") / "biased", model, config)


def test_explain_warns_when_a_reference_is_not_benign(biased_classifier, tmp_path):
    series, _ = small_series(tmp_path / "series")
    out = tmp_path / "out"
    result = xaiexplain("explain", "--series", series, "--point", CENTRE, "--model", biased_classifier, "--method",
                        "integrated-gradients", "--method", "deep-shap", "--method", "saliency", "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2, result.stderr
    assert warnings[0].startswith("warning: integrated-gradients: its reference (flat image at -850 HU) scores "
                                  "p(malignant) 1.00, not below the decision threshold")
    assert warnings[1].startswith("warning: deep-shap: its reference (flat baselines at ")
    written = json.loads((out / "nodules.json").read_text())
    assert set(written["references"]) == {"integrated-gradients", "deep-shap"}
    assert not written["references"]["integrated-gradients"]["below_threshold"]
    assert written["reference_warnings"] == [w.removeprefix("warning: ") for w in warnings]


def test_the_shipped_classifier_explains_against_a_benign_reference(tmp_path):
    series, _ = small_series(tmp_path / "series")
    out = tmp_path / "out"
    result = xaiexplain("explain", "--series", series, "--point", CENTRE, "--method", "integrated-gradients",
                        "--method", "iterative:deep-shap", "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "warning" not in result.stderr
    written = json.loads((out / "nodules.json").read_text())
    integrated = written["references"]["integrated-gradients"]
    assert integrated["hu"] == [-850.0] and integrated["below_threshold"]
    assert integrated["probabilities"][0] < written["nodules"][0]["threshold"]
    assert written["references"]["iterative:deep-shap"]["below_threshold"] and written["reference_warnings"] == []
