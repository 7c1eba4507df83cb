"""Two processes on this machine (jax.distributed on the CPU, gloo collectives) train one run
together, the batch sharded over one device each, and end where one process with two devices
ends; only process 0 writes the run's files."""

import json
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import ROOT, load_config

from adjax.train import train

WORKER = """
import sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"localhost:{sys.argv[1]}", num_processes=2,
                           process_id=int(sys.argv[2]))
import json, ml_collections, numpy as np
from adjax.train import train
cfg = ml_collections.ConfigDict(json.loads(open(sys.argv[3]).read()))
state = train(cfg, sys.argv[4])
if jax.process_index() == 0:
    leaves = [np.asarray(a) for a in jax.tree.leaves(jax.device_get(state.params))]
    np.savez(sys.argv[5], *leaves)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_one_run_as_one_process(synth_root, tmp_path):
    cfg = load_config("efficientad", "quick")
    cfg.data.update(root=str(synth_root), cache_dir=str(tmp_path / "cache"))
    cfg.model.update(width=0.0625, out_channels=8)
    cfg.train.update(steps=2, batch_size=2, steps_per_call=2, checkpoint_every=2, log_every=2)
    (tmp_path / "config.json").write_text(cfg.to_json())
    (tmp_path / "worker.py").write_text(WORKER)
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), str(port), str(i),
                               str(tmp_path / "config.json"), str(tmp_path / "work"),
                               str(tmp_path / "params.npz")], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert "step 2/2" in outputs[0] and "step 2/2" not in outputs[1]  # process 0 speaks
    steps = [json.loads(line)["step"]
             for line in (tmp_path / "work" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2]  # written once, by process 0
    one = train(cfg, tmp_path / "one", devices=jax.devices()[:2], log=lambda _: None)
    with np.load(tmp_path / "params.npz") as two:
        for i, leaf in enumerate(jax.tree.leaves(one.params)):
            np.testing.assert_allclose(two[f"arr_{i}"], np.asarray(leaf), rtol=1e-5, atol=1e-6)
