"""The phantom renderer: deterministic, region = crop of the scan, appearance follows the ratings."""
import numpy as np
import pytest
from scipy import ndimage
from xaiexplain.data.geometry import ScanGeometry
from xaiexplain.data.lidc import LidcNodule, NoduleMask
from xaiexplain.data.sources import phantom

GEOMETRY = ScanGeometry(patient_id="PHANTOM-1", study_instance_uid="1.2.3", series_instance_uid="1.2.3.4",
                        pixel_spacing=0.7, slice_thickness=1.5, slice_z=tuple(100.0 + 1.25 * k for k in range(40)),
                        rows=160, columns=160)


def ball_nodule(index, center_kij, radius_mm, **ratings):
    spacing = np.array([1.25, 0.7, 0.7])
    half = np.ceil(radius_mm / spacing).astype(int)
    grid = np.indices(2 * half + 1).transpose(1, 2, 3, 0) - half
    mask = np.linalg.norm(grid * spacing, axis=-1) <= radius_mm
    offset = tuple(int(c - h) for c, h in zip(center_kij, half))
    voxels = np.argwhere(mask) + offset
    k, i, j = voxels.mean(axis=0)
    full = {"subtlety": 5, "internalStructure": 1, "calcification": 6, "sphericity": 4, "margin": 4,
            "lobulation": 1, "spiculation": 1, "texture": 5, "malignancy": 3, **ratings}
    return LidcNodule(patient_id="PHANTOM-1", series_instance_uid="1.2.3.4", nodule_index=index,
                      annotation_ids=(index,), n_readers=4, ratings={n: float(v) for n, v in full.items()},
                      label=None, exclusion=None,
                      bbox_ijk=tuple((int(lo), int(hi) + 1) for lo, hi in zip(voxels.min(0)[[1, 2, 0]], voxels.max(0)[[1, 2, 0]])),
                      centroid_ijk=(float(i), float(j), float(k)),
                      centroid_lps=tuple(GEOMETRY.index_to_lps((i, j, k))), diameter_mm=2 * radius_mm,
                      volume_mm3=float(mask.sum() * 0.7 * 0.7 * 1.25),
                      consensus=NoduleMask(mask=mask, offset=offset))


NODULES = [
    ball_nodule(0, (12, 70, 40), 5.0, spiculation=4, calcification=5, texture=5),
    ball_nodule(1, (26, 80, 120), 4.0, spiculation=1, calcification=6, texture=1, margin=1),
]


@pytest.fixture(scope="module")
def scan():
    return phantom.render_scan(GEOMETRY, NODULES, seed=5)


def test_types_and_hu_ranges(scan):
    assert scan.hu.shape == GEOMETRY.shape and scan.hu.dtype == np.int16
    assert scan.nodule_labels.dtype == np.uint16 and scan.spicules.dtype == bool and scan.calcification.dtype == bool
    assert scan.hu.min() >= -1024 and scan.hu.max() <= 3071
    corner = scan.hu[:, :5, :5]
    assert abs(np.median(corner) - (-1000)) < 30  # air outside the body
    middle = scan.hu[:, 80, 80]  # mediastinum / heart: soft tissue
    assert -150 < np.median(middle) < 120


def test_region_equals_the_crop_of_the_scan(scan):
    for box in [((5, 20), (50, 100), (20, 70)), ((0, 40), (0, 160), (100, 160)), ((20, 31), (60, 100), (95, 140))]:
        region = phantom.render_region(GEOMETRY, NODULES, 5, *box)
        crop = tuple(slice(*b) for b in box)
        for name in ("hu", "nodule_labels", "spicules", "calcification"):
            np.testing.assert_array_equal(getattr(region, name), getattr(scan, name)[crop])
        assert region.offset == tuple(b[0] for b in box)


def test_region_without_a_nodule_changes_only_that_nodule(scan):
    box = ((5, 20), (40, 110), (10, 160))
    full, without = phantom.render_region_without(GEOMETRY, NODULES, 5, *box, hidden=[0])
    crop = tuple(slice(*b) for b in box)
    np.testing.assert_array_equal(full.hu, scan.hu[crop])  # the first is render_region's
    assert 1 not in without.nodule_labels and not without.spicules.any() and not without.calcification.any()
    np.testing.assert_array_equal(without.nodule_labels == 2, full.nodule_labels == 2)  # the other stays drawn
    change = np.abs(without.hu.astype(int) - full.hu)
    # where nodule 0 was, lung now; beyond 4 px of it and its spicules no more than its soft edge's last HU
    assert np.median(without.hu[full.nodule_labels == 1]) < -700 < np.median(full.hu[full.nodule_labels == 1])
    reach = ndimage.binary_dilation((full.nodule_labels == 1) | full.spicules, iterations=4)
    assert change[reach].max() > 500 and change[~reach].max() <= 2
    same, unchanged = phantom.render_region_without(GEOMETRY, NODULES, 5, *box, hidden=[])
    assert unchanged is same


def test_same_seed_same_phantom_other_seed_other_noise(scan):
    again = phantom.render_scan(GEOMETRY, NODULES, seed=5)
    np.testing.assert_array_equal(again.hu, scan.hu)
    other = phantom.render_scan(GEOMETRY, NODULES, seed=6)
    assert not np.array_equal(other.hu, scan.hu)


def test_ratings_drive_the_appearance(scan):
    solid = scan.nodule_labels == 1
    ground_glass = scan.nodule_labels == 2
    assert solid.sum() > 0.7 * NODULES[0].consensus.mask.sum()
    assert np.mean(scan.hu[solid & ~scan.calcification]) > -150
    assert -800 < np.mean(scan.hu[ground_glass]) < -450
    # spiculation 4: strands outside the nodule; spiculation 1: none
    near = [np.zeros(GEOMETRY.shape, bool) for _ in NODULES]
    for n, nodule in enumerate(NODULES):
        (i0, i1), (j0, j1), (k0, k1) = nodule.bbox_ijk
        near[n][max(0, k0 - 6):k1 + 6, max(0, i0 - 25):i1 + 25, max(0, j0 - 25):j1 + 25] = True
    assert (scan.spicules & near[0]).sum() > 20
    assert (scan.spicules & near[1]).sum() == 0
    assert np.mean(scan.hu[scan.spicules]) > -500
    # central calcification: a dense core inside the first nodule only
    assert scan.calcification.any() and np.all(scan.nodule_labels[scan.calcification] == 1)
    assert np.mean(scan.hu[scan.calcification]) > 500


def test_surroundings_of_nodules_are_lung(scan):
    from scipy import ndimage

    for label in (1, 2):
        mask = scan.nodule_labels == label
        ring = ndimage.binary_dilation(mask, iterations=6) & ~ndimage.binary_dilation(mask, iterations=3)
        assert np.median(scan.hu[ring & ~scan.spicules]) < -600


def test_missing_consensus_masks_are_refused():
    bare = ball_nodule(0, (12, 70, 40), 5.0)
    bare.consensus = None
    with pytest.raises(ValueError, match="consensus"):
        phantom.render_scan(GEOMETRY, [bare])


def ring_median_hu(geometry, nodules, nodule, seed=0):
    """Median HU of a nodule's surroundings: in-plane 3-15 mm from its drawn edge, on every slice through it."""
    from scipy import ndimage
    from xaiexplain.data.sources.phantom_patches import nodule_region

    region = phantom.render_region(geometry, nodules, seed, *nodule_region(geometry, nodule))
    values = []
    for hu, labels in zip(region.hu, region.nodule_labels):
        mask = labels == nodule.nodule_index + 1
        if mask.any():
            distance = ndimage.distance_transform_edt(~mask, sampling=geometry.pixel_spacing)
            values.append(hu[(distance > 3) & (distance <= 15)])
    return float(np.median(np.concatenate(values)))


def test_the_lungs_contain_every_annotated_nodule_of_lidc_idri_0267():
    """LIDC-IDRI-0267's apical nodule (nodule 1) lay in the mediastinum's soft tissue (ring median 28 HU):
    a lung pocket now joins it to the lung; nodule 0, which the lung outline surrounds, is drawn as before."""
    from xaiexplain.data import lidc
    from xaiexplain.data.sources.phantom_lungs import lung_pocket

    scan = lidc.find_scan_by_key("LIDC-IDRI-0267")
    geometry = lidc.scan_geometry(scan)
    nodules = lidc.scan_nodules(scan, with_masks=True, geometry=geometry)
    assert len(nodules) == 2 and nodules[1].bbox_ijk[2][0] > 0.85 * geometry.shape[0]  # apical
    for nodule in nodules:
        assert ring_median_hu(geometry, nodules, nodule) < -700  # lung parenchyma (-860 HU and vessels)
    assert lung_pocket(geometry, nodules[0], 0) is None and lung_pocket(geometry, nodules[1], 0) is not None
