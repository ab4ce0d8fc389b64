"""Shared test set-up: the LIDC nodule-table cache lives in the repository (reused between runs, never in
$HOME), matplotlib draws without a display, and each pytest-xdist worker runs on one thread."""
import os
from pathlib import Path

import numpy as np
import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
os.environ.setdefault("XAIEXPLAIN_CACHE", str(REPOSITORY / ".xaiexplain-test-cache"))
os.environ.setdefault("MPLBACKEND", "Agg")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # one thread of PyTorch / OpenMP per worker (and the commands it runs): workers that each spread over every
    # core wait on each other's threads and run several times slower than one
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(variable, "1")


@pytest.fixture(scope="session")
def nodules_0078():
    """The four nodules of LIDC-IDRI-0078 with their consensus masks."""
    from xaiexplain.data import lidc

    return lidc.scan_nodules("LIDC-IDRI-0078", with_masks=True)


TINY_SET_PATIENTS = ["LIDC-IDRI-0078", "LIDC-IDRI-0001", "LIDC-IDRI-0003", "LIDC-IDRI-0005", "LIDC-IDRI-0010",
                     "LIDC-IDRI-0011", "LIDC-IDRI-0012", "LIDC-IDRI-0013", "LIDC-IDRI-0014", "LIDC-IDRI-0016"]


@pytest.fixture(scope="session")
def tiny_patch_set(tmp_path_factory):
    """A few patients' patches, split by nodule so that each split holds both labels."""
    from xaiexplain.data.patch_set import SPLITS, load_lung_patches, load_patch_set, write_patch_set
    from xaiexplain.data.sources.phantom_patches import render_patch_set

    root = tmp_path_factory.mktemp("tiny")
    render_patch_set(root / "rendered", seed=0, patient_ids=TINY_SET_PATIENTS, progress=False)
    arrays, nodules, summary = load_patch_set(root / "rendered")
    for label in ("benign", "malignant"):
        of_label = [n for n, row in enumerate(nodules) if row["label"] == label]
        assert len(of_label) >= 3, label
        for position, n in enumerate(of_label):
            split = SPLITS[position] if position < 3 else "train"
            nodules[n]["split"] = split
            rows = slice(nodules[n]["first_patch"], nodules[n]["first_patch"] + nodules[n]["patch_count"])
            arrays["split"][rows] = SPLITS.index(split)
    lung = load_lung_patches(root / "rendered")
    lung["split"] = (np.arange(len(lung["split"])) % len(SPLITS)).astype(np.int8)  # nodule-free lung in every split
    summary["lung_patches"]["counts"] = {name: int((lung["split"] == n).sum()) for n, name in enumerate(SPLITS)}
    write_patch_set(root / "tiny", arrays, nodules, summary, lung)
    return root / "tiny"


# The one real LIDC-IDRI series (LIDC-IDRI-0001, TCIA layout) where the project's machines have it; a user's
# clone has no ../shared, and the tests that need it skip (XAIEXPLAIN_REAL_CT=/nowhere shows how).
REAL_CT = Path(os.environ.get("XAIEXPLAIN_REAL_CT", REPOSITORY.parent / "shared" / "real-ct"))
REAL_SERIES_UID = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"
# Phantom patients of the download tree: few slices (65 and 99), a benign and a malignant nodule, train and test.
TREE_PHANTOM_PATIENTS = ("LIDC-IDRI-0957", "LIDC-IDRI-0595")


@pytest.fixture(scope="session")
def real_series_folder():
    """The real LIDC-IDRI-0001 patient folder (its study / series folders and the readers' XML inside)."""
    folder = REAL_CT / "LIDC-IDRI" / "LIDC-IDRI-0001"
    if not folder.is_dir():
        pytest.skip(f"the real LIDC-IDRI-0001 series is not here ({REAL_CT} is absent, as in a user's clone)")
    return folder


def tree_patients() -> set[str]:
    """The patients of ``lidc_download_tree``: the real LIDC-IDRI-0001 only where it is here."""
    real = (REAL_CT / "LIDC-IDRI" / "LIDC-IDRI-0001").is_dir()
    return set(TREE_PHANTOM_PATIENTS) | ({"LIDC-IDRI-0001"} if real else set())


@pytest.fixture(scope="session")
def lidc_download_tree(tmp_path_factory):
    """A LIDC-IDRI download tree: the phantom series of two patients (with the phantom's ground-truth folder
    beside them), a CR study, a stray file, and the real LIDC-IDRI-0001 (linked, with its XML) where it is here."""
    import numpy as np
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    from xaiexplain.data import lidc
    from xaiexplain.data.sources.phantom_series import write_phantom_series

    root = tmp_path_factory.mktemp("download") / "LIDC-IDRI"
    for patient in TREE_PHANTOM_PATIENTS:
        write_phantom_series(lidc.find_scan_by_key(patient), root, seed=0)
    if "LIDC-IDRI-0001" in tree_patients():
        (root / "LIDC-IDRI-0001").symlink_to(REAL_CT / "LIDC-IDRI" / "LIDC-IDRI-0001", target_is_directory=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # computed radiography
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    radiograph = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    radiograph.SOPClassUID, radiograph.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    radiograph.Modality, radiograph.PatientID = "CR", TREE_PHANTOM_PATIENTS[0]
    radiograph.StudyInstanceUID, radiograph.SeriesInstanceUID = generate_uid(), generate_uid()
    radiograph.Rows = radiograph.Columns = 8
    radiograph.BitsAllocated, radiograph.BitsStored, radiograph.HighBit, radiograph.PixelRepresentation = 16, 16, 15, 0
    radiograph.SamplesPerPixel, radiograph.PhotometricInterpretation = 1, "MONOCHROME2"
    radiograph.PixelData = np.zeros((8, 8), np.uint16).tobytes()
    folder = root / TREE_PHANTOM_PATIENTS[0] / radiograph.StudyInstanceUID / radiograph.SeriesInstanceUID
    folder.mkdir(parents=True)
    radiograph.save_as(folder / "1-1.dcm", enforce_file_format=True)
    (root / TREE_PHANTOM_PATIENTS[0] / "download-notes.txt").write_text("stray file\n")
    assert pydicom.dcmread(folder / "1-1.dcm").Modality == "CR"
    return root


@pytest.fixture(scope="session")
def lidc_dataset(lidc_download_tree, tmp_path_factory):
    """``xaiexplain dataset`` on ``lidc_download_tree``, one worker, the default options: its folder and what
    it printed (tests that rerun over it do so on a copy)."""
    from helpers import xaiexplain

    out = tmp_path_factory.mktemp("dataset") / "set"
    result = xaiexplain("dataset", "--lidc-root", lidc_download_tree, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stdout
