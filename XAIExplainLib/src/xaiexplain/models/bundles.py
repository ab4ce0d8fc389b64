"""Model bundles: a folder with ``config.json`` (architecture, input spec, threshold, provenance, metrics)
and ``model.safetensors`` (the weights). Loading never unpickles anything.

Bundles shipped with the library live in ``xaiexplain/bundled/<name>/`` and load by name.
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
        """What the bundle is for: "classifier" or "cycle-am"."""
        return self.config.get("kind", models.ROLES[self.config["architecture"]])

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
        """The side of the square patches the network reads, in pixels."""
        return self.input_spec.get("patch_size", PATCH_SIZE)

    def input_value(self, hu: float) -> float:
        """The network input value of ``hu`` (as ``to_tensor`` maps it): for baselines."""
        low, high = self.input_spec["hu_window"]
        return float(np.clip((hu - low) / (high - low), 0.0, 1.0))

    def to_tensor(self, patches_hu: np.ndarray) -> torch.Tensor:
        """(N, H, W) HU patches -> (N, 1, H, W) network input: the HU window mapped to [0, 1], HU clipped to
        the window (a classifier) or to ``input.hu_range`` (cycle-am generators, which read and change values
        beyond the window)."""
        return torch.from_numpy(network_input(patches_hu, self.input_spec)[:, None]).to(self.device)

    def to_hu(self, x: torch.Tensor) -> np.ndarray:
        """Inverse of ``to_tensor`` (within what it clips to)."""
        low, high = self.input_spec["hu_window"]
        return x[:, 0].detach().float().cpu().numpy() * (high - low) + low

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the model's weights and buffers (names, dtypes, shapes, values): which network this is,
        whatever file it came from. A cycle-am bundle records its classifier's."""
        return weights_fingerprint(self.model)

    @torch.no_grad()
    def probability(self, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
        """Malignancy probability of network inputs (N, 1, H, W)."""
        self.require("classifier")
        parts = [torch.softmax(self.model(x[n:n + batch_size]).float(), dim=1)[:, models.MALIGNANT]
                 for n in range(0, len(x), batch_size)]
        return torch.cat(parts).cpu().numpy()

    def predict(self, patches_hu: np.ndarray) -> np.ndarray:
        """Malignancy probability of HU patches (N, H, W)."""
        return self.probability(self.to_tensor(patches_hu))

    @cached_property
    def _flat_probabilities(self) -> dict[float, float]:
        return {}

    def flat_probability(self, hu: float) -> float:
        """Malignancy probability of a flat patch at ``hu`` (kept: several methods check their references)."""
        if hu not in self._flat_probabilities:
            flat = np.full((1, self.patch_size, self.patch_size), hu, np.float32)
            self._flat_probabilities[hu] = float(self.predict(flat)[0])
        return self._flat_probabilities[hu]


def network_input(patches_hu: np.ndarray, spec: dict) -> np.ndarray:
    """HU -> network values (float32, same shape) by an input spec: ``hu_window`` mapped to [0, 1], HU
    clipped to the window or to ``hu_range`` where the spec has one."""
    low, high = spec["hu_window"]
    clip_low, clip_high = spec.get("hu_range", (low, high))
    return (np.clip(np.asarray(patches_hu, np.float32), clip_low, clip_high) - low) / (high - low)


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
        return None if _positive_int(value) else "a positive integer"
    return "a finite number" if isinstance(default, float) and not _number(value) else None


def check_config(config, config_file) -> str:
    """The role ("classifier" or "cycle-am") of a bundle's parsed ``config.json``, or an XAIExplainError
    naming ``config_file`` and the first thing wrong with it."""
    def refuse(problem):
        raise XAIExplainError(f"{config_file} {problem}")

    if not isinstance(config, dict) or config.get("format") != FORMAT:
        refuse(f'is not an XAIExplain bundle configuration (a JSON object with "format": "{FORMAT}")')
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
    threshold = config.get("decision_threshold")
    if (kind == "classifier" or threshold is not None) and not (_number(threshold) and 0 <= threshold <= 1):
        refuse(f"needs decision_threshold to be a number from 0 to 1, not {threshold!r}")
    spec = config.get("input")
    window = spec.get("hu_window") if isinstance(spec, dict) else None
    if not (isinstance(window, list) and len(window) == 2 and all(map(_number, window)) and window[0] < window[1]):
        refuse(f"needs input.hu_window to be two finite numbers [low, high] with low < high, not {window!r}")
    if "patch_size" in spec and not (_positive_int(spec["patch_size"]) and spec["patch_size"] <= MAX_PATCH_SIZE):
        refuse(f"needs input.patch_size to be a whole number of pixels from 1 to {MAX_PATCH_SIZE}, not "
               f"{spec['patch_size']!r}")
    field_of_view = spec.get("field_of_view_mm", 1.0)
    if not (_number(field_of_view) and 0 < field_of_view <= MAX_FIELD_OF_VIEW_MM):
        refuse(f"needs input.field_of_view_mm to be a number of millimetres above 0 and at most "
               f"{MAX_FIELD_OF_VIEW_MM:g}, not {field_of_view!r}")
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
    config_file, weights_file = path / "config.json", path / "model.safetensors"
    if not config_file.is_file() or not weights_file.is_file():
        raise XAIExplainError(f"{path} is not a model bundle: it needs config.json and model.safetensors")
    config = read_json(config_file)
    kind = check_config(config, config_file)
    if role is not None and kind != role:
        raise XAIExplainError(f"{name_or_path} is a {kind} bundle, not {ROLE_NAMES[role]}")
    try:
        model = models.build(config["architecture"], config.get("arguments", {}))
    except (TypeError, ValueError, RuntimeError) as error:
        raise XAIExplainError(f"the architecture in {config_file} cannot be built from its arguments "
                              f"({error})") from None
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
    model.eval()
    _check_reads_its_patches(model, config, config_file)
    model.to(device)
    return Bundle(path=path, config=config, model=model)


def _check_reads_its_patches(model: torch.nn.Module, config: dict, config_file: Path) -> None:
    """One forward pass on a blank patch of the bundle's input.patch_size: a network built for other
    patches (a classifier whose linear layer expects another size) is refused here, not at inference."""
    size = config["input"].get("patch_size", PATCH_SIZE)
    try:
        with torch.no_grad():
            output = model(torch.zeros(1, 1, size, size))
    except RuntimeError:
        output = None
    expected = (1, len(models.CLASS_NAMES)) if models.ROLES[config["architecture"]] == "classifier" else None
    if output is None or (expected and tuple(output.shape) != expected):
        raise XAIExplainError(f"the architecture in {config_file} does not read one-channel patches of its "
                              f"input.patch_size, {size} x {size} px")


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
