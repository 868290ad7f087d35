"""Kafka SASL_SSL/TLS settings for real clusters: what is refused at boot, and the
librdkafka configuration every client role gets from what is accepted."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from services.common.kafka import admin_config, consumer_config, producer_config
from services.common.settings import KafkaSettings

PASSWORD = "scram-Pa55-71c0"
KEY_PASSWORD = "pem-Pa55-2b9e"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No RDV_KAFKA_ variable of the calling shell leaks into these tests."""
    for name in [n for n in os.environ if n.startswith("RDV_KAFKA_")]:
        monkeypatch.delenv(name)


def settings(**fields: object) -> KafkaSettings:
    return KafkaSettings.model_validate({"bootstrap": "k1:9093", **fields})


SASL_SSL = {
    "security_protocol": "SASL_SSL",
    "sasl_mechanism": "SCRAM-SHA-512",
    "sasl_username": "svc",
    "sasl_password": PASSWORD,
    "ssl_ca_location": "/etc/kafka/ca.pem",
}


def test_sasl_ssl_reaches_every_client_role() -> None:
    s = settings(**SASL_SSL)
    expected = {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "svc",
        "sasl.password": PASSWORD,
        "ssl.ca.location": "/etc/kafka/ca.pem",
        "ssl.endpoint.identification.algorithm": "https",
    }
    for conf in (producer_config(s, "p"), consumer_config(s, "g", "c"), admin_config(s)):
        assert {k: conf[k] for k in expected} == expected
        assert conf["bootstrap.servers"] == "k1:9093"


def test_mutual_tls_with_a_key_passphrase() -> None:
    s = settings(
        security_protocol="ssl",  # case does not matter
        ssl_ca_location="/ca.pem",
        ssl_certificate_location="/client.pem",
        ssl_key_location="/client.key",
        ssl_key_password=KEY_PASSWORD,
        ssl_verify_hostname=False,
    )
    assert s.security_config() == {
        "security.protocol": "SSL",
        "ssl.ca.location": "/ca.pem",
        "ssl.certificate.location": "/client.pem",
        "ssl.key.location": "/client.key",
        "ssl.key.password": KEY_PASSWORD,
        "ssl.endpoint.identification.algorithm": "none",
    }
    assert KEY_PASSWORD not in repr(s)


def test_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for field, value in SASL_SSL.items():
        monkeypatch.setenv(f"RDV_KAFKA_{field.upper()}", value)
    assert settings().security_config()["sasl.password"] == PASSWORD


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"security_protocol": "TLS"}, "must be one of PLAINTEXT, SSL"),
        ({"security_protocol": "SASL_SSL"}, "needs a sasl_mechanism"),
        ({**SASL_SSL, "sasl_mechanism": "MD5"}, "must be one of PLAIN"),
        ({**SASL_SSL, "sasl_password": None}, "needs a username and password"),
        ({**SASL_SSL, "sasl_password": ""}, "needs a username and password"),
        ({**SASL_SSL, "sasl_username": None}, "needs a username and password"),
        ({**SASL_SSL, "security_protocol": "SSL"}, "SASL settings need"),
        ({"sasl_username": "svc"}, "SASL settings need"),
        ({"ssl_ca_location": "/ca.pem"}, "ssl_\\* settings need"),
        (
            {"security_protocol": "SSL", "ssl_certificate_location": "/c.pem"},
            "go together",
        ),
        ({"client_config": {"sasl.password": PASSWORD}}, "may not be set here"),
        ({"client_config": {"ssl.key.password": PASSWORD}}, "RDV_KAFKA_SSL_KEY_PASSWORD"),
    ],
    ids=[
        "unknown-protocol",
        "sasl-without-mechanism",
        "unknown-mechanism",
        "scram-without-password",
        "scram-with-empty-password",
        "scram-without-username",
        "sasl-fields-on-ssl",
        "sasl-fields-on-plaintext",
        "ssl-fields-on-plaintext",
        "certificate-without-key",
        "password-in-client-config",
        "key-password-in-client-config",
    ],
)
def test_inconsistent_settings_are_refused_without_showing_secrets(
    fields: dict[str, object], problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem) as caught:
        settings(**fields)
    assert PASSWORD not in str(caught.value)


def test_mechanisms_without_a_password_need_none() -> None:
    for mechanism in ("GSSAPI", "OAUTHBEARER"):
        s = settings(security_protocol="SASL_SSL", sasl_mechanism=mechanism.lower())
        assert s.security_config()["sasl.mechanism"] == mechanism
