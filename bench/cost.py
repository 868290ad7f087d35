"""What each request costs: CPU-ms per request of each process (utime + stime from
/proc, read at the start and end of a load window) and the Kafka requests the
processes' clients sent per HTTP request (``rdv_kafka_requests_total`` from each
process's /metrics: librdkafka's own counts, by request type).

librdkafka reports its counts every ``statistics.interval.ms`` (the benches set
``STATS_INTERVAL_MS``), so the second Kafka reading waits ``KAFKA_SETTLE_S`` after the
window: those idle seconds' requests (heartbeats, empty fetches) count too, a small
overstatement, said where the figures are printed.
"""

from __future__ import annotations

import os
import time
import urllib.request
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")  # the unit of /proc/<pid>/stat's utime and stime
STATS_INTERVAL_MS = 500
KAFKA_SETTLE_S = 2.5 * STATS_INTERVAL_MS / 1000
"""How long after a window the Kafka counts are read: two reports and a margin."""
STATS_CONFIG = {"statistics.interval.ms": str(STATS_INTERVAL_MS)}
"""What the benches add to RDV_KAFKA_CLIENT_CONFIG for the processes they start."""


def cpu_ms(pid: int) -> float:
    """CPU time (user + system) the process has used, in ms; NaN once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) * 1000.0 / CLK_TCK


def kafka_requests(metrics_url: str) -> dict[str, float]:
    """Request type -> count over every client of one process (its /metrics)."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("rdv_kafka_requests_total{"):
            continue
        labels, _, value = line.rpartition(" ")
        request = labels.split('request="', 1)[1].split('"', 1)[0]
        out[request] = out.get(request, 0.0) + float(value)
    return out


def context_switches(pid: int) -> float:
    """Context switches (voluntary and involuntary) of the process's live threads so far:
    each is a thread that slept and woke, the cost of every hand-off between threads and
    processes (a thread that ended takes its count with it); NaN once the process is gone."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return float("nan")
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
        except OSError:
            continue  # the thread ended meanwhile
    return float(total)


@dataclass
class Reading:
    cpu: dict[str, float]  # process -> CPU ms so far
    kafka: dict[str, dict[str, float]]  # process -> request type -> count so far


class CostMeter:
    """Readings of a set of processes: CPU by pid, Kafka requests by metrics URL."""

    def __init__(self, pids: dict[str, int], metrics: dict[str, str]) -> None:
        self.pids = pids
        self.metrics = metrics

    def cpu(self) -> dict[str, float]:
        return {name: cpu_ms(pid) for name, pid in self.pids.items()}

    def switches(self) -> dict[str, float]:
        return {name: context_switches(pid) for name, pid in self.pids.items()}

    def kafka(self) -> dict[str, dict[str, float]]:
        return {name: kafka_requests(url) for name, url in self.metrics.items()}


def per_request(
    cpu_before: dict[str, float],
    cpu_after: dict[str, float],
    kafka_before: dict[str, dict[str, float]],
    kafka_after: dict[str, dict[str, float]],
    answered: int,
    switches: tuple[dict[str, float], dict[str, float]] | None = None,
) -> dict[str, object]:
    """CPU-ms per request by process and in total, Kafka requests per request by type and
    in total (and by process), for ``answered`` HTTP requests; with ``switches`` (readings
    before and after), context switches per request by process and in total too."""
    n = max(answered, 1)
    cpu = {name: round((cpu_after[name] - cpu_before[name]) / n, 3) for name in cpu_before}
    by_type: dict[str, float] = {}
    by_process: dict[str, float] = {}
    for name, after in kafka_after.items():
        before = kafka_before.get(name, {})
        for request, count in after.items():
            delta = count - before.get(request, 0.0)
            by_type[request] = by_type.get(request, 0.0) + delta
            by_process[name] = by_process.get(name, 0.0) + delta
    out: dict[str, object] = {}
    if switches is not None:
        before_s, after_s = switches
        per = {name: round((after_s[name] - before_s[name]) / n, 2) for name in before_s}
        out["context_switches"] = {**per, "total": round(sum(per.values()), 2)}
    return {
        **out,
        "cpu_ms": {**cpu, "total": round(sum(cpu.values()), 3)},
        "kafka_requests": {
            **{k: round(v / n, 2) for k, v in sorted(by_type.items()) if v},
            "total": round(sum(by_type.values()) / n, 2),
        },
        "kafka_requests_by_process": {k: round(v / n, 2) for k, v in sorted(by_process.items())},
    }


def idle_cpu(meter: CostMeter, seconds: float) -> dict[str, float]:
    """CPU-ms per second of each process and in total over ``seconds`` without load
    (the idle floor: empty fetches, heartbeats, timers; at 100 req/s each 10 ms of it per
    second is 0.1 ms per request)."""
    before = meter.cpu()
    time.sleep(seconds)  # the measured window
    after = meter.cpu()
    out = {name: round((after[name] - before[name]) / seconds, 2) for name in before}
    return {**out, "total": round(sum(out.values()), 2)}


def settle_kafka_counts() -> None:
    """Wait until every client has reported its counts for the window just ended."""
    time.sleep(KAFKA_SETTLE_S)  # librdkafka reports on its own interval: no event to wait on
