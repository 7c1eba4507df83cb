"""Tables from results records (adjax.tables): pivots in Markdown, LaTeX and CSV, published
vs adjax side by side, and publication tables rebuilt from paper records."""

from __future__ import annotations

import csv
import io
import pathlib

import pytest

from adjax import results, tables

PAPER_ROOT = pathlib.Path(__file__).resolve().parents[1] / "results" / "paper"


def _eval(category: str, metrics: dict, method: str = "efficientad", variant: str = "s",
          dataset: str = "mvtec_ad") -> dict:
    return results.make_record("eval", method=method, variant=variant, dataset=dataset,
                               category=category, image_size=256, metrics=metrics, config={},
                               env={})


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
        "method", "variant", "data set", "category", "image_auroc", "pixel_auroc", "aupro_0.3"]
    plain = [[c.replace(r"\_", "_").replace("--", "–").replace(r"\textbf{mean}", "mean")
              .replace("**mean**", "mean") for c in row] for row in rows]
    assert plain == [
        ["draem", "", "mvtec_ad", "wood", "95.0", "–", "–"],
        ["efficientad", "s", "mvtec_ad", "bottle", "98.8", "50.0", "–"],
        ["efficientad", "s", "mvtec_ad", "cable", "90.0", "70.0", "80.0"],
        ["efficientad", "s", "mvtec_ad", "mean", "94.4", "60.0", "–"],
    ]


def test_render_marks_mean_rows_per_format():
    md = tables.render(RUNS, metric_names=["image_auroc"])
    assert "| **mean** | 94.4 |" in md
    assert r"\textbf{mean} & 94.4 \\" in tables.render(RUNS, fmt="latex",
                                                       metric_names=["image_auroc"])


def test_render_default_metrics_are_those_present_defaults_first():
    recs = [_eval("a", {"recon_mse": 0.01234, "image_auroc": 0.5, "image_f1_threshold": 3.0,
                        "image_f1_val_max": 0.4})]
    header, rows = _md(tables.render(recs))
    assert header[4:] == ["image_auroc", "recon_mse"]
    assert rows[0][4:] == ["50.0", "0.01234"]  # a reconstruction error is not a percentage


def test_render_paper_uses_a_printed_mean_as_printed():
    recs = [_paper("bottle", {"image_auroc": 0.9}), _paper("cable", {"image_auroc": 0.8}),
            _paper("mean", {"image_auroc": 0.86})]  # printed, not (0.9 + 0.8) / 2
    header, rows = _md(tables.render(recs, source="paper"))
    assert header == ["method", "variant", "data set", "published", "category", "image_auroc"]
    assert [r[4:] for r in rows] == [["bottle", "90.0"], ["cable", "80.0"],
                                     ["**mean**", "86.0"]]
    assert {r[3] for r in rows} == {"Doe 2024, Table 1"}


def test_render_leaves_out_rows_without_any_chosen_metric():
    recs = [_eval("bottle", {"image_auroc": 0.9}), _eval("cable", {"pixel_auroc": 0.7}),
            _eval("", {"image_auroc": 0.8}, method="draem")]
    _, rows = _md(tables.render(recs, metric_names=["image_auroc"]))
    # cable has no image_auroc, so neither has the mean: both rows are left out
    assert [(r[0], r[3]) for r in rows] == [("draem", "(all)"), ("efficientad", "bottle")]
    _, rows = _md(tables.render(recs, metric_names=["image_auroc", "pixel_auroc"]))
    assert [r[3:] for r in rows if r[0] == "efficientad"] == [
        ["bottle", "90.0", "–"], ["cable", "–", "70.0"]]  # and no all-missing mean row


def test_render_all_puts_published_beside_adjax():
    recs = [*RUNS,
            _paper("bottle", {"image_auroc": 0.99}), _paper("mean", {"image_auroc": 0.988}),
            _paper("bottle", {"image_auroc": 0.97}, variant="m"),
            _paper("wood", {"image_auroc": 0.9}, method="vtadl", variant="")]
    text = tables.render(recs, source="all", metric_names=["image_auroc"], fmt="csv")
    header, rows = _csv(text)
    assert header == ["method", "variant", "data set", "published", "category",
                      "image_auroc (paper)", "image_auroc (adjax)"]
    by = {(r[0], r[1], r[3], r[4]): r[5:] for r in rows}
    # same method, variant, data set and category: one row, both numbers
    assert by[("efficientad", "s", "Doe 2024, Table 1", "bottle")] == ["99.0", "98.8"]
    assert by[("efficientad", "s", "Doe 2024, Table 1", "cable")] == ["–", "90.0"]
    assert by[("efficientad", "s", "Doe 2024, Table 1", "mean")] == ["98.8", "94.4"]
    # the publication of another variant is not paired (one of the same variant exists) ...
    assert by[("efficientad", "m", "Doe 2024, Table 1", "bottle")] == ["97.0", "–"]
    # ... and runs or publications without a counterpart keep their own rows
    assert by[("draem", "", "–", "wood")] == ["–", "95.0"]
    assert by[("vtadl", "", "Doe 2024, Table 1", "wood")] == ["90.0", "–"]
    assert len(rows) == 6


def test_render_all_pairs_another_variant_when_none_matches():
    recs = [_eval("bottle", {"image_auroc": 0.9}),
            _paper("bottle", {"image_auroc": 0.95}, variant="m-cdo")]
    _, rows = _csv(tables.render(recs, source="all", metric_names=["image_auroc"], fmt="csv"))
    assert rows == [["efficientad", "s", "mvtec_ad", "Doe 2024, Table 1 (m-cdo)", "bottle",
                     "95.0", "90.0"]]


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


def test_thesis_table_needs_a_source_when_two_publications_share_an_id():
    other = _layout_records()
    for r in other:
        r["source"] = "K. Roe, Another Thesis, 2023, Table 4.2"
    both = _layout_records() + other
    with pytest.raises(ValueError, match="source="):
        tables.thesis_table(both, "4.2")
    assert tables.thesis_table(both, "4.2", source="Roe") == tables.thesis_table(other, "4.2")
    with pytest.raises(ValueError, match="No stored paper table"):
        tables.thesis_table(both, "9.9")


def test_thesis_table_refuses_a_cell_stored_twice_differently():
    recs = _layout_records()
    recs[1]["notes"]["cells"][1]["row"] = "A"  # b's AUC cell claims row A too
    with pytest.raises(ValueError, match="stored twice"):
        tables.thesis_table(recs, "4.2")


def test_list_tables():
    recs = _layout_records() + RUNS
    assert tables.list_tables(recs) == [("J. Doe, A Thesis, 2024, Doe 2024, Table 4.2", "4.2",
                                         "Results | on things")]


def test_stored_thesis_table_reproduces_its_layout():
    recs = results.read_all(PAPER_ROOT / "seed004")
    assert ("H. Khanjani, Anomaly Detection, MSc thesis, Politecnico di Torino, 2025, "
            "Table 5.6", "5.6", "Performance metrics for different methods with and without "
            "ImageNet penalty") in tables.list_tables(recs)
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
    assert row[5:] == ["97.1", "95.0", "95.5", "90.0"]
