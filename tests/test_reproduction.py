"""A rerun names what differs from the setup a run was logged with (factory defaults, registry code, versions),
resumes with the thread count its checkpoint recorded, and says where a logged config outside its run folder
sends its run."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from phd_lab import atomic
from phd_lab.cli import main_cli
from phd_lab.config import META_KEY
from phd_lab.environment import CPU_ISA_VARIABLES, git_commit, package_sha256
from tests.conftest import ROOT, TINY, flat, main_in_process, run_folders, run_main, run_name, write_config
from tests.test_runs import assert_same_weights, weights

REGISTRY = '''from torch import nn


def tiny_cnn(*, num_classes: int, in_channels: int = 3, act: str = "{act}") -> nn.Module:
    """A 4-channel convolution and a linear readout."""
    layer = {{"relu": nn.ReLU, "tanh": nn.Tanh}}[act]
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), layer(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))
'''


def test_a_changed_factory_default_and_other_versions_are_named_on_resume_and_on_a_rerun(tmp_path, capsys):
    """A default changed in the registry file resumed the run with another activation, without a word."""
    registry = tmp_path / "my_models.py"
    registry.write_text(REGISTRY.format(act="relu"))
    config = write_config(tmp_path, epoch=2, cpu_threads=1, model="tiny_cnn", model_args={},
                          registries={"models": str(registry)}, track_saturation=False, post_processing=[])
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [folder] = run_folders(tmp_path / "logs")
    name = run_name(folder)
    logged_path = folder / f"{name}_config.json"
    assert "The epochs still to train" not in (folder / f"{name}.log").read_text()

    (folder / f"{name}.previous.pt").replace(folder / f"{name}.pt")  # as if killed during epoch 2
    registry.write_text(REGISTRY.format(act="tanh"))  # main.py imports the changed file (in this process too:
    # test_a_registry_file_edited_between_two_grids_of_one_process_trains_and_logs_the_new_code)
    assert main_in_process(capsys, "--config", str(logged_path), "--no-progress", "-q")[0] == 0
    log_text = " ".join((folder / f"{name}.log").read_text().split())
    assert ('The epochs still to train run under another setup than the epochs before them: the model_args '
            'default act: "relu" (now "tanh"); the code of the models factory \'tiny_cnn\' (sha256') in log_text
    logged = json.loads(logged_path.read_text())
    assert logged[META_KEY]["defaults_in_effect"]["model_args"] == {"act": "relu"}, "the setup the run began with"
    assert logged[META_KEY]["numba"] == importlib.metadata.version("numba")  # it compiles the tracking kernel

    logged[META_KEY]["torch"] = "1.13.0"  # as if logged years ago
    logged_path.write_text(json.dumps(logged))
    assert main_in_process(capsys, "--config", str(logged_path), "--run-id", "again", "--no-progress", "-q")[0] == 0
    [again] = [f for f in run_folders(tmp_path / "logs") if f != folder]
    log_text = " ".join((again / f"{run_name(again)}.log").read_text().split())
    assert 'This config was logged by a run under another setup: the model_args default act: "relu" (now "tanh")' \
        in log_text and "torch 1.13.0 (now " in log_text


def test_the_layer_truncate_border_cut_before_is_logged_and_a_cut_that_moved_is_named_on_a_rerun(tmp_path, capsys):
    """'truncate': 'border' is resolved by the receptive-field code, which later versions change (ResNet50's b_min
    moved from 12 to 11 px): the logged config named only 'border', so a rerun of it years later that cut the model
    elsewhere trained another model, named at most as another commit of phd-lab."""
    config = write_config(tmp_path, epoch=1, cpu_threads=1, model_args={"width": 0.0625, "truncate": "border"},
                          track_saturation=False, post_processing=[])
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [folder] = run_folders(tmp_path / "logs")
    logged_path = folder / f"{run_name(folder)}_config.json"
    logged = json.loads(logged_path.read_text())
    assert logged[META_KEY]["truncated_before"] == "features.11"
    logged[META_KEY]["truncated_before"] = "features.8"  # as if an earlier version had found another border
    logged_path.write_text(json.dumps(logged))
    code, err = main_in_process(capsys, "--config", str(logged_path), "--run-id", "again", "--no-progress", "-q")
    assert code == 0
    [again] = [f for f in run_folders(tmp_path / "logs") if f != folder]
    log_text = " ".join((again / f"{run_name(again)}.log").read_text().split())
    assert ('This config was logged by a run under another setup: the layer model_args truncate cuts the model '
            'before: "features.8" (now "features.11")') in log_text
    assert json.loads((again / logged_path.name).read_text())[META_KEY]["truncated_before"] == "features.11"


def test_a_run_folder_of_other_model_code_is_refused_before_anything_of_it_changes(tmp_path, capsys):
    """Two registry files that build the same model name differently give the same run folder (the registry is a
    technical key); the second config loaded the first's checkpoint and failed with a size-mismatch traceback,
    after it had rewritten the first run's logged config and written into its log."""
    narrow, wide = tmp_path / "narrow.py", tmp_path / "wide.py"
    narrow.write_text(REGISTRY.format(act="relu"))
    wide.write_text(REGISTRY.format(act="relu").replace("4", "8"))
    common = dict(epoch=1, cpu_threads=1, model="tiny_cnn", model_args={}, track_saturation=False)
    first = write_config(tmp_path, "narrow.json", registries={"models": str(narrow)}, post_processing=[], **common)
    assert main_cli(["--config", str(first), "--no-progress", "-q"]) == 0
    [folder] = run_folders(tmp_path / "logs")
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    second = write_config(tmp_path, "wide.json", registries={"models": str(wide)}, post_processing=["flops"],
                          **common)
    code, err = main_in_process(capsys, "--config", str(second), "--no-progress", "-q")
    err = " ".join(err.split())
    assert code == 2 and "Traceback" not in err, err
    checkpoint = str(folder / f"{run_name(folder)}.pt")
    assert f"the checkpoint {checkpoint!r} does not fit the model this config builds (" in err, err
    assert "0.weight has shape [4, 1, 3, 3] in the checkpoint and [8, 1, 3, 3] in the model" in err
    assert "Train this model under another run_id" in err
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
    assert run_folders(tmp_path / "logs") == [folder]


def test_another_cpu_instruction_set_or_device_model_is_logged_and_named_on_a_rerun(tmp_path, monkeypatch):
    """ATEN_CPU_CAPABILITY=default or ONEDNN_MAX_CPU_ISA=SSE41 train other weights, but the instruction set was not
    logged, and the logged device and its model were never compared: a rerun on another machine said nothing."""
    import torch

    for variable in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(variable, raising=False)
    config = write_config(tmp_path, epoch=1, cpu_threads=1, track_saturation=False, post_processing=[])
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [folder] = run_folders(tmp_path / "logs")
    logged_path = folder / f"{run_name(folder)}_config.json"
    logged = json.loads(logged_path.read_text())
    capability = torch.backends.cpu.get_cpu_capability()
    assert logged[META_KEY]["cpu_capability"] == capability
    assert logged[META_KEY]["cpu_isa_variables"] == dict.fromkeys(CPU_ISA_VARIABLES)
    logged[META_KEY]["device_name"] = "Another CPU 9000"  # as if logged on another machine
    logged_path.write_text(json.dumps(logged))
    done = run_main("--config", str(logged_path), "--run-id", "again", "--no-progress", "-q",
                    env={"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"})
    assert done.returncode == 0, done.stderr
    [again] = [f for f in run_folders(tmp_path / "logs") if f != folder]
    log_text = " ".join((again / f"{run_name(again)}.log").read_text().split())
    assert "This config was logged by a run under another setup: " in log_text
    assert "the device model Another CPU 9000 (now " in log_text
    assert 'ATEN_CPU_CAPABILITY unset (now "default"); ONEDNN_MAX_CPU_ISA unset (now "SSE41")' in log_text
    if capability != "DEFAULT":
        assert f"the CPU instruction set {capability} (now DEFAULT)" in log_text
    assert json.loads((again / f"{run_name(again)}_config.json").read_text())[META_KEY]["cpu_isa_variables"] == {
        "ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "DNNL_MAX_CPU_ISA": None, "MKL_CBWR": None}
    # another GPU of the same model is the same setup; another device type is named once; an older _meta lacks keys
    from phd_lab.reproduction import machine_differences
    gpu = {"device": "cuda:0", "device_name": "NVIDIA H200", "cpu_capability": "AVX2"}
    assert machine_differences(gpu, {**gpu, "device": "cuda:1"}) == []
    assert machine_differences(gpu, {"device": "cpu", "device_name": "AMD EPYC"}) == ["the device cuda:0 (now cpu)"]
    assert machine_differences({}, {**gpu, "cpu_isa_variables": {"ATEN_CPU_CAPABILITY": None}}) == []


def test_a_cpu_isa_variable_set_empty_is_the_same_setup_as_one_unset(tmp_path, monkeypatch):
    """``export ATEN_CPU_CAPABILITY=`` (empty, which torch and oneDNN read as unset) was logged as "" and a rerun
    without it warned 'This config was logged by a run under another setup: ATEN_CPU_CAPABILITY "" (now unset)',
    though nothing differed: the empty value is logged as unset now, and an older run's "" compares as unset."""
    from phd_lab.environment import cpu_instruction_set
    from phd_lab.reproduction import machine_differences
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    empty = cpu_instruction_set()
    assert empty["cpu_isa_variables"] == dict.fromkeys(CPU_ISA_VARIABLES)
    older = {**empty, "cpu_isa_variables": {"ATEN_CPU_CAPABILITY": "", "ONEDNN_MAX_CPU_ISA": None}}
    assert machine_differences(older, empty) == [] and machine_differences(empty, older) == []
    now = {**empty, "cpu_capability": "DEFAULT",  # what torch runs under ATEN_CPU_CAPABILITY=default
           "cpu_isa_variables": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": None,
                                              "DNNL_MAX_CPU_ISA": None}}
    assert machine_differences(older, now)[-1] == 'ATEN_CPU_CAPABILITY unset (now "default")'


def test_an_aten_cpu_capability_torch_ignores_is_logged_as_unset():
    """``ATEN_CPU_CAPABILITY=abc`` (or "AVX2": torch takes lower-case names only) is ignored by torch, which warns
    and picks the CPU's best kernels as if unset, but it was logged as "abc", and a rerun without it warned
    'ATEN_CPU_CAPABILITY "abc" (now unset)' though the same kernels ran: it is logged as unset now, and an older
    run's logged value compares as unset where it is not the instruction set that run logged."""
    from phd_lab.reproduction import machine_differences
    script = ("import json, torch; from phd_lab.environment import cpu_instruction_set; "
              "print(json.dumps(cpu_instruction_set()))")
    env = {k: v for k, v in os.environ.items() if k not in CPU_ISA_VARIABLES}
    unset, ignored, honoured = (json.loads(subprocess.run(
        [sys.executable, "-W", "ignore", "-c", script], env={**env, **extra}, cwd=ROOT, capture_output=True,
        text=True, check=True).stdout.splitlines()[-1]) for extra in ({}, {"ATEN_CPU_CAPABILITY": "abc"},
                                                                        {"ATEN_CPU_CAPABILITY": "default"}))
    assert ignored == unset and ignored["cpu_isa_variables"]["ATEN_CPU_CAPABILITY"] is None
    assert honoured == {"cpu_capability": "DEFAULT",
                        "cpu_isa_variables": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": None,
                                              "DNNL_MAX_CPU_ISA": None, "MKL_CBWR": None}}
    older = {**unset, "cpu_isa_variables": {"ATEN_CPU_CAPABILITY": "AVX2", "ONEDNN_MAX_CPU_ISA": None}}
    assert machine_differences(older, unset) == [] and machine_differences(unset, older) == []
    assert machine_differences(honoured, unset) == [f"the CPU instruction set DEFAULT (now {unset['cpu_capability']})",
                                                    'ATEN_CPU_CAPABILITY "default" (now unset)']


@pytest.mark.parametrize("value, logged", [("abc", None), ("DEFAULT", None), ("AVX512_MIC", None), ("SSE41", "SSE41"),
                                           ("avx2", "avx2"), ("AVX512_CORE_AMX_FP16", "AVX512_CORE_AMX_FP16"),
                                           ("AVX10_2_512", "AVX10_2_512"), ("AVX10_2_512_AMX_2", "AVX10_2_512_AMX_2")])
def test_a_onednn_max_cpu_isa_onednn_ignores_is_logged_as_unset(monkeypatch, value, logged):
    """``ONEDNN_MAX_CPU_ISA=abc`` is ignored by oneDNN, which takes only the names of its CPU Dispatcher Control
    guide (in any case: oneDNN 3 lower-cases the value) and runs its best kernels otherwise, as under DEFAULT or
    with the variable unset (ONEDNN_VERBOSE=all said the same 'isa:' for these three and oneDNN 2's AVX512_MIC);
    it was logged as "abc", and a rerun without it warned 'ONEDNN_MAX_CPU_ISA "abc" (now unset)' though the same
    kernels ran. Such a value is logged as unset now, and an older run's compares so. The AVX10_2 opt-ins (which
    enable kernels oneDNN does not dispatch otherwise) were read as ignored, so a rerun without them was not
    warned of."""
    from phd_lab.environment import cpu_instruction_set
    from phd_lab.reproduction import machine_differences
    for variable in CPU_ISA_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    unset = cpu_instruction_set()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", value)
    now = cpu_instruction_set()
    assert now["cpu_isa_variables"] == {"ATEN_CPU_CAPABILITY": None, "ONEDNN_MAX_CPU_ISA": logged,
                                        "DNNL_MAX_CPU_ISA": None, "MKL_CBWR": None}
    older = {**unset, "cpu_isa_variables": {"ATEN_CPU_CAPABILITY": None, "ONEDNN_MAX_CPU_ISA": value}}
    said = [] if logged is None else [f'ONEDNN_MAX_CPU_ISA "{value}" (now unset)']
    assert machine_differences(older, unset) == said


@pytest.mark.parametrize("onednn, dnnl, logged", [
    (None, "sse41", "sse41"), ("", "SSE41", "SSE41"), (None, "abc", None), (None, "DEFAULT", None),
    ("abc", "sse41", None), ("avx2", "sse41", None), ("a" * 128, "sse41", "sse41")])
def test_dnnl_max_cpu_isa_is_logged_where_onednn_reads_it_and_compared(monkeypatch, onednn, dnnl, logged):
    """oneDNN also reads its older name DNNL_MAX_CPU_ISA (where ONEDNN_MAX_CPU_ISA is unset, empty or longer than
    the 127 characters it reads; ONEDNN_VERBOSE said 'isa:Intel SSE4.1' for DNNL_MAX_CPU_ISA=sse41 alone or
    beside ONEDNN_MAX_CPU_ISA= or a 128-character one, and the CPU's best beside ONEDNN_MAX_CPU_ISA=abc), but it
    was neither logged nor compared: a rerun under DNNL_MAX_CPU_ISA=sse41 trained other weights without a warning.
    It is logged where oneDNN honours it, and an older run's ``_meta``, which lacks it, compares cleanly."""
    from phd_lab.environment import cpu_instruction_set
    from phd_lab.reproduction import machine_differences
    for variable in CPU_ISA_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    unset = cpu_instruction_set()
    if onednn is not None:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", onednn)
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", dnnl)
    now = cpu_instruction_set()
    assert now["cpu_isa_variables"]["DNNL_MAX_CPU_ISA"] == logged
    said = [] if logged is None else [f'DNNL_MAX_CPU_ISA unset (now "{dnnl}")']
    assert [line for line in machine_differences(unset, now) if "DNNL" in line] == said
    assert machine_differences(now, {**now}) == []
    older = {**unset, "cpu_isa_variables": {"ATEN_CPU_CAPABILITY": None, "ONEDNN_MAX_CPU_ISA": None}}
    assert machine_differences(older, unset) == [] and machine_differences(older, {**unset, **{
        "cpu_isa_variables": {**unset["cpu_isa_variables"], "DNNL_MAX_CPU_ISA": "sse41"}}}) == []


def test_mkl_cbwr_is_logged_and_a_rerun_under_another_is_named(tmp_path, capsys, monkeypatch):
    """MKL_CBWR picks the code path of MKL, torch's CPU matrix products: vgg11 on Digits trained other weights under
    MKL_CBWR=COMPATIBLE, AVX2 or AUTO than without it on an AVX-512 CPU (sha256 of the state_dict), but the variable
    was neither logged nor compared, so a rerun under it (a cluster module that exports it) said nothing of another
    setup. It is logged in cpu_isa_variables and a rerun names it; an older ``_meta``, which lacks it, is not
    compared."""
    from phd_lab.reproduction import machine_differences
    for variable in CPU_ISA_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    config = write_config(tmp_path, epoch=1, cpu_threads=1, track_saturation=False, post_processing=[])
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [folder] = run_folders(tmp_path / "logs")
    logged_path = folder / f"{run_name(folder)}_config.json"
    logged = json.loads(logged_path.read_text())[META_KEY]
    assert logged["cpu_isa_variables"]["MKL_CBWR"] is None
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    code, err = main_in_process(capsys, "--config", str(logged_path), "--run-id", "again", "--no-progress")
    assert code == 0 and 'MKL_CBWR unset (now "COMPATIBLE")' in err, err
    [again] = [f for f in run_folders(tmp_path / "logs") if f != folder]
    rerun = json.loads((again / f"{run_name(again)}_config.json").read_text())[META_KEY]
    assert rerun["cpu_isa_variables"]["MKL_CBWR"] == "COMPATIBLE"
    older = {**logged, "cpu_isa_variables": {k: v for k, v in logged["cpu_isa_variables"].items() if k != "MKL_CBWR"}}
    assert machine_differences(older, rerun) == []

@pytest.mark.parametrize("onednn, dnnl, mkldnn, logged", [
    (None, None, "sse41", "sse41"), (None, "avx2", "sse41", "sse41"), (None, "sse41", "", "sse41"),
    ("avx2", None, "sse41", None), (None, None, "abc", None)])
def test_mkldnn_max_cpu_isa_is_logged_as_the_dnnl_max_cpu_isa_torch_sets_it_to(monkeypatch, onednn, dnnl, mkldnn,
                                                                                logged):
    """torch's ideep copies MKLDNN_MAX_CPU_ISA (oneDNN's oldest name of the cap) over DNNL_MAX_CPU_ISA in its C
    environment when torch is loaded, where it is set and not empty (ONEDNN_VERBOSE said 'isa:Intel SSE4.1' under
    MKLDNN_MAX_CPU_ISA=sse41 alone, and os.environ still had no DNNL_MAX_CPU_ISA), but it was neither logged nor
    compared: a rerun under it trained other weights without a warning. It is logged as that DNNL_MAX_CPU_ISA."""
    from phd_lab.environment import cpu_instruction_set
    from phd_lab.reproduction import machine_differences
    for variable in (*CPU_ISA_VARIABLES, "MKLDNN_MAX_CPU_ISA"):
        monkeypatch.delenv(variable, raising=False)
    unset = cpu_instruction_set()
    for variable, value in (("ONEDNN_MAX_CPU_ISA", onednn), ("DNNL_MAX_CPU_ISA", dnnl), ("MKLDNN_MAX_CPU_ISA", mkldnn)):
        if value is not None:
            monkeypatch.setenv(variable, value)
    now = cpu_instruction_set()
    assert now["cpu_isa_variables"]["DNNL_MAX_CPU_ISA"] == logged
    said = [] if logged is None else [f'DNNL_MAX_CPU_ISA unset (now "{logged}")']
    assert [line for line in machine_differences(unset, now) if "DNNL" in line] == said


def test_a_hand_written_config_and_an_unchanged_setup_are_not_warned_about(tmp_path):
    config = write_config(tmp_path, epoch=1, cpu_threads=1, track_saturation=False, post_processing=[])
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [folder] = run_folders(tmp_path / "logs")
    logged_path = folder / f"{run_name(folder)}_config.json"
    assert main_cli(["--config", str(logged_path), "--run-id", "again", "--no-progress", "-q"]) == 0
    for run in run_folders(tmp_path / "logs"):
        assert "another setup" not in (run / f"{run_name(run)}.log").read_text()


def test_a_logged_config_with_a_hand_edited_defaults_in_effect_of_another_shape_is_refused_up_front(tmp_path,
                                                                                                     capsys):
    """``"defaults_in_effect": {"model_args": ["width"]}`` failed the rerun with exit 1 (an AttributeError) after
    it had made the rerun's folder; it is refused with exit 2 before anything is made, and the run folder whose
    logged config holds it is still post-processed from the experiment's own config."""
    config = write_config(tmp_path, epoch=1, cpu_threads=1, track_saturation=False, post_processing=[])
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [folder] = run_folders(tmp_path / "logs")
    logged_path = folder / f"{run_name(folder)}_config.json"
    logged = json.loads(logged_path.read_text())
    logged[META_KEY]["defaults_in_effect"] = {"model_args": ["width"]}
    logged_path.write_text(json.dumps(logged))
    before = sorted(path for path in (tmp_path / "logs").rglob("*"))
    code, err = main_in_process(capsys, "--config", str(logged_path), "--run-id", "again", "--no-progress", "-q")
    err = " ".join(err.split())
    assert code == 2 and "Traceback" not in err, err
    assert (f"{logged_path}: the key '_meta.defaults_in_effect' must be a JSON object of JSON objects, one per kind "
            f'of factory arguments (e.g. {{"model_args": {{"width": 1.0}}, "optimizer_args": {{}}}}); got '
            f'{{"model_args": ["width"]}}.') in err, err
    assert sorted(path for path in (tmp_path / "logs").rglob("*")) == before
    code, err = main_in_process(capsys, "--config", str(config), "--no-progress", "-q")
    assert code == 0 and "Traceback" not in err, err


def test_an_edited_cpu_threads_in_the_logged_config_does_not_change_a_resume(tmp_path):
    """The thread count was read back from the logged config, the very file users rerun and may edit: a resume
    went on with the edited count and ended with other weights. The checkpoint now records the count."""
    config = write_config(tmp_path, epoch=2, cpu_threads=1, track_saturation=False, post_processing=[])
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [folder] = run_folders(tmp_path / "logs")
    name = run_name(folder)
    expected = weights(folder)
    (folder / f"{name}.previous.pt").replace(folder / f"{name}.pt")  # as if killed during epoch 2
    logged_path = folder / f"{name}_config.json"
    logged_path.write_text(json.dumps({**json.loads(logged_path.read_text()), "cpu_threads": 2}))
    assert main_cli(["--config", str(logged_path), "--no-progress", "-q"]) == 0
    assert_same_weights(expected, weights(folder))
    log_text = (folder / f"{name}.log").read_text()
    assert "Continuing with the 1 CPU thread(s) this run was trained with (cpu_threads: 2)" in log_text
    assert json.loads(logged_path.read_text())["cpu_threads"] == 1


def test_a_logged_config_outside_its_run_folder_says_where_its_run_goes(tmp_path, capsys):
    config = write_config(tmp_path, epoch=1, cpu_threads=1, track_saturation=False, post_processing=[])
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [folder] = run_folders(tmp_path / "logs")
    logged_path = folder / f"{run_name(folder)}_config.json"
    code, err = main_in_process(capsys, "--config", str(logged_path), "--dry-run")
    assert code == 0 and "does not lie in the run folder" not in err
    copied = tmp_path / "elsewhere" / logged_path.name
    copied.parent.mkdir()
    shutil.copy(logged_path, copied)
    code, err = main_in_process(capsys, "--config", str(copied), "--dry-run")
    err = " ".join(err.split())
    assert code == 0 and f"{copied} is a logged config" in err and "does not lie in the run folder" in err
    assert f"the run goes to logs_dir {tmp_path / 'logs'} as logged" in err


def test_a_logged_config_copied_near_the_file_system_root_lies_in_no_run_folder():
    """A logged config four folders below the root (/srv/configs/copied/<name>_config.json) has no folder four
    levels above its run folder: it lies in none, and is rerun under its logged logs_dir, not a crash."""
    from phd_lab.rundir import anchor_logged_run, lies_in_its_run_folder
    raw = {**TINY, "logs_dir": "/srv/logs", META_KEY: {}}
    shallow = Path("/srv/configs/copied/vgg11-Digits-r16-bs128-e2_config.json")
    assert len(shallow.parents) == 4 and lies_in_its_run_folder(raw, shallow) is False
    anchor_logged_run(raw, shallow)
    assert raw["logs_dir"] == "/srv/logs"


def test_the_git_commit_is_only_the_checkout_s_own(tmp_path):
    """A copy of the package installed inside another project's repository recorded that project's commit."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    status = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if status.returncode == 0 and (ROOT / ".git").exists():
        assert git_commit() == status.stdout.strip()
    project = tmp_path / "project"
    (project / "site" / "phd_lab").mkdir(parents=True)
    shutil.copy(ROOT / "phd_lab" / "environment.py", project / "site" / "phd_lab" / "environment.py")
    for command in (["init", "-q"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty",
                                     "-m", "theirs"]):
        subprocess.run(["git", *command], cwd=project, check=True, capture_output=True)
    spec = importlib.util.spec_from_file_location("copied_environment", project / "site" / "phd_lab" /
                                                  "environment.py")
    copied = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copied)
    assert copied.git_commit() is None and copied.git_dirty() is None


def _committed_environment_module(tmp_path: Path) -> tuple[Path, Path]:
    """A git checkout of its own in ``tmp_path`` holding a committed copy of phd_lab/environment.py (the checkout,
    the module's path): where the module reads the state of "its" checkout."""
    checkout = tmp_path / "checkout"
    (checkout / "phd_lab").mkdir(parents=True)
    module = checkout / "phd_lab" / "environment.py"
    shutil.copy(ROOT / "phd_lab" / "environment.py", module)
    for command in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                                                    "-m", "copy"]):
        subprocess.run(["git", *command], cwd=checkout, check=True, capture_output=True)
    return checkout, module


def test_a_long_lived_process_logs_the_commit_it_sees_now_beside_the_dirty_flag(tmp_path):
    """``git_commit`` was cached per process while ``git_dirty`` and ``git_diff`` were asked each time: a notebook
    or Dask worker that saw a new commit logged the old commit as clean, with a patch against the new one."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    checkout, module = _committed_environment_module(tmp_path)
    spec = importlib.util.spec_from_file_location("long_lived_environment", module)
    copied = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copied)

    def head() -> str:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True,
                              check=True).stdout.strip()
    first = head()
    assert copied.git_commit() == first and copied.git_dirty() is False
    (checkout / "phd_lab" / "extra.py").write_text("x = 1\n")
    for command in (["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "next"]):
        subprocess.run(["git", *command], cwd=checkout, check=True, capture_output=True)
    second = head()
    assert second != first
    assert copied.git_commit() == second and copied.git_dirty() is False and copied.git_diff() == b""


def test_the_git_commit_is_the_checkout_s_own_when_git_dir_names_another_repository(tmp_path):
    """``GIT_DIR`` (and ``GIT_WORK_TREE``) exported for another repository, as for a dotfiles repository, made git
    read that one: every run logged no commit (git_commit None, so no rerun compared it) and no uncommitted
    changes. phd-lab's own checkout is read now whatever those variables name."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    checkout, module = _committed_environment_module(tmp_path)
    own = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True, check=True)
    other = tmp_path / "dotfiles"
    subprocess.run(["git", "init", "-q", str(other)], check=True, capture_output=True)
    script = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('e', sys.argv[1]); "
              "e = importlib.util.module_from_spec(spec); spec.loader.exec_module(e); "
              "print(e.git_commit(), e.git_dirty())")
    env = {**os.environ, "GIT_DIR": str(other / ".git"), "GIT_WORK_TREE": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script, str(module)], env=env, capture_output=True, text=True,
                          check=True)
    assert done.stdout.split() == [own.stdout.strip(), "False"]


def test_the_patch_of_uncommitted_changes_keeps_non_ascii_text_under_a_posix_locale(tmp_path):
    """git's output was decoded in the locale's encoding: under LC_ALL=POSIX (ASCII) an uncommitted 'σ' in the
    checkout was logged as U+FFFD in <name>_git.diff, which then restored other code and had another sha256 than
    the same checkout's patch under a UTF-8 locale. It is read as UTF-8, as git writes the files' bytes."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    _, module = _committed_environment_module(tmp_path)
    with open(module, "a", encoding="utf-8") as handle:
        handle.write("# the noise σ of a layer\n")
    script = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('e', sys.argv[1]); "
              "e = importlib.util.module_from_spec(spec); spec.loader.exec_module(e); "
              "sys.stdout.buffer.write(e.git_diff())")
    env = {**os.environ, "LC_ALL": "POSIX", "PYTHONUTF8": "0"}
    patch = subprocess.run([sys.executable, "-c", script, str(module)], env=env, capture_output=True, check=True)
    assert "+# the noise σ of a layer\n" in patch.stdout.decode("utf-8")


@pytest.mark.parametrize("name, committed, edited", [
    ("windows.py", b"a = 1\r\nb = 2\r\n", b"a = 1\r\nb = 3\r\n"),
    ("legacy.py", "# coding: latin-1\nname = 'café'\n".encode("latin-1"),
     "# coding: latin-1\nname = 'café'\nsize = 'è'\n".encode("latin-1")),
], ids=["crlf line ends", "latin-1"])
def test_the_patch_of_a_file_git_does_not_read_as_utf_8_text_applies(tmp_path, name, committed, edited):
    """git's output was read in text mode, which turned the CRLF line ends of a tracked file into LF, and decoded
    as UTF-8 with errors replaced, which turned the 'é' of a Latin-1 encoded file (byte 0xE9) into U+FFFD: the
    run's <name>_git.diff named lines or bytes the file does not have, and ``git apply`` refused it ('patch does not
    apply'). The patch keeps git's bytes."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    checkout, module = _committed_environment_module(tmp_path)
    tracked = checkout / "phd_lab" / name
    tracked.write_bytes(committed)
    for command in (["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", name]):
        subprocess.run(["git", *command], cwd=checkout, check=True, capture_output=True)
    tracked.write_bytes(edited)
    spec = importlib.util.spec_from_file_location("checkout_environment", module)
    copied = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copied)
    patch = tmp_path / "run_git.diff"
    atomic.write_bytes(patch, copied.git_diff())  # as the executor writes it
    subprocess.run(["git", "checkout", "-q", f"phd_lab/{name}"], cwd=checkout, check=True)
    applied = subprocess.run(["git", "apply", "--check", str(patch)], cwd=checkout, capture_output=True, text=True)
    assert applied.returncode == 0, applied.stderr
    subprocess.run(["git", "apply", str(patch)], cwd=checkout, check=True)
    assert tracked.read_bytes() == edited


def test_recording_the_checkout_s_state_never_writes_into_its_repository(tmp_path):
    """``git status`` refreshed the index's file stamps, so every run rewrote the user's .git/index (and left an
    index.lock behind where it was killed or the disk was full)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    checkout, module = _committed_environment_module(tmp_path)
    later = module.stat().st_mtime + 100
    os.utime(module, (later, later))  # the same content with another stamp: what `git status` refreshes
    index = checkout / ".git" / "index"
    before = (index.read_bytes(), index.stat().st_mtime_ns)
    spec = importlib.util.spec_from_file_location("checkout_environment", module)
    copied = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copied)
    assert copied.git_dirty() is False and copied.git_diff() == b""
    assert (index.read_bytes(), index.stat().st_mtime_ns) == before
    assert not (checkout / ".git" / "index.lock").exists()


def test_a_registry_file_edited_between_two_grids_of_one_process_trains_and_logs_the_new_code(tmp_path, capsys,
                                                                                               monkeypatch):
    """A long-lived process (a Dask worker, a notebook) kept the registry module it imported first: after the
    file was edited it trained the old model, while _meta logged the sha256 of the new file."""
    registry = tmp_path / "my_models.py"
    registry.write_text(REGISTRY.format(act="relu"))
    logged = []
    for act, run_id in (("relu", "first"), ("tanh", "second")):
        registry.write_text(REGISTRY.format(act=act))
        config = write_config(tmp_path, epoch=1, cpu_threads=1, model="tiny_cnn", model_args={}, run_id=run_id,
                              registries={"models": str(registry)}, track_saturation=False, post_processing=[])
        assert main_in_process(capsys, "--config", str(config), "--no-progress")[0] == 0
        [folder] = [f for f in run_folders(tmp_path / "logs") if f"/{run_id}/" in str(f)]
        meta = json.loads((folder / f"{run_name(folder)}_config.json").read_text())[META_KEY]
        logged.append(meta)
        assert meta["registry_sha256"]["models"] == hashlib.sha256(registry.read_bytes()).hexdigest()
        assert meta["defaults_in_effect"]["model_args"] == {"act": act}  # the code that ran is the file's now

    # a dotted module name (a package on the module path) is executed again as well
    package = tmp_path / "labpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "zoo.py").write_text(REGISTRY.format(act="relu"))
    monkeypatch.syspath_prepend(str(tmp_path))
    from phd_lab.registry import Registries
    first = Registries({"models": "labpkg.zoo"})
    assert first.models.get("tiny_cnn")(num_classes=2)[1].__class__.__name__ == "ReLU"
    (package / "zoo.py").write_text(REGISTRY.format(act="tanh") + "\n# edited\n")
    second = Registries({"models": "labpkg.zoo"})
    assert second.models.get("tiny_cnn")(num_classes=2)[1].__class__.__name__ == "Tanh"
    assert second.file_hashes()["models"] == hashlib.sha256((package / "zoo.py").read_bytes()).hexdigest()
    assert first.file_hashes()["models"] != second.file_hashes()["models"]


def test_a_registry_module_found_in_the_working_directory_is_logged_as_its_file_and_reruns_from_anywhere(
        tmp_path, capsys, monkeypatch):
    """``"registries": {"models": "mymods"}`` with mymods.py in the working directory was logged as the bare
    name, so the logged config could not be rerun from another folder ("Cannot import ... 'mymods'"). Its file
    is logged instead; the run keeps its folder (registries are no part of its identity), and a run logged with
    the bare name by an earlier version is the same setup, not a changed one."""
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir(), elsewhere.mkdir()
    module = here / "cwd_models_logged_as_a_file.py"
    module.write_text(REGISTRY.format(act="relu"))
    config = write_config(here, epoch=1, cpu_threads=1, model="tiny_cnn", model_args={}, track_saturation=False,
                          post_processing=[], registries={"models": module.stem})
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])  # as under main.py
    monkeypatch.chdir(here)
    code, err = main_in_process(capsys, "--config", str(config), "--no-progress")
    assert code == 0, err
    [folder] = run_folders(here / "logs")
    logged_path = folder / f"{run_name(folder)}_config.json"
    logged = json.loads(logged_path.read_text())
    assert logged["registries"] == {"models": str(module)}
    monkeypatch.chdir(elsewhere)
    code, err = main_in_process(capsys, "--config", str(logged_path), "--no-progress")
    assert code == 0 and "already finished" in err, err
    assert run_folders(here / "logs") == [folder] and list(elsewhere.iterdir()) == []
    # a run logged with the bare name (before this version): rerunning its experiment config is no other setup
    logged_path.write_text(json.dumps({**logged, "registries": {"models": module.stem}}))
    monkeypatch.chdir(here)
    code, err = main_in_process(capsys, "--config", str(config), "--no-progress")
    assert code == 0 and "already finished" in err and "differs from the logged config" not in err, err
    assert json.loads(logged_path.read_text())["registries"] == {"models": str(module)}
    assert run_folders(here / "logs") == [folder]


def test_a_registry_file_imports_the_files_beside_it_from_any_working_directory(tmp_path):
    """A registry file given by its path ran without its folder on the module path, so its own import of a file
    beside it failed unless the command started in that folder; the logged config, which names the file by its
    path, then did not rerun a run whose module was found as a bare name in the working directory."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir(), elsewhere.mkdir()
    (project / "helper_layers_beside_the_registry.py").write_text("from torch import nn\nWIDTH = 4\n")
    (project / "my_models.py").write_text(
        "from torch import nn\n"
        "from helper_layers_beside_the_registry import WIDTH\n"
        "def tiny_cnn(*, num_classes: int, in_channels: int = 3) -> nn.Module:\n"
        "    return nn.Sequential(nn.Conv2d(in_channels, WIDTH, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),\n"
        "                         nn.Flatten(), nn.Linear(WIDTH, num_classes))\n")
    config = write_config(project, epoch=1, cpu_threads=1, model="tiny_cnn", model_args={}, track_saturation=False,
                          post_processing=[], registries={"models": str(project / "my_models.py")})
    done = run_main("--config", str(config), "--no-progress", "-q", cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    assert len(run_folders(project / "logs")) == 1


def test_a_moved_registry_file_s_error_says_that_its_new_path_in_the_logged_config_reruns_the_same_run(
        tmp_path, capsys):
    """A moved project's logged config names its registry file's old path: the error said only that the file does
    not exist, not that setting the new path keeps the run (registries are no part of a run's identity)."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "my_models.py").write_text(REGISTRY.format(act="relu"))
    config = write_config(project, epoch=1, cpu_threads=1, model="tiny_cnn", model_args={}, track_saturation=False,
                          post_processing=[], registries={"models": "my_models.py"})
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    moved = tmp_path / "moved"
    project.rename(moved)
    [folder] = run_folders(moved / "logs")
    logged_path = folder / f"{run_name(folder)}_config.json"
    code, err = main_in_process(capsys, "--config", str(logged_path), "--no-progress", "-q")
    err = " ".join(err.split())
    assert code == 2 and "Traceback" not in err, err
    assert (f"The models registry module file {str(project / 'my_models.py')!r} does not exist; give a dotted "
            "module name (e.g. 'registries.models') or a path to a .py file. If the file moved (with a moved "
            "project), set 'registries.models' to its new path, in a run's logged config as well: the registry "
            "modules are no part of a run's identity (its folder's hash), so the edited config reruns the same run "
            "in its folder, and warns if the file's code differs from the sha256 the run logged.") in err, err
    logged = json.loads(logged_path.read_text())
    logged_path.write_text(json.dumps({**logged, "registries": {"models": str(moved / "my_models.py")}}))
    code, err = main_in_process(capsys, "--config", str(logged_path), "--no-progress")
    assert code == 0 and "already finished" in err and "another setup" not in err, err
    assert run_folders(moved / "logs") == [folder]


HELPED_REGISTRY = """from torch import nn
import {helper}


def tiny_cnn(*, num_classes: int, in_channels: int = 3) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_channels, {helper}.WIDTH, 3, padding=1), {helper}.LAYER(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear({helper}.WIDTH, num_classes))
"""


def test_a_helper_beside_a_registry_file_is_hashed_and_an_edit_of_it_is_named_on_a_rerun(tmp_path, capsys):
    """``import helper`` from a registry file was not hashed: an edited helper.py reran the logged config
    without a word and trained another model (a long-lived process even kept the helper it imported first)."""
    helper = tmp_path / "helper_hashed_beside_its_registry.py"
    helper.write_text("from torch import nn\nWIDTH = 4\nLAYER = nn.ReLU\n")
    registry = tmp_path / "helped_models.py"
    registry.write_text(HELPED_REGISTRY.format(helper=helper.stem))
    config = write_config(tmp_path, epoch=1, cpu_threads=1, model="tiny_cnn", model_args={}, track_saturation=False,
                          post_processing=[], registries={"models": str(registry)})
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [folder] = run_folders(tmp_path / "logs")
    logged_path = folder / f"{run_name(folder)}_config.json"
    first = hashlib.sha256(helper.read_bytes()).hexdigest()
    assert json.loads(logged_path.read_text())[META_KEY]["registry_helper_sha256"]["models"] == {helper.name: first}
    helper.write_text("from torch import nn\nWIDTH = 4\nLAYER = nn.Tanh\n")
    code, err = main_in_process(capsys, "--config", str(logged_path), "--run-id", "again", "--no-progress")
    assert code == 0, err
    [again] = [f for f in run_folders(tmp_path / "logs") if f != folder]
    log_text = " ".join((again / f"{run_name(again)}.log").read_text().split())
    assert (f"This config was logged by a run under another setup: the code of {helper.name} beside the models "
            f"registry file, which it imports (sha256 {first[:12]}…, now sha256 "
            f"{hashlib.sha256(helper.read_bytes()).hexdigest()[:12]}…)") in log_text, log_text
    meta = json.loads((again / f"{run_name(again)}_config.json").read_text())[META_KEY]
    assert meta["registry_helper_sha256"]["models"] == {helper.name: hashlib.sha256(helper.read_bytes()).hexdigest()}
    from phd_lab.registry import Registries  # this process imported the helper before it was edited
    assert type(Registries({"models": str(registry)}).models.get("tiny_cnn")(num_classes=2)[1]).__name__ == "Tanh"


def test_same_named_helpers_beside_two_registry_files_are_refused_naming_both(tmp_path, capsys, monkeypatch):
    """Two registry folders with a helper.py each: the second registry file imported the first folder's helper
    (one module per name in a process) and trained with it, without a word."""
    name = "helper_of_the_same_name_in_two_folders"
    models, optimizers = tmp_path / "models", tmp_path / "optimizers"
    models.mkdir(), optimizers.mkdir()
    (models / f"{name}.py").write_text("from torch import nn\nWIDTH = 4\nLAYER = nn.ReLU\nLR = 0.003\n")
    (models / "helped_models.py").write_text(HELPED_REGISTRY.format(helper=name))
    (optimizers / f"{name}.py").write_text("LR = 0.01\n")
    (optimizers / "helped_optimizers.py").write_text(
        f"import torch\nimport {name}\n\n\ndef adam(model, *, epochs, lr={name}.LR):\n"
        f"    return torch.optim.Adam(model.parameters(), lr=lr), None\n")
    config = write_config(tmp_path, epoch=1, cpu_threads=1, model="tiny_cnn", model_args={}, track_saturation=False,
                          post_processing=[], optimizer_args={}, registries={
                              "models": str(models / "helped_models.py"),
                              "optimizers": str(optimizers / "helped_optimizers.py")})
    code, err = main_in_process(capsys, "--config", str(config), "--no-progress", "-q")
    err = " ".join(err.split())
    assert code == 2 and "Traceback" not in err, err
    assert (f"The optimizers registry file {str(optimizers / 'helped_optimizers.py')!r} imports a module that lies "
            f"as {str(optimizers / (name + '.py'))!r} beside it, but the registry file "
            f"{str(models / 'helped_models.py')!r} imported another {name!r} from its own folder "
            f"({str(models / (name + '.py'))!r}) in this process") in err, err
    assert "Rename the helper" in err and not (tmp_path / "logs").exists()
    # a helper that lacks what the other folder's has: the refusal, not the AttributeError it caused
    (models / f"{name}.py").write_text("from torch import nn\nWIDTH = 4\nLAYER = nn.ReLU\n")
    code, err = main_in_process(capsys, "--config", str(config), "--no-progress", "-q")
    err = " ".join(err.split())
    assert code == 2 and f"imported another {name!r} from its own folder ({str(models / (name + '.py'))!r})" in err, err
    # the second folder first on the module path: its own helper is imported, but the first folder's is in use
    from phd_lab.errors import RegistryError
    from phd_lab.registry import Registries
    monkeypatch.syspath_prepend(str(optimizers))
    with pytest.raises(RegistryError, match="imported another") as refused:
        Registries({"optimizers": str(optimizers / "helped_optimizers.py")})
    assert str(models / "helped_models.py") in str(refused.value) and str(models / f"{name}.py") in str(refused.value)


def _checkout_copy(target: Path) -> Path:
    """The tracked files of this checkout, as they are now, committed in a new repository at ``target``."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, (file.decode() for file in files)):
        if (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    for command in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                                                    "-m", "copy"]):
        subprocess.run(["git", *command], cwd=target, check=True, capture_output=True)
    return target


def _main_of(checkout: Path, cwd: Path, config: str, *args: str) -> subprocess.CompletedProcess:
    """``checkout``'s main.py on ``config`` (with ``args``) in a subprocess that imports that checkout's phd_lab."""
    return subprocess.run([sys.executable, str(checkout / "main.py"), "--config", config, *args, "--no-progress"],
                          cwd=cwd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})


def test_uncommitted_changes_are_kept_as_a_patch_beside_the_config_and_named_on_a_rerun(tmp_path):
    """A dirty checkout logged git_dirty: true and nothing else: the code that ran could not be restored."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("git or this checkout's repository is missing")
    checkout = _checkout_copy(tmp_path / "checkout")
    init = checkout / "phd_lab" / "__init__.py"
    init.write_text(init.read_text() + "\nLOCAL_CHANGE = 1  # not committed\n")
    config = write_config(tmp_path, epoch=1, cpu_threads=1, track_saturation=False, post_processing=[])
    assert _main_of(checkout, tmp_path, str(config)).returncode == 0
    [folder] = run_folders(tmp_path / "logs")
    name = run_name(folder)
    meta = json.loads((folder / f"{name}_config.json").read_text())[META_KEY]
    patch = (folder / f"{name}_git.diff").read_bytes()
    assert meta["git_dirty"] is True and meta["git_diff_sha256"] == hashlib.sha256(patch).hexdigest()
    assert b"+LOCAL_CHANGE = 1  # not committed" in patch
    subprocess.run(["git", "stash", "-q"], cwd=checkout, check=True, capture_output=True)
    subprocess.run(["git", "apply", str(folder / f"{name}_git.diff")], cwd=checkout, check=True)  # restores it
    assert "LOCAL_CHANGE = 1" in init.read_text()

    # a rerun at the same commit with other changes names them (the comparison every rerun makes; a second
    # training subprocess of the copied checkout would only add its start-up time)
    from phd_lab.reproduction import setup_differences
    code, _ = setup_differences(meta, {**meta, "git_diff_sha256": "f" * 64})
    assert code == [f"the uncommitted changes to phd-lab (diff sha256 {meta['git_diff_sha256'][:12]}…, now diff "
                    f"sha256 ffffffffffff…; the run's <name>_git.diff holds its own)"]
    assert setup_differences(meta, {**meta, "git_commit": "another"})[0] == []  # named as another commit
    assert setup_differences({k: v for k, v in meta.items() if k != "git_diff_sha256"},
                             {**meta, "git_diff_sha256": None})[0] == []  # an older _meta: not compared


def test_a_copy_without_git_logs_the_sha256_of_its_source_and_a_rerun_after_an_edit_names_it(tmp_path):
    """A copy of phd-lab synced to a cluster node without its .git logged no commit, so a rerun after the package's
    code changed (a model builder in phd_lab/models, the trainer) could not say that another code ran."""
    copy = tmp_path / "copy"
    for name in ("phd_lab", "registries"):
        shutil.copytree(ROOT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "main.py", copy / "main.py")
    config = write_config(tmp_path, epoch=1, cpu_threads=1, track_saturation=False, post_processing=[])
    assert _main_of(copy, tmp_path, str(config)).returncode == 0
    [folder] = run_folders(tmp_path / "logs")
    name = run_name(folder)
    meta = json.loads((folder / f"{name}_config.json").read_text())[META_KEY]
    assert meta["git_commit"] is None and meta["phd_lab_sha256"] == package_sha256(copy / "phd_lab")
    (copy / "phd_lab" / "notes.txt").write_text("no code")
    assert package_sha256(copy / "phd_lab") == meta["phd_lab_sha256"]  # only the .py files are the code
    trainer = copy / "phd_lab" / "trainer.py"
    trainer.write_text(trainer.read_text() + "\nLOCAL_CHANGE = 1\n")
    done = _main_of(copy, tmp_path, str(folder / f"{name}_config.json"), "--run-id", "again")
    assert done.returncode == 0, done.stderr
    message = " ".join(done.stderr.split())
    assert (f"This config was logged by a run under another setup: the code of the phd_lab package (sha256 "
            f"{meta['phd_lab_sha256'][:12]}…, now {package_sha256(copy / 'phd_lab')[:12]}…; no git commit was "
            f"logged to name the change)") in message

    from phd_lab.reproduction import code_differences
    both = {"git_commit": "abc", "phd_lab_sha256": "b" * 64}
    assert code_differences({"git_commit": "abc", "phd_lab_sha256": "a" * 64}, both) == []  # the commit names it
    assert code_differences({"git_commit": "abc"}, {**both, "git_commit": None}) == []  # an older _meta lacks it
    assert code_differences({"git_commit": "abc", "phd_lab_sha256": "a" * 64}, {**both, "git_commit": None}) == [
        "the code of the phd_lab package (sha256 aaaaaaaaaaaa…, now bbbbbbbbbbbb…; no git commit is here to name "
        "the change)"]


UNTRACKED_MODULE = '''from torch import nn


def build(num_classes: int, in_channels: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.{act}(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))
'''
UNTRACKED_FACTORY = '''

def local_net(*, num_classes: int, in_channels: int = 3) -> nn.Module:
    """A model of a module not yet committed."""
    from phd_lab.models.local_net import build
    return build(num_classes, in_channels)
'''


def test_an_untracked_module_the_run_imports_is_in_its_patch_and_a_change_to_it_is_named(tmp_path):
    """The patch held only tracked files: a run of a new model module, not yet committed, logged a patch that
    registered it without holding it (``git apply`` on the logged commit restored code that cannot run), and a
    rerun after that module changed trained another model without a warning (same commit, same patch)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("git or this checkout's repository is missing")
    checkout = _checkout_copy(tmp_path / "checkout")
    module = checkout / "phd_lab" / "models" / "local_net.py"
    module.write_text(UNTRACKED_MODULE.format(act="ReLU"))
    environment = checkout / "venv"  # `python -m venv venv` in the checkout: its packages are no code of phd-lab
    (environment / "lib" / "site-packages" / "pkg").mkdir(parents=True)
    (environment / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (environment / "lib" / "site-packages" / "pkg" / "installed.py").write_text("x = 1\n")
    registry = checkout / "registries" / "models.py"
    registry.write_text(registry.read_text() + UNTRACKED_FACTORY)
    config = write_config(tmp_path, epoch=1, cpu_threads=1, model="local_net", model_args={}, resolution=8,
                          track_saturation=False, post_processing=[])
    done = _main_of(checkout, tmp_path, str(config))
    assert done.returncode == 0, done.stderr
    [folder] = run_folders(tmp_path / "logs")
    name = run_name(folder)
    meta = json.loads((folder / f"{name}_config.json").read_text())[META_KEY]
    patch = folder / f"{name}_git.diff"
    assert meta["git_dirty"] is True and meta["git_diff_sha256"] == hashlib.sha256(patch.read_bytes()).hexdigest()
    assert b"+++ b/phd_lab/models/local_net.py" in patch.read_bytes() and b"installed.py" not in patch.read_bytes()
    kept = module.read_bytes(), registry.read_bytes()
    shutil.rmtree(environment)
    subprocess.run(["git", "stash", "-q", "--include-untracked"], cwd=checkout, check=True, capture_output=True)
    assert not module.exists()
    subprocess.run(["git", "apply", str(patch)], cwd=checkout, check=True, capture_output=True)  # restores both
    assert (module.read_bytes(), registry.read_bytes()) == kept

    # the module changed since: the checkout's patch is another, so a rerun names the uncommitted changes
    module.write_text(UNTRACKED_MODULE.format(act="Tanh"))
    spec = importlib.util.spec_from_file_location("untracked_environment", checkout / "phd_lab" / "environment.py")
    copied = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copied)
    assert copied.untracked_code() == ["phd_lab/models/local_net.py"] and copied.git_dirty() is True
    from phd_lab.reproduction import setup_differences
    now = {**meta, "git_diff_sha256": hashlib.sha256(copied.git_diff()).hexdigest()}
    assert setup_differences(meta, now)[0] == [
        f"the uncommitted changes to phd-lab (diff sha256 {meta['git_diff_sha256'][:12]}…, now diff sha256 "
        f"{now['git_diff_sha256'][:12]}…; the run's <name>_git.diff holds its own)"]


def test_a_factory_removed_from_an_edited_registry_file_is_gone(tmp_path):
    from phd_lab.errors import RegistryError
    from phd_lab.registry import Registries
    registry = tmp_path / "zoo.py"
    registry.write_text(REGISTRY.format(act="relu") + "\n\ndef spare(*, num_classes, in_channels=3):\n    pass\n")
    assert "spare" in Registries({"models": str(registry)}).models
    registry.write_text(REGISTRY.format(act="relu"))
    assert "spare" not in Registries({"models": str(registry)}).models
    registry.write_text("def broken(:\n")  # an edit that does not import keeps nothing half-replaced
    with pytest.raises(RegistryError, match="failed while being imported"):
        Registries({"models": str(registry)})
    registry.write_text(REGISTRY.format(act="tanh"))
    assert Registries({"models": str(registry)}).models.get("tiny_cnn")(num_classes=2)[1].__class__.__name__ == "Tanh"


def test_the_logged_config_pins_every_step_parameter_so_a_later_default_cannot_change_a_rerun(tmp_path, capsys,
                                                                                            monkeypatch):
    """Step parameters left at their defaults were not logged: a default changed by a later version changed
    what the logged config computed, without a trace. Parameters that follow a config key stay out."""
    from dataclasses import replace

    from phd_lab.steps import FROM_CONFIG, all_steps
    config = write_config(tmp_path, epoch=1, cpu_threads=1, track_saturation=False,
                          post_processing=["receptive_field", {"name": "project", "deltas": [0.9]}, "extract"])
    assert main_in_process(capsys, "--config", str(config), "--no-progress")[0] == 0
    [folder] = run_folders(tmp_path / "logs")
    logged_path = folder / f"{run_name(folder)}_config.json"
    steps = all_steps()
    expected = [{"name": "receptive_field",
                 **{key.name: key.default for key in steps["receptive_field"].params}},
                {"name": "project", **{key.name: key.default for key in steps["project"].params}, "deltas": [0.9]},
                {"name": "extract", **{key.name: key.default for key in steps["extract"].params
                                       if key.default is not FROM_CONFIG}}]
    logged = json.loads(logged_path.read_text())
    assert logged["post_processing"] == json.loads(json.dumps(expected))
    assert "random_control" in logged["post_processing"][1] and "downsampling" not in logged["post_processing"][2]
    rows = (folder / "projections.csv").read_text().count("random")
    assert rows == 1

    # a later version without the random control by default: the logged config keeps the run's results ...
    project = type(steps["project"])
    monkeypatch.setattr(project, "params", tuple(replace(key, default=False) if key.name == "random_control"
                                                 else key for key in project.params))
    code, err = main_in_process(capsys, "--config", str(logged_path), "--no-progress")
    assert code == 0 and re.search(r"step project of \S+: up to date \(same model and parameters\), kept", err)
    assert (folder / "projections.csv").read_text().count("random") == rows
    # ... while the experiment config, which left the default unset, follows the new default
    assert main_in_process(capsys, "--config", str(config), "--no-progress")[0] == 0
    assert (folder / "projections.csv").read_text().count("random") == 0
    assert json.loads(logged_path.read_text())["post_processing"][1]["random_control"] is False


def test_a_step_s_relative_latents_dir_is_logged_absolute_so_the_logged_config_reruns_and_probes_anywhere(
        tmp_path, capsys, monkeypatch):
    """The extract step's own latents_dir was logged as written ("lat"), though the top-level folder keys are
    logged absolute: the logged config, rerun from another folder, extracted again into that folder's lat/, and
    probe_main.py --config with it looked there and found no latents."""
    from phd_lab.probes.cli import probe_cli
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir(), elsewhere.mkdir()
    write_config(here, epoch=1, resolution=8, cpu_threads=1, track_saturation=False,
                 post_processing=[{"name": "extract", "latents_dir": "lat"}])
    monkeypatch.chdir(here)
    assert main_in_process(capsys, "--config", "exp.json", "--no-progress")[0] == 0
    [folder] = run_folders(here / "logs")
    logged_path = folder / f"{run_name(folder)}_config.json"
    assert json.loads(logged_path.read_text())["post_processing"][0]["latents_dir"] == str(here / "lat")
    manifest = here / "lat" / folder.relative_to(here / "logs") / "latents" / "manifest.json"
    written = manifest.stat().st_mtime_ns
    monkeypatch.chdir(elsewhere)
    code, err = main_in_process(capsys, "--config", str(logged_path), "--no-progress")
    assert code == 0 and "Extracted" not in err, err
    assert probe_cli(["--config", str(logged_path), "-mp", "0", "--solver", "lbfgs", "--train-samples", "100",
                      "--no-progress", "-q"]) == 0
    assert (folder / "probe_performances.csv").is_file() and manifest.stat().st_mtime_ns == written
    assert list(elsewhere.iterdir()) == []


def test_only_real_differences_of_the_setup_are_named_not_keys_an_older_meta_lacks():
    """The comparison behind the warnings above, on logged ``_meta`` values as older versions wrote them: a
    default changed to null is named, while what an older ``_meta`` lacks or logged as unknown (no hash of a
    registry file, numba not installed, no diff digest, a kind of factory arguments added since) is not."""
    from phd_lab.reproduction import code_differences, setup_differences, version_differences
    now = {"defaults_in_effect": {"model_args": {"act": None, "added": None}, "dataset_args": {"flip": None}},
           "registry_sha256": {"models": "b" * 64, "datasets": "c" * 64}, "git_commit": "abc",
           "git_diff_sha256": "d" * 64, "numba": "0.60.0", "torch": "2.5.0"}
    logged = {"defaults_in_effect": {"model_args": {"act": "relu"}}, "registry_sha256": {"models": None},
              "git_commit": "abc", "numba": None, "torch": "2.5.0"}
    assert code_differences(logged, now) == ['the model_args default act: "relu" (now null)']
    assert version_differences(logged, now) == []
    assert version_differences({"torch": "2.4.0"}, now) == ["torch 2.4.0 (now 2.5.0)"]
    assert len(code_differences({"git_commit": "abc", "git_diff_sha256": None}, now)) == 1  # logged: compared
    assert setup_differences(None, now) == ([], [])


def test_factory_defaults_json_cannot_hold_are_logged_as_their_repr():
    """A default class (an activation) or an infinite bound is logged by its repr: the logged config stays strict
    JSON that the rerun can read and compare."""
    from torch import nn

    from phd_lab.factory_args import defaults_in_effect

    def factory(*, num_classes: int, width: float = 0.5, layer: type = nn.ReLU, limit: float = float("inf"),
                given: int = 3) -> nn.Module:
        raise AssertionError("only its signature is read")

    defaults = defaults_in_effect(factory, {"given": 4}, ("num_classes",))
    assert defaults == {"width": 0.5, "layer": repr(nn.ReLU), "limit": "inf"}
    assert json.loads(json.dumps(defaults, allow_nan=False)) == defaults


FUNCTION_DEFAULT = '''from torch import nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self, in_channels, num_classes, act):
        super().__init__()
        self.conv, self.fc, self.act = nn.Conv2d(in_channels, 4, 3, padding=1), nn.Linear(4, num_classes), act

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).mean((2, 3)))


def tiny_act(*, num_classes: int, in_channels: int = 3, act=F.{act}) -> nn.Module:
    """A convolution with a functional activation, and a linear readout."""
    return Net(in_channels, num_classes, act)
'''


def _trained_own_model(tmp_path, capsys, registry, source: str, model: str):
    """Write ``source`` to the registry file ``registry``, train one epoch of its factory ``model`` and return the
    run's logged config."""
    registry.write_text(source)
    config = write_config(tmp_path, epoch=1, cpu_threads=1, model=model, model_args={},
                          registries={"models": str(registry)}, track_saturation=False, post_processing=[])
    assert main_in_process(capsys, "--config", str(config), "--no-progress", "-q")[0] == 0
    [folder] = run_folders(tmp_path / "logs")
    return folder / f"{run_name(folder)}_config.json"


def test_a_function_default_is_logged_without_its_address_and_an_unchanged_one_is_no_difference(tmp_path, capsys):
    """A factory default that is a function (``act=F.relu``) was logged by its repr, '<function relu at
    0x7fc3e6cd7ce0>', whose address is another in every process: every rerun of the run, in another process, warned
    'the model_args default act: "<function relu at 0x7fc3e6cd7ce0>" (now "<function relu at 0x7fb96d0e3ec0>")',
    a difference where there was none. The address is left out, also when a run logged it; another function is
    still named."""
    registry = tmp_path / "my_models.py"
    logged_path = _trained_own_model(tmp_path, capsys, registry, FUNCTION_DEFAULT.format(act="relu"), "tiny_act")
    logged = json.loads(logged_path.read_text())
    assert logged[META_KEY]["defaults_in_effect"]["model_args"] == {"act": "<function relu>"}
    # as a run of an earlier version logged it, in another process
    logged[META_KEY]["defaults_in_effect"]["model_args"]["act"] = "<function relu at 0x7f0123456789>"
    logged_path.write_text(json.dumps(logged))
    code, err = main_in_process(capsys, "--config", str(logged_path), "--no-progress")
    assert code == 0 and "another setup" not in err and "default act" not in err
    registry.write_text(FUNCTION_DEFAULT.format(act="elu"))
    code, err = main_in_process(capsys, "--config", str(logged_path), "--no-progress")
    assert code == 0
    assert 'the model_args default act: "<function relu at 0x7f0123456789>" (now "<function elu>")' in flat(err)


SET_DEFAULT = '''from torch import nn


def tiny_set(*, num_classes: int, in_channels: int = 3, relu_after: frozenset = frozenset({names})) -> nn.Module:
    """A convolution, a ReLU after the layers named, and a linear readout."""
    act = nn.ReLU() if "conv" in relu_after else nn.Identity()
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), act, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))
'''


def test_a_set_default_is_logged_in_sorted_order_and_one_in_another_order_is_no_difference(tmp_path, capsys):
    """A factory default that is a set of strings was logged by its repr, whose order is the process's string hash
    seed's ("frozenset({'pool', 'fc', 'bn', 'conv'})" under PYTHONHASHSEED=1, "frozenset({'bn', 'pool', 'conv',
    'fc'})" under 2): a rerun in another process named the unchanged default as changed. It is logged with its items
    sorted, and one an earlier version logged in another order compares as the same; another set is still named."""
    registry = tmp_path / "my_models.py"
    logged_path = _trained_own_model(tmp_path, capsys, registry,
                                     SET_DEFAULT.format(names='{"pool", "fc", "bn", "conv"}'), "tiny_set")
    logged = json.loads(logged_path.read_text())
    assert logged[META_KEY]["defaults_in_effect"]["model_args"] == {
        "relu_after": "frozenset({'bn', 'conv', 'fc', 'pool'})"}
    logged[META_KEY]["defaults_in_effect"]["model_args"]["relu_after"] = "frozenset({'pool', 'fc', 'bn', 'conv'})"
    logged_path.write_text(json.dumps(logged))
    code, err = main_in_process(capsys, "--config", str(logged_path), "--no-progress")
    assert code == 0 and "another setup" not in err and "default relu_after" not in err
    registry.write_text(SET_DEFAULT.format(names='{"pool", "fc"}'))
    code, err = main_in_process(capsys, "--config", str(logged_path), "--no-progress")
    assert code == 0
    assert ("the model_args default relu_after: \"frozenset({'pool', 'fc', 'bn', 'conv'})\" (now \"frozenset({'fc', "
            "'pool'})\")") in flat(err)


LAZY_IMPORT = '''from torch import nn


def tiny_lazy(*, num_classes: int, in_channels: int = 3) -> nn.Module:
    """A block of the file beside this one, imported when the model is built, and a linear readout."""
    from lazy_blocks_of_test_reproduction import block
    return nn.Sequential(block(in_channels), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
'''


def test_a_file_beside_the_registry_that_a_factory_imports_when_called_is_in_its_digest(tmp_path, capsys):
    """A helper file beside a registry file that the factory imports in its body (``from my_blocks import block``
    inside it) was in no digest: the helpers imported when the registry file runs are logged
    (``registry_helper_sha256``), but this one was not, and a rerun after the helper was edited (ReLU for Tanh)
    trained other weights without a word. Its sha256 is part of the factory's digest now, so the rerun names the
    factory's code as changed; an unchanged helper is no difference."""
    helper = tmp_path / "lazy_blocks_of_test_reproduction.py"
    helper.write_text("from torch import nn\n\n\ndef block(channels):\n"
                      "    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU())\n")
    try:
        logged_path = _trained_own_model(tmp_path, capsys, tmp_path / "my_models.py", LAZY_IMPORT, "tiny_lazy")
        code, err = main_in_process(capsys, "--config", str(logged_path), "--no-progress")
        assert code == 0 and "another setup" not in err, err
        helper.write_text(helper.read_text().replace("nn.ReLU()", "nn.Tanh()"))
        code, err = main_in_process(capsys, "--config", str(logged_path), "--run-id", "again", "--no-progress")
        assert code == 0
        assert ("This config was logged by a run under another setup: the code of the models factory 'tiny_lazy' "
                "(sha256") in flat(err)
    finally:
        sys.modules.pop("lazy_blocks_of_test_reproduction", None)


CLASS_DEFAULT = '''from torch import nn


class Block(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x).relu()


def tiny_block(*, num_classes: int, in_channels: int = 3, block: type = Block) -> nn.Module:
    """A block of this file and a linear readout."""
    return nn.Sequential(block(in_channels), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
'''


def test_a_default_class_of_the_registry_file_is_logged_without_its_path_and_a_moved_file_is_no_difference(
        tmp_path, capsys):
    """A factory default that is a class (or function) of the registry file itself was logged by its repr, whose
    module name holds the file's path ("<class 'phd_lab.registry_files.models_2f746d70….Block'>"): after the
    README's way of rerunning a moved project (its logged registries set to the file's new path), the rerun warned
    'The trained run is post-processed under another setup than it was trained with: the model_args default
    block: ... (now ...)', though nothing but the path had changed. The module is named by the file's name now,
    also in a value an earlier version logged."""
    from phd_lab.registry_files import module_name
    old = tmp_path / "old" / "my_models.py"
    old.parent.mkdir()
    logged_path = _trained_own_model(tmp_path, capsys, old, CLASS_DEFAULT, "tiny_block")
    logged = json.loads(logged_path.read_text())
    assert logged[META_KEY]["defaults_in_effect"]["model_args"] == {"block": "<class 'my_models.Block'>"}
    moved = tmp_path / "moved" / "my_models.py"
    old.parent.rename(moved.parent)
    logged["registries"]["models"] = str(moved)
    # as an earlier version logged it, by the module name of the file's old path
    logged[META_KEY]["defaults_in_effect"]["model_args"]["block"] = f"<class '{module_name('models', old)}.Block'>"
    logged_path.write_text(json.dumps(logged))
    code, err = main_in_process(capsys, "--config", str(logged_path), "--no-progress")
    assert code == 0 and "default block" not in err and "another setup" not in err, err


def test_a_logged_dotted_registry_module_not_importable_here_names_the_directory_the_run_was_started_in(
        tmp_path, capsys, monkeypatch):
    """A registry module of a package in the working directory ("registries": {"models": "pkg.models"}) stays a
    dotted name in the logged config (a package's module may import relatively, so it is not named by its file);
    rerun from another directory it was refused with only 'No module named ...', without the folder it was
    importable from. The refusal names the run's logged working directory and how to rerun."""
    package = tmp_path / "pkg_of_test_reproduction"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(REGISTRY.format(act="relu"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = write_config(tmp_path, epoch=1, cpu_threads=1, model="tiny_cnn", model_args={},
                          registries={"models": "pkg_of_test_reproduction.models"}, track_saturation=False,
                          post_processing=[])
    try:
        assert main_in_process(capsys, "--config", str(config), "--no-progress", "-q")[0] == 0
    finally:
        for name in [name for name in sys.modules if name.startswith("pkg_of_test_reproduction")]:
            del sys.modules[name]
    [folder] = run_folders(tmp_path / "logs")
    logged_path = folder / f"{run_name(folder)}_config.json"
    assert json.loads(logged_path.read_text())["registries"] == {"models": "pkg_of_test_reproduction.models"}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = run_main("--config", str(logged_path), "--no-progress", "-q", cwd=elsewhere)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert (f"Its run was started in the working directory {str(tmp_path)!r} (the logged config's "
            f"_meta.working_directory), from which 'pkg_of_test_reproduction.models' was imported: rerun from there, "
            f"or put that folder on PYTHONPATH.") in flat(done.stderr)


MY_MODELS = '''
from torch import nn

WIDTH = {width}


def _block(in_channels):
    return nn.Conv2d(in_channels, WIDTH, 3, padding=1)


def small(*, num_classes, in_channels=3):
    return nn.Sequential(_block(in_channels), nn.Flatten(), nn.LazyLinear(num_classes))


def other(*, num_classes, in_channels=3):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes{other}))
'''


def test_a_registry_file_edited_elsewhere_than_the_factory_a_run_used_is_no_code_difference(tmp_path):
    """Every upgrade named 'the code of the models registry file' changed for every logged run, as the whole file's
    sha256 was compared; a run logs each of its factories' own digest (its source and what it names from the file)
    and is warned only when that changed. A _meta logged without the digests is compared by the file's sha256."""
    from types import SimpleNamespace
    from phd_lab.registry import Registries
    from phd_lab.reproduction import code_differences
    config = SimpleNamespace(model="small", dataset="Digits", optimizer="adam", metrics=["Accuracy"])
    registry = tmp_path / "my_models.py"

    def meta(**source) -> dict:
        registry.write_text(MY_MODELS.format(**{"width": 4, "other": "", **source}))
        registries = Registries({"models": str(registry)})
        return {"registry_sha256": registries.file_hashes(),
                "registry_factory_sha256": registries.factory_hashes(config)}

    logged = meta()
    assert logged["registry_factory_sha256"]["models"]["small"] is not None
    assert code_differences(logged, meta(other=", bias=False")) == []  # another factory of the file edited
    changed = code_differences(logged, meta(width=8))  # a value the factory's helper reads
    assert len(changed) == 1 and changed[0].startswith("the code of the models factory 'small' (sha256 ")
    older = {"registry_sha256": logged["registry_sha256"]}  # as versions before December 2026 logged it
    assert [text.split(" (")[0] for text in code_differences(older, meta(other=", bias=False"))] == [
        "the code of the models registry file"]


def test_a_default_logged_as_the_value_its_null_now_stands_for_is_no_difference(tmp_path, capsys):
    """Runs logged before gamma's default became null (= 0.1) logged gamma 0.1 and warned "optimizer_args default
    gamma: 0.1 (now null)" on every resume, post-processing and rerun, though the same schedule is built; another
    gamma is still named."""
    from phd_lab.reproduction import code_differences
    config = write_config(tmp_path, epoch=1, cpu_threads=1, optimizer="sgd", track_saturation=False,
                          post_processing=[])
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [folder] = run_folders(tmp_path / "logs")
    logged_path = folder / f"{run_name(folder)}_config.json"
    logged = json.loads(logged_path.read_text())
    assert logged[META_KEY]["defaults_in_effect"]["optimizer_args"]["gamma"] is None
    for gamma, named in ((0.1, False), (0.5, True)):  # as logged before 191f1a7; a real difference
        logged[META_KEY]["defaults_in_effect"]["optimizer_args"]["gamma"] = gamma
        logged_path.write_text(json.dumps(logged))
        code, err = main_in_process(capsys, "--config", str(logged_path), "--no-progress", "-q")
        assert code == 0 and ("another setup" in err) is named, err
        assert (f"the optimizer_args default gamma: {gamma} (now null)" in " ".join(err.split())) is named
    now = {"defaults_in_effect": {"optimizer_args": {"gamma": None, "step_size": None}}}
    assert code_differences({"defaults_in_effect": {"optimizer_args": {"gamma": 0.1, "step_size": None}}}, now) == []
    assert code_differences({"defaults_in_effect": {"optimizer_args": {"gamma": None, "step_size": 20}}}, now) == [
        "the optimizer_args default step_size: 20 (now null)"]  # a null that stands for nothing else is compared


def test_a_cpu_model_logged_as_only_this_machine_s_architecture_is_no_difference(tmp_path, capsys):
    """phd-lab 0.1 logged a CPU run's device_name as platform.machine(): its runs said "device model x86_64 (now AMD
    EPYC ...)" on every rerun on the same machine. Only the architecture is known there, and it is this machine's;
    another CPU model, or an architecture this machine lacks, is still named."""
    import platform

    from phd_lab.reproduction import machine_differences
    config = write_config(tmp_path, epoch=1, cpu_threads=1, track_saturation=False, post_processing=[])
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [folder] = run_folders(tmp_path / "logs")
    logged_path = folder / f"{run_name(folder)}_config.json"
    logged = json.loads(logged_path.read_text())
    for name, named in ((platform.machine(), False), ("Another CPU 9000", True)):
        logged[META_KEY]["device_name"] = name
        logged_path.write_text(json.dumps(logged))
        code, err = main_in_process(capsys, "--config", str(logged_path), "--no-progress")
        assert code == 0 and (f"the device model {name} (now " in err) is named, err
    cpu = {"device": "cpu", "device_name": "AMD EPYC 7B13"}
    assert machine_differences({**cpu, "device_name": platform.machine()}, cpu) == []
    assert machine_differences({**cpu, "device_name": "s390x_of_another_machine"}, cpu) == [
        "the device model s390x_of_another_machine (now AMD EPYC 7B13)"]


def test_a_hand_edited_device_name_of_no_string_is_named_not_a_failed_run(tmp_path, capsys):
    """A logged CPU run's ``_meta.device_name`` edited into a list or an object failed its rerun with exit 1 and
    'TypeError: unhashable type' (looked up among this machine's architecture names), after the run's log was
    opened. It is compared as any other logged model name: named as another device model, and the run goes on."""
    config = write_config(tmp_path, epoch=1, cpu_threads=1, track_saturation=False, post_processing=[])
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [folder] = run_folders(tmp_path / "logs")
    logged_path = folder / f"{run_name(folder)}_config.json"
    logged = json.loads(logged_path.read_text())
    for name in (["AMD EPYC"], {"model": "AMD EPYC"}):
        logged[META_KEY]["device_name"] = name
        logged_path.write_text(json.dumps(logged))
        code, err = main_in_process(capsys, "--config", str(logged_path), "--no-progress")
        assert code == 0 and f"the device model {name} (now " in err, err

def test_only_the_rules_own_default_and_a_cpu_runs_model_are_read_as_what_they_stand_for(monkeypatch):
    """The two readings that keep an old run's log from differing apply where they are true and nowhere else: a null
    stands for 0.1 only as optimizer_args' gamma (a dataset's gamma null vs 0.1 is another default); a logged name
    that is only this machine's architecture is no difference only as a CPU run's device model (a GPU logged so, or
    an instruction set, is named). The architecture goes by platform.processor()'s name too (macOS: arm64, arm)."""
    from phd_lab.reproduction import code_differences, machine_differences
    assert code_differences({"defaults_in_effect": {"dataset_args": {"gamma": 0.1}}},
                            {"defaults_in_effect": {"dataset_args": {"gamma": None}}}) == [
        "the dataset_args default gamma: 0.1 (now null)"]
    monkeypatch.setattr("platform.machine", lambda: "arm64")
    monkeypatch.setattr("platform.processor", lambda: "arm")
    cpu = {"device": "cpu", "device_name": "Apple M2", "cpu_capability": "DEFAULT"}
    assert machine_differences({**cpu, "device_name": "arm"}, cpu) == []
    gpu = {"device": "cuda:0", "device_name": "NVIDIA H200"}
    assert machine_differences({**gpu, "device_name": "arm64"}, gpu) == ["the device model arm64 (now NVIDIA H200)"]
    assert machine_differences({**cpu, "cpu_capability": "arm64"}, cpu) == [
        "the CPU instruction set arm64 (now DEFAULT)"]


def test_a_finished_run_whose_code_or_training_keys_changed_is_not_called_finished_by_the_dask_client(tmp_path,
                                                                                                     capsys):
    """A Dask grid lists a finished point as finished without sending it to a worker (``rerun_changes_nothing``),
    but it compared the logged values alone: after the model factory's code changed it said 'finished' where a
    sequential rerun warns that the run is post-processed under other code, or refuses a checkpoint the model no
    longer fits (exit 2), and it said nothing of a cpu_threads the run keeps. Such a point goes to a worker now,
    whose rerun says so as the sequential one does."""
    from phd_lab.experiment import Main, rerun_changes_nothing
    registry = tmp_path / "my_models.py"
    registry.write_text(REGISTRY.format(act="relu"))
    values = dict(epoch=1, cpu_threads=1, model="tiny_cnn", model_args={}, registries={"models": str(registry)},
                  track_saturation=False, post_processing=[])
    config = write_config(tmp_path, **values)
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0

    def skipped() -> bool:
        main = Main(progress=False)
        main.load(config)
        return rerun_changes_nothing(main.executors[0], main.meta_models)

    assert skipped(), "finished, nothing changed: not sent to a worker"
    registry.write_text(REGISTRY.format(act="relu").replace("A 4-channel", "One 4-channel"))  # the docstring only
    assert not skipped()
    code, err = main_in_process(capsys, "--config", str(config), "--no-progress")
    assert code == 0 and "post-processed under another setup than it was trained with" in err
    registry.write_text(REGISTRY.format(act="relu").replace("4", "8"))  # a model the checkpoint does not fit
    assert not skipped()
    registry.write_text(REGISTRY.format(act="relu"))
    assert skipped()
    write_config(tmp_path, **{**values, "cpu_threads": 2})  # kept from the checkpoint, named in a warning
    assert not skipped()
