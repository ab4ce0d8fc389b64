"""Multi-lesion phantom images for the FROC study: labels follow the malignant nodules in the image."""
import numpy as np

from xaiexplain.dataset import SPLITS, labelled_scans, load_patch_set, split_patients
from xaiexplain.multi_lesion import IMAGE_SIZE, render_multi_lesion_set


def test_multi_lesion_images_are_positive_exactly_while_a_malignant_nodule_is_in_them(tmp_path):
    summary = render_multi_lesion_set(tmp_path / "set", images=24, seed=3, progress=False,
                                      source_nodules={"train": 6, "validation": 4, "test": 4})
    arrays, rows, stored = load_patch_set(tmp_path / "set")
    assert stored["patch_size"] == IMAGE_SIZE and summary["images"] == 24 == len(rows)
    assert arrays["images"].shape == (24, IMAGE_SIZE, IMAGE_SIZE)
    np.testing.assert_array_equal(arrays["label"], (arrays["lesion_labels"].max(axis=(1, 2)) > 0).astype(np.int8))
    assert 0 < arrays["label"].sum() < 24
    assert set(np.unique(arrays["split"])) == {0, 1, 2} and len(SPLITS) == 3
    split_of = split_patients([patient for patient, _ in labelled_scans()], 3)
    for n, row in enumerate(rows):
        # lesions are numbered 1..L, and nodules are solid tissue, not lung, where the labels say so
        assert set(np.unique(arrays["lesion_labels"][n])) == set(range(row["lesions"] + 1))
        nodules = arrays["nodule_mask"][n] | arrays["distractor_mask"][n]
        assert nodules.any() and np.median(arrays["images"][n][nodules]) > -500
        # every nodule of an image comes from a patient of the image's split
        assert all(split_of[nodule["patient_id"]] == row["split"] for nodule in row["nodules"])
