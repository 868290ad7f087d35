"""The rendezvous's Prometheus metrics (prefix ``rdv_rendezvous_``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from services.rendezvous.mailbox import StoreCounters

DECISIONS = Counter(
    "rdv_rendezvous_decisions_total", "Requests answered", ["endpoint", "model", "reason"]
)
ELAPSED = Histogram(
    "rdv_rendezvous_decision_seconds",
    "Time from a request's arrival at the rendezvous to its decision",
    ["endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
OPEN = Gauge("rdv_rendezvous_open_mailboxes", "Requests waiting for a decision")
HELD_BYTES = Gauge(
    "rdv_rendezvous_held_bytes",
    "Record bytes held in memory: open mailboxes (requests and scores) or orphan scores",
    ["pool"],
)
LATE = Counter(
    "rdv_rendezvous_late_scores_total", "Scores that came after the decision", ["endpoint", "model"]
)
STORE = Counter(
    "rdv_rendezvous_store_events_total",
    "Mailbox store events: duplicate scores or requests, expired or dropped "
    "orphan scores, requests refused while full (count or bytes) or for a deadline "
    "too far ahead, scores shed while the byte budget was spent",
    ["event"],
)
OOD = Counter(
    "rdv_rendezvous_ood_checks_total",
    "OOD gate findings (flagged, clear, unknown) on endpoints whose policy has a gate",
    ["endpoint", "status"],
)
GRANTS = Counter(
    "rdv_rendezvous_stream_grants_total",
    "Streaming requests granted to a model (its deltas reach the client)",
    ["endpoint", "model"],
)
POLICY_CHANGES = Counter(
    "rdv_rendezvous_policy_changes_total", "Policy changes applied from the control topic"
)
LEARNED_CHANGES = Counter(
    "rdv_rendezvous_learned_changes_total",
    "Learned-reward entries (the bandit's state) applied from the control topic",
)
CATCHUP = Counter(
    "rdv_rendezvous_catchup_decisions_total", "Earlier decisions read back on partition assignment"
)


class CounterSync:
    """Turns the store's plain counts into Prometheus counter increments."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def update(self, counters: StoreCounters) -> None:
        for name, value in vars(counters).items():  # asdict would deep-copy every tick
            if name == "late_scores":
                continue  # counted per endpoint and model where it happens
            delta = value - self._last.get(name, 0)
            if delta > 0:
                STORE.labels(name).inc(delta)
            self._last[name] = value
