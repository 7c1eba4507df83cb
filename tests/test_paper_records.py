"""The published numbers stored under results/paper/ (kind: paper records).

Every seed-thesis table is checked cell by cell against a Markdown transcription of the printed
table (tests/data/paper_tables/<folder>-<table>.md): the stored values, the number of cells, and
the table rebuilt by `adjax.tables.thesis_table`. The reference papers' numbers are checked
against the lines that list them (tests/data/paper_tables/papers.md).
"""

from __future__ import annotations

import pathlib
import re
from decimal import Decimal

import pytest

from adjax import results, tables

ROOT = pathlib.Path(__file__).resolve().parents[1] / "results" / "paper"
GOLDEN = pathlib.Path(__file__).resolve().parent / "data" / "paper_tables"

_T71_TEXT = {"Multi-stage training", "Pre-trained network", "Multiple Loss function",
             "Ground truth required", "Supervised/semi-supervised", "imbalanced dataset training",
             "Min.number of Image Data needed", "Attention module", "work on Patches"}
# (folder, table id, leading text columns, text-only rows)
SEED_TABLES = [
    ("seed000", "4.1", 1, ()),
    ("seed000", "4.2", 1, ()),
    ("seed001", "5.1", 3, ()),
    ("seed001", "5.2", 3, ()),
    ("seed001", "5.3", 3, ()),
    ("seed001", "5.4", 1, ()),
    ("seed001", "5.5", 2, ()),
    ("seed001", "5.6", 1, ()),
    *[("seed002", str(t), 1, ()) for t in range(1, 11)],
    ("seed003", "3.3", 1, ()),
    ("seed003", "3.5", 1, ()),
    ("seed003", "3.6", 1, ()),
    ("seed003", "3.7", 2, ()),
    ("seed003", "4.4", 1, ()),
    ("seed003", "4.5", 1, ()),
    ("seed003", "4.6", 1, ()),
    ("seed003", "5.2", 2, ()),
    ("seed003", "5.3", 1, ()),
    ("seed003", "5.4", 1, ()),
    ("seed003", "6.2", 1, ()),
    ("seed003", "6.3", 1, ()),
    ("seed003", "6.4", 1, ()),
    ("seed003", "7.1", 1, _T71_TEXT),
    ("seed003", "7.2", 1, {"Global AD/Anomaly Localization"}),
    ("seed003", "7.3", 1, ()),
    ("seed003", "7.4", 1, ()),
    ("seed004", "5.5", 2, ()),
    ("seed004", "5.6", 2, ()),
    ("seed004", "5.7", 1, ()),
    ("seed004", "5.8", 1, ()),
]
_IDS = [f"{f}-T{t}" for f, t, *_ in SEED_TABLES]
_NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?![\d.])|\d+(?:\.\d+)?")


def _paths() -> list[pathlib.Path]:
    return sorted(p for p in ROOT.rglob("*.json") if not p.name.startswith("."))


@pytest.fixture(scope="module")
def by_folder() -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for path in _paths():
        out.setdefault(path.parent.name, []).append(results.read(path))
    return out


def _markdown_tables(text: str) -> list[list[list[str]]]:
    """Every Markdown table of a text, as rows of stripped cells (separator rows included)."""
    found, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append([c.strip() for c in line.strip()[1:-1].split("|")])
        elif block:
            found.append(block)
            block = []
    return found


def _seed_table(folder: str, table_id: str) -> tuple[list[str], list[list[str]]]:
    """The printed table's transcription: header and body cells."""
    path = GOLDEN / f"{folder}-{table_id}.md"
    (block,) = _markdown_tables(path.read_text(encoding="utf-8"))
    header, body = block[0], block[2:]
    for row in body:  # "49.95 (all ten classes)" stands for ten printed cells
        spread = [c for c in row if "(all ten classes)" in c]
        if spread:
            row[:] = [spread[0] if (c == "" or c == spread[0]) else c for c in row]
    return header, body


def _numbers(cell: str) -> list[str]:
    """The printed numbers of a cell, without the transcription's annotations (bold, footnote
    marks, '??', remarks in parentheses or brackets that contain words)."""
    text = re.sub(r"\*\*|[‡†§¶]|\?\?", "", cell)
    text = re.sub(r"\([^()]*[A-Za-z][^()]*\)|\[[^\]]*\]", "", text)
    text = re.sub(r"\b0\.0\.(\d)", r"0.\1", text)  # the thesis prints "0.0.997" for 0.997
    return [t.replace(",", "") for t in _NUMBER.findall(text)]


def _table_records(by_folder, folder: str, table_id: str) -> list[dict]:
    recs = [r for r in by_folder[folder] if r["notes"]["table"] == table_id]
    assert recs, (folder, table_id)
    return recs


# ------------------------------------------------------------------------------ every file


def test_every_file_is_a_valid_paper_record():
    paths = _paths()
    assert len(paths) == 1321
    for path in paths:
        record = results.read(path)
        assert record["kind"] == "paper", path
        assert record["env"] == {} and record["config"] == {}, path
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT00:00:00Z", record["created"]), path
        assert record["source"] and record["source"] != "adjax", path
        notes = record["notes"]
        for key in ("ref", "table", "caption", "row", "column", "row_order", "column_order",
                    "scale", "cells", "oddities"):
            assert key in notes, (path, key)
        assert isinstance(notes["oddities"], list)
        if record["image_size"] == 0:
            assert "image_size_note" in notes, path
        assert record["method"] == record["method"].lower() and " " not in record["method"]


def test_file_names_follow_table_method_variant_dataset_category():
    for path in _paths():
        r = results.read(path)
        parts = [r["notes"]["table"], r["method"], r["variant"], r["dataset"], r["category"]]
        assert path.name == "-".join(p for p in parts if p) + ".json", path


def test_metric_cells_match_metrics():
    for path in _paths():
        r = results.read(path)
        in_cells = [m for c in r["notes"]["cells"] for m in c.get("metrics", [])]
        assert sorted(in_cells) == sorted(r["metrics"]), path


def test_no_record_points_at_files_outside_the_repository():
    for path in _paths():
        text = path.read_text(encoding="utf-8")
        for outside in ("/work/", "models.md", "DESIGN.md", "seed notes", "reference notes"):
            assert outside not in text, (path, outside)


def test_every_transcription_is_checked():
    assert sorted(p.name for p in GOLDEN.glob("seed*.md")) == sorted(
        f"{folder}-{table_id}.md" for folder, table_id, *_ in SEED_TABLES)


def test_listed_publication_words_rebuild_their_table(by_folder):
    records = [r for recs in by_folder.values() for r in recs]
    listed = tables.list_tables(records)
    assert len(listed) == 50
    for t in listed:
        text = tables.thesis_table(records, t.table, publication=t.publication)
        assert text.splitlines()[0] == f"Table {t.table}: {t.caption}", t


def test_no_duplicate_records_or_cells():
    seen, cells = set(), set()
    for path in _paths():
        r = results.read(path)
        key = (r["source"], r["method"], r["variant"], r["dataset"], r["category"])
        assert key not in seen, (path, key)
        seen.add(key)
        for c in r["notes"]["cells"]:
            if "metrics" in c:
                cell = (r["source"], c["row"], c["column"])
                assert cell not in cells, (path, cell)
                cells.add(cell)


def test_counts_per_publication(by_folder):
    counts = {folder: len(recs) for folder, recs in by_folder.items()}
    assert counts == {"seed000": 21, "seed001": 27, "seed002": 80, "seed003": 1118,
                      "seed004": 15, "efficientad_2024": 8, "nelson1425_efficientad": 6,
                      "anomalib_efficientad": 2, "draem_2021": 1, "vitjanz_draem": 1,
                      "ddad_2023": 2, "arimousa_ddad": 2, "vtadl_2021": 38}


# ------------------------------------------------------------------------------ seed tables


@pytest.mark.parametrize("folder,table_id,n_text,text_rows", SEED_TABLES, ids=_IDS)
def test_seed_table_cells_equal_the_transcription(by_folder, folder, table_id, n_text,
                                                  text_rows):
    header, body = _seed_table(folder, table_id)
    recs = _table_records(by_folder, folder, table_id)
    notes = recs[0]["notes"]
    assert len(notes["column_order"]) == len(header)
    assert len(notes["row_order"]) == len(body)
    assert recs[0]["source"].endswith(f", Table {table_id}")

    # every stored value sits in its printed cell, converted exactly
    stored: dict[tuple[int, int], list] = {}
    for r in recs:
        assert r["notes"]["row_order"] == notes["row_order"]
        for cell in r["notes"]["cells"]:
            if "metrics" not in cell:
                continue
            pos = (notes["row_order"].index(cell["row"]),
                   notes["column_order"].index(cell["column"]))
            percent = notes["scale"] == "percent" and not cell.get("raw")
            stored[pos] = [(r["metrics"][m], percent) for m in cell["metrics"]]

    printed_cells = 0
    for i, row in enumerate(body):
        if row[0] in text_rows:
            continue
        for j, raw in enumerate(row[n_text:], start=n_text):
            numbers = _numbers(raw)
            if raw.strip() in ("-", "–"):
                assert [value for value, _ in stored[(i, j)]] == [None]
                printed_cells += 1
                continue
            if not numbers:
                continue
            printed_cells += 1
            values = stored[(i, j)]
            assert len(values) == len(numbers), (i, j, raw)
            for (value, percent), text in zip(values, numbers, strict=True):
                expected = Decimal(text) / 100 if percent else Decimal(text)
                assert value == float(expected), (table_id, i, j, raw, value)
    assert printed_cells == len(stored)


@pytest.mark.parametrize("folder,table_id,n_text,text_rows", SEED_TABLES, ids=_IDS)
def test_thesis_table_reproduces_the_seed_table(by_folder, folder, table_id, n_text, text_rows):
    header, body = _seed_table(folder, table_id)
    recs = _table_records(by_folder, folder, table_id)
    text = tables.thesis_table(recs, table_id)
    lines = text.splitlines()
    assert lines[0] == f"Table {table_id}: {recs[0]['notes']['caption']}"
    grid = [[c.strip() for c in line.strip()[1:-1].split(" | ")] for line in lines
            if line.startswith("|")]
    assert grid[0] == recs[0]["notes"]["column_order"]
    assert len(grid) - 2 == len(body)
    for seed_row, row in zip(body, grid[2:], strict=True):
        assert len(row) == len(seed_row)
        for j, (seed_cell, cell) in enumerate(zip(seed_row, row, strict=True)):
            if j >= n_text and seed_cell.strip() in ("-", "–"):
                assert cell == "–"
            else:
                assert _numbers(cell) == _numbers(seed_cell), (table_id, seed_cell, cell)


def test_spot_checks_read_directly(by_folder):
    def value(folder, table_id, method, variant, dataset, category, metric):
        (r,) = [r for r in by_folder[folder] if r["notes"]["table"] == table_id
                and (r["method"], r["variant"], r["dataset"], r["category"])
                == (method, variant, dataset, category)]
        return r["metrics"][metric]

    assert value("seed004", "5.5", "efficientad", "m-train2259", "real_iad", "plastic_nut",
                 "image_auroc") == 0.9785
    assert value("seed004", "5.6", "efficientad", "m-autoencoder_only", "real_iad",
                 "plastic_nut", "aupro_0.3") == 0.94801
    assert value("seed000", "4.1", "ganomaly", "anomalib", "cars_damage", "",
                 "pixel_auroc") is None
    assert value("seed002", "3", "draem", "pre+m+r", "line_clearance", "B",
                 "image_auroc") == 0.737
    assert value("seed003", "4.5", "deep_svdd", "", "mnist", "8", "image_auroc") == 0.939
    assert value("seed003", "7.1", "vtadl", "", "", "", "params") == 19041555
    assert value("seed003", "6.3", "vtadl", "", "mvtec_ad", "mean", "pro_thesis003") == 0.807


# ------------------------------------------------------------------------------ papers


def _only(by_folder, folder: str, table: str | None = None, **fields) -> dict:
    """The metrics of the one record of `folder` (and `table`) with these fields."""
    (r,) = [r for r in by_folder[folder] if all(r[k] == v for k, v in fields.items())
            and table in (None, r["notes"]["table"])]
    return r["metrics"]


def _percent(text: str) -> float:
    return float(Decimal(text) / 100)


def test_reference_paper_numbers_match_their_listing(by_folder):
    text = (GOLDEN / "papers.md").read_text(encoding="utf-8")
    efficientad, draem = _markdown_tables(text)

    # EfficientAD: image AUROC on MVTec AD, VisA and MVTec LOCO per model
    rows = {row[0]: row[1:4] for row in efficientad[2:]}
    datasets = ("mvtec_ad", "visa", "mvtec_loco")
    for variant, name in (("m", "EfficientAD-M"), ("s", "EfficientAD-S")):
        for dataset, printed in zip(datasets, rows[f"{name} (paper)"], strict=True):
            assert _only(by_folder, "efficientad_2024", "headline", variant=variant,
                         dataset=dataset) == {"image_auroc": _percent(printed)}
        nelson = rows[f"{name} (nelson run)"]
        json_value = re.search(r"json: ([\d.]+)", nelson[0]).group(1)
        assert _only(by_folder, "nelson1425_efficientad", variant=variant,
                     dataset="mvtec_ad")["image_auroc"] == _percent(json_value)
        for dataset, printed in zip(datasets[1:], nelson[1:], strict=True):
            assert _only(by_folder, "nelson1425_efficientad", variant=variant,
                         dataset=dataset) == {"image_auroc": _percent(printed)}
    for variant, size in (("m", "medium"), ("s", "small")):
        aupro = re.search(rf"mvtec_ad_{size}.json` \(mean AU-PRO ([\d.]+)\)", text).group(1)
        assert _only(by_folder, "nelson1425_efficientad", variant=variant,
                     dataset="mvtec_ad")["aupro_0.3"] == float(aupro)
    anomalib_s, anomalib_m = rows["EfficientAD-S / -M (anomalib, seed 42)"][0].split(" / ")
    assert _only(by_folder, "anomalib_efficientad", variant="s") == {
        "image_auroc": _percent(anomalib_s)}
    assert _only(by_folder, "anomalib_efficientad", variant="m") == {
        "image_auroc": _percent(anomalib_m)}
    assert "EfficientAD-M on MVTec AD as Detection AUROC 99.1, AUPRO 93.5, FPS 269" in text
    assert _only(by_folder, "efficientad_2024", "pwc", variant="m") == {
        "image_auroc": 0.991, "aupro_0.3": 0.935, "images_per_s": 269.0}
    assert "EfficientAD (early stopping) as 99.8 / AUPRO 96.6" in text
    assert _only(by_folder, "efficientad_2024", variant="early_stopping") == {
        "image_auroc": 0.998, "aupro_0.3": 0.966}

    # DRAEM: the paper (via Papers with Code) and the released checkpoints
    rows = {row[0]: [_percent(v) for v in row[1:4]] for row in draem[2:]}
    names = ("image_auroc", "pixel_auroc", "pixel_ap")
    assert _only(by_folder, "draem_2021") == dict(zip(names, rows["paper"], strict=True))
    assert _only(by_folder, "vitjanz_draem") == dict(
        zip(names, rows["released checkpoints"], strict=True))

    # DDAD: the abstract and the README
    assert "Abstract: 99.8% (MVTec) and 98.9% (VisA) image AUROC." in text
    assert _only(by_folder, "ddad_2023", dataset="mvtec_ad") == {"image_auroc": 0.998}
    assert _only(by_folder, "ddad_2023", dataset="visa") == {"image_auroc": 0.989}
    assert "MVTec: image 99.8, pixel AUROC 98.1, PRO 92.3." in text
    assert _only(by_folder, "arimousa_ddad", dataset="mvtec_ad") == {
        "image_auroc": 0.998, "pixel_auroc": 0.981, "aupro_0.3": 0.923}
    assert "VisA: image 98.9, pixel 97.6, PRO 92.7." in text
    assert _only(by_folder, "arimousa_ddad", dataset="visa") == {
        "image_auroc": 0.989, "pixel_auroc": 0.976, "aupro_0.3": 0.927}

    # VT-ADL, Table III: "PRO" per category, and the baselines' means
    vt = {r["category"]: r["metrics"]["pro_thesis003"] for r in by_folder["vtadl_2021"]
          if r["notes"]["table"] == "III" and r["method"] == "vtadl"}
    section = text.split("per category (VT-ADL):**")[1].split("**mean")[0]
    listed = dict(re.findall(r"([a-z]+(?: nut)?) (0\.\d{3})", section))
    assert len(vt) == 16 and len(listed) == 15
    for name, number in listed.items():
        assert vt[name.replace(" ", "_")] == float(number)
    assert "**mean 0.807**" in text and vt["mean"] == 0.807
    assert "AE-MSE at a 0.79 mean and Uninformed Students at 0.857" in text
    assert _only(by_folder, "vtadl_2021", "III", method="ae_mse") == {"aupro_0.3": 0.79}
    assert _only(by_folder, "vtadl_2021", "III", method="uninformed_students") == {
        "aupro_0.3": 0.857}
