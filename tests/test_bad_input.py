"""Every kind of bad input: exit status 2, one clear paragraph, no traceback, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from phd_lab.cli import main_cli
from tests.conftest import TINY, flat, main_in_process, run_main, write_config


def _write_raw(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.json"
    path.write_text(text)
    return path


CASES = {
    # name: (overrides, expected fragments of the message)
    "unknown_key": ({"bacth_size": 8}, ["unknown config key(s) ['bacth_size']", "'batch_size'", "--list-keys"]),
    "wrong_type": ({"epoch": "three"}, ["'epoch' must be an integer", '"three"']),
    "epoch_zero": ({"epoch": 0}, ["'epoch' must be an integer ≥ 1; got 0"]),
    "negative_batch": ({"batch_size": -4}, ["'batch_size' must be an integer ≥ 1; got -4"]),
    "resolution_zero": ({"resolution": 0}, ["'resolution' must be an integer ≥ 1 and ≤ 8192; got 0"]),
    "swept_value_out_of_range": ({"epoch": [2, 0]}, ["'epoch' must be an integer ≥ 1; got 0"]),
    "empty_list": ({"batch_size": []}, ["'batch_size' is an empty list"]),
    "empty_nested_list": ({"model_args": {"width": []}}, ["'model_args.width' is an empty list"]),
    "delta_out_of_range": ({"delta": 1.5}, ["'delta' must be a number > 0 and ≤ 1; got 1.5"]),
    "unknown_model": ({"model": "vgg111"}, ["Unknown model 'vgg111' for key 'model'", "'vgg11'",
                                            "--list models"]),
    "unknown_torchvision_model": ({"model": "tv:resnet5"}, ["Unknown model 'tv:resnet5' for key 'model'",
                                                           "Did you mean 'tv:resnet50'"]),
    "torchvision_model_argument_it_does_not_take": (
        {"model": "tv:resnet18", "model_args": {"width": 1}},
        ["model 'tv:resnet18' cannot be built", "unexpected keyword argument 'width'",
         "tv:resnet18: its class ResNet takes block, layers, zero_init_residual",
         "torchvision.models.resnet18 sets some of them itself"]),
    "torchvision_dropout_given_as_a_boolean": (  # built Dropout(p=True): every activation dropped
        {"model": "tv:vgg11", "model_args": {"dropout": True}, "resolution": 32},
        ["model_args 'dropout' of 'tv:vgg11' must be a number (its default is 0.5); got true"]),
    "torchvision_bool_argument_given_as_a_string": (  # "no", a non-empty string, switched zero-init on
        {"model": "tv:resnet18", "model_args": {"zero_init_residual": "no"}, "resolution": 32},
        ["model_args 'zero_init_residual' of 'tv:resnet18' must be true or false (its default is false); got "
         '"no"']),
    "unknown_dataset": ({"dataset": "digits"}, ["Unknown dataset 'digits'", "Did you mean 'Digits'",
                                                "--list datasets"]),
    "unknown_optimizer": ({"optimizer": "adan"}, ["Unknown optimizer 'adan'", "'adam'", "--list optimizers"]),
    "unknown_metric": ({"metrics": ["Acuracy"]}, ["Unknown metric 'Acuracy'", "'Accuracy'", "--list metrics"]),
    "unknown_model_arg": ({"model_args": {"widht": 0.5}}, ["model_args ['widht'] are not accepted by 'vgg11'",
                                                           "'width'"]),
    "unknown_optimizer_arg": ({"optimizer_args": {"learning_rate": 0.1}},
                              ["optimizer_args ['learning_rate'] are not accepted by 'adam'", "lr"]),
    "unknown_step": ({"post_processing": ["nonexistent_step"]}, ["unknown post-processing step",
                                                                 "--list steps"]),
    "bad_device": ({"device": "tpu:0"}, ["'tpu:0'", "cpu, cuda or cuda:N"]),
    # found by building each grid point's model on the meta device before the first run trains
    "bad_model_value_in_a_later_run": ({"model_args": {"width": [0.0625, -1]}},
                                       ["(run 1): model 'vgg11' cannot be built", "width must be a positive number"]),
    "unknown_truncate_layer_in_a_later_run": ({"model_args": {"width": 0.0625, "truncate": ["border", "fetures.3"]}},
                                              ["(run 1): model_args 'truncate' is 'fetures.3', which names no module",
                                               "Did you mean 'features.3'"]),
    "truncate_leaving_nothing_in_a_later_run": ({"model_args": {"width": 0.0625, "truncate": ["features.3",
                                                                                          "features.0"]}},
                                                ["(run 1): model_args 'truncate': Cannot truncate at 'features.0': "
                                                 "nothing before it would remain"]),
    "string_for_a_number": ({"optimizer_args": {"lr": "fast"}},
                            ["optimizer_args 'lr' of 'adam' must be a number (its default is 0.0001)", 'got "fast"']),
    "boolean_for_a_number": ({"optimizer_args": {"lr": True}},  # trained with lr 1
                             ["optimizer_args 'lr' of 'adam' must be a number (its default is 0.0001); got true"]),
    # null and an object reached torch: "'<=' not supported between instances of 'float' and 'NoneType'"
    "null_for_a_number": ({"optimizer_args": {"lr": None}},
                          ["optimizer_args 'lr' of 'adam' must be a number (its default is 0.0001); got null"]),
    "object_for_a_number": ({"optimizer_args": {"lr": {"value": 0.1}}},
                            ["optimizer_args 'lr' of 'adam' must be a number (its default is 0.0001); got {"]),
    "misspelt_framework_model_option": ({"model_args": {"width": 0.0625, "linear_inti": "torch"}},
                                        ["model_args ['linear_inti'] are not accepted by 'vgg11'. Did you mean "
                                         "'linear_init'?", "(and the framework's own truncate, linear_init)"]),
    "unknown_linear_init": ({"model_args": {"width": 0.0625, "linear_init": "xavier"}},
                            ["model_args 'linear_init' must be null (the model's own draw) or one of", "'torch'",
                             'got "xavier"']),
    # an object (here a grid axis of one) was looked up in the dict of schemes: TypeError unhashable, exit 1
    "object_for_linear_init": ({"model_args": {"width": 0.0625, "linear_init": [{}]}},
                               ["(run 0): model_args 'linear_init' must be null (the model's own draw) or one of",
                                "got {}."]),
    "tracking_device_that_is_no_device": ({"tracking_device": "gpu0"},
                                          ["the key 'tracking_device' 'gpu0' is not a torch device"]),
    # null, not 'auto', is tracking_device's "the model's device": its messages offered 'auto', which was refused
    "tracking_device_auto": ({"tracking_device": "auto"},
                             ["the key 'tracking_device' 'auto' is not accepted; use null (the model's device), cpu, "
                              "cuda or cuda:N"]),
    "tracking_device_of_another_kind": ({"tracking_device": "meta"},
                                        ["the key 'tracking_device' 'meta' is not supported; use null (the model's "
                                         "device), cpu, cuda or cuda:N"]),
    "seed_too_large": ({"seed": 2**32}, ["'seed' must be an integer ≥ 0 and ≤ 4294967295"]),
    "mps_where_there_is_none": ({"device": "mps"}, ["'mps' asks for Apple's MPS, which is not available here"]),
    "sweep_over_a_key_outside_the_identity": ({"post_processing": [["flops"], ["receptive_field"]]},
                                             ["runs 0 and 1 would share the folder",
                                              "they differ only in ['post_processing'], which do not change"]),
    "tracking_resolution_of_a_zero_side": ({"tracking_resolution": "8x0"},
                                           ["the key 'tracking_resolution' must be an integer N (N×N) or a string "
                                            '"HxW" such as "8x4", or null; got "8x0"']),
    "tracking_patterns_leaving_no_layer": ({"tracking_include": ["feature.*"]},
                                           ["tracking_include ['feature.*'] and tracking_exclude [] leave no layer",
                                            "features.0"]),
    "extract_layer_matching_nothing": ({"model_args": {"width": [0.0625, 0.125]},
                                        "post_processing": [{"name": "extract", "layers": ["features.0", "nolayer"]}]},
                                       ["(run 0): Step 'extract': the layer 'nolayer' matches no module of VGG"]),
    # found by building each point's optimizer on a dummy model before the first run trains
    "bad_optimizer_value_in_a_later_run": ({"optimizer_args": {"step_size": 1, "gamma": [0.5, 5]}},
                                           ["(run 1): optimizer 'adam' cannot be built", "gamma"]),
    # a gamma without a step_size built no schedule: the run trained at a constant rate and logged gamma 0.5
    "gamma_without_step_size": ({"optimizer_args": {"gamma": 0.5}},
                                ["(run 0): optimizer 'adam' cannot be built", "gamma 0.5 has no effect without "
                                 "step_size"]),
    "gamma_out_of_range_without_step_size": ({"optimizer_args": {"gamma": 1.5}},
                                             ["optimizer 'adam' cannot be built", "gamma must be a number in (0, 1]"]),
    "gamma_with_the_schedule_switched_off": ({"optimizer": "sgd", "optimizer_args": {"step_size": None, "gamma": 0.1}},
                                             ["optimizer 'sgd' cannot be built", "gamma 0.1 has no effect"]),
    "fake_data_without_classes": ({"dataset": "FakeData", "dataset_args": {"num_classes": 0}},
                                  ["(run 0): The dataset_args 'num_classes' of dataset 'FakeData' must be a whole "
                                   "number ≥ 2; got 0"]),
    "fake_data_with_five_channels": ({"dataset": "FakeData", "dataset_args": {"channels": 5}},
                                     ["(run 0): The dataset_args 'channels' of dataset 'FakeData' must be 1 to 4"]),
    "registry_module_missing": ({"registries": {"models": "nope.py"}},
                                ["the key 'registries': The models registry module file 'nope.py' does not exist"]),
    "registry_module_is_a_folder": ({"registries": {"models": "/"}}, ["registry module '/' is a folder"]),
    "latents_dir_below_a_file": ({"latents_dir": "/dev/null/latents", "post_processing": ["extract"]},
                                 ["step 'extract': the key 'latents_dir' is '/dev/null/latents', but '/dev/null' "
                                  "is a file"]),
    "target_saturation_reversed": ({"target_saturation": [0.3, 0.2]},
                                   ["'target_saturation' must be [low, high] with 0 < low < high <= 1", "[0.3, 0.2]"]),
    "target_saturation_single": ({"target_saturation": [0.2]}, ["'target_saturation' must be [low, high]"]),
    # a band of width zero: no saturation lies strictly inside it, so no run could ever hit the target
    "target_saturation_of_zero_width": ({"target_saturation": [0.2, 0.2]},
                                        ["'target_saturation' must be [low, high] with 0 < low < high <= 1",
                                         "[0.2, 0.2]"]),
    "probe_device_that_is_no_device": ({"probe_device": "gpu"}, ["the key 'probe_device' must be cpu, cuda or cuda:N"]),
    "probe_device_for_a_cpu_solver": ({"probe_device": "cuda"}, ["only the lbfgs-torch solver runs on a GPU"]),
    "project_exclude_matching_nothing": ({"post_processing": [{"name": "project", "exclude": ["*downsample*"]}]},
                                         ["step 'project': the exclude pattern '*downsample*' matches no Conv2d"]),
    "run_id_too_long_for_a_folder": ({"run_id": "r" * 300}, ["is 300 bytes long, and file systems allow 255",
                                                              "shorten 'run_id'"]),
    "batch_size_1_with_batchnorm_at_1x1": ({"batch_size": 1, "model_args": {"width": 0.0625, "batch_norm": True}},
                                           ["'batch_size' 1 cannot train 'vgg11' at resolution 16",
                                            "at least 2"]),
    "receptive_field_of_an_unsupported_model": ({"model": "tv:swin_t", "model_args": {},
                                                 "post_processing": ["receptive_field"]},
                                                ["post-processing step 'receptive_field': Receptive field: cannot "
                                                 "reason about function", "shifted_window_attention"]),
    # failed at the first batch with torch's message; a forward pass on the meta device finds it up front
    "torchvision_model_too_deep_for_the_resolution": ({"model": "tv:alexnet", "model_args": {}},
                                                      ["model 'tv:alexnet' cannot take 16x16 px inputs",
                                                       "Output size is too small", "Use a larger 'resolution'"]),
    "dataset_name_too_long_for_the_file_names": ({"dataset": "folder:/data/" + "x" * 200},
                                                 ["the run's file names start with", "shorten 'dataset'"]),
    "image_folder_without_train_tree": ({"dataset": "folder:/nonexistent/pets"},
                                        ["has no folder '/nonexistent/pets/train'", "(or val/)"]),
    "download_that_is_no_boolean": ({"dataset": "Cifar10", "dataset_args": {"download": "yes"}},
                                    ["dataset_args 'download' of 'Cifar10' must be true or false (its default is "
                                     "false); got \"yes\""]),
    # "no" and "false" are non-empty strings: torch trained with AMSGrad and Nesterov momentum
    "string_for_a_boolean_optimizer_option": ({"optimizer_args": {"lr": 0.003, "amsgrad": "no"}},
                                              ["optimizer_args 'amsgrad' of 'adam' must be true or false (its default "
                                               "is false); got \"no\"", "without quotes"]),
    "string_false_for_nesterov": ({"optimizer": "sgd", "optimizer_args": {"lr": 0.1, "nesterov": "false"}},
                                  ["optimizer_args 'nesterov' of 'sgd' must be true or false", 'got "false"']),
    "number_for_a_boolean_model_option": ({"model_args": {"width": 0.0625, "batch_norm": 2}},
                                          ["model_args 'batch_norm' of 'vgg11' must be true or false (its default is "
                                           "true); got 2"]),
    "missing_dataset_files": ({"dataset": "Cifar10"}, ["Dataset Cifar10 (train split) is not in data_dir",
                                                       "cifar-10-batches-py", "download"]),
    # a million DataLoader workers forked until killed; 100,000 threads segfaulted in libgomp; a resolution of
    # 1e9 overflowed a tensor size (traceback); a learning rate of 1e300 failed in the first optimizer step
    "num_workers_beyond_reason": ({"num_workers": 1_000_000}, ["'num_workers' must be an integer ≥ 0 and ≤ 256"]),
    "cpu_threads_beyond_reason": ({"cpu_threads": 100_000}, ["'cpu_threads' must be an integer ≥ 1 and ≤ 1024"]),
    "resolution_beyond_reason": ({"resolution": 10**9}, ["'resolution' must be an integer ≥ 1 and ≤ 8192"]),
    "width_that_overflows_the_layer_sizes": ({"model_args": {"width": 1e30}},  # torch appended C++ stack frames
                                             ["model 'vgg11' cannot be built with model_args {\"width\": 1e+30}"]),
    "optimizer_args_the_optimizer_refuses": ({"optimizer_args": {"beta1": 2.0}},  # torch's ValueError, one line
                                             ["optimizer 'adam' cannot be built with optimizer_args {\"beta1\": 2.0}: "
                                              "Invalid beta parameter at index 0: 2.0."]),
    "learning_rate_beyond_float32": ({"optimizer_args": {"lr": 1e300}},
                                     ["the key 'optimizer_args.lr' holds 1e+300, beyond the float32 range"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_config_exits_2_with_message_and_writes_nothing(case, tmp_path, capsys):
    overrides, fragments = CASES[case]
    config = write_config(tmp_path, **overrides)
    code = main_cli(["--config", str(config), "--no-progress", "-q"])
    err = flat(capsys.readouterr().err)
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err and "frame #" not in err
    assert str(config) in err or "for key" in err or "Dataset" in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert not (tmp_path / "logs").exists()


def test_too_long_run_id_is_refused_also_beside_existing_runs(tmp_path, capsys):
    """Once the folders above a run exist, the OS answers a too-long name with ENAMETOOLONG instead of
    "missing": both commands must still refuse it before touching the disk, not crash in a stat()."""
    from phd_lab.probes.cli import probe_cli
    config = write_config(tmp_path, run_id="r" * 300)
    (tmp_path / "logs" / "vgg11" / "Digits_16" / ("r" * 300)[:200]).mkdir(parents=True)
    (tmp_path / "logs" / "vgg11" / "Digits_16" / "r").mkdir()
    for command, argv in ((main_cli, ["--dry-run"]), (main_cli, []), (probe_cli, [])):
        assert command(["--config", str(config), *argv]) == 2
        err = flat(capsys.readouterr().err)
        assert "is 300 bytes long, and file systems allow 255" in err and "Traceback" not in err, err
    config = write_config(tmp_path, run_id="r")
    assert main_cli(["--config", str(config), "--run-id", "x" * 300, "--dry-run"]) == 2
    assert "is 300 bytes long" in flat(capsys.readouterr().err)
    assert sorted(p.name[:3] for p in (tmp_path / "logs" / "vgg11" / "Digits_16").iterdir()) == ["r", "rrr"]


def test_names_of_exactly_255_bytes_are_allowed_and_one_byte_more_is_refused(tmp_path):
    """File systems allow 255 bytes per name: a run folder (here the run id's) and the longest file name (a
    plot's temp file, 56 bytes more than the model's name at 2 epochs) of exactly 255 bytes are fine."""
    from phd_lab.errors import ConfigError
    from phd_lab.grid import Grid
    from phd_lab.rundir import RunDir
    for overrides in ({"run_id": "r" * 255}, {"model": "m" * 199}):
        [fits] = Grid(json.loads(write_config(tmp_path, **overrides).read_text()))
        assert RunDir.for_run(fits).root.parents[3] == tmp_path / "logs"
        key, value = next(iter(overrides.items()))
        [too_long] = Grid(json.loads(write_config(tmp_path, **{key: value + "x"}).read_text()))
        with pytest.raises(ConfigError, match="256 bytes long|file names of at most 255 bytes"):
            RunDir.for_run(too_long)
    assert not (tmp_path / "logs").exists()


def test_a_bad_device_option_is_named_as_the_option_not_as_a_key_of_the_config(tmp_path, capsys):
    config = write_config(tmp_path)
    assert main_cli(["--config", str(config), "--device", "tpu", "--dry-run"]) == 2
    err = flat(capsys.readouterr().err)
    assert "--device 'tpu' is not a torch device; use auto, cpu, cuda or cuda:N" in err
    assert "the key 'device'" not in err and "Traceback" not in err
    assert not (tmp_path / "logs").exists()


def test_invalid_json_names_line_and_column(tmp_path, capsys):
    path = _write_raw(tmp_path, '{\n  "model": "vgg11",\n  "epoch": 3,\n}\n')
    assert main_cli(["--config", str(path)]) == 2
    err = flat(capsys.readouterr().err)
    assert str(path) in err and "line 4, column 1" in err


def test_runaway_nesting_is_a_config_error_not_a_recursion_traceback(tmp_path, capsys):
    path = _write_raw(tmp_path, '{"model_args": {"x": ' + "[" * 3000 + "]" * 3000 + "}}")
    assert main_cli(["--config", str(path)]) == 2
    err = flat(capsys.readouterr().err)
    assert "nests lists or objects hundreds of levels deep" in err and "Traceback" not in err


def test_duplicate_keys_are_refused_and_a_byte_order_mark_is_read(tmp_path, capsys):
    path = _write_raw(tmp_path, '{"model": "vgg11", "epoch": 1, "model_args": {"width": 0.5, "width": 1}}')
    assert main_cli(["--config", str(path), "--dry-run"]) == 2
    assert "gives the key(s) ['width'] more than once" in flat(capsys.readouterr().err)
    marked = tmp_path / "bom.json"
    marked.write_bytes(b"\xef\xbb\xbf" + json.dumps({"model": "vgg11", "dataset": "Digits"}).encode())
    assert main_cli(["--config", str(marked), "--dry-run"]) == 0


def test_missing_config_file(tmp_path, capsys):
    assert main_cli(["--config", str(tmp_path / "nope.json")]) == 2
    assert "does not exist" in flat(capsys.readouterr().err)


def test_an_empty_config_file_is_called_empty(tmp_path, capsys):
    """An empty file (a config saved before it was written, a truncated copy) was reported as 'not valid JSON:
    Expecting value at line 1, column 1', which hides the cause."""
    for text in ("", " \n\t\n"):
        assert main_cli(["--config", str(_write_raw(tmp_path, text)), "--dry-run"]) == 2
        err = flat(capsys.readouterr().err)
        assert "is empty" in err and "Expecting value" not in err and "Traceback" not in err


def test_top_level_must_be_object(tmp_path, capsys):
    assert main_cli(["--config", str(_write_raw(tmp_path, "[1, 2]"))]) == 2
    assert "must hold a JSON object" in flat(capsys.readouterr().err)


def test_missing_required_key(tmp_path, capsys):
    path = _write_raw(tmp_path, json.dumps({"dataset": "Digits"}))
    assert main_cli(["--config", str(path)]) == 2
    assert "required key(s) ['model'] are missing" in flat(capsys.readouterr().err)


def test_unwritable_logs_dir(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    config = write_config(tmp_path, logs_dir=str(blocker / "logs"))
    assert main_cli(["--config", str(config)]) == 2
    err = flat(capsys.readouterr().err)
    assert "'logs_dir'" in err and "is a file" in err


def test_index_out_of_range(tmp_path, capsys):
    config = write_config(tmp_path)
    assert main_cli(["--config", str(config), "--index", "5"]) == 2
    assert "out of range: this grid has 1 run(s)" in flat(capsys.readouterr().err)
    assert not (tmp_path / "logs").exists()


def test_a_bad_point_anywhere_in_the_grid_stops_everything_before_training(tmp_path, capsys):
    config = write_config(tmp_path, model=["vgg11", "vgg99"])
    assert main_cli(["--config", str(config)]) == 2
    assert "Unknown model 'vgg99'" in flat(capsys.readouterr().err)
    assert not (tmp_path / "logs").exists()


def test_subprocess_gets_exit_2_and_no_traceback(tmp_path):
    config = write_config(tmp_path, epoch=0)
    result = run_main("--config", str(config))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "'epoch' must be an integer ≥ 1; got 0" in flat(result.stderr)
    assert not (tmp_path / "logs").exists()


def test_tiny_config_itself_is_valid(tmp_path, capsys):
    assert main_cli(["--config", str(write_config(tmp_path)), "--dry-run"]) == 0
    assert "1 run(s)" in capsys.readouterr().out
    assert set(TINY) <= set(json.loads((tmp_path / "exp.json").read_text()))


def test_a_dry_run_says_a_missing_dataset_once_for_all_the_points_that_lack_it(tmp_path, capsys):
    """Each point of a 100-point grid printed the same 330-character warning."""
    config = write_config(tmp_path, dataset=["MNIST", "Digits"], seed=[1, 2, 3, 4])
    assert main_cli(["--config", str(config), "--dry-run"]) == 0
    err = flat(capsys.readouterr().err)
    assert err.count("there is no 'MNIST'") == 1 and f"{config} (run 0): Dataset MNIST" in err
    assert f"{config}: the same (Dataset MNIST (train split) is not in data_dir" in err
    assert "for 3 more grid point(s)." in err


def test_the_reminder_of_a_long_missing_data_warning_is_cut_between_words(tmp_path, capsys, monkeypatch):
    """The reminder named the warning's first clause cut at 120 characters, in the middle of a word and without a
    sign that it was cut ('is not in data_dir 'the shared data sets of the lab that hold every archive we ev)'): it
    ends at a word, then ' ...'."""
    monkeypatch.chdir(tmp_path)  # a relative data_dir is named as written, whatever the length of tmp_path
    data_dir = "the shared data sets of the lab that hold every archive we ever downloaded for the study"
    config = write_config(tmp_path, dataset=["MNIST", "Digits"], seed=[1, 2], data_dir=data_dir)
    (tmp_path / data_dir).mkdir()
    assert main_cli(["--config", str(config), "--dry-run"]) == 0
    err = flat(capsys.readouterr().err)
    said = err.split(f"{config}: the same (")[1].split(") for 1 more grid point(s).")[0]
    assert said.endswith(" ...") and len(said) <= 120, said
    full = f"Dataset MNIST (train split) is not in data_dir '{data_dir}'"
    assert full.startswith(said[:-4]) and full[len(said) - 4] == " ", said


def test_data_missing_for_any_point_is_found_before_anything_trains(tmp_path, capsys):
    """A dataset absent from data_dir used to be found only when its point loaded the data, after the points
    before it had trained; now each point's dataset folder is looked for up front (the files themselves are
    checked when they are opened)."""
    # one epoch, no saturation, no steps: the two points that train only have to finish
    config = write_config(tmp_path, dataset=["Digits", "MNIST", "FakeData"], epoch=1, track_saturation=False,
                          post_processing=[])
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 2
    err = flat(capsys.readouterr().err)
    assert "Traceback" not in err
    assert f"{config} (run 1): Dataset MNIST (train split) is not in data_dir" in err and "there is no 'MNIST'" in err
    assert not (tmp_path / "logs").exists()
    assert main_cli(["--config", str(config), "--dry-run"]) == 0  # the grid is shown also before the download
    captured = capsys.readouterr()
    assert "3 run(s)" in captured.out and "there is no 'MNIST'" in flat(captured.err)
    (tmp_path / "data" / "MNIST").mkdir(parents=True)  # the folder alone passes; its missing files fail that point
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 1
    err = flat(capsys.readouterr().err)
    assert "(run 1): Dataset MNIST (train split) is not in data_dir" in err and "1 of 3 run(s) failed" in err
    finished = sorted(p.name.split("-")[1] for p in (tmp_path / "logs").rglob("*.csv"))
    assert finished == ["Digits", "FakeData"]  # the points before and after it still ran


def test_an_optimizer_factory_that_reads_the_model_is_checked_on_the_real_architecture(tmp_path, capsys):
    """Per-layer parameter groups (model.features, model.classifier) broke the up-front check on a dummy model."""
    module = tmp_path / "my_opt.py"
    module.write_text(
        "import torch\n"
        "def grouped(model, *, epochs, lr=0.01):\n"
        "    if not 0 < lr < 1:\n"
        "        raise ValueError(f'lr must be in (0, 1); got {lr}')\n"
        "    groups = [{'params': model.features.parameters()},\n"
        "              {'params': model.classifier.parameters(), 'lr': lr / 10}]\n"
        "    return torch.optim.SGD(groups, lr=lr), None\n")
    config = write_config(tmp_path, optimizer="grouped", optimizer_args={"lr": [0.01, 5]},
                          registries={"optimizers": str(module)})
    assert main_cli(["--config", str(config), "--dry-run"]) == 2
    assert "(run 1): optimizer 'grouped' cannot be built" in flat(capsys.readouterr().err)
    fine = write_config(tmp_path, name="fine.json", optimizer="grouped", optimizer_args={"lr": 0.01},
                        registries={"optimizers": str(module)})
    assert main_cli(["--config", str(fine), "--dry-run"]) == 0


def test_optimizer_values_are_checked_when_the_model_cannot_be_built_on_the_meta_device(tmp_path, capsys):
    module = tmp_path / "real_only.py"
    module.write_text(
        "import torch\n"
        "from torch import nn\n"
        "def needs_real_tensors(*, num_classes, in_channels=3):\n"
        "    torch.ones(1).sum().item()  # fails on the meta device\n"
        "    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))\n")
    config = write_config(tmp_path, model="needs_real_tensors", model_args={}, optimizer_args={"lr": [0.003, -5]},
                          registries={"models": str(module)})
    assert main_cli(["--config", str(config), "--dry-run"]) == 2
    assert "(run 1): optimizer 'adam' cannot be built" in flat(capsys.readouterr().err)


def test_a_model_without_parameters_is_refused_naming_the_model_not_the_optimizer_args(tmp_path, capsys):
    """Torch's 'optimizer got an empty parameter list' was reported as the optimizer_args' fault."""
    module = tmp_path / "my_models.py"
    module.write_text(
        "import torch\n"
        "from torch import nn\n"
        "class Fixed(nn.Module):\n"
        "    def __init__(self, num_classes, in_channels):\n"
        "        super().__init__()\n"
        "        self.register_buffer('projection', torch.ones(in_channels, num_classes))\n"
        "    def forward(self, x):\n"
        "        return x.mean((2, 3)) @ self.projection\n"
        "def fixed(*, num_classes, in_channels=3):\n"
        "    return Fixed(num_classes, in_channels)\n")
    config = write_config(tmp_path, model="fixed", model_args={}, registries={"models": str(module)})
    for extra in (["--dry-run"], []):
        assert main_cli(["--config", str(config), *extra]) == 2
        err = flat(capsys.readouterr().err)
        assert "(run 0): model 'fixed' has no parameters for optimizer 'adam' to train" in err, err
        assert "nn.Parameter" in err and "optimizer_args" not in err and "Traceback" not in err
    assert not (tmp_path / "logs").exists()


def test_a_model_whose_parameters_are_all_frozen_is_refused_before_its_run_folder(tmp_path, capsys):
    """A factory that set requires_grad=False on every parameter failed the run at its first batch with torch's
    'element 0 of tensors does not require grad and does not have a grad_fn' (exit 1, a run folder made)."""
    module = tmp_path / "my_models.py"
    module.write_text(
        "from torch import nn\n"
        "def frozen(*, num_classes, in_channels=3):\n"
        "    model = nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),\n"
        "                          nn.Linear(4, num_classes))\n"
        "    return model.requires_grad_(False)\n")
    config = write_config(tmp_path, model="frozen", model_args={}, registries={"models": str(module)}, epoch=1,
                          resolution=8, post_processing=[])
    for extra in (["--dry-run"], []):
        assert main_cli(["--config", str(config), "--no-progress", *extra]) == 2
        err = flat(capsys.readouterr().err)
        assert "(run 0): model 'frozen' has no parameter that requires a gradient" in err, err
        assert "Traceback" not in err
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("number", [str(2**63), str(-2**63 - 1), "9" * 400, "9" * 5000])
def test_integers_beyond_64_bits_are_refused_naming_the_key(tmp_path, capsys, number):
    """Integers of hundreds of digits overflowed the float checks (OverflowError), ones of thousands
    of digits JSON parsing itself (ValueError): both with a traceback. Inside model_args too."""
    for key, holder in (("seed", '{{"seed": {n}}}'), ("model_args.width", '{{"model_args": {{"width": [1, {n}]}}}}')):
        text = holder.format(n=number)
        path = _write_raw(tmp_path, text[:-1] + ', "model": "vgg11", "dataset": "Digits"}')
        assert main_cli(["--config", str(path), "--dry-run"]) == 2
        err = flat(capsys.readouterr().err)
        assert "must lie in the signed 64-bit range −2**63 … 2**63 − 1" in err and "Traceback" not in err, err
        assert "set_int_max_str_digits" not in err
        if len(number) < 4300:
            assert f"the key {key!r} holds an integer of {len(number.lstrip('-'))} digits" in err, err
    assert not (tmp_path / "logs").exists()


def test_the_64_bit_range_ends_are_read(tmp_path):
    from phd_lab.config_file import load_config_file
    path = _write_raw(tmp_path, '{"model_args": {"a": %d, "b": [true, 3e38, %d]}}' % (2**63 - 1, -2**63))
    assert load_config_file(path) == {"model_args": {"a": 2**63 - 1, "b": [True, 3e38, -2**63]}}


def test_the_float32_range_ends_are_read_and_every_factory_mapping_is_held_to_it(tmp_path):
    """float32's largest value itself is a factory argument a tensor can hold; beyond it is refused in
    dataset_args as in model_args and optimizer_args, while other keys may hold any finite number."""
    from phd_lab.config_file import FLOAT32_MAX, load_config_file
    from phd_lab.errors import ConfigError
    text = '{"model_args": {"a": %r, "b": [%r]}, "delta": 1e300}' % (FLOAT32_MAX, -FLOAT32_MAX)
    assert load_config_file(_write_raw(tmp_path, text)) == {"model_args": {"a": FLOAT32_MAX, "b": [-FLOAT32_MAX]},
                                                           "delta": 1e300}
    with pytest.raises(ConfigError, match=r"the key 'dataset_args\.scale' holds 1e\+39, beyond the float32 range"):
        load_config_file(_write_raw(tmp_path, '{"dataset_args": {"scale": 1e39}}'))


def test_a_config_path_that_is_a_folder_is_named_as_such(tmp_path, capsys):
    assert main_cli(["--config", str(tmp_path)]) == 2
    assert f"Config path {str(tmp_path)!r} is not a file" in flat(capsys.readouterr().err)


@pytest.mark.parametrize("number", ["1e400", "-1e400", "NaN", "Infinity"])
def test_numbers_that_are_not_finite_are_refused_naming_the_key(tmp_path, capsys, number):
    """A learning rate of 1e400 (infinity) trained to NaN losses, exited 0 and logged a config that is no JSON."""
    for key, holder in (("optimizer_args.lr", '{{"optimizer_args": {{"lr": [0.1, {n}]}}}}'),
                        ("delta", '{{"delta": {n}}}')):
        text = holder.format(n=number)
        path = _write_raw(tmp_path, text[:-1] + ', "model": "vgg11", "dataset": "Digits"}')
        assert main_cli(["--config", str(path), "--dry-run"]) == 2
        err = flat(capsys.readouterr().err)
        assert f"the key {key!r} holds" in err and "which is no finite number" in err and "Traceback" not in err
    assert not (tmp_path / "logs").exists()


def test_every_boolean_factory_argument_takes_true_and_false_and_only_they_unless_its_annotation_widens_it():
    """Each built-in factory's argument with a boolean default takes JSON's true and false, and refuses a string
    or number; an annotation that names more than bool (the datasets' ``canvas: bool | int``) lets the
    factory's own check decide."""
    import inspect

    from phd_lab.errors import ConfigError
    from phd_lab.factory_args import SUPPLIED_ARGS, check_factory_args
    from phd_lab.registry import Registries
    registries, checked, widened = Registries(), set(), set()
    for kind in ("models", "datasets", "optimizers"):
        for name in registries[kind].names():
            factory = registries[kind].get(name)
            for arg, param in inspect.signature(factory).parameters.items():
                if not isinstance(param.default, bool) or arg in SUPPLIED_ARGS[kind]:
                    continue
                check = lambda value: check_factory_args(factory, {arg: value}, kind, name, "exp.json",  # noqa: E731
                                                         SUPPLIED_ARGS[kind])
                check(True), check(False)
                if param.annotation != "bool":
                    widened.add(arg)
                    check(24)
                    continue
                checked.add(arg)
                check(0), check(1)  # Python reads them as false and true (a logged config of an earlier version)
                for wrong in ("no", 2, None):
                    with pytest.raises(ConfigError, match=f"'{arg}' of '{name}' must be true or false"):
                        check(wrong)
    assert checked == {"skip", "batch_norm", "download", "augment", "amsgrad", "nesterov"} and widened == {"canvas"}

    def user_factory(*, num_classes, in_channels=3, weights=False):  # not annotated: False or a weights name
        raise AssertionError("not called")
    check_factory_args(user_factory, {"weights": "imagenet"}, "model_args", "mine", "exp.json", SUPPLIED_ARGS["models"])


def test_one_logs_dir_written_two_ways_is_refused_as_one_folder_for_two_runs(tmp_path, capsys, monkeypatch):
    """"logs" and its absolute path (or a link to it) were two points of the grid: a dry run called both new, and
    the run trained the first and reported the second finished (on Dask the two tasks fought for its lock)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "linked").symlink_to(tmp_path / "logs", target_is_directory=True)
    for written in (str(tmp_path / "logs"), "linked"):
        config = write_config(tmp_path, logs_dir=["logs", written])
        assert main_cli(["--config", str(config), "--dry-run"]) == 2
        said = " ".join(capsys.readouterr().err.split())
        assert "runs 0 and 1 would share the folder" in said
        assert f"their logs_dir values 'logs' and {written!r} name one folder" in said
    assert not (tmp_path / "logs").exists()


BROKEN_FACTORIES = {  # registry kind → (a factory of that kind that breaks its contract, the config's name key)
    "models": ("from torch import nn\n\ndef tiny(*, num_classes, in_channels=3):\n"
               "    nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))  # its return is missing\n", "model"),
    "optimizers": ("import torch\n\ndef bare(model, *, epochs):\n"
                   "    return torch.optim.SGD(model.parameters(), lr=0.1)  # not (optimizer, scheduler)\n",
                   "optimizer"),
    "datasets": ("def nothing(*, batch_size, resolution, data_dir, seed, num_workers):\n    return None\n",
                 "dataset"),
    "metrics": ("def three():\n    return 3\n", "metrics"),
}


@pytest.mark.parametrize("kind", sorted(BROKEN_FACTORIES))
def test_a_factory_that_returns_what_its_contract_does_not_allow_is_named_before_anything_is_written(
        kind, tmp_path, capsys):
    """Each failed later with an AttributeError or 'cannot unpack' traceback and exit 1, the metric only after
    its run folder was made, the dataset and optimizer also after a dry run called the point new."""
    source, key = BROKEN_FACTORIES[kind]
    module = tmp_path / f"my_{kind}.py"
    module.write_text(source)
    name = source.split("def ")[1].split("(")[0]
    config = write_config(tmp_path, registries={kind: str(module)}, track_saturation=False,
                          **({key: [name]} if key == "metrics" else {key: name, f"{key}_args": {}}))
    for dry in ([], ["--dry-run"]) if kind != "datasets" else ([],):  # a dataset is only built to train
        assert main_cli(["--config", str(config), "--no-progress", "-q", *dry]) == 2
        err = flat(capsys.readouterr().err)
        assert f"the {kind[:-1]} factory {name!r} of {str(module)!r} returned" in err, err
        assert "which its contract does not allow" in err and "Traceback" not in err
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").rglob("*_config.json"))


def test_a_metric_whose_value_is_a_method_is_refused_before_anything_is_written(tmp_path, capsys):
    """The trainer reads ``metric.value``: a metric defining ``def value(self)`` without @property passed the
    contract check and failed its run after the first epoch (exit 1, its run folder made)."""
    module = tmp_path / "my_metrics.py"
    module.write_text("class Hits:\n"
                      "    def __init__(self):\n        self.reset()\n"
                      "    def update(self, y_true, y_pred):\n"
                      "        self.hits += int((y_pred.argmax(1) == y_true).sum()); self.seen += len(y_true)\n"
                      "    def reset(self):\n        self.hits, self.seen = 0, 0\n"
                      "    def value(self):\n        return self.hits / max(self.seen, 1)\n\n"
                      "def hits():\n    return Hits()\n")
    config = write_config(tmp_path, registries={"metrics": str(module)}, metrics=["hits"], track_saturation=False)
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 2
    err = flat(capsys.readouterr().err)
    assert f"the metric factory 'hits' of {str(module)!r} returned Hits, which its contract does not allow" in err, err
    assert "value (a property or attribute, not a method)" in err and "Traceback" not in err
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").rglob("*_config.json"))
    module.write_text(module.read_text().replace("    def value(self):", "    @property\n    def value(self):"))
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0  # the same metric as a property trains


def test_a_float_where_a_factory_annotates_int_is_refused_naming_the_argument(tmp_path, capsys):
    """"width": 8.0 for a user's `width: int = 16` reached torch, whose message named no argument ("empty():
    argument 'size' (position 1) must be tuple of ints, but found element of type float"); 8.5 gave "out_channels
    must be divisible by groups"."""
    (tmp_path / "my_models.py").write_text(
        "from torch import nn\n\n\n"
        "def tiny_cnn(*, num_classes: int, in_channels: int = 3, width: int = 16) -> nn.Module:\n"
        '    """Two convolutions and a linear read-out."""\n'
        "    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))\n")
    for width in (8.0, 8.5):
        config = write_config(tmp_path, registries={"models": "my_models.py"}, model="tiny_cnn",
                              model_args={"width": width})
        code = main_cli(["--config", str(config), "--no-progress", "-q"])
        err = flat(capsys.readouterr().err)
        assert code == 2, err
        assert (f"model_args 'width' of 'tiny_cnn' must be a whole number without a decimal point (the factory "
                f"annotates it int; its default is 16); got {width}.") in err, err
        assert "Traceback" not in err and not (tmp_path / "logs").exists()
    config = write_config(tmp_path, registries={"models": "my_models.py"}, model="tiny_cnn", model_args={"width": 8},
                          epoch=1)
    assert main_cli(["--config", str(config), "--no-progress", "-q", "--dry-run"]) == 0


def test_a_logged_config_with_a_float_where_a_factory_annotates_int_reruns_as_it_trained(tmp_path, capsys):
    """Runs logged before the float-for-int check trained with such floats where the factory only computes with
    them (tv:resnet50's "width_per_group": 32.0 gives the model of 32; a user's `spread: int = 2` only scaling
    its output): their logged configs were refused (exit 2), so the run could not be reproduced or resumed. A
    config written by hand is still refused."""
    (tmp_path / "my_models.py").write_text(
        "import torch\nfrom torch import nn\n\n\n"
        "class Scaled(nn.Module):\n"
        "    def __init__(self, body: nn.Module, spread: int) -> None:\n"
        "        super().__init__()\n"
        "        self.body, self.spread = body, spread\n\n"
        "    def forward(self, x: torch.Tensor) -> torch.Tensor:\n"
        "        return self.body(x) / self.spread\n\n\n"
        "def tiny_cnn(*, num_classes: int, in_channels: int = 3, spread: int = 2) -> nn.Module:\n"
        '    """A convolution and a linear read-out whose logits are divided by spread."""\n'
        "    return Scaled(nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),\n"
        "                                nn.Flatten(), nn.Linear(4, num_classes)), spread)\n")
    meta = {"phd_lab": "0.1.0", "torch": "2.4.0"}  # what a run's logged config of an earlier version carries
    for model, model_args, logged in (("tiny_cnn", {"spread": 2.0}, True), ("tv:resnet50", {"width_per_group": 32.0},
                                                                          False)):
        hand = write_config(tmp_path, registries={"models": "my_models.py"} if logged else None, model=model,
                            model_args=model_args, epoch=1, track_saturation=False, post_processing=[])
        assert main_cli(["--config", str(hand), "--no-progress", "-q", "--dry-run"]) == 2
        assert "must be a whole number without a decimal point" in flat(capsys.readouterr().err)
        config = json.loads(hand.read_text())
        config["_meta"] = meta
        hand.write_text(json.dumps(config))
        if not logged:  # the meta-device build is tv:'s check of its model class' annotations
            assert main_cli(["--config", str(hand), "--no-progress", "-q", "--dry-run"]) == 0, capsys.readouterr()
            continue
        code = main_cli(["--config", str(hand), "--no-progress", "-q"])
        assert code == 0, capsys.readouterr().err
        [trained] = [path for path in (tmp_path / "logs").rglob("*_config.json")]
        assert json.loads(trained.read_text())["model_args"]["spread"] == 2.0


LONG = "é" * 3000


@pytest.mark.parametrize("overrides, named, length, shown", [  # the first 100 characters of the value's JSON
    ({"epoch": LONG}, "the key 'epoch' must be an integer ≥ 1; got ", 3002, 99),
    ({"optimizer_args": {"lr": LONG}}, "optimizer_args 'lr' of 'adam' must be a number (its default is 0.0001); got ",
     3002, 99),
    ({"model_args": {"linear_init": LONG}}, "the families' own draw (null keeps that draw itself); got ", 3002, 99),
    ({"post_processing": [{"nme": LONG}]}, "an object with a 'name' and the step's parameters; got {\"nme\": ", 3011,
     91),
    ({"model": "mlp", "model_args": {"units": [[LONG]]}}, "model 'mlp' cannot be built with model_args {\"units\": [",
     3015, 88)])
def test_a_long_value_of_the_wrong_type_is_shown_cut_short_with_its_characters(overrides, named, length, shown,
                                                                                tmp_path, capsys):
    """The value was shown as json.dumps wrote it: every 'é' as \\u00e9 and none left out, so a string of 3,000
    characters made an error of 18 KB that said only the first of its few words in the first screen. A factory's
    own message that repeats the value (mlp's units) is cut too. In this process (the message is the subject, not
    the process: a subprocess per case only added its imports)."""
    code, err = main_in_process(capsys, "--config", str(write_config(tmp_path, **overrides)), "--no-progress")
    assert code == 2 and "Traceback" not in err, err[-2000:]
    message = flat(err)
    assert f'{named}"{"é" * shown}... ({length:,} characters)' in message, message[:600]
    assert "\\u00e9" not in message and len(message) < 2000, message[:2000]
    assert not (tmp_path / "logs").exists()


def test_a_model_larger_than_the_memory_is_refused_before_its_factory_allocates_it(tmp_path, capsys):
    """An MLP of units [[2**40]] (a petabyte of weights) passed the checks on the meta device, and its factory then
    stopped in torch's allocation error, a traceback with exit 1. Its size is now compared with the memory this
    process may take before the model is built, where the run trains. In this process: the memory compared is the
    machine's (or its cgroup's), the same for a subprocess, which only added its imports."""
    config = write_config(tmp_path, model="mlp", model_args={"units": [[2**40]]})
    code, err = main_in_process(capsys, "--config", str(config))
    said = flat(err)
    assert code == 2 and "Traceback" not in said, said
    assert "model 'mlp' with model_args {\"units\": [1099511627776]" in said
    assert " parameter and buffer values (" in said and " PB (" in said and "so it cannot be built here" in said
    assert not (tmp_path / "logs").exists()
