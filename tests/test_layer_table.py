"""Per-layer tables read back with their layer names as written, by every reader of such a table."""

from __future__ import annotations

import math

from phd_lab.layer_table import read_layer_table
from phd_lab.probes.outputs import probe_set_tables
from phd_lab.rundir import RunDir

NAMES = ["NA", "null", "nan", "0.10", "8", "<model>"]  # a model's attributes, an nn.Sequential's, its own layer


def test_layer_names_are_read_as_written_and_other_columns_as_pandas_reads_them():
    rows = "".join(f"{name},{value}\n" for name, value in zip(NAMES, ["0.5", "", "NA", "1", "2", "3"]))
    table = read_layer_table("layer,eval_acc\n" + rows + ",4\n")
    assert table["layer"].tolist() == NAMES + [""]  # an empty cell stays empty: the report names it as damage
    accuracies = table["eval_acc"].tolist()
    assert accuracies[0] == 0.5 and accuracies[3:] == [1, 2, 3, 4]
    assert math.isnan(accuracies[1]) and math.isnan(accuracies[2])
    assert read_layer_table("index,r_min\n0,3\n").to_dict("list") == {"index": [0], "r_min": [3]}  # no layer column


def test_the_latents_set_comparison_reads_layer_names_pandas_takes_for_missing_values(tmp_path):
    """The probe tables of a run's latents sets, drawn side by side in probe_performances_by_set.png, lost names
    such as "NA" or "nan" (drawn as missing) and an nn.Sequential's "0.10" (read as the number 0.1)."""
    rows = "".join(f"{index},{name},0.{index + 1}\n" for index, name in enumerate(NAMES))
    for suffix in ("", "_2x2_nearest"):
        (tmp_path / f"probe_performances{suffix}.csv").write_text("index,layer,eval_acc\n" + rows, encoding="utf-8")
    tables = probe_set_tables(RunDir(tmp_path, ""))
    assert [label for label, _, _ in tables] == ["the run's downsampling (latents/)", "2×2"]
    assert all(table["layer"].tolist() == NAMES for _, _, table in tables)
