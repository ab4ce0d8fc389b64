"""Multi-lesion phantom images and the FROC study on them: labels follow the malignant nodules in the image."""
import json
import shutil

import numpy as np
import pytest
from xaiexplain.data.patch_set import SPLITS, labelled_scans, load_patch_set, split_patients
from xaiexplain.data.sources.multi_lesion import IMAGE_SIZE, render_multi_lesion_set
from xaiexplain_train.cli import main as train_main

SEED = 3


@pytest.fixture(scope="module")
def multi_lesion_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("multi-lesion") / "set"
    summary = render_multi_lesion_set(folder, images=40, seed=SEED, progress=False,
                                      source_nodules={"train": 6, "validation": 4, "test": 4})
    return folder, summary


def test_multi_lesion_images_are_positive_exactly_while_a_malignant_nodule_is_in_them(multi_lesion_set):
    folder, summary = multi_lesion_set
    arrays, rows, stored = load_patch_set(folder)
    assert stored["patch_size"] == IMAGE_SIZE and summary["images"] == 40 == len(rows)
    assert arrays["images"].shape == (40, IMAGE_SIZE, IMAGE_SIZE)
    np.testing.assert_array_equal(arrays["label"], (arrays["lesion_labels"].max(axis=(1, 2)) > 0).astype(np.int8))
    assert 0 < arrays["label"].sum() < 40
    assert set(np.unique(arrays["split"])) == {0, 1, 2} and len(SPLITS) == 3
    split_of = split_patients([patient for patient, _ in labelled_scans()], SEED)
    for n, row in enumerate(rows):
        # lesions are numbered 1..L, and nodules are solid tissue, not lung, where the labels say so
        assert set(np.unique(arrays["lesion_labels"][n])) == set(range(row["lesions"] + 1))
        nodules = arrays["nodule_mask"][n] | arrays["distractor_mask"][n]
        assert nodules.any() and np.median(arrays["images"][n][nodules]) > -500
        # every nodule of an image comes from a patient of the image's split
        assert all(split_of[nodule["patient_id"]] == row["split"] for nodule in row["nodules"])


def test_froc_study_command_writes_table_and_plot(multi_lesion_set, tmp_path, capsys):
    folder, _ = multi_lesion_set
    shutil.copytree(folder, tmp_path / "study" / "data")  # the study reuses OUT/data
    assert train_main(["froc-study", "--out", str(tmp_path / "study"), "--epochs", "8", "--widths", "4,8,16,32",
                       "--method", "saliency", "--device", "cpu", "--seed", str(SEED)]) == 0
    assert "| saliency |" in capsys.readouterr().out
    result = json.loads((tmp_path / "study" / "froc.json").read_text())
    entry = result["methods"]["saliency"]
    for curve in (entry["initial"], entry["augmented"]):
        # a FROC curve never goes down, and ends at the sensitivity its candidates reach
        assert np.all(np.diff(curve["sensitivity"]) >= 0) and np.all(np.diff(curve["false_positives_per_image"]) >= 0)
        assert 0 <= curve["sensitivity_at_10_fp"] <= 1
    assert result["called_positive"] >= 1 and (tmp_path / "study" / "froc.png").stat().st_size > 0
    assert "froc-study" in result["command"]


def test_froc_study_refuses_an_unknown_method(tmp_path, capsys):
    assert train_main(["froc-study", "--out", str(tmp_path), "--method", "cycle-am"]) == 2
    assert "not cycle-am" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_froc_summary_combines_seeds_as_mean_and_sd(tmp_path):
    import json

    from xaiexplain_train.cli import main as train_main

    def study(folder, seed, initial, augmented):
        folder.mkdir()
        method = {"initial": {"sensitivity_at_10_fp": initial}, "augmented": {"sensitivity_at_10_fp": augmented},
                  "relative_change": (augmented - initial) / initial, "iterations_mean": 3.0}
        (folder / "froc.json").write_text(json.dumps({
            "seed": seed, "detection_radius_px": 2.432, "called_positive": 10, "test_images": 20,
            "methods": {"saliency": method}}))

    for seed, augmented in ((0, 0.55), (1, 0.60), (2, 0.50)):
        study(tmp_path / f"seed-{seed}", seed, 0.5, augmented)
    assert train_main(["froc-summary", *(str(tmp_path / f"seed-{s}") for s in range(3)),
                       "--out", str(tmp_path / "summary")]) == 0
    summary = json.loads((tmp_path / "summary" / "froc-summary.json").read_text())
    entry = summary["methods"]["saliency"]
    assert summary["seeds"] == [0, 1, 2]
    assert abs(entry["relative_change_mean"] - 0.1) < 1e-9 and abs(entry["relative_change_sd"] - 0.1) < 1e-9
    assert "+10.0 % +/- 10.0 %" in (tmp_path / "summary" / "froc-summary.md").read_text()
    assert train_main(["froc-summary", str(tmp_path / "nothing"), "--out", str(tmp_path / "s2")]) == 2
