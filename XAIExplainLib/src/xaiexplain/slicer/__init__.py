"""The bridge between the library and 3D Slicer's MRML scene.

Everything else in the library works in SimpleITK images and LPS millimetres; this module converts MRML
volume nodes to and from SimpleITK images (RAS <-> LPS, any IJK-to-RAS matrix) and puts an explanation
into a scene as nodes a radiologist can look at:

- per method a relevance volume with a diverging colour table (blue: evidence for benign, red: evidence
  for malignant, transparent near zero) and a segmentation with "malignant evidence" and "benign
  evidence" segments; for ``cycle-am`` the two counterfactual volumes G+(x) and G-(x);
- a table with one row per nodule;
- for LIDC series: the annotated nodules as a markups point list and the radiologists' consensus
  contours as a segmentation.

It imports ``slicer`` only when called and uses only what real Slicer and the ``slicer-core`` wheel both
provide, so the tests run it against Slicer's own MRML classes. Every function takes a ``scene``
argument, defaulting to ``slicer.mrmlScene``.

From Slicer's Python console::

    import xaiexplain.slicer as xs
    xs.explain_volume_node(getNode("CT"), getNode("F"), ["grad-cam", "cycle-am"])

Work is split in three so the module panel can keep its GUI responsive: ``prepare`` reads the scene and
checks the request (main thread), ``compute`` runs the models and touches no MRML (any thread),
``show`` writes the nodes (main thread). ``explain_volume_node`` does all three.
"""
from xaiexplain.slicer.conversion import (
                                          OUTPUT_OF,
                                          RELEVANCE_COLORS,
                                          ROLE,
                                          SERIES_UID,
                                          add_volume_node,
                                          ijk_to_ras,
                                          image_from_volume_node,
                                          lps_to_ras,
                                          scene_or_default,
                                          update_volume_node_from_image,
                                          vtk_matrix,
)
from xaiexplain.slicer.display import (
                                          explain_volume_node,
                                          nodes_of_class,
                                          output_nodes,
                                          relevance_color_table,
                                          remove_output_nodes,
                                          show,
                                          show_method,
)
from xaiexplain.slicer.request import (
                                          Cancelled,
                                          ExplanationOutput,
                                          ExplanationRequest,
                                          VolumeExplanation,
                                          compute,
                                          prepare,
)
from xaiexplain.slicer.scene_files import explain_series_folder, load_scene, save_scene, series_output_name

__all__ = ["OUTPUT_OF", "RELEVANCE_COLORS", "ROLE", "SERIES_UID", "Cancelled", "ExplanationOutput",
           "ExplanationRequest", "VolumeExplanation", "add_volume_node", "compute", "explain_series_folder",
           "explain_volume_node", "ijk_to_ras", "image_from_volume_node", "load_scene", "lps_to_ras",
           "nodes_of_class", "output_nodes", "prepare", "relevance_color_table", "remove_output_nodes",
           "save_scene", "scene_or_default", "series_output_name", "show", "show_method",
           "update_volume_node_from_image", "vtk_matrix"]
