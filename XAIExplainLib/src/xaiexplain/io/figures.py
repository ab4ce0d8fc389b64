"""PNG figures (matplotlib, no display needed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from xaiexplain.io.files import atomic_path

LUNG_WINDOW = (-600.0, 1500.0)  # level, width in HU


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path, dpi: int) -> Path:
    """Write the figure as PNG, whole or not at all, and close it."""
    path = Path(path)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=dpi)
    pyplot().close(figure)
    return path


def contact_sheet(rows: list[np.ndarray], row_titles: list[str], path, masks: list[np.ndarray] | None = None,
                  window=LUNG_WINDOW, max_columns: int = 12, title: str | None = None) -> Path:
    """One row per patch stack (N, H, W) in HU, at most ``max_columns`` slices each (evenly chosen),
    at the given (level, width) window; ``masks`` outline ground truth in the same layout."""
    plt = pyplot()
    level, width = window
    columns = min(max_columns, max(len(r) for r in rows))
    tile = 1.5  # inches
    figure, axes = plt.subplots(len(rows), columns, figsize=(tile * columns, (tile + 0.3) * len(rows) + 0.5),
                                squeeze=False)
    for r, stack in enumerate(rows):
        chosen = np.unique(np.linspace(0, len(stack) - 1, min(columns, len(stack))).round().astype(int))
        for c in range(columns):
            axis = axes[r, c]
            axis.set_axis_off()
            if c >= len(chosen):
                continue
            axis.imshow(stack[chosen[c]], cmap="gray", vmin=level - width / 2, vmax=level + width / 2,
                        interpolation="nearest")
            if masks is not None and masks[r][chosen[c]].any():
                axis.contour(masks[r][chosen[c]], levels=[0.5], colors="#ffb000", linewidths=0.6)
        # the row title may be wider than a tile: let it run across the row
        axes[r, 0].text(0.0, 1.04, row_titles[r], transform=axes[r, 0].transAxes, fontsize=8, ha="left",
                        va="bottom", clip_on=False)
    if title:
        figure.suptitle(title, fontsize=10)
    top = 1.0 - 0.5 / ((tile + 0.3) * len(rows) + 0.5)
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=top, wspace=0.04, hspace=0.22)
    return save_figure(figure, path, dpi=110)


def explanation_panel(patches_hu: np.ndarray, maps: dict[str, np.ndarray], path, row_titles: list[str],
                      title: str | None = None, window=LUNG_WINDOW) -> Path:
    """Rows: slices; columns: the original patch and each method's map over it, drawn as the method's kind
    says (``xaiexplain.explainers.registry``): signed maps in a diverging colour map centred at zero (red
    > 0: malignant evidence or brighter in the malignant version; blue < 0), unsigned sensitivities in
    green; each method on its own scale: the 99th percentile of its |relevance|, so a few extreme pixels
    do not wash out the rest."""
    from xaiexplain.explainers import registry

    plt = pyplot()
    level, width = window
    columns = 1 + len(maps)
    tile = 1.6
    figure, axes = plt.subplots(len(patches_hu), columns, figsize=(tile * columns, tile * len(patches_hu) + 0.6),
                                squeeze=False)
    for c, (method, values) in enumerate([("original", None), *maps.items()]):
        scale = display_scale(values) if values is not None else 1.0
        for r in range(len(patches_hu)):
            axis = axes[r, c]
            axis.set_xticks([])
            axis.set_yticks([])
            axis.imshow(patches_hu[r], cmap="gray", vmin=level - width / 2, vmax=level + width / 2)
            if values is not None:
                axis.imshow(overlay_colours(values[r] / scale, registry.get(method).map_kind.colour_map))
            if r == 0:
                axis.set_title(method if values is None else column_title(method), fontsize=7)
            if c == 0:
                axis.set_ylabel(row_titles[r], fontsize=7)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return save_figure(figure, path, dpi=100)


def overlay_colours(relative: np.ndarray, colour_map: str) -> np.ndarray:
    """RGBA of a map on its display scale (``display_scale``: +/- 1), drawn over a CT as its kind says: a
    diverging colour map centred at zero (red > 0, blue < 0) or, for "sequential" (unsigned) maps, green; the
    opacity rising with |value|, so what carries no relevance shows the CT."""
    plt = pyplot()
    relative = np.clip(relative, -1, 1)
    if colour_map == "sequential":
        colours = plt.get_cmap("Greens")(0.35 + 0.65 * np.abs(relative))
    else:
        colours = plt.get_cmap("RdBu_r")((relative + 1) / 2)
    colours[..., 3] = np.clip(np.abs(relative) * 1.2, 0, 0.85)
    return colours


VIEW_HALF_WIDTH_MM = 35.0
VIEW_PIXEL_MM = 0.5


def world_box(image, centre_lps, half_width_mm: float = VIEW_HALF_WIDTH_MM, pixel_mm: float = VIEW_PIXEL_MM,
              linear: bool = True) -> np.ndarray:
    """The cube of ``image`` (SimpleITK) about an LPS point, resampled onto world axes at ``pixel_mm``
    (z, y, x), whatever the image's spacing and direction: the axial, coronal and sagittal planes through the
    point are its middle planes. Outside the image: NaN."""
    import SimpleITK as sitk

    side = int(round(2 * half_width_mm / pixel_mm)) + 1
    grid = sitk.Image([side] * 3, sitk.sitkFloat32)
    grid.SetSpacing([pixel_mm] * 3)
    grid.SetOrigin([float(c) - half_width_mm for c in centre_lps])
    return sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), grid, sitk.Transform(),
                                                sitk.sitkLinear if linear else sitk.sitkNearestNeighbor, float("nan"),
                                                sitk.sitkFloat32))


def orthogonal_views(ct, maps: dict, centre_lps, path, title: str, window=LUNG_WINDOW) -> Path:
    """Rows: methods; columns: the axial, coronal and sagittal planes through ``centre_lps`` of a series (``ct``,
    SimpleITK, HU) with each method's relevance volume (``maps``: method -> SimpleITK image in the series'
    geometry) over it, in radiological convention: axial seen from the feet (the patient's right on the left),
    coronal from the front, sagittal from the patient's left, head up; square pixels in mm."""
    from xaiexplain.explainers import registry

    plt = pyplot()
    level, width = window

    def planes(box):  # (z, y, x) on world LPS axes -> the three views, as radiologists look at them
        middle = box.shape[0] // 2
        return [box[middle], box[::-1, middle, :], box[::-1, :, middle]]

    ct_planes = planes(world_box(ct, centre_lps))
    figure, axes = plt.subplots(len(maps), 3, figsize=(6.6, 2.25 * len(maps) + 0.5), squeeze=False)
    for r, (method, volume) in enumerate(maps.items()):
        values = planes(world_box(volume, centre_lps))
        scale = display_scale(np.nan_to_num(np.concatenate([v.ravel() for v in values])))
        for c, (name, background, overlay) in enumerate(zip(("axial", "coronal", "sagittal"), ct_planes, values)):
            axis = axes[r, c]
            axis.set_xticks([])
            axis.set_yticks([])
            axis.imshow(np.nan_to_num(background, nan=-1024.0), cmap="gray", vmin=level - width / 2,
                        vmax=level + width / 2)
            axis.imshow(overlay_colours(np.nan_to_num(overlay) / scale, registry.get(method).map_kind.colour_map))
            if r == 0:
                axis.set_title(name, fontsize=8)
            if c == 0:
                axis.set_ylabel(column_title(method), fontsize=7)
    figure.suptitle(title, fontsize=8)
    figure.tight_layout()
    return save_figure(figure, path, dpi=100)


def column_title(method: str) -> str:
    """A method's panel column title: its name and how its kind's colours read."""
    from xaiexplain.explainers import registry

    return f"{method}\n{registry.get(method).map_kind.legend}"


def display_scale(values: np.ndarray, percentile: float = 99.0) -> float:
    """A robust symmetric colour scale for a relevance map: a percentile of its non-zero |values|."""
    magnitude = np.abs(values[values != 0])
    return float(np.percentile(magnitude, percentile)) if magnitude.size else 1.0


def line_plot(series: dict[str, tuple[list, list]], path, x_label: str, y_label: str, title: str) -> Path:
    """One line per named (x, y) series."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    for name, (x, y) in series.items():
        axis.plot(x, y, label=name)
    axis.set_xlabel(x_label)
    axis.set_ylabel(y_label)
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return save_figure(figure, path, dpi=100)


def counterfactual_grid(images, plus, minus, probabilities, path, title: str, window=LUNG_WINDOW) -> Path:
    """Rows: images; columns x, G+(x), G-(x) (HU, at the lung window, each titled with p(malignant)) and
    R = G+(x) - G-(x) in HU, drawn as a change: red where the malignant version is brighter, blue darker."""
    plt = pyplot()
    level, width = window
    rows = len(images)
    figure, axes = plt.subplots(rows, 4, figsize=(6.4, 1.6 * rows + 0.7), squeeze=False)
    relevance = plus - minus
    scale = display_scale(relevance)
    for r in range(rows):
        for c, (name, array) in enumerate((("x", images), ("G+(x)", plus), ("G-(x)", minus),
                                           ("R = G+(x) - G-(x)", relevance))):
            axis = axes[r, c]
            axis.set_xticks([])
            axis.set_yticks([])
            if c == 3:
                axis.imshow(array[r], cmap="RdBu_r", vmin=-scale, vmax=scale)
                axis.set_xlabel(f"|R| max {np.abs(array[r]).max():.0f} HU", fontsize=7)
            else:
                axis.imshow(array[r], cmap="gray", vmin=level - width / 2, vmax=level + width / 2)
                axis.set_xlabel(f"p {probabilities[c][r]:.2f}", fontsize=7)
            if r == 0:
                axis.set_title(name, fontsize=8)
    figure.suptitle(f"{title}\nR: red brighter, blue darker in the malignant version (+/- {scale:.0f} HU)", fontsize=8)
    figure.tight_layout()
    return save_figure(figure, path, dpi=90)
