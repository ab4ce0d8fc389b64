"""Model bundles: a folder with ``config.json`` (architecture, input spec, threshold, provenance, metrics)
and ``model.safetensors`` (the weights). Loading never unpickles anything.

Bundles shipped with the library live in ``xaiexplain/bundled/<name>/`` and load by name.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import models
from .errors import XAIExplainError
from .files import atomic_path, write_json_atomic

FORMAT = "xaiexplain-bundle"
FORMAT_VERSION = 1
BUNDLED = Path(__file__).parent / "bundled"
DEFAULT_CLASSIFIER = "demo-classifier"


@dataclass
class Bundle:
    path: Path
    config: dict
    model: torch.nn.Module  # in eval mode

    @property
    def threshold(self) -> float:
        """Decision threshold on the malignancy probability."""
        return float(self.config["decision_threshold"])

    @property
    def input_spec(self) -> dict:
        return self.config["input"]

    def to_tensor(self, patches_hu: np.ndarray) -> torch.Tensor:
        """(N, H, W) HU patches -> (N, 1, H, W) network input: the HU window mapped to [0, 1]."""
        low, high = self.input_spec["hu_window"]
        x = (np.asarray(patches_hu, np.float32) - low) / (high - low)
        return torch.from_numpy(np.clip(x, 0.0, 1.0)[:, None]).to(next(self.model.parameters()).device)

    def to_hu(self, x: torch.Tensor) -> np.ndarray:
        """Inverse of ``to_tensor`` (within the window)."""
        low, high = self.input_spec["hu_window"]
        return x[:, 0].detach().cpu().numpy() * (high - low) + low

    @torch.no_grad()
    def probability(self, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
        """Malignancy probability of network inputs (N, 1, H, W)."""
        parts = [torch.softmax(self.model(x[n:n + batch_size]).float(), dim=1)[:, models.MALIGNANT]
                 for n in range(0, len(x), batch_size)]
        return torch.cat(parts).cpu().numpy()

    def predict(self, patches_hu: np.ndarray) -> np.ndarray:
        """Malignancy probability of HU patches (N, H, W)."""
        return self.probability(self.to_tensor(patches_hu))


def bundled_names() -> list[str]:
    return sorted(p.name for p in BUNDLED.iterdir() if (p / "config.json").exists()) if BUNDLED.exists() else []


def load_bundle(name_or_path=DEFAULT_CLASSIFIER, device: str | torch.device = "cpu") -> Bundle:
    """A bundle by the name of a shipped one or by its folder."""
    if isinstance(name_or_path, Bundle):
        return name_or_path
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
    try:
        config = json.loads(config_file.read_text())
    except ValueError as error:
        raise XAIExplainError(f"{config_file} is not valid JSON ({error})") from None
    if config.get("format") != FORMAT:
        raise XAIExplainError(f"{config_file} is not an XAIExplain bundle configuration")
    model = models.build(config["architecture"], config.get("arguments", {}))
    try:
        from safetensors.torch import load_file

        state = load_file(str(weights_file))
    except Exception as error:  # safetensors raises its own types for damaged files
        raise XAIExplainError(f"{weights_file} cannot be read as safetensors ({error})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError:
        raise XAIExplainError(f"the weights in {weights_file} do not fit the architecture in {config_file}") from None
    model.eval().to(device)
    return Bundle(path=path, config=config, model=model)


def save_bundle(folder, model: torch.nn.Module, config: dict) -> Path:
    """Write ``model`` and ``config`` as a bundle folder, whole or not at all."""
    from safetensors.torch import save_file

    config = {"format": FORMAT, "format_version": FORMAT_VERSION, **config}
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    with atomic_path(folder) as temporary:
        temporary.mkdir(parents=True)
        save_file(state, str(temporary / "model.safetensors"))
        write_json_atomic(temporary / "config.json", config)
    return Path(folder)
