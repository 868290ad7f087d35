"""Replay: the schedule, the replayed envelope, and the rendezvous answering no client."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from services.cli.main import build_parser, main
from services.common.codec import decode, encode
from services.common.errors import ConfigError
from services.common.kafka import Record
from services.common.loop import Context, Inbound
from services.common.messages import REPLAY, REPLAY_MODEL, REPLAY_OF, Decision, ReturnAddress
from services.common.policy import parse_policy
from services.common.topics import load_topics
from services.rendezvous.mailbox import MailboxStore
from services.rendezvous.service import Rendezvous
from services.replay import MARK_MAX
from services.replay.plan import Archived, offsets_ms
from services.replay.send import envelope, replay_id
from tests.factories import policy_doc, score_for

TOPICS = load_topics(prefix="unit.")
_offsets = itertools.count()


def _archived(rid: str, created: int, payload: object = None) -> Archived:
    return Archived(rid, "demo", payload, created, 800, rid)  # type: ignore[arg-type]


def test_offsets_keep_the_original_spacing_scaled_or_none() -> None:
    plan = [_archived("a", 1000), _archived("b", 1500), _archived("c", 3000)]
    assert offsets_ms(plan, 1.0) == [0.0, 500.0, 2000.0]
    assert offsets_ms(plan, 10.0) == [0.0, 50.0, 200.0]
    assert offsets_ms(plan, None) == [0.0, 0.0, 0.0]
    with pytest.raises(ConfigError, match="speed"):
        offsets_ms(plan, 0.0)


def test_the_replayed_envelope_is_marked_with_a_fresh_id_and_deadline() -> None:
    chat = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
    env = envelope(
        _archived("orig-1", 1000, chat),
        mark="replay-x",
        reply_to=ReturnAddress(topic="rdv.replies"),
        now_ms=5000,
        model="chall",
    )
    assert env.request_id == "replay-x:orig-1"
    assert (env.created_ms, env.deadline_epoch_ms) == (5000, 5800)
    assert env.attributes == {REPLAY: "replay-x", REPLAY_OF: "orig-1", REPLAY_MODEL: "chall"}
    assert env.payload == {"messages": [{"role": "user", "content": "hi"}]}  # no stream


def test_the_rendezvous_decides_a_replay_but_sends_no_reply() -> None:
    policy = parse_policy(
        policy_doc(models=["fast"], stages=[{"until_ms": "deadline", "accept": ["fast"]}]), "t"
    )
    rdv = Rendezvous(policies={"demo": policy}, topics=TOPICS, store=MailboxStore())
    env = envelope(
        _archived("orig", 1000, "hi"),
        mark="r1",
        reply_to=ReturnAddress(topic=TOPICS.replies),
        now_ms=int(time.time() * 1000),  # the rendezvous refuses deadlines far ahead
        model=None,
    )
    ctx = Context()
    batch = [(TOPICS.requests, env), (TOPICS.scores, score_for(env, model="fast", output="x"))]
    rdv.process([Inbound(Record(t, 0, next(_offsets), b"k", encode(m)), m) for t, m in batch], ctx)
    topics = [out.topic for out, _ in ctx.emits]
    assert topics == [TOPICS.decisions]
    decision = decode(ctx.emits[0][0].value, Decision)
    assert (decision.request_id, decision.chosen_model) == ("r1:orig", "fast")


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--mark", "m" * (MARK_MAX + 1), "characters"),
        ("--mark", "", "characters"),
        ("--speed", "nan", "finite number above 0"),
        ("--speed", "0", "finite number above 0"),
        ("--speed", "inf", "finite number above 0"),
        ("--limit", "-1", "0 or more"),
        ("--limit", "ten", "whole number"),
    ],
)
def test_rdv_replay_refuses_bad_options_before_reading_anything(
    option: str, value: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["replay", option, value])
    assert exit_.value.code == 2
    assert says in capsys.readouterr().err


def test_rdv_replay_takes_good_options_and_the_archive_service_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = build_parser().parse_args(
        ["replay", "--mark", "m" * MARK_MAX, "--speed", "2.5", "--limit", "0"]
    )
    assert (args.mark, args.speed, args.limit, args.archive) == ("m" * MARK_MAX, 2.5, 0, None)
    monkeypatch.setenv("RDV_ARCHIVE_DIR", str(tmp_path / "elsewhere"))
    assert main(["replay", "--fast"]) == 2
    assert f"no archive at {tmp_path / 'elsewhere'}" in capsys.readouterr().err


def test_replayed_ids_stay_distinct_and_never_too_long() -> None:
    mark = "m" * MARK_MAX
    long_ids = [f"{'x' * 120}-{i}" for i in range(3)]
    ids = {replay_id(mark, rid) for rid in long_ids}
    assert len(ids) == 3
    assert all(len(rid) <= 128 and rid.startswith(f"{mark}:") for rid in ids)
    assert replay_id("r1", "orig") == "r1:orig"
