"""The chaos harness's pure parts: poison records match the message contract's verdicts,
and the degraded-seconds, double-answer and dead-letter arithmetic (no broker)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bench.chaos import SCENARIOS, parse
from bench.chaos_load import NO_RESPONSE, REFUSED, Load, Sent
from bench.chaos_poison import READERS, build_all, classes, poison_id
from bench.chaos_readback import (
    Window,
    doubles,
    expected_letters,
    letter_score,
    match_letters,
    reader_of,
    tally,
)
from bench.chaos_report import degraded_seconds, last_degraded_after, load_figures, timeline
from bench.chaos_stack import Service
from services.common.codec import decode, decode_control, decode_reply_record, make_dead_letter
from services.common.errors import ConfigError, MessageError
from services.common.messages import Decision, Feedback, PolicyEntry, RequestEnvelope, Score
from services.common.policy import policy_from_entry
from services.common.topics import load_topics

TOPICS = load_topics(prefix="t.")
DECODERS: dict[str, Callable[[bytes | None], Any]] = {
    "requests": lambda b: decode(b, RequestEnvelope),
    "scores": lambda b: decode(b, Score),
    "decisions": lambda b: decode(b, Decision),
    "feedback": lambda b: decode(b, Feedback),
    "replies": decode_reply_record,
    "control": decode_control,
}
"""What each topic's readers decode with (the services' own decoders)."""


def test_poison_covers_every_topic_a_service_reads_with_at_least_20_classes() -> None:
    poisons = build_all(TOPICS)
    control = [p for p in poisons if p.role == "control"]
    assert all(not p.expect for p in control)  # counted by each process, not dead-lettered
    assert {p.cls for p in control if not p.counted} == {"control/empty", "control/null-value"}
    assert len(classes(poisons)) >= 20
    assert {p.role for p in poisons} == set(READERS)
    for role in READERS:
        mine = {p.cls.split("/", 1)[1] for p in poisons if p.cls.startswith(role + "/")}
        assert {"not-json", "not-utf8", "empty", "wrong-kind", "future-version"} <= mine
        assert "missing-fields" in mine
    assert all(p.out.topic == TOPICS.by_role[p.role] for p in poisons)


def test_rejected_poison_fails_to_decode_and_tolerated_poison_decodes() -> None:
    for p in build_all(TOPICS):
        decoder = DECODERS[p.role]
        if p.cls == "control/bad-policy":  # a policy entry whose policy is refused
            entry = decoder(p.out.value)
            assert isinstance(entry, PolicyEntry)
            with pytest.raises(ConfigError):
                policy_from_entry(entry)
        elif set(p.expect or p.counted) == set(READERS[p.role]):  # every reader refuses it
            with pytest.raises(MessageError):
                decoder(p.out.value)
        else:  # valid; refused (if at all) only for where it asks its answer to go
            decoder(p.out.value)


def test_requests_that_ask_for_a_missing_return_address_are_valid_but_dead_lettered() -> None:
    by_class = {p.cls: p for p in build_all(TOPICS)}
    for cls in ("requests/no-such-return-topic", "requests/no-such-return-partition"):
        req = decode(by_class[cls].out.value, RequestEnvelope)
        assert by_class[cls].expect == ("rendezvous",)
        assert req.return_address.partition == 99 or req.return_address.topic != TOPICS.replies


def test_every_poison_record_carries_its_id_in_key_or_value() -> None:
    for p in build_all(TOPICS, repeats=2):
        pid = poison_id(p.out.key, p.out.value)
        assert pid is not None
        assert pid.startswith("poison-")
    null_key = next(p for p in build_all(TOPICS) if p.cls == "requests/null-key")
    assert null_key.out.key is None
    assert poison_id(None, null_key.out.value) == null_key.decided_once


def test_degraded_seconds_counts_each_second_with_a_bad_answer_once() -> None:
    t0 = 1000.0
    sent = [
        Sent(t0 + 0.1, 200, 20.0),  # fine
        Sent(t0 + 1.2, 504, 1000.0),  # second 1
        Sent(t0 + 1.7, NO_RESPONSE, 10_000.0),  # second 1 again
        Sent(t0 + 2.5, 200, 1049.0),  # within deadline + 50 ms: fine
        Sent(t0 + 3.5, 200, 1051.0),  # later than deadline + 50 ms: second 3
        Sent(t0 + 4.0, REFUSED, 1.0),  # second 4
        Sent(t0 + 9.0, 503, 1.0),  # outside the window
    ]
    assert degraded_seconds(sent, t0, t0 + 5, 1000.0) == 3
    assert last_degraded_after(sent, t0 + 2, t0 + 5, 1000.0) == 2.0
    assert last_degraded_after(sent[:1], t0, t0 + 5, 1000.0) == 0.0
    figures = load_figures(sent, t0, t0 + 5, 1000.0)
    assert (figures.requests, figures.ok, figures.degraded) == (6, 3, 4)
    assert (figures.no_response, figures.refused) == (1, 1)


def test_doubles_are_counted_per_request_id_in_the_window_of_its_first_record() -> None:
    windows = [Window("a", 10.0, 20.0), Window("b", 20.0, 30.0)]
    t = tally(
        [
            ("r1", 11_000),
            ("r1", 21_000),  # a double of a request first answered in a
            ("r2", 22_000),
            ("r3", 23_000),
            ("r3", 24_000),
            ("r3", 25_000),  # three records: one request decided twice over
            ("r4", 35_000),
            ("r4", 36_000),  # between the windows
            ("poison-x-1", 12_000),
            ("poison-x-1", 12_001),  # poison ids are counted apart
        ]
    )
    assert doubles(t, windows) == {"a": 1, "b": 1, "(between)": 1}
    assert doubles(t, windows, poison=True) == {"a": 1, "b": 0}


def test_dead_letters_are_matched_to_poison_classes_per_reader_and_origin() -> None:
    poisons = build_all(TOPICS)
    not_json = next(p for p in poisons if p.cls == "requests/not-json")
    null_key = next(p for p in poisons if p.cls == "requests/null-key")
    roles = {name: role for role, name in TOPICS.by_role.items()}

    def letter(p_out: Any, service: str, offset: int, failed_ms: int = 15_000) -> Any:
        return make_dead_letter(
            topic=p_out.topic,
            partition=0,
            offset=offset,
            key=p_out.key,
            value=p_out.value,
            error=MessageError("bad"),
            service=service,
            now_ms=failed_ms,
        )

    letters = [
        letter(not_json.out, "rendezvous", 5),
        letter(not_json.out, "rendezvous", 5),  # written again after a restart
        letter(not_json.out, "worker.fast", 5),
        letter(null_key.out, "rendezvous", 6),  # tolerated, but matched by its value
        make_dead_letter(
            topic=TOPICS.requests,
            partition=1,
            offset=7,
            key=b"a-real-request",
            value=b"{}",
            error=MessageError("bad"),
            service="archive",
            now_ms=15_000,
        ),
    ]
    windows = [Window("poison", 10.0, 20.0)]
    got = match_letters(letters, poisons, roles, windows)
    assert got.by_class[("requests/not-json", "rendezvous")] == 1
    assert got.records[("requests/not-json", "rendezvous")] == 2
    assert got.by_class[("requests/not-json", "worker.fast")] == 1
    assert ("requests/not-json", "archive") not in got.by_class
    assert got.by_class[("requests/null-key", "rendezvous")] == 1
    assert got.others == {("poison", "archive", "requests"): 1}
    expected = expected_letters(poisons)
    assert expected[("requests/not-json", "archive")] == 1
    assert ("requests/null-key", "rendezvous") not in expected


def test_scenarios_are_selected_by_name_in_schedule_order() -> None:
    args = parse(["--only", "poison,rendezvous-kill", "--quick"])
    assert args.scenarios == ["rendezvous-kill", "poison"]
    assert parse([]).scenarios == list(SCENARIOS)
    with pytest.raises(SystemExit):
        parse(["--only", "no-such-scenario"])


def test_letter_score_counts_hits_up_to_the_expected_and_flags_the_rest() -> None:
    poisons = build_all(TOPICS)
    got = {
        ("requests/not-json", "rendezvous"): 1,
        ("requests/not-json", "archive"): 2,  # one more than expected
        ("requests/null-key", "rendezvous"): 1,  # a valid request refused: unexpected
        ("requests/unknown-endpoint", "rendezvous"): 1,  # it should have been answered
        ("requests/huge-payload", "worker.fast"): 1,  # allowed: its score may be too large
    }
    hit, expected, unexpected = letter_score(poisons, got)
    assert hit == 2
    assert expected == sum(len(p.expect) for p in poisons)
    assert unexpected == 3


def test_a_dead_letter_names_the_reader_it_belongs_to() -> None:
    assert reader_of("rendezvous", "requests") == "rendezvous"
    assert reader_of("rendezvous.control", "control") == "rendezvous"
    assert reader_of("worker.fast", "requests") == "worker.fast"
    assert reader_of("somebody", "requests") == "somebody"


def test_supervised_exits_not_planned_by_the_harness_are_counted_from_state_files(
    tmp_path: Path,
) -> None:
    svc = Service("rendezvous-1", ["python"], {}, "http://unused", tmp_path / "x.log", tmp_path)
    state = tmp_path / "rendezvous-1.state.json"

    def write(restarts: int, status: str, code: int = -9) -> None:
        state.write_text(
            json.dumps(
                {
                    "name": "rendezvous-1",
                    "restarts": restarts,
                    "status": status,
                    "last_exit": f"exit code {code}",
                    "last_exit_code": code,
                    "last_exit_at": 1.0,
                    "last_reason": "KafkaException",
                }
            )
        )

    write(0, "running")
    assert svc.check() == []
    svc.planned_exits = 1  # the harness SIGKILLed it
    write(0, "backoff")
    assert svc.check() == []  # that exit was planned
    write(1, "running")
    assert svc.check() == []  # and restarted
    write(3, "backoff", code=1)  # three more exits (a crash loop), none planned
    died = svc.check()
    assert [d.code for d in died] == [1, 1, 1]
    assert "KafkaException" in died[0].last_line
    assert len(svc.exits) == 3


class _Server:
    """A local HTTP/1.1 server on its own event loop thread: answers 200 with a request
    id, except that it drops the connection without an answer when ``drop`` is set."""

    def __init__(self) -> None:
        self.drop = False
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self.loop
        ).result(5)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        """Close on the server's own loop: asyncio's Server is not thread-safe, and closing
        it from the test's thread raced with a connection ending on the loop's."""
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                if self.drop:
                    writer.close()
                    return
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-rdv-request-id: r1\r\n\r\n{}"
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def _run_load(load: Load, count: int) -> list[Sent]:
    load.start()
    deadline = time.monotonic() + 10
    while len(load.results) < count and time.monotonic() < deadline:
        time.sleep(0.01)  # polling another thread's progress, bounded
    return load.stop()


def test_load_counts_answers_lost_connections_and_refusals_apart() -> None:
    server = _Server()
    try:
        ok = _run_load(Load("127.0.0.1", server.port, "/x", {"a": 1}, rate=200.0), 20)
        assert ok
        assert {s.status for s in ok} == {200}
        assert {s.request_id for s in ok} == {"r1"}
        server.drop = True  # received, then the connection closes: no HTTP response
        lost = _run_load(Load("127.0.0.1", server.port, "/x", {"a": 1}, rate=200.0), 10)
        assert lost
        assert {s.status for s in lost} == {NO_RESPONSE}
    finally:
        server.close()
    port = server.port  # nothing listens there any more
    refused = _run_load(Load("127.0.0.1", port, "/x", {"a": 1}, rate=200.0), 10)
    assert refused
    assert {s.status for s in refused} == {REFUSED}


def test_timeline_marks_each_second_with_the_worst_answer_seen() -> None:
    t0 = 100.0
    sent = [
        Sent(t0 + 0.5, 200, 10.0),
        Sent(t0 + 1.1, 503, 1.0),
        Sent(t0 + 1.5, 504, 1000.0),  # a 504 outranks a 503 in the same second
        Sent(t0 + 2.2, 200, 2000.0),  # late
        Sent(t0 + 3.3, REFUSED, 1.0),
        Sent(t0 + 3.4, 200, 5.0),
    ]
    assert timeline(sent, t0, t0 + 5, 1000.0) == ".4lx."
