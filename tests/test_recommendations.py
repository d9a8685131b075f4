"""The advice of a run's analysis (recommendations.py) on runs written in the documented file formats: diverged
and unfinished runs, where a tail starts, out-of-date probes and the direction of the width advice."""

import json
import os

import pandas as pd

from tests.analysis_fixtures import probe_frame, with_train_saturations, write_run
from phd_lab import atomic
from phd_lab.analysis.run_summary import AnalysisSettings, summarize
from phd_lab.analysis.run_tables import load_run


def advice(rundir, kind=None):
    return [a["text"] for a in summarize(load_run(rundir))["recommendations"] if kind in (None, a["kind"])]


def test_a_diverged_run_is_told_to_train_again_and_nothing_else(tmp_path):
    rundir = write_run(tmp_path / "logs", width=0.25, stage="full", skip="features.16")
    rundir.diverged.write_text("{}")
    [text] = advice(rundir)
    assert text.startswith("The run diverged in epoch 3 of 3: its weights are no longer finite")


def test_an_unfinished_run_trained_on_another_host_is_provisional(tmp_path):
    rundir = write_run(tmp_path / "logs", width=0.5, stage="running")  # 1 of 3 epochs
    rundir.lock.write_text("PID 4242 on host some-other-node\n")  # cannot be checked: perhaps still training
    assert load_run(rundir).status.state == "incomplete"
    assert advice(rundir)[0].startswith("Training is not finished (")


def test_only_a_tail_from_the_first_layer_on_is_a_tail_at_the_input(tmp_path):
    rundir = with_train_saturations(write_run(tmp_path / "logs", width=0.25, stage="unprobed"),
                                    [0.4] + [0.03] * 3 + [0.4] * 7)
    assert [t["first_layer"] for t in summarize(load_run(rundir))["tails"]] == ["features.3"]
    assert not [t for t in advice(rundir, "depth") if t.startswith("A low-saturated tail at the input")]


def test_without_border_layers_a_tail_after_an_input_tail_is_named_too(tmp_path):
    rundir = with_train_saturations(write_run(tmp_path / "logs", width=0.25, stage="trained"),
                                    [0.03] * 3 + [0.4] * 2 + [0.03] * 5 + [0.4])
    texts = advice(rundir, "depth")
    assert len(texts) == 2 and texts[0].startswith("A low-saturated tail at the input (features.0 to features.6)")
    assert texts[1].startswith("A low-saturated tail from features.13 to classifier.3 is not predicted")


def test_probe_drops_read_from_out_of_date_probes_are_held_back(tmp_path):
    rundir = write_run(tmp_path / "logs", width=0.25, stage="full", skip="features.16")
    assert any(t.startswith("Probe accuracy drops at features.16") for t in advice(rundir, "probes"))
    later = rundir.probe_csv.stat().st_mtime + 5
    os.utime(rundir.latents() / "manifest.json", (later, later))
    [text] = advice(rundir, "probes")
    assert "rerun probe_main.py" in text


def test_the_width_advice_says_which_way_s_mu_misses_the_interval(tmp_path):
    rundir = write_run(tmp_path / "logs", width=0.25, stage="unprobed")
    [high] = advice(with_train_saturations(rundir, [0.6] * 11), "width")
    assert "lies above the 20%-30% interval" in high and "the network is too narrow (under-parameterised)" in high
    [low] = advice(with_train_saturations(rundir, [0.1] * 11), "width")
    assert "lies below the 20%-30% interval" in low and "wider than needed (over-parameterised)" in low


def test_a_run_without_a_complete_epoch_is_not_described_after_epoch_0(tmp_path):
    rundir = write_run(tmp_path / "logs", width=0.25, stage="full", epochs=2)
    lines = rundir.metrics_csv.read_bytes().split(b"\n")
    rundir.metrics_csv.write_bytes(lines[0] + b"\n" + lines[1][:150])  # cut within its first row
    status = load_run(rundir).status
    assert status.state == "unknown" and status.epochs_done == 0
    assert not [t for t in advice(rundir) if "after epoch" in t]


def test_a_model_trained_for_another_objective_gets_none_of_the_classifier_guidelines(tmp_path):
    rundir = with_train_saturations(write_run(tmp_path / "logs", width=0.25, stage="full", skip="features.16"),
                                    [0.6] * 11)
    config = json.loads(rundir.config.read_text())
    config["_meta"]["objective"] = "reconstruction"
    rundir.config.write_text(json.dumps(config))
    [text] = advice(rundir)
    assert text.startswith("This model is trained for reconstruction, not classification.")


def test_the_probes_advice_names_the_first_layer_that_reaches_the_model_while_later_layers_follow(tmp_path):
    rundir = write_run(tmp_path / "logs", width=0.25, stage="full", test_accuracy=0.94)
    # the fixture's probes reach 0.94 - 0.002 at features.13, the 6th of 11 layers
    reached = ("The probes reach the model's accuracy at features.13; the 5 probed layer(s) after it do not improve "
               "the intermediate solution.")
    assert advice(rundir, "probes") == [reached]
    probes = pd.read_csv(rundir.probe_csv)  # only the output layer reaches the model: no layer after it
    probes["relative_acc"] = [0.9] * (len(probes) - 1) + [1.0]
    atomic.write_csv(rundir.probe_csv, probes)
    assert not [text for text in advice(rundir) if text.startswith("The probes reach")]
    probes["relative_acc"] = 0.9  # none reaches it
    atomic.write_csv(rundir.probe_csv, probes)
    assert not [text for text in advice(rundir) if text.startswith("The probes reach")]
    atomic.write_csv(rundir.probe_csv, probe_frame(0.94))  # reaching again, but older than the latents
    later = rundir.probe_csv.stat().st_mtime + 5
    os.utime(rundir.latents() / "manifest.json", (later, later))
    assert [text for text in advice(rundir, "probes") if "rerun probe_main.py" in text]
    assert not [text for text in advice(rundir) if text.startswith("The probes reach")]


def test_a_tail_at_the_input_that_the_border_layer_predicts_gets_the_border_advice_only(tmp_path):
    """At 3 px the border layer b_min is features.3 (input receptive field 4 > 3), and the one tail runs from
    features.0: within the border tolerance of 1 layer, it agrees with b_min, whose advice (cut there) already
    explains it; the advice for a tail at the input (grow the receptive field faster early on) is held back
    until the tail does not agree (tolerance 0)."""
    rundir = with_train_saturations(write_run(tmp_path / "logs", width=0.25, stage="unprobed", resolution=3),
                                    [0.03] * 10 + [0.4])
    tables = load_run(rundir)
    summary = summarize(tables)
    assert summary["borders"]["b_min"] == "features.3" and [t["start"] for t in summary["tails"]] == [0]
    assert summary["agreement"]["b_min"]["agrees"] is True
    depth = [a["text"] for a in summary["recommendations"] if a["kind"] == "depth"]
    assert len(depth) == 1 and depth[0].startswith("features.3 and every layer after it")
    strict = summarize(tables, AnalysisSettings(border_tolerance=0))
    assert strict["agreement"]["b_min"]["agrees"] is False
    depth = [a["text"] for a in strict["recommendations"] if a["kind"] == "depth"]
    assert len(depth) == 2 and depth[1].startswith("A low-saturated tail at the input (features.0 to classifier.3)")


def test_the_width_advice_of_a_network_with_a_tail_says_to_remove_the_tail_first(tmp_path):
    rundir = write_run(tmp_path / "logs", width=0.25, stage="unprobed")
    first = " Remove the tail first: it distorts s_mu, and depth and width are best optimised in that order."
    [with_tail] = advice(with_train_saturations(rundir, [0.9] * 5 + [0.1] * 5 + [0.9]), "width")
    assert "lies above the 20%-30% interval" in with_tail and with_tail.endswith(first)
    [without] = advice(with_train_saturations(rundir, [0.6] * 11), "width")
    assert "lies above the 20%-30% interval" in without and "Remove the tail" not in without


def test_layers_without_any_variance_are_named_before_the_width_advice(tmp_path):
    """A collapsed network (its output layer the same for every input, saturation 0) was told only that it was
    wider than needed, as if its low s_mu measured its width."""
    rundir = with_train_saturations(write_run(tmp_path / "logs", width=0.25, stage="unprobed"),
                                    [0.1] * 10 + [0.0])
    kinds = [a["kind"] for a in summarize(load_run(rundir))["recommendations"]]
    assert kinds[0] == "dead-layers" and "width" in kinds
    [text] = advice(rundir, "dead-layers")
    assert text.startswith("classifier.6 showed no variance at all on the train set (saturation 0")
    assert not advice(with_train_saturations(rundir, [0.25] * 11), "dead-layers")


def test_the_cut_advice_names_the_block_a_border_layer_inside_a_multipath_block_takes_with_it():
    """MPNet18's b_min at 32 px, stage2.1.paths.0.3, lies inside a block of two paths: the measured truncation (and
    ``"truncate": "border"``) cuts before the whole block, stage2.1.paths.0.0 (before b_min) included, while the
    advice said "cut stage2.1.paths.0.3 and every later layer" beside those savings. ResNet18's b_min opens its
    block, and its advice names it as before."""
    from phd_lab.analysis.receptive_field import border_layers, receptive_fields
    from phd_lab.analysis.recommendations import recommendations
    from phd_lab.models.truncate import truncation_savings
    from registries import models as registry

    texts = {}
    for name, block in [("mpnet18", "stage2.1"), ("resnet18", "layer3.1.conv1")]:
        model = getattr(registry, name)(num_classes=10, width=0.0625)
        b_min, b_max = border_layers(receptive_fields(model, 32), 32)
        truncation = truncation_savings(model, b_min, num_classes=10, in_channels=3, input_resolution=32)
        assert truncation["cut_before"] == block
        summary = {"run": {}, "tails": [], "saturation": None, "probes": {}, "truncation": truncation,
                   "borders": {"resolution": 32, "b_min": b_min, "b_max": b_max},
                   "agreement": {"b_min": {"agrees": False}, "b_max": {"agrees": False}}}
        texts[name] = [a["text"] for a in recommendations(summary, AnalysisSettings()) if a["kind"] == "depth"][0]
        if name == "mpnet18":
            assert b_min == "stage2.1.paths.0.3" and "stage2.1.paths.0.0" in truncation["removed_layers"]
    assert "Option 1: cut the model before stage2.1, the block stage2.1.paths.0.3 lies in" in texts["mpnet18"]
    assert "cut stage2.1.paths.0.3 and every later layer" not in texts["mpnet18"]
    assert "Option 1: cut layer3.1.conv1 and every later layer" in texts["resnet18"]


def test_the_border_advice_names_a_tail_that_starts_beside_the_border_instead_of_denying_one(tmp_path):
    """A tail that starts two layers after b_min (features.13, the 6th convolution at 32 px) does not agree
    within border_tolerance 1, and the border advice said "the saturation shows no tail starting there", while no
    other advice named that tail (VGG16 on digits at 32 px: tail features.34-40, three convolutions after the
    border features.24)."""
    rundir = with_train_saturations(write_run(tmp_path / "logs", width=0.25, stage="unprobed"),
                                    [0.5] * 7 + [0.1, 0.1, 0.1, 0.9])
    summary = summarize(load_run(rundir))
    assert summary["borders"]["b_min"] == "features.13"
    assert [(t["first_layer"], t["last_layer"]) for t in summary["tails"]] == [("features.18", "classifier.3")]
    assert summary["agreement"]["b_min"]["offset"] == 2 and summary["agreement"]["b_min"]["agrees"] is False
    depth = [a["text"] for a in summary["recommendations"] if a["kind"] == "depth"]
    assert len(depth) == 1 and "shows no tail" not in depth[0]
    assert ("the saturation tail closest to the output, features.18 to classifier.3, starts 2 layers after it (more "
            "than border_tolerance), so check the probes before cutting.") in depth[0]
