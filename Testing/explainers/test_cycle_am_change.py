"""cycle-am on a phantom series with a calcified nodule: its change R = G+(x) - G-(x) reaches the
calcification, which the classifier relies on, and is labelled as a change, not as evidence."""
import numpy as np
import pytest
import SimpleITK as sitk
import xaiexplain
from xaiexplain.data import lidc
from xaiexplain.data.series import read_series
from xaiexplain.data.sources.phantom_series import write_phantom_series
from xaiexplain.explainers import registry
from xaiexplain.io.figures import column_title


@pytest.fixture(scope="module")
def explained_0078(tmp_path_factory):
    """The LIDC-IDRI-0078 phantom (nodule 3 has a central calcification) explained with the shipped pair."""
    written = write_phantom_series(lidc.find_scan_by_key("LIDC-IDRI-0078"), tmp_path_factory.mktemp("phantom"))
    result = xaiexplain.explain_series(read_series(written.series_folder), "lidc", methods=["cycle-am"])
    return written, result


# Before: generators squashed into the window could not lower the calcification (850 HU, at the window's top):
# mean |R| 14 HU on calcified pixels of the test split against 253 HU on the rest of the nodules.
def test_the_change_reaches_the_calcification(explained_0078):
    written, result = explained_0078
    change = np.abs(sitk.GetArrayFromImage(result.relevance["cycle-am"]))
    calcification = sitk.GetArrayFromImage(sitk.ReadImage(str(written.truth_folder / "calcification.nrrd"))) > 0
    nodules = sitk.GetArrayFromImage(sitk.ReadImage(str(written.truth_folder / "nodules.nrrd"))) > 0
    assert calcification.sum() > 20
    on_calcification, on_rest = change[calcification].mean(), change[nodules & ~calcification].mean()
    assert on_calcification >= 0.5 * on_rest, (on_calcification, on_rest)


# Before: the relevance was labelled and drawn as evidence (red "malignant evidence").
def test_the_change_is_labelled_as_a_change(explained_0078):
    _, result = explained_0078
    kind = registry.get("cycle-am").map_kind
    assert kind.name == "change"
    assert kind.labels == {"brighter in the malignant version": 1, "darker in the malignant version": 2}
    labels = sitk.GetArrayFromImage(result.labels["cycle-am"])
    change = sitk.GetArrayFromImage(result.relevance["cycle-am"])
    assert (change[labels == 1] > 0).all() and (change[labels == 2] < 0).all() and (labels == 1).any()
    assert column_title("cycle-am").endswith("red brighter, blue darker in G+")
    assert column_title("lrp").endswith("red malignant, blue benign")
    assert all("evidence" not in label for label in kind.labels)
