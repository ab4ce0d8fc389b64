"""The FROC study's parts that need no rendering or training: candidates, the premise check, the bootstrap,
the summary over seeds and the README's table."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
from xaiexplain.data.patch_set import write_patch_set
from xaiexplain.evaluate.localization import FrocEvents, ImageOutcomes
from xaiexplain_train import froc_bootstrap
from xaiexplain_train.cli import main as train_main
from xaiexplain_train.froc_study import froc_of_maps, premise_check
from xaiexplain_train.froc_summary import README_END, README_START, readme_text

README = Path(__file__).resolve().parents[2] / "README.md"


def test_candidates_are_every_local_maximum_above_zero_by_default():
    # 64 separate peaks, the weakest on the one lesion: past any cap of 40 candidates
    evidence = np.zeros((1, 128, 128))
    lesions = np.zeros((1, 128, 128), int)
    peaks = [(8 + 16 * (n // 8), 8 + 16 * (n % 8)) for n in range(64)]
    for rank, (r, c) in enumerate(peaks):
        evidence[0, r, c] = 64 - rank
    lesions[0, peaks[-1][0], peaks[-1][1]] = 1
    assert froc_of_maps(evidence, lesions).sensitivity.max() == 1.0
    assert froc_of_maps(evidence, lesions, cap=40).sensitivity.max() == 0.0


class _Bundle:
    """Calls an image positive when any pixel is above 0 HU."""

    threshold = 0.5

    @staticmethod
    def predict(images):
        return (np.asarray(images).max(axis=(1, 2)) > 0).astype(float)


def test_premise_check_counts_images_called_negative_once_their_lesions_are_removed():
    removed = np.full((4, 8, 8), -800.0)
    removed[3, 2, 2] = 40.0  # evidence left: still positive
    premise = premise_check(_Bundle(), removed, "rendered again without them")
    assert (premise["images"], premise["called_negative"], premise["share"]) == (4, 3, 0.75)
    assert premise["target"] == 0.9 and not premise["holds"] and premise["removal"] == "rendered again without them"
    assert premise_check(_Bundle(), removed[:3], "")["holds"]
    assert premise_check(_Bundle(), removed[:0], "")["share"] is None


def _events(hits_per_image):
    """One candidate per image, a hit on the image's one lesion or a false positive."""
    return FrocEvents([ImageOutcomes(scores=np.array([1.0 - n / 100]), false_positive=np.array([not hit]),
                                     new_lesions=np.array([int(hit)]), lesions=1)
                       for n, hit in enumerate(hits_per_image)])


def test_bootstrap_resamples_the_images_for_the_relative_change():
    weights = froc_bootstrap.resample_weights(10, 300, seed=1)
    assert weights.shape == (300, 10) and (weights.sum(axis=1) == 10).all()
    np.testing.assert_array_equal(weights, froc_bootstrap.resample_weights(10, 300, seed=1))
    initial, augmented = _events([1, 1, 1, 1, 0, 0, 0, 0, 0, 0]), _events([1, 1, 1, 1, 1, 1, 0, 0, 0, 0])
    # every image once is the study's own estimate: 0.4 -> 0.6, +50 %
    point = froc_bootstrap.change_replicates(initial, augmented, np.ones((1, 10), int), 10.0)
    assert point == pytest.approx([0.5])
    replicates = froc_bootstrap.change_replicates(initial, augmented, weights, 10.0)
    summary = froc_bootstrap.summary(replicates)
    low, high = summary["interval_95"]
    assert low < 0.5 < high and summary["defined"] == np.isfinite(replicates).sum() and len(summary["replicates"]) == 300
    same = froc_bootstrap.change_replicates(initial, initial, weights, 10.0)
    assert froc_bootstrap.interval(same) == [0.0, 0.0]
    np.testing.assert_allclose(froc_bootstrap.mean_replicates([[0.1, 0.2, None], [0.3, 0.4]]), [0.2, 0.3])


def _study(folder, seed, initial, augmented, replicates):
    folder.mkdir()
    method = {"initial": {"sensitivity_at_10_fp": initial}, "augmented": {"sensitivity_at_10_fp": augmented},
              "relative_change": (augmented - initial) / initial, "iterations_mean": 3.0,
              "relative_change_bootstrap": froc_bootstrap.summary(np.array(replicates))}
    (folder / "froc.json").write_text(json.dumps({
        "seed": seed, "date": f"2026-01-0{seed + 1}", "detection_radius_px": 2.432, "called_positive": 10,
        "command": f"xaiexplain-train froc-study --seed {seed} --images 600 --out s{seed}", "images": 600,
        "seconds": 900.0 + seed, "classifier_metrics": {"validation_auc": 0.9 + seed / 100},
        "test_images": 20, "candidate_rule": "every local maximum above zero", "paired_negatives": 420,
        "normalisation": {"between_passes": "none"},
        "premise": {"removal": "rendered again", "images": 8, "called_negative": 8, "share": 1.0, "target": 0.9,
                    "holds": True},
        "bootstrap": {"samples": 4, "interval": froc_bootstrap.INTERVAL},
        "methods": {"saliency": method}, "relative_change_mean_bootstrap": method["relative_change_bootstrap"]}))


def _three_studies(folder):
    for seed, augmented in ((0, 0.55), (1, 0.60), (2, 0.50)):
        _study(folder / f"seed-{seed}", seed, 0.5, augmented, [0.0, 0.1, 0.2, 0.1 * seed])
    return [str(folder / f"seed-{s}") for s in range(3)]


def test_froc_summary_combines_seeds_with_intervals(tmp_path):
    studies = _three_studies(tmp_path)
    assert train_main(["froc-summary", *studies, "--out", str(tmp_path / "summary")]) == 0
    summary = json.loads((tmp_path / "summary" / "froc-summary.json").read_text())
    entry = summary["methods"]["saliency"]
    assert summary["seeds"] == [0, 1, 2] and summary["dates"] == ["2026-01-01", "2026-01-02", "2026-01-03"]
    assert abs(entry["relative_change_mean"] - 0.1) < 1e-9 and abs(entry["relative_change_sd"] - 0.1) < 1e-9
    # replicate b of the mean over seeds is the mean of the seeds' replicates b: 0, 0.1, 0.2, 0.1
    np.testing.assert_allclose(entry["relative_change_mean_interval_95"], np.percentile([0, 0.1, 0.2, 0.1], [2.5, 97.5]))
    assert summary["configurations"]["count"] == 3
    text = (tmp_path / "summary" / "froc-summary.md").read_text()
    assert "+10.0 % +/- 10.0 % [+0.8 %, +19." in text and "+20.0 % [" in text
    assert "Over all 3 (seed, method) configurations" in text and "15 configurations" in text
    assert "every local maximum above zero" in text and "8 of 8 (100.0 %) / 8 of 8 (100.0 %) / 8 of 8" in text
    assert "met in 3 of 3 seeds; removal: rendered again." in text
    # how each seed's study was run, from its froc.json
    assert "Images rendered per seed: 600 / 600 / 600; the classifiers' best validation AUC: 0.900 / 0.910 / 0.920" in text
    assert "seconds each study ran (rendering and training where it did them, and the methods): 900 / 901 / 902" in text
    assert "`xaiexplain-train froc-study --seed 2 --images 600 --out s2`." in text
    assert train_main(["froc-summary", str(tmp_path / "nothing"), "--out", str(tmp_path / "s2")]) == 2



def test_froc_summary_reads_the_images_of_a_study_that_did_not_record_them_from_its_data_set(tmp_path):
    studies = _three_studies(tmp_path)
    for folder in studies:
        manifest = json.loads((Path(folder) / "froc.json").read_text())
        del manifest["images"]
        (Path(folder) / "froc.json").write_text(json.dumps(manifest))
        (Path(folder) / "data").mkdir()
        (Path(folder) / "data" / "dataset.json").write_text(json.dumps({"images": 810, "paired_negatives": 210}))
    assert train_main(["froc-summary", *studies, "--out", str(tmp_path / "summary")]) == 0
    assert "Images rendered per seed: 600 / 600 / 600;" in (tmp_path / "summary" / "froc-summary.md").read_text()

def test_froc_summary_puts_its_table_into_the_readme_between_the_markers(tmp_path, capsys):
    studies = _three_studies(tmp_path)
    readme = tmp_path / "README.md"
    before, after = "# Title\n\nText before.\n\n", "\n\nText after.\n"
    readme.write_text(f"{before}{README_START}\nold table\n{README_END}{after}")
    for _ in range(2):  # a second run replaces the first's block
        assert train_main(["froc-summary", *studies, "--out", str(tmp_path / "summary"), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith(before + README_START + "\n") and text.endswith(README_END + after)
    block = text[text.index(README_START):text.index(README_END)]
    assert "old table" not in block and text.count("| saliency |") == 1
    summary = json.loads((tmp_path / "summary" / "froc-summary.json").read_text())
    assert f"froc-summary` on {summary['date']} from the studies run on 2026-01-01 to 2026-01-03" in block
    assert (tmp_path / "summary" / "froc-summary.md").read_text().strip() in block
    # a README without its markers is refused before anything is written
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    capsys.readouterr()
    assert train_main(["froc-summary", *studies, "--out", str(tmp_path / "s3"), "--readme", str(plain)]) == 2
    assert "froc-summary:start" in capsys.readouterr().err
    assert plain.read_text() == "no markers\n" and not (tmp_path / "s3").exists()


def test_the_readme_holds_the_markers_and_documents_five_seeds():
    text = README.read_text()
    readme_text(README, "table")  # the markers are there, once each, in order
    section = text[text.index("## Multi-lesion FROC study"):text.index(README_START)]
    seeds = re.search(r"for seed in ([0-9 ]+); do xaiexplain-train froc-study", section)
    assert seeds and len(seeds.group(1).split()) >= 5
    summary_command = next(line for line in section.splitlines() if line.startswith("xaiexplain-train froc-summary"))
    assert summary_command.count("out/froc/seed-") >= 5 and "--readme README.md" in summary_command
    # issue 25, item 7: the table is the command's, from at least five seeds (before: a stale table of three)
    block = text[text.index(README_START):text.index(README_END)]
    assert "stale" not in block.lower() and block.count("`xaiexplain-train froc-study --seed") >= 5
    assert re.search(r"\*Written by `xaiexplain-train froc-summary` on \d{4}-\d{2}-\d{2} from the studies run on", block)
    assert re.search(r"\n5 seeds \(0, 1, 2, 3, 4\)", block) and "met in 5 of 5 seeds" in block


def test_froc_study_refuses_a_data_set_rendered_otherwise(tmp_path, capsys):
    arrays = {"images": np.zeros((2, 8, 8), np.int16), "label": np.array([0, 1], np.int8),
              "split": np.array([0, 2], np.int8), "nodule": np.arange(2, dtype=np.int32)}
    write_patch_set(tmp_path / "old" / "data", arrays, [{}, {}], {"kind": "multi-lesion", "patch_size": 8})
    assert train_main(["froc-study", "--out", str(tmp_path / "old")]) == 2
    assert "earlier version" in capsys.readouterr().err
    write_patch_set(tmp_path / "unpaired" / "data", arrays, [{}, {}],
                    {"kind": "multi-lesion", "patch_size": 8, "lesions_removed": "rendered again", "paired_negatives": 0})
    assert train_main(["froc-study", "--out", str(tmp_path / "unpaired")]) == 2
    assert "without paired negatives" in capsys.readouterr().err
    assert not (tmp_path / "unpaired" / "classifier").exists()
