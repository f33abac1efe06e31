"""The effectiveness report as one self-contained HTML file: tables and inline SVG charts.

No script, no external file: it opens in any browser, offline, and can be mailed as is.
Charts: cure rate by stage per month, the recovery curve after each stage, and each variant's
cure rate next to its holdout with 95% Wilson intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from html import escape

from collectflow.flows.measure.experiments import HOLDOUT, wilson
from collectflow.flows.measure.metrics import Figures
from collectflow.flows.measure.report import Report

OUTCOMES = (
    "paid", "partial", "promised", "disputed", "opted_out", "bounced", "no_response", "pending",
)  # fmt: skip
WIDTH, HEIGHT = 560, 260
LEFT, RIGHT, TOP, BOTTOM = 48, 150, 16, 36
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1150px; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; }
table { border-collapse: collapse; margin: 8px 0 16px; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 9px; text-align: right; vertical-align: top; }
td { white-space: nowrap; } th { max-width: 90px; font-weight: 600; vertical-align: bottom; }
th.text, td.text { text-align: left; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; }
figure { margin: 0; } figcaption { font-weight: 600; margin-bottom: 4px; }
svg text { font: 11px system-ui, sans-serif; fill: #333; } svg text.axis { fill: #666; }
.muted { color: #666; }
"""


def render_html(report: Report) -> str:
    """The whole report as an HTML document."""
    span = f"{report.since or 'the start'} to {report.until or report.as_of}"
    stages = [figures.key["stage"] for figures in report.stages]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<title>Collectflow effectiveness report</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>Collectflow effectiveness report</h1>",
        f"<p class='muted'>Messages sent from {escape(span)}, judged as of {report.as_of}. "
        f"Cure: everything the message asked for paid within {report.cure_days} days. Money "
        f"is credited by last touch within {report.attribution_window_days} days.</p>",
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
        "<h2>Outcomes by stage</h2>",
        outcomes_table(report.stages),
        "<h2>Experiments</h2>",
        experiments_table(report),
        "<h2>Portfolio</h2>",
        portfolio_table(report),
        "<h2>Payments after a message, by gateway</h2>",
        gateway_table(report),
        "<h2>What customers say</h2>",
        feedback_section(report),
    ]
    parts += ["<h2>Risk score</h2>", *risk_section(report)]
    for name, rows in report.breakdowns.items():
        parts += [f"<h2>By {escape(name)}</h2>", figures_table(name, rows)]
    parts.append("</body></html>")
    return "\n".join(parts)


def figure(caption: str, svg: str) -> str:
    return f"<figure><figcaption>{escape(caption)}</figcaption>{svg}</figure>"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], text: Sequence[int] = (0,)
) -> str:
    """An HTML table, numbers right-aligned and the `text` columns left-aligned; a cell given
    as a list shows one line per item (amounts per currency)."""
    if not rows:
        return "<p class='muted'>nothing to show yet</p>"

    def cell(value: object) -> str:
        if isinstance(value, list):
            return "<br>".join(escape(str(item)) for item in value)
        return escape(str(value))

    def align(index: int) -> str:
        return " class='text'" if index in text else ""

    head = "".join(f"<th{align(i)}>{escape(str(h))}</th>" for i, h in enumerate(headers))
    body = "".join(
        "<tr>"
        + "".join(f"<td{align(i)}>{cell(value)}</td>" for i, value in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def amounts(money: dict[str, Decimal]) -> list[str]:
    return [f"{amount:,.2f} {currency}" for currency, amount in sorted(money.items())]


def figures_table(dimension: str, rows: list[Figures]) -> str:
    """Per group: messages, cure, days to pay, opt-out and bounce rates, money by touch."""
    headers = [
        dimension, "messages", "cure rate", "median days to pay", "p90 days to pay",
        "opt-out rate", "bounce rate", "recovered (last touch)", "recovered (first touch)",
    ]  # fmt: skip
    body = [
        [
            f.key[dimension],
            f.messages,
            percent(f.cure_rate),
            "-" if f.median_days_to_pay is None else f"{f.median_days_to_pay:g}",
            "-" if f.p90_days_to_pay is None else f.p90_days_to_pay,
            percent(f.opt_out_rate),
            percent(f.bounce_rate),
            amounts(f.recovered),
            amounts(f.recovered_first_touch),
        ]
        for f in rows
    ]
    return table(headers, body)


def outcomes_table(rows: list[Figures]) -> str:
    """How each stage's messages ended; pending: the window is still open."""
    headers = ["stage", "messages", *(name.replace("_", " ") for name in OUTCOMES)]
    body = [
        [f.key["stage"], f.messages, *(f.outcomes.get(name, 0) for name in OUTCOMES)] for f in rows
    ]
    return table(headers, body)


def experiments_table(report: Report) -> str:
    """Each arm against its holdout: uplift, 95% interval (and its method), verdict."""
    if not report.experiments:
        return (
            "<p class='muted'>No experiment yet: give a ladder stage <code>variants</code> and a "
            "<code>holdout</code> share in the policy, or run a campaign with them.</p>"
        )
    headers = [
        "experiment", "arm", "messages", "cure rate", "holdout messages", "holdout cure rate",
        "uplift", "95% interval", "method", "verdict",
    ]  # fmt: skip
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
                "-" if interval is None else f"{interval.low:+.1%} to {interval.high:+.1%}",
                "-" if interval is None else interval.method,
                row.verdict,
            ]
        )
    note = (
        f"<p class='muted'>Too small to conclude: a group has fewer than "
        f"{report.experiments[0].min_sample} messages (<code>measurement.min_sample</code>).</p>"
    )
    return table(headers, rows, text=(0, 1, 8, 9)) + note


def feedback_section(report: Report) -> str:
    """Answers by intent, reason and channel; response rate per stage and template; stated
    against inferred causes."""
    said = report.feedback
    if not said.answers:
        return "<p class='muted'>no customer has answered yet</p>"
    median = said.median_hours_to_answer
    summary = (
        f"<p>{said.answers} answer(s); median time from message to first answer: "
        f"{'-' if median is None else f'{median:g} h'}; stated cause agrees with diagnosis in "
        f"{percent(said.agreement_share)} of the answers to a diagnosed message.</p>"
    )
    counts = [
        [dimension, key, count]
        for dimension, values in (
            ("intent", said.responses),
            ("order problem", said.reasons),
            ("channel", said.sources),
        )
        for key, count in values.items()
    ]
    rates = [
        [dimension, row.key, row.sent, row.answered, percent(row.rate)]
        for dimension, rows in (("stage", said.by_stage), ("template", said.by_template))
        for row in rows
    ]
    agreement = [
        [row["inferred"] or "-", row["stated"], row["answers"], "yes" if row["agrees"] else "no"]
        for row in said.agreement
    ]
    return "\n".join(
        [
            summary,
            table(["by", "answer", "count"], counts, text=(0, 1)),
            table(["by", "value", "sent", "answered", "response rate"], rates, text=(0, 1)),
            table(
                ["diagnosed cause", "customer said", "answers", "agree"], agreement, text=(0, 1, 3)
            ),
        ]
    )


def portfolio_table(report: Report) -> str:
    """DSO, best possible DSO, ADD and CEI per currency over the period."""
    if not report.portfolio:
        return table([], [])
    first = report.portfolio[0]
    headers = [
        "currency", "receivables", "credit sales", "DSO", "countback DSO", "best possible DSO",
        "ADD", "CEI",
    ]  # fmt: skip
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
    period = f"<p class='muted'>{first.since} to {first.until} ({first.days} days)</p>"
    variant = f"<p class='muted'>CEI variant: {escape(first.cei_variant)}.</p>"
    return period + table(headers, rows) + variant


def gateway_table(report: Report) -> str:
    """Payments credited to a message (last touch), by the gateway that took them."""
    rows = [
        [group.gateway, group.payments, group.messages, amounts(group.amounts)]
        for group in report.payments_by_gateway
    ]
    note = "<p class='muted'>none: the payment names no gateway (e.g. a bank transfer).</p>"
    return table(["gateway", "payments", "messages", "paid"], rows) + (note if rows else "")


def risk_section(report: Report) -> list[str]:
    """The model of the latest run, its ranking on the last held-out months, the reliability
    plot, and the experiments compared within each risk band."""
    risk = report.risk
    if risk is None:
        return ["<p class='muted'>No risk score yet: the daily run scores customers.</p>"]
    made = (
        f"fitted on {risk['examples']} labelled invoices"
        if risk["kind"] == "fitted"
        else escape(risk["note"] or "the prior scorecard")
    )
    parts = [
        f"<p>Risk: the probability that a customer's next invoices are paid more than "
        f"{risk['late_days']} days late. The run of {risk['as_of']} used a model {made}.</p>"
    ]
    check = risk["check"] or {}
    if check.get("invoices"):
        model = "fitted" if check["kind"] == "fitted" else "the prior scorecard"
        parts.append(
            f"<p>Held-out check: the {check['invoices']} invoices due {check['due_from']} to "
            f"{check['due_until']}, scored by a model ({model}, {check['trained_on']} "
            f"invoices) that knew only what was known on {check['fitted_on']}: "
            f"AUC {_figure(check['auc'])}, Spearman of risk vs days late "
            f"{_figure(check['spearman'])}; {percent(check['late_share'])} were late.</p>"
        )
        parts.append(figure("Reliability: predicted vs observed late share, per decile",
                            reliability_chart(check["deciles"])))  # fmt: skip
    else:
        parts.append("<p class='muted'>Not enough history yet for a held-out check.</p>")
    parts += ["<h3>Experiments by risk band</h3>", experiments_by_risk_table(report)]
    return parts


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def experiments_by_risk_table(report: Report) -> str:
    """Each arm against its holdout within each band of customers (risk when planned)."""
    headers = [
        "experiment", "risk band", "arm", "messages", "cure rate", "holdout messages",
        "holdout cure rate", "uplift", "verdict",
    ]  # fmt: skip
    rows = [
        [
            row.experiment,
            row.risk_band,
            row.variant,
            row.messages,
            percent(row.cure_rate),
            row.holdout_messages,
            percent(row.holdout_rate),
            "-" if row.uplift is None else f"{row.uplift:+.1%}",
            row.verdict,
        ]
        for row in report.experiments_by_risk
    ]
    return table(headers, rows, text=(0, 1, 2, 8))


# Charts ----------------------------------------------------------------------------------------


def svg(body: list[str]) -> str:
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{HEIGHT}' "
        f"viewBox='0 0 {WIDTH} {HEIGHT}' role='img'>" + "".join(body) + "</svg>"
    )


def empty_chart(message: str = "no data yet") -> str:
    """A one-line placeholder, so an empty chart takes no room."""
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='32' "
        f"viewBox='0 0 {WIDTH} 32' role='img'><text x='0' y='20' class='axis'>"
        f"{escape(message)}</text></svg>"
    )


def frame(x_labels: Sequence[str], x_title: str = "", right: int = RIGHT) -> list[str]:
    """Axes with a 0-100% scale, the given x labels evenly spaced, and the x axis's title;
    `right` is the margin kept for a legend."""
    inner_w, bottom = WIDTH - LEFT - right, HEIGHT - BOTTOM
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
    if x_title:
        parts.append(
            f"<text x='{LEFT + inner_w / 2}' y='{HEIGHT - 4}' text-anchor='middle' "
            f"class='axis'>{escape(x_title)}</text>"
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


def colour_rank(name: str, order: Sequence[str]) -> int:
    return order.index(name) if name in order else len(order)


def colour_of(name: str, order: Sequence[str]) -> str:
    """The same colour for a stage in every chart."""
    return COLOURS[colour_rank(name, order) % len(COLOURS)]


def lines(
    series: dict[str, list[float | None]],
    x_labels: Sequence[str],
    order: Sequence[str],
    x_title: str,
) -> str:
    """One polyline per series (None leaves a gap), with a legend on the right in `order`."""
    if not series or not x_labels:
        return empty_chart()
    parts = frame(x_labels, x_title)
    ranked = sorted(series.items(), key=lambda item: colour_rank(item[0], order))
    for number, (name, values) in enumerate(ranked):
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
    return lines(series, months, order, "month of send")


def recovery_chart(curves: dict[str, list[float]], order: Sequence[str]) -> str:
    if not curves:
        return empty_chart()
    days = len(next(iter(curves.values())))
    series: dict[str, list[float | None]] = {stage: list(c) for stage, c in curves.items()}
    return lines(series, [str(day) for day in range(days)], order, "days after the send")


def variants_chart(report: Report) -> str:
    """Bars of cure rate per arm, the holdout first in each experiment, Wilson 95% whiskers;
    under each bar its arm and size, under each group its experiment."""
    groups: list[tuple[str, list[tuple[str, int, int]]]] = []
    for experiment in dict.fromkeys(row.experiment for row in report.experiments):
        arms = [row for row in report.experiments if row.experiment == experiment]
        bars = [(HOLDOUT, arms[0].holdout_cured, arms[0].holdout_messages)]
        bars += [(row.variant, row.cured, row.messages) for row in arms]
        groups.append((experiment, [bar for bar in bars if bar[2]]))
    count = sum(len(bars) for _, bars in groups) + len(groups) - 1  # a gap between groups
    if count <= 0:
        return empty_chart("no experiment yet: give a stage variants and a holdout in the policy")
    parts = frame([], right=16)
    slot = (WIDTH - LEFT - 16) / count
    position = 0
    for experiment, bars in groups:
        start = position
        for arm, cured, n in bars:
            parts += bar(LEFT + position * slot, slot, arm, cured, n, position)
            position += 1
        middle = LEFT + (start + position) / 2 * slot
        parts.append(
            f"<text x='{middle:.1f}' y='{HEIGHT - 4}' text-anchor='middle' class='axis'>"
            f"{escape(experiment)}</text>"
        )
        position += 1
    return svg(parts)


def bar(x: float, slot: float, arm: str, cured: int, n: int, index: int) -> list[str]:
    """One arm: its bar, its 95% Wilson whisker, its rate above and its name and size below."""
    colour = "#999" if arm == HOLDOUT else COLOURS[index % len(COLOURS)]
    rate = cured / n
    low, high = wilson(cured, n)
    left, centre = x + slot * 0.2, x + slot / 2
    return [
        f"<rect x='{left:.1f}' y='{y_of(rate):.1f}' width='{slot * 0.6:.1f}' "
        f"height='{y_of(0) - y_of(rate):.1f}' fill='{colour}'><title>{escape(arm)}: "
        f"{cured} of {n} cured ({rate:.1%})</title></rect>",
        f"<line x1='{centre:.1f}' x2='{centre:.1f}' y1='{y_of(low):.1f}' y2='{y_of(high):.1f}' "
        "stroke='#222' stroke-width='1.5'/>",
        f"<text x='{centre:.1f}' y='{y_of(high) - 4:.1f}' text-anchor='middle'>{rate:.0%}</text>",
        f"<text x='{centre:.1f}' y='{HEIGHT - BOTTOM + 14}' text-anchor='middle'>"
        f"{escape(arm)} ({n})</text>",
    ]


def reliability_chart(deciles: list[dict]) -> str:
    """Observed against predicted late share, one point per decile (its size: invoices), on
    0-100% axes with the diagonal a calibrated model would follow."""
    if not deciles:
        return empty_chart()
    side = HEIGHT - TOP - BOTTOM
    parts = [f"<rect x='0' y='0' width='{WIDTH}' height='{HEIGHT}' fill='white'/>"]
    for tick in range(0, 101, 25):
        x, y = LEFT + tick / 100 * side, y_of(tick / 100)
        parts.append(
            f"<line x1='{LEFT}' x2='{LEFT + side}' y1='{y:.1f}' y2='{y:.1f}' stroke='#eee'/>"
            f"<text x='{LEFT - 6}' y='{y + 4:.1f}' text-anchor='end'>{tick}%</text>"
            f"<text x='{x:.1f}' y='{HEIGHT - BOTTOM + 16}' text-anchor='middle'>{tick}%</text>"
        )
    parts.append(
        f"<line x1='{LEFT}' y1='{y_of(0):.1f}' x2='{LEFT + side}' y2='{y_of(1):.1f}' "
        "stroke='#999' stroke-dasharray='4 3'/>"
        f"<text x='{LEFT + side / 2}' y='{HEIGHT - 4}' text-anchor='middle' class='axis'>"
        "predicted risk (mean of the decile)</text>"
        f"<text x='{LEFT + side + 12}' y='{TOP + 12}' class='axis'>observed late share</text>"
    )
    largest = max(row["invoices"] for row in deciles)
    for row in deciles:
        x, y = LEFT + row["predicted"] * side, y_of(row["observed"])
        radius = 3 + 4 * (row["invoices"] / largest) ** 0.5
        parts.append(
            f"<circle cx='{x:.1f}' cy='{y:.1f}' r='{radius:.1f}' fill='{COLOURS[0]}'>"
            f"<title>predicted {row['predicted']:.1%}, observed {row['observed']:.1%}, "
            f"{row['invoices']} invoices</title></circle>"
        )
    return svg(parts)
