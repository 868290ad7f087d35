"""The compare service's Prometheus metrics (prefix ``rdv_compare_``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

REPORTS = Counter(
    "rdv_compare_reports_total",
    "GET /v1/experiments/compare answers by HTTP status",
    ["status"],
)
DRIFT_CHECKS = Counter(
    "rdv_compare_drift_checks_total", "Periodic drift checks by outcome (ok, failed)", ["outcome"]
)
DRIFT_PSI = Gauge(
    "rdv_compare_drift_psi",
    "Population stability index of a canary's or detector's outputs, last window vs reference",
    ["signal"],
)
DRIFT_KS = Gauge(
    "rdv_compare_drift_ks", "Two-sample KS statistic, last window vs reference", ["signal"]
)
DRIFT_ALERT = Gauge("rdv_compare_drift_alert", "1 when the PSI is above 0.25", ["signal"])
LEARNED = Counter(
    "rdv_compare_learned_entries_total",
    "learned/<endpoint> control entries the learner wrote (the bandit's rewards)",
)
LEARN_FAILURES = Counter(
    "rdv_compare_learn_failures_total", "Learning steps that failed (archive read or publish)"
)
