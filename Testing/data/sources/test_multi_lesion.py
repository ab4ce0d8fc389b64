"""Multi-lesion phantom images and the FROC study on them: labels follow the malignant nodules in the image."""
import contextlib
import datetime
import io
import json
import shutil

import numpy as np
import pytest
from scipy import ndimage
from xaiexplain.data.patch_set import SPLITS, labelled_scans, load_patch_set, split_patients
from xaiexplain.data.sources.multi_lesion import IMAGE_SIZE, render_multi_lesion_set
from xaiexplain_train.cli import main as train_main

SEED = 3


@pytest.fixture(scope="module")
def multi_lesion_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("multi-lesion") / "set"
    summary = render_multi_lesion_set(folder, images=40, seed=SEED, progress=False,
                                      source_nodules={"train": 6, "validation": 4, "test": 4}, paired_negatives=True)
    return folder, summary


def test_multi_lesion_images_are_positive_exactly_while_a_malignant_nodule_is_in_them(multi_lesion_set):
    folder, summary = multi_lesion_set
    arrays, rows, stored = load_patch_set(folder)
    rendered = int((arrays["paired_with"] < 0).sum())
    assert stored["patch_size"] == IMAGE_SIZE and rendered == 40 and summary["images"] == len(rows)
    assert arrays["images"].shape == (len(rows), IMAGE_SIZE, IMAGE_SIZE)
    np.testing.assert_array_equal(arrays["label"], (arrays["lesion_labels"].max(axis=(1, 2)) > 0).astype(np.int8))
    assert 0 < arrays["label"].sum() < 40
    assert set(np.unique(arrays["split"])) == {0, 1, 2} and len(SPLITS) == 3
    split_of = split_patients([patient for patient, _ in labelled_scans()], SEED)
    for n, row in enumerate(rows):
        # lesions are numbered 1..L, and nodules are solid tissue, not lung, where the labels say so
        assert set(np.unique(arrays["lesion_labels"][n])) == set(range(row["lesions"] + 1))
        nodules = arrays["nodule_mask"][n] | arrays["distractor_mask"][n]
        # (a paired negative whose nodules were all malignant has none left)
        assert (nodules.any() or "paired_with" in row) and (not nodules.any() or np.median(arrays["images"][n][nodules]) > -500)
        # every nodule of an image comes from a patient of the image's split
        assert all(split_of[nodule["patient_id"]] == row["split"] for nodule in row["nodules"])


def test_each_image_is_rendered_again_without_its_malignant_nodules(multi_lesion_set):
    folder, summary = multi_lesion_set
    arrays, rows, _ = load_patch_set(folder)
    lesions = arrays["lesion_labels"] > 0
    removed = arrays["lesions_removed"].astype(int)
    assert "rendered again" in summary["lesions_removed"]
    for n in np.flatnonzero(arrays["paired_with"] < 0):
        change = np.abs(removed[n] - arrays["images"][n])
        if arrays["label"][n] == 0:  # nothing to remove
            assert not change.any()
            continue
        # lung where the malignant nodules were; elsewhere a change only where it joins them (their soft
        # edges and spicules), beyond the last HU of a soft edge
        assert np.median(removed[n][lesions[n]]) < -600 < np.median(arrays["images"][n][lesions[n]])
        regions, count = ndimage.label((change > 2) | lesions[n], np.ones((3, 3)))
        assert set(np.unique(regions[lesions[n]])) == set(range(1, count + 1))


def test_paired_negatives_are_positive_training_images_without_their_lesions(multi_lesion_set):
    folder, summary = multi_lesion_set
    arrays, rows, _ = load_patch_set(folder)
    paired = np.flatnonzero(arrays["paired_with"] >= 0)
    sources = arrays["paired_with"][paired]
    train = SPLITS.index("train")
    positives_in_train = np.flatnonzero((arrays["split"] == train) & (arrays["label"] == 1))
    assert summary["paired_negatives"] == len(paired) and sorted(sources) == sorted(positives_in_train)
    assert (arrays["split"][paired] == train).all() and (arrays["label"][paired] == 0).all()
    assert not arrays["lesion_labels"][paired].any()
    np.testing.assert_array_equal(arrays["images"][paired], arrays["lesions_removed"][sources])
    for n, source in zip(paired, sources):
        assert rows[n]["paired_with"] == source and rows[n]["label"] == "benign"
        assert all(nodule["label"] != "malignant" for nodule in rows[n]["nodules"])
    assert "paired_with" not in rows[int(sources[0])]  # the source is an image of its own


@pytest.fixture(scope="module")
def froc_study(multi_lesion_set, tmp_path_factory):
    folder, _ = multi_lesion_set
    study = tmp_path_factory.mktemp("froc") / "study"
    shutil.copytree(folder, study / "data")  # the study reuses OUT/data
    capture = io.StringIO()
    with contextlib.redirect_stdout(capture):
        code = train_main(["froc-study", "--out", str(study), "--epochs", "8", "--widths", "4,8,16,32", "--method",
                           "saliency", "--device", "cpu", "--seed", str(SEED), "--bootstrap", "200"])
    assert code == 0
    return study, json.loads((study / "froc.json").read_text()), capture.getvalue()


def test_froc_study_command_writes_table_and_plot(froc_study):
    study, result, printed = froc_study
    assert "| saliency |" in printed
    entry = result["methods"]["saliency"]
    for curve in (entry["initial"], entry["augmented"]):
        # a FROC curve never goes down, and ends at the sensitivity its candidates reach
        assert np.all(np.diff(curve["sensitivity"]) >= 0) and np.all(np.diff(curve["false_positives_per_image"]) >= 0)
        assert 0 <= curve["sensitivity_at_10_fp"] <= 1
    assert result["called_positive"] >= 1 and (study / "froc.png").stat().st_size > 0
    assert "froc-study" in result["command"] and result["paired_negatives"] > 0
    assert result["images"] == 40  # the images of the data set it reused, not the --images default (1200)


def test_froc_study_checks_the_premise_on_images_without_their_lesions(froc_study):
    study, result, printed = froc_study
    premise = result["premise"]
    assert premise["images"] == result["truly_positive_among_them"] >= 1
    assert premise["share"] == pytest.approx(premise["called_negative"] / premise["images"])
    assert premise["target"] == 0.9 and premise["holds"] == (premise["share"] >= 0.9)
    assert "rendered again" in premise["removal"]
    assert "Premise of Algorithm 1" in printed and "Premise of Algorithm 1" in (study / "froc.md").read_text()


def test_froc_study_states_its_candidates_and_normalisation(froc_study):
    study, result, _ = froc_study
    assert result["candidates_per_image"] is None and "every local maximum above zero" in result["candidate_rule"]
    assert result["normalisation"]["between_passes"].startswith("none")
    text = (study / "froc.md").read_text()
    assert "every local maximum above zero" in text and "Normalisation between passes: none" in text


def test_froc_study_gives_a_bootstrap_interval_and_its_date(froc_study):
    study, result, _ = froc_study
    bootstrap = result["methods"]["saliency"]["relative_change_bootstrap"]
    assert result["bootstrap"]["samples"] == 200 == len(bootstrap["replicates"])
    change = result["methods"]["saliency"]["relative_change"]
    if change is not None:
        low, high = bootstrap["interval_95"]
        assert low <= high and f"{100 * change:+.1f} % [" in (study / "froc.md").read_text()
    assert result["relative_change_mean_bootstrap"]["replicates"] == bootstrap["replicates"]  # one method
    assert abs((datetime.date.fromisoformat(result["date"]) - datetime.date.today()).days) <= 1  # UTC


def test_froc_study_refuses_an_unknown_method(tmp_path, capsys):
    assert train_main(["froc-study", "--out", str(tmp_path), "--method", "cycle-am"]) == 2
    assert "not cycle-am" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
