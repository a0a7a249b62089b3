"""The numbers, aggregated in SQL. Read-only: nothing here writes.

Every query takes a `Scope` (period, optional workflow / agent / action type, and the teams
the viewer may see) so the dashboard, the alerts and the Prometheus endpoint agree. One
module per part of the dashboard: `scope` (the scope and the shared arithmetic), `figures`
(the headline numbers), `trends` (per day and breakdowns), `calibration`, `failures`
(failure modes, outcomes, recent autonomous actions).
"""

from .calibration import calibration
from .failures import failure_cases, failure_cause, outcome_quality, recent_autonomous_actions
from .figures import (
    action_figures,
    cost_figures,
    decision_figures,
    decision_latency,
    run_figures,
    sla_figures,
)
from .scope import APPROVED, BINS, EDITED, DecisionCount, Scope, rate, wilson
from .trends import BREAKDOWNS, breakdown, breakdowns, daily_trend

__all__ = [
    "APPROVED",
    "BINS",
    "BREAKDOWNS",
    "EDITED",
    "DecisionCount",
    "Scope",
    "action_figures",
    "breakdown",
    "breakdowns",
    "calibration",
    "cost_figures",
    "daily_trend",
    "decision_figures",
    "decision_latency",
    "failure_cases",
    "failure_cause",
    "outcome_quality",
    "rate",
    "recent_autonomous_actions",
    "run_figures",
    "sla_figures",
    "wilson",
]
