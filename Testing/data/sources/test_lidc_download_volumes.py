"""Issue 27: `xaiexplain dataset --spatial-dims 3`, one volume per labelled nodule of a LIDC-IDRI download, cut
from its DICOM slices in world coordinates, with the readers' consensus as the 3D nodule mask."""
import shutil

import numpy as np
import pytest

from conftest import TREE_PHANTOM_PATIENTS, tree_patients
from helpers import assert_one_line_error, xaiexplain as run_cli
from xaiexplain.data.patch_set import load_lung_patches, load_patch_set

SIZE, FIELD_OF_VIEW = [16, 32, 32], [40.0, 45.0, 45.0]
SPEC = ["--spatial-dims", "3", "--patch-size", ",".join(map(str, SIZE)), "--field-of-view-mm",
        ",".join(f"{v:g}" for v in FIELD_OF_VIEW)]


@pytest.fixture(scope="module")
def volume_dataset(lidc_download_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("dataset3d") / "set"
    result = run_cli("dataset", "--lidc-root", lidc_download_tree, *SPEC, "--lung-patches", "2", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_one_volume_per_nodule_about_its_consensus_with_its_3d_consensus_mask(volume_dataset):
    arrays, nodules, summary = load_patch_set(volume_dataset)
    assert summary["spatial_dims"] == 3 and summary["patch_size"] == SIZE and summary["field_of_view_mm"] == FIELD_OF_VIEW
    assert {row["patient_id"] for row in nodules} == tree_patients()
    assert arrays["images"].shape == (len(nodules), *SIZE) == arrays["nodule_mask"].shape
    assert all(row["patch_count"] == 1 for row in nodules)
    centre = (np.asarray(SIZE) - 1) / 2
    for mask in arrays["nodule_mask"]:  # about the consensus centroid: the mask's centre at the volume's
        assert mask.any() and np.all(np.abs(np.argwhere(mask).mean(0) - centre) < 1.5)
    lung = load_lung_patches(volume_dataset)
    assert lung["images"].shape[1:] == tuple(SIZE) and len(lung["images"])
    assert np.all(np.median(lung["images"].reshape(len(lung["images"]), -1), axis=1) < -700)


def test_the_volumes_cut_from_the_download_are_the_phantoms_own_voxel_for_voxel(volume_dataset, tmp_path):
    """The download holds the phantom's series of two patients: the volumes read back from its DICOM slices
    (by z position, resampled in world coordinates) equal the volumes the phantom renders directly."""
    from xaiexplain.data.sources.phantom_patches import render_patch_set

    render_patch_set(tmp_path / "phantom", patient_ids=list(TREE_PHANTOM_PATIENTS), progress=False, size=SIZE,
                     field_of_view_mm=FIELD_OF_VIEW, spatial_dims=3, lung_patches_per_scan=0, seed=0)
    rendered, rendered_rows, _ = load_patch_set(tmp_path / "phantom")
    read, read_rows, _ = load_patch_set(volume_dataset)
    for n, row in enumerate(rendered_rows):
        [m] = [m for m, other in enumerate(read_rows)
               if (other["patient_id"], other["annotation_ids"]) == (row["patient_id"], row["annotation_ids"])]
        np.testing.assert_allclose(read["center_lps"][m], rendered["center_lps"][n], atol=1e-3)
        np.testing.assert_array_equal(read["images"][m], rendered["images"][n])


def test_a_rerun_keeps_each_scan_only_for_the_same_volumes(volume_dataset, lidc_download_tree, tmp_path):
    import json

    for name, spec, kept in (("same", SPEC, len(tree_patients())),
                             ("other", ["--spatial-dims", "3", "--patch-size", "8,16,16"], 0)):
        shutil.copytree(volume_dataset, tmp_path / name)
        result = run_cli("dataset", "--lidc-root", lidc_download_tree, *spec, "--lung-patches", "2", "--out",
                         tmp_path / name)
        assert result.returncode == 0, result.stderr[-3000:]
        summary = json.loads((tmp_path / name / "dataset.json").read_text())
        assert summary["scans"]["kept_from_earlier"] == kept, name
    arrays, _, _ = load_patch_set(tmp_path / "other")
    assert arrays["images"].shape[1:] == (8, 16, 16)


def test_volume_options_without_spatial_dims_3_are_refused(lidc_download_tree, tmp_path):
    refused = run_cli("dataset", "--lidc-root", lidc_download_tree, "--patch-size", "16,32,32", "--out", tmp_path / "x")
    assert_one_line_error(refused, "a size and field of view are a volume's (spatial dims 3)")
    assert not (tmp_path / "x").exists()
