"""The data plane end to end, every service a real process on the session's broker:
HTTP -> gateway -> requests -> model workers -> scores -> rendezvous -> replies ->
gateway -> HTTP (tests/integration/stack.py starts and stops the processes)."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from services.common.codec import decode, encode, message_key
from services.common.kafka import Consumer, Outbound, consumer_config
from services.common.messages import DeadLetter, Decision, ReturnAddress
from services.common.settings import KafkaSettings
from tests.factories import request
from tests.integration.kafka_io import produce_all, read_exactly
from tests.integration.stack import (
    GATEWAY,
    RENDEZVOUS,
    Launch,
    Stack,
    Worker,
    launch_stack_fixture,  # noqa: F401 - registers the launch_stack fixture here
    model_spec,
    wait_for,
)

MODEL = "x-rdv-model"
REASON = "x-rdv-reason"
REQUEST_ID = "x-rdv-request-id"


def policy(endpoint: str, deadline_ms: int, models: list[str], *stages: Any) -> dict[str, Any]:
    """A policy document; each stage is (until_ms or "deadline", accept list or "any")."""
    return {
        "endpoint": endpoint,
        "deadline_ms": deadline_ms,
        "models": models,
        "stages": [{"until_ms": until, "accept": accept} for until, accept in stages],
    }


def timed_post(stack: Stack, endpoint: str, body: object) -> tuple[httpx.Response, float]:
    """The response and how long it took, in ms, as the client saw it."""
    started = time.monotonic()
    resp = stack.http.post(f"/v1/infer/{endpoint}", json=body)
    return resp, (time.monotonic() - started) * 1000


# -- 1. HTTP through the whole stack --------------------------------------------------


def test_http_through_the_whole_stack_answers_by_the_schedule(launch_stack: Launch) -> None:
    stack = launch_stack(
        policies=[
            policy("ranked", 3000, ["champ"], (1000, ["champ"]), ("deadline", "any")),
            policy(
                "failover",
                4000,
                ["broken", "backup"],
                (2000, ["broken"]),
                ("deadline", ["broken", "backup"]),
            ),
            policy("unserved", 1000, ["ghost"], ("deadline", "any")),  # ghost never runs
        ],
        workers=[
            Worker("champ", model_spec("champ", "echo", "champion", ["ranked"])),
            Worker("broken", model_spec("broken", "failing", "champion", ["failover"])),
            Worker("backup", model_spec("backup", "echo", "challenger", ["failover"])),
        ],
    )

    champion, champion_ms = timed_post(stack, "ranked", {"inputs": {"text": "hi"}})
    assert champion.status_code == 200, champion.text
    assert champion.headers[MODEL] == "champ"
    assert champion.headers[REASON] == "champion_in_time"
    assert champion.json()["output"] == {"text": "hi"}
    assert champion_ms < 1000, f"the champion's stage ends at 1000 ms, took {champion_ms:.0f}"

    # the champion fails at once: its stage is exhausted, so the fallback is taken without
    # waiting for the stage's end (2000 ms), let alone the deadline (4000 ms)
    fallback, fallback_ms = timed_post(stack, "failover", {"inputs": [1, 2]})
    assert fallback.status_code == 200, fallback.text
    assert fallback.headers[MODEL] == "backup"
    assert fallback.headers[REASON] == "fallback:1"
    assert fallback.json()["output"] == [1, 2]
    assert fallback_ms < 1000, f"the fallback answered after {fallback_ms:.0f} ms"

    # nobody can answer: 504 at the deadline, the endpoint's own and a shorter one the
    # request asks for. The rendezvous decides at the deadline (its default answer,
    # deadline_exceeded); the gateway waits 30 ms more (grace_ms) for that reply, then
    # answers 504 no_answer itself. On a busy 2-core machine the reply sometimes needs
    # longer than the grace, so either code is accepted; the decision must be logged.
    timed_out = []
    for body, deadline_ms in (({"inputs": 1}, 1000), ({"inputs": 2, "deadline_ms": 500}, 500)):
        timeout, took_ms = timed_post(stack, "unserved", body)
        assert timeout.status_code == 504, timeout.text
        assert timeout.json()["error"]["code"] in ("deadline_exceeded", "no_answer")
        assert MODEL not in timeout.headers
        assert deadline_ms <= took_ms <= deadline_ms + 100, (
            f"504 after {took_ms:.0f} ms for a deadline of {deadline_ms} ms"
        )
        timed_out.append(timeout.headers[REQUEST_ID])
    decisions = [
        decode(r.value, Decision)
        for r in read_exactly(stack.kafka, stack.topics.decisions, 4, timeout_s=10)
    ]
    reasons = {d.request_id: (d.chosen_model, d.reason) for d in decisions}
    assert [reasons[rid] for rid in timed_out] == [(None, "deadline_exceeded")] * 2
    assert reasons[champion.headers[REQUEST_ID]] == ("champ", "champion_in_time")
    assert reasons[fallback.headers[REQUEST_ID]] == ("backup", "fallback:1")


# -- 2. a replica killed under load ---------------------------------------------------

LOAD = 300
RATE_PER_S = 60.0
MAX_CONCURRENT = 32
KILL_AT = LOAD // 2
CHECK = 30  # requests sent after the failover, and again after the restart


@dataclass(frozen=True)
class Answer:
    index: int
    status: int
    request_id: str
    model: str | None
    reason: str | None


async def _load(
    stack: Stack, endpoint: str, count: int, rate_per_s: float, kill: tuple[int, str] | None = None
) -> list[Answer | BaseException]:
    """``count`` requests at a steady ``rate_per_s`` (at most MAX_CONCURRENT in flight);
    ``kill`` = (index, process): SIGKILL the process right after that request was sent."""
    gate = asyncio.Semaphore(MAX_CONCURRENT)
    limits = httpx.Limits(max_connections=MAX_CONCURRENT, max_keepalive_connections=32)
    async with httpx.AsyncClient(base_url=stack.url, timeout=30.0, limits=limits) as client:

        async def one(index: int) -> Answer:
            try:
                resp = await client.post(f"/v1/infer/{endpoint}", json={"inputs": index})
            finally:
                gate.release()
            return Answer(
                index,
                resp.status_code,
                resp.headers.get(REQUEST_ID, ""),
                resp.headers.get(MODEL),
                resp.headers.get(REASON),
            )

        tasks = []
        began = time.monotonic()
        for index in range(count):
            # the pace of the load, not a wait for the stack: this request's time slot
            await asyncio.sleep(max(0.0, began + index / rate_per_s - time.monotonic()))
            await gate.acquire()
            tasks.append(asyncio.create_task(one(index)))
            if kill is not None and index == kill[0]:
                await asyncio.to_thread(stack.kill, kill[1])
        return await asyncio.gather(*tasks, return_exceptions=True)


def answered(results: list[Answer | BaseException], count: int) -> list[Answer]:
    """The answers, once each request got exactly one HTTP answer, a 200."""
    failed = [r for r in results if isinstance(r, BaseException)]
    assert not failed, f"{len(failed)} requests got no HTTP answer, first: {failed[0]!r}"
    answers = [r for r in results if isinstance(r, Answer)]
    statuses = Counter(a.status for a in answers)
    assert statuses == {200: count}, f"statuses: {dict(statuses)}"
    assert len({a.request_id for a in answers}) == count, "two answers share a request id"
    return answers


def until_the_champion_answers_all(stack: Stack, timeout_s: float = 30.0) -> list[Answer]:
    """Batches of CHECK requests until the champion answers a whole batch in time (so
    the live replica owns every partition: the failover is over); every batch's answers.
    The group's membership has no event to wait on; what it changes is observable."""
    got: list[Answer] = []
    until = time.monotonic() + timeout_s
    while True:
        batch = answered(asyncio.run(_load(stack, "scored", CHECK, 100.0)), CHECK)
        got += batch
        if {a.reason for a in batch} == {"champion_in_time"}:
            return got
        assert time.monotonic() < until, f"no failover within {timeout_s:.0f} s of the load"


def launch_replicated(launch_stack: Launch) -> Stack:
    """Endpoint ``scored``: the champion ``champ`` as two replicas (``champ-1``,
    ``champ-2``) alone for 300 ms, then any roster model (``backup`` too) until 3 s."""
    champ = model_spec("champ", "echo", "champion", ["scored"], latency_ms=2)
    return launch_stack(
        policies=[
            policy("scored", 3000, ["champ", "backup"], (300, ["champ"]), ("deadline", "any"))
        ],
        workers=[
            Worker("champ-1", champ),
            Worker("champ-2", champ),
            Worker("backup", model_spec("backup", "echo", "challenger", ["scored"])),
        ],
    )


def test_a_replica_killed_under_load_loses_no_request_and_decides_each_once(
    launch_stack: Launch,
) -> None:
    """What is asserted, and why: ``backup`` runs throughout and the policy accepts it
    from 300 ms on, far inside the 3000 ms deadline, so some model can always answer in
    time: every request must get exactly one answer, a 200 (a 504 would mean a request
    or its reply was lost, not that no model could answer). Requests on the killed
    replica's partitions are answered by ``backup`` until the group fails over (the
    session timeout, 6 s); the other replica keeps answering as champion, then takes
    over every partition, re-reading what the dead one had not committed (so some
    requests are scored twice). Exactly one decision per request id is logged."""
    stack = launch_replicated(launch_stack)

    load = answered(
        asyncio.run(_load(stack, "scored", LOAD, RATE_PER_S, (KILL_AT, "champ-1"))), LOAD
    )
    assert {a.model for a in load} <= {"champ", "backup"}
    after_kill = [a for a in load if a.index > KILL_AT]
    assert any(a.reason == "champion_in_time" for a in after_kill), "the live replica stopped"
    assert any(a.reason == "fallback:1" for a in after_kill), "the kill had no effect"

    failed_over = until_the_champion_answers_all(stack)
    assert {a.model for a in failed_over} <= {"champ", "backup"}

    stack.restart("champ-1")  # the killed replica comes back and takes its share again
    stack.wait_ready(["champ-1", "champ-2"])
    restarted = answered(asyncio.run(_load(stack, "scored", CHECK, 100.0)), CHECK)
    assert {a.reason for a in restarted} == {"champion_in_time"}

    answers = load + failed_over + restarted
    decisions = [
        decode(r.value, Decision)
        for r in read_exactly(stack.kafka, stack.topics.decisions, len(answers), timeout_s=30)
    ]
    per_id = Counter(d.request_id for d in decisions)
    assert set(per_id) == {a.request_id for a in answers}
    assert max(per_id.values()) == 1, f"decided twice: {[i for i, n in per_id.items() if n > 1]}"
    by_id = {d.request_id: d for d in decisions}
    assert all(by_id[a.request_id].chosen_model == a.model for a in answers)
    assert all(by_id[a.request_id].reason == a.reason for a in answers)


# -- 3. malformed records on every topic ----------------------------------------------

GARBAGE = {
    "requests": b"\x00\xffnot a request",
    "scores": b"{not a score",
    "replies": b"\xfe\xfenot a reply",
}


def test_malformed_records_are_dead_lettered_and_every_service_keeps_serving(
    launch_stack: Launch,
) -> None:
    stack = launch_stack(
        policies=[
            policy("guarded", 3000, ["champ", "backup"], (1000, ["champ"]), ("deadline", "any"))
        ],
        workers=[
            Worker("champ", model_spec("champ", "echo", "champion", ["guarded"])),
            Worker("backup", model_spec("backup", "echo", "challenger", ["guarded"])),
        ],
    )
    topics = stack.topics

    def undecodable() -> float:
        return stack.metric(GATEWAY, "rdv_gateway_dropped_replies_total", reason="undecodable")

    dropped_before = undecodable()

    produce_all(
        stack.kafka,
        [
            Outbound(topics.requests, b"bad-request", GARBAGE["requests"]),
            Outbound(topics.scores, b"bad-score", GARBAGE["scores"]),
            Outbound(
                topics.replies, b"bad-reply", GARBAGE["replies"], partition=stack.reply_partition
            ),
        ],
    )

    letters = [
        decode(r.value, DeadLetter)
        for r in read_exactly(stack.kafka, topics.dead_letters, 5, timeout_s=30)
    ]
    # every reader of a topic dead-letters what it cannot decode, with its origin
    assert sorted((d.service, d.origin_topic) for d in letters) == sorted(
        [
            ("worker.champ", topics.requests),
            ("worker.backup", topics.requests),
            ("rendezvous", topics.requests),
            ("rendezvous", topics.scores),
            ("gateway", topics.replies),
        ]
    )
    roles = {topics.requests: "requests", topics.scores: "scores", topics.replies: "replies"}
    for letter in letters:
        assert base64.b64decode(letter.value_b64) == GARBAGE[roles[letter.origin_topic]]
        assert letter.error_code == "bad_message"
    # the gateway also counts the record as a dropped reply
    wait_for(
        lambda: undecodable() > dropped_before,
        10,
        lambda: "the gateway did not count the undecodable reply",
    )
    assert undecodable() == dropped_before + 1

    resp = stack.http.post("/v1/infer/guarded", json={"inputs": "still here"})
    assert resp.status_code == 200, resp.text
    assert resp.headers[MODEL] == "champ"
    assert resp.json()["output"] == "still here"
    assert stack.not_ready() == []
    assert all(p.probe("/healthz") for p in stack.procs.values())


def dead_letter_count(stack: Stack) -> int:
    topic = stack.topics.dead_letters
    return sum(end_offsets(stack.kafka, topic, stack.topics.partitions("dead_letters")).values())


def test_a_request_the_rendezvous_cannot_answer_is_dead_lettered_and_it_keeps_serving(
    launch_stack: Launch,
) -> None:
    """A well-formed request whose return address names a replies partition that does
    not exist (a replay, or a gateway whose topics file disagrees with the cluster):
    its reply can never be delivered, so the rendezvous must dead-letter the request,
    not fail on it (a restart would read it again: a crash loop)."""
    stack = launch_stack(
        policies=[policy("guarded", 3000, ["champ"], ("deadline", ["champ"]))],
        workers=[Worker("champ", model_spec("champ", "echo", "champion", ["guarded"]))],
    )
    rendezvous = stack.procs[RENDEZVOUS]
    nowhere = ReturnAddress(topic=stack.topics.replies, partition=99)  # replies has 6
    lost = request("x", endpoint="guarded", deadline_in_ms=60_000).model_copy(
        update={"return_address": nowhere}
    )
    produce_all(stack.kafka, [Outbound(stack.topics.requests, message_key(lost), encode(lost))])

    wait_for(
        lambda: dead_letter_count(stack) >= 1 or not rendezvous.alive,
        30,
        lambda: "the request was neither dead-lettered nor fatal",
    )
    assert rendezvous.alive, rendezvous.problem("died on a request it could not answer")
    (letter,) = [
        decode(r.value, DeadLetter) for r in read_exactly(stack.kafka, stack.topics.dead_letters, 1)
    ]
    # the request record, or, when the champion's score (with its copy of the request)
    # was answered before the record was read (the requests topic is read in batches),
    # that score: either names the request, and the record is released, not lost
    assert letter.service == "rendezvous"
    assert letter.origin_topic in (stack.topics.requests, stack.topics.scores)
    assert letter.key == lost.request_id
    assert "replies[99]" in letter.error
    resp = stack.http.post("/v1/infer/guarded", json={"inputs": "next"})
    assert resp.status_code == 200, resp.text
    assert stack.not_ready() == []


# -- 4. bad HTTP input ------------------------------------------------------------------


def end_offsets(kafka: KafkaSettings, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer(consumer_config(kafka, f"offsets-{uuid.uuid4().hex}", "test-offsets"))
    try:
        return consumer.end_offsets(topic, partitions)
    finally:
        consumer.close()


def chunks(total: int, size: int = 1024) -> Iterator[bytes]:
    """A body sent without Content-Length (chunked), so only its length counts."""
    for start in range(0, total, size):
        yield b"x" * min(size, total - start)


def test_bad_http_input_is_refused_and_never_reaches_the_requests_topic(
    launch_stack: Launch,
) -> None:
    stack = launch_stack(
        policies=[policy("strict", 2000, ["champ"], ("deadline", ["champ"]))],
        workers=[Worker("champ", model_spec("champ", "echo", "champion", ["strict"]))],
        gateway_env={"RDV_GATEWAY_MAX_BODY_BYTES": "4096"},
    )
    topic, parts = stack.topics.requests, stack.topics.partitions("requests")
    before = end_offsets(stack.kafka, topic, parts)
    as_json = {"content-type": "application/json"}
    http = stack.http

    refused = {
        "invalid json": http.post("/v1/infer/strict", content=b'{"inputs": ', headers=as_json),
        "not an object": http.post("/v1/infer/strict", json=[1, 2]),
        "no inputs": http.post("/v1/infer/strict", json={"input": 1}),
        "deadline as text": http.post("/v1/infer/strict", json={"inputs": 1, "deadline_ms": "1"}),
        "deadline as float": http.post("/v1/infer/strict", json={"inputs": 1, "deadline_ms": 10.5}),
        "attribute not a string": http.post(
            "/v1/infer/strict", json={"inputs": 1, "attributes": {"user": 7}}
        ),
        "deadline 0": http.post("/v1/infer/strict", json={"inputs": 1, "deadline_ms": 0}),
        "deadline < 0": http.post("/v1/infer/strict", json={"inputs": 1, "deadline_ms": -5}),
        "empty body": http.post("/v1/infer/strict", content=b"", headers=as_json),
        "oversized": http.post(
            "/v1/infer/strict", content=b'{"inputs": "' + b"x" * 5000 + b'"}', headers=as_json
        ),
        "oversized chunked": http.post("/v1/infer/strict", content=chunks(8192), headers=as_json),
        "text body": http.post(
            "/v1/infer/strict", content=b"inputs=1", headers={"content-type": "text/plain"}
        ),
        "unknown endpoint": http.post("/v1/infer/nowhere", json={"inputs": 1}),
        "unknown path": http.post("/v1/predict/strict", json={"inputs": 1}),
        "wrong method": http.get("/v1/infer/strict"),
    }
    statuses = {case: resp.status_code for case, resp in refused.items()}
    assert statuses == {
        "invalid json": 422,
        "not an object": 422,
        "no inputs": 422,
        "deadline as text": 422,
        "deadline as float": 422,
        "attribute not a string": 422,
        "deadline 0": 422,
        "deadline < 0": 422,
        "empty body": 422,
        "oversized": 413,
        "oversized chunked": 413,
        "text body": 415,
        "unknown endpoint": 404,
        "unknown path": 404,
        "wrong method": 405,
    }
    for case, resp in refused.items():
        assert set(resp.json()["error"]) == {"code", "message"}, case

    # a good request after them: its record is acknowledged before its answer comes, and
    # it must be the only new record (so a refused one that was still queued shows too)
    good = http.post("/v1/infer/strict", json={"inputs": "fine"})
    assert good.status_code == 200, good.text
    after = end_offsets(stack.kafka, topic, parts)
    assert sum(after.values()) - sum(before.values()) == 1, (before, after)
    assert stack.not_ready() == []
