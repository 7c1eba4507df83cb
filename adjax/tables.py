"""Results records -> tables (Markdown for now): method x category with a mean row."""

from collections.abc import Sequence
from typing import Any

DEFAULT_METRICS = ("image_auroc", "pixel_auroc", "aupro_0.3", "image_ap", "pixel_ap")


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f}"


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
            values = [_fmt(r["metrics"].get(m)) for m in metric_names]
            lines.append("| " + " | ".join([method, dataset, r["category"], *values]) + " |")
        if len({r["category"] for r in rows}) > 1:
            means = []
            for m in metric_names:
                vals = [r["metrics"].get(m) for r in rows]
                means.append(_fmt(None if None in vals else sum(vals) / len(vals)))
            lines.append("| " + " | ".join([method, dataset, "**mean**", *means]) + " |")
    return "\n".join(lines)
