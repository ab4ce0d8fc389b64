"""What the module panel checks before Apply: a volume, the nodules (defined points, or the LIDC
annotations) and at least one method; and which point-list events change that answer."""
from __future__ import annotations

import numpy as np

# Markups events after which the panel checks again: a point placed, removed, moved, or its position set
# or unset (a point being placed is a "preview" point until it is clicked down, and does not count)
POINT_LIST_EVENTS = ("PointAddedEvent", "PointRemovedEvent", "PointModifiedEvent", "PointPositionDefinedEvent",
                     "PointPositionUndefinedEvent")


def defined_points_ras(points) -> np.ndarray:
    """The world RAS positions (N, 3) of a markups node's defined control points: not the preview point
    that follows the mouse while placing, nor points whose position was unset."""
    defined = points.PositionDefined
    return np.array([points.GetNthControlPointPositionWorld(n) for n in range(points.GetNumberOfControlPoints())
                     if points.GetNthControlPointPositionStatus(n) == defined], float).reshape(-1, 3)


def apply_problem(volume_node, points, use_lidc: bool, methods) -> str | None:
    """Why Apply cannot run now (one sentence), or None."""
    if volume_node is None:
        return "Select the CT volume."
    if not use_lidc and (points is None or points.GetNumberOfDefinedControlPoints() == 0):
        return "Place a point on each nodule, or use the LIDC annotations."
    if not [m for m in methods if m]:
        return "Choose at least one method."
    return None


def not_inputs(scene) -> list[str]:
    """The ids of the volumes the CT selector must not offer: this module's own output (relevance and
    counterfactual volumes, by their attribute), for ``sortFilterProxyModel().hiddenNodeIDs``. Label maps
    it never lists (its node type is the scalar volume, without child types)."""
    from xaiexplain.slicer.conversion import OUTPUT_OF, nodes_of_class

    return [node.GetID() for node in nodes_of_class(scene, "vtkMRMLScalarVolumeNode") if node.GetAttribute(OUTPUT_OF)]
