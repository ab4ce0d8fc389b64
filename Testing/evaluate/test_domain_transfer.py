"""Domain transfer over nodules: the slices of one nodule are not independent, so the t-tests run over
nodules with df = nodules - 1, and flip rates count only the patches of the opposite decision."""
import numpy as np
import pytest
from scipy import stats
from xaiexplain.evaluate.domain_transfer import domain_transfer, domain_transfer_table

THRESHOLD = 0.8


@pytest.fixture
def tiny():
    """Three nodules with 5, 1 and 2 patches (nodule ids not in patch order)."""
    nodules = np.array([7, 7, 7, 7, 7, 2, 4, 4])
    p_x = np.array([0.9, 0.9, 0.85, 0.95, 0.1, 0.2, 0.3, 0.9])
    p_plus = np.array([0.99, 0.99, 0.99, 0.99, 0.95, 0.5, 0.85, 0.99])
    p_minus = np.array([0.1, 0.9, 0.1, 0.1, 0.05, 0.05, 0.1, 0.2])
    ssim_plus, ssim_minus = np.linspace(0.9, 0.97, 8), np.linspace(0.8, 0.87, 8)
    return nodules, p_x, p_plus, p_minus, ssim_plus, ssim_minus


def test_statistics_are_over_nodules(tiny):
    nodules, p_x, p_plus, p_minus, ssim_plus, ssim_minus = tiny
    result = domain_transfer(p_x, p_plus, p_minus, ssim_plus, ssim_minus, THRESHOLD, nodules)
    assert result["patches"] == 8 and result["nodules"] == 3
    # each nodule's mean over its patches (nodules 2, 4, 7 in sorted order), then the mean over nodules
    nodule_x = [0.2, np.mean([0.3, 0.9]), np.mean([0.9, 0.9, 0.85, 0.95, 0.1])]
    nodule_plus = [0.5, np.mean([0.85, 0.99]), np.mean([0.99, 0.99, 0.99, 0.99, 0.95])]
    per_nodule = result["per_nodule"]
    assert per_nodule["probability"]["x"]["mean"] == pytest.approx(np.mean(nodule_x))
    assert per_nodule["probability"]["x"]["n"] == 3
    test = per_nodule["paired_t_tests"]["G+(x) vs x"]
    assert test["df"] == 2
    assert test["t"] == pytest.approx(stats.ttest_rel(nodule_plus, nodule_x).statistic)
    # patch-level figures stay beside them, over 8 patches
    assert result["patch_level"]["paired_t_tests"]["G+(x) vs x"]["df"] == 7
    assert "as if they were independent" in result["patch_level"]["note"]


def test_flip_rates_count_only_the_opposite_decision(tiny):
    nodules, p_x, p_plus, p_minus, ssim_plus, ssim_minus = tiny
    result = domain_transfer(p_x, p_plus, p_minus, ssim_plus, ssim_minus, THRESHOLD, nodules)
    at_threshold = result["per_patch_flip_rates"]["at the bundle's threshold"]
    # called benign: patches 4 (p 0.1), 5 (0.2), 6 (0.3); G+ reaches 0.8 on 4 and 6
    to_malignant = at_threshold["G+ to malignant, among those called benign"]
    assert to_malignant["eligible"] == 3 and to_malignant["eligible_groups"] == 3
    assert to_malignant["rate"] == pytest.approx(2 / 3)
    assert to_malignant["mean_probability"] == pytest.approx(np.mean([0.95, 0.5, 0.85]))  # p(G+(x)) of those
    # called malignant: 0, 1, 2, 3, 7; G- goes below 0.8 on all but patch 1
    to_benign = at_threshold["G- to benign, among those called malignant"]
    assert to_benign["eligible"] == 5 and to_benign["rate"] == pytest.approx(4 / 5)
    assert 0 <= to_benign["ci95"][0] <= to_benign["rate"] <= to_benign["ci95"][1] <= 1
    at_half = result["per_patch_flip_rates"]["at 0.5"]
    assert at_half["threshold"] == 0.5
    assert at_half["G+ to malignant, among those called benign"]["eligible"] == 3  # p 0.1, 0.2, 0.3
    assert at_half["G+ to malignant, among those called benign"]["rate"] == pytest.approx(3 / 3)
    # per nodule, by each nodule's mean: 0.2, 0.6 and 0.74 are all called benign at 0.8; G+ brings nodules 4
    # (0.92) and 7 (0.982) to malignant, not nodule 2 (0.5)
    by_nodule = result["per_nodule"]["flip_rates"]["at the bundle's threshold"]
    assert by_nodule["G+ to malignant, among those called benign"]["eligible"] == 3
    assert by_nodule["G+ to malignant, among those called benign"]["rate"] == pytest.approx(2 / 3)
    assert by_nodule["G- to benign, among those called malignant"]["rate"] is None
    table = domain_transfer_table(result)
    assert "t(2) = " in table and "among patches called benign" in table and "among nodules called malignant" in table


def test_probabilities_through_the_blur_are_reported_over_nodules(tiny):
    nodules, p_x, p_plus, p_minus, ssim_plus, ssim_minus = tiny
    blurred = {"x": p_x, "G-(x)": np.full(8, 0.6), "G+(x)": p_plus}
    result = domain_transfer(p_x, p_plus, p_minus, ssim_plus, ssim_minus, THRESHOLD, nodules, through_blur=blurred)
    through = result["per_nodule"]["probability_through_blur"]
    assert through["x"]["mean"] == pytest.approx(result["per_nodule"]["probability"]["x"]["mean"])
    assert through["G-(x)"]["mean"] == pytest.approx(0.6) and through["G-(x)"]["n"] == 3
    assert "G-(x)) through a 1 px blur | 0.600" in domain_transfer_table(result)
    assert "probability_through_blur" not in domain_transfer(p_x, p_plus, p_minus, ssim_plus, ssim_minus,
                                                             THRESHOLD, nodules)["per_nodule"]
