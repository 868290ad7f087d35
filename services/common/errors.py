"""One error tree for the whole platform.

Every error carries a stable ``code`` string. Errors are converted at exactly two
edges: the HTTP edge maps them to a status and a JSON body, the stream edge turns
them into an error score or a dead letter. Nothing else catches them to translate.
"""

from __future__ import annotations

CLIENT_ERROR_CODES = frozenset({"invalid_request", "prompt_too_long", "request_too_large"})
"""The error codes that mean the input was at fault, not the model nor the platform
(e.g. a prompt too long for the model's context window). A model that fails a request
with one of them (a score's ``error.code``) refused the input itself: when every model
failed on the same one, the rendezvous answers with it (``services.common.decide``) and
the gateway answers it with a 4xx status (``services.gateway.errors``). The one list:
a model package that raises such codes (``models.llama.errors``) is tested against it."""


class RendezvousError(Exception):
    """Base of every error the platform raises on purpose."""

    code: str = "rendezvous_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


class MessageError(RendezvousError):
    """Bytes that are not a valid message of the expected kind and schema version.

    ``reason`` is ``"malformed"`` (not JSON, wrong fields, wrong types) or
    ``"unsupported_version"`` (a schema version this build cannot read).
    """

    code = "bad_message"

    def __init__(self, message: str, *, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


class ConfigError(RendezvousError):
    """Settings or data files (topics, policies) that cannot be used as given."""

    code = "bad_config"


class KafkaUnavailableError(RendezvousError):
    """The broker did not answer in time (not reachable, not started, not ready)."""

    code = "kafka_unavailable"


class BackpressureError(RendezvousError):
    """The local producer queue is full: the caller must shed load, not wait."""

    code = "backpressure"


class DeliveryError(RendezvousError):
    """The broker did not acknowledge a produced record before its timeout."""

    code = "delivery_failed"


class ProduceError(DeliveryError):
    """The producer refused a record on the spot (an unknown topic or partition, a
    record too large); ``error`` is librdkafka's ``"NAME: text"``, as delivery reports
    give it, so one rule classifies both (``kafka.is_permanent``)."""

    code = "delivery_failed"

    def __init__(self, error: str) -> None:
        super().__init__(f"the producer refused the record: {error}")
        self.error = error


class BrokerSetupError(RendezvousError):
    """The local broker cannot be fetched, formatted or started (Java, Maven, ports)."""

    code = "broker_setup"
