"""Rate limits: the token bucket on a fake clock, and 429 + Retry-After at the gateway
per API key (with per-key overrides) or, with keys off, per client IP."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from services.common.topics import Topics
from services.gateway.app import build_app
from services.gateway.ratelimit import RateLimiter
from services.gateway.settings import GatewaySettings
from tests.unit.gateway.fakes import FakeBus, metric, running

KEY_A = "rdv-key-a-4d2c8e1f6b3a9057"
KEY_B = "rdv-key-b-8a1e5c3d7f9b2064"
BODY = {"inputs": 1}


class FakeClock:
    def __init__(self) -> None:
        self.now_ms = 1_000.0

    def __call__(self) -> float:
        return self.now_ms


def test_a_bucket_allows_the_burst_then_the_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(2.0, 3, clock=clock)
    assert [limiter.take("a") for _ in range(4)] == [0, 0, 0, 1]
    clock.now_ms += 500  # one token back at 2/s
    assert limiter.take("a") == 0
    assert limiter.take("a") == 1
    assert limiter.take("b") == 0  # every caller has its own bucket


def test_retry_after_is_whole_seconds_until_the_next_token() -> None:
    clock = FakeClock()
    limiter = RateLimiter(0.1, 1, clock=clock)  # one token per 10 s
    assert limiter.take("a") == 0
    assert limiter.take("a") == 10
    clock.now_ms += 7_500
    assert limiter.take("a") == 3  # 2.5 s rounded up
    clock.now_ms += 2_500
    assert limiter.take("a") == 0


def test_no_rate_means_no_limit_and_overrides_win() -> None:
    limiter = RateLimiter(None, 1, clock=FakeClock())
    assert all(limiter.take("a") == 0 for _ in range(100))
    assert [limiter.take("k", rate_per_s=1.0, burst=2) for _ in range(3)] == [0, 0, 1]


def test_the_buckets_are_bounded() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1.0, 2, clock=clock, max_buckets=10)
    for i in range(25):
        limiter.take(f"ip-{i}")
        clock.now_ms += 10
    assert len(limiter._buckets) <= 10


# --- at the gateway -------------------------------------------------------------------


def limited(settings: GatewaySettings, **fields: object) -> GatewaySettings:
    return GatewaySettings.model_validate(settings.model_dump() | fields)


def test_a_key_past_its_burst_gets_429_with_retry_after(
    settings: GatewaySettings, bus: FakeBus, topics: Topics
) -> None:
    keys = f"alpha:client:{KEY_A},beta:client:{KEY_B}"
    settings = limited(settings, api_keys=keys, rate_limit_per_s=0.01, rate_limit_burst=2)
    before = metric("rdv_gateway_rate_limited_total", key="alpha")
    a = {"Authorization": f"Bearer {KEY_A}"}
    with running(build_app(settings, bus=bus, topics=topics)) as c:
        answers = [c.post("/v1/infer/demo", json=BODY, headers=a) for _ in range(3)]
        other = c.post("/v1/infer/demo", json=BODY, headers={"x-api-key": KEY_B})
        health = c.get("/healthz")

    assert [r.status_code for r in answers] == [200, 200, 429]
    refused = answers[2]
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["retry-after"].isdigit()
    assert refused.json()["error"]["code"] == "rate_limited"
    assert "alpha" in refused.json()["error"]["message"]
    assert other.status_code == 200  # beta has its own bucket
    assert health.status_code == 200  # probes are never limited
    assert metric("rdv_gateway_rate_limited_total", key="alpha") == before + 1
    assert len(bus.produced) == 3


def test_a_key_file_sets_a_keys_own_limit(
    settings: GatewaySettings, bus: FakeBus, topics: Topics, tmp_path: Path
) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(
        "keys:\n"
        f"  - {{name: tight, role: client, key: {KEY_A}, rate_limit_per_s: 0.01,"
        " rate_limit_burst: 1}\n"
        f"  - {{name: free, role: client, key: {KEY_B}}}\n"  # no default rate: unlimited
    )
    settings = limited(settings, api_keys_file=path)
    with running(build_app(settings, bus=bus, topics=topics)) as c:
        tight = [c.post("/v1/infer/demo", json=BODY, headers={"x-api-key": KEY_A}) for _ in "ab"]
        free = [c.post("/v1/infer/demo", json=BODY, headers={"x-api-key": KEY_B}) for _ in "abcde"]
    assert [r.status_code for r in tight] == [200, 429]
    assert {r.status_code for r in free} == {200}


def test_with_keys_off_the_limit_is_per_client_ip(
    settings: GatewaySettings, bus: FakeBus, topics: Topics
) -> None:
    settings = limited(settings, rate_limit_per_s=0.01, rate_limit_burst=1)
    before = metric("rdv_gateway_rate_limited_total", key="_ip")
    with running(build_app(settings, bus=bus, topics=topics)) as c:
        codes = [c.post("/v1/infer/demo", json=BODY).status_code for _ in range(2)]
    assert codes == [200, 429]
    assert metric("rdv_gateway_rate_limited_total", key="_ip") == before + 1


def test_keys_off_without_a_rate_is_unlimited(client: httpx.Client) -> None:
    assert {client.post("/v1/infer/demo", json=BODY).status_code for _ in range(30)} == {200}


@pytest.mark.parametrize("fields", [{"rate_limit_per_s": 0}, {"rate_limit_burst": 0}])
def test_limits_must_be_positive(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="greater than"):
        GatewaySettings.model_validate(fields)
