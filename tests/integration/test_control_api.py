"""Control changes are checked where they are made: the real gateway (API keys on) in
front of the real broker. A client key gets 403 on every control route and the policy
stays as it was (read back through the API and from the control topic itself); no key
gets 401; an admin key changes it, through the API and through ``rdv`` pointed at the
gateway."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from services.common.settings import KafkaSettings
from services.control.store import read_state
from tests.integration.stack import (
    REPO,
    Launch,
    Worker,
    launch_stack_fixture,  # noqa: F401 - registers the launch_stack fixture here
    model_spec,
    service_env,
)

CLIENT_KEY = "rdv-int-client-5d1c8e3a7b9f2064"
ADMIN_KEY = "rdv-int-admin-2b7e4a9c1d5f8036"
POLICY = {
    "endpoint": "guarded",
    "deadline_ms": 5000,
    "models": ["champ"],
    "stages": [{"until_ms": "deadline", "accept": ["champ"]}],
}
NEW_POLICY = POLICY | {"deadline_ms": 4000}
SPEC = {"name": "chall", "runtime": "echo", "role": "challenger", "endpoints": ["guarded"]}
ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/v1/control/models", None),
    ("GET", "/v1/control/policies/guarded", None),
    ("POST", "/v1/control/deploy", {"spec": SPEC}),
    ("POST", "/v1/control/promote", {"model": "chall", "endpoints": ["guarded"]}),
    ("POST", "/v1/control/retire", {"model": "champ"}),
    ("PUT", "/v1/control/policies/guarded", {"policy": NEW_POLICY}),
    ("POST", "/v1/control/policies/guarded/rollback", {}),
]


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _rdv(kafka: KafkaSettings, url: str, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``rdv`` as an operator runs it with a gateway configured."""
    env = service_env(kafka) | {"RDV_GATEWAY_URL": url, "RDV_API_KEY": key}
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_only_an_admin_key_changes_a_policy_through_the_gateway(
    launch_stack: Launch, kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    stack = launch_stack(
        policies=[POLICY],
        workers=[Worker("champ", model_spec("champ", "echo", "champion", ["guarded"]))],
        gateway_env={"RDV_GATEWAY_API_KEYS": f"web:client:{CLIENT_KEY},ops:admin:{ADMIN_KEY}"},
    )
    http = stack.http
    for method, path, body in ROUTES:
        refused = http.request(method, path, json=body, headers=_bearer(CLIENT_KEY))
        assert refused.status_code == 403, f"{method} {path}: {refused.text}"
        assert refused.json()["error"]["code"] == "forbidden"
        missing = http.request(method, path, json=body)
        assert missing.status_code == 401, f"{method} {path}: {missing.text}"

    policy_file = tmp_path / "guarded.yaml"
    policy_file.write_text(json.dumps(NEW_POLICY))  # JSON is YAML
    by_client = _rdv(
        kafka_settings, stack.url, CLIENT_KEY, "policy", "set", "guarded", str(policy_file)
    )
    assert by_client.returncode == 2
    assert "[forbidden]" in by_client.stderr

    shown = http.get("/v1/control/policies/guarded", headers=_bearer(ADMIN_KEY)).json()
    assert (shown["version"], shown["origin"]) == (1, "policy file")  # unchanged
    state = read_state(kafka_settings, stack.topics)
    assert state.policies == {}
    assert state.models == {}  # the refused deploy registered nothing

    changed = http.put(
        "/v1/control/policies/guarded",
        json={"policy": NEW_POLICY, "by": "tester"},
        headers=_bearer(ADMIN_KEY),
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["version"] == 2
    shown = http.get("/v1/control/policies/guarded", headers=_bearer(ADMIN_KEY)).json()
    assert (shown["version"], shown["policy"]["deadline_ms"]) == (2, 4000)
    assert shown["changed_by"] == "tester (key ops)"
    entry = read_state(kafka_settings, stack.topics).policies["guarded"]
    assert (entry.version, entry.policy["deadline_ms"], entry.changed_by) == (
        2,
        4000,
        "tester (key ops)",
    )

    by_admin = _rdv(kafka_settings, stack.url, ADMIN_KEY, "policy", "rollback", "guarded")
    assert by_admin.returncode == 0, by_admin.stderr
    assert "guarded: version 1 (the policy file) restored as version 3" in by_admin.stdout
    assert read_state(kafka_settings, stack.topics).policies["guarded"].version == 3
