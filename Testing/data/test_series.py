"""Reading real CT series robustly, and writing the phantom's."""
import hashlib
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from helpers import set_header_text
from xaiexplain.data.geometry import ScanGeometry
from xaiexplain.data.series import SeriesError, read_series
from xaiexplain.data.slice_values import ImplausibleCTNumbers
from xaiexplain.errors import XAIExplainError
from xaiexplain.io.dicom import write_dicom_series

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
    hu = np.zeros(g.shape, np.int16) + np.array(z, np.int16)[:, None, None] * 10 - 900  # lung-like HU
    folder = write_dicom_series(hu, g, tmp_path)
    ct = read_series(folder, allow_gaps=True)
    assert ct.resampled_z
    assert ct.gaps == [(10.0, 16.0)]
    np.testing.assert_allclose(ct.slice_z, z)
    np.testing.assert_allclose(ct.image.GetSpacing()[2], 2.0)
    array = sitk.GetArrayFromImage(ct.image)
    assert array.shape[0] == 10  # 0 .. 18 mm every 2 mm
    np.testing.assert_allclose(array[:, 0, 0], np.arange(0, 20, 2) * 10 - 900, atol=1e-3)  # linear in z


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


def test_a_gap_is_refused_unless_allowed_and_then_recorded(tmp_path):
    z = (-50.0, -48.0, -46.0, -44.0, -42.0, -40.0, -34.0, -32.0, -30.0)  # -38 and -36 are missing
    g = geometry(slice_z=z)
    hu = np.zeros(g.shape, np.int16) + (np.array(z) * 10 - 300).astype(np.int16)[:, None, None]  # lung-like
    folder = write_dicom_series(hu, g, tmp_path)
    before = digest(tmp_path)
    with pytest.raises(SeriesError) as error:
        read_series(folder)
    message = str(error.value)
    assert isinstance(error.value, XAIExplainError)
    assert "between z -40.0 and -34.0 mm" in message
    assert "--allow-gaps" in message and "allow_gaps=True" in message
    assert "\n" not in message and len(message) < 1000
    ct = read_series(folder, allow_gaps=True)
    assert ct.gaps == [(-40.0, -34.0)]
    assert all(type(value) is float for gap in ct.gaps for value in gap)
    assert ct.resampled_z
    array = sitk.GetArrayFromImage(ct.image)
    assert array.shape[0] == 11  # -50 .. -30 mm every 2 mm, -38 and -36 interpolated
    np.testing.assert_allclose(array[:, 0, 0], np.arange(-50, -29, 2) * 10 - 300, atol=1e-3)
    assert digest(tmp_path) == before


def test_a_short_step_is_no_gap(tmp_path):
    z = (0.0, 2.5, 5.0, 5.5, 8.0, 10.5, 13.0)  # one slice at a fraction of the spacing, as in LIDC-IDRI-0267
    g = geometry(slice_z=z)
    folder = write_dicom_series(volume(g), g, tmp_path)
    ct = read_series(folder)
    assert ct.gaps == [] and ct.resampled_z
    np.testing.assert_allclose(ct.slice_z, z)
    np.testing.assert_allclose(ct.image.GetSpacing()[2], 2.5)


def non_image_object(folder, modality, sop_class, name="object.dcm"):
    """A DICOM object that is not an image (SEG, SR, ...), in its own series of the phantom's study."""
    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    dataset = pydicom.dataset.FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = sop_class
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = modality
    dataset.PatientID = "PHANTOM-7"
    dataset.StudyInstanceUID = STUDY
    dataset.SeriesInstanceUID = pydicom.uid.generate_uid()
    dataset.SeriesDescription = f"a {modality} beside the slices"
    dataset.save_as(folder / name, enforce_file_format=True)
    return dataset.SeriesInstanceUID


@pytest.mark.parametrize("modality, sop_class", [
    ("SEG", "1.2.840.10008.5.1.4.1.1.66.4"),
    ("SR", pydicom.uid.ComprehensiveSRStorage),
    ("PR", pydicom.uid.GrayscaleSoftcopyPresentationStateStorage),
    ("RTSTRUCT", pydicom.uid.RTStructureSetStorage),
    ("KO", pydicom.uid.KeyObjectSelectionDocumentStorage),
    ("REG", pydicom.uid.SpatialRegistrationStorage),
    ("OT", pydicom.uid.SegmentationStorage),  # known by its SOP Class alone
    ("SEG", "1.2.3.4"),  # known by its Modality alone
])
def test_objects_that_are_not_images_are_ignored(tmp_path, modality, sop_class):
    g = geometry()
    hu = volume(g)
    folder = write_dicom_series(hu, g, tmp_path)
    other_uid = non_image_object(folder, modality, sop_class)
    ct = read_series(tmp_path)  # no series UID needed: the object is not a second series
    assert ct.series_instance_uid == g.series_instance_uid
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ct.image), hu)
    assert all(p.name != "object.dcm" for p in ct.files)
    with pytest.raises(SeriesError, match="not an image series"):
        read_series(tmp_path, other_uid)
    alone = tmp_path / "alone"
    alone.mkdir()
    non_image_object(alone, modality, sop_class)
    with pytest.raises(SeriesError, match="holds no images, only 1 DICOM objects that are not images"):
        read_series(alone)


READ_IN_A_SUBPROCESS = """
import sys
import numpy as np
import SimpleITK as sitk
from xaiexplain.data.series import read_series
ct = read_series(sys.argv[1])
np.save(sys.argv[2], sitk.GetArrayFromImage(ct.image))
print(len(ct.files), sum(b"\\xff" in bytes(path) for path in ct.files))
"""


def not_utf8_name(folder, original, name=b"slice\xff.dcm"):
    """Put ``original``'s bytes under a file name that is not UTF-8 and move the original away."""
    odd = os.path.join(os.fsencode(folder), name)
    try:
        with open(odd, "wb") as handle:
            handle.write(original.read_bytes())
    except OSError:  # e.g. APFS takes UTF-8 names only
        pytest.skip("this file system takes no file names that are not UTF-8")
    original.rename(folder.parent / f"moved-away-{original.name}")
    return odd


def test_a_file_name_that_is_not_utf8_is_read_whole(tmp_path):
    g = geometry()
    hu = volume(g)
    folder = write_dicom_series(hu, g, tmp_path)
    not_utf8_name(folder, folder / "000003.dcm")
    before = digest(folder)
    # In a subprocess: SimpleITK given such a name throws in C++ and aborts the interpreter (exit 134).
    result = subprocess.run([sys.executable, "-c", READ_IN_A_SUBPROCESS, str(folder), str(tmp_path / "read.npy")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["8", "1"]  # all slices, the odd name among them
    np.testing.assert_array_equal(np.load(tmp_path / "read.npy"), hu)
    assert digest(folder) == before


def test_messages_escape_file_names_that_are_not_utf8(tmp_path):
    g = geometry()
    folder = write_dicom_series(volume(g), g, tmp_path)
    odd = not_utf8_name(folder, folder / "000003.dcm", b"bad\xff\x1b.dcm")
    with open(odd, "r+b") as handle:
        handle.truncate(600)  # cut short
    with pytest.raises(SeriesError, match="cannot be read") as error:
        read_series(folder)
    message = str(error.value)
    assert "bad\\xff\\x1b.dcm" in message
    message.encode("utf-8")  # printable by the CLI: no lone surrogate
    assert message.isprintable()


@pytest.mark.parametrize("tag, value", [
    ("ImagePositionPatient", ["nan", "0", "0"]),
    ("ImagePositionPatient", ["-20", "30", "inf"]),
    ("ImageOrientationPatient", ["1", "0", "0", "0", "-inf", "0"]),
    ("PixelSpacing", ["0.75", "nan"]),
])
def test_non_finite_geometry_names_the_file(tmp_path, tag, value):
    g = geometry()
    folder = write_dicom_series(volume(g), g, tmp_path)
    victim = folder / "000004.dcm"
    dataset = pydicom.dcmread(victim)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns that nan and inf are no valid DS values
        setattr(dataset, tag, value)
        dataset.save_as(victim)
        with pytest.raises(SeriesError, match=f"000004.dcm in .* holds a non-finite {tag}") as error:
            read_series(folder)
    assert "\n" not in str(error.value)


def test_many_series_are_listed_briefly_with_header_text_escaped(tmp_path):
    for n in range(40):
        g = geometry(f"1.2.826.0.1.3680043.8.498.3{n:02d}", slice_z=(0.0, 2.0))
        folder = write_dicom_series(volume(g, seed=n), g, tmp_path)
        for path in folder.iterdir():
            dataset = pydicom.dcmread(path)
            dataset.SeriesDescription = "\x1b[31mred\x1b[0m\nsecond line " + "x" * 39  # 64 characters, LO's most
            dataset.PatientID = "P\x07" + "y" * 62
            dataset.save_as(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of the escape sequence it decodes
        with pytest.raises(SeriesError, match="holds 40 series, choose one with --series-uid") as error:
            read_series(tmp_path)
    message = str(error.value)
    assert len(message) < 1000, len(message)
    assert "and 35 more" in message
    assert "\x1b" not in message and "\\x1b[31m" in message
    assert "\n" not in message and message.isprintable()


# -- one check of the slices for explain and dataset (issue 23) ------------------------------------------------

@pytest.mark.parametrize("shift", ["a 15 degree gantry tilt", "x +0.5 mm per slice"])
def test_slice_origins_off_the_slice_normal_are_refused(tmp_path, shift):
    g = geometry()
    folder = write_dicom_series(volume(g), g, tmp_path)
    tilt = np.deg2rad(15)
    for k, path in enumerate(sorted(folder.iterdir())):
        dataset = pydicom.dcmread(path)
        if shift.startswith("a 15"):  # the slices tilted, the table still moving along z
            dataset.ImageOrientationPatient = [1, 0, 0, 0, f"{np.cos(tilt):.6f}", f"{np.sin(tilt):.6f}"]
        else:
            dataset.ImagePositionPatient = [-20.0 + 0.5 * k, 30.0, g.slice_z[k]]
        dataset.save_as(path)
    before = digest(tmp_path)
    with pytest.raises(SeriesError, match="do not lie along their normal: .*000002.dcm lies 0.5.* mm beside") as error:
        read_series(folder)
    assert "\n" not in str(error.value)
    assert digest(tmp_path) == before


def test_an_instance_number_that_is_no_number_is_one_sentence(tmp_path):
    g = geometry()
    folder = write_dicom_series(volume(g), g, tmp_path)
    set_header_text(folder / "000004.dcm", (0x0020, 0x0013), "abc")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of the invalid IS value
        with pytest.raises(SeriesError, match="000004.dcm in .* holds InstanceNumber abc, which is not a whole number"):
            read_series(folder)


def test_a_multi_frame_slice_is_one_sentence(tmp_path):
    g = geometry()
    hu = volume(g)
    folder = write_dicom_series(hu, g, tmp_path)
    dataset = pydicom.dcmread(folder / "000004.dcm")
    dataset.NumberOfFrames = 2
    dataset.PixelData = np.stack([hu[3], hu[4]]).astype(np.int16).tobytes()
    dataset.save_as(folder / "000004.dcm")
    with pytest.raises(SeriesError, match=r"000004.dcm in .* is a multi-frame image \(2 frames\), not one slice"):
        read_series(folder)


def stored_as_hu_plus_1024(folder):
    """The series' files with RescaleIntercept 0: their stored values (HU + 1024) taken as they are."""
    for path in sorted(folder.rglob("*.dcm")):
        dataset = pydicom.dcmread(path)
        assert dataset.RescaleIntercept == -1024 and dataset.RescaleSlope == 1
        dataset.RescaleIntercept = 0
        dataset.save_as(path)


def test_ct_numbers_stored_as_hu_plus_1024_are_refused_unless_allowed(tmp_path):
    g = geometry()
    hu = volume(g)
    folder = write_dicom_series(hu, g, tmp_path)
    assert read_series(folder)  # -1000 .. 400 HU: plausible
    stored_as_hu_plus_1024(folder)
    with pytest.raises(ImplausibleCTNumbers) as error:
        read_series(folder)
    message = str(error.value)
    assert isinstance(error.value, XAIExplainError) and "\n" not in message
    assert "does not hold plausible CT numbers of a chest: 0.0% of its voxels are air or lung" in message
    assert "--allow-implausible-hu" in message and "allow_implausible_hu=True" in message
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_series(folder, allow_implausible_hu=True).image),
                                  hu + 1024)


def test_the_real_series_passes_and_stored_as_hu_plus_1024_is_refused(real_series_folder, tmp_path):
    original = sitk.GetArrayFromImage(read_series(real_series_folder).image)
    copy = tmp_path / "LIDC-IDRI-0001"
    shutil.copytree(real_series_folder, copy)
    stored_as_hu_plus_1024(copy)
    with pytest.raises(ImplausibleCTNumbers, match=r"0.0% of its voxels are air or lung .* median is \d+ HU"):
        read_series(copy)
    shifted = sitk.GetArrayFromImage(read_series(copy, allow_implausible_hu=True).image)
    np.testing.assert_array_equal(shifted, original + 1024)
