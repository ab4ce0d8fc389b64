"""The method registry is the only list of methods: a method added to it reaches the command line's help,
the explain output files and the benchmark's rows without other edits; options are checked against it."""
import json
from types import MappingProxyType

import numpy as np
import pytest
import xaiexplain
from helpers import CENTRE, small_series
from xaiexplain.apps import cli
from xaiexplain.errors import XAIExplainError
from xaiexplain.explainers import registry


def _toy(bundle, patches_hu, options):
    """Brighter than the lung is evidence for malignant, scaled."""
    return ((patches_hu + 850.0) / 1000.0 * options["scale"]).astype(np.float32), None


@pytest.fixture()
def toy():
    record = registry.register(registry.Method(
        "toy", "evidence", "a toy method for the tests", "nobody, 2026", _toy,
        defaults=MappingProxyType({"scale": 1.0})))
    yield record
    registry.unregister("toy")


def test_every_record_says_what_its_map_means():
    for name in registry.available_methods():
        record = registry.get(name)
        assert record.kind in registry.KINDS and record.reference and record.summary
        assert record.file_name == name.replace(":", "_")
    assert registry.get("iterative:lrp").kind == registry.get("lrp").kind
    assert {"max_iterations", "decay", "inpaint_radius", "layer"} <= set(registry.get("iterative:grad-cam").defaults)
    assert [registry.get(m).kind for m in ("saliency", "lrp", "cycle-am")] == ["sensitivity", "evidence", "change"]


def test_a_method_added_to_the_registry_reaches_help_files_and_benchmark(toy, tmp_path, capsys):
    assert "toy" in xaiexplain.available_methods() and "iterative:toy" in xaiexplain.available_methods()
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["explain"].format_help()
    assert "toy" in help_text and "a toy method for the tests" in help_text

    series, _ = small_series(tmp_path / "series")
    out = tmp_path / "out"
    assert cli.main(["explain", "--series", str(series), "--point", CENTRE, "--method", "toy",
                     "--method", "iterative:toy", "--option", "scale=2", "--out", str(out)]) == 0
    files = json.loads((out / "nodules.json").read_text())["files"]
    assert files["toy"]["relevance"] == "relevance_toy.nrrd" and (out / "relevance_toy.nrrd").is_file()
    assert (out / "relevance_iterative_toy.nrrd").is_file()

    from xaiexplain.evaluate.benchmark import run_benchmark
    from xaiexplain.evaluate.benchmark_report import table_rows

    summary = run_benchmark(tmp_path / "benchmark", quick=True, methods=["toy"], nodules=2, progress=False)
    assert [row[0] for row in table_rows(summary)] == ["toy"]


def test_an_option_no_method_takes_is_refused_in_one_sentence(tmp_path, capsys):
    bundle = xaiexplain.load_bundle()
    patches = np.full((1, 64, 64), -850.0, np.float32)
    with pytest.raises(XAIExplainError, match="lrp has no option 'lyer'"):
        xaiexplain.explain(bundle, patches, "lrp", lyer="block2")
    series, _ = small_series(tmp_path / "series")
    status = cli.main(["explain", "--series", str(series), "--point", CENTRE, "--method", "lrp", "--method",
                       "grad-cam", "--option", "lyer=block2", "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(error) == 1 and "lyer" in error[0] and not (tmp_path / "out").exists()
    # an option some of the methods take goes to those only
    assert cli.main(["explain", "--series", str(series), "--point", CENTRE, "--method", "lrp", "--method",
                     "grad-cam", "--option", "layer=block2", "--out", str(tmp_path / "out")]) == 0


def test_grad_cam_layers_by_module_path():
    bundle = xaiexplain.load_bundle()
    patches = np.random.default_rng(0).uniform(-900, 100, (2, 64, 64)).astype(np.float32)
    assert bundle.model.named_layers()["block3"] == "features.8"
    by_name = xaiexplain.explain(bundle, patches, "grad-cam", layer="block3")
    by_path = xaiexplain.explain(bundle, patches, "grad-cam", layer="features.8")
    np.testing.assert_array_equal(by_name, by_path)
    assert not np.array_equal(by_name, xaiexplain.explain(bundle, patches, "grad-cam", layer="features.5"))
    with pytest.raises(XAIExplainError, match="unknown layer 'features.99'"):
        xaiexplain.explain(bundle, patches, "grad-cam", layer="features.99")


def test_the_readme_method_table_is_the_registry():
    from helpers import REPOSITORY

    assert registry.methods_table() in (REPOSITORY / "README.md").read_text()


def test_labels_and_drawing_follow_the_kind():
    from xaiexplain.explainers.labels import label_image

    relevance = np.zeros((8, 8), np.float32)
    relevance[1, 1], relevance[1, 2], relevance[6, 6], relevance[6, 7] = 5.0, 4.0, -5.0, -4.0
    evidence = label_image(relevance, registry.KINDS["evidence"])
    assert evidence[1, 1] == 1 and evidence[6, 6] == 2
    sensitivity = label_image(np.abs(relevance), registry.KINDS["sensitivity"])
    assert set(np.unique(sensitivity)) == {0, 1} and sensitivity[6, 6] == 1
    assert registry.KINDS["sensitivity"].labels == {"relevant to the decision": 1}
    bundle = xaiexplain.load_bundle()
    patches = np.random.default_rng(1).uniform(-900, 100, (2, 64, 64)).astype(np.float32)
    for method in ("saliency", "guided-backprop", "guided-grad-cam"):
        assert (xaiexplain.explain(bundle, patches, method) >= 0).all(), method  # unsigned
