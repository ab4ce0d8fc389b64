"""Training checkpoints without pickles: named state dicts and optimiser states as safetensors, the rest
(step or epoch, history, optimiser hyper-parameters) as JSON; one output set, whole or absent."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from xaiexplain.errors import XAIExplainError
from xaiexplain.io.files import check_output_folder, output_set
from xaiexplain.io.json_input import read_json

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
    with output_set(folder, INFO) as written:  # the folder keeps every file that is not a checkpoint's
        save_file(tensors, str(written.path(TENSORS)))
        written.manifest_data = {**info, "optimiser_param_groups": groups}


def prepare_run_folders(out: Path, checkpoint_dir: Path | None, rank: int) -> Path:
    """The checkpoint folder of a training run (default ``OUT.checkpoint`` beside the bundle); on rank 0,
    fail now with one sentence if the bundle or the checkpoint folder could not be written at the end."""
    checkpoint = Path(checkpoint_dir) if checkpoint_dir else out.with_name(out.name + ".checkpoint")
    if rank == 0:
        check_output_folder(out, "config.json")
        check_output_folder(checkpoint, INFO)
    return checkpoint


def exists(folder) -> bool:
    return (Path(folder) / INFO).is_file() and (Path(folder) / TENSORS).is_file()


def load_checkpoint(folder, state_names: list[str], optimisers: dict[str, torch.optim.Optimizer]):
    """The named state dicts and the info; the optimisers get their states back in place."""
    folder = Path(folder)
    try:
        tensors = load_file(str(folder / TENSORS))
        info = read_json(folder / INFO)
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
