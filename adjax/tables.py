"""Results records -> tables in Markdown, LaTeX or CSV.

* `select`: the records a table is made of (by source, method, data set), refusing a filter
  that matches nothing with one sentence that lists what exists.
* `render`: method x category pivots of adjax runs, of published numbers (`kind: paper`
  records), or of both side by side, with a mean row per (method, variant, data set);
  `overview` is what `adjax tables` prints: a readable selection of it.
* `speed_table`: the `bench` records, one row each.
* `list_tables` / `thesis_table`: a publication's own table, rebuilt from the layout its paper
  records carry in `notes`: `table` (its id), `caption`, `row_order` and `column_order` (the
  printed row and column labels), `scale` ("fraction" or "percent", how the table prints
  fractions) and `cells`, the record's share of the grid: `{"row", "column", "text"}` for a
  printed label or word, or `{"row", "column", "metrics": [keys], "decimals": [n], "format"?:
  "({0}, {1})", "raw"?: true (not a fraction), "grouping"?: true (thousands separators)}`.

Fractions print in percent with one decimal; a missing value prints as "–". A metric whose
name alone does not say what it is (`METRIC_NOTES`) gets a note under the table.
"""

import csv
import difflib
import io
import math
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from adjax.results import is_fraction

DEFAULT_METRICS = ("image_auroc", "pixel_auroc", "aupro_0.3", "image_ap", "pixel_ap")
FORMATS = ("md", "latex", "csv")
SOURCES = ("adjax", "paper", "all")
MISSING = "–"
MIXED = "mixed"  # a mean row over runs that differ in steps or date
MEAN = "mean"  # the category of a publication's printed mean over categories

# What a column means where its name cannot say it; printed under every table that shows it.
METRIC_NOTES = {
    "pro_thesis003": (
        "pro_thesis003: the column Mishra 2021 (PhD thesis, Tables 6.3, 6.4, 7.3, 7.4) and "
        "Mishra et al. 2021 (VT-ADL, Tables III, IV) print as \"PRO\"; their VT-ADL test code "
        "computes it as pixel AUROC over all test pixels, so it is pixel AUROC (compare it with "
        "pixel_auroc, not with the AU-PRO aupro_0.3)."),
    "pr_auc_trapezoid": (
        "pr_auc_trapezoid: the image-level \"PR AUC\" of Mishra 2021 and Mishra et al. 2021, a "
        "trapezoid under the precision-recall curve (scikit-learn auc(recall, precision)); it "
        "runs higher than average precision (image_ap)."),
}


class Spread(float):
    """A mean over the seeds of a matrix that keeps their sample standard deviation (ddof 1)
    and count; it prints as "mean ± std"."""

    std: float
    count: int

    def __new__(cls, values: Sequence[float]) -> "Spread":
        obj = super().__new__(cls, sum(values) / len(values))
        obj.std = statistics.stdev(values) if len(values) > 1 else 0.0
        obj.count = len(values)
        return obj


def _combine(values: Sequence[Any]) -> Any:
    """One value of several seeds: their `Spread`, or None if any is missing."""
    if any(v is None for v in values):
        return None
    return values[0] if len(values) == 1 else Spread([float(v) for v in values])


def format_metric(name: str, value: Any) -> str:
    """A fraction in percent with one decimal, another number as it is, None as "–"; a
    `Spread` of several seeds as "mean ± std"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, Spread) and value.count > 1:
        return f"{_plain(name, float(value))} ± {_plain(name, value.std)}"
    return _plain(name, value)


def _plain(name: str, value: Any) -> str:
    if is_fraction(name):
        return f"{100 * value:.1f}"
    if float(value).is_integer() and abs(value) >= 1000:
        return str(int(value))
    return f"{value:.4g}"


_OF_SOURCE = {"adjax": lambda r: r["kind"] == "eval", "paper": lambda r: r["kind"] == "paper",
              "all": lambda r: r["kind"] != "bench", "bench": lambda r: r["kind"] == "bench"}
_LABEL = {"adjax": "adjax eval ", "paper": "published ", "all": "", "bench": "bench "}


def _what_exists(wanted: str, noun: str, present: Iterable[str]) -> str:
    """' (did you mean 'x'?); <noun> present: a, b' for a name that matched nothing."""
    names = sorted(set(present), key=_natural)
    close = difflib.get_close_matches(wanted, names, n=1)
    return ((f" (did you mean {close[0]!r}?)" if close else "")
            + f"; {noun} present: {', '.join(n or '(none)' for n in names)}")


def select(records: Sequence[dict[str, Any]], *, source: str = "adjax",
           method: str | None = None, dataset: str | None = None,
           metric_names: Sequence[str] = (), where: str | None = None) -> list[dict[str, Any]]:
    """The records a table is made of: those of `source` ("adjax", "paper", "all", or "bench"
    for the speed table) with this method and data set.

    Nothing of `source`, a method or data set that matches nothing, or a metric name that no
    chosen record has raises a one-sentence ValueError naming the value and listing what does
    exist (`where`, e.g. the folder read, is named too).
    """
    if source not in _OF_SOURCE:
        raise ValueError(f"source {source!r} is not one of {', '.join(_OF_SOURCE)}.")
    label, place = _LABEL[source], f" in {where}" if where else ""
    chosen = [r for r in records if _OF_SOURCE[source](r)]
    if not chosen:
        kinds = ", ".join(sorted({r["kind"] for r in records})) or "none"
        raise ValueError(f"there are no {label}records{place} (kinds present: {kinds}).")
    if method is not None:
        present = [r["method"] for r in chosen]
        chosen = [r for r in chosen if r["method"] == method]
        if not chosen:
            raise ValueError(f"there are no {label}records of method {method!r}{place}"
                             f"{_what_exists(method, 'methods', present)}.")
    if dataset is not None:
        present = [r["dataset"] for r in chosen]
        chosen = [r for r in chosen if r["dataset"] == dataset]
        if not chosen:
            of = f" of method {method!r}" if method is not None else ""
            raise ValueError(f"there are no {label}records{of} on data set {dataset!r}{place}"
                             f"{_what_exists(dataset, 'data sets', present)}.")
    present = {m for r in chosen for m in r["metrics"]}
    for name in metric_names:
        if name not in present:
            raise ValueError(f"no chosen {label}record{place} has the metric {name!r}"
                             f"{_what_exists(name, 'metrics', present)}.")
    return chosen


# ------------------------------------------------------------------------------ render


@dataclass
class _Series:
    """One (method, variant, data set[, publication]) with its per-category metrics."""

    method: str
    variant: str
    dataset: str
    published: str  # "" for adjax runs; the publication (notes["ref"] or source) otherwise
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: dict[str, tuple[str, str]] = field(default_factory=dict)  # category -> (steps, day)
    printed_mean: dict[str, Any] | None = None
    # category -> seed -> metrics of the newest record of that seed (adjax runs)
    by_seed: dict[str, dict[Any, dict[str, Any]]] = field(default_factory=dict)

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
        seeds = {frozenset(runs) for runs in self.by_seed.values()}
        if len(seeds) == 1 and len(next(iter(seeds))) > 1:
            # The same seeds in every category: the spread of the seeds' means.
            per_seed = {seed: [self.by_seed[c][seed] for c in self.rows] for seed in
                        sorted(next(iter(seeds)), key=str)}
            return {m: _combine([_mean([r.get(m) for r in rows])
                                 for rows in per_seed.values()]) for m in names}
        return {m: _mean([float(v) if v is not None else None
                          for v in (metrics.get(m) for metrics in self.rows.values())])
                for m in names}

    def labelled_rows(self) -> list[tuple[str, dict[str, Any] | None]]:
        rows: list[tuple[str, dict[str, Any] | None]] = [
            (c, self.rows[c]) for c in self.categories()]
        mean = self.mean()
        if mean is not None:
            rows.append((MEAN, mean))
        return rows

    def run(self, category: str) -> list[str]:
        """[steps trained, day created] of a category's run; on the mean row the value all
        runs share, else "mixed"."""
        if category != MEAN:
            return list(self.runs.get(category, (MISSING, MISSING)))
        return [next(iter(values)) if len(values) == 1 else MIXED
                for values in map(set, zip(*self.runs.values(), strict=True))] or [MISSING] * 2


def _mean(values: Sequence[float | None]) -> float | None:
    return None if None in values else sum(values) / len(values)


def _natural(text: str) -> tuple:
    """Sort key: numbers by value ("2" < "10"), then text."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t)
                 for t in re.split(r"(\d+)", text) if t)


def _publication(record: dict[str, Any]) -> str:
    notes = record.get("notes")
    if isinstance(notes, dict) and notes.get("ref"):
        return str(notes["ref"])
    return record["source"]


def _steps(record: dict[str, Any]) -> str:
    train = record["config"].get("train")
    steps = train.get("steps") if isinstance(train, dict) else None
    return MISSING if steps is None else str(steps)


def _day(record: dict[str, Any]) -> str:
    return record["created"][:10]


def _series(records: Iterable[dict[str, Any]], paper: bool) -> list[_Series]:
    """Groups records; of two records for the same cell and seed the newer one (by `created`)
    wins, and a cell with runs of several seeds (a matrix) shows their mean ± std."""
    out: dict[tuple[str, ...], _Series] = {}
    for r in sorted(records, key=lambda r: r["created"]):
        published = _publication(r) if paper else ""
        key = (r["method"], r["variant"], r["dataset"], published)
        s = out.setdefault(key, _Series(*key))
        if r["category"] == MEAN:
            s.printed_mean = dict(r["metrics"])
        else:
            s.by_seed.setdefault(r["category"], {})[r["config"].get("seed")] = r["metrics"]
            s.runs[r["category"]] = (_steps(r), _day(r))
    for s in out.values():
        for category, seeds in s.by_seed.items():
            names = {m for metrics in seeds.values() for m in metrics}
            s.rows[category] = {m: _combine([metrics.get(m) for metrics in seeds.values()])
                                for m in names}
    return [out[k] for k in sorted(out, key=lambda k: tuple(_natural(x) for x in k))]


def present_metrics(records: Sequence[dict[str, Any]]) -> list[str]:
    """The metrics that occur in `records`, `DEFAULT_METRICS` first, then by name, leaving out
    thresholds and the validation-threshold metrics (`*_val_*`) of eval records."""
    present = {m for r in records for m in r["metrics"]}
    main = {m for m in present if not m.endswith("_threshold") and "_val_" not in m}
    first = [m for m in DEFAULT_METRICS if m in main]
    return first + sorted((main or present) - set(first))


def main_metrics(records: Sequence[dict[str, Any]]) -> list[str]:
    """The `DEFAULT_METRICS` that occur in `records`, or `present_metrics` if none does."""
    present = present_metrics(records)
    return [m for m in DEFAULT_METRICS if m in present] or present


def _category_label(category: str) -> str:
    return category if category else "(all)"


def render(records: Sequence[dict[str, Any]], *, fmt: str = "md", source: str = "adjax",
           metric_names: Sequence[str] | None = None, paired_only: bool = False) -> str:
    """Method x category pivot tables of stored results records.

    Args:
      records: results records (e.g. `adjax.results.read_all("results")`).
      fmt: "md", "latex" or "csv".
      source: "adjax" (runs: the `eval` records; `bench` ones make the `speed_table`),
        "paper" (published numbers, one group per publication) or "all": published and adjax
        values side by side in columns
        "<metric> (paper)" / "<metric> (adjax)" wherever a publication has the same method,
        data set and category (preferring a publication of the same variant); what has no
        counterpart gets its own rows with "–" on the other side.
      metric_names: the metric columns; by default `present_metrics` of the chosen records
        (`main_metrics` picks the few a reader looks at first).
      paired_only: with source "all", only the series that have both a published and an
        adjax side.

    Each (method, variant, data set) group lists its categories ("(all)" for a record of the
    whole data set) and a mean row when it has more than one category; a publication's own
    printed mean (category "mean") is shown as it is printed rather than recomputed. Rows in
    which every metric is missing are left out. Where a table shows adjax runs, each row also
    gives the steps trained (`config.train.steps`) and the day the record was created, so two
    runs are told apart; of two records of the same (method, variant, data set, category) the
    newest (by `created`) is shown. A mean row shows the steps and day its runs share, or
    "mixed". Markdown and LaTeX carry `METRIC_NOTES` of the columns shown under the table.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt {fmt!r} is not one of {', '.join(FORMATS)}.")
    if source not in SOURCES:
        raise ValueError(f"source {source!r} is not one of {', '.join(SOURCES)}.")
    ours = [r for r in records if _OF_SOURCE["adjax"](r)]
    theirs = [r for r in records if _OF_SOURCE["paper"](r)]
    chosen = {"adjax": ours, "paper": theirs, "all": ours + theirs}[source]
    names = list(metric_names) if metric_names is not None else present_metrics(chosen)
    notes = [METRIC_NOTES[m] for m in names if m in METRIC_NOTES]
    if source == "all":
        return _side_by_side(_series(ours, False), _series(theirs, True), names, fmt,
                             paired_only=paired_only, notes=notes)
    paper = source == "paper"
    header = ["method", "variant", "data set", *(["published"] if paper else []),
              "category", *([] if paper else ["steps", "date"]), *names]
    rows, means = [], []
    for s in _series(chosen, paper):
        lead = [s.method, s.variant, s.dataset, *([s.published] if paper else [])]
        for category, metrics in s.labelled_rows():
            values = [format_metric(m, (metrics or {}).get(m)) for m in names]
            if all(v == MISSING for v in values):
                continue
            means.append(category == MEAN)
            run = [] if paper else s.run(category)
            rows.append([*lead, _category_label(category), *run, *values])
    return _emit(header, rows, fmt, n_text=len(header) - len(names), mean_rows=means,
                 notes=notes)


def overview(records: Sequence[dict[str, Any]], *, fmt: str = "md", source: str = "adjax",
             method: str | None = None, dataset: str | None = None,
             metric_names: Sequence[str] = (), everything: bool = False,
             where: str | None = None) -> tuple[str, str]:
    """The table `adjax tables` prints, and a one-line hint of what it left out ("" if none).

    The records are those of `select` (whose errors it raises); source "bench" gives the
    `speed_table`, the others a `render`. Markdown and LaTeX show a readable selection unless
    `everything`: the `main_metrics` columns unless `metric_names` are given, and with source
    "all" and neither a method nor a data set only the series that have both a published and
    an adjax side. CSV is always complete: every metric present, every series.
    """
    chosen = select(records, source=source, method=method, dataset=dataset,
                    metric_names=metric_names, where=where)
    if source == "bench":
        return speed_table(chosen, fmt=fmt), ""
    complete = everything or fmt == "csv"
    names = list(metric_names) or (present_metrics if complete else main_metrics)(chosen)
    paired_only = source == "all" and not (complete or method or dataset)
    table = render(chosen, fmt=fmt, source=source, metric_names=names, paired_only=paired_only)
    left_out = []
    hidden = len(set(present_metrics(chosen)) - set(names))
    if not (complete or metric_names) and hidden:
        left_out.append(f"{hidden} more metric" + ("s" if hidden > 1 else ""))
    if paired_only:
        left_out.append("the series without both a published and an adjax side")
    if not left_out:
        return table, ""
    return table, (f"not shown: {' and '.join(left_out)}; --all (or --format=csv) shows "
                   f"everything.")


def _side_by_side(ours: list[_Series], theirs: list[_Series], names: Sequence[str],
                  fmt: str, *, paired_only: bool, notes: Sequence[str]) -> str:
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
    if paired_only:
        pairs = [(a, p) for a, p in pairs if a is not None and p is not None]

    header = ["method", "variant", "data set", "published", "category", "steps", "date",
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
            run = a.run(category) if category in ours_rows else [MISSING, MISSING]
            rows.append([*lead, _category_label(category), *run, *values])
    return _emit(header, rows, fmt, n_text=7, mean_rows=means, notes=notes)


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
# (column header, ratio name) of the side-by-side columns: the peer's seconds over adjax's for
# the same work, median over rounds with the rounds' range (above 1: adjax is faster).
_PEER_COLUMNS = (("peer/adjax train", "train"), ("peer/adjax latency", "latency"))


def _peer_ratio(bench: dict[str, Any], name: str) -> str:
    """'0.78 (0.77–0.85)': a side-by-side record's ratio with its spread over rounds."""
    median = bench.get(f"peer_ratio_{name}")
    if median is None:
        return MISSING
    low, high = bench.get(f"peer_ratio_{name}_min"), bench.get(f"peer_ratio_{name}_max")
    if low is None or high is None:
        return f"{median:.2f}"
    return f"{median:.2f} ({low:.2f}–{high:.2f})"


def speed_table(records: Sequence[dict[str, Any]], *, fmt: str = "md") -> str:
    """The `bench` records as one row each: method, the day measured, host, device, precision
    and the measured rates (training images/s, batch-1 latency host -> device -> host, best
    inference images/s, ...); a side-by-side record adds its peer/adjax ratios with their
    spread over rounds."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt {fmt!r} is not one of {', '.join(FORMATS)}.")
    header = ["method", "variant", "source", "date", "host", "device", "precision",
              "image size", *(c[0] for c in _SPEED_COLUMNS), *(c[0] for c in _PEER_COLUMNS)]
    rows = []
    for r in sorted((r for r in records if r["kind"] == "bench"),
                    key=lambda r: (r["method"], r["variant"], r["env"].get("device_kind", ""),
                                   r["bench"].get("precision", ""), r["source"], r["created"])):
        b, env = r["bench"], r["env"]
        device = f"{env.get('device_count', '?')} x {env.get('device_kind', '?')}"
        cells = []
        for _, name, form in _SPEED_COLUMNS:
            value = b.get(name)
            if name == "params" and value is not None:
                value = value / 1e6
            cells.append(MISSING if value is None else form.format(value))
        cells += [_peer_ratio(b, name) for _, name in _PEER_COLUMNS]
        rows.append([r["method"], r["variant"], r["source"], _day(r),
                     str(env.get("host") or MISSING), device, b.get("precision", "?"),
                     str(r["image_size"]), *cells])
    return _emit(header, rows, fmt, n_text=8)


# ------------------------------------------------------------------------------ thesis tables


class PublishedTable(NamedTuple):
    """A publication table the paper records can rebuild."""

    source: str  # the records' citation
    table: str  # its id, as `notes["table"]`
    caption: str
    publication: str  # a word of `source` that picks it among the sources with this id


def _is_layout(record: dict[str, Any]) -> bool:
    return record["kind"] == "paper" and isinstance(record.get("notes"), dict) \
        and "table" in record["notes"]


def _publication_words(records: Iterable[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """(source, table id) -> the first word that tells this source apart from the other
    sources of a table with the same id: the first word of its short reference (an author's
    name) if it does, else the first such word of the citation, else the whole citation."""
    refs: dict[tuple[str, str], str] = {}
    for r in records:
        if _is_layout(r):
            refs.setdefault((r["source"], str(r["notes"]["table"])), _publication(r))
    words = {}
    for (source, table), ref in refs.items():
        others = [s for s, t in refs if t == table and s != source]
        candidates = [w.strip(",;:()") for w in [*ref.split()[:1], *source.split()]]
        words[(source, table)] = next(
            (w for w in candidates if len(w) >= 3 and w in source
             and not any(w in other for other in others)), source)
    return words


def list_tables(records: Iterable[dict[str, Any]]) -> list[PublishedTable]:
    """The publication tables the paper records can rebuild, sorted by citation and id, each
    with the word to pass as `publication` (`adjax tables --publication`)."""
    records = list(records)
    words = _publication_words(records)
    found = {PublishedTable(r["source"], str(r["notes"]["table"]),
                            str(r["notes"].get("caption", "")),
                            words[(r["source"], str(r["notes"]["table"]))])
             for r in records if _is_layout(r)}
    return sorted(found, key=lambda t: (_natural(t.source), _natural(t.table), t.caption))


def table_list(records: Iterable[dict[str, Any]], *, fmt: str = "md") -> str:
    """`list_tables` as a table: id, the `--publication` word, caption and citation."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt {fmt!r} is not one of {', '.join(FORMATS)}.")
    rows = [[t.table, t.publication, t.caption, t.source] for t in list_tables(records)]
    return _emit(["table", "--publication", "caption", "source"], rows, fmt, n_text=4)


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
                 publication: str | None = None, fmt: str = "md") -> str:
    """One publication table as printed there: its caption, rows and columns, and numbers in
    its own scale (fraction or percent) and precision, from the stored paper records.

    Args:
      records: results records; only `kind: paper` ones with a layout in `notes` are used.
      table_id: the table's id as in `notes["table"]` (e.g. "4.2"; see `list_tables`).
      publication: a part of the citation that picks the publication when several have a
        table with this id (e.g. "Khanjani"; `list_tables` gives a word that does).
      fmt: "md" and "latex" carry the caption; "csv" is the grid only.

    An id that no record has, or one that several publications share while `publication` does
    not pick one, raises a one-sentence ValueError that says what to pass.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt {fmt!r} is not one of {', '.join(FORMATS)}.")
    records = [r for r in records if _is_layout(r)]
    chosen = [r for r in records if str(r["notes"]["table"]) == str(table_id)
              and (publication is None or publication in r["source"])]
    if not chosen:
        n = len({(r["source"], str(r["notes"]["table"])) for r in records})
        raise ValueError(f"no stored publication table {table_id!r}"
                         + (f" from a publication citing {publication!r}" if publication else "")
                         + f"; `adjax tables --list` lists the {n} there are.")
    sources = sorted({r["source"] for r in chosen})
    if len(sources) > 1:
        words = _publication_words(records)
        refs = {r["source"]: _publication(r) for r in chosen}
        options = " or ".join(f"--publication={words[(s, str(table_id))]} ({refs[s]})"
                              for s in sources)
        raise ValueError(f"table {table_id!r} is in {len(sources)} publications; pick one "
                         f"with {options}.")
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
          mean_rows: Sequence[bool] = (), caption: str | None = None,
          notes: Sequence[str] = ()) -> str:
    means = list(mean_rows) + [False] * (len(rows) - len(mean_rows))
    if fmt == "csv":  # the grid only: a CSV reader expects no notes
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
        if notes:
            lines += ["", *notes]
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
    lines += [r"\par{\footnotesize " + latex_escape(note) + "}" for note in notes]
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
    metric_names = opts["metrics"].split(",") if "metrics" in opts else None
    source = "bench" if opts.get("kind") == "bench" else opts.get("source", "adjax")
    chosen = select(records, source=source, method=opts.get("method"),
                    dataset=opts.get("dataset"), metric_names=metric_names or (),
                    where=f"the block '<!-- adjax tables {args} -->'")
    if source == "bench":
        return speed_table(chosen)
    return render(chosen, fmt="md", source=source, metric_names=metric_names)


def update_blocks(text: str, records: Sequence[dict[str, Any]]) -> str:
    """Regenerates every `<!-- adjax tables --flag=value ... -->` ... `<!-- end tables -->`
    block of a Markdown text from `records` (flags: source, method, dataset, metrics, and
    kind=bench for a speed table)."""
    return _BLOCK.sub(lambda m: m.group(1) + _block_table(records, m.group("args")) + "\n"
                      + m.group(4), text)
