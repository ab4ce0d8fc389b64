"""The slice views: which volumes they overlay and how opaquely, and jumping them to a nodule."""
from __future__ import annotations

from xaiexplain.errors import XAIExplainError
from xaiexplain.slicer.conversion import OUTPUT_OF, nodes_of_class, scene_or_default, slicer_module

DEFAULT_OPACITY = 0.8
POSITION_COLUMNS = ("R (mm)", "A (mm)", "S (mm)")  # the results table's nodule centre, RAS


def show_in_slice_views(scene, background, foreground, opacity: float | None = None) -> None:
    """Background CT and foreground relevance in every slice view (nothing where there is no view);
    ``opacity`` None keeps each view's foreground opacity."""
    for composite in nodes_of_class(scene, "vtkMRMLSliceCompositeNode"):
        composite.SetBackgroundVolumeID(background.GetID())
        composite.SetForegroundVolumeID(foreground.GetID() if foreground is not None else None)
        if opacity is not None:
            composite.SetForegroundOpacity(opacity)


def set_overlay_opacity(opacity: float, scene=None) -> None:
    """How strongly the relevance overlay covers the CT, 0 (not at all) to 1, in the slice views that show
    one of this module's volumes as their foreground; the others' layers are the user's, left alone."""
    opacity = float(opacity)
    if not 0.0 <= opacity <= 1.0:
        raise XAIExplainError(f"overlay opacity {opacity} is not between 0 and 1")
    scene = scene_or_default(scene)
    for composite in nodes_of_class(scene, "vtkMRMLSliceCompositeNode"):
        foreground = scene.GetNodeByID(composite.GetForegroundVolumeID() or "")
        if foreground is not None and foreground.GetAttribute(OUTPUT_OF):
            composite.SetForegroundOpacity(opacity)


def table_row_of_view_row(table_node, model_row: int) -> int | None:
    """The table row a row of a ``qMRMLTableView``'s model shows (the row of
    ``view.sortFilterProxyModel().mapToSource(index)``, which PythonQt exposes, unlike
    ``qMRMLTableModel.mrmlTableRowIndex``), or None for the row of column titles: the model's first row
    holds the titles unless the node says they are the column header."""
    row = model_row - (0 if table_node.GetUseColumnTitleAsColumnHeader() else 1)
    return row if 0 <= row < table_node.GetNumberOfRows() else None


def jump_to_nodule(table_node, row: int, scene=None) -> tuple[float, float, float]:
    """Centre every slice view on the nodule of a results-table row (its R, A, S columns); returns the
    RAS point."""
    slicer = slicer_module()
    scene = scene_or_default(scene)
    table = table_node.GetTable()
    if not 0 <= row < table.GetNumberOfRows():
        raise XAIExplainError(f"the results table has no row {row}")
    columns = [table.GetColumnByName(name) for name in POSITION_COLUMNS]
    if any(column is None for column in columns):
        raise XAIExplainError(f"table {table_node.GetName()!r} is not an XAIExplain results table")
    ras = tuple(float(column.GetValue(row)) for column in columns)
    slicer.vtkMRMLSliceNode.JumpAllSlices(scene, *ras, slicer.vtkMRMLSliceNode.CenteredJumpSlice)
    return ras
