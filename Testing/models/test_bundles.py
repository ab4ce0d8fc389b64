"""A model bundle is checked where it is loaded: a damaged or mistaken one is one sentence on the command line
(exit status 2) and an XAIExplainError in Python, never a traceback and never silently accepted."""
import json
import shutil

import numpy as np
import pytest
import xaiexplain
from safetensors.torch import load_file, save_file
from xaiexplain.apps.cli import main
from xaiexplain.data.geometry import ScanGeometry
from xaiexplain.errors import XAIExplainError
from xaiexplain.io.dicom import write_dicom_series
from xaiexplain.models.bundles import BUNDLED

from helpers import another_classifier

POINT = "0,0,-96"


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """A small series with a bright square at POINT, enough for the demo classifier to be run."""
    geometry = ScanGeometry(patient_id="PHANTOM-B", study_instance_uid="1.2.826.0.1.3680043.8.498.40",
                            series_instance_uid="1.2.826.0.1.3680043.8.498.41", pixel_spacing=0.8,
                            slice_thickness=2.0, slice_z=tuple(-100.0 + 2.0 * k for k in range(6)), rows=64,
                            columns=64)
    hu = np.full(geometry.shape, -850, np.int16)
    hu[:, 28:36, 28:36] = 40
    return write_dicom_series(hu, geometry, tmp_path_factory.mktemp("bundle-series"))


def without(config, key):
    return {k: v for k, v in config.items() if k != key}


def with_input(config, **changes):
    return {**config, "input": {**config["input"], **changes}}


# each edit of the shipped demo-classifier's config.json, and a phrase of the sentence it must give
CONFIG_EDITS = {
    "not-an-object": (lambda c: [], "not an XAIExplain bundle configuration"),
    "no-architecture": (lambda c: without(c, "architecture"), "architecture"),
    "unknown-architecture": (lambda c: {**c, "architecture": "ResNet50"}, "architecture"),
    "unknown-argument": (lambda c: {**c, "arguments": {**c["arguments"], "depth": 3}}, "depth"),
    "arguments-not-a-dict": (lambda c: {**c, "arguments": [16, 32, 64, 128]}, "arguments"),
    "text-widths": (lambda c: {**c, "arguments": {**c["arguments"], "widths": "16,32"}}, "widths"),
    "text-threshold-number": (lambda c: {**c, "decision_threshold": "0.5"}, "decision_threshold"),
    "text-threshold-word": (lambda c: {**c, "decision_threshold": "high"}, "decision_threshold"),
    "threshold-above-one": (lambda c: {**c, "decision_threshold": 1.5}, "decision_threshold"),
    "no-threshold": (lambda c: without(c, "decision_threshold"), "decision_threshold"),
    "zero-width-window": (lambda c: with_input(c, hu_window=[100, 100]), "hu_window"),
    "reversed-window": (lambda c: with_input(c, hu_window=[400, -1000]), "hu_window"),
    "text-window": (lambda c: with_input(c, hu_window=["-1000", "400"]), "hu_window"),
    "zero-patch-size": (lambda c: with_input(c, patch_size=0), "patch_size"),
    "huge-patch-size": (lambda c: with_input(c, patch_size=10**9), "patch_size"),
    "text-patch-size": (lambda c: with_input(c, patch_size="wide"), "patch_size"),
    "nan-patch-size": (lambda c: with_input(c, patch_size=float("nan")), "NaN"),
    "zero-field-of-view": (lambda c: with_input(c, field_of_view_mm=0), "field_of_view_mm"),
    "huge-field-of-view": (lambda c: with_input(c, field_of_view_mm=10**9), "field_of_view_mm"),
    "text-field-of-view": (lambda c: with_input(c, field_of_view_mm="wide"), "field_of_view_mm"),
    "nan-field-of-view": (lambda c: with_input(c, field_of_view_mm=float("nan")), "NaN"),
    "kind-contradicts-architecture": (lambda c: {**c, "kind": "cycle-am"}, "kind"),
}


def bad_bundle(tmp_path, case):
    folder = tmp_path / f"bad-{case}"
    shutil.copytree(BUNDLED / "demo-classifier", folder)
    if case == "nan-weights":
        state = load_file(str(folder / "model.safetensors"))
        state["classifier.weight"][0, 0] = float("nan")
        save_file(state, str(folder / "model.safetensors"))
    else:
        edit, _ = CONFIG_EDITS[case]
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(edit(config)))
    return folder


def explain(series, model, out, method="saliency"):
    return main(["explain", "--series", str(series), "--point", POINT, "--method", method, "--model", str(model),
                 "--out", str(out)])


def one_line_error(capsys, status, *phrases):
    captured = capsys.readouterr()
    assert status == 2, captured.err
    assert "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


# Before: `[]` -> AttributeError, no architecture -> KeyError, unknown / text arguments -> TypeError,
# "high" -> ValueError from float() (tracebacks, exit 1); "0.5", 1.5, no threshold (KeyError), the zero-width,
# reversed and text windows, patch_size 0 and a kind contradicting the architecture either ran to exit 0 with
# nonsense or raised a traceback.
@pytest.mark.parametrize("case", sorted(CONFIG_EDITS))
def test_bad_config_is_one_sentence_on_the_command_line(case, series, tmp_path, capsys):
    status = explain(series, bad_bundle(tmp_path, case), tmp_path / "out")
    one_line_error(capsys, status, "config.json", CONFIG_EDITS[case][1])
    assert not (tmp_path / "out").exists()


# Before: NaN weights were loaded and the CLI printed `p(malignant) nan -> benign`, exit 0.
def test_nan_weights_are_one_sentence_on_the_command_line(series, tmp_path, capsys):
    status = explain(series, bad_bundle(tmp_path, "nan-weights"), tmp_path / "out")
    one_line_error(capsys, status, "model.safetensors", "NaN")
    assert not (tmp_path / "out").exists()


# Before: the generators' (G+(x), G-(x)) tuple went into softmax: a TypeError traceback, exit 1.
@pytest.mark.parametrize("method", ["saliency", "grad-cam"])
def test_cycle_am_bundle_as_the_classifier(method, series, tmp_path, capsys):
    status = explain(series, "demo-cycle-am", tmp_path / "out", method)
    one_line_error(capsys, status, "demo-cycle-am is a cycle-am bundle, not a classifier")
    assert not (tmp_path / "out").exists()


# Before: each of these bundles was either loaded without complaint or raised something other than
# XAIExplainError (AttributeError, KeyError, TypeError). (An unknown architecture was already an
# XAIExplainError in Python; on the command line its sentence did not name the file.)
@pytest.mark.parametrize("case", sorted(set(CONFIG_EDITS) - {"unknown-architecture"}) + ["nan-weights"])
def test_python_api_refuses_bad_bundles(case, tmp_path):
    with pytest.raises(XAIExplainError) as raised:
        xaiexplain.load_bundle(bad_bundle(tmp_path, case))
    assert "\n" not in str(raised.value)


# Before: load_bundle took no role (TypeError).
def test_roles():
    assert xaiexplain.load_bundle("demo-classifier", role="classifier").config["kind"] == "classifier"
    generators = xaiexplain.load_bundle("demo-cycle-am", role="cycle-am")
    assert generators.config["kind"] == "cycle-am"
    with pytest.raises(XAIExplainError, match="^demo-cycle-am is a cycle-am bundle, not a classifier$"):
        xaiexplain.load_bundle("demo-cycle-am", role="classifier")
    with pytest.raises(XAIExplainError, match="^demo-classifier is a classifier bundle, not a cycle-am bundle$"):
        xaiexplain.load_bundle("demo-classifier", role="cycle-am")
    with pytest.raises(XAIExplainError, match="is a cycle-am bundle, not a classifier"):
        xaiexplain.load_bundle(generators, role="classifier")
    with pytest.raises(XAIExplainError, match="is a cycle-am bundle, not a classifier"):
        generators.predict(np.full((1, 64, 64), -850.0))
    with pytest.raises(XAIExplainError, match="unknown bundle role"):
        xaiexplain.load_bundle("demo-classifier", role="segmenter")
    assert np.isfinite(xaiexplain.load_bundle().predict(np.full((2, 64, 64), -850.0))).all()


@pytest.fixture(scope="module")
def other_classifier(tmp_path_factory):
    return another_classifier(tmp_path_factory.mktemp("other") / "other-classifier")


def test_the_fingerprint_is_the_weights_whatever_file_holds_them(other_classifier, tmp_path):
    shutil.copytree(BUNDLED / "demo-classifier", tmp_path / "copy")
    demo = xaiexplain.load_bundle()
    assert xaiexplain.load_bundle(tmp_path / "copy").fingerprint == demo.fingerprint
    assert xaiexplain.load_bundle(other_classifier).fingerprint != demo.fingerprint
    assert xaiexplain.load_bundle("demo-cycle-am", role="cycle-am").config["classifier"]["weights_sha256"] == \
        demo.fingerprint  # the shipped pair belongs together


# Before: `explain --model X --method cycle-am` silently used demo-cycle-am, trained for another network.
def test_cycle_am_of_another_classifier_is_one_sentence(other_classifier, series, tmp_path, capsys):
    status = explain(series, other_classifier, tmp_path / "out", "cycle-am")
    one_line_error(capsys, status, "demo-cycle-am was trained against another classifier", "--cycle-am")
    assert not (tmp_path / "out").exists()
    patches = np.full((2, 64, 64), -850.0)
    for method in ("cycle-am", "iterative:cycle-am"):
        with pytest.raises(XAIExplainError, match="trained against another classifier"):
            xaiexplain.explain(other_classifier, patches, method)
    # the explicit override, and the pair that belongs together
    assert xaiexplain.explain(other_classifier, patches, "cycle-am", allow_other_classifier=True).shape == (2, 64, 64)
    assert xaiexplain.explain("demo-classifier", patches, "cycle-am").shape == (2, 64, 64)


@pytest.mark.parametrize("missing", ["weights_sha256", "hu_range"])
def test_cycle_am_bundle_of_an_earlier_version_is_refused(missing, tmp_path):
    folder = tmp_path / "old-cycle-am"
    shutil.copytree(BUNDLED / "demo-cycle-am", folder)
    config = json.loads((folder / "config.json").read_text())
    config["classifier"].pop("weights_sha256") if missing == "weights_sha256" else config["input"].pop("hu_range")
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(XAIExplainError, match=missing):
        xaiexplain.load_bundle(folder, role="cycle-am")


# Before: a config.json nested 100 000 levels deep ended in a RecursionError (traceback, exit 1).
def test_a_config_nested_too_deep_is_one_sentence(series, tmp_path, capsys):
    folder = tmp_path / "deep"
    shutil.copytree(BUNDLED / "demo-classifier", folder)
    (folder / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(XAIExplainError, match="nested more than"):
        xaiexplain.load_bundle(folder)
    one_line_error(capsys, explain(series, folder, tmp_path / "out"), "config.json", "nested more than")
    assert not (tmp_path / "out").exists()


def bundle_for_patches(folder, input_size: int, patch_size: int):
    """A classifier bundle whose network is built for ``input_size`` px and whose config says it reads
    ``patch_size`` px."""
    from xaiexplain.models.architectures import NoduleClassifier
    from xaiexplain.models.bundles import save_bundle

    demo = xaiexplain.load_bundle()
    config = {key: value for key, value in demo.config.items() if key not in ("format", "format_version")}
    config["arguments"] = {**config["arguments"], "input_size": input_size}
    config["input"] = {**config["input"], "patch_size": patch_size}
    return save_bundle(folder, NoduleClassifier(widths=config["arguments"]["widths"], input_size=input_size), config)


# Before: a well-formed bundle for 128 px patches loaded, then failed at inference with a RuntimeError
# (traceback, exit 1); one whose network does not read its own patch_size loaded too.
def test_a_bundle_for_other_patches_is_refused_before_inference(series, tmp_path, capsys):
    wide = bundle_for_patches(tmp_path / "wide", 128, 128)
    bundle = xaiexplain.load_bundle(wide)  # a bundle of its own kind: it reads 128 px patches
    assert xaiexplain.explain(bundle, np.full((2, 128, 128), -850.0), "saliency").shape == (2, 128, 128)
    with pytest.raises(XAIExplainError, match="reads patches of 128 x 128 px, not 64 x 64"):
        xaiexplain.explain(bundle, np.full((2, 64, 64), -850.0), "saliency")
    # issue 26: a series is explained on the patches the model reads (before: refused, and before that fed
    # 64 px patches without a word)
    assert explain(series, wide, tmp_path / "out") == 0, capsys.readouterr().err

    inconsistent = bundle_for_patches(tmp_path / "inconsistent", 128, 64)
    with pytest.raises(XAIExplainError, match="does not read one-channel patches of its input.patch_size, 64 x 64"):
        xaiexplain.load_bundle(inconsistent)
