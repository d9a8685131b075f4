"""User-facing messages say what is true of the key, file or option they name (read as text, as a user reads them)."""

from __future__ import annotations

from phd_lab.cli import main_cli
from tests.conftest import write_config


def flat(text: str) -> str:
    """Messages are wrapped at 110 columns; compare them as one line."""
    return " ".join(text.split())


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
