"""The rendezvous's settings (env prefix ``RDV_RENDEZVOUS_``); Kafka's are KafkaSettings."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO = Path(__file__).resolve().parents[2]


class RendezvousSettings(BaseSettings):
    """How the rendezvous process runs."""

    model_config = SettingsConfigDict(env_prefix="RDV_RENDEZVOUS_", extra="forbid")

    policies: Path = REPO / "deploy" / "policies"
    """A policy file or a folder of them (one endpoint each)."""

    topics_file: Path | None = None
    """The topics file; default the repo's deploy/kafka/topics.yaml."""

    group_id: str = "rdv.rendezvous"
    """Consumer group of the rendezvous instances (they share the partitions); the
    Kafka topic prefix is prepended."""

    instance_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,100}$")
    """This replica's name, unique in the group (e.g. rendezvous-1): its Kafka client.id
    and, with ``static_membership``, its group.instance.id."""

    session_timeout_ms: int = Field(default=1500, ge=1000, le=300_000)
    """How long the group waits for a silent replica before its partitions move to the
    others (classic group protocol): the degraded time when a replica dies is about
    this plus a rebalance (docs/benchmarks.md, "Fast failover": 1.4 s measured at 1500).
    The broker must allow it: group.min.session.timeout.ms (Kafka's default 6000) at
    most this; the local broker allows 1000."""

    heartbeat_interval_ms: int = Field(default=500, ge=100, le=100_000)
    """How often a replica tells the group it is alive; at most a third of the session
    timeout."""

    static_membership: bool = False
    """Join the group as a static member (group.instance.id = instance_id): a replica
    restarted within the session timeout gets its partitions back without a rebalance,
    but a dead one keeps them until the session times out (docs/benchmarks.md, "Fast
    failover")."""

    auto_offset_reset: Literal["latest", "earliest"] = "latest"
    """Where a new group starts reading: "latest" (requests from now on) or "earliest"
    (everything retained, each old request answered at once as past its deadline).
    A group with committed offsets always resumes from them."""

    ops_host: str = "127.0.0.1"
    """Interface of the /healthz, /readyz and /metrics server."""

    ops_port: int = Field(default=9100, ge=0, le=65535)
    """Port of the ops server (0 picks a free one)."""

    batch_size: int = Field(default=256, ge=1, le=10_000)
    """Most records handled per loop turn."""

    idle_poll_ms: float = Field(default=100.0, gt=0, le=1000)
    """Longest wait for records while no mailbox is due sooner: timers (stage
    boundaries, deadlines) fire when due; an idle rendezvous wakes this often (shutdown,
    orphan expiry and gauges happen at most this late)."""

    max_open: int = Field(default=100_000, ge=1)
    """Open mailboxes at most; a request beyond that is answered at once (overloaded)."""

    max_open_bytes: int = Field(default=512 * 2**20, ge=1)
    """Bytes (key + value) of the request and score records held in open mailboxes at
    most; a new request that would pass 90% of it is answered at once (overloaded), a
    score that would pass it is shed (its mailbox decides without it)."""

    max_orphan_bytes: int = Field(default=128 * 2**20, ge=1)
    """Bytes of scores waiting for their request at most; the oldest are dropped."""

    orphan_ttl_ms: float = Field(default=60_000, gt=0)
    """How long a score waits for its request to arrive."""

    catchup_margin_ms: int = Field(default=10_000, ge=0)
    """On partition assignment, decisions and replies written since the oldest
    uncommitted request's timestamp less this margin (clock skew between the gateway's
    and the rendezvous's hosts) are read back, so no request is answered twice after a
    restart, however long it was down (services/rendezvous/readback.py)."""

    request_read_interval_ms: int = Field(default=100, ge=0, le=10_000)
    """The requests topic is read in batches, once per this interval: each score carries
    a copy of its request (``Score.request``), so a request's first score opens its
    mailbox without waiting, and the request record, read later, is only checked off
    (a request no model answered is still answered by its deadline, read at most this
    late). One Kafka fetch brings many requests instead of one each. 0: every request
    is read as soon as it arrives (needed for workers that send no copy)."""

    decision_linger_ms: int = Field(default=500, ge=0, le=5000)
    """Decisions (read by the archive, the comparison and a restarted rendezvous, never
    by a waiting client) go through a producer of their own that waits up to this long
    to send several in one Kafka request; replies leave at once. librdkafka sends one
    request per partition, so the decisions topic's partitions (6) share out the batch:
    at 100 answers a second, 500 ms turns about 100 requests a second into about 12.
    A request's offset is committed only once its decision is written, as before; on a
    rebalance and at shutdown the waiting decisions are sent at once; after a crash
    the new owner records the decisions of replies it finds without one
    (services/rendezvous/readback.py). 0: decisions go out at once with the replies."""

    flush_timeout_s: float = Field(default=10.0, gt=0)
    """How long to wait at shutdown for replies and decisions in flight."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Log level of the JSON logs on stderr."""
