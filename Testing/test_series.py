"""Reading real CT series robustly, and writing the phantom's."""
import hashlib
import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from xaiexplain.geometry import ScanGeometry
from xaiexplain.series import SeriesError, read_series, write_dicom_series

STUDY = "1.2.826.0.1.3680043.8.498.100"


def geometry(series_uid="1.2.826.0.1.3680043.8.498.101", slice_z=None, thickness=2.5):
    slice_z = slice_z if slice_z is not None else tuple(-50.0 + 2.0 * k for k in range(8))
    return ScanGeometry(patient_id="PHANTOM-7", study_instance_uid=STUDY, series_instance_uid=series_uid,
                        pixel_spacing=0.75, slice_thickness=thickness, slice_z=slice_z, rows=48, columns=40,
                        origin_xy=(-20.0, 30.0))


def volume(g, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(-1000, 400, size=g.shape).astype(np.int16)


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_round_trip_keeps_hu_geometry_and_leaves_the_input_alone(tmp_path):
    g = geometry()
    hu = volume(g)
    folder = write_dicom_series(hu, g, tmp_path)
    assert folder == tmp_path / "PHANTOM-7" / STUDY / g.series_instance_uid
    before = digest(tmp_path)
    ct = read_series(tmp_path)
    assert digest(tmp_path) == before
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ct.image), hu)
    assert ct.image.GetSize() == (40, 48, 8)
    np.testing.assert_allclose(ct.image.GetOrigin(), (-20.0, 30.0, -50.0))
    np.testing.assert_allclose(ct.image.GetSpacing(), (0.75, 0.75, 2.0))
    np.testing.assert_allclose(ct.slice_z, g.slice_z)
    header = pydicom.dcmread(ct.files[0])
    assert header.Modality == "CT" and header.RescaleIntercept == -1024 and header.PixelRepresentation == 1
    assert float(header.SliceThickness) == 2.5
    assert not ct.resampled_z
    assert [p.name for p in tmp_path.iterdir()] == ["PHANTOM-7"]  # no temporary left behind


def test_shuffled_file_names_and_a_duplicated_position(tmp_path):
    g = geometry()
    hu = volume(g)
    folder = write_dicom_series(hu, g, tmp_path / "in")
    files = sorted(folder.iterdir())
    for n, path in enumerate(files):  # names no longer follow the slice order
        path.rename(folder / f"IMG{(n * 5) % len(files):04d}x")
    duplicate = pydicom.dcmread(folder / "IMG0005x")  # slice 1, InstanceNumber 2
    duplicate.InstanceNumber = 99
    duplicate.SOPInstanceUID = pydicom.uid.generate_uid()
    duplicate.PixelData = np.full(hu[1].shape, 3000, np.int16).tobytes()
    duplicate.save_as(folder / "A_DUPLICATE.dcm")
    ct = read_series(folder)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ct.image), hu)  # lower InstanceNumber kept
    np.testing.assert_allclose(ct.slice_z, g.slice_z)


def test_rescale_is_applied_per_slice(tmp_path):
    g = geometry()
    hu = volume(g)
    folder = write_dicom_series(hu, g, tmp_path)
    path = sorted(folder.iterdir())[3]
    dataset = pydicom.dcmread(path)
    stored = dataset.pixel_array.astype(np.int32)
    dataset.RescaleSlope = 2
    dataset.RescaleIntercept = -2000
    dataset.PixelData = ((stored - 1024 + 2000) // 2).astype(np.int16).tobytes()  # same HU, other encoding
    dataset.save_as(path)
    read = sitk.GetArrayFromImage(read_series(folder).image)
    assert np.abs(read[3] - hu[3]).max() <= 1
    np.testing.assert_array_equal(read[4], hu[4])


@pytest.mark.parametrize("flip_rows, flip_slices, oblique", [(True, False, False), (False, True, False),
                                                             (False, False, True), (True, True, True)])
def test_oblique_and_flipped_orientations(tmp_path, flip_rows, flip_slices, oblique):
    g = geometry()
    hu = volume(g)
    folder = write_dicom_series(hu, g, tmp_path)
    angle = np.deg2rad(20 if oblique else 0)
    row = np.array([np.cos(angle), np.sin(angle), 0.0])
    column = np.array([-np.sin(angle), np.cos(angle), 0.0]) * (-1 if flip_rows else 1)
    normal = np.cross(row, column)
    step = -2.0 if flip_slices else 2.0  # slices written in the opposite order along the normal
    origin = np.array([5.0, -7.0, 11.0])
    for k, path in enumerate(sorted(folder.iterdir())):
        dataset = pydicom.dcmread(path)
        dataset.ImageOrientationPatient = [f"{v:.6f}" for v in (*row, *column)]
        dataset.ImagePositionPatient = [f"{v:.6f}" for v in origin + k * step * normal]
        dataset.save_as(path)
    ct = read_series(folder)
    direction = np.asarray(ct.image.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction[:, 0], row, atol=1e-6)
    np.testing.assert_allclose(direction[:, 1], column, atol=1e-6)
    np.testing.assert_allclose(direction[:, 2], normal, atol=1e-6)
    array = sitk.GetArrayFromImage(ct.image)
    expected = hu[::-1] if flip_slices else hu
    np.testing.assert_array_equal(array, expected)
    # every voxel sits where its file put it: check the first pixel of each written slice
    for k in range(len(hu)):
        world = origin + k * step * normal
        index = ct.image.TransformPhysicalPointToIndex(world.tolist())
        assert index[:2] == (0, 0)
        assert array[index[2], 0, 0] == hu[k, 0, 0]


def test_irregular_slice_steps_are_resampled(tmp_path):
    z = (0.0, 2.0, 4.0, 5.0, 6.0, 8.0, 10.0, 16.0, 18.0)  # a half step and a gap
    g = geometry(slice_z=z)
    hu = np.zeros(g.shape, np.int16) + np.array(z, np.int16)[:, None, None] * 10
    folder = write_dicom_series(hu, g, tmp_path)
    ct = read_series(folder)
    assert ct.resampled_z
    np.testing.assert_allclose(ct.slice_z, z)
    np.testing.assert_allclose(ct.image.GetSpacing()[2], 2.0)
    array = sitk.GetArrayFromImage(ct.image)
    assert array.shape[0] == 10  # 0 .. 18 mm every 2 mm
    np.testing.assert_allclose(array[:, 0, 0], np.arange(0, 20, 2) * 10, atol=1e-3)  # linear in z


def test_several_series_are_listed_and_chosen_by_uid(tmp_path):
    first, second = "1.2.826.0.1.3680043.8.498.201", "1.2.826.0.1.3680043.8.498.202"
    write_dicom_series(volume(geometry(first)), geometry(first), tmp_path)
    write_dicom_series(volume(geometry(second), seed=1), geometry(second), tmp_path)
    with pytest.raises(SeriesError, match="holds 2 series") as error:
        read_series(tmp_path)
    assert first in str(error.value) and second in str(error.value) and "\n" not in str(error.value)
    assert read_series(tmp_path, second).series_instance_uid == second
    with pytest.raises(SeriesError, match="no series with SeriesInstanceUID 1.2.3"):
        read_series(tmp_path, "1.2.3")


def test_bad_series_are_one_sentence(tmp_path):
    g = geometry()
    folder = write_dicom_series(volume(g), g, tmp_path / "corrupt")
    victim = sorted(folder.iterdir())[2]
    victim.write_bytes(victim.read_bytes()[:600])
    with pytest.raises(SeriesError, match="cannot be"):
        read_series(tmp_path / "corrupt")
    folder = write_dicom_series(volume(g), g, tmp_path / "mr")
    for path in folder.iterdir():
        dataset = pydicom.dcmread(path)
        dataset.Modality = "MR"
        dataset.save_as(path)
    with pytest.raises(SeriesError, match="MR series, not CT"):
        read_series(tmp_path / "mr")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.txt").write_text("not DICOM")
    with pytest.raises(SeriesError, match="holds no DICOM files"):
        read_series(tmp_path / "empty")
    with pytest.raises(SeriesError, match="is not a folder"):
        read_series(tmp_path / "missing")


def test_rewriting_a_series_replaces_it_whole(tmp_path):
    g = geometry()
    write_dicom_series(volume(g), g, tmp_path)
    shorter = geometry(slice_z=(0.0, 2.0, 4.0))
    folder = write_dicom_series(volume(shorter, seed=5), shorter, tmp_path)
    assert len(list(folder.iterdir())) == 3
    shutil.rmtree(folder)
