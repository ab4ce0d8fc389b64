"""Segmentation nodes from label images (the methods' outlines, the LIDC consensus)."""
from __future__ import annotations

import re

import numpy as np
import SimpleITK as sitk

from xaiexplain.errors import XAIExplainError
from xaiexplain.slicer.conversion import scene_or_default, slicer_module, update_volume_node_from_image


def _ensure_segmentation_converters():
    """Register the labelmap <-> surface converters when nothing has (Slicer's Segmentations module does
    at start-up; a bare slicer-core does not, and without them a segment cannot be created)."""
    slicer = slicer_module()
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if not factory.GetConverterRules():
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
        factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())


def add_segmentation_node(label_image: sitk.Image, segments: list[tuple[int, str, tuple]], name: str,
                          reference_volume, scene=None):
    """A segmentation node from a label image: ``segments`` lists (label value, segment name, rgb); every
    listed segment exists, empty where its value does not occur."""
    import vtk

    slicer = slicer_module()
    scene = scene_or_default(scene)
    _ensure_segmentation_converters()
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    values = sorted(value for value, _, _ in segments)
    # ImportLabelmapToSegmentationNode fills the given segments with label values 1, 2, ... in order
    dense = sitk.GetArrayFromImage(label_image)
    remapped = np.zeros(dense.shape, np.uint16)
    ids = vtk.vtkStringArray()
    for rank, value in enumerate(values, start=1):
        remapped[dense == value] = rank
        _, segment_name, rgb = next(s for s in segments if s[0] == value)
        segment_id = re.sub(r"\W+", "_", segment_name)
        ids.InsertNextValue(segmentation.GetSegmentation().AddEmptySegment(segment_id, segment_name, list(rgb)))
    label_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "XAIExplain temporary labels")
    try:
        remapped_image = sitk.GetImageFromArray(remapped)
        remapped_image.CopyInformation(label_image)
        update_volume_node_from_image(label_node, remapped_image)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(label_node, segmentation, ids):
            raise XAIExplainError(f"could not build segmentation {name!r}")
    finally:
        scene.RemoveNode(label_node)
    return segmentation
