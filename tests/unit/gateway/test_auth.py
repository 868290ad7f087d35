"""API keys at the gateway over the in-memory bus: 401 + WWW-Authenticate without a
right key, 200 with one (Bearer, x-api-key, the openai client), keys off = open, the
health endpoints always open, admin-only routes, and no key in logs or records."""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from services.common.errors import ConfigError
from services.common.topics import Topics
from services.gateway.app import build_app
from services.gateway.auth import AdminOnly, RequireAdmin
from services.gateway.errors import install_error_handlers
from services.gateway.keys import KeyRing, load_keys
from services.gateway.settings import GatewaySettings
from tests.unit.gateway.fakes import FakeBus, metric, running
from tests.unit.gateway.test_openai import USER, answer

CLIENT_KEY = "rdv-client-7f3a9c1e5b2d4086"  # test values, checked never to leak
ADMIN_KEY = "rdv-admin-0b8e6d4c2a1f3957"
WRONG_KEY = "rdv-wrong-5c7e9a1b3d5f7092"
KEYS = f"web:client:{CLIENT_KEY},ops:admin:{ADMIN_KEY}"
BODY = {"inputs": {"text": "hi"}}


def with_admin_route(app: FastAPI) -> FastAPI:
    """A test-only control route (the gateway has no admin routes yet)."""

    @app.post("/v1/admin/ping", dependencies=[AdminOnly])
    async def ping() -> JSONResponse:
        return JSONResponse({"pong": True})

    @app.get("/v1/admin/whoami")
    async def whoami(_: RequireAdmin) -> JSONResponse:
        return JSONResponse({"admin": True})

    return app


@pytest.fixture
def keyed(settings: GatewaySettings) -> GatewaySettings:
    return GatewaySettings.model_validate(settings.model_dump() | {"api_keys": KEYS})


@pytest.fixture
def keyed_client(keyed: GatewaySettings, bus: FakeBus, topics: Topics) -> Iterator[httpx.Client]:
    with running(with_admin_route(build_app(keyed, bus=bus, topics=topics))) as c:
        yield c


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# --- keys on --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "reason", "challenge"),
    [
        ({}, "missing", 'Bearer realm="rendezvous"'),
        (bearer(WRONG_KEY), "invalid", 'Bearer realm="rendezvous", error="invalid_token"'),
        ({"x-api-key": WRONG_KEY}, "invalid", 'Bearer realm="rendezvous", error="invalid_token"'),
        ({"Authorization": f"Basic {CLIENT_KEY}"}, "malformed", 'error="invalid_token"'),
        ({"Authorization": "Bearer"}, "malformed", 'error="invalid_token"'),
    ],
    ids=["missing", "wrong-bearer", "wrong-x-api-key", "not-bearer", "empty-bearer"],
)
def test_without_a_right_key_the_answer_is_401_with_a_challenge(
    keyed_client: httpx.Client,
    bus: FakeBus,
    headers: dict[str, str],
    reason: str,
    challenge: str,
) -> None:
    before = metric("rdv_gateway_auth_failures_total", reason=reason)

    resp = keyed_client.post("/v1/infer/demo", json=BODY, headers=headers)

    assert resp.status_code == 401
    assert resp.headers["www-authenticate"].startswith("Bearer ")
    assert challenge in resp.headers["www-authenticate"]
    assert resp.json()["error"]["code"] == "unauthorized"
    assert set(resp.json()) == {"error"}
    assert metric("rdv_gateway_auth_failures_total", reason=reason) == before + 1
    assert bus.produced == []  # refused before the body was read: nothing reached Kafka


@pytest.mark.parametrize(
    "headers",
    [bearer(CLIENT_KEY), {"x-api-key": CLIENT_KEY}, {"authorization": f"bearer {ADMIN_KEY}"}],
    ids=["bearer", "x-api-key", "admin-key-lowercase-scheme"],
)
def test_a_right_key_is_served(keyed_client: httpx.Client, headers: dict[str, str]) -> None:
    resp = keyed_client.post("/v1/infer/demo", json=BODY, headers=headers)
    assert resp.status_code == 200, resp.text
    assert resp.json()["output"] == "yes"


def test_every_other_route_needs_a_key_unknown_ones_too(keyed_client: httpx.Client) -> None:
    for method, path in [("GET", "/v1/models"), ("POST", "/v1/feedback"), ("GET", "/nope")]:
        assert keyed_client.request(method, path).status_code == 401, path
    assert keyed_client.get("/v1/models", headers=bearer(CLIENT_KEY)).status_code == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_health_and_metrics_stay_open(keyed_client: httpx.Client, path: str) -> None:
    assert keyed_client.get(path).status_code == 200


def test_keys_off_is_open(client: httpx.Client) -> None:
    assert client.post("/v1/infer/demo", json=BODY).status_code == 200
    assert client.post("/v1/infer/demo", json=BODY, headers=bearer(WRONG_KEY)).status_code == 200


def test_the_openai_client_sends_its_api_key(
    chat_settings: GatewaySettings, bus: FakeBus, topics: Topics
) -> None:
    settings = GatewaySettings.model_validate(chat_settings.model_dump() | {"api_keys": KEYS})
    bus.responder = answer("Paris.")
    with running(build_app(settings, bus=bus, topics=topics)) as http:
        url = f"{str(http.base_url).rstrip('/')}/v1"
        with openai.OpenAI(base_url=url, api_key=CLIENT_KEY, max_retries=0) as good:
            resp = good.chat.completions.create(model="chat", messages=USER)  # type: ignore[arg-type]
            assert resp.choices[0].message.content == "Paris."
        with (
            openai.OpenAI(base_url=url, api_key=WRONG_KEY, max_retries=0) as bad,
            pytest.raises(openai.AuthenticationError) as caught,
        ):
            bad.chat.completions.create(model="chat", messages=USER)  # type: ignore[arg-type]
    assert caught.value.status_code == 401


# --- admin routes ---------------------------------------------------------------------


@pytest.mark.parametrize("route", [("POST", "/v1/admin/ping"), ("GET", "/v1/admin/whoami")])
def test_admin_routes_need_an_admin_key(keyed_client: httpx.Client, route: tuple[str, str]) -> None:
    method, path = route
    before = metric("rdv_gateway_auth_failures_total", reason="forbidden")

    refused = keyed_client.request(method, path, headers=bearer(CLIENT_KEY))
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "forbidden"
    assert "web" in refused.json()["error"]["message"]  # the key's name, never the key
    assert metric("rdv_gateway_auth_failures_total", reason="forbidden") == before + 1
    assert keyed_client.request(method, path).status_code == 401
    assert keyed_client.request(method, path, headers=bearer(ADMIN_KEY)).status_code == 200


def test_admin_routes_are_open_with_keys_off(
    settings: GatewaySettings, bus: FakeBus, topics: Topics
) -> None:
    with running(with_admin_route(build_app(settings, bus=bus, topics=topics))) as c:
        assert c.post("/v1/admin/ping").status_code == 200


def test_require_admin_fails_closed_without_the_checks() -> None:
    app = with_admin_route(FastAPI())
    install_error_handlers(app, retry_after_s=1)
    with running(app) as c:
        assert c.post("/v1/admin/ping").status_code == 403


# --- where keys come from -------------------------------------------------------------


def test_a_key_file_may_hold_only_digests(tmp_path: Path) -> None:
    digest = hashlib.sha256(ADMIN_KEY.encode()).hexdigest()
    path = tmp_path / "keys.yaml"
    path.write_text(
        "keys:\n"
        f"  - {{name: ops, role: admin, key_sha256: {digest}}}\n"
        f"  - {{name: web, role: client, key: {CLIENT_KEY}, rate_limit_burst: 3}}\n"
    )
    ring = load_keys(GatewaySettings(api_keys_file=path))
    assert ring.enabled
    admin, web = ring.identify(ADMIN_KEY), ring.identify(CLIENT_KEY)
    assert admin is not None
    assert (admin.name, admin.role) == ("ops", "admin")
    assert web is not None
    assert web.rate_limit_burst == 3
    assert ring.identify(WRONG_KEY) is None
    assert CLIENT_KEY not in repr(ring.keys)  # only digests are kept


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (f"web:client:{CLIENT_KEY},web:admin:{ADMIN_KEY}", "unique"),
        (f"web:root:{CLIENT_KEY}", "role"),
        (f"web-{CLIENT_KEY}", "name:role:key"),
        ("web:client:short", "at least 16"),
        (f"a:client:{CLIENT_KEY},b:admin:{CLIENT_KEY}", "same key"),
    ],
    ids=["duplicate-name", "bad-role", "no-colons", "short-key", "duplicate-key"],
)
def test_bad_keys_are_refused_without_showing_the_key(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as caught:
        load_keys(GatewaySettings(api_keys=text))
    assert CLIENT_KEY not in str(caught.value)
    assert "short" not in str(caught.value).replace("short-key", "")


def test_settings_never_show_the_keys() -> None:
    settings = GatewaySettings(api_keys=KEYS)
    for shown in (repr(settings), str(settings), settings.model_dump_json()):
        assert CLIENT_KEY not in shown
    with pytest.raises(ValidationError) as caught:
        GatewaySettings(api_keys=KEYS, rate_limit_burst=0, port=-1)  # type: ignore[arg-type]
    assert CLIENT_KEY not in str(caught.value)


def test_an_empty_key_ring_is_off() -> None:
    assert not KeyRing().enabled
    assert not load_keys(GatewaySettings()).enabled


# --- no key in logs or records --------------------------------------------------------


def test_keys_never_reach_logs_or_records(
    keyed: GatewaySettings, bus: FakeBus, topics: Topics, json_logs: io.StringIO
) -> None:
    app = with_admin_route(build_app(keyed, bus=bus, topics=topics))
    with running(app) as c:
        for headers in (bearer(CLIENT_KEY), {"x-api-key": ADMIN_KEY}, bearer(WRONG_KEY), {}):
            c.post("/v1/infer/demo", json=BODY, headers=headers)
            c.post("/v1/admin/ping", headers=headers)
        logging.getLogger("rdv.test").warning(
            "a careless line", extra={"authorization": f"Bearer {CLIENT_KEY}"}
        )
        logging.getLogger("rdv.test").warning("header was Bearer %s", WRONG_KEY)

    logs = json_logs.getvalue()
    assert "api keys on" in logs
    assert "web (client)" in logs
    assert "request refused" in logs
    records = b"".join(o.value for o in bus.produced) + b"".join(
        v for v in bus.dead_lettered if v is not None
    )
    assert len(bus.produced) == 2
    for key in (CLIENT_KEY, ADMIN_KEY, WRONG_KEY):
        assert key not in logs
        assert key.encode() not in records
