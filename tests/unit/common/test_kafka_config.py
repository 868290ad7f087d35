"""Kafka client configuration: merge order, pinned properties, roles, and settings."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import confluent_kafka
import pytest
from pydantic import SecretStr, ValidationError

from services.common.errors import ConfigError, KafkaUnavailableError
from services.common.kafka import (
    CLIENT_DEFAULTS,
    CONSUMER_PINNED,
    PRODUCER_PINNED,
    admin,
    admin_config,
    assigned_reader,
    consumer_config,
    merge_config,
    producer_config,
)
from services.common.settings import KafkaSettings

PASSWORD = "s3cr3t-Pa55"  # a test value, checked never to leak


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No RDV_KAFKA_ variable of the calling shell leaks into these tests."""
    for name in [
        "RDV_KAFKA_BOOTSTRAP",
        "RDV_KAFKA_TOPIC_PREFIX",
        "RDV_KAFKA_SECURITY_PROTOCOL",
        "RDV_KAFKA_SASL_MECHANISM",
        "RDV_KAFKA_SASL_USERNAME",
        "RDV_KAFKA_SASL_PASSWORD",
        "RDV_KAFKA_SSL_CA_LOCATION",
        "RDV_KAFKA_SSL_CERTIFICATE_LOCATION",
        "RDV_KAFKA_SSL_KEY_LOCATION",
        "RDV_KAFKA_SSL_KEY_PASSWORD",
        "RDV_KAFKA_SSL_VERIFY_HOSTNAME",
        "RDV_KAFKA_CLIENT_CONFIG",
    ]:
        monkeypatch.delenv(name, raising=False)


def _settings(**fields: object) -> KafkaSettings:
    return KafkaSettings.model_validate({"bootstrap": "broker-a:9092", **fields})


# --- merge_config -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        (({"a": "1"}, {"a": "2"}), {"a": "2"}),
        (({"a": "1"}, {"b": "2"}, {"a": "3"}), {"a": "3", "b": "2"}),
        (({"a": "1", "b": "1"}, {}, {"b": "9"}), {"a": "1", "b": "9"}),
        ((), {}),
    ],
    ids=["later-wins", "last-of-three-wins", "empty-layer-keeps", "no-layers"],
)
def test_merge_later_layers_override_earlier(
    layers: tuple[dict[str, str], ...], expected: dict[str, str]
) -> None:
    assert merge_config(*layers, pinned={}) == expected


def test_merge_turns_values_into_strings() -> None:
    merged = merge_config({"linger.ms": 5, "flag": True}, pinned={})  # type: ignore[dict-item]
    assert merged == {"linger.ms": "5", "flag": "True"}


def test_merge_does_not_modify_its_inputs() -> None:
    first, second = {"a": "1"}, {"a": "2"}
    merge_config(first, second, pinned={"p": "x"})
    assert first == {"a": "1"}
    assert second == {"a": "2"}


def test_merge_adds_pinned_properties_after_the_layers() -> None:
    merged = merge_config({"a": "1"}, pinned={"p": "x"})
    assert merged == {"a": "1", "p": "x"}


@pytest.mark.parametrize(
    ("key", "bad"),
    [
        ("enable.idempotence", "false"),
        ("acks", "1"),
        ("partitioner", "consistent_random"),
    ],
)
def test_merge_rejects_a_pinned_property_with_another_value(key: str, bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        merge_config({"linger.ms": "0"}, {key: bad}, pinned=PRODUCER_PINNED)
    assert key in str(info.value)
    assert bad in str(info.value)
    assert info.value.code == "bad_config"


def test_merge_accepts_a_pinned_property_with_the_same_value() -> None:
    merged = merge_config({"acks": "all", "enable.idempotence": "true"}, pinned=PRODUCER_PINNED)
    assert merged == PRODUCER_PINNED


# --- producer / consumer / admin ---------------------------------------------------


def test_producer_config_pins_delivery_and_partitioner() -> None:
    conf = producer_config(_settings(), client_id="gw-1")
    assert conf["enable.idempotence"] == "true"
    assert conf["acks"] == "all"
    assert conf["partitioner"] == "murmur2_random"
    assert conf["bootstrap.servers"] == "broker-a:9092"
    assert conf["client.id"] == "gw-1"
    assert conf["security.protocol"] == "PLAINTEXT"


def test_user_client_config_overrides_a_producer_default() -> None:
    default = producer_config(_settings(), "p")["linger.ms"]
    conf = producer_config(_settings(client_config={"linger.ms": "7"}), "p")
    assert default != "7"
    assert conf["linger.ms"] == "7"


@pytest.mark.parametrize(("key", "value"), [("acks", "1"), ("enable.idempotence", "false")])
def test_user_client_config_cannot_change_a_producer_pin(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        producer_config(_settings(client_config={key: value}), "p")


def test_consumer_config_stores_offsets_only_when_told() -> None:
    conf = consumer_config(_settings(), group_id="workers.fraud", client_id="w-1")
    assert conf["enable.auto.offset.store"] == "false"
    assert conf["group.id"] == "workers.fraud"
    assert conf["client.id"] == "w-1"
    assert conf["bootstrap.servers"] == "broker-a:9092"
    # librdkafka's default is 45 s; failover must be much faster than that.
    assert int(conf["session.timeout.ms"]) <= 10_000
    assert int(conf["heartbeat.interval.ms"]) < int(conf["session.timeout.ms"])
    assert "partitioner" not in conf  # producer-only pins stay out of consumers


def test_consumer_overrides_come_after_the_user_config() -> None:
    settings = _settings(client_config={"auto.offset.reset": "latest", "fetch.wait.max.ms": "9"})
    conf = consumer_config(settings, "g", "c", overrides={"auto.offset.reset": "earliest"})
    assert conf["auto.offset.reset"] == "earliest"
    assert conf["fetch.wait.max.ms"] == "9"


@pytest.mark.parametrize(
    "source", ["client_config", "overrides"], ids=["from-settings", "from-overrides"]
)
def test_consumer_offset_store_pin_cannot_be_overridden(source: str) -> None:
    bad = {"enable.auto.offset.store": "true"}
    settings = _settings(client_config=bad if source == "client_config" else {})
    overrides = bad if source == "overrides" else None
    with pytest.raises(ConfigError, match=re.escape("enable.auto.offset.store")):
        consumer_config(settings, "g", "c", overrides=overrides)


def test_consumer_pin_is_applied() -> None:
    conf = consumer_config(_settings(), "g", "c")
    assert {k: conf[k] for k in CONSUMER_PINNED} == CONSUMER_PINNED


def test_admin_config_has_bootstrap_security_and_user_config_only() -> None:
    settings = _settings(security_protocol="SSL", client_config={"socket.timeout.ms": "5000"})
    assert admin_config(settings) == {
        **CLIENT_DEFAULTS,
        "bootstrap.servers": "broker-a:9092",
        "security.protocol": "SSL",
        "ssl.endpoint.identification.algorithm": "https",
        "socket.timeout.ms": "5000",
    }


@pytest.mark.parametrize("role", ["producer", "consumer", "admin"])
def test_every_client_reconnects_within_half_a_second_after_an_outage(role: str) -> None:
    """librdkafka's default backs off a refusing broker up to 10 s: services would wait
    that long after the broker came back (issue 11: 8 s of 504 after a broker restart)."""
    settings = _settings()
    conf = {
        "producer": lambda: producer_config(settings, "p"),
        "consumer": lambda: consumer_config(settings, "g", "c"),
        "admin": lambda: admin_config(settings),
    }[role]()
    assert int(conf["reconnect.backoff.max.ms"]) <= 500
    assert int(conf["retry.backoff.max.ms"]) <= 500
    assert int(conf["reconnect.backoff.ms"]) <= int(conf["reconnect.backoff.max.ms"])


@pytest.mark.parametrize(
    "source", ["client_config", "overrides"], ids=["from-settings", "from-overrides"]
)
def test_the_consumer_group_protocol_drops_classic_properties(source: str) -> None:
    chosen = {"group.protocol": "consumer"}
    settings = _settings(client_config=chosen if source == "client_config" else {})
    conf = consumer_config(settings, "g", "c", chosen if source == "overrides" else None)
    assert not {
        "session.timeout.ms",
        "heartbeat.interval.ms",
        "partition.assignment.strategy",
    }.intersection(conf)
    assert conf["group.remote.assignor"] == "range"  # co-partitioned topics stay together
    confluent_kafka.Consumer(conf).close()  # librdkafka accepts it (no broker is contacted)


def test_a_classic_property_with_the_consumer_group_protocol_is_a_clear_error() -> None:
    settings = _settings(client_config={"group.protocol": "consumer", "session.timeout.ms": "1"})
    with pytest.raises(ConfigError, match=r"session\.timeout\.ms is not used"):
        consumer_config(settings, "g", "c")


def test_user_config_can_override_security_properties() -> None:
    settings = _settings(security_protocol="SSL", client_config={"security.protocol": "SASL_SSL"})
    assert producer_config(settings, "p")["security.protocol"] == "SASL_SSL"


# --- security_config -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, {"security.protocol": "PLAINTEXT"}),
        (
            {"security_protocol": "SSL", "ssl_ca_location": "/etc/ca.pem"},
            {
                "security.protocol": "SSL",
                "ssl.ca.location": "/etc/ca.pem",
                "ssl.endpoint.identification.algorithm": "https",
            },
        ),
        (
            {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_username": "svc",
                "sasl_password": PASSWORD,
                "ssl_ca_location": "/etc/ca.pem",
            },
            {
                "security.protocol": "SASL_SSL",
                "sasl.mechanism": "SCRAM-SHA-512",
                "sasl.username": "svc",
                "sasl.password": PASSWORD,
                "ssl.ca.location": "/etc/ca.pem",
                "ssl.endpoint.identification.algorithm": "https",
            },
        ),
        (
            {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "GSSAPI"},
            {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "GSSAPI"},
        ),
    ],
    ids=["plaintext", "ssl", "sasl-ssl", "sasl-gssapi-without-password"],
)
def test_security_config_maps_fields(fields: dict[str, object], expected: dict[str, str]) -> None:
    assert _settings(**fields).security_config() == expected


def test_security_config_reaches_every_client_role() -> None:
    settings = _settings(
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_username="svc",
        sasl_password=PASSWORD,
    )
    for conf in (
        producer_config(settings, "p"),
        consumer_config(settings, "g", "c"),
        admin_config(settings),
    ):
        assert conf["sasl.password"] == PASSWORD
        assert conf["sasl.username"] == "svc"


def test_password_is_a_secret_and_never_shown() -> None:
    settings = _settings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="svc",
        sasl_password=PASSWORD,
    )
    assert isinstance(settings.sasl_password, SecretStr)
    assert settings.sasl_password.get_secret_value() == PASSWORD
    for shown in (repr(settings), str(settings), settings.model_dump_json()):
        assert PASSWORD not in shown
        assert "svc" in shown  # the rest of the settings is still shown


def test_password_from_the_environment_is_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RDV_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("RDV_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("RDV_KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("RDV_KAFKA_SASL_PASSWORD", PASSWORD)
    settings = KafkaSettings()
    assert settings.security_config()["sasl.password"] == PASSWORD
    assert PASSWORD not in repr(settings)


# --- KafkaSettings from the environment -------------------------------------------


def test_defaults_without_environment() -> None:
    settings = KafkaSettings()
    assert settings.bootstrap == "127.0.0.1:9092"
    assert settings.topic_prefix == ""
    assert settings.security_protocol == "PLAINTEXT"
    assert settings.sasl_password is None
    assert settings.client_config == {}


def test_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RDV_KAFKA_BOOTSTRAP", "k1:9093,k2:9093")
    monkeypatch.setenv("RDV_KAFKA_TOPIC_PREFIX", "stack-b.")
    monkeypatch.setenv(
        "RDV_KAFKA_CLIENT_CONFIG", json.dumps({"linger.ms": "3", "socket.timeout.ms": "900"})
    )
    settings = KafkaSettings()
    assert settings.bootstrap == "k1:9093,k2:9093"
    assert settings.topic_prefix == "stack-b."
    assert settings.client_config == {"linger.ms": "3", "socket.timeout.ms": "900"}
    conf = producer_config(settings, "p")
    assert conf["bootstrap.servers"] == "k1:9093,k2:9093"
    assert conf["linger.ms"] == "3"


def test_explicit_arguments_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RDV_KAFKA_BOOTSTRAP", "from-env:9092")
    assert KafkaSettings(bootstrap="explicit:9092").bootstrap == "explicit:9092"


@pytest.mark.parametrize(
    "raw",
    ["not json", "[1, 2]", '{"linger.ms": {"nested": "x"}}'],
    ids=["not-json", "not-an-object", "nested-value"],
)
def test_client_config_must_be_a_json_object_of_strings(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv("RDV_KAFKA_CLIENT_CONFIG", raw)
    # pydantic-settings raises SettingsError (a ValueError) for undecodable JSON and
    # pydantic's ValidationError (also a ValueError) for JSON of the wrong shape.
    with pytest.raises(ValueError, match="client_config"):
        KafkaSettings()


def test_unknown_keyword_field_is_rejected() -> None:
    with pytest.raises(ValidationError, match="extra_forbidden"):
        KafkaSettings.model_validate({"bootstrap_servers": "k:9092"})


def test_unknown_rdv_kafka_environment_variable_is_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Real behaviour of pydantic-settings: extra="forbid" covers keyword arguments and
    # dotenv files, but the environment source only looks up declared fields, so a typo
    # such as RDV_KAFKA_BOOTSTRAP_SERVERS is silently ignored and the default is used.
    monkeypatch.setenv("RDV_KAFKA_BOOTSTRAP_SERVERS", "typo:9092")
    settings = KafkaSettings()
    assert settings.bootstrap == "127.0.0.1:9092"
    assert "typo:9092" not in settings.model_dump_json()


def test_unknown_rdv_kafka_field_in_a_dotenv_file_is_rejected(tmp_path: Path) -> None:
    env_file = tmp_path / "kafka.env"
    env_file.write_text("RDV_KAFKA_BOOTSTRAP_SERVERS=typo:9092\n")
    with pytest.raises(ValidationError, match="extra_forbidden"):
        KafkaSettings(_env_file=env_file)  # type: ignore[call-arg]


def test_client_config_numbers_and_bools_become_strings() -> None:
    settings = KafkaSettings(
        client_config={"linger.ms": 5, "enable.ssl.certificate.verification": False}
    )  # type: ignore[dict-item]
    assert settings.client_config == {
        "linger.ms": "5",
        "enable.ssl.certificate.verification": "false",
    }


class FakeReaderConsumer:
    """The calls Reader makes on confluent_kafka.Consumer; offsets_for_times runs
    ``lookup`` (which may raise), and every partition is empty."""

    lookup: Callable[[], None] = staticmethod(lambda: None)

    def __init__(self, _conf: object) -> None:
        pass

    def offsets_for_times(
        self, wanted: list[confluent_kafka.TopicPartition], timeout: float
    ) -> list[confluent_kafka.TopicPartition]:
        type(self).lookup()
        return [confluent_kafka.TopicPartition(tp.topic, tp.partition, -1) for tp in wanted]

    def get_watermark_offsets(
        self, _tp: confluent_kafka.TopicPartition, timeout: float
    ) -> tuple[int, int]:
        return (0, 0)

    def close(self) -> None:
        pass


def test_read_since_retries_transient_broker_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    not_leader = confluent_kafka.KafkaError(confluent_kafka.KafkaError.NOT_LEADER_FOR_PARTITION)

    def flaky() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise confluent_kafka.KafkaException(not_leader)

    monkeypatch.setattr(FakeReaderConsumer, "lookup", staticmethod(flaky))
    monkeypatch.setattr(admin.confluent_kafka, "Consumer", FakeReaderConsumer)
    monkeypatch.setattr(admin, "RETRY_BACKOFF_S", 0.0)
    assert admin.read_since({}, "t", [0], 0, timeout_s=5) == []
    assert len(calls) == 3


def test_read_since_gives_up_on_other_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    denied = confluent_kafka.KafkaError(confluent_kafka.KafkaError.TOPIC_AUTHORIZATION_FAILED)

    def refuse() -> None:
        raise confluent_kafka.KafkaException(denied)

    monkeypatch.setattr(FakeReaderConsumer, "lookup", staticmethod(refuse))
    monkeypatch.setattr(admin.confluent_kafka, "Consumer", FakeReaderConsumer)
    with pytest.raises(KafkaUnavailableError, match="could not read t"):
        admin.read_since({}, "t", [0], 0, timeout_s=5)


def test_reader_defaults_go_over_the_consumer_defaults_and_under_the_user_config() -> None:
    reader = assigned_reader()
    conf = consumer_config(_settings(), "g", "c", defaults=reader)
    assert conf["fetch.wait.max.ms"] == reader["fetch.wait.max.ms"] != "100"
    assert conf["fetch.min.bytes"] == "1"  # a record is answered at once, never held
    mine = consumer_config(
        _settings(client_config={"fetch.wait.max.ms": "250"}), "g", "c", defaults=reader
    )
    assert mine["fetch.wait.max.ms"] == "250"
    assert consumer_config(_settings(), "g", "c")["fetch.wait.max.ms"] == "100"  # members
