"""No torch in Slicer's own process: the module lists the methods, checks and writes a request and shows the
results from the method table, which needs no torch; only the worker process imports the registry (torch,
captum). A torch that cannot load (a DLL that fails on Windows raises OSError, not ImportError) leaves
the panel working."""
import ast
import subprocess
import sys
import textwrap

import pytest
import xaiexplain.slicer as xs
from helpers import REPOSITORY
from xaiexplain.errors import XAIExplainError
from xaiexplain.slicer import methods

MODULE_FILE = REPOSITORY / "XAIExplain" / "XAIExplain.py"
HEAVY = ("torch", "captum", "torchvision")


def test_the_method_table_is_in_step_with_the_registry():
    assert methods.method_table() == methods.table_from_registry(), \
        "the method table is stale: run python -m xaiexplain.slicer.methods"


def test_the_table_refuses_what_the_registry_refuses():
    from xaiexplain.explainers import registry
    from xaiexplain.explainers.on_patches import split_options

    for name in ("no-such-method", "iterative:iterative:lrp"):
        with pytest.raises(XAIExplainError) as by_registry:
            registry.get(name)
        with pytest.raises(XAIExplainError) as by_table:
            methods.method_record(name)
        assert str(by_table.value) == str(by_registry.value)
    with pytest.raises(XAIExplainError) as by_worker:
        split_options(["grad-cam", "saliency"], {"steps": 8})
    with pytest.raises(XAIExplainError) as by_table:
        methods.check_methods_and_options(["grad-cam", "saliency"], {"steps": 8})
    assert str(by_table.value) == str(by_worker.value)
    methods.check_methods_and_options(["iterative:integrated-gradients"], {"steps": 8, "decay": 0.5})
    assert methods.map_kind("cycle-am") == registry.get("cycle-am").map_kind


def _modules_the_module_imports() -> list[str]:
    """The library modules XAIExplain.py imports: by import statements, and through the lazy names of
    ``xaiexplain.slicer`` it uses (``xs.prepare`` loads ``xaiexplain.slicer.request``)."""
    tree = ast.parse(MODULE_FILE.read_text())
    modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    lazy_names = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                  and isinstance(node.value, ast.Name) and node.value.id == "xs"}
    modules |= {f"xaiexplain.slicer.{xs._MODULE_OF[name]}" for name in lazy_names if name in xs._MODULE_OF}
    return sorted(m for m in modules if m.split(".")[0] == "xaiexplain")


def test_what_the_module_imports_imports_no_torch():
    modules = _modules_the_module_imports()
    assert {"xaiexplain.slicer.methods", "xaiexplain.slicer.request", "xaiexplain.slicer.display",
            "xaiexplain.slicer.job", "xaiexplain.slicer.environment"} <= set(modules)
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", "import " + ", ".join(modules)],
                            capture_output=True, text=True, check=True)
    imported = [line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.count("|") == 2]
    assert "xaiexplain.slicer.display" in imported  # the timing lines were read
    assert not [name for name in imported if name.split(".")[0] in HEAVY]


def test_the_panels_work_needs_no_torch_even_one_that_fails_to_load(tmp_path):
    """In a process where importing torch raises OSError (as a torch DLL that fails to load on Windows):
    the method list, a request checked and written for the worker, and results shown in the scene."""
    pytest.importorskip("slicer")
    script = textwrap.dedent(f"""
        import sys
        from importlib.abc import MetaPathFinder

        class BrokenTorch(MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {HEAVY!r}:
                    raise OSError("[WinError 126] The specified module could not be found (c10.dll)")

        sys.meta_path.insert(0, BrokenTorch())
        import numpy as np, SimpleITK as sitk, slicer
        import xaiexplain.slicer as xs
        from xaiexplain.slicer.request import ExplanationOutput

        assert "cycle-am" in xs.method_names() and "iterative:lrp" in xs.method_names()
        scene = slicer.vtkMRMLScene()
        volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
        slicer.util.updateVolumeFromArray(volume, np.full((20, 64, 64), -800.0, np.float32))
        volume.CreateDefaultDisplayNodes()
        request = xs.prepare(volume, [[32.0, 32.0, 10.0]], ["grad-cam"], scene=scene)
        xs.write_request(r"{tmp_path}", request, slicer_pid=1)
        image = xs.image_from_volume_node(volume)
        output = ExplanationOutput(relevance={{"grad-cam": image}}, labels={{"grad-cam": sitk.Cast(image * 0, sitk.sitkUInt8)}},
                                   counterfactuals={{}}, nodules=[{{"name": "nodule_00", "center_lps": [-32.0, -32.0, 10.0],
                                   "slices": 5, "probability": 0.7, "decision": "malignant", "threshold": 0.5,
                                   "methods": {{"grad-cam": {{}}}}}}])
        result = xs.show(request, output, scene)
        assert result.relevance["grad-cam"].GetDisplayNode().GetColorNode() is not None
        print(sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r}))
        """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"
