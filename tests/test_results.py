"""Tests for the results record (adjax.results) and the tables made from records
(adjax.tables)."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from adjax import results, tables
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
    assert record["created"].endswith("Z")


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


def test_read_of_corrupt_json_names_the_file(tmp_path):
    path = tmp_path / "corrupt.json"
    path.write_text('{"schema": 1, "kind": ')
    with pytest.raises(RecordError, match="corrupt.json"):
        results.read(path)


def test_read_of_missing_file_names_the_file(tmp_path):
    with pytest.raises(RecordError, match="absent.json"):
        results.read(tmp_path / "absent.json")


def test_read_all_is_recursive_and_skips_hidden_files(tmp_path):
    written = {results.write(_record(category="bottle"), tmp_path),
               results.write(_record(category="cable"), tmp_path / "a"),
               results.write(_record(category="wood"), tmp_path / "a" / "b")}
    (tmp_path / "a" / ".tmp-leftover.json").write_text("{not json")
    records = results.read_all(tmp_path)
    assert sorted(r["category"] for r in records) == ["bottle", "cable", "wood"]
    assert {results.read(p)["category"] for p in written} == {"bottle", "cable", "wood"}


def test_read_all_stops_at_a_bad_record(tmp_path):
    results.write(_record(), tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "broken.json").write_text("[]")
    with pytest.raises(RecordError, match="broken.json"):
        results.read_all(tmp_path)


# ---------------------------------------------------------------- tables


def _rows(table: str) -> list[list[str]]:
    lines = table.splitlines()
    assert set(lines[1]) <= {"|", "-"}  # the Markdown header separator
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def test_metric_table_one_row_per_record_in_percent():
    record = _record(metrics={"image_auroc": 0.98765, "pixel_auroc": 0.5})
    table = tables.metric_table([record], ["image_auroc", "pixel_auroc"])
    header = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    assert header == ["method", "data set", "category", "image_auroc", "pixel_auroc"]
    assert _rows(table) == [["efficientad:s", "mvtec_ad", "bottle", "98.8", "50.0"]]


def test_metric_table_mean_row_and_missing_metrics():
    values = {"bottle": (0.91, 0.8), "cable": (0.72, None), "wood": (0.955, 0.7)}
    records = [_record(category=c, metrics={"image_auroc": a, "pixel_auroc": p})
               for c, (a, p) in values.items()]
    rows = _rows(tables.metric_table(records[::-1], ["image_auroc", "pixel_auroc", "aupro_0.3"]))
    assert len(rows) == 4
    # Categories sorted, then the mean; a metric missing (None or absent) shows a dash.
    assert [r[2] for r in rows] == ["bottle", "cable", "wood", "**mean**"]
    assert rows[1][3:] == ["72.0", "–", "–"]
    mean = 100 * np.mean([a for a, _ in values.values()])
    assert rows[3][3] == f"{mean:.1f}"
    assert rows[3][4:] == ["–", "–"]  # a mean over a missing value is missing


def test_metric_table_groups_by_method_variant_and_dataset():
    records = [_record(category="bottle"), _record(category="bottle", variant="m"),
               _record(category="bottle", dataset="visa")]
    rows = _rows(tables.metric_table(records, ["image_auroc"]))
    # Three groups of one category each: no mean rows.
    assert [(r[0], r[1]) for r in rows] == [("efficientad:s", "mvtec_ad"),
                                            ("efficientad:m", "mvtec_ad"),
                                            ("efficientad:s", "visa")]


def test_metric_table_of_no_records_is_only_the_header():
    assert len(tables.metric_table([], ["image_auroc"]).splitlines()) == 2
