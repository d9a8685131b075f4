"""The HTML report of a fixture grid, the report command's exit codes, and the analysis step in a real run."""

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import unquote

import pandas as pd
import pytest

from tests.analysis_fixtures import (BORDER, probe_frame, probe_results_replaced_again_and_again, read_json,
                                     with_train_saturations, write_grid, write_run)
from phd_lab import atomic
from phd_lab.lock import RunLock
from phd_lab.report.cli import main_report, write_report
from tests.conftest import file_size_limit, flat, main_in_process

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


class PageParser(HTMLParser):
    """Collects ids, links, images and the rows of the sortable run table."""

    def __init__(self):
        super().__init__()
        self.ids, self.hrefs, self.images, self.rows = set(), [], [], []
        self._in_runs_body = False
        self._table_depth = 0
        self._row = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            assert attrs["id"] not in self.ids, f"duplicate id {attrs['id']}"
            self.ids.add(attrs["id"])
        if tag == "a" and "href" in attrs:
            self.hrefs.append(attrs["href"])
        if tag == "img":
            self.images.append(attrs.get("src"))
        if tag == "table" and attrs.get("id") == "runs-table":
            self._table_depth = 1
        elif tag == "table" and self._table_depth:
            self._table_depth += 1
        if tag == "tbody" and self._table_depth == 1:
            self._in_runs_body = True
        if tag == "tr" and self._in_runs_body:
            self._row = []
        if tag == "td" and self._row is not None:
            self._row.append("")

    def handle_endtag(self, tag):
        if tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None
        if tag == "tbody" and self._in_runs_body:
            self._in_runs_body = False
        if tag == "table" and self._table_depth:
            self._table_depth -= 1

    def handle_data(self, data):
        if self._row is not None and self._row:
            self._row[-1] += data


def parse(path):
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return parser


def run_report(*args):
    return subprocess.run([sys.executable, "-m", "phd_lab", "report", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)


def report_in_process(capsys, *args) -> SimpleNamespace:
    """``python -m phd_lab report ARGS`` in this process (the exit status of the command itself is checked on a
    subprocess in test_report_usage_errors_exit_2)."""
    capsys.readouterr()
    code = main_report([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out, stderr=err)


def report_in_process_plain(*args) -> int:
    return main_report([str(arg) for arg in args])


@pytest.fixture
def grid(tmp_path):
    logs = tmp_path / "logs"
    runs = write_grid(logs)
    lock = RunLock(runs["running"].lock).acquire()  # this live process "trains" that run
    yield logs, runs
    lock.release()


def test_report_of_a_grid_parses_links_resolve_and_lists_every_run(grid, tmp_path, capsys):
    logs, runs = grid
    out = tmp_path / "site" / "report.html"
    result = report_in_process(capsys, logs, "--out", out)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    page = parse(out)
    assert len(page.rows) == len(runs) == 5
    # every link is an in-page anchor or an existing file relative to the page
    assert page.hrefs
    for href in page.hrefs:
        if href.startswith("#"):
            assert href[1:] in page.ids, href
        else:
            assert (out.parent / unquote(href)).resolve().is_file(), href
    assert {f"run-{i}" for i in range(1, 6)} <= page.ids and "runs" in page.ids
    # a page in a folder reached through a symlink: the browser applies ".." to the address as typed
    (tmp_path / "elsewhere" / "target").mkdir(parents=True)
    (tmp_path / "home" / "a").mkdir(parents=True)
    (tmp_path / "home" / "a" / "reports").symlink_to(tmp_path / "elsewhere" / "target")
    linked = tmp_path / "home" / "a" / "reports" / "r.html"
    assert report_in_process(capsys, logs, "--out", linked, "--no-refresh").returncode == 0
    for href in (h for h in parse(linked).hrefs if not h.startswith("#")):
        assert Path(os.path.normpath(os.path.join(linked.parent, unquote(href)))).is_file(), href
    # an empty cell sorts last: its sort key is empty, not the dash it shows
    text = out.read_text(encoding="utf-8")
    missing = re.findall(r'<td class="[^"]*missing[^"]*"([^>]*)>', text)
    assert missing and set(missing) == {' data-sort=""'}
    # every image is an embedded PNG: one per run plus three comparison plots
    assert len(page.images) == 5 + 3
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1], validate=True)[:8] == PNG
    # the rows in folder order: width 0.125 (unprobed), 0.25 (full), 0.5 (running), 1.0 (trained), run 1
    status = [row[7] for row in page.rows]
    assert status == ["finished", "finished", "running 1/3 epochs", "finished", "no metrics CSV"]
    probes = [row[-1] for row in page.rows]
    assert probes == ["pending (latents extracted)", "complete", "not probed", "not probed", "complete"]
    assert [row[4] for row in page.rows] == ["0.125", "0.25", "0.5", "1.0", "0.25"]  # model_args.width varies
    assert page.rows[1][-3] == "features.13" and page.rows[1][-2] == "yes"
    # analysis files refreshed in every folder except the one a live process owns
    for key, rundir in runs.items():
        assert (rundir.analysis_json.is_file() and rundir.analysis_plot.is_file()) == (key != "running"), key


def test_verbose_says_what_became_of_each_runs_analysis_files(grid, tmp_path, capsys):
    """report -v printed no debug line at all; it now says per run whether its analysis files were written, were up
    to date, or were left to the live process that owns the run."""
    logs, runs = grid
    first = report_in_process(capsys, logs, "--out", tmp_path / "r.html", "-v", "--no-progress")
    assert first.returncode == 0, first.stderr
    text = flat(first.stderr)
    assert f"{runs['running'].root}: analysed, its analysis files left to the process that owns the run" in text
    assert f"{runs['full'].root}: wrote analysis.json and analysis.png" in text
    again = flat(report_in_process(capsys, logs, "--out", tmp_path / "r.html", "-v", "--no-progress").stderr)
    assert f"{runs['full'].root}: analysis.json and analysis.png are up to date" in again
    assert "DEBUG" not in report_in_process(capsys, logs, "--out", tmp_path / "r.html", "--no-progress").stderr


def test_probe_results_added_later_are_picked_up(grid, tmp_path):
    logs, runs = grid
    write_report(logs)
    unprobed = runs["unprobed"]
    assert read_json(unprobed.analysis_json)["probes"]["status"] == "pending (latents extracted)"
    atomic.write_csv(unprobed.root / "probe_performances.csv", probe_frame(0.9)[:7])
    write_report(logs)
    probes = read_json(unprobed.analysis_json)["probes"]
    assert probes["status"] == "partial (7 of 11)" and probes["layers_probed"] == 7
    atomic.write_csv(unprobed.root / "probe_performances.csv", probe_frame(0.9))
    page = parse(write_report(logs))
    assert read_json(unprobed.analysis_json)["probes"]["status"] == "complete"
    assert page.rows[0][-1] == "complete"


def test_a_run_is_running_only_while_its_lock_is_held(tmp_path):
    logs = tmp_path / "logs"
    runs = write_grid(logs)
    lock = RunLock(runs["running"].lock).acquire()
    page = parse(write_report(logs, tmp_path / "r.html"))
    assert page.rows[2][7] == "running 1/3 epochs"
    assert not runs["running"].analysis_json.exists()
    # released (the process lives on, e.g. with the next grid point): the run stopped after 1 of 3 epochs
    lock.release()
    page = parse(write_report(logs, tmp_path / "r.html"))
    assert page.rows[2][7] == "stopped 1/3 epochs"
    assert read_json(runs["running"].analysis_json)["run"]["status"]["state"] == "stopped"
    # a finished run whose lock is held is finished, in post-processing
    with RunLock(runs["full"].lock):
        page = parse(write_report(logs, tmp_path / "r.html"))
    assert page.rows[1][7] == "finished (post-processing)"
    # a released lock names no owner any more; a lock naming another host cannot be checked, so the
    # report leaves that folder alone (its process may still be writing there)
    assert runs["full"].lock.read_text() == ""
    runs["running"].analysis_json.unlink()
    runs["running"].lock.write_text("PID 4242 on host some-other-node\n")
    write_report(logs, tmp_path / "r.html")
    assert not runs["running"].analysis_json.exists()


def test_the_report_leaves_the_analysis_of_a_run_a_probe_job_is_writing_to_that_job(tmp_path):
    """Built while a probe job wrote a run's results, the report could write an analysis read before the
    results came over the one the probe job wrote with them."""
    from phd_lab.lock import PROBE_LOCK
    logs = tmp_path / "logs"
    runs = write_grid(logs)
    run = runs["full"]
    run.analysis_json.unlink(missing_ok=True)
    with RunLock(run.root / PROBE_LOCK):  # this process stands for the probe job: flock is per open file
        write_report(logs, tmp_path / "r.html")
        assert not run.analysis_json.exists()
        assert runs["running"].analysis_json.exists()  # the other runs' analyses are refreshed as before
        # the page says that the probe results it shows may soon be replaced (they were called "complete")
        assert "complete; a probe job is running now" in (tmp_path / "r.html").read_text(encoding="utf-8")
        from phd_lab.report.collect import analyse_run  # the probe job itself, holding that lock, writes it
        entry = analyse_run(run, write=True, probe_job=True)
        assert entry.written and run.analysis_json.exists() and entry.summary["probes"]["status"] == "complete"
        run.analysis_json.unlink()
    write_report(logs, tmp_path / "r.html")  # the job has finished (or died): the report refreshes it again
    assert run.analysis_json.exists() and read_json(run.analysis_json)["probes"]["status"] == "complete"
    assert "a probe job is running" not in (tmp_path / "r.html").read_text(encoding="utf-8")


def test_a_rebuilt_report_takes_unchanged_figures_from_the_run_folders_and_redraws_changed_ones(tmp_path):
    """Every build drew every run's figure again (about 0.2 s each: 73 s for 300 unchanged runs), also with
    --no-refresh; a figure is now redrawn only when what it shows changed."""
    logs = tmp_path / "logs"
    run = write_grid(logs)["full"]
    write_report(logs, tmp_path / "first.html")
    drawn = run.analysis_plot.stat()
    analysis = run.analysis_json.read_bytes()
    write_report(logs, tmp_path / "second.html")
    assert run.analysis_plot.stat().st_ino == drawn.st_ino and run.analysis_json.read_bytes() == analysis
    undated = lambda name: re.sub(r"generated [0-9: +-]+", "", (tmp_path / name).read_text())  # noqa: E731
    assert undated("second.html") == undated("first.html")
    edited = read_json(run.analysis_json)  # an analysis.json edited by hand, its figure_key kept: written again
    edited["accuracy"]["test"] = 0.0
    run.analysis_json.write_text(json.dumps(edited))
    write_report(logs, tmp_path / "second.html")
    assert run.analysis_json.read_bytes() == analysis
    figure = run.analysis_plot.read_bytes()
    metrics = pd.read_csv(run.metrics_csv)
    metrics.loc[metrics.index[-1], "test_accuracy"] = 0.5  # new results in the run's table
    atomic.write_csv(run.metrics_csv, metrics)
    write_report(logs, tmp_path / "third.html")
    assert run.analysis_plot.stat().st_ino != drawn.st_ino and run.analysis_plot.read_bytes() != figure
    assert read_json(run.analysis_json)["accuracy"]["test"] == 0.5
    # a table written again with the same content keeps the figure; one changed where the summary shows no
    # change gets it redrawn
    redrawn = run.analysis_plot.stat().st_ino
    atomic.write_csv(run.metrics_csv, metrics)
    write_report(logs, tmp_path / "fourth.html")
    assert run.analysis_plot.stat().st_ino == redrawn
    metrics.loc[metrics.index[0], "train_loss"] += 1.0
    atomic.write_csv(run.metrics_csv, metrics)
    write_report(logs, tmp_path / "fifth.html")
    assert run.analysis_plot.stat().st_ino != redrawn


def test_the_report_says_when_it_was_generated_with_the_utc_offset_of_that_time(tmp_path, monkeypatch):
    """The page said 'generated 2026-12-04 19:58' in the local time of the machine that wrote it, without saying
    which zone (TZ) that was, although the log lines of the same runs carry their UTC offset."""
    logs = tmp_path / "logs"
    write_run(logs, width=0.25, stage="trained")
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # +0530 all year
    time.tzset()
    try:
        page = write_report(logs, tmp_path / "r.html", refresh=False, processes=0).read_text()
    finally:
        monkeypatch.undo()
        time.tzset()
    assert re.search(r"generated \d{4}-\d\d-\d\d \d\d:\d\d \+0530 ·", page), page[:2000]


def test_a_report_removes_the_temp_files_a_killed_report_left_in_a_run_folder_once_they_are_old(tmp_path):
    """A report killed (SIGKILL) while it wrote a run's analysis.png left '.analysis.png.<random>.tmp' in the run
    folder, and no report ever removed it (main.py and the probe job do once it is 15 minutes old). The report now
    does the same; a younger one may be a probe job's write of the moment and stays."""
    logs = tmp_path / "logs"
    run = write_grid(logs)["full"]
    write_report(logs, tmp_path / "first.html")
    killed = [run.root / ".analysis.png.k1abcdef.tmp", run.root / ".analysis.json.k2abcdef.tmp"]
    live = run.root / ".analysis.json.k3abcdef.tmp"
    for path in (*killed, live):
        path.write_text("partial")
    long_ago = time.time() - atomic.STALE_AFTER_SECONDS - 60
    for path in killed:
        os.utime(path, (long_ago, long_ago))
    write_report(logs, tmp_path / "second.html")
    assert not any(path.exists() for path in killed) and live.exists()
    assert run.analysis_plot.is_file() and run.analysis_json.is_file()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to plant another "
                    "user's file, and setpriv to drop root's right to remove it")
def test_a_killed_report_s_temp_file_of_another_user_in_a_shared_folder_is_left_with_a_warning(tmp_path):
    """A shared folder of mode 1777 (a lab's /scratch) where another user's killed report had left
    '.report.html.<random>.tmp' an hour ago: this user may not remove it (EPERM), and the report stopped with a
    PermissionError traceback before reading any run. The file stays now, a warning says so once, and the report
    is written."""
    logs, shared = tmp_path / "logs", tmp_path / "shared"
    write_grid(logs)
    shared.mkdir(mode=0o1777)
    shared.chmod(0o1777)
    theirs = shared / ".report.html.k1abcdef.tmp"
    theirs.write_text("partial")
    long_ago = time.time() - 3600
    os.utime(theirs, (long_ago, long_ago))
    for path in (shared, theirs):
        os.chown(path, 65534, 65534)  # nobody's: root without CAP_FOWNER may not remove it (the sticky bit)
    done = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", sys.executable, "-m",
                           "phd_lab", "report", str(logs), "--out", str(shared / "report.html"), "--processes", "0",
                           "--no-progress"], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert (shared / "report.html").is_file() and theirs.read_text() == "partial"
    assert done.stderr.count("cannot be removed by this user") == 1, done.stderr[-2000:]
    assert (f"1 temp file(s) that a killed process left in {shared} cannot be removed by this user and stay "
            f"(.report.html.k1abcdef.tmp: Operation not permitted)") in done.stderr


def test_a_run_figure_damaged_since_it_was_written_is_drawn_again(tmp_path, caplog):
    """analysis.png was taken whenever analysis.json's figure_key matched, never checking its bytes: a figure cut in
    half (a copy broken off) was embedded broken in every later report and kept by the analysis step. analysis.json
    records the figure's sha256; a figure of other bytes is drawn again, and a warning names it."""
    import base64
    import hashlib
    from phd_lab.report.collect import analyse_run
    logs = tmp_path / "logs"
    run = write_grid(logs)["full"]
    write_report(logs, tmp_path / "first.html")
    figure = run.analysis_plot.read_bytes()
    assert read_json(run.analysis_json)["figure_sha256"] == hashlib.sha256(figure).hexdigest()
    run.analysis_plot.write_bytes(figure[: len(figure) // 2])
    with caplog.at_level("WARNING", logger="phd_lab.report.collect"):
        page = write_report(logs, tmp_path / "second.html").read_text()
    assert f"{run.analysis_plot} is not the figure written with analysis.json" in caplog.text
    assert run.analysis_plot.read_bytes() == figure
    embedded = [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]
    assert figure in embedded and figure[: len(figure) // 2] not in embedded
    run.analysis_plot.write_bytes(figure[:-1] + b"\0")  # the same size, as the analysis step reads it
    assert analyse_run(run, write=True).figure == figure and run.analysis_plot.read_bytes() == figure


def test_keys_another_version_wrote_into_analysis_json_are_kept_and_named(tmp_path, caplog):
    """A report rewrote analysis.json from its own summary alone, so a report of this version on runs a newer one
    had analysed (two checkouts on one logs folder) lost the keys only the newer one writes. They are kept as they
    were and named in 'kept_from_other_versions'; a version that knows such a key does not go by its kept value (a
    figure_sha256 kept while the figure was drawn again is no sign of a damaged figure)."""
    import hashlib
    from phd_lab.report.collect import analyse_run
    run = write_run(tmp_path / "logs", width=0.25, stage="full")
    analyse_run(run, write=True)
    written = read_json(run.analysis_json)
    atomic.write_json(run.analysis_json, {**written, "stability": {"tail_start_sd": 0.5}})  # a later version's
    analyse_run(run, write=True)
    assert read_json(run.analysis_json) == {**written, "stability": {"tail_start_sd": 0.5},
                                            "kept_from_other_versions": ["stability"]}
    analyse_run(run, write=True)  # kept again, not lost the second time
    assert read_json(run.analysis_json)["stability"] == {"tail_start_sd": 0.5}

    figure, sha256 = run.analysis_plot.read_bytes(), "figure_sha256"
    atomic.write_json(run.analysis_json, {**written, sha256: "0" * 64, "kept_from_other_versions": [sha256]})
    with caplog.at_level("WARNING", logger="phd_lab.report.collect"):
        entry = analyse_run(run, write=True)
    assert "is not the figure written" not in caplog.text and entry.figure == figure
    assert read_json(run.analysis_json) == {**written, sha256: hashlib.sha256(figure).hexdigest()}


def test_keys_another_version_wrote_inside_a_section_of_analysis_json_are_kept_and_named(tmp_path):
    """Unknown top-level keys were kept, but one a newer version wrote inside a known section ("run", "accuracy")
    was lost when this version rewrote analysis.json. It is kept as it was and named by its path."""
    from phd_lab.report.collect import analyse_run
    run = write_run(tmp_path / "logs", width=0.25, stage="full")
    analyse_run(run, write=True)
    written = read_json(run.analysis_json)
    newer = {**written, "run": {**written["run"], "gpu": "H200"},
             "accuracy": {**written["accuracy"], "top5": 0.99}, "stability": 1}
    atomic.write_json(run.analysis_json, newer)
    analyse_run(run, write=True)
    expected = {**newer, "kept_from_other_versions": ["accuracy.top5", "run.gpu", "stability"]}
    assert read_json(run.analysis_json) == expected
    analyse_run(run, write=True)  # kept again, not lost the second time
    assert read_json(run.analysis_json) == expected


def test_a_copied_logs_folder_keeps_its_run_figures(tmp_path):
    """The figure key named the files' inodes and the run's folder, so a logs folder copied from a cluster
    had every run figure drawn again by its first report there. The analysis names the new folder."""
    write_grid(tmp_path / "cluster" / "logs")
    write_report(tmp_path / "cluster" / "logs", tmp_path / "cluster" / "report.html")
    shutil.copytree(tmp_path / "cluster", tmp_path / "laptop")
    figures = {path: path.stat().st_ino for path in (tmp_path / "laptop").rglob("analysis.png")}
    assert len(figures) == 5
    write_report(tmp_path / "laptop" / "logs", tmp_path / "laptop" / "report.html")
    assert {path: path.stat().st_ino for path in figures} == figures
    for path in figures:
        assert read_json(path.with_name("analysis.json"))["run"]["folder"] == str(path.parent)


def test_run_sections_are_headed_by_the_values_that_tell_the_runs_apart(tmp_path):
    """Every section of a grid was headed by the same run name (it leaves out the swept values)."""
    logs = tmp_path / "logs"
    write_grid(logs)
    text = write_report(logs, tmp_path / "r.html").read_text()
    headings = re.findall(r"<h3>(.*?)</h3>", text)
    assert len(headings) == 5 and all("model_args.width=" in h and "run_id=" in h for h in headings)
    assert len({h.split(". ", 1)[1] for h in headings}) == 5


class ElementTexts(HTMLParser):
    """The text of every h3, li and td element as a browser shows it (character references resolved)."""

    CAPTURED = ("h3", "li", "td")

    def __init__(self):
        super().__init__()
        self.texts = {tag: [] for tag in self.CAPTURED}
        self._open = []  # (tag, index in texts[tag]) of the captured elements open now

    def handle_starttag(self, tag, attrs):
        if tag in self.CAPTURED:
            self.texts[tag].append("")
            self._open.append((tag, len(self.texts[tag]) - 1))

    def handle_endtag(self, tag):
        if self._open and self._open[-1][0] == tag:
            self._open.pop()

    def handle_data(self, data):
        for tag, index in self._open:
            self.texts[tag][index] += data


def test_names_with_markup_characters_are_shown_as_written(tmp_path):
    """A run's file prefix (the name a folder's files carry, written by hand or by an older version) and a layer
    name are text on the page: ``<`` and ``&`` in them are shown, not read as markup, in the run table's cells,
    the section heading and the recommendations."""
    import html
    run = write_run(tmp_path / "logs", width=0.25, stage="full", test_accuracy=0.94)
    # the border layer (where the tail starts and the probes reach the model), and a prefix that reads as markup
    layer, name = "<b&min>", "vgg<i>&amp;co"
    for path in sorted(run.root.rglob("*")):
        if path.suffix in (".csv", ".json"):
            path.write_text(path.read_text(encoding="utf-8").replace(BORDER, layer), encoding="utf-8")
        if path.name.startswith(run.name):
            path.rename(path.with_name(name + path.name[len(run.name):]))
    text = write_report(tmp_path / "logs", tmp_path / "r.html").read_text(encoding="utf-8")
    shown = html.unescape(re.sub(r"<[^>]*>", "", text))  # the page's text: tags left out, references resolved
    assert f"1. {name}" in shown and f"depth: {layer} and every layer after it" in shown
    page = parse(tmp_path / "r.html")
    [row] = page.rows
    assert row[0] == f"1. {name}" and row[1:4] == ["vgg11", "Digits", "32"]
    assert row[-5:-2] == [layer, layer, layer]  # b_min, b_max, tail start
    assert "run-1" in page.ids
    elements = ElementTexts()
    elements.feed(text)
    assert elements.texts["h3"] == [f"1. {name}"]
    advice = [item for item in elements.texts["li"] if item.startswith(("depth: ", "probes: "))]
    assert advice and all(layer in item for item in advice)


def test_comparison_plots_tell_many_groups_apart_and_count_runs_on_one_spot():
    """Beyond eight model/dataset groups the colours repeated, the legend covered the points, and runs on one
    spot (integer layer positions) showed as one marker."""
    import matplotlib.pyplot as plt
    from phd_lab.plots.grid_figures import scatter_figure
    summaries = [{"run": {"model": f"m{group}", "dataset": "D", "status": {"state": "finished"}}, "x": group % 3,
                  "y": 1 if group < 12 else float(group)} for group in range(20) for _ in range(3 if group < 12 else 1)]
    fig = scatter_figure(summaries, lambda s: (s["x"], s["y"]), "x", "y", "title")
    try:
        [ax] = fig.axes
        styles = {(tuple(c.get_facecolor()[0]), c.get_paths()[0].vertices.tobytes()) for c in ax.collections}
        assert len(ax.collections) == 20 and len(styles) == 20  # 20 groups, 20 colour and marker pairs
        assert sorted(t.get_text() for t in ax.texts) == ["×3"] * 12  # three runs each on one spot
        legend = ax.get_legend()
        assert legend.get_bbox_to_anchor().x0 > ax.bbox.x1 - 1  # beside the axes, not over the points
        assert {tuple(h.get_sizes()) for h in legend.legend_handles} == {(28,)}  # not sized by the counts
    finally:
        plt.close(fig)


def test_the_accuracy_axes_of_the_comparison_plots_never_run_past_an_accuracy_of_1():
    """Around the one run of the quickstart (98.3% test accuracy) autoscaling put ticks at 1.02 and 1.04 on the
    accuracy axis of both accuracy plots: the y axis now ends at 1 (a marker's margin above), with its ticks."""
    import matplotlib.pyplot as plt
    from phd_lab.plots.grid_figures import comparison_plots, scatter_figure
    summaries = [{"run": {"model": "vgg11", "dataset": "Digits", "status": {"state": "finished"}},
                  "accuracy": {"test": 0.9833}, "saturation": {"mean": 0.624, "layers": []},
                  "computational": {"params": 585_000}}]
    drawn = 0
    for x_of, labels, options in comparison_plots(summaries).values():
        if labels[1] != "test accuracy":
            continue
        fig = scatter_figure(summaries, x_of, *labels, **options)
        try:
            [ax] = fig.axes
            fig.draw(fig.canvas.get_renderer())
            low, high = ax.get_ylim()
            assert low < 0.9833 < high <= 1.01, labels
            shown = [tick for tick in ax.get_yticks() if low <= tick <= high]
            assert shown and max(shown) <= 1.0, (labels, shown)
            drawn += 1
        finally:
            plt.close(fig)
    assert drawn == 2


def test_comparison_plot_groups_differ_by_more_than_hue():
    """Up to eight model/dataset groups were all round markers told apart by colour only (one kind of point in
    grayscale or to a colour-blind reader): each of them has a marker shape of its own now, in the legend too."""
    import matplotlib.pyplot as plt
    from phd_lab.plots.grid_figures import scatter_figure
    summaries = [{"run": {"model": f"m{group}", "dataset": "D", "status": {"state": "finished"}}, "x": group,
                  "y": 0.5} for group in range(8)]
    fig = scatter_figure(summaries, lambda s: (s["x"], s["y"]), "x", "y", "title")
    try:
        [ax] = fig.axes
        shapes = [c.get_paths()[0].vertices.tobytes() for c in ax.collections]
        assert len(shapes) == 8 and len(set(shapes)) == 8
        shown = [h.get_paths()[0].vertices.tobytes() for h in ax.get_legend().legend_handles]
        assert shown == shapes
    finally:
        plt.close(fig)


def test_the_target_bands_of_a_comparison_plot_differ_by_more_than_hue():
    """A grid over target_saturation shades a band per interval, pale green, purple, orange: told apart by colour
    only (grayscale prints, colour-blind readers). From the second band on each is hatched its own way, in the legend
    too; a single band stays a plain shade."""
    import matplotlib.pyplot as plt
    from phd_lab.plots.grid_figures import scatter_figure
    summaries = [{"run": {"model": "m", "dataset": "D", "status": {"state": "finished"}}, "x": 0.25, "y": 0.9}]
    fig = scatter_figure(summaries, lambda s: (s["x"], s["y"]), "s_mu", "accuracy", "t",
                         bands=[(0.5, 0.6), (0.2, 0.3), (0.25, 0.4)])
    try:
        [ax] = fig.axes
        hatches = {patch.get_label(): patch.get_hatch() for patch in ax.patches}
        assert list(hatches) == ["target s_mu 20%-30%", "target s_mu 25%-40%", "target s_mu 50%-60%"]
        assert hatches["target s_mu 20%-30%"] is None and len(set(hatches.values())) == 3
        shown = {text.get_text(): handle.get_hatch()
                 for text, handle in zip(ax.get_legend().get_texts(), ax.get_legend().legend_handles)
                 if text.get_text().startswith("target")}
        assert shown == hatches
    finally:
        plt.close(fig)


def _summary(model: str, state: str, accuracy: float, s_mu: float, params: int, b_min: str | None,
             tail_starts: list[str]) -> dict:
    """An analysis summary as the report reads it: run, accuracy, saturation per layer, borders, tails."""
    return {"run": {"model": model, "dataset": "D", "status": {"state": state}}, "accuracy": {"test": accuracy},
            "saturation": {"mean": s_mu, "layers": [{"layer": f"l{i}"} for i in range(1, 6)]},
            "computational": {"params": params}, "borders": {"b_min": b_min},
            "tails": [{"first_layer": layer} for layer in tail_starts]}


def test_each_comparison_plot_puts_every_run_at_its_own_values():
    """s_mu on x and accuracy on y; parameters on x; the layer positions (1-based) of b_min on x and of the last
    tail's start on y; figures identical to the same plots drawn from those points directly."""
    from phd_lab.plots.grid_figures import grid_figures, png_bytes, scatter_figure
    summaries = [_summary("a", "finished", 0.9, 0.25, 1000, "l3", ["l1", "l4"]),
                 _summary("b", "running", 0.7, 0.4, 50_000, "l2", ["l2"]),
                 _summary("b", "finished", 0.8, 0.1, 20_000, None, [])]
    points = {"Test accuracy against average saturation s_mu": [(0.25, 0.9), (0.4, 0.7), (0.1, 0.8)],
              "Test accuracy against parameters": [(1000, 0.9), (50_000, 0.7), (20_000, 0.8)],
              "Tail start against border layer b_min": [(3, 4), (2, 2), (None, None)]}
    labels = {"Test accuracy against average saturation s_mu": ("average saturation s_mu", "test accuracy",
                                                                 "test accuracy vs s_mu",
                                                                 {"bands": [(0.2, 0.3)], "x_percent": True,
                                                                  "y_percent": True}),
              "Test accuracy against parameters": ("parameters", "test accuracy", "test accuracy vs parameters",
                                                   {"logx": True, "y_percent": True}),
              "Tail start against border layer b_min": ("b_min (layer position)", "tail start (layer position)",
                                                        "tail start vs b_min", {"diagonal": True, "integer": True})}
    drawn = grid_figures(summaries)
    assert list(drawn) == list(points)
    for title, values in points.items():
        xlabel, ylabel, short, options = labels[title]
        at = {id(s): value for s, value in zip(summaries, values)}
        expected = png_bytes(scatter_figure(summaries, lambda s: at[id(s)], xlabel, ylabel, short, **options))
        assert drawn[title] == expected, title


def test_a_comparison_plot_marks_unfinished_runs_pairs_and_its_scales():
    import matplotlib.pyplot as plt
    from phd_lab.plots.grid_figures import scatter_figure
    summaries = [{"run": {"model": "m", "dataset": "D", "status": {"state": state}}, "x": x, "y": 0.5}
                 for state, x in (("finished", 10), ("finished", 10), ("running", 1000), ("failed", 100))]
    fig = scatter_figure(summaries, lambda s: (s["x"], s["y"]), "x", "y", "t", logx=True, diagonal=True)
    try:
        [ax] = fig.axes
        done, unfinished = ax.collections
        assert done.get_label() == "m / D" and unfinished.get_label() == "m / D (unfinished)"
        assert sorted(unfinished.get_offsets()[:, 0]) == [100, 1000]  # running and failed: not finished
        assert done.get_facecolor()[0][3] == 1
        assert not len(unfinished.get_facecolor()) or unfinished.get_facecolor()[0][3] == 0  # hollow
        assert [t.get_text() for t in ax.texts] == ["×2"]  # two runs on one spot
        assert ax.get_xscale() == "log" and "agreement" in [line.get_label() for line in ax.get_lines()]
    finally:
        plt.close(fig)
    fig = scatter_figure([{"run": {}, "x": None, "y": None}], lambda s: (s["x"], s["y"]), "x", "y", "t",
                         logx=True, diagonal=True)
    try:
        [ax] = fig.axes
        assert not ax.get_lines() and ax.get_xscale() == "linear"  # nothing to draw: no diagonal, no log scale
        assert [t.get_text() for t in ax.texts] == ["no run has both values yet"]
    finally:
        plt.close(fig)


def test_a_long_legend_beside_a_comparison_plot_takes_a_second_column():
    import matplotlib.pyplot as plt
    from phd_lab.plots.grid_figures import scatter_figure
    summaries = [{"run": {"model": f"m{group:02d}", "dataset": "D", "status": {"state": "finished"}}, "x": group,
                  "y": 0.5} for group in range(24)]
    fig = scatter_figure(summaries, lambda s: (s["x"], s["y"]), "x", "y", "title")
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        columns = {round(t.get_window_extent(renderer).x0) for t in fig.axes[0].get_legend().get_texts()}
        assert len(columns) == 2
    finally:
        plt.close(fig)


@pytest.mark.parametrize("count, step", [(40, 1), (41, 2), (81, 3)])
def test_at_most_forty_tick_labels_every_nth_one(count, step):
    import matplotlib.pyplot as plt
    from phd_lab.plots.grid_figures import thin_tick_labels
    fig, ax = plt.subplots()
    try:
        labels = [f"d{i}" for i in range(count)]
        thin_tick_labels(ax, labels, rotation=70)
        texts = [t.get_text() for t in ax.get_xticklabels()]
        assert len(texts) <= 40 and texts == labels[::step] and list(ax.get_xticks()) == list(range(0, count, step))
    finally:
        plt.close(fig)


def test_probe_results_that_change_while_a_run_is_analysed_are_read_again_before_anything_is_written(tmp_path):
    """The report read a run's tables, a probe job wrote its results and analysis meanwhile, and the report
    then wrote its older analysis over that one."""
    from phd_lab.report.collect import analyse_run
    run = write_grid(tmp_path / "logs")["full"]
    run.analysis_json.unlink(missing_ok=True)
    with probe_results_replaced_again_and_again(run):
        entry = analyse_run(run, write=True)
    assert not entry.written and not run.analysis_json.exists()  # always read while changing: left to the job
    entry = analyse_run(run, write=True)
    assert entry.written and read_json(run.analysis_json)["probes"]["status"] == "complete"


def test_the_report_never_imports_torch(grid, tmp_path):
    """The report reads saved tables only: on a login node over hundreds of runs, importing torch
    (through the receptive-field module) cost ≈ 0.8 GB and most of the start-up time."""
    logs, _ = grid
    code = ("import sys\nfrom phd_lab.__main__ import main\n"
            f"rc = main(['report', {str(logs)!r}, '--out', {str(tmp_path / 'r.html')!r}, '-q'])\n"
            "print(rc, sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))[:3])")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[-2] == "0 []"
    assert (tmp_path / "r.html").is_file()


def test_a_report_page_that_cannot_be_written_is_one_paragraph_and_exit_1(tmp_path):
    """Files may grow to 300 bytes only (``ulimit -f``, a full disk): writing the page ended in a traceback; it is
    one paragraph naming the page and the system's error, and an earlier page stays as it was. It told to free
    space on the disk, which a file size limit does not need; it now names that limit."""
    logs, site = tmp_path / "logs", tmp_path / "site"
    write_run(logs, width=0.25, stage="trained")
    site.mkdir()
    page = site / "r.html"
    assert report_in_process_plain(logs, "--out", page, "--no-refresh", "--no-progress", "-mp", "0") == 0
    before = page.read_bytes()
    result = subprocess.run([sys.executable, "-m", "phd_lab", "report", str(logs), "--out", str(page), "--no-refresh",
                             "--no-progress", "-mp", "0"], cwd=ROOT, capture_output=True, text=True, timeout=240,
                            preexec_fn=file_size_limit(300))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    said = " ".join(result.stderr.split())
    assert f"error: The report page '{page}' could not be written (File too large)" in said
    # a limit of the process, not a full disk: freeing space would not help, raising the limit does
    assert ("left as it was. The cause: the file outgrew this process' file size limit (`ulimit -f`, or the batch "
            "job's): raise or lift it (or pass another --out), then rerun the command.") in said, said
    assert page.read_bytes() == before and sorted(site.iterdir()) == [page]  # no temp page left beside it


def test_report_usage_errors_exit_2(tmp_path, capsys):
    missing = run_report(tmp_path / "nope")  # the command's own exit status, in a real process
    assert missing.returncode == 2
    # the message wraps at 110 columns, wherever the temporary folder's length puts the breaks
    assert "does not exist" in " ".join(missing.stderr.split()) and "Traceback" not in missing.stderr
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    empty = report_in_process(capsys, tmp_path / "empty")  # the rest in this process: the same code and exit codes
    assert empty.returncode == 2 and "holds no runs" in " ".join(empty.stderr.split())
    assert not (tmp_path / "empty" / "report.html").exists()
    # --out below a file: refused before any run folder's analysis files are refreshed
    logs = tmp_path / "logs"
    runs = write_grid(logs)
    (tmp_path / "afile").write_text("x")
    blocked = report_in_process(capsys, logs, "--out", tmp_path / "afile" / "r.html")
    assert blocked.returncode == 2 and "Traceback" not in blocked.stderr
    assert "report: the folder of --out is" in " ".join(blocked.stderr.split())
    assert "is a file, so that folder cannot be created" in " ".join(blocked.stderr.split())
    assert not any(rundir.analysis_json.exists() for rundir in runs.values())
    # a killed report's old temp page goes; anything else in the --out folder stays, however old
    site = tmp_path / "site"
    site.mkdir()
    own, foreign, sibling = site / ".r.html.k1abcdef.tmp", site / ".thesis-draft.tmp", site / ".r.html.gz.k1abcdef.tmp"
    table = site / ".r_saturation_stability.csv.k1abcdef.tmp"  # a killed report's half-written table goes too
    long_ago = time.time() - atomic.STALE_AFTER_SECONDS - 60
    for path in (own, foreign, sibling, table):
        path.write_text("x")
        os.utime(path, (long_ago, long_ago))
    assert report_in_process_plain(logs, "--out", site / "r.html", "--no-refresh") == 0
    assert not own.exists() and not table.exists() and foreign.exists() and sibling.exists()
    assert not any(rundir.analysis_json.exists() for rundir in runs.values())  # --no-refresh: read-only logs
    # an earlier report is replaced; any other file is not (a run's CSV lost its history to --out)
    assert report_in_process_plain(logs, "--out", site / "r.html", "--no-refresh") == 0
    metrics = runs["full"].metrics_csv
    before = metrics.read_bytes()
    refused = report_in_process(capsys, logs, "--out", metrics, "--no-refresh")
    assert refused.returncode == 2 and "exists and is no phd-lab report" in " ".join(refused.stderr.split())
    assert metrics.read_bytes() == before and "Traceback" not in refused.stderr


def test_an_empty_logs_dir_argument_is_refused_not_read_as_the_working_directory(tmp_path, capsys, monkeypatch):
    """`report "$LOGS"` with LOGS unset analysed the working directory and wrote report.html and analysis files
    into whatever runs lay below it."""
    write_grid(tmp_path / "logs")
    monkeypatch.chdir(tmp_path)
    empty = report_in_process(capsys, "")
    message = " ".join(empty.stderr.split())
    assert empty.returncode == 2 and "LOGS_DIR is empty" in message and "or '.' for the working directory" in message
    assert not (tmp_path / "report.html").exists() and not list(tmp_path.rglob("analysis.json"))


def test_analysis_step_at_the_end_of_a_real_training(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative logs_dir: analysis.json names the run folder absolutely all the same
    config = {"model": "vgg11", "model_args": {"width": 0.125}, "dataset": "Digits", "resolution": 16,
              "epoch": 1, "batch_size": 128, "logs_dir": "logs", "device": "cpu",
              "post_processing": ["analysis"]}
    path = tmp_path / "exp.json"
    path.write_text(json.dumps(config))
    code, err = main_in_process(capsys, "--config", str(path), "--no-progress", "-q")
    assert code == 0, err
    folders = [p.parent for p in (tmp_path / "logs").rglob("*_config.json")]
    assert len(folders) == 1
    analysis = read_json(folders[0] / "analysis.json")
    assert analysis["run"]["status"]["state"] == "finished" and analysis["run"]["folder"] == str(folders[0])
    # written by the run's last step: finished, not "finished (post-processing)" until a report refreshed it
    assert analysis["run"]["status"]["label"] == "finished" and analysis["run"]["status"]["active"] is False
    csv = pd.read_csv(next(folders[0].glob("vgg11-*.csv")))
    assert analysis["accuracy"]["test"] == pytest.approx(csv["test_accuracy"].iloc[-1])
    assert (folders[0] / "analysis.png").read_bytes()[:8] == PNG
    # the report of that logs folder works too
    assert report_in_process(capsys, tmp_path / "logs").returncode == 0


def test_unrelated_files_in_the_logs_tree_are_no_runs_and_deleted_runs_stay_deleted(tmp_path):
    logs = tmp_path / "logs"
    runs = write_grid(logs)
    (logs / "exp_config.json").write_text('{"model": "vgg11", "dataset": "Digits"}')  # a copied experiment config
    (logs / "notes").mkdir()
    (logs / "notes" / "receptive_field.csv").write_text("layer,r_min\nx,1\n")
    from phd_lab.analysis.run_tables import discover_runs
    found = {run.root for run in discover_runs(logs)}
    assert found == {run.root for run in runs.values()}
    write_report(logs, tmp_path / "r.html")
    assert not (logs / "analysis.json").exists() and not (logs / "notes" / "analysis.json").exists()
    # a run folder deleted between discovery and writing is not re-created by the report
    from phd_lab.report.collect import analyse_run
    gone = runs["full"]
    shutil.rmtree(gone.root)
    analyse_run(gone, write=True)
    assert not gone.root.exists()


def test_the_package_entry_point_lists_its_commands():
    shown = subprocess.run([sys.executable, "-m", "phd_lab", "--help"], cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
    assert shown.returncode == 0 and all(f"phd_lab {c}" in shown.stdout for c in ("train", "probe", "report"))
    probe = subprocess.run([sys.executable, "-m", "phd_lab", "probe", "--help"], cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
    assert probe.returncode == 0 and "--latents" in probe.stdout


def test_every_console_script_of_setup_cfg_runs():
    """A change to cli.py dropped ``entry_point``, which setup.cfg names for ``phd-lab-train``: the installed
    command then failed with an ImportError while the tests, which call main_cli, stayed green."""
    import configparser
    import importlib
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    scripts = dict(line.split("=", 1) for line in setup["options.entry_points"]["console_scripts"].split("\n")
                   if line.strip())
    assert {"phd-lab", "phd-lab-train"} <= {name.strip() for name in scripts}
    for name, target in scripts.items():
        module, _, attribute = target.strip().partition(":")
        assert callable(getattr(importlib.import_module(module), attribute)), name
        installed = Path(sys.executable).parent / name.strip()
        if installed.exists():  # the venv's own console script, as a user runs it
            shown = subprocess.run([str(installed), "--help"], capture_output=True, text=True, timeout=60)
            assert shown.returncode == 0, shown.stderr


def test_the_report_shows_progress_over_the_runs(grid, tmp_path, capsys):
    """Over hundreds of runs the report was silent for a minute: it logs the count and shows a bar."""
    logs, runs = grid
    result = report_in_process(capsys, logs, "--out", tmp_path / "r.html")
    assert result.returncode == 0, result.stderr
    assert f"Analysing {len(runs)} run(s) below {logs}" in result.stderr
    # the bar is drawn when it starts and then at most every 0.1 s; it leaves no line behind, so its last state
    # (100 %) shows only where a refresh fell on the last run (the suite once missed it on a busy machine)
    assert re.search(rf"analysing runs: +\d+%\|.*\| \d+/{len(runs)} ", result.stderr.replace("\r", "\n"))
    quiet = report_in_process(capsys, logs, "--out", tmp_path / "q.html", "--no-progress")
    assert quiet.returncode == 0 and "analysing runs" not in quiet.stderr
    quiet = report_in_process(capsys, logs, "--out", tmp_path / "q.html", "-q")  # warnings and errors only
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_a_run_whose_config_cannot_be_read_does_not_make_every_key_vary(tmp_path):
    """One run with a damaged config grew the table from the keys that vary to every key of the schema."""
    from phd_lab.report.collect import collect
    from phd_lab.report.html import varying_keys
    logs = tmp_path / "logs"
    runs = write_grid(logs)
    before = varying_keys(collect(logs, refresh=False))
    assert "model_args.width" in before and "batch_size" not in before
    runs["trained"].config.write_text("{")
    assert varying_keys(collect(logs, refresh=False)) == before
    page = parse(write_report(logs, tmp_path / "r.html", refresh=False))  # its section has no swept values
    assert len(page.rows) == 5 and page.rows[3][0] == "4. " + runs["trained"].name


def test_runs_of_0_1_differ_in_no_column_whether_or_not_their_config_says_linear_init_null(tmp_path):
    """A 0.1 logged config names no linear_init and runs with null; one rewritten by a 0.2 rerun says null.
    The report showed a linear_init column where the two read "-" and "null" for the same setup."""
    from phd_lab.report.collect import collect
    from phd_lab.report.html import varying_keys
    logs = tmp_path / "logs"
    runs = list(write_grid(logs).values())
    for position, rundir in enumerate(runs):
        config = json.loads(rundir.config.read_text())
        config["_meta"]["phd_lab"] = "0.1.0"
        if position % 2:
            config["model_args"]["linear_init"] = None  # rewritten by 0.2
        else:
            del config["model_args"]["linear_init"]  # as 0.1 wrote it
        rundir.config.write_text(json.dumps(config))
    assert "model_args.linear_init" not in varying_keys(collect(logs, refresh=False))
    config = json.loads(runs[0].config.read_text())
    config["_meta"]["phd_lab"] = "0.2.0"  # a 0.2 config without the key runs with the default, torch_output
    runs[0].config.write_text(json.dumps(config))
    assert "model_args.linear_init" in varying_keys(collect(logs, refresh=False))


def test_a_run_with_results_but_an_empty_metrics_csv_is_not_said_to_have_no_csv(tmp_path):
    from phd_lab.analysis.run_tables import load_run
    rundir = write_run(tmp_path / "logs", width=0.25, stage="probes-only")
    assert load_run(rundir).status.label() == "no metrics CSV"
    rundir.metrics_csv.write_text("epoch,train_loss,test_loss\n")
    assert load_run(rundir).status.label() == "metrics CSV without epochs"


def _edit_config(rundir, change):
    config = json.loads(rundir.config.read_text())
    change(config)
    rundir.config.write_text(json.dumps(config))


def test_the_version_technical_keys_and_the_named_columns_are_no_varying_columns(tmp_path):
    """Runs trained by other versions of phd-lab, on other devices or of other models: only the model tells
    them apart in the table, in its own column."""
    from phd_lab.report.collect import collect
    from phd_lab.report.html import varying_keys
    logs = tmp_path / "logs"
    runs = list(write_grid(logs).values())
    before = varying_keys(collect(logs, refresh=False))
    assert before == ["model_args.width", "run_id", "seed"]
    for position, rundir in enumerate(runs):
        _edit_config(rundir, lambda c: c["_meta"].update(phd_lab=f"0.{position}.0"))
        _edit_config(rundir, lambda c: c.update(device="cpu" if position % 2 else "cuda:0"))
        _edit_config(rundir, lambda c: c.update(model="vgg11" if position % 2 else "vgg13"))
    assert varying_keys(collect(logs, refresh=False)) == before


def test_counts_change_unit_at_a_thousand_a_million_and_a_billion():
    from phd_lab.report.html import MISSING, _count
    assert [_count(v) for v in (999, 1000, 1e6, 2.5e9, None)] == ["999", "1.00 k", "1.00 M", "2.50 G", MISSING]
    # the unit is chosen after rounding: never "1000.00 k"
    assert [_count(v) for v in (999.6, 999_999, 999_994_999, -999_999, 2e12)] == [
        "1.00 k", "1.00 M", "999.99 M", "-1.00 M", "2000.00 G"]


def test_the_tail_columns_name_the_tail_closest_to_the_output_and_how_far_it_is_from_b_min(tmp_path):
    logs = tmp_path / "logs"
    two_tails = write_run(logs, width=0.25, stage="unprobed", run_id="0")
    with_train_saturations(two_tails, [0.03] * 3 + [0.4] * 2 + [0.03] * 5 + [0.4])  # input tail, border tail
    late = write_run(logs, width=0.25, stage="unprobed", run_id="1")
    with_train_saturations(late, [0.4] * 7 + [0.03] * 3 + [0.4])  # from features.18, two layers after b_min
    page = parse(write_report(logs, tmp_path / "r.html", refresh=False))
    assert [row[-5] for row in page.rows] == [BORDER, BORDER]  # b_min
    assert [row[-3:-1] for row in page.rows] == [[BORDER, "yes"], ["features.18", "no (+2)"]]


def test_the_s_mu_plot_shades_the_target_interval_of_the_runs_analysis(tmp_path):
    from phd_lab.plots.grid_figures import grid_figures
    from phd_lab.report.collect import collect
    logs = tmp_path / "logs"
    for rundir in write_grid(logs).values():
        _edit_config(rundir, lambda c: c.update(target_saturation=[0.5, 0.7]))
    summaries = [entry.summary for entry in collect(logs, refresh=False)]
    assert {tuple(s["settings"]["target_saturation"]) for s in summaries} == {(0.5, 0.7)}
    text = write_report(logs, tmp_path / "r.html", refresh=False).read_text(encoding="utf-8")
    title = "Test accuracy against average saturation s_mu"
    shaded, default = (base64.b64encode(grid_figures(summaries, bands=[band])[title]).decode()
                       for band in ((0.5, 0.7), (0.2, 0.3)))
    assert shaded != default and shaded in text and default not in text


def test_a_grid_over_target_saturation_shades_every_band_of_its_runs(tmp_path):
    """The s_mu plot shaded the first run's band for every run of the grid."""
    from phd_lab.plots.grid_figures import grid_figures
    from phd_lab.report.collect import collect
    logs = tmp_path / "logs"
    for rundir, band in zip(write_grid(logs).values(), ([0.5, 0.7], [0.1, 0.2]), strict=False):
        _edit_config(rundir, lambda c, band=band: c.update(target_saturation=band))
    summaries = [entry.summary for entry in collect(logs, refresh=False)]
    assert {(0.5, 0.7), (0.1, 0.2)} <= {tuple(s["settings"]["target_saturation"]) for s in summaries}
    text = write_report(logs, tmp_path / "r.html", refresh=False).read_text(encoding="utf-8")
    title = "Test accuracy against average saturation s_mu"
    bands = sorted({tuple(s["settings"]["target_saturation"]) for s in summaries})
    every, first = (base64.b64encode(grid_figures(summaries, bands=shown)[title]).decode()
                    for shown in (bands, bands[:1]))
    assert every != first and every in text and first not in text


FAILING_MODEL = '''
from torch import nn


class Failing(nn.Module):
    """A model whose forward pass fails once ``fail_after`` batches of training went through."""

    def __init__(self, num_classes, in_channels, fail_after):
        super().__init__()
        self.head = nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))
        self.fail_after, self.calls = fail_after, 0

    def forward(self, x):
        self.calls += self.training
        if self.training and self.calls > self.fail_after:
            raise RuntimeError("the model broke on purpose")
        return self.head(x)


def failing(*, num_classes, in_channels=3, fail_after=0):
    return Failing(num_classes, in_channels, fail_after)
'''


@pytest.mark.parametrize("fail_after", [0, 14])  # in its first epoch; in its second (12 batches an epoch)
def test_a_run_that_failed_is_shown_failed_with_its_error_and_its_log_linked(tmp_path, capsys, fail_after):
    """A run that crashed looked "not started" (or "stopped k/E", as if killed) and its log, which holds the
    traceback, was linked nowhere on the page."""
    from tests.conftest import write_config
    module = tmp_path / "failing_models.py"
    module.write_text(FAILING_MODEL)
    config = write_config(tmp_path, model="failing", model_args={"fail_after": fail_after}, batch_size=128,
                          registries={"models": str(module)}, track_saturation=False, epoch=3, post_processing=[])
    code, _ = main_in_process(capsys, "--config", str(config), "--no-progress")
    assert code == 1
    page = parse(write_report(tmp_path / "logs", tmp_path / "r.html", refresh=False))
    when = "after 1/3 epochs" if fail_after else "before its first epoch"
    [row] = page.rows
    assert f"failed {when} (RuntimeError: the model broke on purpose)" in row
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "its log has the traceback" in " ".join(text.split())
    assert any(unquote(link).endswith("failing-Digits-r16-bs128-e3.log") for link in page.hrefs), page.hrefs


def test_a_logs_dir_the_locale_cannot_decode_is_linked_and_named_as_its_bytes_are(tmp_path):
    """'数据' given on the command line under LC_ALL=C (Python's UTF-8 mode off) is held as undecodable bytes: the
    page's links to the run's files ended the report with a UnicodeEncodeError traceback (exit 1). The page is now
    the one a UTF-8 locale writes."""
    logs, site = tmp_path / "数据", tmp_path / "site"
    write_run(logs, width=0.25, stage="trained")
    pages = {}
    for locale, env in (("c", {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}),
                        ("utf8", {"PYTHONUTF8": "1"})):
        pages[locale] = site / f"{locale}.html"
        done = subprocess.run([sys.executable, "-m", "phd_lab", "report", str(logs), "--out", str(pages[locale]),
                               "--no-refresh", "--no-progress", "-mp", "0"], cwd=ROOT, capture_output=True,
                              env={**os.environ, **env}, timeout=240)
        assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr
    undated = {locale: re.sub(rb"generated [0-9: +-]+", b"", page.read_bytes()) for locale, page in pages.items()}
    assert undated["c"] == undated["utf8"]
    assert "../%E6%95%B0%E6%8D%AE/vgg11/" in undated["c"].decode("utf-8")


def test_a_page_holding_a_name_that_is_no_utf_8_still_lends_its_figures_to_the_next(tmp_path):
    """A folder name with a byte that is no UTF-8 (a Latin-1 'café') goes into the page as its bytes, and the next
    report read that page as strict UTF-8, failed, and drew every comparison and group figure again, each time."""
    site = tmp_path / os.fsdecode(b"caf\xe9")
    logs = site / "logs"
    write_run(logs, width=0.25, stage="trained")
    page = write_report(logs, site / "r.html", refresh=False, progress=False, processes=0)
    text = page.read_bytes()
    assert b"caf\xe9" in text  # the name's own byte
    keyed = re.findall(rb'<img data-key="([0-9a-f]{32})" [^>]*?src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert keyed
    markers = {key: base64.b64encode(b"\x89PNG\r\n\x1a\n marker " + key) for key, _ in keyed}
    for key, data in keyed:
        text = text.replace(data, markers[key])
    page.write_bytes(text)
    again = write_report(logs, site / "r.html", refresh=False, progress=False, processes=0).read_bytes()
    assert all(markers[key] in again for key, _ in keyed)  # none drawn again


@pytest.mark.parametrize("module, leaf", [("phd_lab.report.collect", "_plotted_files_digest"),
                                          ("phd_lab.plots.run_figure", "draw_run_figure"),
                                          ("phd_lab.report.collect", "_write")])
def test_a_ctrl_c_as_matplotlib_is_first_imported_stops_the_report(tmp_path, capsys, monkeypatch, module, leaf):
    """A Ctrl-C that lands while a compiled module is first imported comes out of the import as "ImportError:
    initialization failed" raised from the KeyboardInterrupt; the report imports matplotlib's as it reads the first
    run's plotted files, draws its figure or writes it. Each took the stop for that run's failed analysis: the report
    went on to the next run and was written, exit 0. ``leaf`` raises what such an import raises."""
    import importlib

    from tests.conftest import interrupted_import

    logs = tmp_path / "logs"
    write_run(logs, width=0.25, stage="full")
    monkeypatch.setattr(importlib.import_module(module), leaf, lambda *args, **kwargs: interrupted_import())
    out = tmp_path / "report.html"
    result = report_in_process(capsys, logs, "--out", out, "--processes", 0)
    assert result.returncode == 130
    assert "interrupted" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_a_ctrl_c_while_the_probe_job_refreshes_the_analysis_stops_the_job(tmp_path, monkeypatch, caplog):
    """The probe job refreshes the run's analysis after writing its results, the first figure it draws importing
    matplotlib: a Ctrl-C there was a warning ('the analysis could not be refreshed') and the job went on."""
    from phd_lab.probes.discovery import ProbeJob
    from phd_lab.probes.outputs import refresh_analysis
    from phd_lab.plots import run_figure
    from tests.conftest import interrupted_import

    run = write_run(tmp_path / "logs", width=0.25, stage="full")
    monkeypatch.setattr(run_figure, "draw_run_figure", lambda *args, **kwargs: interrupted_import())
    job = ProbeJob(manifest=None, settings=None, outputs=run, label=run.name)  # type: ignore[arg-type]
    with pytest.raises(KeyboardInterrupt):
        refresh_analysis(job)
    assert "could not be refreshed" not in caplog.text
