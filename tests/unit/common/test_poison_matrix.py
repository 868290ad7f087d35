"""Every class of poison record the chaos harness injects, through the real decoders,
the real processors and the real loop (fake clients): no reader raises, and each
record a reader cannot use yields exactly one dead letter from that reader. What each
reader does with a record it *can* use (no dead letter) is spelled out per class in
EXPECTED; docs/poison-records.md gives the reasons."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import JsonValue

from services.archive.buffer import Limits
from services.archive.service import Archive
from services.archive.store import PartStore
from services.common.codec import decode, encode, make_dead_letter, message_key
from services.common.kafka import Record
from services.common.loop import Processor, StreamRunner
from services.common.messages import (
    DeadLetter,
    Decision,
    Delta,
    Feedback,
    Reply,
    RequestEnvelope,
    ReturnAddress,
    Score,
    StreamGrant,
)
from services.common.policy import parse_policy
from services.common.spec import parse_inline
from services.common.topics import Topics, load_topics
from services.gateway.bus import BrokerHealth
from services.gateway.kafka_bus import KafkaBus
from services.gateway.pending import PendingReplies
from services.rendezvous.mailbox import MailboxStore
from services.rendezvous.service import Rendezvous
from services.workers.runtime import ModelRuntime, Prediction
from services.workers.service import decode_request
from services.workers.worker import ModelWorker
from tests.factories import policy_doc, request, score_for
from tests.unit.common.test_loop import FakeConsumer, FakeProducer

TOPICS: Topics = load_topics(prefix="unit.")
MISSING_TOPIC = "unit.no.such.topic"
Make = Callable[[], list[tuple[bytes | None, bytes | None]]]  # (key, value) records


def _req(payload: JsonValue = "hello", **over: Any) -> RequestEnvelope:
    return request(payload, **{"endpoint": "demo", "reply_topic": TOPICS.replies, **over})


def _rec_of(msg: Any) -> tuple[bytes | None, bytes | None]:
    return (message_key(msg), encode(msg))


def _raw(obj: dict[str, JsonValue]) -> bytes:
    return json.dumps(obj).encode()


def _with(req: RequestEnvelope, **fields: JsonValue) -> bytes:
    return _raw({**json.loads(encode(req)), **fields})


def _address(topic: str, partition: int | None) -> RequestEnvelope:
    req = _past()  # decided at once: the reply goes out in the same turn
    return req.model_copy(
        update={"return_address": ReturnAddress(topic=topic, partition=partition)}
    )


def _past() -> RequestEnvelope:
    now = int(time.time() * 1000)
    return RequestEnvelope.model_validate(
        {**json.loads(encode(_req())), "created_ms": now - 5000, "deadline_ms": now - 1000}
    )


# Classes on the requests topic: name -> the records.
REQUESTS: dict[str, Make] = {
    "not_json": lambda: [(b"k", b"{nope")],
    "not_utf8": lambda: [(b"k", b"\xff\xfe\x00")],
    "empty": lambda: [(b"k", b"")],
    "null_value": lambda: [(b"k", None)],
    "json_not_object": lambda: [(b"k", b"[1, 2]")],
    "wrong_kind": lambda: [_rec_of(score_for(_req(), model="fast"))],
    "future_version": lambda: [(b"k", _with(_req(), v=99))],
    "missing_fields": lambda: [(b"k", _raw({"kind": "request", "v": 1}))],
    "deadline_not_int": lambda: [(b"k", _with(_req(), deadline_ms="soon"))],
    "deadline_past": lambda: [_rec_of(_past())],
    "deadline_far_future": lambda: [_rec_of(_req(deadline_in_ms=10 * 365 * 86_400_000))],
    "null_key": lambda: [(None, encode(_req()))],
    "unknown_endpoint": lambda: [_rec_of(_req(endpoint="nope"))],
    "return_partition_missing": lambda: [_rec_of(_address(TOPICS.replies, 99))],
    "return_topic_missing": lambda: [_rec_of(_address(MISSING_TOPIC, None))],
    "huge_payload": lambda: [_rec_of(_req("x" * 900_000))],
    "duplicate_request": lambda: [_rec_of(r := _req()), _rec_of(r)],
}

# Classes on the scores topic.
SCORES: dict[str, Make] = {
    "not_json": lambda: [(b"k", b"{nope")],
    "not_utf8": lambda: [(b"k", b"\xff\xfe\x00")],
    "empty": lambda: [(b"k", b"")],
    "null_value": lambda: [(b"k", None)],
    "wrong_kind": lambda: [_rec_of(_req())],
    "future_version": lambda: [(b"k", _with_score(v=99))],
    "missing_fields": lambda: [(b"k", _raw({"kind": "score", "v": 1}))],
    "score_for_unknown_request": lambda: [_rec_of(score_for(_req(), model="fast"))],
    "duplicate_score": lambda: [_rec_of(s := score_for(_req(), model="fast")), _rec_of(s)],
}


def _with_score(**fields: JsonValue) -> bytes:
    return _raw({**json.loads(encode(score_for(_req(), model="fast"))), **fields})


_UNDECODABLE = {
    "not_json",
    "not_utf8",
    "empty",
    "null_value",
    "json_not_object",
    "wrong_kind",
    "future_version",
    "missing_fields",
    "deadline_not_int",
}
# Dead letters per record set, per reader (every other class: 0, and why is in the doc).
EXPECTED: dict[tuple[str, str], dict[str, int]] = {
    ("rendezvous", "requests"): dict.fromkeys(_UNDECODABLE, 1)
    | {"deadline_far_future": 1, "return_partition_missing": 1, "return_topic_missing": 1},
    ("worker", "requests"): dict.fromkeys(_UNDECODABLE, 1),
    ("archive", "requests"): dict.fromkeys(_UNDECODABLE, 1),
    ("rendezvous", "scores"): dict.fromkeys(_UNDECODABLE, 1),
    ("archive", "scores"): dict.fromkeys(_UNDECODABLE, 1),
}


class MatrixProducer(FakeProducer):
    """Refuses partition 99 of the replies topic on the spot; outputs to the missing
    topic time out; metadata knows that topic does not exist."""

    def __init__(self) -> None:
        super().__init__()
        self.refuse[(TOPICS.replies, 99)] = "_UNKNOWN_PARTITION: Local: Unknown partition"
        self.absent[(MISSING_TOPIC, None)] = f"topic {MISSING_TOPIC!r} does not exist"

    def poll(self, timeout_s: float = 0.0) -> int:
        served = len(self.unacked)
        for out, report in zip(self.sent[-served:] if served else [], self.unacked, strict=True):
            report(
                "_MSG_TIMED_OUT: Local: Message timed out" if out.topic == MISSING_TOPIC else None
            )
        self.unacked.clear()
        return served

    def flush(self, timeout_s: float) -> int:
        self.poll()
        return 0


class Echo(ModelRuntime):
    def __init__(self) -> None:
        super().__init__({})

    def predict_batch(self, payloads: list[JsonValue]) -> list[Prediction]:
        return list(payloads)


def _processor(
    reader: str, tmp_path: Path
) -> tuple[Processor, dict[str, Callable[[bytes | None], Any]]]:
    if reader == "rendezvous":
        policy = parse_policy(
            policy_doc(models=["fast"], stages=[{"until_ms": "deadline", "accept": ["fast"]}]), "t"
        )
        rdv = Rendezvous(policies={"demo": policy}, topics=TOPICS, store=MailboxStore())
        return rdv, {
            TOPICS.requests: lambda b: decode(b, RequestEnvelope),
            TOPICS.scores: lambda b: decode(b, Score),
        }
    if reader == "worker":
        spec = parse_inline("echo:name=fast,role=champion,version=1,endpoints=demo")
        return ModelWorker(spec, Echo(), TOPICS.scores), {TOPICS.requests: decode_request}
    archive = Archive(
        topics=TOPICS,
        store=PartStore(tmp_path),
        limits=Limits(max_rows=10_000, max_bytes=2**30, max_age_ms=600_000),
        retention_hours=24,
        dedup_window=1000,
    )
    return archive, {
        TOPICS.requests: lambda b: decode(b, RequestEnvelope),
        TOPICS.scores: lambda b: decode(b, Score),
        TOPICS.decisions: lambda b: decode(b, Decision),
        TOPICS.feedback: lambda b: decode(b, Feedback),
    }


def _cases() -> list[Any]:
    out = []
    for (reader, topic), expected in EXPECTED.items():
        classes = REQUESTS if topic == "requests" else SCORES
        for name in classes:
            out.append(
                pytest.param(
                    reader, topic, name, expected.get(name, 0), id=f"{reader}-{topic}-{name}"
                )
            )
    return out


@pytest.mark.parametrize(("reader", "topic", "name", "letters"), _cases())
def test_each_poison_class_yields_its_dead_letters_and_the_reader_goes_on(
    reader: str, topic: str, name: str, letters: int, tmp_path: Path
) -> None:
    processor, decoders = _processor(reader, tmp_path)
    classes = REQUESTS if topic == "requests" else SCORES
    poison = classes[name]()
    healthy = _req()  # sent after the poison: the reader still handles it
    records = [Record(_topic(topic), 0, i, k, v) for i, (k, v) in enumerate(poison)]
    records.append(Record(TOPICS.requests, 1, 0, *_rec_of(healthy)))
    fast = score_for(healthy, model="fast", output="ok")
    records.append(Record(TOPICS.scores, 1, 0, *_rec_of(fast)))
    consumer, producer = FakeConsumer(records), MatrixProducer()
    consumer.assignment = frozenset((t, p) for t in decoders for p in (0, 1))
    runner = StreamRunner(
        service=reader,
        consumer=consumer,
        producer=producer,  # type: ignore[arg-type]
        decoders=decoders,
        processor=processor,
        dead_letter_topic=TOPICS.dead_letters,
        batch_size=64,
    )
    records = [r for r in records if r.topic in decoders]
    consumer.pending = records

    stats = runner.run(max_records=len(records))  # no exception: the reader went on

    dead = [decode(o.value, DeadLetter) for o in producer.sent if o.topic == TOPICS.dead_letters]
    assert len(dead) == letters, [d.error for d in dead]
    assert all(d.origin_topic == _topic(topic) and d.origin_partition == 0 for d in dead)
    assert stats.dead_letters == letters
    if reader == "rendezvous":  # the healthy request was answered
        replies = [
            o
            for o in producer.sent
            if o.topic == TOPICS.replies and o.key == healthy.request_id.encode()
        ]
        assert len(replies) == 1
    if reader == "worker":
        scored = [decode(o.value, Score) for o in producer.sent if o.topic == TOPICS.scores]
        assert healthy.request_id in {s.request_id for s in scored}


def _topic(topic: str) -> str:
    return TOPICS.requests if topic == "requests" else TOPICS.scores


def test_the_table_covers_at_least_twenty_classes() -> None:
    assert len(REQUESTS.keys() | {f"score:{k}" for k in SCORES}) >= 20


# -- the gateway's reply listener -----------------------------------------------------


def _reply(**over: Any) -> Reply:
    fields: dict[str, Any] = {"request_id": "nobody-waits", "model": "fast", "reason": "r"}
    fields |= {"output": "x", "error": None, "decided_ms": 1}
    return Reply(**(fields | over))


REPLIES: dict[str, tuple[bytes | None, int]] = {
    "not_json": (b"{nope", 1),
    "not_utf8": (b"\xff\xfe\x00", 1),
    "empty": (b"", 1),
    "null_value": (None, 1),
    "wrong_kind": (encode(_req()), 1),
    "future_version": (_raw({**json.loads(encode(_reply())), "v": 99}), 1),
    "missing_fields": (_raw({"kind": "reply", "v": 1}), 1),
    # an answer this instance is not waiting for: counted and dropped (a restarted
    # gateway sees every answer to its predecessor's requests this way)
    "reply_for_unknown_id": (encode(_reply()), 0),
    "delta_for_unknown_id": (
        encode(Delta(request_id="nobody", model="m", seq=0, offset=0, text="t")),
        0,
    ),
    "grant_for_unknown_id": (
        encode(StreamGrant(request_id="nobody", model="m", granted_ms=1)),
        0,
    ),
}


@pytest.mark.parametrize(("name", "case"), REPLIES.items(), ids=list(REPLIES))
def test_the_gateway_reply_listener_dead_letters_what_it_cannot_read(
    name: str, case: tuple[bytes | None, int]
) -> None:
    value, letters = case
    producer = FakeProducer()
    bus = KafkaBus(
        producer,  # type: ignore[arg-type]
        FakeConsumer([]),  # type: ignore[arg-type]
        topic=TOPICS.replies,
        partition=0,
        health=BrokerHealth(),
        dead_letters=TOPICS.dead_letters,
    )
    bus._sink = PendingReplies().deliver
    bus._hand_over([Record(TOPICS.replies, 0, 7, b"k", value)])
    dead = [decode(o.value, DeadLetter) for o in producer.sent]
    assert [(d.origin_offset, d.service) for d in dead] == [(7, "gateway")] * letters


def test_a_dead_letter_of_a_record_near_the_size_limit_still_fits() -> None:
    """Before: the whole value, base64, made the dead letter a third larger than the
    record, past the broker's limit, so the record got no dead letter at all."""
    letter = make_dead_letter(
        topic="t",
        partition=0,
        offset=1,
        key=b"k" * 100_000,
        value=b"v" * 1_000_000,
        error=ValueError("too big"),
        service="s",
        now_ms=1,
    )
    assert len(encode(letter)) + len(message_key(letter)) < 400_000
    assert "cut to its first 262144 of 1000000 bytes" in letter.error
    assert decode(encode(letter), DeadLetter).origin_offset == 1
