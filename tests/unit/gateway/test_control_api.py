"""The gateway's control API over an in-memory control ledger: with keys on, only an
admin key changes anything (401 without a key, 403 with a client key, on every route),
and every refusal is a clear JSON error (400, 404, 409, 415, 503), never a 500."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from services.cli.main import main
from services.common.errors import KafkaUnavailableError
from services.common.messages import ControlEntry, PolicyEntry
from services.common.topics import Topics
from services.control.changes import Control
from services.control.state import ControlState
from services.gateway.app import build_app
from services.gateway.settings import GatewaySettings
from tests.factories import policy_doc
from tests.unit.gateway.fakes import FakeBus, running

CLIENT_KEY = "rdv-client-7f3a9c1e5b2d4086"
ADMIN_KEY = "rdv-admin-0b8e6d4c2a1f3957"
KEYS = f"web:client:{CLIENT_KEY},ops:admin:{ADMIN_KEY}"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
CLIENT = {"Authorization": f"Bearer {CLIENT_KEY}"}
SPEC = {"name": "chall", "runtime": "echo", "role": "challenger", "endpoints": ["demo"]}

ROUTES: list[tuple[str, str, Any]] = [  # every control route, with a valid body
    ("GET", "/v1/control/models", None),
    ("GET", "/v1/control/policies/demo", None),
    ("POST", "/v1/control/deploy", {"spec": SPEC}),
    ("POST", "/v1/control/promote", {"model": "slow", "endpoints": ["demo"]}),
    ("POST", "/v1/control/retire", {"model": "slow"}),
    ("PUT", "/v1/control/policies/demo", {"policy": policy_doc(deadline_ms=900)}),
    ("POST", "/v1/control/policies/demo/rollback", {}),
]


class MemoryLedger:
    """The control topic as a list of records; ``down`` makes it refuse like Kafka."""

    def __init__(self) -> None:
        self.records: list[tuple[bytes, ControlEntry | None]] = []
        self.down = False

    def read(self) -> ControlState:
        if self.down:
            raise KafkaUnavailableError("the broker did not answer")
        state = ControlState()
        for key, entry in self.records:
            state.apply(key, entry)
        return state

    def publish(self, entries: Sequence[tuple[bytes, ControlEntry | None]]) -> None:
        self.records += entries


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    folder = tmp_path / "control-policies"
    folder.mkdir()
    (folder / "demo.yaml").write_text(yaml.safe_dump(policy_doc()))
    return folder


@pytest.fixture
def ledger() -> MemoryLedger:
    return MemoryLedger()


def _client(
    policies: Path, ledger: MemoryLedger, topics: Topics, keys: str | None
) -> Iterator[httpx.Client]:
    settings = GatewaySettings(policies=policies, api_keys=keys, max_loop_lag_ms=60_000)
    control = Control(ledger, policies, wall_ms=lambda: 1_700_000_000_000.0)
    with running(build_app(settings, bus=FakeBus(), topics=topics, control=control)) as c:
        yield c


@pytest.fixture
def keyed(policies: Path, ledger: MemoryLedger, topics: Topics) -> Iterator[httpx.Client]:
    yield from _client(policies, ledger, topics, KEYS)


@pytest.fixture
def open_api(policies: Path, ledger: MemoryLedger, topics: Topics) -> Iterator[httpx.Client]:
    yield from _client(policies, ledger, topics, None)


def _call(client: httpx.Client, method: str, path: str, body: Any, **kw: Any) -> httpx.Response:
    return client.request(method, path, json=body, **kw)


def _error(resp: httpx.Response, status: int, code: str) -> str:
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["code"] == code, resp.text
    return str(resp.json()["error"]["message"])


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_a_client_key_gets_403_and_no_key_401_on_every_control_route(
    keyed: httpx.Client, ledger: MemoryLedger, method: str, path: str, body: Any
) -> None:
    _error(_call(keyed, method, path, body, headers=CLIENT), 403, "forbidden")
    missing = _call(keyed, method, path, body)
    _error(missing, 401, "unauthorized")
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert ledger.records == []  # nothing written


def test_an_admin_key_changes_the_policy_and_is_recorded_as_the_changer(
    keyed: httpx.Client, ledger: MemoryLedger
) -> None:
    new = policy_doc(deadline_ms=900)
    resp = keyed.put(
        "/v1/control/policies/demo", json={"policy": new, "by": "alice"}, headers=ADMIN
    )
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"endpoint": "demo", "version": 2, "fallback": None, "restored": None}
    shown = keyed.get("/v1/control/policies/demo", headers=ADMIN).json()
    assert (shown["version"], shown["policy"]["deadline_ms"]) == (2, 900)
    assert shown["origin"] == "control topic"
    assert shown["changed_by"] == "alice (key ops)"
    entry = ledger.read().policies["demo"]
    assert isinstance(entry, PolicyEntry)
    assert entry.changed_by == "alice (key ops)"


def test_a_policy_change_keeps_its_evidence(keyed: httpx.Client, ledger: MemoryLedger) -> None:
    """rdv canary watch's rollback goes through the gateway with its test results."""
    evidence = {"metric": "error_rate", "decision": "worse", "n": 1200, "alpha": 0.05}
    body = {"policy": policy_doc(deadline_ms=900), "evidence": evidence}
    resp = keyed.put("/v1/control/policies/demo", json=body, headers=ADMIN)
    assert resp.status_code == 200, resp.text
    entry = ledger.read().policies["demo"]
    assert isinstance(entry, PolicyEntry)
    assert entry.evidence == evidence


def test_deploy_promote_retire_and_rollback_through_the_api(
    open_api: httpx.Client, ledger: MemoryLedger
) -> None:
    deployed = open_api.post("/v1/control/deploy", json={"spec": SPEC, "by": "bob"})
    assert deployed.status_code == 201, deployed.text
    assert deployed.json()["model"]["role"] == "challenger"
    assert deployed.json()["model"]["changed_by"] == "bob"  # keys off: the body's name
    [model] = open_api.get("/v1/control/models").json()["models"]
    assert model["name"] == "chall"

    promoted = open_api.post("/v1/control/promote", json={"model": "chall"})
    assert promoted.json()["changes"] == [
        {"endpoint": "demo", "version": 2, "fallback": "fast", "restored": None}
    ]
    assert ledger.read().models["chall"].role == "champion"
    assert open_api.get("/v1/control/policies/demo").json()["policy"]["stages"][0] == {
        "until_ms": 300,
        "accept": ["chall"],
    }
    rolled = open_api.post("/v1/control/policies/demo/rollback")  # no body at all
    assert rolled.json() == {
        "endpoint": "demo",
        "version": 3,
        "fallback": None,
        "restored": "1 (the policy file)",
    }

    retired = open_api.post("/v1/control/retire", json={"model": "chall"})
    assert retired.status_code == 200, retired.text
    assert retired.json()["changes"] == []  # the rolled-back policy does not name it
    assert "chall" not in ledger.read().models
    history = open_api.get("/v1/control/policies/demo").json()["history"]
    assert [h["version"] for h in history] == [2, 3]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code", "says"),
    [
        (
            "PUT",
            "/v1/control/policies/demo",
            {"policy": policy_doc(endpoint="chat")},
            400,
            "invalid_request",
            "is the policy of 'chat', not 'demo'",
        ),
        (
            "PUT",
            "/v1/control/policies/demo",
            {"policy": policy_doc(stages=[])},
            400,
            "invalid_request",
            "stages",
        ),
        (
            "PUT",
            "/v1/control/policies/demo",
            {"policy": policy_doc(), "extra": 1},
            400,
            "invalid_request",
            "extra",
        ),
        ("PUT", "/v1/control/policies/demo", {"policy": [1, 2]}, 400, "invalid_request", "policy"),
        (
            "POST",
            "/v1/control/deploy",
            {"spec": SPEC | {"runtime": "nope"}},
            400,
            "invalid_request",
            "unknown runtime",
        ),
        (
            "POST",
            "/v1/control/deploy",
            {"spec": SPEC, "role": "king"},
            400,
            "invalid_request",
            "role",
        ),
        ("POST", "/v1/control/promote", {"model": "fast"}, 404, "not_found", "not registered"),
        (
            "POST",
            "/v1/control/promote",
            {"model": "fast", "endpoints": ["demo"]},
            409,
            "conflict",
            "already the champion",
        ),
        (
            "POST",
            "/v1/control/promote",
            {"model": "x", "endpoints": ["nowhere"]},
            404,
            "not_found",
            "no policy for endpoint 'nowhere'",
        ),
        ("POST", "/v1/control/promote", {"model": "Bad Name!"}, 400, "invalid_request", "model"),
        (
            "POST",
            "/v1/control/retire",
            {"model": "ghost"},
            404,
            "not_found",
            "neither registered nor in any policy",
        ),
        ("POST", "/v1/control/policies/demo/rollback", {}, 409, "conflict", "no earlier version"),
        ("GET", "/v1/control/policies/nowhere", None, 404, "not_found", "nowhere"),
        ("POST", "/v1/control/promote", None, 400, "invalid_request", "empty body"),
    ],
)
def test_refusals_are_clear_json_errors(
    open_api: httpx.Client,
    ledger: MemoryLedger,
    method: str,
    path: str,
    body: Any,
    status: int,
    code: str,
    says: str,
) -> None:
    message = _error(_call(open_api, method, path, body), status, code)
    assert says in message
    assert ledger.records == []


def test_not_json_bad_media_and_kafka_down_are_400_415_503(
    open_api: httpx.Client, ledger: MemoryLedger
) -> None:
    garbage = open_api.post(
        "/v1/control/promote", content=b"{nope", headers={"content-type": "application/json"}
    )
    _error(garbage, 400, "invalid_request")
    text = open_api.post(
        "/v1/control/promote", content=b"x", headers={"content-type": "text/plain"}
    )
    _error(text, 415, "unsupported_media_type")
    ledger.down = True
    down = open_api.get("/v1/control/models")
    _error(down, 503, "kafka_unavailable")
    assert down.headers["retry-after"]


def test_a_gateway_without_a_control_plane_says_so(policies: Path, topics: Topics) -> None:
    settings = GatewaySettings(policies=policies, api_keys=KEYS, max_loop_lag_ms=60_000)
    with running(build_app(settings, bus=FakeBus(), topics=topics)) as client:
        _error(client.get("/v1/control/models", headers=CLIENT), 403, "forbidden")  # first
        message = _error(client.get("/v1/control/models", headers=ADMIN), 400, "unsupported")
    assert "no control API" in message


def test_rdv_goes_through_the_gateway_when_one_is_configured(
    keyed: httpx.Client,
    ledger: MemoryLedger,
    policies: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("RDV_GATEWAY_API_KEYS", raising=False)  # the CLI's own check: off
    monkeypatch.setenv("RDV_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # never reached: the API is
    monkeypatch.setenv("RDV_GATEWAY_URL", str(keyed.base_url))
    new = policies.parent / "new-demo.yaml"
    new.write_text(yaml.safe_dump(policy_doc(deadline_ms=950)))
    set_demo = ["policy", "set", "demo", str(new), "--by", "carol"]

    monkeypatch.setenv("RDV_API_KEY", CLIENT_KEY)
    assert main(set_demo) == 2
    assert "[forbidden]" in capsys.readouterr().err
    monkeypatch.delenv("RDV_API_KEY")
    assert main(set_demo) == 2
    assert "[unauthorized]" in capsys.readouterr().err
    assert ledger.records == []

    monkeypatch.setenv("RDV_API_KEY", ADMIN_KEY)
    assert main(set_demo) == 0
    assert "demo: policy version 2 in force" in capsys.readouterr().out
    assert main(["policy", "show", "demo"]) == 0
    shown = capsys.readouterr().out
    assert "# demo: version 2 (control topic, by carol (key ops) at" in shown
    assert "deadline_ms: 950" in shown
    assert main(["promote", "slow", "--endpoint", "demo"]) == 0
    assert "demo: slow preferred, fallback fast (policy version 3)" in capsys.readouterr().out
    assert main(["policy", "rollback", "demo"]) == 0
    assert "demo: version 2 restored as version 4" in capsys.readouterr().out


def test_rdv_direct_skips_the_gateway_and_a_dead_gateway_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("RDV_GATEWAY_API_KEYS", raising=False)
    monkeypatch.setenv("RDV_GATEWAY_URL", "http://127.0.0.1:1")  # nothing listens
    assert main(["models", "list"]) == 2
    assert "[gateway_unavailable] http://127.0.0.1:1/v1/control/models" in capsys.readouterr().err
    assert main(["models", "list", "--gateway", "ftp://x"]) == 2
    assert "must be http(s)" in capsys.readouterr().err
    monkeypatch.setenv(  # --direct: the CLI's own key guard applies, before Kafka
        "RDV_GATEWAY_API_KEYS", f"ops:admin:{ADMIN_KEY},web:client:{CLIENT_KEY}"
    )
    monkeypatch.setenv("RDV_API_KEY", CLIENT_KEY)
    assert main(["promote", "slow", "--endpoint", "demo", "--direct"]) == 2
    assert "need an admin key" in capsys.readouterr().err
