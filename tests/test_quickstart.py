"""The README's quickstart, end to end through the command line: embedded data, EfficientAD's
quick config, evaluation. It must detect the embedded anomalies (image AUROC >= 0.9)."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT


def _adjax(*args, cwd):
    run = subprocess.run([sys.executable, "-c", "from adjax.cli import run; run()", *args],
                         cwd=cwd, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


@pytest.mark.slow
def test_quickstart_detects_the_embedded_anomalies(tmp_path):
    data, work = tmp_path / "synth", tmp_path / "run"
    _adjax("data", "synth", "--out", str(data), cwd=ROOT)
    out = _adjax("train", "--config=configs/efficientad.py:quick", f"--workdir={work}",
                 f"--config.data.root={data}", f"--config.data.cache_dir={tmp_path / 'cache'}",
                 cwd=ROOT)
    assert "step 600/600" in out
    out = _adjax("eval", f"--workdir={work}", cwd=ROOT)
    assert "| efficientad:quick | synth | tiles |" in out
    (record_path,) = (work / "results").glob("eval-*.json")
    record = json.loads(record_path.read_text())
    assert record["metrics"]["image_auroc"] >= 0.9
    assert record["metrics"]["pixel_auroc"] >= 0.8
