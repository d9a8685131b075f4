"""What a dry run or a cluster submission checks on a machine that will not train the runs itself.

A login node without a GPU must be able to list and submit a CUDA grid, and a dry run must read a logs tree
it cannot write (an archive, a colleague's runs): the device and the writability are the training
machine's business there. Plain runs still refuse both up front.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import torch

from phd_lab.errors import ConfigError
from phd_lab.experiment import Main
from tests.conftest import ROOT, flat, main_in_process, write_config

without_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


@without_cuda
def test_a_dry_run_of_a_cuda_grid_on_a_machine_without_cuda_warns_and_lists_it(tmp_path, capsys):
    config = write_config(tmp_path, device="cuda", run_id=["0", "1"])
    code, err = main_in_process(capsys, "--config", str(config), "--dry-run", "--no-progress")
    assert code == 0
    assert "asks for CUDA, but no CUDA device is available here" in err
    assert "for 1 more grid point(s)" in err  # said once, then counted
    code, err = main_in_process(capsys, "--config", str(config), "--no-progress")
    assert code == 2 and "asks for CUDA" in err and "Traceback" not in err  # training here: refused
    assert not (tmp_path / "logs").exists()


@without_cuda
def test_a_dry_run_with_the_device_option_for_cuda_lists_the_grid(tmp_path, capsys):
    config = write_config(tmp_path)
    code, err = main_in_process(capsys, "--config", str(config), "--dry-run", "--device", "cuda:1")
    assert code == 0 and "Traceback" not in err
    # the warning names the option it came from (it named the config's key 'device', which says 'cpu' here)
    assert "--device 'cuda:1' asks for CUDA" in flat(err) and "the key 'device'" not in err
    code, err = main_in_process(capsys, "--config", str(config), "--dry-run", "--device", "cuda:x")
    assert code == 2 and "--device 'cuda:x' is not a torch device" in err  # a wrong name stays an error


@without_cuda
def test_a_local_cluster_runs_here_so_its_device_is_checked_up_front(tmp_path, capsys):
    code, err = main_in_process(capsys, "--config", str(write_config(tmp_path)), "--scheduler", "local:1",
                                "--device", "cuda", "--no-progress")
    assert code == 2 and "--device 'cuda' asks for CUDA" in err  # before a cluster is started


@without_cuda
def test_a_grid_for_cluster_workers_loads_on_a_machine_without_their_device(tmp_path):
    config = write_config(tmp_path, device="cuda", tracking_device="cuda:0")
    grid = Main(progress=False, missing_device="ignore").load(config)  # what --scheduler does before submitting
    assert len(grid) == 1
    with pytest.raises(ConfigError, match="asks for CUDA"):
        Main(progress=False).load(config)
    with pytest.raises(ConfigError, match="'cuda:x' is not a torch device"):
        Main(progress=False, missing_device="ignore").load(write_config(tmp_path, "bad.json", device="cuda:x"))


def test_a_dry_run_reads_a_logs_dir_it_cannot_write(tmp_path, capsys):
    (tmp_path / "archive").write_text("a file where the logs_dir's parent would be")
    config = write_config(tmp_path, logs_dir=str(tmp_path / "archive" / "logs"))
    code, err = main_in_process(capsys, "--config", str(config), "--dry-run", "--no-progress")
    assert code == 0 and "is a file" in err and "Traceback" not in err
    code, err = main_in_process(capsys, "--config", str(config), "--no-progress")
    assert code == 2 and "is a file" in err


def test_a_dry_run_stopped_by_sigterm_does_not_speak_of_resuming_training(tmp_path):
    """It printed "rerun the same command to resume: training continues after the last completed epoch"."""
    config = write_config(tmp_path, run_id=[str(i) for i in range(20000)], seed=None)  # validating takes a while
    process = subprocess.Popen([sys.executable, "main.py", "--config", str(config), "--dry-run"], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    said = []  # past the imports: the grid's checks draw their bar as they start
    while not said or "checking 20000 grid points" not in said[-1]:
        said.append(process.stderr.readline())
        assert said[-1], said  # the process ended without starting the checks
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    assert err.strip().splitlines()[-1] == "terminated (SIGTERM)"


def test_a_list_valued_model_argument_swept_by_mistake_gets_the_list_of_lists_hint(tmp_path, capsys):
    """A list in model_args is a grid axis, so [false, true, true] reached torchvision one bool at a time and
    failed with "object of type 'bool' has no len()" and no word of the grid."""
    swept = write_config(tmp_path, model="tv:resnet18", model_args={"replace_stride_with_dilation": [False, True]},
                         resolution=32)
    code, err = main_in_process(capsys, "--config", str(swept), "--dry-run", "--no-progress")
    assert code == 2 and "model_args.replace_stride_with_dilation is a grid axis" in err
    assert "written as a list of lists, e.g. [[false, true, true]]" in err
    one_value = write_config(tmp_path, "one.json", model="tv:resnet18", resolution=32,
                             model_args={"replace_stride_with_dilation": [[False, True, True]]})
    code, err = main_in_process(capsys, "--config", str(one_value), "--dry-run", "--no-progress")
    assert code == 0, err
    # model_args as a list of objects is the axis: the lists inside them are values (the hint said they were swept)
    objects = write_config(tmp_path, "objects.json", model_args=[{"width": [0.0625, 0.125]}])
    code, err = main_in_process(capsys, "--config", str(objects), "--dry-run", "--no-progress")
    assert code == 2 and "a list inside model_args is swept" not in err
    assert "model_args itself is a grid axis, a list of objects with one point each" in " ".join(err.split())
    # an error about another argument's value is no list's doing: no hint (it told to write lists of lists)
    other = write_config(tmp_path, "other.json", model_args={"width": [0.0625, 0.125], "truncate": "bordr"})
    code, err = main_in_process(capsys, "--config", str(other), "--dry-run", "--no-progress")
    message = " ".join(err.split())
    assert code == 2 and "'truncate' is 'bordr'" in message and "grid axis" not in message


def test_checking_a_large_grid_shows_a_progress_bar(tmp_path, capsys):
    """A grid is checked point by point before anything runs; a large one said nothing for minutes."""
    from phd_lab.experiment import LARGE_GRID
    config = write_config(tmp_path, run_id=[str(i) for i in range(LARGE_GRID)], seed=None)
    code, err = main_in_process(capsys, "--config", str(config), "--dry-run")
    assert code == 0 and f"checking {LARGE_GRID} grid points" in err
    small = write_config(tmp_path, "small.json", run_id=["0", "1"], seed=None)
    code, err = main_in_process(capsys, "--config", str(small), "--dry-run")
    assert code == 0 and "checking" not in err


@without_cuda
def test_a_tracking_device_is_not_asked_for_where_saturation_is_not_tracked(tmp_path):
    """tracking_device is the device of the covariance sums only: a config that tracks nothing was refused on a
    machine without that device ('asks for CUDA'), though its run never uses it."""
    config = write_config(tmp_path, track_saturation=False, tracking_device="cuda")
    assert len(Main(progress=False).load(config)) == 1
    with pytest.raises(ConfigError, match="asks for CUDA"):
        Main(progress=False).load(write_config(tmp_path, "tracked.json", tracking_device="cuda"))


def test_tracking_keys_without_effect_are_named_with_the_runs_they_duplicate(tmp_path, caplog):
    """tracking_downsampling reduces maps only to a tracking_resolution, and no tracking key does anything with
    track_saturation false: a sweep over one of them trained one network in a folder per value without a word."""
    config = write_config(tmp_path, tracking_downsampling=["adaptive_avg", "nearest", "bilinear"])
    with caplog.at_level("WARNING", logger="phd_lab.experiment"):
        assert len(Main(progress=False).load(config)) == 3
    assert "'tracking_downsampling' has no effect where 'tracking_resolution' is null" in caplog.text
    assert "runs 0 and 1 differ only in them and train the same network twice" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="phd_lab.experiment"):
        Main(progress=False).load(write_config(tmp_path, "off.json", track_saturation=False, tracking_every_n=3,
                                               tracking_device="cpu"))  # no part of the folder: not named
        Main(progress=False).load(write_config(tmp_path, "used.json", tracking_resolution=4,
                                               tracking_downsampling="nearest", tracking_every_n=3))
    assert ": 'tracking_every_n' has no effect where 'track_saturation' is false" in caplog.text
    assert "twice" not in caplog.text and caplog.text.count("has no effect") == 1


def test_a_tracking_key_that_acts_in_other_runs_of_the_grid_is_not_called_idle(tmp_path, caplog):
    """A grid comparing tracked and untracked runs with tracking_every_n 2 was warned that the key has no effect
    and told to leave it out of new configs, which would change the tracked runs; it duplicates no run. Only a
    sweep that does (two untracked runs differing in it alone) is named, with advice that keeps the tracked runs."""
    with caplog.at_level("WARNING", logger="phd_lab.experiment"):
        assert len(Main(progress=False).load(write_config(tmp_path, "mixed.json", track_saturation=[True, False],
                                                          tracking_every_n=2))) == 2
    assert "has no effect" not in caplog.text
    with caplog.at_level("WARNING", logger="phd_lab.experiment"):
        Main(progress=False).load(write_config(tmp_path, "sweep.json", track_saturation=[True, False],
                                               tracking_every_n=[1, 2]))
    assert "runs 2 and 3 differ only in them and train the same network twice" in caplog.text
    assert "Set them only in the runs where they act" in caplog.text and "Leave them out" not in caplog.text


MAPPING_MODEL = '''
from torch import nn


def blocky(*, num_classes, in_channels=3, block=None):
    width = int(block["width"])  # a list here: "int() argument must be ... not 'list'"
    return nn.Sequential(nn.Conv2d(in_channels, width, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, num_classes))


def tagged(*, num_classes, in_channels=3, block=None):
    assert isinstance(block["widths"], list)  # a list as the value itself: no axis, and none wanted
    return blocky(num_classes=num_classes, in_channels=in_channels, block={"width": block["widths"][0]})
'''


def test_a_list_below_an_argument_of_model_args_is_said_to_be_no_axis(tmp_path, capsys):
    """``"model_args": {"block": {"width": [8, 16]}}`` reached the factory as one value and failed with the
    factory's own error alone: that only a list directly inside model_args is swept was in the README only."""
    registry = tmp_path / "mapping_models.py"
    registry.write_text(MAPPING_MODEL.lstrip())
    nested = write_config(tmp_path, model="blocky", model_args={"block": {"width": [8, 16]}},
                          registries={"models": str(registry)})
    code, err = main_in_process(capsys, "--config", str(nested), "--dry-run", "--no-progress")
    message = " ".join(err.split())
    assert code == 2 and "model_args.block.width is a list below an argument of model_args" in message, message
    assert "only a list directly inside model_args is a grid axis" in message
    assert "'block': [{...}, {...}]" in message and "Traceback" not in message
    swept = write_config(tmp_path, "swept.json", model="blocky", model_args={"block": [{"width": 8}, {"width": 16}]},
                         registries={"models": str(registry)})
    code, err = main_in_process(capsys, "--config", str(swept), "--dry-run", "--no-progress")
    assert code == 0, err  # the hint's way: two grid points
    value = write_config(tmp_path, "value.json", model="tagged", model_args={"block": {"widths": [8, 16]}},
                         registries={"models": str(registry)})
    code, err = main_in_process(capsys, "--config", str(value), "--dry-run", "--no-progress")
    assert code == 0 and "below an argument" not in err, err
