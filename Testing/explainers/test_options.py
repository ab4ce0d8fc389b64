"""Method options are read by their type (the registry's defaults say it) and range (the records' ``ranges``),
and a bad value is one sentence, exit status 2, before any work; booleans only from true/false, 1/0, yes/no."""
import numpy as np
import pytest
import xaiexplain
from helpers import CENTRE, another_classifier, small_series
from xaiexplain.apps import cli
from xaiexplain.errors import XAIExplainError
from xaiexplain.explainers import registry
from xaiexplain.explainers.on_patches import parse_options


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    folder, _ = small_series(tmp_path_factory.mktemp("options") / "series")
    return folder


def explain(series, out, method, *arguments):
    """The exit status of ``xaiexplain explain`` (argparse's own errors exit through SystemExit)."""
    try:
        return cli.main(["explain", "--series", str(series), "--point", CENTRE, "--method", method, *arguments,
                         "--out", str(out)])
    except SystemExit as exit:
        return exit.code


def one_line_error(capsys, status, *phrases):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, err
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


# Before: steps 0 / -1 an AssertionError, abc and decay x a ValueError, layer classifier a ValueError, layer [1]
# and generators 123 a TypeError, steps 1e9 a MemoryError (tracebacks, exit 1); steps 2.7 ran as 2, steps true
# as 1, max_iterations 0 / -1 gave all-zero maps reported as explained, decay -1 scaled the maps by 1.3e7,
# inpaint_radius -1 / 1e30 and internal_batch_size -5 were taken (exit 0).
BAD_OPTIONS = [
    ("integrated-gradients", "steps=0", "steps is a whole number from 1 to 1000"),
    ("integrated-gradients", "steps=-1", "steps is a whole number from 1 to 1000"),
    ("integrated-gradients", "steps=abc", "steps is a whole number"),
    ("integrated-gradients", "steps=1e9", "steps is a whole number"),
    ("integrated-gradients", "steps=1000000000", "from 1 to 1000"),
    ("integrated-gradients", "steps=2.7", "steps is a whole number"),
    ("integrated-gradients", "steps=true", "steps is a whole number"),
    ("integrated-gradients", "internal_batch_size=-5", "internal_batch_size is a whole number from 1 to 4096"),
    ("iterative:saliency", "decay=x", "decay is a number from 0 to 10"),
    ("iterative:saliency", "decay=-1", "decay is a number from 0 to 10"),
    ("iterative:saliency", "decay=nan", "decay is a number"),
    ("iterative:saliency", "max_iterations=0", "max_iterations is a whole number from 2 to 100"),
    ("iterative:saliency", "max_iterations=-1", "max_iterations is a whole number from 2 to 100"),
    ("iterative:saliency", "max_iterations=1", "from 2 to 100"),  # Algorithm 1 makes no pass with T = 1
    ("iterative:saliency", "inpaint_radius=-1", "inpaint_radius is a whole number from 1 to 32"),
    ("iterative:saliency", "inpaint_radius=1e30", "inpaint_radius is a whole number"),
    ("grad-cam", "layer=classifier", "unknown layer 'classifier'"),
    ("grad-cam", "layer=[1]", "unknown layer '[1]'"),
    ("grad-cam", "layer=", "the option layer is a name"),
    ("iterative:grad-cam", "layer=classifier", "unknown layer 'classifier'"),
    ("cycle-am", "generators=123", "no model bundle 123"),
    ("cycle-am", "allow_other_classifier=maybe", "allow_other_classifier is true or false"),
]


@pytest.mark.parametrize("method, option, phrase", BAD_OPTIONS, ids=[o for _, o, _ in BAD_OPTIONS])
def test_a_bad_option_value_is_one_sentence_before_any_work(method, option, phrase, series, tmp_path, capsys):
    status = explain(series, tmp_path / "out", method, "--option", option)
    one_line_error(capsys, status, phrase)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("options", [{"steps": 2.7}, {"steps": True}, {"steps": 0}, {"internal_batch_size": -5},
                                     {"steps": "abc"}, {"steps": float("inf")}])
def test_python_option_values_are_refused_as_the_command_line_s(options):
    patches = np.full((1, 64, 64), -850.0, np.float32)
    with pytest.raises(XAIExplainError, match=f"the option {next(iter(options))} is a whole number"):
        xaiexplain.explain("demo-classifier", patches, "integrated-gradients", **options)


def test_good_values_are_read_into_their_types():
    methods = ["integrated-gradients", "iterative:grad-cam", "cycle-am"]
    assert parse_options(methods, {"steps": " 100", "decay": "0.3", "max_iterations": "2", "layer": "features.5",
                                   "inpaint_radius": 32, "allow_other_classifier": "yes"}) == {
        "steps": 100, "decay": 0.3, "max_iterations": 2, "layer": "features.5", "inpaint_radius": 32,
        "allow_other_classifier": True}
    assert parse_options(["iterative:saliency"], {"decay": 0}) == {"decay": 0.0}
    # the types and ranges are data of the records
    assert registry.get("iterative:integrated-gradients").option_specs["steps"] == {
        "type": "integer", "default": 50, "minimum": 1, "maximum": 1000}
    assert registry.get("cycle-am").option_specs["allow_other_classifier"]["type"] == "boolean"


@pytest.mark.parametrize("text, value", [("true", True), ("True", True), ("1", True), ("YES", True),
                                         ("false", False), ("False", False), ("0", False), ("no", False)])
def test_booleans_are_read_from_true_false_1_0_yes_no(text, value):
    assert parse_options(["cycle-am"], {"allow_other_classifier": text}) == {"allow_other_classifier": value}


@pytest.mark.parametrize("text", ["maybe", "", "2", "on", "nein", "-1"])
def test_any_other_boolean_text_is_refused(text):
    with pytest.raises(XAIExplainError, match="allow_other_classifier is true or false"):
        parse_options(["cycle-am"], {"allow_other_classifier": text})


# Before: the text "no" (and "False") was truthy: the fingerprint check was off and cycle-am ran on a
# classifier its generators were not trained for (exit 0).
@pytest.mark.parametrize("word", ["no", "False", "0"])
def test_allow_other_classifier_no_keeps_the_fingerprint_check(word, series, tmp_path, capsys):
    other = another_classifier(tmp_path / "other-classifier")
    status = explain(series, tmp_path / "out", "cycle-am", "--model", str(other), "--option",
                     f"allow_other_classifier={word}")
    one_line_error(capsys, status, "was trained against another classifier")
    assert not (tmp_path / "out").exists()


# Before: `--model ""` (an unset shell variable) silently explained with the demo classifier (exit 0).
@pytest.mark.parametrize("argument", ["--model", "--cycle-am", "--grad-cam-layer"])
def test_an_empty_bundle_or_layer_name_is_refused(argument, series, tmp_path, capsys):
    status = explain(series, tmp_path / "out", "grad-cam", argument, "")
    one_line_error(capsys, status, argument, "empty name")
    assert not (tmp_path / "out").exists()


# Before: with --lidc-root the layer was checked only per series, after the whole download had been indexed.
@pytest.mark.parametrize("option, phrase", [("layer=classifier", "unknown layer 'classifier'"),
                                            ("steps=0", "steps is a whole number")])
def test_an_archive_run_checks_the_options_before_reading_the_archive(option, phrase, tmp_path, capsys):
    root = tmp_path / "download"
    root.mkdir()
    status = cli.main(["explain", "--lidc-root", str(root), "--method", "grad-cam", "--method",
                       "integrated-gradients", "--option", option, "--out", str(tmp_path / "out")])
    one_line_error(capsys, status, phrase)
    assert not (tmp_path / "out").exists()
