"""A report's run figures drawn by worker processes: the same bytes as drawn in the report's own process, one
figure that fails spoils only its run, and the figures of a killed worker are drawn in the report's process."""

import base64
import contextlib
import hashlib
import logging
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from phd_lab.analysis.run_summary import AnalysisSettings, summarize
from phd_lab.analysis.run_tables import load_run
from phd_lab.plots.run_figure import figure_png
from phd_lab.report.cli import main_report, write_report
from phd_lab.report.run_figures import FIGURES_PER_WORKER, draw_run_figures, figure_workers
from tests.analysis_fixtures import probe_results_replaced_again_and_again, read_json, write_run
from tests.conftest import pool_worker_ready, ready_pool_workers, sigint_as_in_a_terminal, spawned_children

PNG = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parents[1]
WIDTHS = (0.0625, 0.125, 0.25, 0.5)


def _runs(logs, count):
    return [write_run(logs, width=WIDTHS[index % len(WIDTHS)], stage="full", run_id=str(index),
                      test_accuracy=0.9 + 0.01 * index) for index in range(count)]


def _request(rundir):
    tables = load_run(rundir)
    return tables, summarize(tables, AnalysisSettings())


def test_workers_start_only_where_each_has_a_few_figures_to_draw():
    assert FIGURES_PER_WORKER == 4
    assert figure_workers(0, 8) == 0
    assert figure_workers(7, 2) == 0  # one worker's worth: drawn in the report's process
    assert figure_workers(8, 2) == 2
    assert figure_workers(100, 1) == 0
    assert figure_workers(100, 3) == 3
    assert figure_workers(13, 16) == 3


def test_figures_drawn_by_workers_are_the_bytes_the_report_draws_itself(tmp_path, caplog):
    """Two copies of the same eight runs: one report draws in its own process (-mp 0), the other in two
    workers. Every analysis.png, every analysis (but the run's folder) and every
    figure the pages embed are the same."""
    _runs(tmp_path / "here" / "logs", 2 * FIGURES_PER_WORKER)
    shutil.copytree(tmp_path / "here", tmp_path / "workers")
    pages = {}
    for copy, processes in (("here", 0), ("workers", 2)):
        caplog.clear()
        with caplog.at_level(logging.INFO):
            pages[copy] = write_report(tmp_path / copy / "logs", processes=processes).read_text()
        drawn_by_workers = "Drawing 8 run figures in 2 worker processes" in caplog.text
        assert drawn_by_workers == (processes == 2)
    figures = {copy: sorted((tmp_path / copy / "logs").rglob("analysis.png")) for copy in pages}
    assert len(figures["here"]) == len(figures["workers"]) == 8
    for here, workers in zip(figures["here"], figures["workers"]):
        assert here.relative_to(tmp_path / "here") == workers.relative_to(tmp_path / "workers")
        assert here.read_bytes().startswith(PNG) and here.read_bytes() == workers.read_bytes()
        analyses = [read_json(path.with_name("analysis.json")) for path in (here, workers)]
        for analysis, copy in zip(analyses, pages):
            analysis["run"]["folder"] = analysis["run"]["folder"].replace(str(tmp_path / copy), "")
        assert analyses[0] == analyses[1]
    embedded = {copy: re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
                for copy, page in pages.items()}
    assert len(embedded["here"]) >= 8 and embedded["here"] == embedded["workers"]
    assert {base64.b64decode(data) for data in embedded["here"]} >= {path.read_bytes() for path in figures["here"]}


def test_a_figure_that_fails_in_a_worker_spoils_only_its_own_run(tmp_path):
    requests = [_request(rundir) for rundir in _runs(tmp_path / "logs", 2 * FIGURES_PER_WORKER)]
    tables, summary = requests[3]
    broken = {**summary, "saturation": {**summary["saturation"], "layers": [{"not": "a layer"}]}}
    requests[3] = (tables, broken)
    results = dict(draw_run_figures(requests, processes=2))
    assert sorted(results) == list(range(8)) and isinstance(results[3], KeyError)
    assert all(result.startswith(PNG) for position, result in results.items() if position != 3)
    assert results[0] == figure_png(*requests[0])


def test_the_figures_of_a_killed_worker_are_drawn_in_this_process(tmp_path, caplog):
    """A worker killed by a signal (the out-of-memory killer) breaks the pool: every figure not yet back is
    drawn here, and the report says so; each figure is yielded once."""
    requests = [_request(rundir) for rundir in _runs(tmp_path / "logs", 2 * FIGURES_PER_WORKER)]
    killed = []

    def kill_a_worker() -> None:
        deadline = time.monotonic() + 60
        while not killed and time.monotonic() < deadline:
            workers = multiprocessing.active_children()
            if workers:
                time.sleep(0.5)  # importing or drawing: either way the pool breaks
                os.kill(workers[0].pid, signal.SIGKILL)
                killed.append(workers[0].pid)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_worker)
    killer.start()
    try:
        with caplog.at_level(logging.WARNING):
            yielded = list(draw_run_figures(requests, processes=2, progress=True))
    finally:
        killer.join()
    assert killed, "no worker process was seen"
    assert "A figure worker process ended abruptly: it was killed by SIGKILL: the out-of-memory killer" in caplog.text
    assert "run figures were not drawn by the worker processes; they are drawn in this process" in caplog.text
    positions = [position for position, _ in yielded]
    assert sorted(positions) == list(range(8))  # each figure once, whoever drew it
    results = dict(yielded)
    assert all(isinstance(result, bytes) and result.startswith(PNG) for result in results.values())
    assert results[7] == figure_png(*requests[7])


class _WorkerLostWhileHandedOver(list):
    """Figure requests, the last of which, when it is handed to the pool (its workers run then), is given only once
    ``signum`` ended a worker that is ready (past its initializer) and the pool marked itself broken (the worker
    reaped): the worker died while the figures were handed over, as one killed at its start would."""

    def __init__(self, requests: list, signum: int) -> None:
        super().__init__(requests)
        self.signum, self.killed = signum, False

    def __getitem__(self, position):
        if position == len(self) - 1 and not self.killed and spawned_children(os.getpid()):
            self.killed = True
            deadline = time.monotonic() + 60
            while not (ready := [pid for pid in spawned_children(os.getpid()) if pool_worker_ready(pid)]):
                assert time.monotonic() < deadline, "no figure worker became ready"
                time.sleep(0.02)
            os.kill(ready[0], self.signum)
            while Path(f"/proc/{ready[0]}").exists():
                assert time.monotonic() < deadline, "the figure worker was never reaped"
                time.sleep(0.02)
        return super().__getitem__(position)

    def __iter__(self):
        return (self[position] for position in range(len(self)))


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_a_figure_worker_lost_while_the_figures_are_handed_over_is_said_as_one_lost_later(tmp_path, caplog, signum):
    """A worker that died while the report still handed figures to the pool made the pool's submit raise
    BrokenProcessPool, which the report took for a pool that 'could not start': a worker killed (SIGKILL) was not
    said as such, and one interrupted alone (SIGINT) did not stop the report as Ctrl-C does."""
    runs = _runs(tmp_path / "logs", 2 * FIGURES_PER_WORKER)
    requests = _WorkerLostWhileHandedOver([_request(rundir) for rundir in runs], signum)
    # the workers' SIGINT as in a terminal: started in the background by a non-interactive shell (a CI script),
    # this process has SIGINT ignored, which its workers inherit, and the one signalled would never end
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    drawn = draw_run_figures(requests, processes=2)
    with caplog.at_level(logging.WARNING), contextlib.ExitStack() as restore:
        restore.callback(signal.signal, signal.SIGINT, previous)
        if signum == signal.SIGINT:
            with pytest.raises(KeyboardInterrupt):
                next(drawn)
        else:  # the figures not back are drawn here, the first of them before the next one is asked for
            position, figure = next(drawn)
            drawn.close()
            assert figure == figure_png(*requests[position])
    assert requests.killed
    assert "could not start" not in caplog.text
    if signum == signal.SIGKILL:
        assert "A figure worker process ended abruptly: it was killed by SIGKILL" in caplog.text


@pytest.mark.parametrize("whom", ["the report's process group", "a figure worker alone"])
def test_a_figure_worker_interrupted_by_sigint_stops_the_report_as_ctrl_c_does(tmp_path, whom):
    """Ctrl-C reaches the figure workers too, and a SIGINT may be sent to one alone: the report stops with exit 130,
    not with a worker 'killed by a signal, e.g. the out-of-memory killer' (a worker between figures died with a
    traceback and exit status 0, one drawing sent KeyboardInterrupt back as its figure's failure; the report drew
    on and exited 0)."""
    logs = tmp_path / "logs"
    _runs(logs, 2 * FIGURES_PER_WORKER)
    process = subprocess.Popen([sys.executable, "-m", "phd_lab", "report", str(logs), "-mp", "2"], cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True,
                               preexec_fn=sigint_as_in_a_terminal)
    workers = ready_pool_workers(process, 2)  # 8 figures of 0.6-1 s each left to draw
    if whom == "a figure worker alone":
        os.kill(workers[0], signal.SIGINT)
    else:
        os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "interrupted; the report was not written" in err
    assert "out-of-memory" not in err and "Traceback" not in err, err
    assert not (logs / "report.html").exists()


def test_a_negative_process_count_is_refused_before_any_run_is_read(tmp_path, capsys):
    rundir, = _runs(tmp_path / "logs", 1)
    assert main_report([str(tmp_path / "logs"), "-mp", "-2"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "-mp must be ≥ 0 (0 draws the run figures in this process); got -2" in err and "Traceback" not in err
    assert not rundir.analysis_json.exists() and not (tmp_path / "logs" / "report.html").exists()


def test_a_run_whose_probe_results_change_while_the_report_draws_is_analysed_again_not_written_stale(tmp_path, caplog):
    """Figures are drawn after every run was read, and only then is anything written: a probe job that replaces a
    run's results meanwhile gets that run analysed again, and while they keep changing nothing is written there."""
    changing, *others = _runs(tmp_path / "logs", 3)
    with probe_results_replaced_again_and_again(changing), caplog.at_level(logging.INFO):
        write_report(tmp_path / "logs", processes=0)
    assert f"Probe results of {changing.root} arrived while the report was built; analysing it again" in caplog.text
    assert not changing.analysis_json.exists() and all(rundir.analysis_json.exists() for rundir in others)


def _report_in_a_daemon(logs: str, queue) -> None:
    from phd_lab.report.cli import write_report
    try:
        queue.put(str(write_report(logs)))
    except BaseException as error:  # noqa: BLE001 - sent to the test, which names it
        queue.put(f"{type(error).__name__}: {error}")


def test_a_report_built_in_a_daemon_process_draws_its_figures_there(tmp_path):
    """A daemon process (a multiprocessing pool's worker, a Dask worker) may not start children: the figures are
    drawn in it instead of failing the report."""
    runs = _runs(tmp_path / "logs", 2 * FIGURES_PER_WORKER)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_report_in_a_daemon, args=(str(tmp_path / "logs"), queue), daemon=True)
    process.start()
    said = queue.get(timeout=240)
    process.join(timeout=60)
    assert said == str(tmp_path / "logs" / "report.html") and process.exitcode == 0
    assert all(rundir.analysis_plot.read_bytes().startswith(PNG) for rundir in runs)


def test_a_run_a_process_takes_after_the_report_read_it_gets_no_stale_analysis(tmp_path):
    """The report reads every run before it draws their figures; a run resumed meanwhile (a live process holds its
    folder now) is analysed again and, held, left alone, as one held when the report read it."""
    from phd_lab.lock import RunLock
    from phd_lab.report.collect import _analyse, _finish
    rundir, = _runs(tmp_path / "logs", 1)
    analysis = _with_figure(_analyse(rundir, None, last_step=False))
    assert analysis.entry.tables.status.active is False
    lock = RunLock(rundir.lock).acquire()  # this live process resumes the run
    try:
        entry = _finish(analysis, refresh=True)
    finally:
        lock.release()
    assert not entry.written and entry.tables.status.active is True
    assert not rundir.analysis_json.exists() and not rundir.analysis_plot.exists()
    entry = _finish(_with_figure(_analyse(rundir, None, last_step=False)), refresh=True)  # released: written
    assert entry.written and rundir.analysis_plot.read_bytes().startswith(PNG)


def test_a_run_resumed_to_its_end_after_the_report_read_it_gets_the_finished_analysis(tmp_path, caplog):
    """A training that takes the run after the report read it and lets it go before the report writes (resumed to
    its end) leaves no lock held: the report sees the run's files changed and analyses it again, so the analysis
    it read (stopped after one epoch of three) never replaces the finished run's."""
    from phd_lab import atomic
    from phd_lab.lock import RunLock
    from phd_lab.report.collect import _analyse, _finish
    from tests.analysis_fixtures import metrics_frame
    rundir = write_run(tmp_path / "logs", width=0.25, stage="running")
    analysis = _with_figure(_analyse(rundir, None, last_step=False))
    assert analysis.entry.tables.status.state == "stopped"
    with RunLock(rundir.lock):  # main.py resumes the run to its end
        atomic.write_csv(rundir.metrics_csv, metrics_frame(0.25, 3, 0.93))
    with caplog.at_level(logging.INFO):
        entry = _finish(analysis, refresh=True)
    assert entry.written and entry.tables.status.state == "finished"
    assert read_json(rundir.analysis_json)["run"]["status"]["state"] == "finished"
    assert read_json(rundir.analysis_json)["run"]["status"]["epochs_done"] == 3
    said = " ".join(caplog.text.split())
    assert f"{rundir.metrics_csv.name}, .lock of {rundir.root} changed while the report was built" in said


def _with_figure(analysis):
    analysis.entry.figure = figure_png(analysis.entry.tables, analysis.entry.summary)
    return analysis


def test_an_edit_of_any_module_the_run_figure_draws_with_draws_it_again(tmp_path, monkeypatch):
    """The run figure's key hashed run_figure.py and receptive_field.py only, though it draws with grid_figures.py
    (its tick thinning, width limit and PNG writer) and plots/__init__.py (its Agg figures) too: an edit there left
    every analysis.png as it was."""
    from phd_lab import plots
    from phd_lab.plots import grid_figures, receptive_field, run_figure
    from phd_lab.report import collect
    summary = {"run": {"folder": "x"}}
    keys = [collect.run_figure_key(summary, "")]
    for module in (grid_figures, plots, receptive_field, run_figure):
        edited = tmp_path / f"{module.__name__}.py"
        edited.write_bytes(open(module.__file__, "rb").read() + b"\n# edited\n")
        with monkeypatch.context() as patched:
            patched.setattr(module, "__file__", str(edited))
            collect._run_figure_code.cache_clear()
            keys.append(collect.run_figure_key(summary, ""))
        collect._run_figure_code.cache_clear()
    assert len(set(keys)) == 5, keys


def test_an_edit_of_the_agg_figures_draws_the_reports_own_figures_again(tmp_path, monkeypatch):
    """The keys of the report's own figures hashed their module and grid_figures.py, not plots/__init__.py, whose
    subplots they draw on: an edit there left the repetition figures of the previous page in the new one."""
    import pandas as pd

    from phd_lab import plots
    from phd_lab.plots import repetitions
    from phd_lab.report import figure_reuse
    table = pd.DataFrame({"layer": ["a"], "mean": [0.5]})
    before = figure_reuse.figure_key(repetitions, "stability", "g", table)
    edited = tmp_path / "plots_init.py"
    edited.write_bytes(open(plots.__file__, "rb").read() + b"\n# edited\n")
    monkeypatch.setattr(plots, "__file__", str(edited))
    figure_reuse._drawing_code.cache_clear()
    try:
        assert figure_reuse.figure_key(repetitions, "stability", "g", table) != before
    finally:
        monkeypatch.undo()
        figure_reuse._drawing_code.cache_clear()


_VERSIONS_AND_IMPORT = ("import sys\nfrom phd_lab.report.figure_reuse import drawing_versions\n"
                        "keyed = drawing_versions().decode().split()[1]\nimported = 'matplotlib' in sys.modules\n"
                        "import matplotlib\nprint(keyed, imported, matplotlib.__version__)")


@pytest.mark.parametrize("ahead", ["metadata of another copy", "a source tree", "an egg-info copy"])
def test_the_figure_keys_name_the_version_of_the_matplotlib_imported(tmp_path, ahead):
    """The keys named the version in the first matplotlib metadata on the path, which need not be of the matplotlib
    that is imported: a second site folder's (its package removed) or, with a source tree ahead on the path, the
    installed copy's, so that figures were not drawn again after the matplotlib drawing them changed. Where the
    metadata records the imported files (a wheel's RECORD, or the top_level.txt of a Linux distribution's
    .egg-info beside the package), matplotlib stays unimported (a rebuilt report imports none)."""
    import matplotlib
    ahead_folder = tmp_path / "ahead"
    if ahead == "a source tree":
        (ahead_folder / "matplotlib").mkdir(parents=True)
        (ahead_folder / "matplotlib" / "__init__.py").write_text("__version__ = '9.9.9.dev0'\n")
        expected = ["9.9.9.dev0", "True", "9.9.9.dev0"]
    elif ahead == "an egg-info copy":
        (ahead_folder / "matplotlib").mkdir(parents=True)
        (ahead_folder / "matplotlib" / "__init__.py").write_text("__version__ = '9.9.8'\n")
        (ahead_folder / "matplotlib-9.9.8.egg-info").mkdir()
        (ahead_folder / "matplotlib-9.9.8.egg-info" / "PKG-INFO").write_text(
            "Metadata-Version: 1.2\nName: matplotlib\nVersion: 9.9.8\n")
        (ahead_folder / "matplotlib-9.9.8.egg-info" / "top_level.txt").write_text("matplotlib\nmpl_toolkits\n")
        expected = ["9.9.8", "False", "9.9.8"]
    else:
        (ahead_folder / "matplotlib-0.1.dist-info").mkdir(parents=True)
        (ahead_folder / "matplotlib-0.1.dist-info" / "METADATA").write_text(
            "Metadata-Version: 2.1\nName: matplotlib\nVersion: 0.1\n")
        expected = [matplotlib.__version__, "False", matplotlib.__version__]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ahead_folder), str(ROOT)]), "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, "-c", _VERSIONS_AND_IMPORT], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == expected


def _left_over_listed_first(site: Path, installed: str, suffix: str) -> str:
    """A matplotlib-9.9.N.<suffix> folder made in ``site`` that the folder lists before ``installed`` (the order
    importlib.metadata finds them in), so that a key taking the first found takes it."""
    for minor in range(10):
        left_over = f"matplotlib-9.9.{minor}.{suffix}"
        (site / left_over).mkdir()
        if [name for name in os.listdir(site) if name in (left_over, installed)][0] == left_over:
            return left_over
        (site / left_over).rmdir()
    raise AssertionError(f"{site} lists {installed} before every other name")


@pytest.mark.parametrize("suffix", ["dist-info", "egg-info"])
def test_the_figure_keys_name_the_version_of_a_reinstall_beside_a_left_over_install(tmp_path, suffix):
    """``pip install --ignore-installed`` of another version leaves the replaced version's dist-info beside the
    new one, its RECORD listing the same matplotlib/__init__.py (or, over a distutils install, its .egg-info,
    whose top_level.txt names matplotlib); the first found in the folder was taken, so the keys could name the
    replaced version and figures were not drawn again. The RECORD whose hashes are those of the files imported
    is taken now (and matplotlib stays unimported)."""
    site, installed = tmp_path / "site", "matplotlib-9.9.99.dist-info"
    (site / installed).mkdir(parents=True)
    left_over = _left_over_listed_first(site, installed, suffix)
    (site / "matplotlib").mkdir()
    for name, text in ((left_over, b"__version__ = 'replaced'\n"), (installed, b"__version__ = '9.9.99'\n")):
        version = name.removeprefix("matplotlib-").removesuffix(f".{suffix}").removesuffix(".dist-info")
        metadata = f"Metadata-Version: 2.1\nName: matplotlib\nVersion: {version}\n"
        (site / name / ("PKG-INFO" if name.endswith("egg-info") else "METADATA")).write_text(metadata)
        digest = base64.urlsafe_b64encode(hashlib.sha256(text).digest()).rstrip(b"=").decode()
        record = f"matplotlib/__init__.py,sha256={digest},{len(text)}\n{name}/RECORD,,\n"
        (site / name / ("top_level.txt" if name.endswith("egg-info") else "RECORD")).write_text(
            "matplotlib\n" if name.endswith("egg-info") else record)
        (site / "matplotlib" / "__init__.py").write_bytes(text)  # the installed one's last
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, "-c", _VERSIONS_AND_IMPORT], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["9.9.99", "False", "9.9.99"]
