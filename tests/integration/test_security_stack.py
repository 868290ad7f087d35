"""Security through real processes: the gateway with API keys and a rate limit from its
environment in front of the whole stack, and no key or password in any process's log."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx

from tests.integration.stack import (
    GATEWAY,
    REPO,
    Launch,
    Worker,
    launch_stack_fixture,  # noqa: F401 - registers the launch_stack fixture here
    model_spec,
)

CLIENT_KEY = "rdv-int-client-3e8b1d7a5c9f2046"  # test values, checked never to leak
ADMIN_KEY = "rdv-int-admin-6a2f9c4e8b1d7053"
WRONG_KEY = "rdv-int-wrong-9d5b3f1a7e2c8064"
POLICY = {
    "endpoint": "guarded",
    "deadline_ms": 5000,
    "models": ["champ"],
    "stages": [{"until_ms": "deadline", "accept": ["champ"]}],
}


def test_the_gateway_enforces_keys_and_rate_limits_from_its_environment(
    launch_stack: Launch,
) -> None:
    stack = launch_stack(  # it waited on /readyz: the probes need no key
        policies=[POLICY],
        workers=[Worker("champ", model_spec("champ", "echo", "champion", ["guarded"]))],
        gateway_env={
            "RDV_GATEWAY_API_KEYS": f"web:client:{CLIENT_KEY},ops:admin:{ADMIN_KEY}",
            "RDV_GATEWAY_RATE_LIMIT_PER_S": "0.05",  # one token per 20 s: no refill here
            "RDV_GATEWAY_RATE_LIMIT_BURST": "3",
            "RDV_GATEWAY_LOG_LEVEL": "DEBUG",
            "RDV_GATEWAY_ACCESS_LOG": "true",
        },
    )
    body = {"inputs": {"text": "hello"}}

    missing = stack.http.post("/v1/infer/guarded", json=body)
    wrong = stack.http.post("/v1/infer/guarded", json=body, headers={"x-api-key": WRONG_KEY})
    answers = [
        stack.http.post("/v1/infer/guarded", json=body, headers=headers)
        for headers in (
            {"Authorization": f"Bearer {CLIENT_KEY}"},
            {"x-api-key": CLIENT_KEY},
            {"Authorization": f"Bearer {CLIENT_KEY}"},
            {"Authorization": f"Bearer {CLIENT_KEY}"},  # past the burst of 3
        )
    ]
    admin = stack.http.post(
        "/v1/infer/guarded", json=body, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )

    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert missing.json()["error"]["code"] == "unauthorized"
    assert wrong.status_code == 401
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    assert answers[0].headers["x-rdv-model"] == "champ"  # answered through the stack
    assert int(answers[3].headers["retry-after"]) >= 1
    assert answers[3].json()["error"]["code"] == "rate_limited"
    assert admin.status_code == 200  # its own bucket
    assert httpx.get(f"{stack.url}/healthz").status_code == 200
    assert stack.metric(GATEWAY, "rdv_gateway_auth_failures_total", reason="missing") == 1
    assert stack.metric(GATEWAY, "rdv_gateway_auth_failures_total", reason="invalid") == 1
    assert stack.metric(GATEWAY, "rdv_gateway_rate_limited_total", key="web") == 1

    logs = {name: proc.log.read_text() for name, proc in stack.procs.items()}
    assert "api keys on" in logs[GATEWAY]
    assert "web (client)" in logs[GATEWAY]
    for name, text in logs.items():
        for key in (CLIENT_KEY, ADMIN_KEY, WRONG_KEY):
            assert key not in text, f"{name}'s log shows a key"


def test_a_gateway_with_bad_kafka_security_settings_stops_without_showing_the_password() -> None:
    password = "int-sasl-Pa55-4c1e9b"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RDV_")}
    env |= {
        "RDV_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "RDV_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "RDV_KAFKA_SASL_PASSWORD": password,  # and no user name: refused at boot
        "RDV_GATEWAY_API_KEYS": f"web:client:{CLIENT_KEY}",
    }
    done = subprocess.run(
        [sys.executable, "-m", "services.gateway"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "needs a username and password" in done.stderr
    assert password not in done.stderr + done.stdout
    assert CLIENT_KEY not in done.stderr + done.stdout
