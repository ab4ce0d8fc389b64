"""Phantom series of real LIDC scans, read back by SimpleITK and by pylidc, and their ground truth."""
import json

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy import ndimage
from xaiexplain.data import lidc, series
from xaiexplain.data.sources.phantom_series import truth_folder, write_phantom_series

# LIDC-IDRI-0078: 87 slices of 3 mm, four nodules. LIDC-IDRI-0480: 2.5 mm thick slices every 2 mm.
# LIDC-IDRI-0267: irregular z steps (0.5 mm and 2.5 mm).
SCANS = ["LIDC-IDRI-0078", "LIDC-IDRI-0480", "LIDC-IDRI-0267"]


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    written = {key: write_phantom_series(lidc.find_scan_by_key(key), root, seed=3) for key in SCANS}
    return root, written


@pytest.mark.parametrize("key", SCANS)
def test_simpleitk_reads_back_the_scans_geometry(phantom_root, key):
    root, written = phantom_root
    scan = lidc.find_scan_by_key(key)
    ct = series.read_series(written[key].series_folder)
    assert ct.patient_id == scan.patient_id
    assert ct.series_instance_uid == scan.series_instance_uid
    assert ct.study_instance_uid == scan.study_instance_uid
    np.testing.assert_allclose(ct.slice_z, scan.slice_zvals, atol=0.01)
    assert ct.image.GetSize()[:2] == (512, 512)
    np.testing.assert_allclose(ct.image.GetSpacing()[:2], scan.pixel_spacing, atol=1e-6)
    assert ct.resampled_z == (key == "LIDC-IDRI-0267")
    header = pydicom.dcmread(ct.files[0], stop_before_pixels=True)
    assert float(header.SliceThickness) == pytest.approx(scan.slice_thickness)
    assert header.Modality == "CT" and header.PatientID == scan.patient_id


@pytest.mark.parametrize("key", SCANS[:2])
def test_pylidc_reads_back_the_series(phantom_root, key):
    root, written = phantom_root
    scan = lidc.find_scan_by_key(key)
    with lidc.dicom_root(root):
        images = scan.load_all_dicom_images(verbose=False)
    np.testing.assert_allclose([float(i.ImagePositionPatient[2]) for i in images], scan.slice_zvals, atol=0.01)
    assert float(images[0].SliceThickness) == pytest.approx(scan.slice_thickness)
    assert float(images[0].PixelSpacing[0]) == pytest.approx(scan.pixel_spacing)


@pytest.mark.parametrize("key", SCANS[:2])
def test_consensus_masks_hold_nodule_hu_inside_lung(phantom_root, key):
    """Each nodule's consensus mask, mapped through LPS into the image read back, has nodule HU
    (solid texture: mean above -400) and lung-like surroundings."""
    root, written = phantom_root
    ct = series.read_series(written[key].series_folder)
    hu = sitk.GetArrayFromImage(ct.image)
    origin_xy = ct.image.TransformIndexToPhysicalPoint((0, 0, 0))[:2]
    nodules = lidc.scan_nodules(key, with_masks=True, geometry=lidc.scan_geometry(key, origin_xy=origin_xy))
    assert nodules
    for nodule in nodules:
        mask = np.zeros(hu.shape, bool)
        kij = np.argwhere(nodule.consensus.mask) + nodule.consensus.offset
        lps = lidc.scan_geometry(key, origin_xy=origin_xy).index_to_lps(kij[:, [1, 2, 0]])
        index = np.array([ct.image.TransformPhysicalPointToIndex(p.tolist()) for p in lps])  # (x, y, z)
        mask[index[:, 2], index[:, 1], index[:, 0]] = True
        inside = hu[mask]
        if nodule.ratings["texture"] >= 4:
            assert inside.mean() > -400, (nodule.nodule_index, inside.mean())
        else:
            assert inside.mean() > -800
        in_plane = np.zeros((1, 3, 3), bool)
        in_plane[0] = ndimage.generate_binary_structure(2, 1)
        ring = ndimage.binary_dilation(mask, in_plane, iterations=5) & ~ndimage.binary_dilation(mask, in_plane, 2)
        assert np.median(hu[ring]) < -500, (nodule.nodule_index, np.median(hu[ring]))


def test_ground_truth_files_match_the_series(phantom_root):
    root, written = phantom_root
    key = "LIDC-IDRI-0078"
    ct = series.read_series(written[key].series_folder)
    folder = truth_folder(root, ct.patient_id, ct.series_instance_uid)
    labels = sitk.ReadImage(str(folder / "nodules.nrrd"))
    assert labels.GetSize() == ct.image.GetSize()
    np.testing.assert_allclose(labels.GetOrigin(), ct.image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(labels.GetSpacing(), ct.image.GetSpacing(), atol=1e-6)
    truth = json.loads((folder / "truth.json").read_text())
    array = sitk.GetArrayFromImage(labels)
    for nodule in truth["nodules"]:
        assert (array == nodule["label_value"]).sum() == nodule["voxels"] > 0
        index = labels.TransformPhysicalPointToIndex(nodule["centroid_lps"])
        hu_at_centroid = sitk.GetArrayFromImage(ct.image)[index[::-1]]
        assert hu_at_centroid > -900


def test_same_seed_same_series(phantom_root, tmp_path):
    root, written = phantom_root
    again = write_phantom_series(lidc.find_scan_by_key("LIDC-IDRI-0078"), tmp_path, seed=3)
    first = sitk.GetArrayFromImage(series.read_series(written["LIDC-IDRI-0078"].series_folder).image)
    second = sitk.GetArrayFromImage(series.read_series(again.series_folder).image)
    np.testing.assert_array_equal(first, second)
