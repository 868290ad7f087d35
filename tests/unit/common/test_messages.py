"""The message contract and its codec: round trips, rejections, keys, dead letters."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from pydantic import ValidationError

from services.common.codec import (
    SUPPORTED_VERSIONS,
    decode,
    decode_control,
    decode_reply_record,
    encode,
    kind_of,
    make_dead_letter,
    message_key,
)
from services.common.errors import MessageError
from services.common.messages import (
    MODEL_ERROR,
    SCHEMA_VERSION,
    SCORE_VERSION,
    BaseMessage,
    DeadLetter,
    Decision,
    Delta,
    ErrorBody,
    ModelRegistration,
    OodCheck,
    PolicyEntry,
    Reply,
    RequestEnvelope,
    ReturnAddress,
    Role,
    Score,
    ScoreStatus,
    StreamGrant,
    Timings,
    error_from_text,
)

T0 = 1_700_000_000_000


def _request(**over: Any) -> RequestEnvelope:
    fields: dict[str, Any] = {
        "request_id": "req-1",
        "endpoint": "fraud.v2",
        "payload": {"amount": 12.5, "items": [1, "two", None, True]},
        "return_address": ReturnAddress(topic="replies.gw-1", partition=3),
        "deadline_epoch_ms": T0 + 50,
        "created_ms": T0,
        "trace_id": "trace-abc",
        "attributes": {"sticky": "user-7"},
    }
    return RequestEnvelope(**(fields | over))


def _timings() -> Timings:
    return Timings(received_ms=T0 + 1.25, started_ms=T0 + 2.5, finished_ms=T0 + 9.75)


def _score(**over: Any) -> Score:
    fields: dict[str, Any] = {
        "request_id": "req-1",
        "endpoint": "fraud.v2",
        "model": "gbm-small",
        "model_version": "3",
        "role": Role.CHALLENGER,
        "status": ScoreStatus.OK,
        "output": {"p": 0.93},
        "timings": _timings(),
    }
    return Score(**(fields | over))


def _dead_letter() -> DeadLetter:
    return DeadLetter(
        origin_topic="requests",
        origin_partition=2,
        origin_offset=41,
        error_code="bad_message",
        error="[bad_message] not JSON",
        service="rendezvous",
        key="req-9",
        value_b64=base64.b64encode(b"junk").decode(),
        failed_ms=T0,
    )


SAMPLES: list[BaseMessage] = [
    _request(),
    _score(),
    _score(status=ScoreStatus.ERROR, output=None, error="CUDA OOM", role=Role.CANARY),
    Decision(
        request_id="req-1",
        endpoint="fraud.v2",
        chosen_model="gbm-small",
        reason="first_in_time",
        in_time=["gbm-small", "lr"],
        late=["big-net"],
        latencies_ms={"gbm-small": 9.5, "lr": 3.0, "big-net": 61.0},
        elapsed_ms=12.25,
        decided_ms=T0 + 12.25,
        propensity=0.25,
        policy_version=4,
    ),
    Reply(
        request_id="req-1",
        model="gbm-small",
        reason="first_in_time",
        output=[0.1, 0.9],
        decided_ms=T0 + 12.0,
    ),
    Reply(
        request_id="req-2",
        model=None,
        reason="no_model_in_time",
        error=ErrorBody(code="deadline", message="no answer in time"),
        decided_ms=T0 + 50.0,
    ),
    ModelRegistration(
        name="gbm-small",
        version="3",
        role=Role.CHAMPION,
        endpoints=["fraud.v2", "fraud.v3"],
        runtime="sklearn",
        params={"threshold": 0.5, "features": ["a", "b"]},
        changed_by="alice",
        changed_ms=T0,
    ),
    PolicyEntry(
        endpoint="fraud.v2",
        version=4,
        policy={"type": "epsilon", "epsilon": 0.1},
        changed_by="bob",
        changed_ms=T0,
    ),
    _dead_letter(),
    Delta(request_id="req-3", model="smol", seq=2, offset=5, text=" is", finish_reason="stop"),
    StreamGrant(
        request_id="req-3",
        model="smol",
        granted_ms=T0 + 3.5,
        ood=OodCheck(status="clear", detector="ood", score=1.25),
    ),
]
DELTA, GRANT = SAMPLES[9], SAMPLES[10]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip_every_kind(msg: BaseMessage) -> None:
    data = encode(msg)
    assert decode(data, type(msg)) == msg
    wire = json.loads(data)
    assert wire["v"] == (SCORE_VERSION if isinstance(msg, Score) else SCHEMA_VERSION)
    assert wire["kind"] == kind_of(type(msg))
    assert b'": ' not in data  # compact JSON: no space after separators
    assert b', "' not in data


def test_decoded_enums_and_nested_models_have_their_types() -> None:
    got = decode(encode(_score()), Score)
    assert got.role is Role.CHALLENGER
    assert got.status is ScoreStatus.OK
    assert isinstance(got.timings, Timings)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            {"code": "prompt_too_long", "message": "9000 tokens"},
            ErrorBody(code="prompt_too_long", message="9000 tokens"),
        ),
        (  # a Kafka-native worker of before typed errors: "[code] message"
            "[prompt_too_long] 9000 tokens",
            ErrorBody(code="prompt_too_long", message="9000 tokens"),
        ),
        (  # ... or plain text
            "CUDA out of memory",
            ErrorBody(code=MODEL_ERROR, message="CUDA out of memory"),
        ),
        ("[not a code] text", ErrorBody(code=MODEL_ERROR, message="[not a code] text")),
        ("[bad_message]", ErrorBody(code="bad_message", message="")),
    ],
)
def test_a_score_error_reads_the_typed_and_both_text_forms(error: Any, expected: ErrorBody) -> None:
    wire = _wire(_score(), status="error", output=None, error=error)
    got = decode(wire, Score)
    assert got.error == expected
    assert json.loads(encode(got))["error"] == expected.model_dump()  # written typed


def test_a_score_error_text_is_parsed_as_on_the_wire() -> None:
    assert error_from_text("[x.y-1] a\nb") == ErrorBody(code="x.y-1", message="a\nb")
    assert _score(status=ScoreStatus.ERROR, error="boom").error == ErrorBody(
        code=MODEL_ERROR, message="boom"
    )


def test_an_error_score_needs_an_error_code() -> None:
    with pytest.raises(ValidationError, match="non-empty error"):
        _score(status=ScoreStatus.ERROR, error=ErrorBody(code="", message="x"))
    with pytest.raises(MessageError, match="error"):
        decode(_wire(_score(), status="error", output=None, error={"message": "x"}), Score)


V1_REQUEST = (
    b'{"v": 1, "kind": "request", "request_id": "my-id-1", "endpoint": "demo",'
    b' "payload": {"text": "hello"},'
    b' "return_address": {"topic": "my.replies", "partition": null},'
    b' "deadline_ms": 1767225600500, "created_ms": 1767225600000,'
    b' "trace_id": "my-id-1", "attributes": {}}'
)
"""A request as a Kafka-native client writes it (README, "Kafka-native clients")."""


def test_the_envelope_deadline_keeps_its_wire_name() -> None:
    wire = json.loads(encode(_request()))
    assert wire["deadline_ms"] == T0 + 50
    assert "deadline_epoch_ms" not in wire
    assert _request().model_dump()["deadline_ms"] == T0 + 50  # as dicts too


def test_a_v1_request_with_deadline_ms_decodes() -> None:
    got = decode(V1_REQUEST, RequestEnvelope)
    assert (got.deadline_epoch_ms, got.created_ms) == (1767225600500, 1767225600000)
    assert json.loads(encode(got)) == json.loads(V1_REQUEST)


def test_the_wire_does_not_take_the_code_name_of_the_deadline() -> None:
    wire = json.loads(V1_REQUEST)
    wire["deadline_epoch_ms"] = wire.pop("deadline_ms")
    with pytest.raises(MessageError, match="deadline_ms: Field required"):
        decode(json.dumps(wire).encode(), RequestEnvelope)


def test_unknown_fields_are_ignored() -> None:
    wire = json.loads(encode(_request()))
    wire["added_in_a_newer_build"] = {"x": 1}
    assert decode(json.dumps(wire).encode(), RequestEnvelope) == _request()


def _wire(msg: BaseMessage, **over: Any) -> bytes:
    obj = json.loads(encode(msg)) | over
    return json.dumps(obj).encode()


def _without(msg: BaseMessage, field: str) -> bytes:
    obj = json.loads(encode(msg))
    del obj[field]
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (None, "empty"),
        (b"", "empty"),
        (b"\xff\xfe", "UTF-8"),
        (b"not json", "not JSON"),
        (b"[1,2]", "JSON object"),
        (b'"v"', "JSON object"),
        (b'{"v":1}', "expected kind 'request', got None"),
        (_wire(_score()), "expected kind 'request', got 'score'"),
        (_without(_request(), "deadline_ms"), "deadline_ms"),
        (_without(_request(), "return_address"), "return_address"),
        (_wire(_request(), deadline_ms="soon"), "deadline_ms"),
        (_wire(_request(), return_address={"topic": ""}), "return_address.topic"),
        (_wire(_request(), attributes={"n": 1}), "attributes.n"),
        (_wire(_request(), endpoint="Fraud"), "endpoint"),
        (_wire(_request(), request_id=""), "request_id"),
        (_wire(_request(), deadline_ms=T0), "deadline_ms"),
        (_wire(_request(), v=None), "'v'"),
        (_wire(_request(), v="1"), "'v'"),
        (_wire(_request(), v=True), "'v'"),
        (_without(_request(), "v"), "'v'"),
    ],
)
def test_decode_rejects_malformed(data: bytes | None, fragment: str) -> None:
    with pytest.raises(MessageError) as info:
        decode(data, RequestEnvelope)
    assert info.value.reason == "malformed"
    assert fragment in info.value.message


@pytest.mark.parametrize("version", [0, 2, 99])
def test_decode_rejects_unsupported_version(version: int) -> None:
    with pytest.raises(MessageError) as info:
        decode(_wire(_request(), v=version), RequestEnvelope)
    assert info.value.reason == "unsupported_version"
    assert f"version {version}" in info.value.message
    assert "supported: 1" in info.value.message


def test_scores_are_written_as_v2_and_read_as_v1_or_v2() -> None:
    assert SUPPORTED_VERSIONS == {SCHEMA_VERSION, SCORE_VERSION} == {1, 2}
    failed = _score(
        status=ScoreStatus.ERROR, output=None, error=ErrorBody(code="oom", message="out")
    )
    wire = json.loads(encode(failed))
    assert (wire["v"], wire["error"]) == (2, {"code": "oom", "message": "out"})
    v1 = json.dumps({**wire, "v": 1, "error": "[oom] out"}).encode()
    assert decode(v1, Score).error == failed.error
    with pytest.raises(MessageError) as info:
        decode(json.dumps({**wire, "v": 3}).encode(), Score)
    assert info.value.reason == "unsupported_version"
    assert "supported: 1, 2" in info.value.message


def test_validation_error_summary_is_short_and_does_not_echo_the_payload() -> None:
    secret = "s3cr3t-" * 500
    obj = {"v": 1, "kind": "request", "payload": secret, "a": 1, "deadline_ms": secret}
    with pytest.raises(MessageError) as info:
        decode(json.dumps(obj).encode(), RequestEnvelope)
    message = info.value.message
    assert "s3cr3t" not in message
    assert len(message) < 600
    parts = message.split("; ")
    assert len(parts) == 4  # the first three errors, then how many more were cut
    assert parts[-1].startswith("(+")


def test_deeply_nested_json_is_malformed_not_a_crash() -> None:
    with pytest.raises(MessageError) as info:
        decode(b"[" * 100_000 + b"]" * 100_000, RequestEnvelope)
    assert info.value.reason == "malformed"


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: _request(deadline_epoch_ms=T0), "deadline_ms"),
        (lambda: _request(deadline_epoch_ms=T0 - 1), "deadline_ms"),
        (lambda: _request(endpoint="Has Space"), "endpoint"),
        (lambda: _request(endpoint="-leading"), "endpoint"),
        (lambda: _request(endpoint="x" * 65), "endpoint"),
        (lambda: _request(request_id="r" * 129), "request_id"),
        (lambda: _score(status=ScoreStatus.ERROR, error=None), "non-empty error"),
        (lambda: _score(status=ScoreStatus.ERROR, error=""), "non-empty error"),
        (lambda: _score(status=ScoreStatus.OK, error="boom"), "must not carry"),
        (lambda: _score(role="boss"), "role"),
        (lambda: Timings(received_ms=2, started_ms=1, finished_ms=3), "received_ms"),
        (lambda: Timings(received_ms=1, started_ms=3, finished_ms=2), "received_ms"),
        (
            lambda: PolicyEntry(endpoint="e", version=0, policy={}, changed_by="a", changed_ms=T0),
            "version",
        ),
        (
            lambda: ModelRegistration(
                name="m",
                version="1",
                role=Role.DECOY,
                endpoints=["Bad!"],
                runtime="r",
                changed_by="a",
                changed_ms=T0,
            ),
            "endpoints.0",
        ),
    ],
)
def test_invalid_models_are_rejected(build: Any, fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        build()
    assert fragment in str(info.value)


@pytest.mark.parametrize("propensity", [0.0, -0.1, 1.01, float("nan")])
def test_propensity_must_be_a_probability(propensity: float) -> None:
    with pytest.raises(ValidationError):
        Decision.model_validate(json.loads(encode(SAMPLES[3])) | {"propensity": propensity})


def test_non_finite_floats_are_rejected() -> None:
    with pytest.raises(ValidationError):
        Timings(received_ms=0.0, started_ms=1.0, finished_ms=float("inf"))


def test_models_are_frozen() -> None:
    req = _request()
    with pytest.raises(ValidationError):
        req.deadline_epoch_ms = 0  # type: ignore[misc]


def test_zero_duration_timings_and_skipped_without_error_are_valid() -> None:
    assert Timings(received_ms=5, started_ms=5, finished_ms=5).finished_ms == 5
    assert _score(status=ScoreStatus.SKIPPED, output=None).error is None


def test_reply_ok_reflects_error() -> None:
    ok, failed = SAMPLES[4], SAMPLES[5]
    assert isinstance(ok, Reply)
    assert isinstance(failed, Reply)
    assert ok.ok
    assert not failed.ok


@pytest.mark.parametrize(
    ("msg", "key"),
    [
        (SAMPLES[0], b"req-1"),
        (SAMPLES[1], b"req-1"),
        (SAMPLES[3], b"req-1"),
        (SAMPLES[5], b"req-2"),
        (_request(request_id="zoë"), "zoë".encode()),
        (SAMPLES[6], b"model/gbm-small"),
        (SAMPLES[7], b"policy/fraud.v2"),
        (SAMPLES[8], b"req-9"),
        (_dead_letter().model_copy(update={"key": None}), b""),
        (DELTA, b"req-3"),
        (GRANT, b"req-3"),
    ],
)
def test_message_key(msg: Any, key: bytes) -> None:
    assert message_key(msg) == key


@pytest.mark.parametrize("tombstone", [None, b""])
def test_decode_control_tombstone(tombstone: bytes | None) -> None:
    assert decode_control(tombstone) is None


@pytest.mark.parametrize("entry", [SAMPLES[6], SAMPLES[7]], ids=lambda m: type(m).__name__)
def test_decode_control_dispatches_on_kind(entry: BaseMessage) -> None:
    got = decode_control(encode(entry))
    assert type(got) is type(entry)
    assert got == entry


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (encode(SAMPLES[0]), "malformed"),  # a request is not a control entry
        (b'{"v":1,"kind":["model"]}', "malformed"),
        (b'{"v":1,"kind":"policy","endpoint":"e"}', "malformed"),
        (b"\xff", "malformed"),
        (b'{"v":2,"kind":"model"}', "unsupported_version"),
    ],
)
def test_decode_control_rejects(data: bytes, reason: str) -> None:
    with pytest.raises(MessageError) as info:
        decode_control(data)
    assert info.value.reason == reason


def test_make_dead_letter_from_message_error() -> None:
    value = b"\x00\xffnot a message"
    with pytest.raises(MessageError) as info:
        decode(value, RequestEnvelope)
    dl = make_dead_letter(
        topic="requests",
        partition=5,
        offset=1234,
        key=b"req-\xff",
        value=value,
        error=info.value,
        service="workers",
        now_ms=T0,
    )
    assert (dl.origin_topic, dl.origin_partition, dl.origin_offset) == ("requests", 5, 1234)
    assert dl.error_code == "bad_message"
    assert dl.error == str(info.value)
    assert dl.service == "workers"
    assert dl.failed_ms == T0
    assert dl.key == "req-\ufffd"
    assert base64.b64decode(dl.value_b64) == value
    assert decode(encode(dl), DeadLetter) == dl


def test_make_dead_letter_from_plain_exception_without_value() -> None:
    dl = make_dead_letter(
        topic="scores",
        partition=0,
        offset=0,
        key=None,
        value=None,
        error=KeyError("x" * 5000),
        service="rendezvous",
        now_ms=T0,
    )
    assert dl.error_code == "KeyError"
    assert len(dl.error) == 2000
    assert dl.key is None
    assert dl.value_b64 == ""
    assert message_key(dl) == b""


@pytest.mark.parametrize("msg", [SAMPLES[4], SAMPLES[5], DELTA, GRANT], ids=lambda m: m.kind)
def test_decode_reply_record_dispatches_on_kind(msg: BaseMessage) -> None:
    got = decode_reply_record(encode(msg))
    assert type(got) is type(msg)
    assert got == msg


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (encode(SAMPLES[1]), "malformed"),  # a score does not go to a return address
        (
            b'{"v":1,"kind":"delta","request_id":"r","model":"m","seq":-1,"offset":0,"text":""}',
            "malformed",
        ),
        (b'{"v":2,"kind":"grant"}', "unsupported_version"),
        (b"", "malformed"),
    ],
)
def test_decode_reply_record_rejects(data: bytes, reason: str) -> None:
    with pytest.raises(MessageError) as info:
        decode_reply_record(data)
    assert info.value.reason == reason


def test_a_decision_without_streamed_reads_as_not_streamed() -> None:
    wire = json.loads(encode(SAMPLES[3]))
    del wire["streamed"]
    assert decode(json.dumps(wire).encode(), Decision).streamed is False
