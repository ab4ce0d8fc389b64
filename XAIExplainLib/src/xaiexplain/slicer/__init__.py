"""The bridge between the library and 3D Slicer's MRML scene.

Everything else in the library works in SimpleITK images and LPS millimetres; this package converts MRML
volume nodes to and from SimpleITK images (RAS <-> LPS, any IJK-to-RAS matrix) and puts an explanation
into a scene as nodes a radiologist can look at:

- per method a relevance volume with a colour table of the method's kind (evidence: red for malignant,
  blue for benign; change: red brighter, blue darker in the malignant version; sensitivity: green) and a
  segmentation with the kind's segments; for ``cycle-am`` the two counterfactual volumes G+(x) and G-(x);
- a table with one row per nodule;
- for LIDC series: the annotated nodules as a markups point list and the radiologists' consensus
  contours as a segmentation.

It imports ``slicer`` only when called and uses only what real Slicer and the ``slicer-core`` wheel both
provide, so the tests run it against Slicer's own MRML classes. Every function takes a ``scene``
argument, defaulting to ``slicer.mrmlScene``.

From Slicer's Python console::

    import xaiexplain.slicer as xs
    xs.explain_volume_node(getNode("CT"), getNode("F"), ["grad-cam", "cycle-am"])

The work is split in three: ``prepare`` reads the scene and checks the request, ``compute`` runs the
models and touches no MRML, ``show`` writes the nodes. ``explain_volume_node`` does all three in this
process. The module panel runs ``compute`` in a separate process instead (``ExplanationJob``: a request
folder in, progress lines and a results folder out; see ``job_files``), which also exports the explanation as
DICOM and NIfTI on request (``exports.ExportChoice``), the DICOM objects then added to Slicer's DICOM database.

Importing this package imports nothing but the standard library: the names below load their modules on
first use, so that ``xaiexplain.slicer.environment`` can check and install requirements before anything
else of the library can be imported.
"""
import importlib

_NAMES = {
    "conversion": ["OUTPUT_OF", "ROLE", "SERIES_UID", "add_volume_node", "ijk_to_ras", "image_from_volume_node",
                   "lps_to_ras", "nodes_of_class", "scene_or_default", "update_volume_node_from_image", "vtk_matrix"],
    "colours": ["colour_table_name", "relevance_color_table"],
    "display": ["explain_volume_node", "output_nodes", "remove_output_nodes", "show", "show_method"],
    "views": ["jump_to_nodule", "set_overlay_opacity", "table_row_of_view_row"],
    "request": ["ExplanationOutput", "ExplanationRequest", "VolumeExplanation", "compute", "prepare"],
    "inputs": ["POINT_LIST_EVENTS", "apply_problem", "defined_points_ras", "not_inputs"],
    "methods": ["map_kind", "method_names", "method_table", "refused_methods"],
    "job_files": ["read_request", "read_results", "write_request", "write_results"],
    "job": ["ExplanationJob", "usable_devices"],
    "exports": ["ExportChoice", "add_to_dicom_database", "exported_dicom_files", "source_series_files"],
    "scene_files": ["explain_series_folder", "load_scene", "save_scene", "series_output_name"],
}
_MODULE_OF = {name: module for module, names in _NAMES.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name):
    if name in _MODULE_OF:
        return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
