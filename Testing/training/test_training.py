"""Training the classifier: bundles, resuming, several processes with torchrun, on a tiny patch set."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from xaiexplain.errors import XAIExplainError
from xaiexplain.models.architectures import NoduleClassifier
from xaiexplain.models.bundles import load_bundle, save_bundle
from xaiexplain_train.classifier import process_share


def train(*args):
    command = [sys.executable, "-m", "xaiexplain_train.cli", "classifier", "--device", "cpu", "--bootstrap", "20",
               "--widths", "8,16,16,32", "--batch-size", "16", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def checkpoint_weights(folder):
    return {k: v for k, v in load_file(str(folder / "checkpoint.safetensors")).items() if k.startswith("model.")}


def test_resume_reproduces_the_uninterrupted_run(tiny_patch_set, tmp_path):
    train("--data", tiny_patch_set, "--out", tmp_path / "whole", "--epochs", 3)
    train("--data", tiny_patch_set, "--out", tmp_path / "split", "--epochs", 2)
    train("--data", tiny_patch_set, "--out", tmp_path / "split", "--epochs", 3, "--resume")
    whole = checkpoint_weights(tmp_path / "whole.checkpoint")
    split = checkpoint_weights(tmp_path / "split.checkpoint")
    assert whole.keys() == split.keys()
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=0, atol=0, msg=name)
    config = json.loads((tmp_path / "whole" / "config.json").read_text())
    resumed = json.loads((tmp_path / "split" / "config.json").read_text())
    assert resumed["metrics"] == config["metrics"]
    assert resumed["decision_threshold"] == config["decision_threshold"]
    # before: the resumed run's seconds started again at 0
    seconds = [row["seconds"] for row in json.loads((tmp_path / "split.checkpoint" / "checkpoint.json").read_text())["history"]]
    assert len(seconds) == 3 and seconds == sorted(seconds), seconds
    for name in ("accuracy", "f1", "sensitivity", "specificity", "ppv", "npv", "informedness", "markedness",
                 "mcc", "auc"):
        entry = config["metrics"]["test_patches"][name]
        assert set(entry) == {"value", "ci95"}
    assert 0 <= config["decision_threshold"] <= 1
    assert (tmp_path / "whole" / "training_curves.csv").read_text().count("\n") == 4


def test_two_processes_with_torchrun(tiny_patch_set, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
               "xaiexplain_train.cli", "classifier", "--device", "cpu", "--bootstrap", "20", "--widths", "8,16,16,32",
               "--batch-size", "16", "--epochs", "1", "--data", str(tiny_patch_set), "--out", str(tmp_path / "ddp")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert config["provenance"]["processes"] == 2
    assert load_bundle(tmp_path / "ddp").predict(np.full((2, 64, 64), -850.0)).shape == (2,)


def test_two_processes_with_an_odd_patch_count_take_the_same_steps(tiny_patch_set, tmp_path):
    # before: 65 patches split 33 / 32 gave one process two batches of 32 and the other one, and the second
    # all-reduce waited for ever (issue 25, item 9: 128 patches finished in 10 s, 129 hung)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
               "xaiexplain_train.cli", "classifier", "--device", "cpu", "--bootstrap", "20", "--widths", "8,16,16,32",
               "--batch-size", "32", "--max-train-patches", "65", "--epochs", "1", "--data", str(tiny_patch_set),
               "--out", str(tmp_path / "odd")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    provenance = json.loads((tmp_path / "odd" / "config.json").read_text())["provenance"]
    assert provenance["train_patches"] == 65 and provenance["global_batch_size"] == 64


def test_every_process_gets_an_equal_share_of_the_epoch():
    order = np.arange(129)
    shares = [process_share(order, rank, 2) for rank in range(2)]
    assert [len(share) for share in shares] == [65, 65]
    assert set(np.concatenate(shares)) == set(order)  # every patch once, one repeated to pad
    assert np.array_equal(process_share(np.arange(128), 1, 2), np.arange(1, 128, 2))


def test_bundle_round_trip_and_refusals(tmp_path):
    model = NoduleClassifier(widths=(8, 16, 16, 32)).eval()
    config = {"kind": "classifier", "architecture": "NoduleClassifier", "arguments": {"widths": [8, 16, 16, 32]},
              "input": {"patch_size": 64, "field_of_view_mm": 45.0, "hu_window": [-1000, 400]},
              "decision_threshold": 0.4}
    save_bundle(tmp_path / "b", model, config)
    bundle = load_bundle(tmp_path / "b")
    x = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(bundle.model(x), model(x))
    assert bundle.threshold == 0.4
    # a pickle under the safetensors name is refused, never unpickled
    torch.save(model.state_dict(), tmp_path / "b" / "model.safetensors")
    with pytest.raises(XAIExplainError, match="cannot be read as safetensors"):
        load_bundle(tmp_path / "b")
    with pytest.raises(XAIExplainError, match="is not a model bundle"):
        load_bundle(tmp_path)
    with pytest.raises(XAIExplainError, match="no model bundle"):
        load_bundle("no-such-model")


def test_shipped_demo_classifier_records_how_it_was_made():
    bundle = load_bundle()
    provenance = bundle.config["provenance"]
    assert provenance["command"].startswith("xaiexplain-train classifier")
    assert bundle.config["metrics"]["test_patches"]["auc"]["value"] > 0.85
    assert bundle.config["input"]["field_of_view_mm"] == 45.0
