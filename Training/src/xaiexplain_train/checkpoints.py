"""Training checkpoints without pickles: named state dicts and optimiser states as safetensors, the rest
(step or epoch, history, optimiser hyper-parameters) as JSON; written whole or not at all."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from xaiexplain.errors import XAIExplainError
from xaiexplain.files import atomic_path, write_json_atomic

TENSORS = "checkpoint.safetensors"
INFO = "checkpoint.json"


def save_checkpoint(folder, states: dict[str, dict[str, torch.Tensor]], optimisers: dict[str, torch.optim.Optimizer],
                    info: dict) -> None:
    tensors = {}
    for name, state in states.items():
        tensors.update({f"{name}.{key}": value.detach().cpu().contiguous() for key, value in state.items()})
    groups = {}
    for name, optimiser in optimisers.items():
        optimiser_state = optimiser.state_dict()
        groups[name] = optimiser_state["param_groups"]
        for index, values in optimiser_state["state"].items():
            for key, value in values.items():
                tensors[f"optimiser:{name}.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    with atomic_path(folder) as temporary:
        temporary.mkdir(parents=True)
        save_file(tensors, str(temporary / TENSORS))
        write_json_atomic(temporary / INFO, {**info, "optimiser_param_groups": groups})


def exists(folder) -> bool:
    return (Path(folder) / INFO).is_file() and (Path(folder) / TENSORS).is_file()


def load_checkpoint(folder, state_names: list[str], optimisers: dict[str, torch.optim.Optimizer]):
    """The named state dicts and the info; the optimisers get their states back in place."""
    folder = Path(folder)
    try:
        tensors = load_file(str(folder / TENSORS))
        info = json.loads((folder / INFO).read_text())
    except (OSError, ValueError) as error:
        raise XAIExplainError(f"the checkpoint in {folder} cannot be read ({error})") from None
    states = {name: {key[len(name) + 1:]: value for key, value in tensors.items() if key.startswith(name + ".")}
              for name in state_names}
    for name, optimiser in optimisers.items():
        state: dict[int, dict] = {}
        prefix = f"optimiser:{name}."
        for key, value in tensors.items():
            if key.startswith(prefix):
                index, entry = key[len(prefix):].split(".", 1)
                state.setdefault(int(index), {})[entry] = value
        optimiser.load_state_dict({"state": state, "param_groups": info["optimiser_param_groups"][name]})
    return states, info
