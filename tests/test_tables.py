"""Tables from results records (adjax.tables): pivots in Markdown, LaTeX and CSV, published
vs adjax side by side, publication tables rebuilt from paper records, and `adjax tables`."""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib
import subprocess
import sys

import pytest

from adjax import results, tables

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAPER_ROOT = ROOT / "results" / "paper"
DAY = "2026-01-02"


def _eval(category: str, metrics: dict, method: str = "efficientad", variant: str = "s",
          dataset: str = "mvtec_ad", steps: int = 600, created: str = f"{DAY}T03:04:05Z",
          kind: str = "eval", **extra) -> dict:
    record = results.make_record(kind, method=method, variant=variant, dataset=dataset,
                                 category=category, image_size=256, metrics=metrics,
                                 config={"train": {"steps": steps}}, env={}, **extra)
    record["created"] = created
    return record


def _paper(category: str, metrics: dict, method: str = "efficientad", variant: str = "s",
           dataset: str = "mvtec_ad", ref: str = "Doe 2024, Table 1", **notes) -> dict:
    return results.make_record("paper", method=method, variant=variant, dataset=dataset,
                               category=category, image_size=256, metrics=metrics, config={},
                               env={}, source=f"J. Doe, A Thesis, 2024, {ref}",
                               notes={"ref": ref, **notes})


def _md(text: str) -> tuple[list[str], list[list[str]]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert set(lines[1]) <= {"|", "-"}
    rows = [[c.strip() for c in line.strip()[1:-1].split(" | ")] for line in lines]
    return rows[0], rows[2:]


def _latex(text: str) -> tuple[list[str], list[list[str]]]:
    rows = [[c.strip() for c in line[:-len(r"\\")].split(" & ")]
            for line in text.splitlines() if line.endswith(r"\\")]
    return rows[0], rows[1:]


def _csv(text: str) -> tuple[list[str], list[list[str]]]:
    rows = list(csv.reader(io.StringIO(text)))
    return rows[0], rows[1:]


RUNS = [_eval("bottle", {"image_auroc": 0.9876, "pixel_auroc": 0.5, "aupro_0.3": None}),
        _eval("cable", {"image_auroc": 0.9, "pixel_auroc": 0.7, "aupro_0.3": 0.8}),
        _eval("wood", {"image_auroc": 0.95}, method="draem", variant="")]


# ------------------------------------------------------------------------------ render


@pytest.mark.parametrize("fmt,parse", [("md", _md), ("latex", _latex), ("csv", _csv)])
def test_render_formats_parse_back_to_the_same_table(fmt, parse):
    header, rows = parse(tables.render(RUNS, fmt=fmt, metric_names=["image_auroc",
                                                                    "pixel_auroc",
                                                                    "aupro_0.3"]))
    assert [h.replace(r"\_", "_") for h in header] == [
        "method", "variant", "data set", "category", "steps", "date", "image_auroc",
        "pixel_auroc", "aupro_0.3"]
    plain = [[c.replace(r"\_", "_").replace("--", "–").replace(r"\textbf{mean}", "mean")
              .replace("**mean**", "mean") for c in row] for row in rows]
    assert plain == [
        ["draem", "", "mvtec_ad", "wood", "600", DAY, "95.0", "–", "–"],
        ["efficientad", "s", "mvtec_ad", "bottle", "600", DAY, "98.8", "50.0", "–"],
        ["efficientad", "s", "mvtec_ad", "cable", "600", DAY, "90.0", "70.0", "80.0"],
        ["efficientad", "s", "mvtec_ad", "mean", "600", DAY, "94.4", "60.0", "–"],
    ]


def test_render_marks_mean_rows_per_format():
    md = tables.render(RUNS, metric_names=["image_auroc"])
    assert f"| **mean** | 600 | {DAY} | 94.4 |" in md
    assert rf"\textbf{{mean}} & 600 & {DAY} & 94.4 \\" in tables.render(
        RUNS, fmt="latex", metric_names=["image_auroc"])


def test_render_default_metrics_are_those_present_defaults_first():
    recs = [_eval("a", {"recon_mse": 0.01234, "image_auroc": 0.5, "image_f1_threshold": 3.0,
                        "image_f1_val_max": 0.4})]
    header, rows = _md(tables.render(recs))
    assert header[6:] == ["image_auroc", "recon_mse"]
    assert rows[0][6:] == ["50.0", "0.01234"]  # a reconstruction error is not a percentage
    assert tables.present_metrics(recs) == ["image_auroc", "recon_mse"]
    assert tables.main_metrics(recs) == ["image_auroc"]
    assert tables.main_metrics([_eval("a", {"recon_mse": 0.1})]) == ["recon_mse"]


def test_render_paper_uses_a_printed_mean_as_printed():
    recs = [_paper("bottle", {"image_auroc": 0.9}), _paper("cable", {"image_auroc": 0.8}),
            _paper("mean", {"image_auroc": 0.86})]  # printed, not (0.9 + 0.8) / 2
    header, rows = _md(tables.render(recs, source="paper"))
    assert header == ["method", "variant", "data set", "published", "category", "image_auroc"]
    assert [r[4:] for r in rows] == [["bottle", "90.0"], ["cable", "80.0"],
                                     ["**mean**", "86.0"]]  # no steps or date: published
    assert {r[3] for r in rows} == {"Doe 2024, Table 1"}


def test_render_leaves_out_rows_without_any_chosen_metric():
    recs = [_eval("bottle", {"image_auroc": 0.9}), _eval("cable", {"pixel_auroc": 0.7}),
            _eval("", {"image_auroc": 0.8}, method="draem")]
    _, rows = _md(tables.render(recs, metric_names=["image_auroc"]))
    # cable has no image_auroc, so neither has the mean: both rows are left out
    assert [(r[0], r[3]) for r in rows] == [("draem", "(all)"), ("efficientad", "bottle")]
    _, rows = _md(tables.render(recs, metric_names=["image_auroc", "pixel_auroc"]))
    assert [r[3:] for r in rows if r[0] == "efficientad"] == [
        ["bottle", "600", DAY, "90.0", "–"], ["cable", "600", DAY, "–", "70.0"]]
    # and no all-missing mean row


def test_render_all_puts_published_beside_adjax():
    recs = [*RUNS,
            _paper("bottle", {"image_auroc": 0.99}), _paper("mean", {"image_auroc": 0.988}),
            _paper("bottle", {"image_auroc": 0.97}, variant="m"),
            _paper("wood", {"image_auroc": 0.9}, method="vtadl", variant="")]
    text = tables.render(recs, source="all", metric_names=["image_auroc"], fmt="csv")
    header, rows = _csv(text)
    assert header == ["method", "variant", "data set", "published", "category", "steps",
                      "date", "image_auroc (paper)", "image_auroc (adjax)"]
    by = {(r[0], r[1], r[3], r[4]): r[5:] for r in rows}
    # same method, variant, data set and category: one row, both numbers
    assert by[("efficientad", "s", "Doe 2024, Table 1", "bottle")] == [
        "600", DAY, "99.0", "98.8"]
    assert by[("efficientad", "s", "Doe 2024, Table 1", "cable")] == ["600", DAY, "–", "90.0"]
    assert by[("efficientad", "s", "Doe 2024, Table 1", "mean")] == ["600", DAY, "98.8", "94.4"]
    # the publication of another variant is not paired (one of the same variant exists) ...
    assert by[("efficientad", "m", "Doe 2024, Table 1", "bottle")] == ["–", "–", "97.0", "–"]
    # ... and runs or publications without a counterpart keep their own rows
    assert by[("draem", "", "–", "wood")] == ["600", DAY, "–", "95.0"]
    assert by[("vtadl", "", "Doe 2024, Table 1", "wood")] == ["–", "–", "90.0", "–"]
    assert len(rows) == 6
    # paired_only: only the series with both sides
    _, rows = _csv(tables.render(recs, source="all", metric_names=["image_auroc"], fmt="csv",
                                 paired_only=True))
    assert [(r[0], r[1], r[4]) for r in rows] == [("efficientad", "s", "bottle"),
                                                  ("efficientad", "s", "cable"),
                                                  ("efficientad", "s", "mean")]


def test_render_all_pairs_another_variant_when_none_matches():
    recs = [_eval("bottle", {"image_auroc": 0.9}),
            _paper("bottle", {"image_auroc": 0.95}, variant="m-cdo")]
    _, rows = _csv(tables.render(recs, source="all", metric_names=["image_auroc"], fmt="csv"))
    assert rows == [["efficientad", "s", "mvtec_ad", "Doe 2024, Table 1 (m-cdo)", "bottle",
                     "600", DAY, "95.0", "90.0"]]


def test_render_tells_runs_apart_and_shows_the_newest():
    recs = [_eval("bottle", {"image_auroc": 0.5}, steps=100, created="2026-03-01T00:00:00Z"),
            _eval("bottle", {"image_auroc": 0.9}, steps=70000, created="2026-03-04T00:00:00Z"),
            _eval("bottle", {"image_auroc": 0.7}, steps=600, created="2026-03-02T00:00:00Z"),
            _eval("cable", {"image_auroc": 0.8}, steps=70000, created="2026-03-04T23:59:59Z")]
    _, rows = _md(tables.render(recs, metric_names=["image_auroc"]))
    assert [r[3:] for r in rows] == [["bottle", "70000", "2026-03-04", "90.0"],
                                     ["cable", "70000", "2026-03-04", "80.0"],
                                     ["**mean**", "70000", "2026-03-04", "85.0"]]
    recs[3]["created"] = "2026-03-05T00:00:00Z"
    recs[3]["config"] = {}  # a record without train.steps
    _, rows = _md(tables.render(recs, metric_names=["image_auroc"]))
    assert [r[3:6] for r in rows] == [["bottle", "70000", "2026-03-04"],
                                      ["cable", "–", "2026-03-05"],
                                      ["**mean**", "mixed", "mixed"]]


@pytest.mark.parametrize("names", [["pro_thesis003"], ["image_auroc", "pro_thesis003"]])
def test_render_explains_the_pro_thesis003_column_under_the_table(names):
    recs = [_paper("bottle", {"pro_thesis003": 0.9, "image_auroc": 0.8}), RUNS[0]]
    note = tables.METRIC_NOTES["pro_thesis003"]
    assert note.startswith("pro_thesis003: ") and "pixel AUROC" in note
    for source in ("paper", "all"):
        md = tables.render(recs, source=source, metric_names=names)
        assert md.splitlines()[-2:] == ["", note]
        latex = tables.render(recs, source=source, metric_names=names, fmt="latex")
        assert latex.splitlines()[-1] == (r"\par{\footnotesize "
                                          + tables.latex_escape(note) + "}")
        assert "pixel AUROC" not in tables.render(recs, source=source, metric_names=names,
                                                  fmt="csv")
    assert tables.render(recs, source="paper").splitlines()[-1] == note  # shown by default
    assert "pro_thesis003" not in tables.render(recs, source="paper",
                                                metric_names=["image_auroc"])


def test_render_rejects_unknown_format_and_source():
    with pytest.raises(ValueError, match="fmt"):
        tables.render(RUNS, fmt="html")
    with pytest.raises(ValueError, match="source"):
        tables.render(RUNS, source="published")


def test_format_metric():
    assert tables.format_metric("image_auroc", 0.97849) == "97.8"
    assert tables.format_metric("image_auroc", None) == "–"
    assert tables.format_metric("params", 19041555) == "19041555"
    assert tables.format_metric("latency_gpu_fp32_s", 0.0083) == "0.0083"
    assert tables.latex_escape("aupro_0.3 (%) –") == r"aupro\_0.3 (\%) --"


# ------------------------------------------------------------------------------ thesis tables


def _layout_records() -> list[dict]:
    """A 2 x 2 table: rows = methods, columns = one single-metric and one composite cell."""
    layout = {"table": "4.2", "caption": "Results | on things", "row_order": ["A", "B"],
              "column_order": ["Model", "AUC", "(img, px)"], "scale": "percent"}

    def cells(row):
        return [{"row": row, "column": "Model", "text": row},
                {"row": row, "column": "AUC", "metrics": ["image_ap"], "decimals": [2]},
                {"row": row, "column": "(img, px)", "metrics": ["image_auroc", "pixel_auroc"],
                 "decimals": [1, 0], "format": "({0}, {1})"}]

    return [_paper("", {"image_ap": 0.9785, "image_auroc": 1.0, "pixel_auroc": 0.97},
                   method="a", ref="Doe 2024, Table 4.2", cells=cells("A"), **layout),
            _paper("", {"image_ap": None, "image_auroc": 0.5, "pixel_auroc": 0.25},
                   method="b", ref="Doe 2024, Table 4.2", cells=cells("B"), **layout)]


@pytest.mark.parametrize("fmt,parse", [("md", _md), ("latex", _latex), ("csv", _csv)])
def test_thesis_table_reproduces_rows_columns_and_numbers(fmt, parse):
    text = tables.thesis_table(_layout_records(), "4.2", fmt=fmt)
    header, rows = parse(text)
    if fmt == "latex":
        rows = [[c.replace("--", "–") for c in r] for r in rows]
    assert header == ["Model", "AUC", "(img, px)"]
    assert rows == [["A", "97.85", "(100.0, 97)"], ["B", "–", "(50.0, 25)"]]


def test_thesis_table_caption():
    md = tables.thesis_table(_layout_records(), "4.2")
    assert md.splitlines()[0] == "Table 4.2: Results | on things"
    latex = tables.thesis_table(_layout_records(), "4.2", fmt="latex")
    assert r"\caption{Table 4.2: Results | on things}" in latex
    assert "Results" not in tables.thesis_table(_layout_records(), "4.2", fmt="csv")


def _two_publications() -> tuple[list[dict], list[dict]]:
    other = _layout_records()
    for r in other:
        r["source"] = "K. Roe, Another Thesis, 2023, Table 4.2"
        r["notes"]["ref"] = "Roe 2023, Table 4.2"
    return _layout_records() + other, other


def test_thesis_table_names_the_flag_and_words_when_two_publications_share_an_id():
    both, other = _two_publications()
    with pytest.raises(ValueError) as err:
        tables.thesis_table(both, "4.2")
    assert str(err.value) == (
        "table '4.2' is in 2 publications; pick one with --publication=Doe (Doe 2024, Table "
        "4.2) or --publication=Roe (Roe 2023, Table 4.2).")
    assert tables.thesis_table(both, "4.2", publication="Roe") == tables.thesis_table(other,
                                                                                      "4.2")
    with pytest.raises(ValueError) as err:
        tables.thesis_table(both, "9.9")
    assert str(err.value) == ("no stored publication table '9.9'; `adjax tables --list` lists "
                              "the 2 there are.")
    with pytest.raises(ValueError, match="from a publication citing 'Poe'"):
        tables.thesis_table(both, "4.2", publication="Poe")


def test_thesis_table_refuses_a_cell_stored_twice_differently():
    recs = _layout_records()
    recs[1]["notes"]["cells"][1]["row"] = "A"  # b's AUC cell claims row A too
    with pytest.raises(ValueError, match="stored twice"):
        tables.thesis_table(recs, "4.2")


def test_list_tables_gives_the_word_that_picks_each_publication():
    recs = _layout_records() + RUNS
    assert tables.list_tables(recs) == [tables.PublishedTable(
        "J. Doe, A Thesis, 2024, Doe 2024, Table 4.2", "4.2", "Results | on things", "Doe")]
    both, _ = _two_publications()
    # "Doe" and "Roe" tell the two apart; where the short reference's first word does not
    # (both cite "Mishra"), the first word of the citation that does is given
    for r in both:
        r["notes"]["ref"] = "Mishra 2021, Table 4.2"
    both[2]["source"] = both[3]["source"] = "P. Mishra, VT-ADL, 2021, Table 4.2"
    both[0]["source"] = both[1]["source"] = "P. Mishra, Deep Networks, 2021, Table 4.2"
    listed = tables.list_tables(both)
    assert [t.publication for t in listed] == ["Deep", "VT-ADL"]
    for t in listed:
        assert tables.thesis_table(both, "4.2", publication=t.publication).splitlines()[0] \
            == "Table 4.2: Results | on things"
    _, rows = _md(tables.table_list(both))
    assert rows == [["4.2", "Deep", "Results \\| on things",
                     "P. Mishra, Deep Networks, 2021, Table 4.2"],
                    ["4.2", "VT-ADL", "Results \\| on things",
                     "P. Mishra, VT-ADL, 2021, Table 4.2"]]


def test_stored_thesis_table_reproduces_its_layout():
    recs = results.read_all(PAPER_ROOT / "seed004")
    assert ("H. Khanjani, Anomaly Detection, MSc thesis, Politecnico di Torino, 2025, "
            "Table 5.6", "5.6", "Performance metrics for different methods with and without "
            "ImageNet penalty", "Khanjani") in tables.list_tables(recs)
    text = tables.thesis_table(recs, "5.6")
    assert text.splitlines()[0] == ("Table 5.6: Performance metrics for different methods "
                                    "with and without ImageNet penalty")
    header, rows = _md(text)
    assert header == ["Method", "ImageNet Penalty", "AUROC (%)", "AU-PRO (%)"]
    assert rows == [["Autoencoder", "-", "91.66", "94.801"],
                    ["Student", "-", "97.60", "73.68"],
                    ["Student + Autoencoder", "-", "97.85", "92.03"],
                    ["Student + Autoencoder", "Yes", "96.18", "80.86"],
                    ["Student", "Yes", "95.91", "63.18"]]
    _, rows = _csv(tables.thesis_table(recs, "5.7", fmt="csv"))
    assert rows == [["SMALL PDN", "84.79", "1,096,320"], ["MEDIUM PDN", "92.03", "11,615,488"]]


def test_stored_records_render_beside_an_adjax_run():
    recs = results.read_all(PAPER_ROOT / "seed004")
    run = _eval("plastic_nut", {"image_auroc": 0.95, "aupro_0.3": 0.9}, variant="m-cdo",
                dataset="real_iad")
    _, rows = _csv(tables.render([*recs, run], source="all", fmt="csv",
                                 metric_names=["image_auroc", "aupro_0.3"]))
    (row,) = [r for r in rows if r[1] == "m-cdo" and r[4] == "plastic_nut"]
    assert row[3] == "Khanjani 2025, Table 5.8"
    assert row[5:] == ["600", DAY, "97.1", "95.0", "95.5", "90.0"]


# ------------------------------------------------------------------------------ select, overview


def _mixed() -> list[dict]:
    return [*RUNS, _paper("bottle", {"image_auroc": 0.99, "pro_thesis003": 0.9}),
            _paper("3", {"image_auroc": 0.9}, method="pyramidal_ae", dataset="mnist"),
            _eval("", {}, kind="bench", bench={"images_per_s": 10.0})]


def test_select_by_source_method_and_dataset():
    recs = _mixed()
    assert tables.select(recs) == RUNS  # adjax: the eval records
    assert tables.select(recs, source="paper", method="pyramidal_ae") == [recs[4]]
    assert tables.select(recs, source="bench") == [recs[-1]]
    assert tables.select(recs, source="all", dataset="mvtec_ad",
                         metric_names=["pro_thesis003"]) == [*RUNS, recs[3]]


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(source="paper", method="pyramid_ae"),
     "there are no published records of method 'pyramid_ae' in runs (did you mean "
     "'pyramidal_ae'?); methods present: efficientad, pyramidal_ae."),
    (dict(method="efficientad", dataset="visa"),
     "there are no adjax eval records of method 'efficientad' on data set 'visa' in runs; "
     "data sets present: mvtec_ad."),
    (dict(source="all", dataset="mvtec-ad"),
     "there are no records on data set 'mvtec-ad' in runs (did you mean 'mvtec_ad'?); data "
     "sets present: mnist, mvtec_ad."),
    (dict(metric_names=["image_auroc", "pixel_aurok"]),
     "no chosen adjax eval record in runs has the metric 'pixel_aurok' (did you mean "
     "'pixel_auroc'?); metrics present: aupro_0.3, image_auroc, pixel_auroc."),
])
def test_select_says_what_exists_when_a_filter_matches_nothing(kwargs, message):
    with pytest.raises(ValueError) as err:
        tables.select(_mixed(), where="runs", **kwargs)
    assert str(err.value) == message


def test_select_of_a_source_without_records():
    with pytest.raises(ValueError) as err:
        tables.select(_mixed()[3:5], where="results/paper")
    assert str(err.value) == ("there are no adjax eval records in results/paper (kinds "
                              "present: paper).")


def test_overview_is_a_readable_selection_unless_everything_is_asked():
    recs = [*_mixed(), _eval("bottle", {"image_auroc": 0.9, "image_f1_max": 0.5},
                             method="draem", variant="")]
    table, hint = tables.overview(recs, source="all")
    header, rows = _md(table)
    assert header[7:] == [f"{m} ({side})" for m in ("image_auroc", "pixel_auroc", "aupro_0.3")
                          for side in ("paper", "adjax")]
    assert {(r[0], r[4]) for r in rows} == {("efficientad", "bottle"), ("efficientad", "cable"),
                                            ("efficientad", "**mean**")}
    assert hint == ("not shown: 2 more metrics and the series without both a published and an "
                    "adjax side; --all (or --format=csv) shows everything.")
    for kwargs in (dict(everything=True), dict(fmt="csv")):
        table, hint = tables.overview(recs, source="all", **kwargs)
        assert hint == ""
        assert {r[0] for r in (_csv if "fmt" in kwargs else _md)(table)[1]} == {
            "efficientad", "draem", "pyramidal_ae"}
        assert "pro_thesis003 (paper)" in table and "image_f1_max (adjax)" in table
    # a filter shows every series of it; named metrics are what was asked for
    table, hint = tables.overview(recs, source="all", method="draem",
                                  metric_names=["image_f1_max"])
    assert _md(table)[1] == [["draem", "", "mvtec_ad", "–", "bottle", "600", DAY, "–", "50.0"]]
    assert hint == ""
    assert tables.overview(recs, source="bench")[0] == tables.speed_table(recs)


def test_speed_table_shows_the_day_and_host():
    env = {"device_kind": "NVIDIA H200", "device_count": 1, "host": "gpu-7"}
    recs = [results.make_record("bench", method="efficientad", variant="s", dataset="random",
                                category="", image_size=256, metrics={}, config={}, env=env,
                                bench={"images_per_s": 1234.5, "batch": 64, "precision": "bf16",
                                       "params": 8_000_000, "vs_peer": "anomalib 2.7.0",
                                       "peer_ratio_train": 1.5, "peer_ratio_train_min": 1.25,
                                       "peer_ratio_train_max": 2.0, "peer_ratio_latency": 0.8}),
            _eval("", {}, kind="bench", bench={"images_per_s": 10.0})]
    recs[0]["created"] = "2026-05-06T07:08:09Z"
    header, (unknown, h200) = _md(tables.speed_table(recs))
    assert header[:8] == ["method", "variant", "source", "date", "host", "device", "precision",
                          "image size"]
    assert h200[:8] == ["efficientad", "s", "adjax", "2026-05-06", "gpu-7", "1 x NVIDIA H200",
                        "bf16", "256"]
    assert h200[header.index("img/s")] == "1234.5"
    assert h200[header.index("params (M)")] == "8.000"
    assert unknown[3:6] == [DAY, "–", "? x ?"]
    # side by side: the ratio with its spread over rounds; a record without a peer shows none
    assert h200[header.index("peer/adjax train")] == "1.50 (1.25–2.00)"
    assert h200[header.index("peer/adjax latency")] == "0.80"
    assert unknown[header.index("peer/adjax train")] == "–"


# ------------------------------------------------------------------------------ adjax tables


def _adjax_tables(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from adjax.cli import run; run()", "tables",
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})


def _error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("adjax tables: error: ")
    return line.removeprefix("adjax tables: error: ")


@pytest.fixture
def runs(tmp_path) -> pathlib.Path:
    """A folder of two work directories (config, checkpoint metadata, results/)."""
    for record in RUNS[:2]:
        workdir = tmp_path / "runs" / f"ead-{record['category']}"
        results.write(record, workdir / "results")
        (workdir / "config.json").write_text('{"method": "efficientad"}')
        (workdir / "checkpoints" / "600").mkdir(parents=True)
        (workdir / "checkpoints" / "600" / "_METADATA.json").write_text('{"tree": {}}')
    return tmp_path / "runs"


def test_cli_tables_reads_a_folder_of_work_directories(runs):
    proc = _adjax_tables(f"--results={runs}")
    assert proc.returncode == 0, proc.stderr
    assert _md(proc.stdout)[1] == [
        ["efficientad", "s", "mvtec_ad", "bottle", "600", DAY, "98.8", "50.0", "–"],
        ["efficientad", "s", "mvtec_ad", "cable", "600", DAY, "90.0", "70.0", "80.0"],
        ["efficientad", "s", "mvtec_ad", "**mean**", "600", DAY, "94.4", "60.0", "–"]]
    assert proc.stderr == ""


def test_cli_tables_bad_input_is_one_sentence(runs, tmp_path):
    assert _error(_adjax_tables(f"--results={tmp_path / 'nope'}")) == (
        f"the results folder {tmp_path / 'nope'} does not exist.")
    empty = runs / "ead-bottle" / "checkpoints"
    assert _error(_adjax_tables(f"--results={empty}")) == (
        f"no results records under {empty} (searched it and its subfolders for *.json files "
        f"whose object has 'schema' and 'kind').")
    assert _error(_adjax_tables(f"--results={runs}", "--dataset=visa")) == (
        f"there are no adjax eval records on data set 'visa' in {runs}; data sets present: "
        f"mvtec_ad.")
    assert _error(_adjax_tables(f"--results={runs}", "--update=adjax")) == (
        "Markdown file adjax is a folder, not a file.")
    bad = _eval("bottle", {"image_auroc": 0.5})
    bad["metrics"]["image_auroc"] = 7.5
    path = runs / "ead-bottle" / "results" / "bad.json"
    path.write_text(json.dumps(bad))
    assert _error(_adjax_tables(f"--results={runs}")) == (
        f"results file {path}: metrics['image_auroc'] is 7.5, but a fraction must lie in "
        f"[0, 1].")


def test_cli_tables_names_the_publication_flag_and_the_method_names_that_exist():
    seed003 = "--results=results/paper/seed003"
    message = _error(_adjax_tables(seed003, "--source=paper", "--method=pyramid_ae"))
    assert message.startswith("there are no published records of method 'pyramid_ae' in "
                              "results/paper/seed003 (did you mean 'pyramidal_ae'?); methods "
                              "present: ")
    assert ", pyramidal_ae, " in message
    assert _error(_adjax_tables("--results=results/paper", "--table=5.5")) == (
        "table '5.5' is in 2 publications; pick one with --publication=Khanjani (Khanjani 2025, "
        "Table 5.5) or --publication=Ferreira (Ferreira 2023, Table 5.5).")
    proc = _adjax_tables("--results=results/paper/seed004", "--list")
    assert proc.returncode == 0, proc.stderr
    header, rows = _md(proc.stdout)
    assert header == ["table", "--publication", "caption", "source"]
    assert [r[:2] for r in rows] == [["5.5", "Khanjani"], ["5.6", "Khanjani"],
                                     ["5.7", "Khanjani"], ["5.8", "Khanjani"]]


def test_cli_tables_update_rewrites_a_markdown_file(runs, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- adjax tables --metrics=image_auroc -->\nold\n<!-- end tables "
                      "-->\n")
    proc = _adjax_tables(f"--results={runs}", f"--update={readme}")
    assert proc.returncode == 0, proc.stderr
    assert readme.read_text() == tables.update_blocks(
        "# x\n<!-- adjax tables --metrics=image_auroc -->\n\n<!-- end tables -->\n",
        results.read_all(runs))
    assert f"| **mean** | 600 | {DAY} | 94.4 |" in readme.read_text()


@pytest.mark.parametrize("args", [[], ["--method=nosuch"]], ids=["table", "error"])
def test_cli_tables_imports_neither_jax_nor_the_trainer(runs, args):
    code = ("import sys\nfrom adjax.cli import run\ntry:\n"
            f"    run(['adjax', 'tables', '--results={runs}', *{args!r}])\n"
            "except SystemExit as exit:\n    assert exit.code == 2\n"
            "print(sorted(m for m in sys.modules if m == 'jax' or m.startswith(('jax.', "
            "'adjax.train', 'adjax.evaluate', 'adjax.data'))))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "[]"
    assert ("there are no adjax eval records of method 'nosuch'" in proc.stderr) == bool(args)


def test_seeds_of_a_matrix_show_their_mean_and_spread():
    records = []
    for seed, (tiles, disc) in enumerate([(0.90, 0.60), (0.94, 0.70), (0.92, 0.80)]):
        for category, value in (("tiles", tiles), ("disc", disc)):
            record = _eval(category, {"image_auroc": value})
            record["config"] = {"seed": seed, "train": {"steps": 600}}
            records.append(record)
    rows = {row[3]: row[-1] for row in (line.strip("|").split(" | ") for line in
            tables.render(records, metric_names=["image_auroc"]).splitlines()[2:])}
    assert rows["tiles"].strip() == "92.0 ± 2.0"
    assert rows["disc"].strip() == "70.0 ± 10.0"
    # The mean row: the spread of the seeds' means over the categories (75, 82, 86).
    assert rows["**mean**"].strip() == "81.0 ± 5.6"
