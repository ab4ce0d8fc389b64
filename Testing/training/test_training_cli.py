"""`xaiexplain-train`: the installed console script, and a patch set checked before training."""
import subprocess
import sys
from pathlib import Path

import pytest
from xaiexplain.data.sources.phantom_patches import render_patch_set
from xaiexplain_train.cli import main


@pytest.fixture(scope="module")
def patch_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train") / "patchset"
    render_patch_set(folder, seed=0, patient_ids=["LIDC-IDRI-0078", "LIDC-IDRI-0001", "LIDC-IDRI-0003"],
                     progress=False)
    return folder


def test_data_summary(patch_set, capsys):
    assert main(["data", "--data", str(patch_set), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "patches of" in out and "train" in out and "device: cpu" in out


def test_not_a_patch_set_is_one_sentence(tmp_path, capsys):
    assert main(["data", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not a patch set" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("name, phrase", [("xaiexplain-train", "torchrun"), ("xaiexplain", "phantom")])
def test_console_scripts_are_installed(name, phrase):
    script = Path(sys.executable).parent / name
    assert script.exists(), f"{name} is not installed beside {sys.executable}"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and phrase in result.stdout
