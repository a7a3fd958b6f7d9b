"""The front door: one command-line convention for every entry point, and a redraw that loads no training code."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import synthetic_workdir as synthetic

REPO = Path(__file__).resolve().parents[1]


def _command(*args, cwd=REPO):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("module", ["ncjax.main", "ncjax.evaluate", "ncjax.sweep", "ncjax.continual"])
def test_every_entry_point_answers_help(module):
    result = _command("-m", module, "--help")
    assert result.returncode == 0, result.stderr
    assert "--workdir" in result.stdout


def test_help_lists_the_installed_configs_and_their_presets():
    text = _command("-m", "ncjax.main", "--help").stdout
    for name in ("vit_depth", "shallow_snr", "continual"):  # each config's first group of presets, in order
        presets = importlib.import_module(f"configs.{name}").PRESETS
        assert f"{name}.py: " + "|".join(next(iter(presets.values()))) in text


def test_redraw_takes_workdir_with_a_space_and_loads_no_training_code(tmp_path):
    """``python -m ncjax.sweep --workdir PATH``: the tables, figures and the end-of-run report from the files
    alone (issue 20: neither flax nor optax is imported)."""
    workdir = tmp_path / "w"
    synthetic.write(workdir)
    code = ("import runpy, sys\n"
            "sys.argv = ['ncjax.sweep', '--workdir', sys.argv[1]]\n"
            "try:\n    runpy.run_module('ncjax.sweep', run_name='__main__')\n"
            "except SystemExit as exit:\n    status = exit.code\n"
            "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'flax', 'optax'})\n"
            "print('loaded', loaded)\nsys.exit(status)\n")
    result = _command("-c", code, str(workdir))
    assert result.returncode == 0, result.stderr
    assert "loaded []" in result.stdout
    assert (workdir / "summary.csv").exists() and "runs:" in result.stderr


def test_a_missing_or_foreign_workdir_is_one_line(tmp_path):
    for module in ("ncjax.evaluate", "ncjax.sweep"):
        result = _command("-m", module, "--workdir", str(tmp_path / "nothing"))
        assert result.returncode == 2
        assert result.stderr.strip().count("\n") == 0 and "config.json does not exist" in result.stderr
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("[1, 2]")
    result = _command("-m", "ncjax.evaluate", f"--workdir={tmp_path / 'bad'}")
    assert result.returncode == 2 and "not a config" in result.stderr


def test_a_packaged_config_resolves_with_a_space_from_any_folder(tmp_path):
    """``--config vit_depth.py:quick`` (absl's space form) finds the installed config outside a checkout;
    a bad value then fails before anything is written, which shows the config was loaded."""
    result = _command("-m", "ncjax.main", "--config", "vit_depth.py:quick", "--config.train.learning_rate=inf",
                      "--workdir", str(tmp_path / "w"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "train.learning_rate=inf must be a finite number > 0" in result.stderr
    assert not (tmp_path / "w").exists()
