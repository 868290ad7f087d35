"""Gateway settings (env prefix ``RDV_GATEWAY_``); only ``main()`` reads the environment."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_POLICIES = REPO_ROOT / "deploy" / "policies"


class GatewaySettings(BaseSettings):
    """How the gateway serves HTTP and waits for replies (env prefix ``RDV_GATEWAY_``)."""

    # hide_input_in_errors: a validation error must not echo a value back (an API key)
    model_config = SettingsConfigDict(
        env_prefix="RDV_GATEWAY_", extra="forbid", hide_input_in_errors=True
    )

    host: str = "127.0.0.1"
    """Interface to listen on (0.0.0.0 for every interface)."""

    port: int = Field(default=8080, ge=0, le=65535)
    """TCP port to listen on (0 picks a free one)."""

    policies: Path = DEFAULT_POLICIES
    """A policy file or a folder of them (*.yaml, *.yml, *.json): the endpoints served
    and the longest deadline each allows."""

    topics_file: Path | None = None
    """The topics file; None means the repo's deploy/kafka/topics.yaml."""

    reply_partition: int = Field(default=0, ge=0)
    """The partition of the replies topic this instance reads its replies from (its
    return address); give every gateway instance its own."""

    max_in_flight: int = Field(default=1000, ge=1)
    """Requests waiting for a reply at once; more are refused with 503 + Retry-After."""

    max_pending_bytes: int = Field(default=256 * 2**20, ge=1)
    """Bytes of the requests (their envelopes) waiting for a reply at once; a request
    that would pass it is refused with 503 + Retry-After."""

    max_loop_lag_ms: float = Field(default=50.0, gt=0)
    """When the event loop runs this late (the gateway's CPU is saturated and requests
    queue before any handler sees them), new requests get 503 + Retry-After at once."""

    loop_lag_interval_ms: float = Field(default=20.0, gt=0, le=1000)
    """How often the event loop's lag is read (a timer that measures how late it fires);
    each reading is a wake-up of an idle gateway."""

    reply_poll_ms: float = Field(default=100.0, gt=0, le=1000)
    """How long the reply thread waits for a reply when none is waiting. A reply ends
    the wait at once; this bounds only how late an idle gateway serves the producer's
    delivery reports (a request the broker refused fails this much later) and notices
    a broker back from an outage."""

    max_body_bytes: int = Field(default=1_048_576, ge=1)
    """Largest request body accepted; larger ones get 413 and never reach Kafka."""

    grace_ms: int = Field(default=30, ge=0, le=10_000)
    """How long after a request's deadline the gateway still waits for its reply
    before answering 504 itself."""

    retry_after_s: int = Field(default=1, ge=0, le=3600)
    """The Retry-After value (seconds) sent with every 503."""

    flush_timeout_s: float = Field(default=5.0, ge=0.0, le=120.0)
    """At shutdown, how long to wait for produced requests to be acknowledged."""

    log_level: str = "INFO"
    """Log level of the structured (JSON lines) logs on stderr."""

    access_log: bool = False
    """Log one line per HTTP request (uvicorn's access log)."""

    api_keys: SecretStr | None = None
    """API keys as ``name:role:key`` entries separated by commas (role ``client`` or
    ``admin``). With no keys here nor in ``api_keys_file`` the gateway is open (the local
    dev profile); with any, every route but /healthz, /readyz and /metrics needs one."""

    api_keys_file: Path | None = None
    """A YAML file of API keys (see README "Security"): a name, a role, the key or only
    its SHA-256 digest, and optional per-key rate limits."""

    rate_limit_per_s: float | None = Field(default=None, gt=0)
    """Requests per second each API key may make (a token bucket; over it: 429 +
    Retry-After). With keys off it limits each client IP instead. None: no limit."""

    rate_limit_burst: int = Field(default=20, ge=1)
    """How many requests a key (or IP) may make at once before the rate applies."""
