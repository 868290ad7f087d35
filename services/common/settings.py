"""Settings shared by every service that talks to Kafka.

Only a service's ``main()`` builds settings from the environment; everything below
it receives them as arguments. Each service adds its own class with its own prefix.
"""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class KafkaSettings(BaseSettings):
    """How to reach the Kafka cluster (env prefix ``RDV_KAFKA_``)."""

    model_config = SettingsConfigDict(env_prefix="RDV_KAFKA_", extra="forbid")

    bootstrap: str = "127.0.0.1:9092"
    """Comma-separated host:port list. Setting RDV_KAFKA_BOOTSTRAP makes every command
    and test use that broker instead of starting a local one."""

    topic_prefix: str = ""
    """Prepended to every topic name (isolates stacks or test runs sharing a cluster)."""

    security_protocol: str = "PLAINTEXT"
    """PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."""

    sasl_mechanism: str | None = None
    """PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 (with a SASL security protocol)."""

    sasl_username: str | None = None
    """SASL user name."""

    sasl_password: SecretStr | None = None
    """SASL password; never logged."""

    ssl_ca_location: str | None = None
    """Path to the CA certificate bundle that signs the brokers' certificates."""

    client_config: dict[str, str] = Field(default_factory=dict)
    """Extra librdkafka properties (JSON object), applied after the defaults and
    before the settings the platform pins (see services.common.kafka)."""

    @field_validator("client_config", mode="before")
    @classmethod
    def _stringify(cls, value: object) -> object:
        """librdkafka takes every property as a string; accept JSON numbers and bools."""
        if isinstance(value, dict):
            return {
                k: (str(v).lower() if isinstance(v, bool) else str(v))
                if isinstance(v, int | float | bool)
                else v
                for k, v in value.items()
            }
        return value

    def security_config(self) -> dict[str, str]:
        """The librdkafka security properties these settings ask for."""
        conf: dict[str, str] = {"security.protocol": self.security_protocol}
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_ca_location:
            conf["ssl.ca.location"] = self.ssl_ca_location
        return conf
