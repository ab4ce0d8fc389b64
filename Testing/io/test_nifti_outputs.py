"""``explain --format nifti,dicom`` on an oblique, anisotropic series with a gap: nibabel finds every voxel of the
NIfTI at the NRRD's world point (NIfTI's RAS against the NRRD's LPS), the DICOM objects are valid and read back
at the same positions, and a frame interpolated across the gap references the two slices it lies between."""
import json

import highdicom
import nibabel
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_reading import array_affine, dciodvfy_errors, frame_sources, image_on_grid, source_instances
from helpers import xaiexplain
from xaiexplain.data.geometry import ScanGeometry
from xaiexplain.io.dicom import write_dicom_series

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# slices 2 mm apart with -90 and -88 missing; pixels 0.8 mm: anisotropic, and a gap to interpolate across
SLICE_Z = (-100.0, -98.0, -96.0, -94.0, -92.0, -86.0, -84.0, -82.0)


def rotation(axis, degrees) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    return np.array(sitk.VersorTransform(tuple(axis), float(np.radians(degrees))).GetMatrix()).reshape(3, 3)


@pytest.fixture(scope="module")
def oblique_explained(tmp_path_factory):
    """A small series turned 25 degrees about an oblique axis (every slice's orientation and position), with a
    gap, explained by saliency about its bright square as NRRD, NIfTI and DICOM: (series folder, output)."""
    root = tmp_path_factory.mktemp("oblique")
    geometry = ScanGeometry(patient_id="OBLIQUE-1", study_instance_uid="1.2.826.0.1.3680043.8.498.301",
                            series_instance_uid="1.2.826.0.1.3680043.8.498.302", pixel_spacing=0.8,
                            slice_thickness=2.0, slice_z=SLICE_Z, rows=64, columns=64)
    hu = np.full(geometry.shape, -850, np.int16)
    hu[:, 26:38, 26:38] = 40
    folder = write_dicom_series(hu, geometry, root / "series")
    turn = rotation((1.0, 0.5, 0.2), 25.0)
    for path in sorted(folder.iterdir()):
        dataset = pydicom.dcmread(path)
        position = turn @ np.array(dataset.ImagePositionPatient, float)
        dataset.ImagePositionPatient = [f"{v:.6f}" for v in position]
        dataset.ImageOrientationPatient = [f"{v:.6f}" for v in np.concatenate([turn[:, 0], turn[:, 1]])]
        del dataset.SliceLocation
        dataset.save_as(path, enforce_file_format=True)
    centre = turn @ np.array([0.0, 0.0, -95.0])  # the square's centre, as in helpers.CENTRE before the turn
    out = root / "explained"
    result = xaiexplain("explain", "--series", folder, "--point=" + ",".join(f"{v:.3f}" for v in centre),
                        "--allow-gaps", "--method", "saliency", "--format", "nifti,dicom", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder, out


def test_nibabel_finds_each_voxel_at_the_nrrds_world_point(oblique_explained):
    _, out = oblique_explained
    files = json.loads((out / "nodules.json").read_text())["files"]["saliency"]
    for kind in ("relevance", "labels"):
        image = sitk.ReadImage(str(out / files[kind]))
        assert not np.allclose(np.array(image.GetDirection()).reshape(3, 3), np.eye(3), atol=0.1)  # oblique
        nifti = nibabel.load(out / files[f"{kind}_nifti"])
        assert int(nifti.header["sform_code"]) > 0 and int(nifti.header["qform_code"]) > 0
        # NIfTI's voxel (i, j, k) is the NRRD's array index (k, j, i); its affine maps to RAS millimetres
        by_array_index = array_affine(image)
        nrrd_affine = by_array_index[:, [2, 1, 0, 3]]  # voxel (i, j, k) -> LPS
        np.testing.assert_allclose(nifti.affine, LPS_TO_RAS @ nrrd_affine, atol=1e-4)
        values = np.asarray(nifti.dataobj)
        assert values.dtype == sitk.GetArrayViewFromImage(image).dtype
        np.testing.assert_array_equal(values, sitk.GetArrayFromImage(image).transpose(2, 1, 0))
        assert np.any(values)


def test_dicom_on_an_oblique_series_is_valid_and_reads_back_in_place(oblique_explained):
    _, out = oblique_explained
    files = json.loads((out / "nodules.json").read_text())["files"]["saliency"]
    for key in ("labels_dicom", "relevance_dicom"):
        assert dciodvfy_errors(out / files[key]) == [], key
    relevance = sitk.ReadImage(str(out / files["relevance"]))
    volume = highdicom.pm.ParametricMap.from_dataset(pydicom.dcmread(out / files["relevance_dicom"])).get_volume()
    np.testing.assert_array_equal(volume.array.astype(np.float32),
                                  image_on_grid(relevance, volume.array.shape, volume.affine))


def test_a_frame_across_the_gap_references_the_two_slices_it_was_interpolated_from(oblique_explained):
    series, out = oblique_explained
    instances = source_instances(series)
    positions = np.array(sorted(instances))
    files = json.loads((out / "nodules.json").read_text())["files"]["saliency"]
    interpolated = 0
    for position, uids in frame_sources(pydicom.dcmread(out / files["relevance_dicom"])):
        if round(position, 3) in instances:
            assert uids == [instances[round(position, 3)]]
        else:
            above = int(np.searchsorted(positions, position))
            assert uids == [instances[positions[above - 1]], instances[positions[above]]], position
            interpolated += 1
    assert interpolated == 2  # -90 and -88 mm before the turn
