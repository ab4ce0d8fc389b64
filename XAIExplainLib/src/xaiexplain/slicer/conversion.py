"""MRML volume nodes to and from SimpleITK images: RAS <-> LPS, any IJK-to-RAS matrix; the scene and
constants every part of the bridge shares."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from xaiexplain.errors import XAIExplainError

OUTPUT_OF = "XAIExplain.OutputOf"
ROLE = "XAIExplain.Role"
SERIES_UID = "DICOM.SeriesInstanceUID"
_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def slicer_module():
    import slicer

    return slicer


def scene_or_default(scene=None):
    """``scene``, or ``slicer.mrmlScene`` when it is None."""
    if scene is not None:
        return scene
    scene = getattr(slicer_module(), "mrmlScene", None)
    if scene is None:
        raise XAIExplainError("there is no MRML scene: pass scene= or set slicer.mrmlScene")
    return scene


def nodes_of_class(scene, class_name: str) -> list:
    collection = scene.GetNodesByClass(class_name)
    return [collection.GetItemAsObject(n) for n in range(collection.GetNumberOfItems())]


def ijk_to_ras(volume_node) -> np.ndarray:
    """The 4 x 4 IJK-to-RAS matrix of a volume node, as numpy."""
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def vtk_matrix(array: np.ndarray):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def image_from_volume_node(volume_node) -> sitk.Image:
    """A copy of a scalar volume node as a SimpleITK image in LPS, with the node's pixel type and exact
    geometry (spacing, origin, direction from its IJK-to-RAS matrix, oblique and flipped axes included).
    The geometry is the node's own, before any parent transform."""
    slicer = slicer_module()
    if volume_node is None or not volume_node.IsA("vtkMRMLScalarVolumeNode"):
        raise XAIExplainError("give a scalar volume node (a CT series loaded in Slicer)")
    if volume_node.GetImageData() is None:
        raise XAIExplainError(f"volume {volume_node.GetName()!r} holds no image data")
    if volume_node.GetImageData().GetNumberOfScalarComponents() != 1:
        raise XAIExplainError(f"volume {volume_node.GetName()!r} has several components per voxel; give a CT volume")
    array = np.array(slicer.util.arrayFromVolume(volume_node), copy=True)  # (k, j, i)
    ijk_to_lps = _LPS_FROM_RAS @ ijk_to_ras(volume_node)
    columns = ijk_to_lps[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    direction = columns / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-6):
        raise XAIExplainError(f"volume {volume_node.GetName()!r} has sheared axes; resample it first "
                              "(e.g. harden a gantry-tilt transform)")
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(ijk_to_lps[:3, 3].tolist())
    image.SetDirection(direction.flatten().tolist())
    return image


def update_volume_node_from_image(volume_node, image: sitk.Image) -> None:
    """Set a volume node's voxels and IJK-to-RAS matrix from a SimpleITK image (LPS)."""
    slicer = slicer_module()
    direction = np.array(image.GetDirection()).reshape(3, 3)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = direction * np.array(image.GetSpacing())
    ijk_to_lps[:3, 3] = image.GetOrigin()
    slicer.util.updateVolumeFromArray(volume_node, sitk.GetArrayFromImage(image))
    volume_node.SetIJKToRASMatrix(vtk_matrix(_LPS_FROM_RAS @ ijk_to_lps))


def add_volume_node(image: sitk.Image, name: str, scene=None, class_name: str = "vtkMRMLScalarVolumeNode"):
    """A new volume node holding a SimpleITK image (LPS), with default display nodes."""
    scene = scene_or_default(scene)
    node = scene.AddNewNodeByClass(class_name, name)
    update_volume_node_from_image(node, image)
    node.CreateDefaultDisplayNodes()
    return node


def world_to_volume_lps(volume_node, ras_points: np.ndarray) -> np.ndarray:
    """World RAS points (N, 3) in the LPS frame of the volume's own voxels (its parent transform undone)."""
    slicer = slicer_module()
    ras_points = np.atleast_2d(np.asarray(ras_points, float))
    parent = volume_node.GetParentTransformNode()
    if parent is not None:
        if not parent.IsLinear():
            raise XAIExplainError(f"volume {volume_node.GetName()!r} is under a non-linear transform; harden it first")
        import vtk

        world_to_local = vtk.vtkMatrix4x4()
        slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(None, parent, world_to_local)
        matrix = np.array([[world_to_local.GetElement(r, c) for c in range(4)] for r in range(4)])
        ras_points = (matrix[:3, :3] @ ras_points.T).T + matrix[:3, 3]
    return ras_points * np.array([-1.0, -1.0, 1.0])


def lps_to_ras(lps) -> list[float]:
    return [-float(lps[0]), -float(lps[1]), float(lps[2])]
