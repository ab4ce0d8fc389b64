"""Colours of a map kind (``explainers.kinds.Kind``) in the scene: the relevance volume's colour table
and the segments' colours, named by the kind's labels.

Transparency is on / off, not a ramp: Slicer's scalar volume display combines the colour table's alpha with
its threshold by a logical AND (vtkMRMLScalarVolumeDisplayNode: vtkImageLogic, true value 255), so any
alpha above zero is drawn opaque. Values within ``TRANSPARENT_FRACTION`` of the window's half width around
zero are transparent; how strongly the rest covers the CT is the overlay opacity (the panel's slider).
"""
from __future__ import annotations

from xaiexplain.slicer.conversion import ROLE, nodes_of_class, scene_or_default

TRANSPARENT_FRACTION = 0.12
POSITIVE_RGB = (0.9, 0.12, 0.1)  # red: malignant evidence, brighter in the malignant version
NEGATIVE_RGB = (0.1, 0.35, 0.95)  # blue: benign evidence, darker in the malignant version
UNSIGNED_RGB = (0.15, 0.75, 0.3)  # green: a sensitivity, no class side
COLOURS = 256


def side_rgb(kind, sign: float) -> tuple:
    """The colour of a kind's side (a label's sign): red above zero and blue below on a diverging map,
    green on a sequential one."""
    if kind.colour_map != "diverging":
        return UNSIGNED_RGB
    return POSITIVE_RGB if sign > 0 else NEGATIVE_RGB


def colour_table_name(kind) -> str:
    """The colour table's name says what its colours mean, in the kind's own labels."""
    if kind.colour_map == "diverging":
        positive = next(label for label, _, sign in kind.sides if sign > 0)
        negative = next(label for label, _, sign in kind.sides if sign < 0)
        return f"XAIExplain {kind.name}: red {positive}, blue {negative}"
    return f"XAIExplain {kind.name}: green {kind.sides[0][0]}"


def table_colour(kind, n: int) -> tuple[float, float, float, float]:
    """Entry ``n`` of the kind's colour table: hue by side, lighter towards the extremes so that peaks stand
    out, transparent near zero and opaque elsewhere."""
    t = 2.0 * n / (COLOURS - 1) - 1.0 if kind.colour_map == "diverging" else n / (COLOURS - 1)
    strength = abs(t)
    hue = side_rgb(kind, t)
    light = max(0.0, strength - 0.6) / 0.4
    rgb = tuple(c + (1.0 - c) * 0.6 * light for c in hue)
    return (*rgb, 0.0 if strength < TRANSPARENT_FRACTION else 1.0)


def relevance_color_table(kind, scene=None):
    """The colour table of a kind's relevance volumes (one per kind and scene, created on first use):
    diverging maps run from the negative side's blue through transparent to the positive side's red,
    sequential ones from transparent to green."""
    scene = scene_or_default(scene)
    role = f"relevance colours ({kind.name})"
    for node in nodes_of_class(scene, "vtkMRMLColorTableNode"):
        if node.GetAttribute(ROLE) == role:
            return node
    table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", colour_table_name(kind))
    table.SetAttribute(ROLE, role)
    table.SetTypeToUser()
    table.SetNumberOfColors(COLOURS)
    table.GetLookupTable().SetTableRange(0, COLOURS - 1)
    for n in range(COLOURS):
        table.SetColor(n, f"{n}", *table_colour(kind, n))
    return table
