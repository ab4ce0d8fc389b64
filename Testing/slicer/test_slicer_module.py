"""The module's install and start-up, below the widget layer: the supported Slicer, which requirements are
missing and how they are installed (PyTorchUtils with a version requirement, pip with a list, never the
packages Slicer pins), the restart check, and what XAIExplain.py itself may and may not do."""
import ast
import re
import subprocess
import sys
from pathlib import PureWindowsPath

import pytest
from helpers import REPOSITORY
from xaiexplain.slicer import environment

MODULE_FILE = REPOSITORY / "XAIExplain" / "XAIExplain.py"
ENVIRONMENT_FILE = REPOSITORY / "XAIExplainLib" / "src" / "xaiexplain" / "slicer" / "environment.py"
SLICER_5_10 = {"SimpleITK": "2.4.0", "pydicom": "2.4.4", "numpy": "2.0.2", "scipy": "1.13.1", "torch": "2.5.1+cu124"}


def _names(requirements):
    return {re.split(r"[<>=!~ ]", r)[0].lower() for r in requirements}


def _calls(tree, name):
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)
            and (getattr(node.func, "attr", None) == name or getattr(node.func, "id", None) == name)]


def test_older_slicers_are_refused_with_one_sentence():
    for slicer_version, python in [((5, 6), (3, 9)), ((5, 8), (3, 9)), ((5, 10), (3, 11))]:
        sentence = environment.unsupported_slicer(slicer_version, python)
        assert sentence.startswith("XAIExplain needs 3D Slicer 5.10 or later (Python 3.12)")
        assert sentence.count(". ") == 0 and sentence.endswith(".")
    assert environment.unsupported_slicer((5, 10), (3, 12)) is None
    assert environment.unsupported_slicer((6, 0), (3, 13)) is None
    cmake = (REPOSITORY / "CMakeLists.txt").read_text()
    minimum = re.search(r'set\(XAIExplain_MINIMUM_SLICER_VERSION "(\d+)\.(\d+)"\)', cmake)
    assert tuple(map(int, minimum.groups())) == environment.SUPPORTED_SLICER  # the extension says the same


def test_the_check_runs_before_anything_is_installed_even_on_python_3_9():
    """Slicer 5.6 and 5.8 run Python 3.9: the module file and the environment check must parse there, and the
    check must import nothing outside the standard library."""
    for path in (MODULE_FILE, ENVIRONMENT_FILE):
        ast.parse(path.read_text(), feature_version=(3, 9))
    code = ("import sys; import xaiexplain.slicer.environment as e; "
            "e.unsupported_slicer((5, 8), (3, 9)); "
            "print(sorted(m for m in ('numpy', 'SimpleITK', 'torch', 'vtk', 'slicer') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_install_plan_installs_exactly_the_missing_third_party_packages():
    requirements = environment.library_requirements()
    assert "pydicom>=2.4" in requirements  # the pydicom Slicer 5.10 pins will do
    installed = {**SLICER_5_10, "matplotlib": "3.9.0", "captum": "0.6.0"}  # captum too old
    plan = environment.install_plan(requirements, lambda name: installed.get(name))
    assert plan.problems == [] and plan.torch_requirement is None
    names = _names(plan.pip_requirements)
    assert "captum" in names and "pylidc" in names and "matplotlib" not in names
    assert not names & {"simpleitk", "pydicom", "numpy", "torch", "scipy"}

    without_torch = environment.install_plan(requirements, lambda name: {**installed, "torch": None}.get(name))
    assert without_torch.torch_requirement == ">=2.1"  # through SlicerPyTorch, never pip
    assert "torch" not in _names(without_torch.pip_requirements)

    old_slicer = environment.install_plan(requirements, lambda name: {**installed, "pydicom": "2.2.0",
                                                                      "SimpleITK": None}.get(name))
    assert len(old_slicer.problems) == 2 and all(p.startswith("XAIExplain needs ") for p in old_slicer.problems)
    assert not {"pydicom", "simpleitk"} & _names(old_slicer.pip_requirements)

    pins = environment.constraints(lambda name: SLICER_5_10.get(name))
    assert pins.splitlines() == ["SimpleITK==2.4.0", "pydicom==2.4.4", "numpy==2.0.2", "torch==2.5.1+cu124"]


def test_pip_install_gets_a_list_that_keeps_a_windows_path_whole(monkeypatch):
    """slicer.util.pip_install splits a string with shlex (POSIX rules: backslashes are escapes), which
    mangles C:\\Users\\John Doe\\...; a list goes to pip unchanged."""
    slicer = pytest.importorskip("slicer")
    seen = []
    monkeypatch.setattr(slicer.util, "_executePythonModule", lambda module, args: seen.append(list(args)))
    path = PureWindowsPath(r"C:\Users\John Doe\AppData\Local\Temp\Slicer\xaiexplain-constraints.txt")
    slicer.util.pip_install(str(path))  # what the module did with its library folder
    assert seen[-1] == ["install", r"C:UsersJohn", r"DoeAppDataLocalTempSlicerxaiexplain-constraints.txt"]
    plan = environment.InstallPlan(None, ["captum>=0.7", "pylidc==0.2.3"], [])
    slicer.util.pip_install(plan.pip_arguments(path))
    assert seen[-1] == ["install", "--constraint", str(path), "captum>=0.7", "pylidc==0.2.3"]


def test_a_restart_is_offered_only_for_an_upgraded_package_already_imported():
    before = {"numpy": "2.0.2", "tqdm": "4.0.0", "captum": None}
    after = {"numpy": "2.0.2", "tqdm": "4.70.0", "captum": "0.9.0"}
    assert environment.loaded_upgrades(before, after.get, {"tqdm": object()}) == ["tqdm"]
    assert environment.loaded_upgrades(before, after.get, {}) == []  # not imported: the new one loads


def test_the_module_runs_the_models_in_a_process_and_installs_like_the_references():
    text = MODULE_FILE.read_text()
    tree = ast.parse(text)
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names} | {node.module.split(".")[0] for node in ast.walk(tree)
                                            if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"threading", "concurrent", "multiprocessing", "_thread"}
    assert _calls(tree, "launchConsoleProcess") and _calls(tree, "ExplanationJob")
    assert "QTimer" in text
    for call in _calls(tree, "pip_install"):  # a list: the plan's pip_arguments
        argument = call.args[0]
        assert isinstance(argument, ast.List) or (isinstance(argument, ast.Call) and getattr(
            argument.func, "attr", "") in ("pip_arguments", "upgrade_arguments"))
    [torch] = _calls(tree, "installTorch")
    assert {k.arg for k in torch.keywords} >= {"torchVersionRequirement"}
    assert "slicer.util.pip_install" in text and not re.search(r"pip_install\(\s*[\"'f]", text)


def _method(tree, class_name, name):
    [cls] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name]
    [method] = [n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == name]
    return method


def test_the_panel_installs_on_apply_stops_its_job_on_cleanup_and_tests_for_real():
    """What was: install in setup() behind a modal dialog, a cleanup() that left the job and its timer
    running into dead widgets, a self-test that skipped under --testing."""
    tree = ast.parse(MODULE_FILE.read_text())
    setup = _method(tree, "XAIExplainWidget", "setup")
    assert not [c for name in ("ensureRequirements", "pip_install", "installTorch", "confirmOkCancelDisplay")
                for c in _calls(setup, name)]
    assert _calls(_method(tree, "XAIExplainWidget", "onApplyButton"), "_installRequirements")
    assert _calls(_method(tree, "XAIExplainWidget", "_installRequirements"), "ensureRequirements")
    for handler in ("cleanup", "onSceneStartClose"):
        assert _calls(_method(tree, "XAIExplainWidget", handler), "_stopJob"), handler
    stop = _method(tree, "XAIExplainWidget", "_stopJob")
    assert _calls(stop, "stop") and _calls(stop, "cancel")
    assert "skipTest" not in MODULE_FILE.read_text()
    assert _calls(_method(tree, "XAIExplainTest", "test_ExplainGeneratedVolume"), "ensureRequirements")


# the panel's entry points: a Qt slot (or the timer's) whose exception would reach only the Python console
ENTRY_POINTS = {"onApplyButton": "clicked", "onFindDevices": "clicked", "onShowPackages": "clicked",
                "onUpgradePackages": "clicked", "_poll": "timeout", "_jumpToSelectedNodule": "connect",
                "_showMethod": "currentTextChanged", "_opacityChanged": "valueChanged"}


def _is_harmless(statement) -> bool:
    """A statement that cannot raise a user's error: a docstring, a constant assigned, a name returned, or
    the panel's own refresh."""
    if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
        return True
    if isinstance(statement, ast.Assign) and isinstance(statement.value, ast.Constant):
        return True
    if isinstance(statement, ast.Return) and isinstance(statement.value, (ast.Name, type(None))):
        return True
    return (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call)
            and getattr(statement.value.func, "attr", "") == "_updateGui")


def _reports_errors(function) -> bool:
    """The function's work runs inside ``with self._reportingErrors(...)``."""
    guarded = [s for s in function.body if isinstance(s, ast.With) and any(
        isinstance(item.context_expr, ast.Call) and getattr(item.context_expr.func, "attr", "") == "_reportingErrors"
        for item in s.items)]
    return len(guarded) == 1 and all(_is_harmless(s) for s in function.body if s is not guarded[0])


def test_every_entry_point_of_the_panel_shows_its_failures():
    """Apply (with the install it starts), the GPU search, the packages, the job's timer, a click on a
    results row and the overlay controls: what fails is shown in a dialog, the status line and the log."""
    tree = ast.parse(MODULE_FILE.read_text())
    setup = _method(tree, "XAIExplainWidget", "setup")
    connected = {argument.attr for call in _calls(setup, "connect") for argument in call.args
                 if isinstance(argument, ast.Attribute)}
    assert set(ENTRY_POINTS) <= connected
    for name in [*ENTRY_POINTS, "_installRequirements"]:
        assert _reports_errors(_method(tree, "XAIExplainWidget", name)), name
    handler = _method(tree, "XAIExplainWidget", "_reportingErrors")
    for shown in ("errorDisplay", "_setStatus", "_log"):
        assert _calls(handler, shown), shown
    [guard] = [node for node in handler.body if isinstance(node, ast.Try)]
    [catch] = guard.handlers
    assert catch.type.id == "Exception" and not [n for n in ast.walk(catch) if isinstance(n, ast.Raise)]
    # the install reports each step in the status line, the failures of the worker reach a dialog
    assert len(_calls(_method(tree, "XAIExplainLogic", "ensureRequirements"), "report")) >= 3
    assert _calls(_method(tree, "XAIExplainWidget", "_finished"), "errorDisplay")


def test_the_panel_controls_are_the_ones_slicer_users_know():
    """ctkPathLineEdit for the bundle (a browse button), a scalar-volume selector without child types (no
    label maps) and the module's own volumes hidden, device choices from the worker, a log box, the
    installed packages listed and upgradable."""
    ui = (REPOSITORY / "XAIExplain" / "Resources" / "UI" / "XAIExplain.ui").read_text()
    for widget in ('class="ctkPathLineEdit" name="modelPathLineEdit"', 'class="QComboBox" name="deviceComboBox"',
                   'name="findDevicesButton"', 'class="QPlainTextEdit" name="logTextEdit"',
                   'name="showPackagesButton"', 'name="upgradePackagesButton"'):
        assert widget in ui, widget
    assert "useGpu" not in ui and "QLineEdit" not in ui
    text = MODULE_FILE.read_text()
    assert "hiddenNodeIDs = xs.not_inputs(" in text and "showChildNodeTypes = False" in text
    assert "xs.usable_devices(self.launch)" in text and "mrmlTableRowIndex(" not in text
    assert "xs.table_row_of_view_row(" in text


def test_failures_are_one_sentence_and_the_packages_are_listed_and_upgraded_without_slicers_own(tmp_path):
    failed = subprocess.CalledProcessError(1, ["PythonSlicer", "-m", "pip", "install", "captum"],
                                           output="Collecting captum\nERROR: No matching distribution found\n")
    assert environment.failure_sentence(failed) == ("PythonSlicer -m pip install captum failed with exit status 1: "
                                                    "ERROR: No matching distribution found")
    assert environment.failure_sentence(PermissionError(13, "Permission denied", "/x")) == "Permission denied: /x"
    assert environment.failure_sentence(OSError("[WinError 126] c10.dll")) == "[WinError 126] c10.dll"
    requirements = environment.library_requirements()
    report = environment.package_report(requirements, lambda name: SLICER_5_10.get(name))
    assert "pydicom>=2.4: 2.4.4" in report and any(line.endswith(": not installed") for line in report)
    arguments = environment.upgrade_arguments(requirements, tmp_path / "constraints.txt")
    assert arguments[:5] == ["--upgrade", "--upgrade-strategy", "only-if-needed", "--constraint",
                             str(tmp_path / "constraints.txt")]
    assert "captum" in _names(arguments[5:]) and not _names(arguments[5:]) & {"torch", "simpleitk", "pydicom", "numpy"}
