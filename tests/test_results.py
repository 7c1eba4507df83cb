"""Tests for the results record (adjax.results) and the tables made from records
(adjax.tables)."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import pathlib
import socket
import subprocess

import pytest

from adjax import results
from adjax.results import RecordError

ENV = {"platform": "cpu", "device_kind": "cpu", "device_count": 1, "jax": "0", "flax": "0",
       "adjax": "test"}


def _record(kind: str = "eval", category: str = "bottle", metrics=None, **extra):
    fields = dict(method="efficientad", variant="s", dataset="mvtec_ad", category=category,
                  image_size=256, config={"seed": 42}, env=ENV)
    fields.update(extra)
    if metrics is None:
        metrics = {"image_auroc": 0.9876, "pixel_auroc": 0.5, "aupro_0.3": None}
    return results.make_record(kind, metrics=metrics, **fields)


def _files(folder: pathlib.Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


# ---------------------------------------------------------------- make_record / write / read


def test_make_record_fills_schema_and_creation_time():
    record = _record()
    assert record["schema"] == results.SCHEMA
    assert record["kind"] == "eval"
    assert record["source"] == "adjax"
    assert record["env"] == ENV
    created = datetime.datetime.strptime(record["created"], results.CREATED_FORMAT)
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    assert datetime.timedelta(0) <= now - created < datetime.timedelta(seconds=5)


def test_make_record_validates():
    with pytest.raises(RecordError, match="kind"):
        _record(kind="training")


def test_write_read_round_trip(tmp_path):
    record = _record(notes={"missing": {}})
    path = results.write(record, tmp_path / "out")
    assert path.parent == tmp_path / "out"
    assert path.suffix == ".json"
    assert results.read(path) == record
    assert json.loads(path.read_text()) == record


def test_write_leaves_no_temporary_file(tmp_path):
    results.write(_record(), tmp_path)
    names = _files(tmp_path)
    assert len(names) == 1
    assert not names[0].startswith(".")


def test_write_of_a_nan_metric_names_it_and_leaves_nothing(tmp_path):
    record = _record()
    record["metrics"]["image_auroc"] = float("nan")
    with pytest.raises(RecordError, match="image_auroc"):
        results.write(record, tmp_path)
    assert _files(tmp_path) == []


def test_write_failing_at_rename_removes_the_temporary_file(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(results.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        results.write(_record(), tmp_path)
    assert _files(tmp_path) == []


def test_write_validates_before_writing(tmp_path):
    record = _record()
    record["image_size"] = "256"
    with pytest.raises(RecordError, match="image_size"):
        results.write(record, tmp_path)
    assert _files(tmp_path) == []


def test_records_with_different_categories_get_different_files(tmp_path):
    a = results.write(_record(category="bottle"), tmp_path)
    b = results.write(_record(category="cable"), tmp_path)
    assert a != b
    assert len(_files(tmp_path)) == 2


# ---------------------------------------------------------------- validation on read


def _mutated(change) -> dict:
    record = _record(kind="bench", bench={"batch": 1, "images_per_s": 10.0})
    change(record)
    return record


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda r: r.pop("dataset"), "dataset"),                       # missing field
        (lambda r: r.update(image_size="256"), "image_size"),          # wrong type
        (lambda r: r.update(image_size=True), "image_size"),           # a bool is not an int
        (lambda r: r.update(metrics=[0.9]), "metrics"),                # wrong type
        (lambda r: r.update(colour="red"), "colour"),                  # unknown field
        (lambda r: r.update(kind="train"), "kind"),                    # bad kind
        (lambda r: r.pop("bench"), "bench"),                           # bench kind, no bench
        (lambda r: r.update(bench=[1]), "bench"),                      # optional, wrong type
        (lambda r: r["metrics"].update(image_auroc="0.9"), "image_auroc"),  # not a number
        (lambda r: r["metrics"].update(image_auroc=True), "image_auroc"),   # bool, not a number
        (lambda r: r.update(schema=2), "schema"),
    ],
    ids=["missing", "type", "bool", "metrics-type", "unknown", "kind", "no-bench",
         "bench-type", "metric-str", "metric-bool", "schema"],
)
def test_read_rejects_bad_records_naming_file_and_field(tmp_path, change, field):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_mutated(change)))
    with pytest.raises(RecordError) as err:
        results.read(path)
    assert str(path) in str(err.value)
    assert field in str(err.value)


def test_valid_bench_record_reads(tmp_path):
    path = tmp_path / "good.json"
    path.write_text(json.dumps(_mutated(lambda r: None)))
    assert results.read(path)["bench"]["batch"] == 1


def test_validate_rejects_a_non_object():
    with pytest.raises(RecordError, match="JSON object"):
        results.validate([1, 2])


@pytest.mark.parametrize(
    ("metric", "value", "accepted"),
    [("image_auroc", 7.5, False), ("aupro_0.3", -0.01, False), ("image_auroc", 1, True),
     ("pixel_ap", 0.0, True), ("params", 19041555, True), ("recon_mse", 2.5, True),
     ("latency_gpu_fp32_s", 3.0, True), ("image_threshold_val_quantile", 12.0, True)],
)
def test_validate_keeps_fractions_in_the_unit_interval(metric, value, accepted):
    record = _record()
    record["metrics"] = {metric: value}
    if accepted:
        results.validate(record, where="results file r.json")
        return
    with pytest.raises(RecordError) as err:
        results.validate(record, where="results file r.json")
    assert str(err.value) == (f"results file r.json: metrics[{metric!r}] is {value}, but a "
                              f"fraction must lie in [0, 1].")


def test_is_fraction():
    assert [results.is_fraction(n) for n in (
        "image_auroc", "pro_thesis003", "image_f1_val_quantile", "image_f1_threshold",
        "image_threshold_val_quantile", "params", "train_s_per_100_epochs", "recon_ssim",
        "latency_ms_b1")] == [True, True, True, False, False, False, False, False, False]


@pytest.mark.parametrize("created", ["yesterday", "2026-01-01", "2026-01-01T00:00:00",
                                     "2026-01-01 00:00:00Z", "2026-13-01T00:00:00Z",
                                     "2026-01-01T25:00:00Z", "2026-01-01T00:00:00+01:00"])
def test_validate_refuses_a_creation_time_that_is_not_iso_utc(created):
    record = _record()
    record["created"] = created
    with pytest.raises(RecordError) as err:
        results.validate(record, where="results file r.json")
    assert str(err.value) == ("results file r.json: field 'created' must be an ISO-8601 UTC "
                              f"time such as 2026-01-01T00:00:00Z, got {created!r}.")


def test_read_of_corrupt_json_names_the_file(tmp_path):
    path = tmp_path / "corrupt.json"
    path.write_text('{"schema": 1, "kind": ')
    with pytest.raises(RecordError) as err:
        results.read(path)
    assert str(err.value) == (f"results file {path} is not JSON (Expecting value at line 1, "
                              f"column 23).")


def test_read_of_a_file_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('{"source": "Sko\u010daj"}'.encode("utf-16"))
    with pytest.raises(RecordError) as err:
        results.read(path)
    assert str(err.value) == f"results file {path} is not UTF-8 text (byte 0)."


def test_read_of_missing_file_names_the_file(tmp_path):
    with pytest.raises(RecordError, match="absent.json"):
        results.read(tmp_path / "absent.json")


def test_read_all_is_recursive_and_skips_hidden_files(tmp_path):
    written = {results.write(_record(category="bottle"), tmp_path),
               results.write(_record(category="cable"), tmp_path / "a"),
               results.write(_record(category="wood"), tmp_path / "a" / "b")}
    (tmp_path / "a" / ".tmp-leftover.json").write_text("{not json")
    results.write(_record(category="hidden"), tmp_path / ".cache")
    records = results.read_all(tmp_path)
    assert sorted(r["category"] for r in records) == ["bottle", "cable", "wood"]
    assert {results.read(p)["category"] for p in written} == {"bottle", "cable", "wood"}


def test_read_all_finds_the_records_of_work_directories(tmp_path):
    runs = tmp_path / "runs"
    for name in ("ead-bottle", "ead-cable"):
        workdir = runs / name
        results.write(_record(category=name.split("-")[1]), workdir / "results")
        (workdir / "config.json").write_text(json.dumps({"method": "efficientad", "seed": 0}))
        (workdir / "checkpoints" / "600").mkdir(parents=True)
        (workdir / "checkpoints" / "600" / "_METADATA.json").write_text('{"tree": {}}')
        (workdir / "checkpoints" / "600" / "sharding.json").write_text("[1, 2]")
    assert sorted(r["category"] for r in results.read_all(runs)) == ["bottle", "cable"]
    assert results.read_all(runs / "ead-bottle" / "checkpoints") == []


def test_read_all_stops_at_a_bad_record_or_a_file_that_is_not_json(tmp_path):
    results.write(_record(), tmp_path)
    (tmp_path / "sub").mkdir()
    bad = tmp_path / "sub" / "broken.json"
    bad.write_text(json.dumps({"schema": 1, "kind": "eval"}))  # claims to be a record
    with pytest.raises(RecordError) as err:
        results.read_all(tmp_path)
    assert str(err.value) == f"results file {bad} lacks the field 'method'."
    bad.write_text("{")
    with pytest.raises(RecordError, match=f"results file {bad} is not JSON"):
        results.read_all(tmp_path)


def test_read_all_of_a_missing_folder_or_a_file_is_one_sentence(tmp_path):
    with pytest.raises(RecordError) as err:
        results.read_all(tmp_path / "nope")
    assert str(err.value) == f"the results folder {tmp_path / 'nope'} does not exist."
    path = results.write(_record(), tmp_path)
    with pytest.raises(RecordError) as err:
        results.read_all(path)
    assert str(err.value) == f"the results folder {path} is a file, not a folder."


# ---------------------------------------------------------------- environment


def test_environment_names_host_cpu_load_and_version(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Example CPU @ 2.00GHz\nflags\t: fpu\n")
    monkeypatch.setattr(results, "_CPUINFO", cpuinfo)
    monkeypatch.setattr(results.os, "getloadavg", lambda: (1.5, 0.25, 3.0))
    env = results.environment()
    assert env["host"] == socket.gethostname()
    assert env["cpu"] == "Example CPU @ 2.00GHz"
    assert env["load"] == [1.5, 0.25, 3.0]
    assert env["adjax"] == results.adjax_version()
    assert env["platform"] == "cpu"
    monkeypatch.setattr(results, "_CPUINFO", tmp_path / "absent")
    monkeypatch.setattr(results.platform, "processor", lambda: "x86_64")
    assert results.cpu_model() == "x86_64"


def test_adjax_version_carries_the_checkout_commit(tmp_path, monkeypatch):
    version = importlib.metadata.version("adjax")
    # The repository's own adjax/ folder, whether the tests import it from there (editable
    # install) or from site-packages (CI installs a wheel, possibly into a venv inside the clone).
    checkout = pathlib.Path(__file__).resolve().parents[1]
    if not (checkout / ".git").exists():
        pytest.skip("the tests do not run from a git checkout")
    monkeypatch.setattr(results, "_PACKAGE", checkout / "adjax")

    def git(*args):
        return subprocess.run(["git", *args], cwd=checkout, capture_output=True, text=True,
                              check=True).stdout.strip()

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    assert results.adjax_version() == f"{version}+g{commit}" + (".dirty" if dirty else "")
    assert results.git_commit() == commit + ("+dirty" if dirty else "")
    # imported from a copy that is no git checkout's own adjax/ folder: the version alone
    monkeypatch.setattr(results, "_PACKAGE", tmp_path / "adjax")
    (tmp_path / "adjax").mkdir()
    assert results.adjax_version() == version
    assert results.git_commit() == "unknown"


# ---------------------------------------------------------------- tables


def _rows(table: str) -> list[list[str]]:
    lines = table.splitlines()
    assert set(lines[1]) <= {"|", "-"}  # the Markdown header separator
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


