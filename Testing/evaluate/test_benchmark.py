"""`xaiexplain benchmark --quick`: every method measured on held-out phantom nodules, within minutes."""
import json
import subprocess
import sys

from xaiexplain.evaluate.benchmark import all_methods


def test_quick_benchmark_measures_every_method(tmp_path):
    out = tmp_path / "benchmark"
    result = subprocess.run([sys.executable, "-m", "xaiexplain.apps.cli", "benchmark", "--quick", "--out", str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "benchmark.json").read_text())
    assert list(summary["methods"]) == all_methods() and len(all_methods()) == 18
    assert summary["patches"] == 8 and summary["forward_backward_seconds"] > 0
    # base methods and their iterative variants side by side, measured on the same patches: those called malignant
    assert all_methods()[:2] == ["saliency", "iterative:saliency"]
    called = summary["methods"]["saliency"]["measured_patches"]
    assert len(called) == summary["decided_malignant"]
    assert all(entry["measured_patches"] == called for entry in summary["methods"].values())
    for method in ("iterative:saliency", "iterative:grad-cam", "iterative:lrp"):
        assert summary["methods"][method]["iterations_mean"] >= 1 and summary["methods"][method]["mask_fraction_median"] <= 0.25
    for method, entry in summary["methods"].items():
        nodule = entry["nodule"]
        if entry["patches_with_evidence"]:
            for key in ("pointing_game", "mass_accuracy", "rank_accuracy"):
                assert 0.0 <= nodule[key] <= 1.0, (method, key)
        if summary["decided_malignant"]:
            assert entry["faithfulness_patches"] == summary["decided_malignant"], method
            assert 0.0 <= entry["deletion_auc"] <= 1.0 and 0.0 <= entry["insertion_auc"] <= 1.0, method
        assert entry["seconds_per_patch"] > 0 and entry["ratio_to_forward_backward"] > 0, method
    # the sanity check separates methods: saliency depends on the learned parameters, while cycle-am's
    # generators are fixed once trained, so randomizing the classifier leaves its maps exactly as they were
    assert summary["methods"]["saliency"]["randomization_spearman"] < 0.5
    assert summary["methods"]["cycle-am"]["randomization_spearman"] > 0.99
    flips = summary["methods"]["cycle-am"]["counterfactuals"]["flip_rate"]
    assert 0.0 <= flips["both"] <= 1.0
    series = summary["whole_series"]
    assert series["nodules"] == 4 and 0 < series["repeat_seconds"] and "a whole phantom series" in result.stdout
    table = (out / "benchmark.md").read_text()
    assert all(f"| {method} |" in table for method in all_methods())
    for plot in ("deletion_curves.png", "insertion_curves.png", "localization.png"):
        assert (out / plot).stat().st_size > 10_000, plot
    assert "| saliency |" in result.stdout
