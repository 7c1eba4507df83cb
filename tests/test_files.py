"""adjax.files: whole files or none, with the modes the umask gives, and one-sentence errors."""

import os
import stat

import pytest

from adjax import files


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        path = files.write_json(tmp_path / "sub" / "r.json", {"a": 1})
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert path.read_text() == '{\n "a": 1\n}\n'
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temporary file left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = files.write_text(tmp_path / "a.txt", "old")

    def boom(f):
        f.write("half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        files.write_with(path, boom)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_errors_are_one_sentence(tmp_path):
    with pytest.raises(files.OutputError, match=r"/dev/null/x cannot be created"):
        files.write_text("/dev/null/x/a.txt", "x")
    with pytest.raises(files.OutputError, match="is a folder, not a file"):
        files.write_text(tmp_path, "x")
    (tmp_path / "latin1.json").write_bytes(b"caf\xe9")
    with pytest.raises(ValueError, match=r"results file .*latin1.json is not UTF-8 text"):
        files.read_text(tmp_path / "latin1.json", "results file")
    with pytest.raises(ValueError, match="cannot be read"):
        files.read_text(tmp_path / "missing.json")


def test_bucket_paths_go_through_epath(tmp_path, monkeypatch):
    # etils' mock backend stores gs:// objects as local files under the working folder.
    from etils.epath import testing

    from adjax import results
    from adjax.train import MetricsLog

    monkeypatch.chdir(tmp_path)
    record = results.make_record("eval", method="m", variant="v", dataset="d", category="c",
                                 image_size=8, metrics={"image_auroc": 0.75}, config={},
                                 env={})
    with testing.mock_epath():
        assert files.is_remote("gs://bucket/runs") and not files.is_remote("runs/gs")
        written = results.write(record, "gs://bucket/runs/a/results")
        assert str(written).startswith("gs://bucket/runs/a/results/eval-m-v-d-c-")
        files.write_text("gs://bucket/runs/b/config.json", "{}")  # not a record: skipped
        assert [r["metrics"] for r in results.read_all("gs://bucket/runs")] == [
            {"image_auroc": 0.75}]
        log = MetricsLog(files.path("gs://bucket/runs/a/metrics.jsonl"), 0)
        log.append({"step": 2, "loss": 1.0})
        log.append({"step": 4, "loss": 0.5})
        assert MetricsLog(files.path("gs://bucket/runs/a/metrics.jsonl"), 2).lines == [
            '{"step": 2, "loss": 1.0}']
