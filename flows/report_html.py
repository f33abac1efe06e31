"""The effectiveness report as one self-contained HTML file: tables and inline SVG charts.

No script, no external file: it opens in any browser, offline, and can be mailed as is.
Charts: cure rate by stage per month, the recovery curve after each stage, and each variant's
cure rate next to its holdout with 95% Wilson intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from flows.experiments import wilson
from flows.metrics import Figures
from flows.report import Report

WIDTH, HEIGHT = 560, 260
LEFT, RIGHT, TOP, BOTTOM = 48, 150, 16, 36
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1150px; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; }
table { border-collapse: collapse; margin: 8px 0 16px; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 9px; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; }
figure { margin: 0; } figcaption { font-weight: 600; margin-bottom: 4px; }
svg text { font: 11px system-ui, sans-serif; fill: #333; }
.muted { color: #666; }
"""


def render_html(report: Report) -> str:
    """The whole report as an HTML document."""
    span = f"{report.since or 'start'} to {report.until or report.as_of}"
    stages = [figures.key["stage"] for figures in report.stages]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<title>Collectflow effectiveness report</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>Collectflow effectiveness report</h1>",
        f"<p class='muted'>Messages sent {escape(span)}, judged as of {report.as_of}. Cure: "
        f"everything the message asked for paid within {report.cure_days} days. Money is "
        f"credited by last touch within {report.attribution_window_days} days.</p>",
        "<div class='charts'>",
        figure("Cure rate by stage, per month", cure_by_month(report.stage_months, stages)),
        figure(
            f"Recovery curve: share paid in full, by days after each stage (0-{report.cure_days})",
            recovery_chart(report.recovery_curves, stages),
        ),
        figure("Variants against holdout: cure rate, 95% interval", variants_chart(report)),
        "</div>",
        "<h2>By stage</h2>",
        figures_table("stage", report.stages),
        "<h2>Experiments</h2>",
        experiments_table(report),
        "<h2>Portfolio</h2>",
        portfolio_table(report),
    ]
    for name, rows in report.breakdowns.items():
        parts += [f"<h2>By {escape(name)}</h2>", figures_table(name, rows)]
    parts.append("</body></html>")
    return "\n".join(parts)


def figure(caption: str, svg: str) -> str:
    return f"<figure><figcaption>{escape(caption)}</figcaption>{svg}</figure>"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    if not rows:
        return "<p class='muted'>nothing to show yet</p>"
    head = "".join(f"<th>{escape(str(h))}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figures_table(dimension: str, rows: list[Figures]) -> str:
    outcomes = ("paid", "partial", "promised", "disputed", "bounced", "opted_out", "no_response")
    headers = [dimension, "messages", "cure rate", *outcomes, "pending", "median days", "p90"]
    body = [
        [
            f.key[dimension],
            f.messages,
            percent(f.cure_rate),
            *(f.outcomes.get(name, 0) for name in outcomes),
            f.outcomes.get("pending", 0),
            "-" if f.median_days_to_pay is None else f"{f.median_days_to_pay:g}",
            "-" if f.p90_days_to_pay is None else f.p90_days_to_pay,
            ", ".join(f"{amount:,.2f} {cur}" for cur, amount in sorted(f.recovered.items())),
        ]
        for f in rows
    ]
    return table([*headers, "recovered"], body)


def experiments_table(report: Report) -> str:
    headers = ["experiment", "variant", "n", "cure", "holdout n", "holdout", "uplift", "95% CI"]
    rows = []
    for row in report.experiments:
        interval = row.interval
        rows.append(
            [
                row.experiment,
                row.variant,
                row.messages,
                percent(row.cure_rate),
                row.holdout_messages,
                percent(row.holdout_rate),
                "-" if row.uplift is None else f"{row.uplift:+.1%}",
                "-"
                if interval is None
                else f"{interval.low:+.1%} to {interval.high:+.1%} ({interval.method})",
                row.verdict,
            ]
        )
    return table([*headers, "verdict"], rows)


def portfolio_table(report: Report) -> str:
    if not report.portfolio:
        return table([], [])
    first = report.portfolio[0]
    headers = ["currency", "receivables", "sales", "DSO", "countback DSO", "best DSO", "ADD"]
    rows = [
        [
            p.currency,
            f"{p.ending:,.2f}",
            f"{p.sales:,.2f}",
            *(
                "-" if v is None else v
                for v in (p.simple_dso, p.countback_dso, p.best_possible_dso, p.add)
            ),
            "-" if p.cei is None else f"{p.cei}%",
        ]
        for p in report.portfolio
    ]
    caption = f"<p class='muted'>{first.since} to {first.until} ({first.days} days)</p>"
    return caption + table([*headers, f"CEI ({first.cei_variant})"], rows)


# Charts ----------------------------------------------------------------------------------------


def svg(body: list[str]) -> str:
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{HEIGHT}' "
        f"viewBox='0 0 {WIDTH} {HEIGHT}' role='img'>" + "".join(body) + "</svg>"
    )


def empty_chart() -> str:
    return svg([f"<text x='{LEFT}' y='{HEIGHT / 2}'>no data yet</text>"])


def frame(x_labels: Sequence[str]) -> list[str]:
    """Axes with a 0-100% scale and the given x labels, evenly spaced."""
    inner_w, bottom = WIDTH - LEFT - RIGHT, HEIGHT - BOTTOM
    parts = [f"<rect x='0' y='0' width='{WIDTH}' height='{HEIGHT}' fill='white'/>"]
    for tick in range(0, 101, 25):
        y = y_of(tick / 100)
        parts.append(
            f"<line x1='{LEFT}' x2='{LEFT + inner_w}' y1='{y:.1f}' y2='{y:.1f}' stroke='#eee'/>"
            f"<text x='{LEFT - 6}' y='{y + 4:.1f}' text-anchor='end'>{tick}%</text>"
        )
    parts.append(
        f"<line x1='{LEFT}' x2='{LEFT + inner_w}' y1='{bottom}' y2='{bottom}' stroke='#999'/>"
    )
    step = max(1, len(x_labels) // 8)
    for index, label in enumerate(x_labels):
        if index % step == 0:
            parts.append(
                f"<text x='{x_of(index, len(x_labels)):.1f}' y='{bottom + 16}' "
                f"text-anchor='middle'>{escape(label)}</text>"
            )
    return parts


def x_of(index: int, count: int) -> float:
    inner_w = WIDTH - LEFT - RIGHT
    return LEFT + (inner_w / 2 if count == 1 else index * inner_w / (count - 1))


def y_of(share: float) -> float:
    return TOP + (1 - share) * (HEIGHT - TOP - BOTTOM)


def colour_of(name: str, order: Sequence[str]) -> str:
    """The same colour for a stage in every chart."""
    index = order.index(name) if name in order else len(order)
    return COLOURS[index % len(COLOURS)]


def lines(
    series: dict[str, list[float | None]], x_labels: Sequence[str], order: Sequence[str]
) -> str:
    """One polyline per series (None leaves a gap), with a legend on the right."""
    if not series or not x_labels:
        return empty_chart()
    parts = frame(x_labels)
    for number, (name, values) in enumerate(series.items()):
        colour = colour_of(name, order)
        points = [
            f"{x_of(i, len(x_labels)):.1f},{y_of(v):.1f}"
            for i, v in enumerate(values)
            if v is not None
        ]
        if len(points) > 1:
            parts.append(
                f"<polyline fill='none' stroke='{colour}' stroke-width='2' "
                f"points='{' '.join(points)}'/>"
            )
        for point in points:
            x, y = point.split(",")
            parts.append(f"<circle cx='{x}' cy='{y}' r='3' fill='{colour}'/>")
        legend_y = TOP + 14 + number * 16
        parts.append(
            f"<rect x='{WIDTH - RIGHT + 12}' y='{legend_y - 9}' width='10' height='10' "
            f"fill='{colour}'/><text x='{WIDTH - RIGHT + 27}' y='{legend_y}'>{escape(name)}</text>"
        )
    return svg(parts)


def cure_by_month(rows: list[Figures], order: Sequence[str]) -> str:
    months = sorted({row.key["month"] for row in rows})
    series: dict[str, list[float | None]] = {}
    for row in rows:
        values = series.setdefault(row.key["stage"], [None] * len(months))
        values[months.index(row.key["month"])] = row.cure_rate
    return lines(series, months, order)


def recovery_chart(curves: dict[str, list[float]], order: Sequence[str]) -> str:
    if not curves:
        return empty_chart()
    days = len(next(iter(curves.values())))
    series: dict[str, list[float | None]] = {stage: list(c) for stage, c in curves.items()}
    return lines(series, [str(day) for day in range(days)], order)


def variants_chart(report: Report) -> str:
    """Bars of cure rate per arm (holdout first in each experiment), Wilson 95% whiskers."""
    bars: list[tuple[str, int, int]] = []
    for experiment in dict.fromkeys(row.experiment for row in report.experiments):
        arms = [row for row in report.experiments if row.experiment == experiment]
        if arms[0].holdout_messages:
            bars.append((f"{experiment}: holdout", arms[0].holdout_cured, arms[0].holdout_messages))
        bars += [(f"{experiment}: {row.variant}", row.cured, row.messages) for row in arms]
    bars = [bar for bar in bars if bar[2]]
    if not bars:
        return empty_chart()
    parts = frame([""])
    inner_w = WIDTH - LEFT - RIGHT
    slot = inner_w / len(bars)
    for index, (label, cured, n) in enumerate(bars):
        colour = "#999" if label.endswith(": holdout") else COLOURS[index % len(COLOURS)]
        rate = cured / n
        low, high = wilson(cured, n)
        x = LEFT + index * slot + slot * 0.2
        centre = x + slot * 0.3
        parts.append(
            f"<rect x='{x:.1f}' y='{y_of(rate):.1f}' width='{slot * 0.6:.1f}' "
            f"height='{y_of(0) - y_of(rate):.1f}' fill='{colour}'><title>{escape(label)}: "
            f"{rate:.1%} of {n}</title></rect>"
            f"<line x1='{centre:.1f}' x2='{centre:.1f}' y1='{y_of(low):.1f}' y2='{y_of(high):.1f}' "
            f"stroke='#222' stroke-width='1.5'/>"
        )
        experiment, arm = label.split(": ", 1)
        if index == 0 or not bars[index - 1][0].startswith(f"{experiment}: "):
            parts.append(
                f"<text x='{x:.1f}' y='{HEIGHT - BOTTOM + 16}'>{escape(experiment)}</text>"
            )
        legend_y = TOP + 14 + index * 16
        parts.append(
            f"<rect x='{WIDTH - RIGHT + 12}' y='{legend_y - 9}' width='10' height='10' "
            f"fill='{colour}'/><text x='{WIDTH - RIGHT + 27}' y='{legend_y}'>"
            f"{escape(arm)} ({n})</text>"
        )
    return svg(parts)
