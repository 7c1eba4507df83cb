"""Tests for the scripts in launch/, in dry runs: nothing is trained.

Each script is run with bash as the user runs it. Fake `adjax`, `srun` and `gcloud` on PATH
write a marker file if called, so a dry run that ran anything fails; bad arguments must stop
with one line on stderr before anything runs.
"""

from __future__ import annotations

import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = "configs/efficientad.py:quick"
BENCH_ARGS = "--batch_sizes=1 --repeats=2 --precision=fp32"


@pytest.fixture
def fake_bin(tmp_path) -> pathlib.Path:
    """A folder of fake adjax/srun/gcloud that each append their arguments to `called`."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for tool in ("adjax", "srun", "gcloud"):
        path = folder / tool
        path.write_text(f'#!/bin/sh\necho "{tool} $*" >> {tmp_path / "called"}\n')
        path.chmod(0o755)
    return folder


@pytest.fixture
def data_root(tmp_path) -> pathlib.Path:
    """A data root with two category folders (and a file, which is no category)."""
    root = tmp_path / "data"
    for category in ("cat_a", "cat_b"):
        (root / category / "train" / "good").mkdir(parents=True)
    (root / "license.txt").write_text("not a category")
    return root


def _bash(script: str, *args: str, fake_bin: pathlib.Path | None = None,
          **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items()
            if k not in ("DRY_RUN", "BENCH", "BENCH_ARGS", "CATEGORIES", "CONFIG", "ROOT",
                         "CATEGORY", "WORKDIR", "RESULTS", "WORKER", "SEEDS", "DEVICES",
                         "MODE", "DEVICE_VAR", "SLURM_ARRAY_TASK_ID")}
    if fake_bin is not None:
        base["PATH"] = f"{fake_bin}{os.pathsep}{base['PATH']}"
    return subprocess.run(["bash", f"launch/{script}", *args], cwd=ROOT, env={**base, **env},
                          capture_output=True, text=True, timeout=60)


def _git_status() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout


def _error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0, proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert proc.stdout == ""
    return lines[0]


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "launch").iterdir()))
def test_scripts_parse(script):
    proc = subprocess.run(["bash", "-n", f"launch/{script}"], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr


def test_matrix_dry_run_prints_every_command(tmp_path, data_root, fake_bin):
    runs = tmp_path / "runs"
    before = _git_status()
    proc = _bash("matrix.sh", CONFIG, str(data_root), str(runs), "--config.train.steps=5",
                 fake_bin=fake_bin, DRY_RUN="1", BENCH_ARGS=BENCH_ARGS)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    results = runs / "results"
    for category in ("cat_a", "cat_b"):
        assert (f"adjax train --config={CONFIG} --workdir={runs / category} "
                f"--config.data.root={data_root} --config.data.category={category} "
                f"--config.train.steps=5") in lines
        assert f"adjax eval --workdir={runs / category} --results_dir={results}" in lines
    assert not any("license" in line for line in lines)
    assert (f"adjax bench --config={CONFIG} --results_dir={results} --precision=fp32,bf16 "
            f"{BENCH_ARGS}") in lines
    tables = [line for line in lines if line.startswith("adjax tables")]
    assert f"adjax tables --results={results} --source=adjax" in tables
    # The published records beside the runs.
    assert tables[-1] == (f"adjax tables --results={results} "
                          f"--results={ROOT / 'results' / 'paper'} --source=all")
    # Nothing ran and nothing was written: not the runs folder, not the repository.
    assert not (tmp_path / "called").exists()
    assert not runs.exists()
    assert _git_status() == before


def test_matrix_usage_examples_write_under_runs():
    header = [line for line in (ROOT / "launch" / "matrix.sh").read_text().splitlines()
              if line.startswith("#") and "bash launch/matrix.sh configs/" in line]
    assert header
    for line in header:
        words = line.split("bash launch/matrix.sh ", 1)[1].split()
        assert words[2].startswith("runs/") and len(words) == 3, line  # records: RUNS/results


def test_matrix_bench_skipped_and_dry_run_flag(tmp_path, data_root, fake_bin):
    proc = _bash("matrix.sh", "--dry-run", CONFIG, str(data_root), str(tmp_path / "runs"),
                 str(tmp_path / "records"), fake_bin=fake_bin, BENCH="0",
                 CATEGORIES="cat_b")
    assert proc.returncode == 0, proc.stderr
    assert "adjax bench" not in proc.stdout and "--kind=bench" not in proc.stdout
    assert "cat_a" not in proc.stdout
    assert f"--results_dir={tmp_path / 'records'}" in proc.stdout
    assert "--source=all" in proc.stdout
    assert not (tmp_path / "called").exists()


@pytest.mark.parametrize("change, words", [
    ({"root": "missing"}, "data root"),
    ({"config": "configs/nothing.py:s"}, "configs/nothing.py"),
    ({"CATEGORIES": "cat_a cat_z"}, "cat_z"),
    ({"root": "embedded"}, "CATEGORIES"),
    ({"BENCH": "no"}, "BENCH"),
])
def test_matrix_bad_arguments_one_line(tmp_path, data_root, fake_bin, change, words):
    root = {"missing": str(tmp_path / "nowhere"), "embedded": "embedded"}.get(
        change.pop("root", ""), str(data_root))
    config = change.pop("config", CONFIG)
    proc = _bash("matrix.sh", config, root, str(tmp_path / "runs"), fake_bin=fake_bin,
                 **change)
    line = _error_line(proc)
    assert line.startswith("matrix.sh: ") and words in line
    assert not (tmp_path / "called").exists()


def test_matrix_too_few_arguments():
    assert "usage" in _error_line(_bash("matrix.sh", CONFIG))


def test_sbatch_needs_its_variables_before_srun(tmp_path, data_root, fake_bin):
    proc = _bash("slurm.sbatch", fake_bin=fake_bin, ROOT=str(data_root), CATEGORY="cat_a")
    line = _error_line(proc)
    assert "CONFIG" in line and "--export=ALL," in line
    assert not (tmp_path / "called").exists()


def test_sbatch_without_adjax_on_path(data_root):
    # What a bare `sbatch --export=CONFIG=...` did: the job's PATH lacks the environment.
    proc = _bash("slurm.sbatch", PATH="/usr/bin:/bin", CONFIG=CONFIG, ROOT=str(data_root),
                 CATEGORY="cat_a")
    assert "--export=ALL" in _error_line(proc)


def test_sbatch_dry_run(tmp_path, data_root, fake_bin):
    proc = _bash("slurm.sbatch", fake_bin=fake_bin, DRY_RUN="1", CONFIG=CONFIG,
                 ROOT=str(data_root), CATEGORY="cat_a")
    assert proc.returncode == 0, proc.stderr
    workdir = "runs/efficientad-quick-cat_a"
    assert proc.stdout.splitlines() == [
        f"srun adjax train --config={CONFIG} --workdir={workdir} "
        f"--config.data.root={data_root} --config.data.category=cat_a",
        f"adjax eval --workdir={workdir}",  # records in the work directory, not the repository
    ]
    assert not (tmp_path / "called").exists()


def test_tpu_vm_dry_run(tmp_path, fake_bin):
    setup = _bash("tpu_vm.sh", "my-tpu", "zone-a", "setup", fake_bin=fake_bin, DRY_RUN="1")
    assert setup.returncode == 0, setup.stderr
    assert "--worker=all" in setup.stdout and "jax[tpu]" in setup.stdout
    save = _bash("tpu_vm.sh", "my-tpu", "zone-a", "save", "runs", "gs://bucket/adjax",
                 fake_bin=fake_bin, DRY_RUN="1", WORKER="0")
    assert save.returncode == 0, save.stderr
    assert "--worker=0" in save.stdout and "gcloud storage rsync -r runs gs://bucket/adjax/" \
        in save.stdout
    assert not (tmp_path / "called").exists()
    assert "gs://" in _error_line(_bash("tpu_vm.sh", "my-tpu", "zone-a", "data", "/local"))


def test_matrix_keeps_every_device_busy_until_the_matrix_is_done(tmp_path, data_root):
    # A fake adjax whose train takes a moment and records the device it was given and how
    # many trainers run at once.
    folder = tmp_path / "bin"
    folder.mkdir()
    log = tmp_path / "log"
    (folder / "adjax").write_text(
        "#!/bin/bash\n"
        f'if [[ $1 == train ]]; then mkdir "{tmp_path}/running.$$"; '
        f'echo "start $CUDA_VISIBLE_DEVICES $(ls -d {tmp_path}/running.* | wc -l)" >> {log}; '
        f'sleep 0.3; rmdir "{tmp_path}/running.$$"; fi\n')
    (folder / "adjax").chmod(0o755)
    env = {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}
    proc = _bash("matrix.sh", CONFIG, str(data_root), str(tmp_path / "runs"), BENCH="0",
                 SEEDS="0 1 2", DEVICES="0 1", **env)
    assert proc.returncode == 0, proc.stderr
    starts = [line.split() for line in log.read_text().splitlines()]
    assert len(starts) == 6  # 2 categories x 3 seeds, each trained once
    assert {device for _, device, _ in starts} == {"0", "1"}
    assert max(int(n) for _, _, n in starts) == 2  # never more jobs than devices


def test_matrix_in_one_program(tmp_path, data_root, fake_bin):
    proc = _bash("matrix.sh", CONFIG, str(data_root), str(tmp_path / "runs"), "--dry-run",
                 BENCH="0", SEEDS="0 1", MODE="program", fake_bin=fake_bin)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == (f"adjax train --config={CONFIG} --workdir={tmp_path / 'runs'} "
                        f"--config.data.root={data_root} --runs=categories=cat_a,cat_b,seeds=0,1")
    assert lines[1] == (f"adjax eval --workdir={tmp_path / 'runs'} "
                        f"--results_dir={tmp_path / 'runs' / 'results'}")


def test_slurm_array_task_trains_its_category(tmp_path, data_root, fake_bin):
    env = dict(CONFIG=CONFIG, ROOT=str(data_root), CATEGORIES="cat_a cat_b",
               SLURM_ARRAY_TASK_ID="1", SEEDS="0 1", DRY_RUN="1")
    proc = _bash("slurm.sbatch", fake_bin=fake_bin, **env)
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith(f"srun adjax train --config={CONFIG} ")
    assert "--config.data.category=cat_b --runs=categories=cat_b,seeds=0,1" in first
    proc = _bash("slurm.sbatch", fake_bin=fake_bin, **{**env, "SLURM_ARRAY_TASK_ID": "2"})
    assert "array task 2 has no category" in _error_line(proc)


def test_skypilot_task_loads_with_skypilots_parser():
    sky = pytest.importorskip("sky")
    task = sky.Task.from_yaml(str(ROOT / "launch" / "skypilot.yaml"))
    assert "adjax train" in task.run and "--runs=" in task.run
    assert "adjax eval" in task.run
    assert task.envs["CONFIG"] == "configs/efficientad.py:s"
