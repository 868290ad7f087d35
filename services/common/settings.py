"""Settings shared by every service that talks to Kafka.

Only a service's ``main()`` builds settings from the environment; everything below
it receives them as arguments. Each service adds its own class with its own prefix.
"""

from __future__ import annotations

from typing import Self

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.redact import register_secret

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI", "OAUTHBEARER")
PASSWORD_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
SECRET_PROPERTIES = frozenset(
    {
        "sasl.password",
        "ssl.key.password",
        "ssl.key.pem",
        "ssl.keystore.password",
        "sasl.oauthbearer.client.secret",
    }
)
"""librdkafka properties that hold secrets: only the SecretStr fields may set them."""


class KafkaSettings(BaseSettings):
    """How to reach the Kafka cluster (env prefix ``RDV_KAFKA_``)."""

    # hide_input_in_errors: a validation error must not echo a value back (a password)
    model_config = SettingsConfigDict(
        env_prefix="RDV_KAFKA_", extra="forbid", hide_input_in_errors=True
    )

    bootstrap: str = "127.0.0.1:9092"
    """Comma-separated host:port list. Setting RDV_KAFKA_BOOTSTRAP makes every command
    and test use that broker instead of starting a local one."""

    topic_prefix: str = ""
    """Prepended to every topic name (isolates stacks or test runs sharing a cluster)."""

    security_protocol: str = "PLAINTEXT"
    """PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (real clusters: SASL_SSL or SSL)."""

    sasl_mechanism: str | None = None
    """PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, GSSAPI or OAUTHBEARER; required with a SASL
    security protocol, refused without one."""

    sasl_username: str | None = None
    """SASL user name (required by PLAIN and SCRAM)."""

    sasl_password: SecretStr | None = None
    """SASL password (required by PLAIN and SCRAM); never logged, shown or dead-lettered."""

    ssl_ca_location: str | None = None
    """Path to the CA certificate bundle that signs the brokers' certificates (None:
    the system's CA store)."""

    ssl_certificate_location: str | None = None
    """Client certificate (PEM) for mutual TLS; needs ``ssl_key_location``."""

    ssl_key_location: str | None = None
    """The client certificate's private key (PEM); needs ``ssl_certificate_location``."""

    ssl_key_password: SecretStr | None = None
    """Passphrase of ``ssl_key_location``; never logged or shown."""

    ssl_verify_hostname: bool = True
    """Check that a broker's certificate names its host (librdkafka's
    ssl.endpoint.identification.algorithm=https); turn off only for test clusters."""

    client_config: dict[str, str] = Field(default_factory=dict)
    """Extra librdkafka properties (JSON object), applied after the defaults and
    before the settings the platform pins (see services.common.kafka)."""

    @field_validator("security_protocol", "sasl_mechanism")
    @classmethod
    def _known(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        value = value.strip().upper()
        allowed = PROTOCOLS if info.field_name == "security_protocol" else MECHANISMS
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value

    @field_validator("client_config")
    @classmethod
    def _no_secrets(cls, value: dict[str, str]) -> dict[str, str]:
        """A secret in this plain dict would show in every repr: refuse it."""
        if found := sorted(SECRET_PROPERTIES & set(value)):
            raise ValueError(
                f"{', '.join(found)} may not be set here (it would not be kept secret): "
                "use RDV_KAFKA_SASL_PASSWORD or RDV_KAFKA_SSL_KEY_PASSWORD"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        sasl = self.security_protocol.startswith("SASL_")
        tls = self.security_protocol.endswith("SSL")
        if sasl and self.sasl_mechanism is None:
            raise ValueError(f"security_protocol {self.security_protocol} needs a sasl_mechanism")
        if not sasl and (self.sasl_mechanism or self.sasl_username or self.sasl_password):
            raise ValueError("SASL settings need security_protocol SASL_SSL or SASL_PLAINTEXT")
        if self.sasl_mechanism in PASSWORD_MECHANISMS and not (
            self.sasl_username and self.sasl_password and self.sasl_password.get_secret_value()
        ):
            raise ValueError(f"sasl_mechanism {self.sasl_mechanism} needs a username and password")
        files = (self.ssl_ca_location, self.ssl_certificate_location, self.ssl_key_location)
        if not tls and (any(files) or self.ssl_key_password):
            raise ValueError("ssl_* settings need security_protocol SSL or SASL_SSL")
        if bool(self.ssl_certificate_location) != bool(self.ssl_key_location):
            raise ValueError("ssl_certificate_location and ssl_key_location go together")
        for secret in (self.sasl_password, self.ssl_key_password):
            if secret is not None:  # from now on no log line or dead letter shows it
                register_secret(secret.get_secret_value())
        return self

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
        if self.ssl_certificate_location and self.ssl_key_location:
            conf["ssl.certificate.location"] = self.ssl_certificate_location
            conf["ssl.key.location"] = self.ssl_key_location
        if self.ssl_key_password:
            conf["ssl.key.password"] = self.ssl_key_password.get_secret_value()
        if self.security_protocol.endswith("SSL"):
            verify = "https" if self.ssl_verify_hostname else "none"
            conf["ssl.endpoint.identification.algorithm"] = verify
        return conf
