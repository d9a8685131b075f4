"""phd-lab used as a library in one long-lived process (a notebook, a script that runs several grids): a call
leaves the caller's logging, random state and torch flags as they were, and does its own work completely."""

from __future__ import annotations

import io
import logging
import os
import sys
from pathlib import Path

import pytest

from tests.conftest import write_config


@pytest.fixture
def unconfigured_logging():
    """The root logger of a fresh interpreter (a notebook kernel, a plain script): level WARNING, no handler of
    the caller's own (pytest's capturing handlers stay; they are restored with the level after the test)."""
    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.WARNING)
    yield root
    root.setLevel(before)


def one_epoch(folder: Path, **overrides) -> Path:
    """A tiny one-epoch config without saturation tracking: the quickest real run."""
    return write_config(folder, epoch=1, track_saturation=False, **overrides)


def test_a_run_started_from_python_logs_its_whole_run_into_its_log_file(tmp_path, unconfigured_logging, single_thread):
    """``Main`` called from a process that never configured logging: the root logger's WARNING level dropped every
    INFO record before the run's file handler saw it, and the run's .log file stayed empty."""
    from phd_lab.experiment import Main
    [outcome] = Main(progress=False)(one_epoch(tmp_path))
    assert outcome.status == "finished"
    [run_log] = Path(outcome.folder).glob("*.log")
    text = run_log.read_text(encoding="utf-8")
    assert "INFO phd_lab.executor: Run folder" in text
    assert "epoch 1/1: train_loss=" in text
    assert unconfigured_logging.level == logging.WARNING  # and the caller's level is back


@pytest.mark.parametrize("quieted", ["phd_lab", "phd_lab.trainer"])
def test_a_run_logs_its_whole_run_into_its_log_file_also_where_the_caller_quieted_phd_labs_logger(
        tmp_path, single_thread, quieted):
    """A notebook that quiets the library (``logging.getLogger("phd_lab").setLevel(logging.WARNING)``) with its own
    console at INFO: the logger's level dropped every INFO record before the run's file handler saw it, and the
    run's .log file stayed empty (without ``phd_lab.trainer``'s level, of its epochs), where the README promises
    the log files every line whatever the caller's logging. The console still shows what the levels let through."""
    from phd_lab.experiment import Main
    root, logger = logging.getLogger(), logging.getLogger(quieted)
    before = root.level
    stream = io.StringIO()
    mine = logging.StreamHandler(stream)
    root.addHandler(mine)
    root.setLevel(logging.INFO)
    logger.setLevel(logging.WARNING)
    try:
        [outcome] = Main(progress=False)(one_epoch(tmp_path))
        assert (logger.level, root.level, mine.filters) == (logging.WARNING, logging.INFO, [])
    finally:
        logger.setLevel(logging.NOTSET)
        root.setLevel(before)
        root.removeHandler(mine)
    assert outcome.status == "finished"
    [run_log] = Path(outcome.folder).glob("*.log")
    text = run_log.read_text(encoding="utf-8")
    assert "INFO phd_lab.executor: Run folder" in text
    assert "INFO phd_lab.trainer: vgg11-Digits-r16-bs128-e1 epoch 1/1: train_loss=" in text
    shown = stream.getvalue()
    assert "epoch 1/1: train_loss=" not in shown
    assert ("Run folder" in shown) == (quieted != "phd_lab")  # the executor's lines, where it was not quieted


@pytest.mark.parametrize("command", [["train", "--list", "steps"], ["train", "--config", "missing.json"],
                                     ["probe", "--latents", "missing"], ["report", "missing"]])
def test_a_command_called_from_python_leaves_the_callers_logging_as_it_was(tmp_path, unconfigured_logging, capsys,
                                                                            monkeypatch, command):
    """``main_cli`` and the other commands set up the console log for their call: they took the caller's handlers
    off the root logger for good (logging.basicConfig(force=True) closed them) and left the root at INFO, so a
    notebook's own log handler was gone and every library's INFO lines came out after the first call."""
    from phd_lab.__main__ import main
    monkeypatch.chdir(tmp_path)
    stream = io.StringIO()
    mine = logging.StreamHandler(stream)
    unconfigured_logging.addHandler(mine)
    try:
        handlers = list(unconfigured_logging.handlers)
        main(command)
        assert unconfigured_logging.level == logging.WARNING
        assert unconfigured_logging.handlers == handlers
        logging.getLogger("phd_lab.notebook").info("not shown")
        logging.getLogger("phd_lab.notebook").warning("still mine")
        assert stream.getvalue().splitlines()[-1:] == ["still mine"] and "not shown" not in stream.getvalue()
    finally:
        unconfigured_logging.removeHandler(mine)


def test_a_run_leaves_the_callers_random_generators_as_they_were(tmp_path, single_thread):
    """A run seeds python's, numpy's and torch's global generators; they were left where its training ended, so
    a notebook's own draws after a grid repeated those after any other grid of the same seed."""
    import random

    import numpy as np
    import torch

    from phd_lab.experiment import Main

    def draws() -> tuple:
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    random.seed(11), np.random.seed(11), torch.manual_seed(11)
    expected = draws()
    random.seed(11), np.random.seed(11), torch.manual_seed(11)
    [outcome] = Main(progress=False)(one_epoch(tmp_path))
    assert outcome.status == "finished"
    assert draws() == expected


def test_the_check_of_a_model_the_meta_device_cannot_build_leaves_the_callers_torch_generator(tmp_path):
    """A factory that needs real values (``.item()``) cannot be built on the meta device; the grid check then tried
    the optimizer's values on a stand-in Linear built on the CPU, whose initialisation drew from torch's global
    generator: a notebook's own draws after such a grid were not those after any other grid."""
    import torch

    from phd_lab.experiment import Main
    registry = tmp_path / "my_models.py"
    registry.write_text("import torch\nfrom torch import nn\n\ndef tiny(*, num_classes, in_channels=3):\n"
                        "    width = int(torch.tensor(4).item())  # no value on the meta device\n"
                        "    return nn.Sequential(nn.Conv2d(in_channels, width, 3), nn.AdaptiveAvgPool2d(1), "
                        "nn.Flatten(), nn.Linear(width, num_classes))\n")
    config = one_epoch(tmp_path, model="tiny", model_args={}, registries={"models": str(registry)})
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    Main(progress=False).load(config)  # every point checked, none trained
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("mode", ["set_grad_enabled", "inference_mode"])
def test_a_run_trains_under_a_callers_grad_mode_turned_off_and_leaves_it_off(tmp_path, single_thread, mode):
    """A notebook that only evaluates models turns autograd off for good (``torch.set_grad_enabled(False)``) or
    calls in a ``torch.inference_mode()`` block; every run it then started failed in its first batch ('element 0
    of tensors does not require grad')."""
    import pandas as pd
    import torch

    from phd_lab.experiment import Main
    off = torch.inference_mode() if mode == "inference_mode" else torch.set_grad_enabled(False)
    with off:
        [outcome] = Main(progress=False)(one_epoch(tmp_path))
        assert not torch.is_grad_enabled()
        assert torch.is_inference_mode_enabled() == (mode == "inference_mode")
    assert (outcome.status, outcome.error) == ("finished", "")
    [metrics] = [pd.read_csv(path) for path in Path(outcome.folder).glob("*.csv")]
    assert list(metrics["epoch"]) == [1]


def test_a_run_leaves_the_callers_matplotlib_backend_and_figures(tmp_path, single_thread):
    """The plots switched matplotlib to Agg with ``matplotlib.use``, which closes every open pyplot figure and left
    a notebook's inline backend replaced: its own figures were gone and ``plt.show()`` showed nothing after."""
    import matplotlib
    import matplotlib.pyplot as plt

    from phd_lab.experiment import Main
    before = matplotlib.get_backend()
    plt.switch_backend("svg")  # any backend but Agg stands for a notebook's inline one
    mine = plt.figure()
    try:
        [outcome] = Main(progress=False)(write_config(tmp_path, epoch=1, post_processing=["receptive_field"]))
        assert outcome.status == "finished"
        assert list(Path(outcome.folder).glob("*saturation_epoch1.png"))
        assert (Path(outcome.folder) / "receptive_field.png").is_file()
        assert matplotlib.get_backend() == "svg"
        assert plt.get_fignums() == [mine.number]
    finally:
        plt.close(mine)
        plt.switch_backend(before)


def test_one_main_runs_a_registry_file_edited_between_two_grids_as_it_is_now(tmp_path):
    """A ``Main`` kept in a notebook cached the registry modules of its first grid: after the file was edited, the
    next grid of the same object still built the old models (the README promises the file is executed again)."""
    from phd_lab.experiment import Main
    registry = tmp_path / "my_models.py"
    code = ("from torch import nn\nWIDTH = {}\n\ndef tiny(*, num_classes, in_channels=3):\n    return nn.Sequential("
            "nn.Conv2d(in_channels, WIDTH, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(WIDTH, num_classes))\n")
    config = one_epoch(tmp_path, model="tiny", model_args={}, registries={"models": str(registry)})
    main = Main(progress=False)
    widths = []
    for width in (4, 8):
        registry.write_text(code.format(width))
        main.load(config)
        executor = main.executors[0]
        widths.append(executor.registries.models.get("tiny")(num_classes=10, in_channels=1)[0].out_channels)
    assert widths == [4, 8]


def test_a_probe_job_started_from_python_logs_its_info_lines_into_probe_log(tmp_path, unconfigured_logging):
    """The probe job's own lines reached probe.log, but those logged through logging (where the results went) were
    dropped by the root's WARNING level of a process that never configured logging."""
    from phd_lab.probes.discovery import jobs_from_latents
    from phd_lab.probes.job import run_jobs
    from tests.probe_latents import blob_layers, make_latents
    run_dir, latents = make_latents(tmp_path, *blob_layers(n_layers=1))
    run_jobs(jobs_from_latents(latents)[0], tmp_path / "cache", progress=False)
    text = (run_dir / "probe.log").read_text(encoding="utf-8")
    assert "INFO phd_lab.probes.outputs: " in text and "probe results in" in text
    assert unconfigured_logging.level == logging.WARNING


def test_info_records_kept_in_two_threads_gives_the_callers_levels_back_once_the_last_ends(unconfigured_logging):
    """Two blocks of ``info_records_kept`` in two threads of one process (a run and a probe job), the first to start
    ending first: it put the root back to WARNING under the other, whose file took no more INFO records. The root
    passes INFO until the last ends; then the caller's level, handlers and their levels are as they were."""
    import threading

    from phd_lab.log_file import info_records_kept
    console = logging.StreamHandler(io.StringIO())
    unconfigured_logging.addHandler(console)
    before = unconfigured_logging.level, list(unconfigured_logging.handlers), \
        [handler.level for handler in unconfigured_logging.handlers]
    entered, release, levels = threading.Event(), threading.Event(), []

    def second() -> None:
        with info_records_kept():
            entered.set()
            release.wait(60)
            levels.append(logging.getLogger("phd_lab.trainer").isEnabledFor(logging.INFO))
    other = threading.Thread(target=second)
    try:
        with info_records_kept():
            other.start()
            entered.wait(60)
        release.set()
        other.join(60)
        after = unconfigured_logging.level, list(unconfigured_logging.handlers), \
            [handler.level for handler in unconfigured_logging.handlers]
    finally:
        release.set()
        unconfigured_logging.removeHandler(console)
    assert levels == [True]  # the second block's INFO records still reach the handlers after the first ended
    assert after == before


GATED_MODELS = '''from torch import nn

import {gate} as gate


class Gated(nn.Module):
    """A tiny net whose first training step calls ``gate.hook`` (from the run's thread, its log open)."""

    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(4, num_classes))
        self.called = False

    def forward(self, x):
        if not x.is_meta and self.training and not self.called:
            self.called = True
            gate.hook()
        return self.net(x)


def gated(*, num_classes, in_channels=3):
    return Gated(num_classes, in_channels)
'''


@pytest.mark.parametrize("first", ["probe job", "run"])
def test_a_run_and_a_probe_job_in_two_threads_keep_their_info_lines_whichever_ends_first(tmp_path, first,
                                                                                        unconfigured_logging,
                                                                                        single_thread):
    """A run (``Main``) and a probe job in two threads of one process (a notebook), the one that started first
    ending first while the other still worked: it gave the root logger back its WARNING level under the other, and
    the run's .log lost its epoch lines (or probe.log its results' INFO lines) from then on."""
    import threading
    import types

    from phd_lab.experiment import Main
    from phd_lab.probes.discovery import jobs_from_latents
    from phd_lab.probes.job import run_jobs
    from tests.probe_latents import blob_layers, make_latents
    name = f"gate_{tmp_path.name}"
    gate = types.ModuleType(name)
    (tmp_path / "models.py").write_text(GATED_MODELS.format(gate=name))
    config = write_config(tmp_path, epoch=2, resolution=8, batch_size=256, track_saturation=False,
                          post_processing=[], model="gated", model_args={},
                          registries={"models": str(tmp_path / "models.py")})
    run_dir, latents = make_latents(tmp_path / "probed", *blob_layers(n_layers=1))
    probing, release, outcomes = threading.Event(), threading.Event(), []

    class ProbeGate(logging.Handler):
        """Holds the probe job at its first line of fitting (its probe.log open) until released."""

        def emit(self, record: logging.LogRecord) -> None:
            if record.threadName == "probe" and record.name == "phd_lab.probes.runner" and not probing.is_set():
                probing.set()
                release.wait(60)

    probe = threading.Thread(name="probe", target=run_jobs, args=(jobs_from_latents(latents)[0], tmp_path / "cache"),
                             kwargs={"progress": False})
    run = threading.Thread(target=lambda: outcomes.extend(Main(progress=False)(config)))
    if first == "probe job":  # the probe job ends while the run trains
        gate.hook = lambda: (release.set(), probe.join(60))
    else:  # the run ends while the probe job fits
        gate.hook = lambda: (probe.start(), probing.wait(60))
    probe_gate = ProbeGate()
    logging.getLogger("phd_lab.probes").addHandler(probe_gate)
    sys.modules[name] = gate
    try:
        if first == "probe job":
            probe.start()
            probing.wait(60)
        run.start()
        run.join(120)
        release.set()
        probe.join(60)
    finally:
        release.set()
        logging.getLogger("phd_lab.probes").removeHandler(probe_gate)
        del sys.modules[name]
    [outcome] = outcomes
    assert outcome.status == "finished"
    [run_log] = Path(outcome.folder).glob("*.log")
    text = run_log.read_text(encoding="utf-8")
    assert "epoch 2/2: train_loss=" in text and "INFO phd_lab.executor: Run gated-" in text
    probed = (run_dir / "probe.log").read_text(encoding="utf-8")
    assert "INFO phd_lab.probes.outputs: " in probed and "probe results in" in probed
    assert unconfigured_logging.level == logging.WARNING


def test_a_local_dask_cluster_leaves_the_callers_dask_log_levels():
    """``--scheduler local:N`` (Main.run_on_cluster) quietened Dask's loggers for the rest of the process: a
    notebook's own Dask cluster after it no longer said what its scheduler and nannies did."""
    pytest.importorskip("distributed")
    from phd_lab.distributed import dask_client
    names = ("distributed", "distributed.scheduler", "distributed.core", "distributed.http.proxy", "distributed.nanny")
    before = {name: logging.getLogger(name).level for name in names}
    with dask_client("local:1") as client:
        assert client.submit(abs, -1).result() == 1
    assert {name: logging.getLogger(name).level for name in names} == before


def fx_sources() -> tuple[int, int]:
    """The generated sources of torch.fx graph modules that the process keeps for tracebacks: in linecache, and in
    torch.fx's loader (with a copy of each module's globals)."""
    import linecache

    from torch.fx import graph_module
    return (sum(key.startswith("<eval_with_key>") for key in list(linecache.cache)),
            len(graph_module._loader.eval_cache))


def test_a_grid_in_one_process_keeps_no_source_of_the_graphs_its_runs_traced(tmp_path, single_thread):
    """Every run kept the sources torch.fx generated for the graphs its receptive_field and flops steps traced
    (six a run; 11 KB of a tiny VGG, 88 KB of a ResNet-50) until the process ended, and so did every grid check:
    a grid of hundreds of runs in one process grew by all of them. A run's graphs are gone when it ends, and
    so are their sources (the receptive_field step alone traces once a run)."""
    from phd_lab.experiment import Main
    config = one_epoch(tmp_path, resolution=8, run_id=["0", "1"], post_processing=["receptive_field"])
    before = fx_sources()
    outcomes = Main(progress=False)(config)
    assert [outcome.status for outcome in outcomes] == ["finished"] * 2
    assert all((Path(outcome.folder) / "receptive_field.csv").exists() for outcome in outcomes)
    assert fx_sources() == before


SLOPPY_MODELS = '''import torch
from torch import nn


def tiny(*, num_classes, in_channels=3):
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))


def sloppy(*, num_classes, in_channels=3):
    torch.set_default_dtype(torch.float64)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.autograd.set_detect_anomaly(True)
    torch.backends.cudnn.deterministic = True
    torch.set_float32_matmul_precision("medium")
    return tiny(num_classes=num_classes, in_channels=in_channels).float()
'''


def torch_flags() -> tuple:
    """The process-wide torch flags a registry factory may set."""
    import torch
    return (torch.get_default_dtype(), torch.are_deterministic_algorithms_enabled(), torch.is_anomaly_enabled(),
            torch.backends.cudnn.deterministic, torch.get_float32_matmul_precision(), torch.is_grad_enabled())


def test_a_factory_that_sets_torch_flags_changes_no_later_grid_point(tmp_path, single_thread):
    """A model factory that set torch's default dtype to float64 (or deterministic algorithms, anomaly mode) left
    it set for the rest of the process: the grid's next point built its model in float64 and failed on float32
    data, where run alone it trained. The next point trains bit-identically to it run alone, and the caller's
    flags are as they were."""
    import torch

    from phd_lab.experiment import Main
    registry = tmp_path / "sloppy_models.py"
    registry.write_text(SLOPPY_MODELS)

    def grid(logs: str, models: list[str]) -> list:
        config = one_epoch(tmp_path, name=f"{logs}.json", model=models, model_args={}, resolution=8,
                           logs_dir=str(tmp_path / logs), registries={"models": str(registry)})
        return Main(progress=False)(config)

    before = torch_flags()
    [alone] = grid("alone", ["tiny"])
    assert torch_flags() == before
    outcomes = grid("after", ["sloppy", "tiny"])
    assert [outcome.status for outcome in outcomes] == ["finished", "finished"], outcomes
    assert torch_flags() == before
    [expected], [got] = ([torch.load(path, weights_only=True)["model"] for path in Path(folder).glob("*.pt")]
                         for folder in (alone.folder, outcomes[1].folder))
    assert expected and all(got[name].dtype == torch.float32 and torch.equal(got[name], expected[name])
                            for name in expected)


WARNING_MODELS = '''import warnings

from torch import nn


def quiet(*, num_classes, in_channels=3):
    warnings.simplefilter("ignore")  # "this library is noisy"
    return loud(num_classes=num_classes, in_channels=in_channels)


def loud(*, num_classes, in_channels=3):
    warnings.warn("planted by the loud factory", UserWarning)
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
'''


def test_a_factory_that_silences_warnings_silences_no_later_grid_point(tmp_path, single_thread, recwarn):
    """A model factory that called ``warnings.simplefilter("ignore")`` left the filter in the process: every later
    grid point (and the caller's own code, a notebook's, a Dask worker's next tasks) lost its warnings. The
    filters end with the factory's checks and run, as torch's flags do."""
    import warnings

    from phd_lab.experiment import Main
    registry = tmp_path / "warning_models.py"
    registry.write_text(WARNING_MODELS)
    (tmp_path / "warm-up").mkdir()
    Main(progress=False)(one_epoch(tmp_path / "warm-up", resolution=8))  # what a first call imports before any run
    config = one_epoch(tmp_path, model=["quiet", "loud"], model_args={}, resolution=8,
                       registries={"models": str(registry)})
    before = list(warnings.filters)
    outcomes = Main(progress=False)(config)
    assert [outcome.status for outcome in outcomes] == ["finished", "finished"], outcomes
    assert warnings.filters == before
    assert any("planted by the loud factory" in str(w.message) for w in recwarn), [str(w.message) for w in recwarn]


def backend_switches() -> dict[str, object]:
    """The switches of torch.backends and the default device a factory may set, beside ``torch_flags``."""
    import torch
    backends = torch.backends
    return {"benchmark": backends.cudnn.benchmark, "onednn": backends.mkldnn.enabled,
            "bf16 reduction": backends.cuda.matmul.allow_bf16_reduced_precision_reduction,
            "flash attention": backends.cuda.flash_sdp_enabled(), "math attention": backends.cuda.math_sdp_enabled(),
            "fp32": [getattr(owner, "fp32_precision") for owner in (backends, backends.cuda.matmul, backends.cudnn.conv,
                                                                     backends.mkldnn, backends.mkldnn.matmul)],
            "device": torch.empty(0).device.type}


@pytest.mark.parametrize("setting", [
    "torch.backends.cudnn.benchmark = True", "torch.backends.mkldnn.enabled = False",
    "torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False",
    "torch.backends.cuda.enable_flash_sdp(False)", "torch.backends.cuda.enable_math_sdp(False)",
    "torch.backends.fp32_precision = 'tf32'", "torch.backends.mkldnn.matmul.fp32_precision = 'bf16'",
    "torch.set_default_device('meta')"])
def test_a_switch_a_factory_sets_is_put_back_however_its_run_ends(setting):
    """The guard around a run and around the grid's checks put back the dtype, the deterministic algorithms and
    the older TF32 switches, but not cuDNN's autotuner (in the checks), oneDNN (CPU convolutions of other sums),
    the attention kernels, bf16 reductions, torch 2.9's fp32_precision nor the default device: a factory that set
    one left it to every later grid point and to the caller."""
    import torch

    from phd_lab.run_guards import torch_flags_kept
    before = backend_switches()
    with pytest.raises(RuntimeError, match="the run failed"), torch_flags_kept():
        exec(setting, {"torch": torch})  # noqa: S102 - one of the settings above
        raise RuntimeError("the run failed")
    assert backend_switches() == before


def test_a_registry_file_that_sets_tf32_by_torchs_newer_names_runs_under_it(tmp_path):
    """torch 2.9 names the TF32 switches anew (torch.backends.cuda.matmul.fp32_precision = "tf32", as its notes
    advise), and refuses to read one set by those names by the older ones ("you have used mix of the legacy and new
    APIs"): a registry file or a notebook that set one failed every grid with that RuntimeError, the guard of
    torch's flags reading torch.get_float32_matmul_precision. The switch holds for the runs, and the guard keeps it
    by the newer names."""
    import torch

    from phd_lab.experiment import Main
    registry = tmp_path / "tf32_models.py"
    tiny = SLOPPY_MODELS.split("\n\n\ndef sloppy")[0]
    registry.write_text(tiny + "\n\n\ntorch.backends.cuda.matmul.fp32_precision = 'tf32'\n")
    before = torch.backends.cuda.matmul.fp32_precision
    try:
        config = one_epoch(tmp_path, model="tiny", model_args={}, resolution=8, registries={"models": str(registry)})
        [outcome] = Main(progress=False)(config)
        assert outcome.status == "finished"
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    finally:
        torch.backends.cuda.matmul.fp32_precision = before
    assert torch.get_float32_matmul_precision() == "highest"  # readable by the older names again


@pytest.mark.parametrize("first_by", ["grid", "module name"])
def test_a_registry_file_imports_no_module_beside_another_grids_registry_file(tmp_path, first_by):
    """A registry file's folder stays on sys.path once imported, and the registry file of a later grid (another
    folder) that imports a module lying beside neither of its paths found the one beside the first file: it
    loaded in that process, running code its run recorded nowhere, and failed when its grid ran alone. The first
    file may also have come in by its module name (a worker process that received one of its objects)."""
    import importlib

    from phd_lab import registry_files
    from phd_lab.errors import RegistryError
    from phd_lab.experiment import Main
    helper = f"layers_of_the_first_project_{first_by.replace(' ', '_')}"  # one module per name in a process
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    (first / f"{helper}.py").write_text("WIDTH = 4\n")
    code = (f"from torch import nn\nfrom {helper} import WIDTH\n\n\ndef tiny(*, num_classes, "
            "in_channels=3):\n    return nn.Sequential(nn.Conv2d(in_channels, WIDTH, 3), nn.AdaptiveAvgPool2d(1), "
            "nn.Flatten(), nn.Linear(WIDTH, num_classes))\n")
    for folder in (first, second):
        (folder / "models.py").write_text(code)
    main = Main(progress=False)
    if first_by == "grid":
        main.load(one_epoch(first, model="tiny", model_args={}, registries={"models": str(first / "models.py")}))
    else:
        importlib.import_module(registry_files.module_name("models", first / "models.py"))
    with pytest.raises(RegistryError, match=f"imports '{helper}', which is not installed"):
        main.load(one_epoch(second, model="tiny", model_args={}, registries={"models": str(second / "models.py")}))
    main.load(one_epoch(first, model="tiny", model_args={}, registries={"models": str(first / "models.py")}))


def test_a_registry_files_import_looks_at_no_module_that_lies_beside_no_registry_folder(tmp_path):
    """Hiding the modules of other registry folders resolved the path of every module of the process (thousands
    once torch is imported) once per registry folder on sys.path: each registry file a long-lived process (a
    notebook, a Dask worker, the test suite) imported took 0.2 s longer per folder imported before. A module whose
    name none of those folders holds is passed over now without its file being looked at."""
    import sys
    import types

    from phd_lab.registry_import import import_registry_module

    class Counted(types.ModuleType):
        reads = 0

        @property
        def __file__(self) -> str:
            type(self).reads += 1
            return str(tmp_path / "elsewhere" / "installed_module_of_no_registry_folder.py")

    for index in range(3):
        folder = tmp_path / f"project{index}"
        folder.mkdir()
        (folder / "models.py").write_text(f"def net_{index}():\n    return {index}\n")
    name = f"installed_module_of_no_registry_folder_{id(tmp_path)}"
    sys.modules[name] = Counted(name)
    try:
        for index in range(3):
            import_registry_module(str(tmp_path / f"project{index}" / "models.py"), "models")
    finally:
        del sys.modules[name]
    assert Counted.reads == 0


def test_two_registry_files_of_one_folder_share_its_helpers_as_python_would(tmp_path, monkeypatch):
    """The datasets and models registry files of one folder both importing a helper beside them (``shared.py``,
    which imports ``sizes.py``) each got a copy of their own: the dataset of the first was of a class its module's
    name no longer gave, so a DataLoader worker under spawn or forkserver could not be sent it ("Can't pickle
    <class 'shared.Blobs'>: it's not the same object as shared.Blobs"). An unchanged helper is shared now, each
    file still records it and what it imports; an edited one is executed afresh, and so is each helper for a
    registry file executed again (edited), whose code sets things in it once (``NAMES.append``)."""
    import pickle
    import sys

    from phd_lab.registry_import import helper_sha256, import_registry_module
    shared, sizes = f"shared_of_{tmp_path.name}", f"sizes_of_{tmp_path.name}"  # one module per name in a process
    (tmp_path / f"{sizes}.py").write_text("SIZE = 3\n")
    installed = f"installed_of_{tmp_path.name}"  # an installed module that shared.py is the first to import
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / f"{installed}.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    (tmp_path / f"{shared}.py").write_text(f"import {installed}\nfrom {sizes} import SIZE\n\nNAMES = []\n\n\n"
                                           f"class Blobs:\n    def __len__(self):\n        return SIZE\n")
    (tmp_path / "datasets.py").write_text(f"from {shared} import Blobs\n\n\ndef blobs():\n    return Blobs()\n")
    (tmp_path / "models.py").write_text(f"import {shared}\n\n{shared}.NAMES.append('net')\n\n\ndef net():\n"
                                        f"    return {shared}.Blobs\n")
    try:
        datasets = import_registry_module(str(tmp_path / "datasets.py"), "datasets")
        models = import_registry_module(str(tmp_path / "models.py"), "models")
        assert len(pickle.loads(pickle.dumps(datasets.blobs()))) == 3
        assert models.net() is type(datasets.blobs())
        assert helper_sha256(models) == helper_sha256(datasets) and set(helper_sha256(models)) == {
            f"{shared}.py", f"{sizes}.py"}
        assert sys.modules[shared].NAMES == ["net"]
        (tmp_path / "models.py").write_text((tmp_path / "models.py").read_text() + "# edited\n")
        models = import_registry_module(str(tmp_path / "models.py"), "models")
        assert sys.modules[shared].NAMES == ["net"]  # appended once, as in a fresh process
        (tmp_path / f"{sizes}.py").write_text("SIZE = 5\n")  # shared.py is unchanged, what it imports is not
        datasets = import_registry_module(str(tmp_path / "datasets.py"), "datasets")
        assert len(datasets.blobs()) == 5 and len(models.net()()) == 3
    finally:
        for name in (shared, sizes, installed):
            sys.modules.pop(name, None)


def test_a_helper_imported_afresh_for_an_edited_registry_file_is_the_one_its_folders_other_files_use(tmp_path):
    """Two registry files of one folder share its helper (``shared.py``); once the models file was edited in a
    long-lived process (a notebook, a Dask worker), its new import took the helper afresh, and the unchanged datasets
    file kept the old one: its dataset was of a class the helper's name no longer gave, so a DataLoader worker under
    spawn or forkserver could not be sent it ("Can't pickle ... not the same object") until the process ended. The
    datasets file is executed again on its next import, with the helper its folder's files now share."""
    import pickle
    import sys

    from phd_lab.registry import Registries
    from phd_lab.registry_import import import_registry_module
    shared = f"edited_shared_of_{tmp_path.name}"  # one module per name in a process
    (tmp_path / f"{shared}.py").write_text("class Blobs:\n    pass\n")
    (tmp_path / "datasets.py").write_text(f"from {shared} import Blobs\n\n\ndef blobs():\n    return Blobs()\n")
    (tmp_path / "models.py").write_text(f"import {shared}\n\n\ndef net():\n    return {shared}.Blobs\n")
    try:
        import_registry_module(str(tmp_path / "datasets.py"), "datasets")
        import_registry_module(str(tmp_path / "models.py"), "models")
        (tmp_path / "models.py").write_text((tmp_path / "models.py").read_text() + "# edited\n")
        models = import_registry_module(str(tmp_path / "models.py"), "models")
        datasets = import_registry_module(str(tmp_path / "datasets.py"), "datasets")
        assert type(pickle.loads(pickle.dumps(datasets.blobs()))) is models.net() is sys.modules[shared].Blobs
        # the models registry imported first (as a grid's registries are): it shares the one the datasets file,
        # edited since, imports afresh
        (tmp_path / "datasets.py").write_text((tmp_path / "datasets.py").read_text() + "# edited\n")
        registries = Registries({"models": str(tmp_path / "models.py"), "datasets": str(tmp_path / "datasets.py")})
        assert registries.models.get("net")() is type(registries.datasets.get("blobs")()) is sys.modules[shared].Blobs
    finally:
        sys.modules.pop(shared, None)


def test_a_library_that_imports_a_package_named_like_a_file_beside_the_registry_file_is_no_helper_of_it(
        tmp_path, monkeypatch):
    """A metrics registry file beside its folder's datasets registry file (``datasets.py``) that imports a library
    which imports an installed package of that name (evaluate imports Hugging Face's ``datasets``) was refused:
    "imports a module that lies as '.../datasets.py' beside it, but 'datasets' resolves to '.../site-packages/...'",
    though neither it nor a helper of its folder imported that name. Only the names they import are looked at."""
    from phd_lab.registry_import import helper_sha256, import_registry_module
    package, library = f"data_of_{tmp_path.name}", f"evaluation_of_{tmp_path.name}"  # one module per name
    (tmp_path / "site" / package).mkdir(parents=True)
    (tmp_path / "site" / package / "__init__.py").write_text("")
    (tmp_path / "site" / f"{library}.py").write_text(f"import {package}\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / f"{package}.py").write_text("def blobs():\n    return 1\n")  # its datasets file
    (tmp_path / "project" / "metrics.py").write_text(f"import {library}\n\n\ndef score():\n    return 1\n")
    try:
        metrics = import_registry_module(str(tmp_path / "project" / "metrics.py"), "metrics")
        assert metrics.score() == 1 and helper_sha256(metrics) == {}
    finally:
        for name in (package, library):
            sys.modules.pop(name, None)


@pytest.mark.parametrize("imports", ["from {name} import my_fn", "import {name}"])
def test_a_helper_named_like_a_package_this_process_imported_before_is_refused_as_one_never_imported(
        tmp_path, monkeypatch, imports):
    """A helper named like an installed package (``tqdm.py`` beside the registry file): where no module had imported
    that package yet, the refusal named the helper and the package it lost to; where phd-lab or the caller had
    (tqdm, numpy), the registry file ran with the package, failing with "cannot import name 'my_fn' from 'tqdm'"
    and the advice to run the file as a script, which imports the helper and shows no error. It is the refusal in
    both cases now."""
    import importlib

    from phd_lab.errors import RegistryError
    from phd_lab.registry_import import import_registry_module
    name = f"bars_of_{tmp_path.name}"  # one module per name in a process
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / f"{name}.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.import_module(name)  # an installed package this process imported before
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / f"{name}.py").write_text("def my_fn():\n    return 1\n")
    (tmp_path / "project" / "models.py").write_text(imports.format(name=name) + "\n\n\ndef net():\n    return 1\n")
    try:
        with pytest.raises(RegistryError, match="imports a module that lies as") as refused:
            import_registry_module(str(tmp_path / "project" / "models.py"), "models")
        assert str(tmp_path / "project" / f"{name}.py") in str(refused.value)
        assert str(tmp_path / "site" / f"{name}.py") in str(refused.value)
    finally:
        sys.modules.pop(name, None)


def test_a_factory_that_sets_the_thread_count_while_the_grid_is_checked_leaves_the_other_points_theirs(tmp_path):
    """A model factory that called torch.set_num_threads(1) (run on the meta device while the grid is checked)
    left one thread to every point of the grid: those of ``cpu_threads: null`` summed with one thread instead of
    torch's default, and differed in their last bits from the same points run alone."""
    import torch

    from phd_lab.experiment import Main
    registry = tmp_path / "thread_models.py"
    registry.write_text(SLOPPY_MODELS.split("\n\n\ndef sloppy")[0] + "\n\n\ndef one_thread(*, num_classes, "
                        "in_channels=3):\n    torch.set_num_threads(1)\n    return tiny(num_classes=num_classes, "
                        "in_channels=in_channels)\n")
    config = one_epoch(tmp_path, model=["one_thread", "tiny"], model_args={}, resolution=8,
                       registries={"models": str(registry)})
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        main = Main(progress=False)
        grid = main.load(config)
        assert torch.get_num_threads() == 2
        [outcome] = main.run(grid, [1])  # the tiny point alone
    finally:
        torch.set_num_threads(before)
    assert outcome.status == "finished"
    [tiny_log] = Path(outcome.folder).glob("*.log")
    assert "2 CPU thread(s)" in tiny_log.read_text(encoding="utf-8")


def test_a_flag_a_registry_file_sets_when_it_is_imported_holds_for_its_runs(tmp_path):
    """torch flags a registry file sets at its top (as a library's import would) are the setup its runs are meant to
    train under: the grid check restores those its factories set, not those of the module's import."""
    import torch

    from phd_lab.experiment import Main
    registry = tmp_path / "precise_models.py"
    tiny = SLOPPY_MODELS.split("\n\n\ndef sloppy")[0]
    registry.write_text(tiny + "\n\n\ntorch.set_float32_matmul_precision('high')\n")
    before = torch.get_float32_matmul_precision()
    try:
        config = one_epoch(tmp_path, model="tiny", model_args={}, registries={"models": str(registry)})
        Main(progress=False).load(config)
        assert torch.get_float32_matmul_precision() == "high" != before
    finally:
        torch.set_float32_matmul_precision(before)


def test_a_warning_shown_once_inside_a_guarded_block_shows_again_under_the_filters_put_back():
    """Python records a warning shown by a "default" filter in the module's registry; the guard puts back the
    filters but must also make Python forget that record, or an "always" filter of the caller stays silent for
    that warning. It said so through warnings._filters_mutated, which Python 3.14 no longer has."""
    import warnings

    from phd_lab.run_guards import warning_filters_kept

    def shown() -> bool:
        said: list[str] = []
        hook, warnings.showwarning = warnings.showwarning, lambda message, *rest, **named: said.append(str(message))
        try:
            warnings.warn("said at one place", UserWarning)
        finally:
            warnings.showwarning = hook
        return said == ["said at one place"]

    saved = list(warnings.filters)
    try:
        warnings.simplefilter("always", UserWarning)
        before = list(warnings.filters)
        with warning_filters_kept():
            warnings.simplefilter("default", UserWarning)  # shown once, then recorded and silent
            assert shown() and not shown()
        assert warnings.filters == before
        assert shown() and shown()  # "always" again
    finally:
        warnings.filters[:] = saved
        warnings.simplefilter("ignore", append=True)  # any filter call makes Python forget the records
        warnings.filters[:] = saved


def _one_block_then_exit() -> None:
    from phd_lab.log_file import info_records_kept
    with info_records_kept():
        pass


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks a child process")
def test_a_child_forked_while_another_thread_holds_the_blocks_lock_can_enter_a_block(unconfigured_logging):
    """A process forked while a thread of its parent was inside ``info_records_kept``'s counting (a DataLoader's
    workers or a forked pool started beside a probe job in a thread) inherited the lock held by a thread it does not
    have, and its first block waited for ever. The lock is held here by a thread at the fork, as it can be then."""
    import multiprocessing
    import threading

    from phd_lab import log_file
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with log_file._kept_lock:
            holding.set()
            release.wait(60)
    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait(60)
    child = multiprocessing.get_context("fork").Process(target=_one_block_then_exit)
    try:
        child.start()
    finally:
        release.set()
        holder.join(60)
    child.join(60)
    if child.exitcode is None:
        child.kill()
        child.join()
    assert child.exitcode == 0


def test_a_block_interrupted_while_it_raised_the_root_is_not_counted(unconfigured_logging):
    """A Ctrl-C while ``info_records_kept`` raised the root's handlers left the block counted though its ``finally``
    never ran: every later block ended with the root still at INFO and the handler at WARNING for the rest of the
    process. The interrupted block now changes nothing, and a later one gives everything back."""
    from phd_lab.log_file import info_records_kept

    class InterruptedOnce(logging.Handler):
        """A console handler whose first level change meets a Ctrl-C."""
        interrupt = True

        def setLevel(self, level) -> None:  # noqa: N802 - logging's name
            if self.interrupt:
                self.interrupt = False
                raise KeyboardInterrupt
            super().setLevel(level)
    console = InterruptedOnce()
    unconfigured_logging.addHandler(console)
    try:
        with pytest.raises(KeyboardInterrupt):
            with info_records_kept():
                pass
        interrupted = unconfigured_logging.level, console.level
        with info_records_kept():
            inside = unconfigured_logging.level, console.level
        after = unconfigured_logging.level, console.level
    finally:
        unconfigured_logging.removeHandler(console)
    assert interrupted == (logging.WARNING, logging.NOTSET)
    assert inside == (logging.INFO, logging.WARNING)
    assert after == (logging.WARNING, logging.NOTSET)


def test_a_level_the_caller_sets_inside_a_block_is_kept_after_it(unconfigured_logging):
    """The root's and a handler's level that the caller set while a block ran (a notebook turning on DEBUG while a
    run trained in a thread) were overwritten by the levels found at the start when the last block ended."""
    from phd_lab.log_file import info_records_kept
    console = logging.StreamHandler(io.StringIO())
    unconfigured_logging.addHandler(console)
    try:
        with info_records_kept():
            unconfigured_logging.setLevel(logging.DEBUG)
            console.setLevel(logging.ERROR)
        after = unconfigured_logging.level, console.level
    finally:
        unconfigured_logging.removeHandler(console)
    assert after == (logging.DEBUG, logging.ERROR)
