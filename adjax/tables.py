"""Results records -> tables in Markdown, LaTeX or CSV.

* `metric_table`: the short Markdown table `adjax eval` prints, one row per record.
* `render`: method x category pivots of adjax runs, of published numbers (`kind: paper`
  records), or of both side by side, with a mean row per (method, variant, data set).
* `list_tables` / `thesis_table`: a publication's own table, rebuilt from the layout its paper
  records carry in `notes`: `table` (its id), `caption`, `row_order` and `column_order` (the
  printed row and column labels), `scale` ("fraction" or "percent", how the table prints
  fractions) and `cells`, the record's share of the grid: `{"row", "column", "text"}` for a
  printed label or word, or `{"row", "column", "metrics": [keys], "decimals": [n], "format"?:
  "({0}, {1})", "raw"?: true (not a fraction), "grouping"?: true (thousands separators)}`.

Fractions print in percent with one decimal; a missing value prints as "–".
"""

import csv
import io
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

DEFAULT_METRICS = ("image_auroc", "pixel_auroc", "aupro_0.3", "image_ap", "pixel_ap")
FORMATS = ("md", "latex", "csv")
SOURCES = ("adjax", "paper", "all")
MISSING = "–"
MEAN = "mean"  # the category of a publication's printed mean over categories

# Metrics that are not fractions (counts, seconds, reconstruction errors) print as they are.
_RAW_NAMES = {"params", "gflops_per_image", "batch", "peak_bytes"}
_RAW_SUFFIXES = ("_s", "_ms", "_per_s", "_per_100_epochs", "_threshold", "_bytes")
_RAW_PREFIXES = ("recon_",)


def is_fraction(name: str) -> bool:
    """Whether metric `name` is a fraction in [0, 1] (printed in percent)."""
    return not (name in _RAW_NAMES or name.endswith(_RAW_SUFFIXES)
                or name.startswith(_RAW_PREFIXES))


def format_metric(name: str, value: Any) -> str:
    """A fraction in percent with one decimal, another number as it is, None as "–"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if is_fraction(name):
        return f"{100 * value:.1f}"
    if float(value).is_integer() and abs(value) >= 1000:
        return str(int(value))
    return f"{value:.4g}"


def metric_table(records: Sequence[dict[str, Any]],
                 metric_names: Sequence[str] = DEFAULT_METRICS) -> str:
    """A Markdown table: one row per (method, variant, data set, category), metrics in percent,
    and a mean row per (method, variant, data set) when it has more than one category."""
    header = ["method", "data set", "category", *metric_names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        method = f"{r['method']}:{r['variant']}" if r["variant"] else r["method"]
        if r["source"] != "adjax":
            method += " (published)"
        key = (method, r["dataset"])
        groups.setdefault(key, []).append(r)
    for (method, dataset), rows in groups.items():
        for r in sorted(rows, key=lambda r: r["category"]):
            values = [format_metric(m, r["metrics"].get(m)) for m in metric_names]
            lines.append("| " + " | ".join([method, dataset, r["category"], *values]) + " |")
        if len({r["category"] for r in rows}) > 1:
            means = []
            for m in metric_names:
                vals = [r["metrics"].get(m) for r in rows]
                means.append(format_metric(m, None if None in vals else sum(vals) / len(vals)))
            lines.append("| " + " | ".join([method, dataset, "**mean**", *means]) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ render


@dataclass
class _Series:
    """One (method, variant, data set[, publication]) with its per-category metrics."""

    method: str
    variant: str
    dataset: str
    published: str  # "" for adjax runs; the publication (notes["ref"] or source) otherwise
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    printed_mean: dict[str, Any] | None = None

    def categories(self) -> list[str]:
        return sorted(self.rows, key=_natural)

    def mean(self) -> dict[str, Any] | None:
        """The publication's printed mean if stored, else the mean over >1 categories (a
        metric missing in any category has no mean)."""
        if self.printed_mean is not None:
            return self.printed_mean
        if len(self.rows) < 2:
            return None
        names = {m for metrics in self.rows.values() for m in metrics}
        out = {}
        for m in names:
            vals = [metrics.get(m) for metrics in self.rows.values()]
            out[m] = None if None in vals else sum(vals) / len(vals)
        return out

    def labelled_rows(self) -> list[tuple[str, dict[str, Any] | None]]:
        rows: list[tuple[str, dict[str, Any] | None]] = [
            (c, self.rows[c]) for c in self.categories()]
        mean = self.mean()
        if mean is not None:
            rows.append((MEAN, mean))
        return rows


def _natural(text: str) -> tuple:
    """Sort key: numbers by value ("2" < "10"), then text."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t)
                 for t in re.split(r"(\d+)", text) if t)


def _publication(record: dict[str, Any]) -> str:
    notes = record.get("notes")
    if isinstance(notes, dict) and notes.get("ref"):
        return str(notes["ref"])
    return record["source"]


def _series(records: Iterable[dict[str, Any]], paper: bool) -> list[_Series]:
    """Groups records; of two records for the same cell the newer one (by `created`) wins."""
    out: dict[tuple[str, ...], _Series] = {}
    for r in sorted(records, key=lambda r: r["created"]):
        published = _publication(r) if paper else ""
        key = (r["method"], r["variant"], r["dataset"], published)
        s = out.setdefault(key, _Series(*key))
        if r["category"] == MEAN:
            s.printed_mean = dict(r["metrics"])
        else:
            s.rows[r["category"]] = dict(r["metrics"])
    return [out[k] for k in sorted(out, key=lambda k: tuple(_natural(x) for x in k))]


def _default_metrics(records: Sequence[dict[str, Any]]) -> list[str]:
    present = {m for r in records for m in r["metrics"]}
    main = {m for m in present if not m.endswith("_threshold") and "_val_" not in m}
    first = [m for m in DEFAULT_METRICS if m in main]
    return first + sorted((main or present) - set(first))


def _category_label(category: str) -> str:
    return category if category else "(all)"


def render(records: Sequence[dict[str, Any]], *, fmt: str = "md", source: str = "adjax",
           metric_names: Sequence[str] | None = None) -> str:
    """Method x category pivot tables of stored results records.

    Args:
      records: results records (e.g. `adjax.results.read_all("results")`).
      fmt: "md", "latex" or "csv".
      source: "adjax" (runs: every kind but `paper`), "paper" (published numbers, one group
        per publication) or "all": published and adjax values side by side in columns
        "<metric> (paper)" / "<metric> (adjax)" wherever a publication has the same method,
        data set and category (preferring a publication of the same variant); what has no
        counterpart gets its own rows with "–" on the other side.
      metric_names: the metric columns; by default every metric that occurs in the chosen
        records (`DEFAULT_METRICS` first, then by name), leaving out thresholds and the
        validation-threshold metrics (`*_val_*`) of eval records.

    Each (method, variant, data set) group lists its categories ("(all)" for a record of the
    whole data set) and a mean row when it has more than one category; a publication's own
    printed mean (category "mean") is shown as it is printed rather than recomputed. Rows in
    which every metric is missing are left out.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt {fmt!r} is not one of {', '.join(FORMATS)}.")
    if source not in SOURCES:
        raise ValueError(f"source {source!r} is not one of {', '.join(SOURCES)}.")
    ours = [r for r in records if r["kind"] != "paper"]
    theirs = [r for r in records if r["kind"] == "paper"]
    chosen = {"adjax": ours, "paper": theirs, "all": list(records)}[source]
    names = list(metric_names) if metric_names is not None else _default_metrics(chosen)
    if source != "all":
        paper = source == "paper"
        header = ["method", "variant", "data set", *(["published"] if paper else []),
                  "category", *names]
        rows, means = [], []
        for s in _series(chosen, paper):
            lead = [s.method, s.variant, s.dataset, *([s.published] if paper else [])]
            for category, metrics in s.labelled_rows():
                values = [format_metric(m, (metrics or {}).get(m)) for m in names]
                if all(v == MISSING for v in values):
                    continue
                means.append(category == MEAN)
                rows.append([*lead, _category_label(category), *values])
        return _emit(header, rows, fmt, n_text=len(header) - len(names), mean_rows=means)
    return _side_by_side(_series(ours, False), _series(theirs, True), names, fmt)


def _side_by_side(ours: list[_Series], theirs: list[_Series], names: Sequence[str],
                  fmt: str) -> str:
    def keys(s: _Series) -> set[str]:
        return set(s.rows) | ({MEAN} if s.mean() is not None else set())

    pairs: list[tuple[_Series | None, _Series | None]] = []
    used: set[int] = set()
    for a in ours:
        candidates = [p for p in theirs if (p.method, p.dataset) == (a.method, a.dataset)
                      and keys(p) & keys(a)]
        same = [p for p in candidates if p.variant == a.variant]
        matched = same or candidates
        pairs.extend((a, p) for p in matched)
        used.update(id(p) for p in matched)
        if not matched:
            pairs.append((a, None))
    pairs.extend((None, p) for p in theirs if id(p) not in used)

    header = ["method", "variant", "data set", "published", "category",
              *[f"{m} ({side})" for m in names for side in ("paper", "adjax")]]
    rows, means = [], []
    for a, p in pairs:
        first = a or p
        assert first is not None
        published = MISSING
        if p is not None:
            published = p.published
            if a is not None and p.variant and p.variant != a.variant:
                published += f" ({p.variant})"
        lead = [first.method, first.variant, first.dataset, published]
        ours_rows = dict(a.labelled_rows()) if a else {}
        their_rows = dict(p.labelled_rows()) if p else {}
        categories = sorted((set(ours_rows) | set(their_rows)) - {MEAN}, key=_natural)
        if MEAN in ours_rows or MEAN in their_rows:
            categories.append(MEAN)
        for category in categories:
            values = []
            for m in names:
                values.append(format_metric(m, (their_rows.get(category) or {}).get(m)))
                values.append(format_metric(m, (ours_rows.get(category) or {}).get(m)))
            if all(v == MISSING for v in values):
                continue
            means.append(category == MEAN)
            rows.append([*lead, _category_label(category), *values])
    return _emit(header, rows, fmt, n_text=5, mean_rows=means)


# ------------------------------------------------------------------------------ speed tables

# (column header, bench field, format) of a speed table.
_SPEED_COLUMNS = (
    ("train img/s", "train_images_per_s", "{:.1f}"),
    ("train batch", "train_batch", "{}"),
    ("latency b1 (ms)", "latency_ms_b1", "{:.2f}"),
    ("p90 (ms)", "latency_ms_b1_p90", "{:.2f}"),
    ("img/s", "images_per_s", "{:.1f}"),
    ("at batch", "batch", "{}"),
    ("GFLOP/img", "gflops_per_image", "{:.2f}"),
    ("params (M)", "params", "{:.3f}"),
    ("compile (s)", "compile_s", "{:.1f}"),
)


def speed_table(records: Sequence[dict[str, Any]], *, fmt: str = "md") -> str:
    """The `bench` records as one row each: method, precision, device and the measured rates
    (training images/s, batch-1 latency host -> device -> host, best inference images/s, ...)."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt {fmt!r} is not one of {', '.join(FORMATS)}.")
    header = ["method", "variant", "source", "device", "precision", "image size",
              *(c[0] for c in _SPEED_COLUMNS)]
    rows = []
    for r in sorted((r for r in records if r["kind"] == "bench"),
                    key=lambda r: (r["method"], r["variant"], r["env"].get("device_kind", ""),
                                   r["bench"].get("precision", ""), r["source"])):
        b, env = r["bench"], r["env"]
        device = f"{env.get('device_count', '?')} x {env.get('device_kind', '?')}"
        cells = []
        for _, name, form in _SPEED_COLUMNS:
            value = b.get(name)
            if name == "params" and value is not None:
                value = value / 1e6
            cells.append(MISSING if value is None else form.format(value))
        rows.append([r["method"], r["variant"], r["source"], device, b.get("precision", "?"),
                     str(r["image_size"]), *cells])
    return _emit(header, rows, fmt, n_text=6)


# ------------------------------------------------------------------------------ thesis tables


def list_tables(records: Iterable[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """The publication tables the paper records can rebuild: sorted (source, table id,
    caption) triples, `source` being the records' citation."""
    found = set()
    for r in records:
        notes = r.get("notes")
        if r["kind"] == "paper" and isinstance(notes, dict) and "table" in notes:
            found.add((r["source"], str(notes["table"]), str(notes.get("caption", ""))))
    return sorted(found, key=lambda t: (_natural(t[0]), _natural(t[1]), t[2]))


def _cell_text(cell: dict[str, Any], metrics: dict[str, Any], scale: str) -> str:
    texts = []
    for name, decimals in zip(cell["metrics"], cell["decimals"], strict=True):
        value = metrics.get(name)
        if value is None:
            texts.append(MISSING)
            continue
        if scale == "percent" and not cell.get("raw"):
            value = 100 * value
        texts.append(f"{value:,.{decimals}f}" if cell.get("grouping")
                     else f"{value:.{decimals}f}")
    return cell.get("format", "{0}").format(*texts)


def thesis_table(records: Iterable[dict[str, Any]], table_id: str, *,
                 source: str | None = None, fmt: str = "md") -> str:
    """One publication table as printed there: its caption, rows and columns, and numbers in
    its own scale (fraction or percent) and precision, from the stored paper records.

    Args:
      records: results records; only `kind: paper` ones with a layout in `notes` are used.
      table_id: the table's id as in `notes["table"]` (e.g. "4.2"; see `list_tables`).
      source: a part of the citation that picks the publication when several have a table
        with this id (e.g. "Khanjani").
      fmt: "md" and "latex" carry the caption; "csv" is the grid only.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt {fmt!r} is not one of {', '.join(FORMATS)}.")
    chosen = [r for r in records
              if r["kind"] == "paper" and isinstance(r.get("notes"), dict)
              and str(r["notes"].get("table")) == str(table_id)
              and (source is None or source in r["source"])]
    if not chosen:
        raise ValueError(f"No stored paper table {table_id!r}"
                         + (f" from a source containing {source!r}." if source else "."))
    sources = sorted({r["source"] for r in chosen})
    if len(sources) > 1:
        raise ValueError(f"Table {table_id!r} exists in {len(sources)} sources; pass source= "
                         f"to pick one of: {'; '.join(sources)}.")
    notes = chosen[0]["notes"]
    rows, columns = notes["row_order"], notes["column_order"]
    grid: dict[tuple[str, str], str] = {}
    for r in chosen:
        for cell in r["notes"]["cells"]:
            text = cell["text"] if "text" in cell else _cell_text(
                cell, r["metrics"], r["notes"].get("scale", "fraction"))
            key = (cell["row"], cell["column"])
            if grid.setdefault(key, text) != text:
                raise ValueError(f"Table {table_id!r}: cell {key} is stored twice, as "
                                 f"{grid[key]!r} and {text!r}.")
    body = [[grid.get((row, col), "") for col in columns] for row in rows]
    n_text = sum(1 for col in columns
                 if all("text" in c for r in chosen for c in r["notes"]["cells"]
                        if c["column"] == col))
    caption = f"Table {table_id}: {notes.get('caption', '')}"
    return _emit(list(columns), body, fmt, n_text=max(n_text, 1), caption=caption)


# ------------------------------------------------------------------------------ output


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}", MISSING: "--"}


def latex_escape(text: str) -> str:
    """`text` with LaTeX's special characters escaped ("–" becomes "--")."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def _emit(header: Sequence[str], rows: Sequence[Sequence[str]], fmt: str, *, n_text: int,
          mean_rows: Sequence[bool] = (), caption: str | None = None) -> str:
    means = list(mean_rows) + [False] * (len(rows) - len(mean_rows))
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        return out.getvalue()
    if fmt == "md":
        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

        lines = [f"{caption}", ""] if caption else []
        lines += [line(header), "|" + "---|" * len(header)]
        for row, mean in zip(rows, means, strict=True):
            lines.append(line([f"**{c}**" if mean and c == MEAN else c for c in row]))
        return "\n".join(lines)
    spec = "l" * min(n_text, len(header)) + "r" * max(len(header) - n_text, 0)
    lines = [r"\begin{table}[ht]", r"\centering"] if caption else []
    if caption:
        lines.append(r"\caption{" + latex_escape(caption) + "}")
    lines += [r"\begin{tabular}{" + spec + "}", r"\hline",
              " & ".join(latex_escape(h) for h in header) + r" \\", r"\hline"]
    for row, mean in zip(rows, means, strict=True):
        cells = [r"\textbf{mean}" if mean and c == MEAN else latex_escape(c) for c in row]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\hline", r"\end{tabular}"]
    if caption:
        lines.append(r"\end{table}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ README blocks

# A generated block in a Markdown file: the marker names the `adjax tables` flags it was made
# with, and everything up to the end marker is the output.
_BLOCK = re.compile(
    r"(<!-- adjax tables (?P<args>[^>]*?) -->\n)(?P<body>.*?)(<!-- end tables -->)", re.DOTALL)


def _block_table(records: Sequence[dict[str, Any]], args: str) -> str:
    opts = dict(arg.lstrip("-").split("=", 1) for arg in args.split())
    chosen = [r for r in records
              if all(r.get(key) == opts[key] for key in ("method", "dataset") if key in opts)]
    if opts.get("kind") == "bench":
        return speed_table(chosen)
    metric_names = opts["metrics"].split(",") if "metrics" in opts else None
    return render(chosen, fmt="md", source=opts.get("source", "adjax"),
                  metric_names=metric_names)


def update_blocks(text: str, records: Sequence[dict[str, Any]]) -> str:
    """Regenerates every `<!-- adjax tables --flag=value ... -->` ... `<!-- end tables -->`
    block of a Markdown text from `records` (flags: source, method, dataset, metrics, and
    kind=bench for a speed table)."""
    return _BLOCK.sub(lambda m: m.group(1) + _block_table(records, m.group("args")) + "\n"
                      + m.group(4), text)
