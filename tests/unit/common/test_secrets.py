"""No secret in a log line, a dead letter, a repr or an error message: the Kafka SASL
password (registered when ``KafkaSettings`` validates it), credential-shaped text
(``Bearer <token>``, ``password=...``), and fields named like credentials."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Sequence

import pytest
from pydantic import ValidationError

from services.common import redact as redact_module
from services.common.codec import decode, make_dead_letter
from services.common.errors import ConfigError
from services.common.loop import Context, Inbound
from services.common.messages import DeadLetter
from services.common.redact import REDACTED, redact, register_secret, sensitive_name
from services.common.settings import KafkaSettings
from tests.unit.common.test_loop import Scorer, make, rec, req

PASSWORD = "Sasl-pa55word-9d41e"  # a test value, checked never to leak


def sasl_settings(**fields: object) -> KafkaSettings:
    return KafkaSettings.model_validate(
        {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": "svc",
            "sasl_password": PASSWORD,
        }
        | fields
    )


def test_the_sasl_password_never_reaches_a_log_line(json_logs: io.StringIO) -> None:
    settings = sasl_settings()
    log = logging.getLogger("rdv.unit")
    log.info("connecting", extra={"config": settings.security_config()})
    log.warning("kafka said %s", f"authentication failed for svc/{PASSWORD}")
    log.info("a dump", extra={"settings": repr(settings), "sasl_password": PASSWORD})
    try:
        raise ConfigError(f"cannot log in with {PASSWORD}")
    except ConfigError:
        log.exception("failed")

    text = json_logs.getvalue()
    assert PASSWORD not in text
    assert text.count(REDACTED) >= 4
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["config"]["sasl.username"] == "svc"  # the rest is still there
    assert lines[2]["sasl_password"] == REDACTED


def test_a_password_with_json_escapes_is_still_redacted(json_logs: io.StringIO) -> None:
    odd = 'quo"te\\back-slash-é'
    register_secret(odd)
    logging.getLogger("rdv.unit").info("got %s", odd, extra={"value": odd})
    assert json.dumps(odd)[1:-1] not in json_logs.getvalue()
    assert REDACTED in json_logs.getvalue()


def test_dead_letters_of_a_failing_record_hold_no_password(json_logs: io.StringIO) -> None:
    sasl_settings()  # registers the password, as every service's main() does at boot

    class Leaky(Scorer):
        def process(self, batch: Sequence[Inbound], ctx: Context) -> None:
            raise RuntimeError(f"broker refused svc:{PASSWORD} (sasl.password={PASSWORD})")

    loop, _, producer = make([rec(0, req("a"))], Leaky())
    loop.run(max_records=1)

    letters = [o for o in producer.sent if o.topic == "dlq"]
    assert len(letters) == 1
    letter = decode(letters[0].value, DeadLetter)
    assert letter.error_code == "RuntimeError"
    assert REDACTED in letter.error
    assert PASSWORD.encode() not in letters[0].value
    assert PASSWORD not in json_logs.getvalue()  # the loop's log.exception of the batch


def test_make_dead_letter_redacts_credential_shaped_text() -> None:
    letter = make_dead_letter(
        topic="t",
        partition=0,
        offset=1,
        key=None,
        value=b"{}",
        error=ValueError("header Authorization: Bearer tok-123456789 and api_key=abc123"),
        service="unit",
        now_ms=1,
    )
    assert "tok-123456789" not in letter.error
    assert "abc123" not in letter.error


@pytest.mark.parametrize(
    ("text", "hidden"),
    [
        ("Authorization: Bearer abc.def-ghi", "abc.def-ghi"),
        ('{"x-api-key": "k-123"}', "k-123"),
        ("password=hunter2;", "hunter2"),
        ("secret: 's3'", "s3"),
    ],
)
def test_credential_shapes_are_redacted(text: str, hidden: str) -> None:
    assert hidden not in redact(text)
    assert REDACTED in redact(text)


def test_a_secret_inside_another_is_replaced_after_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redact_module, "_secrets", redact_module._Secrets())
    register_secret("inner-7f3a")
    register_secret("outer-inner-7f3a-tail")
    assert redact("x outer-inner-7f3a-tail, inner-7f3a") == f"x {REDACTED}, {REDACTED}"


def test_secrets_registered_while_lines_are_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redact_module, "_secrets", redact_module._Secrets())
    registering = threading.Thread(
        target=lambda: [register_secret(f"unit-secret-{i:05d}") for i in range(2000)]
    )
    registering.start()
    while registering.is_alive():  # no "set changed size during iteration" here
        redact("a line with unit-secret-00001 in it")
    registering.join()
    assert redact("unit-secret-01999, unit-secret-00001") == f"{REDACTED}, {REDACTED}"


@pytest.mark.parametrize(
    ("name", "sensitive"),
    [
        ("sasl_password", True),
        ("api_key", True),
        ("authorization", True),
        ("access_token", True),
        ("max_tokens", False),
        ("prompt_tokens", False),
        ("key", False),
        ("endpoint", False),
    ],
)
def test_sensitive_field_names(name: str, sensitive: bool) -> None:
    assert sensitive_name(name) is sensitive


def test_validation_errors_never_echo_the_password() -> None:
    with pytest.raises(ValidationError) as caught:
        sasl_settings(sasl_username=None, bootstrap=123)
    assert PASSWORD not in str(caught.value)
    with pytest.raises(ValidationError) as caught:
        sasl_settings(security_protocol="SSL ")  # SASL fields without SASL
    assert PASSWORD not in str(caught.value)
    assert PASSWORD not in repr(sasl_settings())
