"""The README's quickstart, end to end through the command line, as the README writes it: the
embedded data (written to the cache on first use), EfficientAD's quick config, evaluation. It
must detect the embedded anomalies (image AUROC >= 0.9)."""

import json
import os
import re
import shlex
import subprocess
import sys

import pytest
from conftest import ROOT


def _quickstart() -> list[list[str]]:
    """The adjax commands of the README's first shell block (after `pip install .`)."""
    block = re.search(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S).group(1)
    commands = [shlex.split(part) for part in block.split("&&")]
    assert commands[0][:2] == ["pip", "install"]
    return commands[1:]


@pytest.mark.slow
def test_quickstart_detects_the_embedded_anomalies(tmp_path):
    work = tmp_path / "run"
    env = {**os.environ, "ADJAX_CACHE": str(tmp_path / "cache")}
    outputs = []
    for command in _quickstart():
        assert command[0] == "adjax"
        args = [a.replace("runs/efficientad-quick", str(work)) for a in command[1:]]
        run = subprocess.run([sys.executable, "-c", "from adjax.cli import run; run()", *args],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stderr[-2000:]
        outputs.append(run.stdout)
    assert "writing the embedded data set" in outputs[0] and "step 600/600" in outputs[0]
    assert "| efficientad | quick | synth | tiles | 600 |" in outputs[-1]
    (record_path,) = (work / "results").glob("eval-*.json")
    record = json.loads(record_path.read_text())
    assert record["metrics"]["image_auroc"] >= 0.9
    assert record["metrics"]["pixel_auroc"] >= 0.9
