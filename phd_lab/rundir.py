"""RunDir: every path of one run. Constructing it is pure; ``create()`` is the only mkdir."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable

from phd_lab.atomic import read_json, temp_name
from phd_lab.config import (META_KEY, RunConfig, check_known_keys, check_run_id_value, names_another_run,
                            predates_linear_init, validate_values)
from phd_lab.config_file import check_strings, load_config_file
from phd_lab.config_paths import anchor_registry_paths, extraction_latents_dir, safe_name
from phd_lab.errors import ConfigError
from phd_lab.grid import Grid
from phd_lab.user_paths import LOOP, NAME_MAX, name_bytes, os_refusal, runs_into_a_loop, shown_path

log = logging.getLogger(__name__)

FolderListings = dict[Path, dict[str, list[str]]]
"""Parent folders' entries by the digest after their last '-': given to ``RunDir.for_run`` by the lookups of one
grid, so that each parent is listed once instead of once per grid point and digest."""


def run_parent(cfg: RunConfig) -> Path:
    """``<logs_dir>/<model>/<dataset>_<resolution>/<run_id>``: the folder that holds the run's variants."""
    logs = Path(os.path.expanduser(cfg.logs_dir))  # '~/logs', not ./~/logs
    return logs / safe_name(cfg.model) / f"{safe_name(cfg.dataset)}_{cfg.resolution}" / safe_name(cfg.run_id)


def earlier_version_runs(configs: Iterable[RunConfig]) -> list[Path]:
    """Folders where phd-lab 0.1 trained one of these configs, for those that name no ``linear_init`` and whose
    own run does not exist yet. Since 0.2 such a config draws the output layer again, which is another run
    (docs/initialisation.md): a user upgrading in the middle of an experiment must be told. One listing per
    parent folder, so a grid of thousands of points costs a scan per run id, not per point."""
    listings: dict[Path, dict[str, str]] = {}
    found = []
    for cfg in configs:
        if cfg.linear_init_named:
            continue
        parent = run_parent(cfg)
        if parent not in listings:  # variant folder names by their hash suffix
            names = os.listdir(parent) if parent.is_dir() else []
            listings[parent] = {name.rsplit("-", 1)[-1]: name for name in sorted(names)}
        by_hash = listings[parent]
        if cfg.identity_hash() in by_hash or cfg.long_identity_hash() in by_hash:
            continue
        null = replace(cfg, values={**cfg.values, "model_args": {**cfg.model_args, "linear_init": None}})
        for digest in (null.identity_hash(), *null.legacy_identity_hashes()):
            folder = parent / by_hash[digest] if digest in by_hash else None
            if folder is not None and _logged_before_linear_init(folder):
                found.append(folder)
                break
    return found


def _logged_before_linear_init(folder: Path) -> bool:
    for path in folder.glob("*_config.json"):
        try:
            meta = read_json(path).get(META_KEY)
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(meta, dict):
            return predates_linear_init(meta)
    return False


def earlier_version_advice(folders: list[Path], runs: int) -> str:
    """One paragraph for ``earlier_version_runs``' folders, said once per command."""
    return (f"{len(folders)} of the {runs} run(s) of this config were trained by phd-lab 0.1 (e.g. {folders[0]}). "
            f"Since 0.2 a config that names no linear_init draws the output layer again with torch's default, so "
            f"this version trains new runs beside them (docs/initialisation.md). To continue, extend or probe the "
            f"0.1 runs instead, write \"linear_init\": null into model_args.")


def _check_name_lengths(cfg: RunConfig, root: Path) -> None:
    """Every folder of the run and its longest file name (with the temp-file form of an atomic write)
    fit the file systems' 255 bytes per name; the error names the key the long part comes from."""
    sources = {safe_name(cfg.model): "model", f"{safe_name(cfg.dataset)}_{cfg.resolution}": "dataset",
               safe_name(cfg.run_id): "run_id"}
    for part in root.parts:
        if name_bytes(part) > NAME_MAX:
            raise ConfigError(f"{cfg.source}: the run folder name {part[:60]!r}... is {name_bytes(part)} "
                              f"bytes long, and file systems allow {NAME_MAX} per folder; shorten "
                              f"'{sources.get(part, 'logs_dir')}' (or the value it comes from).")
    longest = temp_name(f"{cfg.name}_saturation_epoch{cfg.epoch}.png")  # a plot's temp file
    if name_bytes(longest) > NAME_MAX:
        raise ConfigError(f"{cfg.source}: the run's file names start with {cfg.name[:60]!r}... "
                          f"({len(cfg.name.encode('utf-8'))} bytes, from the model, dataset, resolution, batch size "
                          f"and epochs), too long for file names of at most {NAME_MAX} bytes such as {longest[:40]!r}"
                          f"...; shorten 'dataset' or 'model' (a shorter folder path for a 'folder:' dataset).")


@dataclass(frozen=True)
class RunDir:
    root: Path
    name: str  # file prefix: the run's critical parameters
    probe_set: str = ""  # the latents set whose probe results the probe_* paths name ("": the default set)

    @classmethod
    def for_run(cls, cfg: RunConfig, listings: FolderListings | None = None) -> "RunDir":
        """The run's folder. The variant's hash suffix is what identifies it: a folder whose readable part
        was written otherwise (the keys of a nested mapping in another order, by an older version) is
        found by its hash and kept.

        The suffix is the CRC-32 of the run's identity (8 hex characters), and 32 bits let two identities share
        it (optimizer_args lr 0.7950524859260707 and 0.48695836658792335 at seed 1). A folder whose logged config
        is another run's is therefore never this run's (``_holds_another_run``), and a new run whose digest
        another run's folder has, on disk or as an earlier point of its grid (``shares_digest``), takes the long
        digest instead: the first 16 hex characters of the SHA-256 of the same identity, so that a digest still
        names one run's folder. Lookup tries both: every existing folder keeps resolving as before, and each of
        two colliding runs is found in its own.

        ``listings``, shared by the points of one grid, keeps each parent folder's listing: looked up per point, a
        parent of n variant folders was read n times (4,000 points, half trained: 30 s of CPU)."""
        parent = run_parent(cfg)
        root = parent / cfg.variant_slug()
        _check_name_lengths(cfg, root)  # before any stat(): the OS answers a too-long name with an error
        if runs_into_a_loop(parent):  # no folder is found through it, and --dry-run would call the run "new"
            raise ConfigError(f"{cfg.source}: the key 'logs_dir' is {shown_path(cfg.logs_dir)!r}, and the run's folder "
                              f"{shown_path(root)!r} in it cannot be used: {LOOP} for 'logs_dir'.")
        try:
            return cls(root=_find_folder(cfg, parent, root, listings), name=cfg.name)
        except OSError as error:  # e.g. a whole path longer than the system allows, though each name fits
            raise ConfigError(f"{cfg.source}: the key 'logs_dir' is {shown_path(cfg.logs_dir)!r}, and the run's folder "
                              f"{shown_path(root)!r} in it cannot be used: {os_refusal(root, error)} for "
                              f"'logs_dir'.") from None

    @property
    def variant(self) -> str:
        """``<run_id>/<variant folder>``: what tells this run apart from the other runs of its model and dataset in
        a figure's title (the file prefix ``name`` holds no swept argument, optimizer, seed or run id). Text to show,
        not a path: bytes the locale cannot decode (a run id '数据' under LC_ALL=C) are read as UTF-8, and bytes that
        are no UTF-8 either as '\ufffd', since matplotlib cannot draw a lone surrogate."""
        return os.fsencode(f"{self.root.parent.name}/{self.root.name}").decode("utf-8", "replace")

    def file(self, suffix: str) -> Path:
        """``<root>/<name><suffix>``, e.g. ``file('.csv')``."""
        return self.root / f"{self.name}{suffix}"

    @property
    def config(self) -> Path:
        return self.file("_config.json")

    @property
    def git_diff(self) -> Path:
        """The uncommitted changes of the phd-lab checkout the run began with (only when there were any)."""
        return self.file("_git.diff")

    @property
    def metrics_csv(self) -> Path:
        return self.file(".csv")

    @property
    def checkpoint(self) -> Path:
        return self.file(".pt")

    @property
    def previous_checkpoint(self) -> Path:
        return self.file(".previous.pt")

    @property
    def log(self) -> Path:
        return self.file(".log")

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def diverged(self) -> Path:
        """Written when training stopped on non-finite weights (their losses may still be finite, so the
        report and ``--dry-run``, which read no checkpoint, learn it here); removed by a run trained to its end."""
        return self.root / "diverged.json"

    @property
    def analysis_json(self) -> Path:  # written by the analysis step and the report
        return self.root / "analysis.json"

    @property
    def analysis_plot(self) -> Path:
        return self.root / "analysis.png"

    @property
    def receptive_field_csv(self) -> Path:
        return self.root / "receptive_field.csv"

    @property
    def receptive_field_plot(self) -> Path:
        return self.root / "receptive_field.png"

    @property
    def computational_info_json(self) -> Path:
        return self.root / "computational_info.json"

    @property
    def computational_info_csv(self) -> Path:
        return self.root / "computational_info.csv"

    def saturation_plot(self, epoch: int) -> Path:
        return self.file(f"_saturation_epoch{epoch}.png")

    @property
    def projections_csv(self) -> Path:
        return self.root / "projections.csv"

    @property
    def projections_layers_csv(self) -> Path:
        """Each projected layer's kept dimensions k per delta."""
        return self.root / "projections_layers.csv"

    @property
    def projections_reconstructions(self) -> Path:
        """A reconstruction model's example outputs per delta (§7.2, Table 3)."""
        return self.root / "projections_reconstructions.png"

    @property
    def projections_plot(self) -> Path:
        return self.root / "projections.png"

    def latents(self, latents_dir: str | None = None, folder_name: str = "latents") -> Path:
        """A latents folder (``folder_name``: ``latents`` or another set's ``latents_<set>``, see
        ``latents_sets``): inside the run folder, or mirrored under ``latents_dir``."""
        if latents_dir is None:
            return self.root / folder_name
        return Path(os.path.expanduser(latents_dir)) / self.root.relative_to(self.root.parents[3]) / folder_name

    def for_probe_set(self, probe_set: str) -> "RunDir":
        """The same run folder, its probe_* paths naming the results of latents set ``probe_set``."""
        return replace(self, probe_set=probe_set)

    # --- probe job outputs: they do not use ``name``, so the probe job can build a
    # RunDir from the manifest's run_dir alone. A latents set other than the default adds its name:
    # probe_performances_2x2_nearest.csv.
    @property
    def _probe_suffix(self) -> str:
        return f"_{self.probe_set}" if self.probe_set else ""

    @property
    def probe_csv(self) -> Path:
        return self.root / f"probe_performances{self._probe_suffix}.csv"

    @property
    def probe_plot(self) -> Path:
        return self.root / f"probe_performances{self._probe_suffix}.png"

    @property
    def probe_sets_plot(self) -> Path:
        """Probe accuracy per layer of every latents set of the run, side by side (§8.3, figures 45 and 46)."""
        return self.root / "probe_performances_by_set.png"

    @property
    def probe_settings(self) -> Path:
        return self.root / f"probe_settings{self._probe_suffix}.json"

    @property
    def probe_log(self) -> Path:
        """What every probe job did to this run (appended), with the traceback of a failure."""
        return self.root / "probe.log"

    @property
    def probe_confusion_dir(self) -> Path:
        return self.root / f"probe_confusion{self._probe_suffix}"

    def probe_confusion(self, index: int, layer: str, suffix: str) -> Path:
        """Confusion matrix of one layer's probe, ``suffix`` ``.npy`` or ``.png``."""
        return self.probe_confusion_dir / f"{index:03d}-{safe_name(layer)}{suffix}"

    def create(self) -> "RunDir":
        self.root.mkdir(parents=True, exist_ok=True)
        return self


def _find_folder(cfg: RunConfig, parent: Path, root: Path, listings: FolderListings | None = None) -> Path:
    """``RunDir.for_run``'s lookup: the folder named ``root`` (readable part and 8-character digest), else the
    one folder of ``parent`` with the run's short, long or a legacy digest, leaving out those holding another
    run; a new run takes ``root``, or the long digest where another run has the short one or may take it."""
    if root.exists():
        if not _holds_another_run(root, cfg):
            return root
        if not cfg.shares_digest:  # two points of one grid with one short digest: the other one's, as meant
            _warn_of_a_folder_taken(root, parent / cfg.long_variant_slug())
    taken = cfg.shares_digest
    if parent.is_dir():
        by_digest = _names_by_digest(parent, {} if listings is None else listings)
        short, long = cfg.identity_hashes()
        for digest in (short, long, *cfg.legacy_identity_hashes()):
            found = [parent / name for name in by_digest.get(digest, ()) if (parent / name).is_dir()]
            same = [folder for folder in found if not _holds_another_run(folder, cfg)]
            if len(same) == 1:
                return same[0]
            taken = taken or (digest == short and len(same) < len(found))
    return parent / cfg.long_variant_slug() if taken else root


_TAKEN_FOLDERS_SAID: set[Path] = set()  # said once per process: a grid and its dry run look folders up repeatedly


def _warn_of_a_folder_taken(root: Path, elsewhere: Path) -> None:
    """The folder named after this run (its readable part and digest) holds the logged config of another run:
    almost always that config edited in place and rerun (an edited value is another run), which cut the trained
    run off from its own config, which then silently trained it again from the start in another folder."""
    if root in _TAKEN_FOLDERS_SAID:
        return
    _TAKEN_FOLDERS_SAID.add(root)
    log.warning("The run folder %s is named after this run, but its logged config (*_config.json) names another "
                "run: edited in place and rerun, it now describes that run. This run is looked for in %s instead "
                "and, where it is not there, trains from the start. To continue the run trained in %s, restore "
                "the values of its logged config (an edited copy kept elsewhere runs the edited run).",
                root, elsewhere, root)


def _names_by_digest(parent: Path, listings: FolderListings) -> dict[str, list[str]]:
    """The names in ``parent`` that end in ``-<digest>``, by digest (listed once per ``listings``; a folder that
    cannot be listed holds none, as its glob found none)."""
    if parent not in listings:
        try:
            names = sorted(os.listdir(parent))
        except OSError:
            names = []
        by_digest: dict[str, list[str]] = {}
        for name in names:
            if "-" in name:
                by_digest.setdefault(name.rsplit("-", 1)[1], []).append(name)
        listings[parent] = by_digest
    return listings[parent]


def _holds_another_run(folder: Path, cfg: RunConfig) -> bool:
    """Whether ``folder`` holds a logged config of another run (``names_another_run``, the test
    ``TrainTestExecutor.write_config`` refuses a folder by), and none of this run. A logged config that cannot
    be read, or that lacks keys of this version, is not known to be another run's."""
    others = False
    for path in folder.glob("*_config.json"):
        try:
            logged = read_json(path)
            verdict = names_another_run(logged, cfg) if isinstance(logged, dict) else None
        except (OSError, TypeError, ValueError):
            continue
        if verdict is False:
            return False
        others = others or bool(verdict)
    return others


def _say_not_in_its_run_folder(raw: dict[str, Any], path: Path) -> None:
    """A logged config that lies outside the run folder it names (copied elsewhere, or edited: another
    value is another run) runs under the logs_dir it was logged with; say so, and where that is."""
    written = raw.get("logs_dir")
    log.warning("%s is a logged config (it has %r), but it does not lie in the run folder its values name, so "
                "the run goes to logs_dir %s as logged, not beside this file. An edited value makes it another "
                "run; to continue the run of a copied folder, keep the file in its place "
                "(<logs_dir>/<model>/<dataset>_<resolution>/<run_id>/<variant>/).", path, META_KEY, written)


LOGGED_CONFIG_DEPTH = 4  # <logs_dir>/<model>/<dataset>_<resolution>/<run_id>/<variant>/<name>_config.json


def lies_in_its_run_folder(raw: dict[str, Any], path: Path) -> bool | None:
    """Whether the logged config at ``path`` (resolved) lies in the run folder its own values name once
    logs_dir is the folder four levels above it; None where its values name no run (bad values)."""
    if len(path.parents) <= LOGGED_CONFIG_DEPTH:
        return False
    try:
        grid = Grid({**raw, "logs_dir": str(path.parents[LOGGED_CONFIG_DEPTH])}, str(path))
        return len(grid) == 1 and RunDir.for_run(grid[0]).config.resolve() == path
    except (ConfigError, TypeError, ValueError, KeyError):
        return None


def anchor_logged_run(raw: dict[str, Any], config_path: Path | str) -> bool:
    """Rerun a logged config read from inside its own run folder in that folder, from any working directory.

    ``<logs_dir>/<model>/<dataset>_<resolution>/<run_id>/<variant>/<name>_config.json`` names its own
    run folder once logs_dir is the folder four levels above it; then that folder becomes logs_dir.
    This covers relative folders logged by older versions, and logs trees that were moved or copied
    (to another machine, years later). A logged config that does not match the folder it lies in is
    left as written, with a warning that says where its run goes; a config without ``_meta`` is not
    a logged one. Call it before command-line overrides such as --run-id. Returns whether logs_dir was replaced.
    """
    if META_KEY not in raw or isinstance(raw.get("logs_dir"), list):
        return False
    path = Path(config_path).resolve()
    placed = lies_in_its_run_folder(raw, path)
    if placed is None:  # bad values: validation reports them next
        return False
    if not placed:
        _say_not_in_its_run_folder(raw, path)
        return False
    logs = path.parents[LOGGED_CONFIG_DEPTH]
    written = raw.get("logs_dir")
    if not isinstance(written, str) or not _names_folder(written, logs):
        log.info("%s lies in its run folder: logs_dir is %s (the config says %r)", path.name, logs, written)
    _say_latents_dir_gone(raw, path)
    raw["logs_dir"] = str(logs)
    return True


def _say_latents_dir_gone(raw: dict[str, Any], path: Path) -> None:
    """A trained run (its folder, where its logged config lies, holds a checkpoint) whose logged latents_dir is gone:
    an experiment folder renamed or moved with its logs and latents (logs_dir follows the run folder, latents_dir
    is an absolute path). The rerun would extract the latents again at the old path, making that folder anew, and
    the probe job would find none there; say so before, and how to point it at them."""
    latents = extraction_latents_dir(raw)
    if latents is None or not os.path.isabs(os.path.expanduser(latents)):
        return
    try:
        if os.path.lexists(os.path.expanduser(latents)) or not any(path.parent.glob("*.pt")):
            return
    except (TypeError, ValueError, OSError):  # a NUL in the value (validation reports it next), an unreadable folder
        return
    key = "latents_dir" if raw.get("latents_dir") == latents else "the extract step's 'latents_dir'"
    log.warning("%s: this trained run's latents_dir, %s, does not exist (an experiment folder renamed or moved since "
                "it was logged?): the extract step would extract its latents again there, making that folder anew, "
                "and the probe job looks for them there. If the latents moved with the run, set %s in this logged "
                "config to their new place: it is no part of the run's identity, so the run keeps its folder.",
                path, latents, key)


def _names_folder(written: str, folder: Path) -> bool:
    """Whether the logs_dir ``written`` names ``folder``; not where this process has no name for it (a '数据'
    under LC_ALL=C with Python's UTF-8 mode off, a lone surrogate, a NUL)."""
    try:
        return Path(os.path.expanduser(written)).resolve() == folder
    except (UnicodeEncodeError, ValueError, OSError):
        return False


def read_config_grid(config_path: Path | str, *, run_id: str | None = None, device: str | None = None) -> Grid:
    """Read a config file into its validated grid, as ``main.py`` and ``probe_main.py`` both must.

    Unknown keys, relative registry paths and logged configs are handled before the command-line
    overrides (``--run-id``, ``--device``) apply, so both commands place every run in the same folder.
    """
    where = str(config_path)
    raw = load_config_file(config_path, logged_logs_dir_later=True)
    check_known_keys(raw, where)
    anchor_registry_paths(raw, config_path)
    if not anchor_logged_run(raw, config_path):  # the logs_dir a logged config was written with is used
        check_strings({"logs_dir": raw.get("logs_dir")}, config_path)
    if run_id is not None:
        raw["run_id"] = check_run_id_value(run_id)
    if device is not None:
        raw["device"] = device
    validate_values(raw, where)
    return Grid(raw, where)
