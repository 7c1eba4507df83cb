"""Tests for the `adjax` command line (adjax.cli), run as the user runs it: in a subprocess.

Bad input must stop with exit status 2 and one sentence on stderr that names what is at fault,
never a traceback.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = "--config=configs/efficientad.py:quick"
COMMANDS = ["data synth", "train", "eval", "predict", "config", "bench", "weights import",
            "analyze", "tables"]


def _adjax(*args: str, tmp_path: pathlib.Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "ADJAX_CACHE": str(tmp_path / "cache"), "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-c", "from adjax.cli import run; run()", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )


def _error_line(proc: subprocess.CompletedProcess) -> str:
    """The single line on stderr, after checking the run failed as bad input does."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def _usage_commands(text: str) -> list[str]:
    """The command names listed under `commands:` in the usage text."""
    body = text.split("commands:", 1)[1]
    names = []
    for line in body.splitlines():
        # A command line is indented by two spaces; its example lines are indented further.
        if line.startswith("  ") and not line.startswith("   "):
            names.append(line.strip().split("  ")[0].strip())
    return names


def test_no_arguments_prints_the_usage(tmp_path):
    proc = _adjax(tmp_path=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    usage = proc.stdout + proc.stderr
    assert "usage: adjax" in usage
    assert _usage_commands(usage) == COMMANDS


def test_tables_rebuilds_a_published_table(tmp_path):
    proc = _adjax("tables", "--table=5.5", "--publication=Khanjani", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Table 5.5: Performance metrics with varying training sizes" in proc.stdout
    assert "| 2259 | 1499 | 97.85 | 92.03 |" in proc.stdout
    proc = _adjax("tables", "--source=all", "--format=csv", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith("method,")


def test_unknown_command(tmp_path):
    proc = _adjax("frob", tmp_path=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    first, _, rest = proc.stderr.strip().partition("\n")
    assert "'frob'" in first
    assert "unknown command" in first
    # Anything after the error line is the usage, as a reminder of the valid commands.
    assert not rest.strip() or _usage_commands(rest) == COMMANDS


def test_train_with_an_unknown_config_key(tmp_path):
    proc = _adjax("train", CONFIG, f"--workdir={tmp_path / 'w'}", "--config.nosuch=1",
                  tmp_path=tmp_path)
    line = _error_line(proc)
    assert "config.nosuch" in line
    assert line.startswith("adjax train")


def test_train_with_an_unknown_variant(tmp_path):
    proc = _adjax("train", "--config=configs/efficientad.py:zz", f"--workdir={tmp_path / 'w'}",
                  tmp_path=tmp_path)
    line = _error_line(proc)
    assert "'zz'" in line
    assert "quick" in line  # says which variants exist


def test_train_with_a_missing_data_root(tmp_path):
    missing = tmp_path / "missing"
    proc = _adjax("train", CONFIG, f"--workdir={tmp_path / 'w'}",
                  f"--config.data.root={missing}", tmp_path=tmp_path)
    line = _error_line(proc)
    assert str(missing) in line
    # Nothing was trained, so no checkpoint may be left behind.
    leftovers = list((tmp_path / "w").rglob("*")) if (tmp_path / "w").exists() else []
    assert not [p for p in leftovers if p.is_file()]


def test_eval_of_a_folder_that_is_not_a_work_directory(tmp_path):
    workdir = tmp_path / "empty"
    workdir.mkdir()
    proc = _adjax("eval", f"--workdir={workdir}", tmp_path=tmp_path)
    line = _error_line(proc)
    assert "config.json" in line
    assert str(workdir) in line


def test_data_synth_writes_the_embedded_data_set(tmp_path):
    out = tmp_path / "d"
    proc = _adjax("data", "synth", "--out", str(out), "--image_size", "64", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout
    pngs = sorted((out / "tiles" / "train" / "good").glob("*.png"))
    assert pngs
    with Image.open(pngs[0]) as image:
        assert image.size == (64, 64)
    assert list((out / "tiles" / "ground_truth").rglob("*_mask.png"))


def test_unknown_nested_key_names_the_key_and_the_close_one(tmp_path):
    proc = _adjax("train", CONFIG, f"--workdir={tmp_path / 'w'}", "--config.train.stepz=3",
                  tmp_path=tmp_path)
    assert _error_line(proc) == ("adjax train: error: config.train.stepz is not a key of this "
                                 "config (did you mean config.train.steps?).")


def test_config_files_that_are_missing_or_do_not_compile(tmp_path):
    proc = _adjax("train", f"--config={tmp_path / 'none.py'}:quick", "--workdir=w",
                  tmp_path=tmp_path)
    assert _error_line(proc).endswith(f"config file {tmp_path / 'none.py'} does not exist.")
    (tmp_path / "bad.py").write_text("def get_config(:\n")
    proc = _adjax("train", f"--config={tmp_path / 'bad.py'}", "--workdir=w", tmp_path=tmp_path)
    assert "does not compile (line 1" in _error_line(proc)


def test_outputs_that_cannot_be_written(tmp_path):
    proc = _adjax("train", CONFIG, "--workdir=/dev/null/x", tmp_path=tmp_path)
    assert "work directory /dev/null/x cannot be created" in _error_line(proc)
    proc = _adjax("data", "synth", "--out=/dev/null/x", tmp_path=tmp_path)
    assert "/dev/null/x cannot be created" in _error_line(proc)


def test_config_prints_the_variants_and_every_key(tmp_path):
    proc = _adjax("config", CONFIG, "--config.train.steps=7", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "variants of configs/efficientad.py: s, m, quick" in proc.stdout
    assert "  steps: 7" in proc.stdout and "root: embedded" in proc.stdout


def test_help_texts(tmp_path):
    proc = _adjax("data", "--help", tmp_path=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: adjax data synth")
    proc = _adjax("data", "synth", "--help", tmp_path=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: adjax data synth")
    proc = _adjax("train", "--help", tmp_path=tmp_path)
    assert proc.returncode == 0
    assert "--config.KEY=VALUE" in proc.stdout and "adjax config" in proc.stdout
