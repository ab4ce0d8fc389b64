"""Model bundles: a folder with ``config.json`` (the network's source, its contract: input and output specs,
named layers, decision threshold; provenance, metrics) and the network: ``model.safetensors`` (weights of
one of our architectures, a user's Python class or a MONAI network) or ``model.pt`` (TorchScript). Loading
never unpickles anything (``xaiexplain.models.sources``). Bundles shipped with the library live in
``xaiexplain/bundled/<name>/`` and load by name.
"""
from __future__ import annotations

import hashlib
import inspect
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from xaiexplain.data.patches import PATCH_SIZE
from xaiexplain.errors import XAIExplainError
from xaiexplain.io.files import output_set
from xaiexplain.io.json_input import read_json
from xaiexplain.models import architectures as models
from xaiexplain.models import sources
from xaiexplain.models.contract import (Contract, DecisionScore, InputSpec, OutputSpec, requirement_reasons,
                                        spatial_layers)
from xaiexplain.models.layer_chain import is_torchscript

FORMAT = "xaiexplain-bundle"
FORMAT_VERSION = 1
BUNDLED = Path(__file__).parents[1] / "bundled"  # beside the subpackages: models and the nodule table
DEFAULT_CLASSIFIER = "demo-classifier"
ROLE_NAMES = {"classifier": "a classifier", "cycle-am": "a cycle-am bundle"}
# Bounds of a bundle's input.patch_size (px) and input.field_of_view_mm: far beyond any patch of a CT slice
# (512 px, at most about 500 mm across), so only nonsense is refused.
MAX_PATCH_SIZE = 2048
MAX_FIELD_OF_VIEW_MM = 1000.0


@dataclass
class Bundle:
    path: Path
    config: dict
    model: torch.nn.Module  # in eval mode

    @property
    def kind(self) -> str:
        """What the bundle is for: "classifier" or "cycle-am" (a user's model is a classifier)."""
        ours = self.source["kind"] == "architecture"
        return self.config.get("kind", models.ROLES[self.config["architecture"]] if ours else "classifier")

    @property
    def source(self) -> dict:
        return sources.source_of(self.config)

    @cached_property
    def contract(self) -> Contract:
        """The model contract (``xaiexplain.models.contract``): input and output specs and named layers."""
        layers = self.config.get("layers") or {}
        named = layers.get("named")
        default = layers.get("default")
        if named is None and hasattr(self.model, "named_layers") and not is_torchscript(self.model):
            named = self.model.named_layers()  # our classifier: block1 .. block4
        if default is None and isinstance(self.model, models.NoduleClassifier):
            default = models.DEFAULT_CAM_LAYER
        if default is None and self.kind == "classifier":
            default = self.spatial_layers[-1] if self.spatial_layers else None
        return Contract(self.input, OutputSpec.from_config(self.config.get("output")), dict(named or {}), default)

    @cached_property
    def input(self) -> InputSpec:
        return InputSpec.from_config(self.config["input"])

    @cached_property
    def spatial_layers(self) -> list[str]:
        """Module paths of the layers whose output is a map over the patch, in call order (one probe pass)."""
        return spatial_layers(self.model, self.input, self.device)

    @cached_property
    def requirement_reasons(self) -> dict[str, str | None]:
        """Why the network does not meet each of the methods' requirements (None: it does)."""
        return requirement_reasons(self.model, self.contract, self.spatial_layers)

    def score_model(self) -> DecisionScore:
        """The network followed by its decision's log-odds (N, 1): what every method explains."""
        return DecisionScore(self.model, self.contract.output).eval()

    def require(self, role: str) -> "Bundle":
        """This bundle, or an XAIExplainError if it is not of ``role``."""
        if role not in ROLE_NAMES:
            raise XAIExplainError(f"unknown bundle role {role!r}; known: {', '.join(ROLE_NAMES)}")
        if self.kind != role:
            raise XAIExplainError(f"{shown_name(self.path)} is a {self.kind} bundle, not {ROLE_NAMES[role]}")
        return self

    @property
    def threshold(self) -> float:
        """Decision threshold on the malignancy probability."""
        return float(self.require("classifier").config["decision_threshold"])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def input_spec(self) -> dict:
        return self.config["input"]

    @property
    def patch_size(self) -> int:
        """The rows of the patches the network reads, in pixels (their shape: ``input.patch_size``)."""
        return self.input.patch_size[-2]

    @property
    def patch_shape(self) -> tuple[int, ...]:
        """The shape of one HU patch the network reads: (rows, columns), (slices, rows, columns) for 2.5D,
        (depth, rows, columns) for a volume."""
        return self.input.patch_size if self.input.slices == 1 else self.input.shape

    def input_value(self, hu: float) -> float:
        """The network input value of ``hu`` (as ``to_tensor`` maps it): for baselines."""
        return self.input.input_value(hu)

    def to_tensor(self, patches_hu: np.ndarray) -> torch.Tensor:
        """(N, H, W) HU patches (or (N, slices, H, W) for 2.5D) -> (N, C, H, W) network input by the input spec
        ((N, D, H, W) volumes -> (N, 1, D, H, W))
        (the HU window mapped to [0, 1], or standardised), HU clipped to the window (a classifier) or to
        ``input.hu_range`` (cycle-am generators, which read and change values beyond the window)."""
        values = self.input.network_values(patches_hu)
        return torch.from_numpy(values[:, None] if self.input.slices == 1 else values).to(self.device)

    def to_hu(self, x: torch.Tensor) -> np.ndarray:
        """Inverse of ``to_tensor`` (within what it clips to)."""
        return self.input.hu_values(x[:, 0].detach().float().cpu().numpy())

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the model's weights and buffers (names, dtypes, shapes, values): which network this is,
        whatever file it came from. A cycle-am bundle records its classifier's."""
        return weights_fingerprint(self.model)

    @torch.no_grad()
    def probability(self, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
        """Probability of the positive class (malignant) of network inputs (N, C, H, W), by the output spec."""
        output = self.require("classifier").contract.output
        parts = [output.probability(self.model(x[n:n + batch_size])) for n in range(0, len(x), batch_size)]
        return torch.cat(parts).cpu().numpy() if parts else np.zeros(0, np.float32)

    def predict(self, patches_hu: np.ndarray) -> np.ndarray:
        """Malignancy probability of HU patches (N, H, W)."""
        return self.probability(self.to_tensor(patches_hu))

    @cached_property
    def _flat_probabilities(self) -> dict[float, float]:
        return {}

    def flat_probability(self, hu: float) -> float:
        """Malignancy probability of a flat patch at ``hu`` (kept: several methods check their references)."""
        if hu not in self._flat_probabilities:
            flat = np.full((1, *self.patch_shape), hu, np.float32)
            self._flat_probabilities[hu] = float(self.predict(flat)[0])
        return self._flat_probabilities[hu]


def network_input(patches_hu: np.ndarray, spec: dict) -> np.ndarray:
    """HU -> network values (float32, same shape) by an input spec (``InputSpec.network_values``)."""
    return InputSpec.from_config(spec).network_values(patches_hu)


def weights_fingerprint(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def shown_name(path: Path) -> str:
    """A bundle as users name it: a shipped one by its name, others by their folder."""
    return path.name if path.parent == BUNDLED else str(path)


def bundled_names() -> list[str]:
    return sorted(p.name for p in BUNDLED.iterdir() if (p / "config.json").exists()) if BUNDLED.exists() else []


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _implausible(value, default) -> str | None:
    """What a constructor argument from JSON should be, by its default, if it is not (sizes: positive integers)."""
    if isinstance(default, (tuple, list)):
        return None if isinstance(value, list) and value and all(map(_positive_int, value)) else \
            "a list of positive integers"
    if isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, list):  # a size per axis (a volume's depth, rows, columns)
            return None if value and all(map(_positive_int, value)) else "a positive integer or a list of them"
        return None if _positive_int(value) else "a positive integer"
    return "a finite number" if isinstance(default, float) and not _number(value) else None


def check_config(config, config_file) -> str:
    """The role ("classifier" or "cycle-am") of a bundle's parsed ``config.json``, or an XAIExplainError
    naming ``config_file`` and the first thing wrong with it."""
    def refuse(problem):
        raise XAIExplainError(f"{config_file} {problem}")

    if not isinstance(config, dict) or config.get("format") != FORMAT:
        refuse(f'is not an XAIExplain bundle configuration (a JSON object with "format": "{FORMAT}")')
    if sources.check_source(sources.source_of(config), config_file) != "architecture":
        if config.get("kind", "classifier") != "classifier":
            refuse("says its kind is not classifier, but only classifiers come from a TorchScript file, a Python "
                   "class or MONAI")
        _check_contract(config, refuse)
        return "classifier"
    architecture = config.get("architecture")
    if not isinstance(architecture, str) or architecture not in models.ARCHITECTURES:
        refuse(f'needs architecture to be one of {", ".join(sorted(models.ARCHITECTURES))}, not {architecture!r}')
    kind = config.get("kind", models.ROLES[architecture])
    if kind != models.ROLES[architecture]:
        refuse(f'says its kind is {kind!r}, but its architecture {architecture} is a {models.ROLES[architecture]}')
    arguments = config.get("arguments", {})
    if not isinstance(arguments, dict):
        refuse(f"needs arguments to be a JSON object of {architecture}'s constructor arguments, not {arguments!r}")
    parameters = inspect.signature(models.ARCHITECTURES[architecture]).parameters
    for key, value in arguments.items():
        if key not in parameters:
            refuse(f'gives {architecture} an argument {key!r} it does not take (it takes {", ".join(parameters)})')
        if expected := _implausible(value, parameters[key].default):
            refuse(f"needs arguments.{key} to be {expected}, not {value!r}")
    _check_contract(config, refuse, kind)
    spec = config.get("input")
    window = spec["hu_window"]
    if kind == "cycle-am":
        hu_range = spec.get("hu_range")
        if not (isinstance(hu_range, list) and len(hu_range) == 2 and all(map(_number, hu_range))
                and hu_range[0] <= window[0] < window[1] <= hu_range[1]):
            refuse("has no input.hu_range around its window: it was made by an earlier XAIExplain, whose "
                   "generators squash their output into the window; train it again with xaiexplain-train cycle-am")
        recorded = config.get("classifier", {}).get("weights_sha256") if isinstance(config.get("classifier"), dict) else None
        if not (isinstance(recorded, str) and len(recorded) == 64):
            refuse("does not record the weights_sha256 of the classifier it was trained against (classifier."
                   "weights_sha256); train it again with xaiexplain-train cycle-am")
    return kind


def _check_contract(config: dict, refuse, kind: str = "classifier") -> None:
    """The decision threshold, input and output specs of a config, each refused in one sentence."""
    threshold = config.get("decision_threshold")
    if (kind == "classifier" or threshold is not None) and not (_number(threshold) and 0 <= threshold <= 1):
        refuse(f"needs decision_threshold to be a number from 0 to 1, not {threshold!r}")
    spec = config.get("input")
    window = spec.get("hu_window") if isinstance(spec, dict) else None
    if not (isinstance(window, list) and len(window) == 2 and all(map(_number, window)) and window[0] < window[1]):
        refuse(f"needs input.hu_window to be two finite numbers [low, high] with low < high, not {window!r}")
    for name, default, fits, what in (
            ("patch_size", PATCH_SIZE, lambda v: _positive_int(v) and v <= MAX_PATCH_SIZE,
             f"a whole number of pixels from 1 to {MAX_PATCH_SIZE}"),
            ("field_of_view_mm", 1.0, lambda v: _number(v) and 0 < v <= MAX_FIELD_OF_VIEW_MM,
             f"a number of millimetres above 0 and at most {MAX_FIELD_OF_VIEW_MM:g}")):
        values = spec.get(name, default)
        if not all(map(fits, values if isinstance(values, list) and len(values) in (2, 3) else [values])):
            refuse(f"needs input.{name} to be {what} (or one per axis), not {values!r}")
    try:
        InputSpec.from_config(spec)
        if kind == "classifier":
            OutputSpec.from_config(config.get("output"))
    except XAIExplainError as error:
        refuse(f"does not fit the model contract: {error}")
    layers = config.get("layers")
    if layers is not None and not (isinstance(layers, dict) and isinstance(layers.get("named", {}), dict)):
        refuse('needs layers to be {"named": {name: module path}, "default": name or module path}')


def load_bundle(name_or_path=DEFAULT_CLASSIFIER, device: str | torch.device = "cpu",
                role: str | None = "classifier") -> Bundle:
    """A model bundle, its configuration checked against the schema and its weights to be finite.

    Parameters
    ----------
    name_or_path : str, path or Bundle
        A bundle folder (``config.json`` + ``model.safetensors``) or the name of a shipped bundle
        (``demo-classifier``, ``demo-cycle-am``). Nothing is ever unpickled.
    device : str or torch.device
        Where the model runs (``"cpu"``, ``"cuda"``).
    role : {"classifier", "cycle-am", None}
        The kind of bundle the caller needs; a bundle of the other kind is refused (None: either).

    Returns
    -------
    Bundle
        ``model`` (in eval mode), ``config``, ``threshold`` (the decision threshold on p(malignant)),
        ``predict(patches_hu)``.

    Raises
    ------
    XAIExplainError
        One sentence for a missing or damaged bundle, a config that does not fit the schema, NaN weights.

    Examples
    --------
    >>> import xaiexplain
    >>> bundle = xaiexplain.load_bundle("demo-classifier")
    >>> 0 < bundle.threshold < 1
    True
    """
    if role is not None and role not in ROLE_NAMES:
        raise XAIExplainError(f"unknown bundle role {role!r}; known: {', '.join(ROLE_NAMES)}")
    if isinstance(name_or_path, Bundle):
        return name_or_path.require(role) if role else name_or_path
    path = Path(name_or_path)
    if not path.is_dir():
        if (BUNDLED / str(name_or_path)).is_dir():
            path = BUNDLED / str(name_or_path)
        else:
            raise XAIExplainError(f"no model bundle {name_or_path}: give a bundle folder or one of "
                                  f"{', '.join(bundled_names()) or '(none shipped)'}")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise XAIExplainError(f"{path} is not a model bundle: it needs config.json and model.safetensors")
    config = read_json(config_file)
    kind = check_config(config, config_file)
    if role is not None and kind != role:
        raise XAIExplainError(f"{name_or_path} is a {kind} bundle, not {ROLE_NAMES[role]}")
    source = sources.source_of(config)["kind"]
    missing = [name for name in sources.weights_files(source) if not (path / name).is_file()]
    if missing:
        raise XAIExplainError(f"{path} is not a whole model bundle: {sources.SOURCES[source]} needs "
                              f"{' and '.join(missing)} beside config.json")
    model = sources.build_network(path, config, config_file)
    if source != "torchscript":
        _load_weights(model, path / sources.WEIGHTS_FILE, config_file)
    model.eval()
    _check_reads_its_patches(model, config, config_file, kind)
    model.to(device)
    return Bundle(path=path, config=config, model=model)


def _load_weights(model: torch.nn.Module, weights_file: Path, config_file: Path) -> None:
    try:
        from safetensors.torch import load_file

        state = load_file(str(weights_file))
    except Exception as error:  # safetensors raises its own types for damaged files
        raise XAIExplainError(f"{weights_file} cannot be read as safetensors ({error})") from None
    damaged = [name for name, tensor in state.items() if not torch.isfinite(tensor).all()]
    if damaged:
        more = f" and {len(damaged) - 1} more" if len(damaged) > 1 else ""
        raise XAIExplainError(f"{weights_file} holds NaN or infinite weights (in {damaged[0]}{more})")
    try:
        model.load_state_dict(state)
    except RuntimeError:
        raise XAIExplainError(f"the weights in {weights_file} do not fit the architecture in {config_file}") from None


def _check_reads_its_patches(model: torch.nn.Module, config: dict, config_file: Path, kind: str) -> None:
    """One forward pass on a blank patch of the bundle's input spec: a network built for other patches (a
    classifier whose linear layer expects another size) or whose output does not fit its output spec is
    refused here, not at inference."""
    spec = InputSpec.from_config(config["input"])
    shape = " x ".join(map(str, spec.patch_size))
    channels = "one-channel" if spec.slices == 1 else f"{spec.slices}-channel"
    try:
        with torch.no_grad():
            output = model(torch.zeros(1, *spec.shape))
    except Exception:  # a user's network may raise anything on the wrong input
        raise XAIExplainError(f"the network in {config_file.parent} does not read {channels} patches of its "
                              f"input.patch_size, {shape} px") from None
    if kind != "classifier":
        return
    try:
        score = OutputSpec.from_config(config.get("output")).log_odds(output)
    except XAIExplainError as error:
        raise XAIExplainError(f"the output of the network in {config_file.parent} does not fit its output spec: "
                              f"{error}") from None
    if tuple(score.shape) != (1,):
        raise XAIExplainError(f"the network in {config_file.parent} does not give one decision per {channels} "
                              f"patch of its input.patch_size, {shape} px")


def save_bundle(folder, model: torch.nn.Module, config: dict, extra_files: dict | None = None) -> Path:
    """Write ``model`` and ``config`` as a bundle folder: one output set with ``config.json`` as its manifest
    (an existing folder keeps every file that no earlier bundle wrote). ``extra_files``: file name ->
    function writing that file at the path it is given (training curves), part of the same set."""
    from safetensors.torch import save_file

    config = {"format": FORMAT, "format_version": FORMAT_VERSION, **config}
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    with output_set(folder, "config.json") as written:
        save_file(state, str(written.path("model.safetensors")))
        for name, write in (extra_files or {}).items():
            write(written.path(name))
        written.manifest_data = config
    return Path(folder)
