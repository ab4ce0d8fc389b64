"""The explanation-quality measures on hand-made maps whose answers are known."""
import numpy as np
import pytest
from xaiexplain.evaluate import faithfulness, localization
from xaiexplain.explainers import registry


def _disc(shape=(32, 32), center=(16, 16), radius=5):
    rows, columns = np.indices(shape)
    return (rows - center[0]) ** 2 + (columns - center[1]) ** 2 <= radius ** 2


def test_evidence_for_decision_keeps_the_side_of_the_decision():
    relevance = np.array([[-2.0, 1.0]])
    evidence, sensitivity = registry.KINDS["evidence"], registry.KINDS["sensitivity"]
    np.testing.assert_array_equal(evidence.for_decision(relevance, True), [[0.0, 1.0]])
    np.testing.assert_array_equal(evidence.for_decision(relevance, False), [[2.0, 0.0]])
    np.testing.assert_array_equal(sensitivity.for_decision(relevance, False), [[2.0, 1.0]])


def test_localization_of_a_map_inside_and_outside_the_mask():
    mask = _disc()
    inside = mask * 1.0
    assert localization.relevance_mass_accuracy(inside, mask) == 1.0
    assert localization.relevance_rank_accuracy(inside + 0.5 * mask * np.random.default_rng(0).random(mask.shape), mask) == 1.0
    assert localization.pointing_game(inside, mask) == 1.0
    outside = (~mask) * 1.0
    assert localization.relevance_mass_accuracy(outside, mask) == 0.0
    assert localization.relevance_rank_accuracy(outside, mask) == 0.0
    assert localization.pointing_game(outside * np.arange(32 * 32).reshape(32, 32), mask) == 0.0
    # half the mass inside: 0.5
    half = np.zeros(mask.shape)
    half[16, 16], half[0, 0] = 3.0, 3.0
    assert localization.relevance_mass_accuracy(half, mask) == 0.5
    # a peak just beside the mask scores with a tolerance only
    beside = np.zeros(mask.shape)
    beside[16, 22] = 1.0
    assert localization.pointing_game(beside, mask) == 0.0 and localization.pointing_game(beside, mask, tolerance_px=1) == 1.0
    assert np.isnan(localization.pointing_game(np.zeros(mask.shape), mask))
    assert np.isnan(localization.relevance_mass_accuracy(inside, np.zeros_like(mask)))


def test_a_perfect_ranking_has_the_best_deletion_and_insertion():
    """A toy classifier whose confidence is the mean brightness of a disc: a map ranking the disc first
    deletes its evidence fastest (lowest deletion AUC) and restores it fastest (highest insertion AUC)."""
    mask = _disc()
    image = np.where(mask, 1.0, 0.0)[None].astype(np.float32)

    def confidence(images):
        return images[:, mask].mean(axis=1)

    dark = np.zeros_like(image)

    def curves(evidence):
        return faithfulness.deletion_insertion(image, evidence[None], confidence, steps=32, reference=dark)

    perfect, reversed_ = curves(mask * 1.0), curves(~mask * 1.0)
    random, no_evidence = curves(np.random.default_rng(1).random((32, 32))), curves(np.zeros((32, 32)))
    assert perfect.deletion_auc[0] < random.deletion_auc[0] < reversed_.deletion_auc[0]
    assert perfect.insertion_auc[0] > random.insertion_auc[0] > reversed_.insertion_auc[0]
    # a map without evidence removes pixels in random order, not row by row
    assert no_evidence.deletion_auc[0] == pytest.approx(random.deletion_auc[0], abs=0.05)
    # the disc is the first 8 % of pixels (81 of 1024): by then deletion has reached the dark reference
    removed = perfect.deletion[0, -1]
    assert removed == 0 and perfect.insertion[0, 0] == pytest.approx(removed)
    assert perfect.deletion[0, 0] == pytest.approx(1.0) and perfect.insertion[0, -1] == pytest.approx(1.0)
    assert perfect.deletion_auc[0] < removed + 0.1 and perfect.insertion_auc[0] > 0.9


def test_lung_reference_is_the_median_lung_value_of_each_image():
    image = np.full((2, 8, 8), 40.0, np.float32)
    image[0, :4] = -900.0
    image[0, 4, :2] = -700.0
    reference = faithfulness.lung_reference(image)
    assert reference.shape == image.shape
    np.testing.assert_array_equal(reference[0], -900.0)
    np.testing.assert_array_equal(reference[1], faithfulness.LUNG_HU)
    assert image[0, 0, 0] == -900.0  # the input is left as it was


def test_rank_correlation_of_equal_unrelated_and_sign_flipped_maps():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(16, 16))
    assert faithfulness.rank_correlation(a, a) == pytest.approx(1.0)
    assert faithfulness.rank_correlation(a, -a) == pytest.approx(1.0)  # |map|, as in the randomization test
    assert abs(faithfulness.rank_correlation(a, rng.normal(size=(16, 16)))) < 0.2
    assert np.isnan(faithfulness.rank_correlation(a, np.zeros((16, 16))))


def test_local_maxima_suppress_within_the_radius():
    evidence = np.zeros((20, 20))
    evidence[5, 5], evidence[5, 7], evidence[15, 15] = 3.0, 2.0, 1.0
    assert localization.local_maxima(evidence, 5, suppression_radius_px=3) == [(5, 5, 3.0), (15, 15, 1.0)]
    assert localization.local_maxima(evidence, 5, suppression_radius_px=1) == [(5, 5, 3.0), (5, 7, 2.0), (15, 15, 1.0)]
    # no cap: until no pixel above zero is left
    assert localization.local_maxima(evidence, None, suppression_radius_px=1) == [(5, 5, 3.0), (5, 7, 2.0), (15, 15, 1.0)]
    assert localization.local_maxima(evidence, 2, suppression_radius_px=1) == [(5, 5, 3.0), (5, 7, 2.0)]


def test_froc_of_a_known_candidate_list():
    lesions = [np.zeros((10, 10), int), np.zeros((10, 10), int)]
    lesions[0][1:3, 1:3] = 1
    lesions[0][6:8, 6:8] = 2
    lesions[1][4:6, 4:6] = 1
    candidates = [
        [(1, 1, 0.9), (2, 2, 0.8), (9, 9, 0.7), (6, 6, 0.3)],  # TP, same lesion again (ignored), FP, TP
        [(0, 0, 0.6), (4, 5, 0.5)],  # FP, TP
    ]
    curve = localization.froc(candidates, lesions)
    # by score: 0.9 TP, 0.8 repeat, 0.7 FP, 0.6 FP, 0.5 TP, 0.3 TP; 3 lesions in 2 images
    np.testing.assert_allclose(curve.sensitivity, [0, 1 / 3, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(curve.false_positives_per_image, [0, 0, 0, 0.5, 1.0, 1.0, 1.0])
    assert curve.sensitivity_at(0) == pytest.approx(1 / 3)
    assert curve.sensitivity_at(0.5) == pytest.approx(1 / 3)
    assert curve.sensitivity_at(10) == 1.0


def test_froc_of_images_weighted_equals_froc_of_images_repeated():
    # a bootstrap resample weighs each image by how often it was drawn
    lesions = [np.zeros((10, 10), int), np.zeros((10, 10), int)]
    lesions[0][1:3, 1:3] = 1
    lesions[0][6:8, 6:8] = 2
    lesions[1][4:6, 4:6] = 1
    candidates = [[(1, 1, 0.9), (2, 2, 0.8), (9, 9, 0.7), (6, 6, 0.3)], [(0, 0, 0.6), (4, 5, 0.5)]]
    events = localization.FrocEvents([localization.image_outcomes(c, l) for c, l in zip(candidates, lesions)])
    once = events.curve()
    np.testing.assert_array_equal(once.sensitivity, localization.froc(candidates, lesions).sensitivity)
    weighted = events.curve(np.array([0, 3]))
    repeated = localization.froc([candidates[1]] * 3, [lesions[1]] * 3)
    for rate in (0, 0.5, 1, 10):
        assert weighted.sensitivity_at(rate) == repeated.sensitivity_at(rate)


def test_froc_detection_area_overlapping_a_lesion_counts():
    lesions = [np.zeros((10, 10), int)]
    lesions[0][5, 5] = 1
    candidates = [[(5, 7, 0.9), (0, 0, 0.5)]]  # two pixels from the lesion, then far away
    assert localization.froc(candidates, lesions).sensitivity.max() == 0.0
    curve = localization.froc(candidates, lesions, detection_radius_px=2)
    np.testing.assert_allclose(curve.sensitivity, [0, 1, 1])
    np.testing.assert_allclose(curve.false_positives_per_image, [0, 0, 1])
