"""Measuring what works: outcomes turned into metrics, experiments, reports and segment views.

`metrics.py` aggregates what followed each message (cure, recovery, days to pay) by any
dimension; `portfolio.py` how the ledger as a whole pays (DSO, CEI); `experiments.py` assigns
variants and holdouts and compares them; `report.py` and `report_html.py` put it together for
the terminal, Prefect artifacts and a browser; `segments.py` shows customers per segment,
what-if under another policy, one customer explained.
"""

from collectflow.flows.measure.experiments import (
    HOLDOUT,
    Arms,
    Comparison,
    assign_stage_experiments,
    experiment_results,
    record_assignments,
    uplift_interval,
)
from collectflow.flows.measure.metrics import Figures, breakdown, ratio, round_tenth
from collectflow.flows.measure.portfolio import (
    Portfolio,
    average_days_delinquent,
    cei,
    countback_dso,
    portfolio,
    simple_dso,
)
from collectflow.flows.measure.report import Report, effectiveness_report, report_markdown
from collectflow.flows.measure.report_html import render_html
from collectflow.flows.measure.segments import segments_as_of

__all__ = [
    "HOLDOUT",
    "Arms",
    "Comparison",
    "Figures",
    "Portfolio",
    "Report",
    "assign_stage_experiments",
    "average_days_delinquent",
    "breakdown",
    "cei",
    "countback_dso",
    "effectiveness_report",
    "experiment_results",
    "portfolio",
    "ratio",
    "record_assignments",
    "render_html",
    "report_markdown",
    "round_tenth",
    "segments_as_of",
    "simple_dso",
    "uplift_interval",
]
