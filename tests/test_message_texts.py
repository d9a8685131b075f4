"""User-facing messages say what is true of the key, file or option they name (read as text, as a user reads them)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from phd_lab.cli import main_cli
from tests.conftest import flat, write_config


def test_the_extract_steps_downsampling_is_not_described_as_part_of_the_run_folder(tmp_path, capsys):
    """The step's 'downsampling' took the config key's help, which says a value is part of the run's folder and
    tells to use the step's 'sizes' 'instead': given in the step, it names no folder (the same run)."""
    config = write_config(tmp_path, post_processing=[{"name": "extract", "downsampling": "x"}])
    assert main_cli(["--config", str(config), "--dry-run", "-q"]) == 2
    err = flat(capsys.readouterr().err)
    assert "step 'extract'" in err and "'downsampling'" in err and 'got "x"' in err
    assert "a sweep gives every value its own run" not in err
    assert "given here, unlike the config key, it is no part of the run's folder" in err
    assert main_cli(["--list", "steps"]) == 0
    listed = [line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("downsampling (")]
    assert len(listed) == 1 and "no part of the run's folder" in listed[0], listed


CONV1D_MODEL = '''
import torch
from torch import nn


class Conv1dOnly(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 3)
        self.weight = nn.Parameter(torch.zeros(num_classes, 4))

    def forward(self, x):
        return self.conv(x.reshape(x.shape[0], 1, -1)).mean(-1) @ self.weight.t()


def conv1d_only(*, num_classes, in_channels=3):
    """A classifier without a Conv2d or Linear module."""
    return Conv1dOnly(num_classes)
'''


def test_a_model_without_a_default_layer_to_extract_is_refused_up_front_naming_layers(tmp_path, capsys):
    """The extract step of a model with no Conv2d or Linear module passed the dry run and failed after training
    (exit 1) with 'Flat has no Conv2d or Linear module to extract.', not saying what to do. It is refused before
    training (exit 2), naming the step's 'layers' and the model's modules."""
    config, err = _extract_step_refusal(tmp_path, capsys, CONV1D_MODEL, "conv1d_only")
    assert err.startswith(f"error: {config} (run 0): Step 'extract': Conv1dOnly has no Conv2d or Linear module"), err
    assert "name the modules to extract in its 'layers'" in err and "this model's: conv)" in err


def _extract_step_refusal(tmp_path: Path, capsys: pytest.CaptureFixture, source: str, model: str) -> tuple[Path, str]:
    """The config and the dry run's error (in one line) of the extract step of the model factory ``model`` that
    ``source`` defines, which the dry run refuses with exit 2 before anything is written."""
    (tmp_path / "my_models.py").write_text(source)
    config = write_config(tmp_path, model=model, model_args={}, track_saturation=False,
                          registries={"models": str(tmp_path / "my_models.py")}, post_processing=["extract"])
    assert main_cli(["--config", str(config), "--dry-run", "-q"]) == 2
    assert not (tmp_path / "logs").exists()
    return config, flat(capsys.readouterr().err)


def test_a_factory_without_a_parameter_the_framework_passes_is_named_not_the_configs_args(tmp_path, capsys):
    """A model factory without 'in_channels' was refused as "model 'plain' cannot be built with model_args {}:
    plain() got an unexpected keyword argument 'in_channels'", blaming the config's (empty) model_args; an
    optimizer factory without 'epochs' alike. The message names the factory's missing parameter and the contract."""
    (tmp_path / "my_models.py").write_text(CONV1D_MODEL.replace("in_channels=3", "width=1"))
    config = write_config(tmp_path, model="conv1d_only", model_args={},
                          registries={"models": str(tmp_path / "my_models.py")})
    assert main_cli(["--config", str(config), "--dry-run", "-q"]) == 2
    err = flat(capsys.readouterr().err)
    assert err == (f"error: {config} (run 0): the model factory 'conv1d_only' has no parameter 'in_channels', which "
                   f"phd-lab passes to every model factory (num_classes, in_channels, then the model_args); add it "
                   f"to its signature (docs/registries.md)."), err
    (tmp_path / "my_optimizers.py").write_text("import torch\n\n\ndef plain_sgd(model, *, lr=0.1):\n"
                                              "    \"\"\"SGD without a schedule.\"\"\"\n"
                                              "    return torch.optim.SGD(model.parameters(), lr=lr)\n")
    config = write_config(tmp_path, optimizer="plain_sgd", optimizer_args={},
                          registries={"optimizers": str(tmp_path / "my_optimizers.py")})
    assert main_cli(["--config", str(config), "--dry-run", "-q"]) == 2
    err = flat(capsys.readouterr().err)
    assert "the optimizer factory 'plain_sgd' has no parameter 'epochs'" in err and "optimizer_args {}" not in err


def test_a_registry_module_with_a_syntax_error_is_named_with_its_place_once(tmp_path, capsys):
    """'SyntaxError: invalid syntax (broken.py, line 1) (/path/broken.py, line 1)': Python's own place of the error
    and the message's, one after the other. The place is said once, with the file's whole path."""
    broken = tmp_path / "broken.py"
    broken.write_text("def net(:\n")
    config = write_config(tmp_path, registries={"models": str(broken)})
    assert main_cli(["--config", str(config), "--dry-run", "-q"]) == 2
    err = flat(capsys.readouterr().err)
    assert f"failed while being imported: SyntaxError: invalid syntax ({broken}, line 1). Fix the module" in err, err


def test_a_dotted_registry_module_that_fails_is_told_with_a_command_that_imports_it(tmp_path, capsys, monkeypatch):
    """The advice to see the traceback was `python my_failing_models` for a dotted module name, which looks for a
    file of that name ("can't open file"); a dotted name is imported with python -c, a file still run as such."""
    (tmp_path / "phd_lab_msg_failing_models.py").write_text("raise RuntimeError('no GPU driver')\n")
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, registries={"models": "phd_lab_msg_failing_models"})
    assert main_cli(["--config", str(config), "--dry-run", "-q"]) == 2
    err = flat(capsys.readouterr().err)
    assert "RuntimeError: no GPU driver. Fix the module (run `python -c 'import phd_lab_msg_failing_models'` to " \
           "see the traceback)" in err, err


BARE_MODEL = '''
import torch
from torch import nn


class Bare(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_classes, 3))

    def forward(self, x):
        return x.mean((2, 3)) @ self.weight.t()


def bare(*, num_classes, in_channels=3):
    """A classifier without any submodule."""
    return Bare(num_classes)
'''


def test_a_model_without_submodules_is_not_told_to_name_its_modules_in_layers(tmp_path, capsys):
    """A model without submodules (a matrix product of its own parameters) was told to name the modules to extract
    in 'layers' from "this model's: )", an empty list: 'layers' can name none, so the step can only be left out."""
    config, err = _extract_step_refusal(tmp_path, capsys, BARE_MODEL, "bare")
    assert err.startswith(f"error: {config} (run 0): Step 'extract': Bare has no submodules"), err
    assert "leave the step out" in err and "this model's: )" not in err and "'layers'" not in err


def test_a_registry_file_under_home_that_fails_is_told_with_a_command_the_shell_runs(tmp_path, monkeypatch):
    """A registry file given as '~/my_models.py' (Registries, as a notebook passes it) that failed at import was
    told to run `python '~/my_models.py'`: the shell leaves a quoted '~' as it is, and python can't open the file."""
    import subprocess
    import sys

    from phd_lab.errors import RegistryError
    from phd_lab.registry import Registries
    (tmp_path / "phd_lab_msg_home_models.py").write_text("raise RuntimeError('no GPU driver')\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(RegistryError) as raised:
        Registries({"models": "~/phd_lab_msg_home_models.py"})
    command = re.search(r"run `python (.+?)` to see the traceback", str(raised.value))
    assert command is not None, raised.value
    shown = subprocess.run(f"{shlex.quote(sys.executable)} {command.group(1)}", shell=True, capture_output=True,
                           text=True, cwd=tmp_path)
    assert "RuntimeError: no GPU driver" in shown.stderr, shown.stderr
