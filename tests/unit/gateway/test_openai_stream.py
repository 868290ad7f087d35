"""Streamed chat completions (``stream: true``) over the in-memory bus, read with the
official ``openai`` client: the granted model's deltas as chunks, the reply's rest,
errors as events or statuses, the safe reply without a grant, deadlines, disconnects."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
from fastapi import FastAPI

from services.common.chat import ChatOutput, ChatUsage
from services.common.codec import encode
from services.common.messages import Delta, OodCheck, Reply, RequestEnvelope, StreamGrant
from services.common.topics import Topics
from services.gateway.app import build_app
from services.gateway.openai.streaming import StreamedText
from services.gateway.server import serving
from services.gateway.service import Gateway
from services.gateway.settings import GatewaySettings
from tests.unit.gateway.fakes import FakeBus, failed, metric

USER = [{"role": "user", "content": "What is the capital of France?"}]
CLEAR = OodCheck(status="clear", detector="ood", score=1.5)

Record = Callable[[RequestEnvelope], bytes]


@pytest.fixture
def app(chat_settings: GatewaySettings, bus: FakeBus, topics: Topics) -> FastAPI:
    return build_app(chat_settings, bus=bus, topics=topics)


@pytest.fixture
def api(app: FastAPI) -> Iterator[tuple[openai.OpenAI, str]]:
    with serving(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=10)
        yield client, url
        client.close()


def grant(model: str = "smol", ood: OodCheck | None = None) -> Record:
    return lambda env: encode(
        StreamGrant(request_id=env.request_id, model=model, granted_ms=1.0, ood=ood)
    )


def delta(offset: int, text: str, model: str = "smol", seq: int = 0) -> Record:
    return lambda env: encode(
        Delta(request_id=env.request_id, model=model, seq=seq, offset=offset, text=text)
    )


def reply(text: str, model: str | None = "smol", finish: str = "stop", **kw: object) -> Record:
    out = ChatOutput(
        text=text,
        finish_reason=finish,  # type: ignore[arg-type]
        usage=ChatUsage(prompt_tokens=11, completion_tokens=4),
    )
    reason = str(kw.pop("reason", "champion_in_time"))
    return lambda env: encode(
        Reply(
            request_id=env.request_id,
            model=model,
            reason=reason,
            output=out.model_dump(),
            decided_ms=1.0,
            **kw,  # type: ignore[arg-type]
        )
    )


def script(*records: Record) -> Callable[[RequestEnvelope], list[bytes]]:
    return lambda env: [r(env) for r in records]


def stream_texts(client: openai.OpenAI, **kw: object) -> tuple[list[str], list[object]]:
    chunks = list(
        client.chat.completions.create(model="chat", messages=USER, stream=True, **kw)  # type: ignore[call-overload]
    )
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    return texts, chunks


def events(url: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"model": "chat", "messages": USER, "stream": True}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=10)


def test_the_granted_models_deltas_stream_as_chunks(
    api: tuple[openai.OpenAI, str], bus: FakeBus
) -> None:
    client, _ = api
    bus.responder = script(
        delta(0, "Par"),  # before the grant: held until it names a model
        delta(0, "Lon", model="smol-tight"),  # not granted: never shown
        grant(ood=CLEAR),
        delta(3, "is is"),
        delta(5, " the", model="smol-tight"),
        delta(8, " the capital."),
        reply("Paris is the capital."),
    )

    texts, chunks = stream_texts(client)

    assert texts == ["Par", "is is", " the capital."]
    assert "".join(texts) == "Paris is the capital."
    first, last = chunks[0], chunks[-1]
    assert first.choices[0].delta.role == "assistant"  # type: ignore[attr-defined]
    assert first.model_extra["ood"]["status"] == "clear"  # type: ignore[attr-defined]
    assert last.choices[0].finish_reason == "stop"  # type: ignore[attr-defined]
    assert last.model_extra["rdv"] == {  # type: ignore[attr-defined]
        "model": "smol",
        "reason": "champion_in_time",
        "finish_reason": "stop",
    }
    assert {c.model for c in chunks} == {"smol"}  # type: ignore[attr-defined]
    [env] = bus.envelopes()
    assert env.payload["stream"] is True  # type: ignore[index,call-overload]


def test_headers_name_the_granted_model_and_the_stream_is_sse(
    api: tuple[openai.OpenAI, str], bus: FakeBus
) -> None:
    _, url = api
    bus.responder = script(grant(ood=CLEAR), delta(0, "Paris"), reply("Paris"))
    resp = events(url)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.headers["x-rdv-model"] == "smol"
    assert resp.headers["x-rdv-ood"] == "clear"
    assert resp.headers["x-rdv-request-id"] == bus.envelopes()[0].request_id
    assert resp.text.endswith("data: [DONE]\n\n")


def test_the_reply_sends_what_the_deltas_did_not(
    api: tuple[openai.OpenAI, str], bus: FakeBus
) -> None:
    client, _ = api
    bus.responder = script(grant(), delta(0, "Paris"), reply("Paris, France.", finish="deadline"))
    texts, chunks = stream_texts(client, stream_options={"include_usage": True})
    assert texts == ["Paris", ", France."]
    assert chunks[-2].choices[0].finish_reason == "length"  # type: ignore[attr-defined]
    assert chunks[-2].model_extra["rdv"]["finish_reason"] == "deadline"  # type: ignore[attr-defined]
    usage = chunks[-1].usage  # type: ignore[attr-defined]
    assert chunks[-1].choices == []  # type: ignore[attr-defined]
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (11, 4, 15)


def test_a_reply_that_disagrees_with_the_stream_wins_and_is_counted(
    api: tuple[openai.OpenAI, str], bus: FakeBus
) -> None:
    client, _ = api
    before = metric("rdv_gateway_stream_mismatches_total", endpoint="chat")
    bus.responder = script(grant(), delta(0, "Lyon"), reply("Paris is it."))
    texts, _ = stream_texts(client)
    assert texts == ["Lyon", "s is it."]  # sent text cannot be taken back: the rest by length
    assert metric("rdv_gateway_stream_mismatches_total", endpoint="chat") == before + 1


def test_an_error_reply_after_the_grant_is_an_error_event(
    api: tuple[openai.OpenAI, str], bus: FakeBus
) -> None:
    client, url = api
    bus.responder = script(grant(), delta(0, "Par"), lambda env: failed(env, "all_failed"))
    with pytest.raises(openai.APIError) as caught:
        stream_texts(client)
    assert caught.value.code == "all_failed"
    assert caught.value.body == {"code": "all_failed", "message": "it was all_failed"}

    resp = events(url)
    assert resp.status_code == 200
    assert resp.text.endswith(
        'event: error\ndata: {"error": {"code": "all_failed", "message": "it was all_failed"}}\n\n'
    )
    assert "[DONE]" not in resp.text


def test_an_error_reply_before_any_grant_is_an_http_error(
    api: tuple[openai.OpenAI, str], bus: FakeBus
) -> None:
    client, _ = api
    bus.responder = lambda env: [failed(env, "prompt_too_long")]
    with pytest.raises(openai.BadRequestError) as caught:
        stream_texts(client)
    assert caught.value.status_code == 400
    assert "prompt_too_long" in str(caught.value)


def test_a_reply_without_a_grant_is_one_chunk(api: tuple[openai.OpenAI, str], bus: FakeBus) -> None:
    client, url = api
    flagged = OodCheck(status="flagged", detector="ood", score=9.0)
    safe = reply("Sorry, I can help with travel.", model=None, reason="ood_safe_reply", ood=flagged)
    bus.responder = script(delta(0, "Par"), safe)  # the champion's delta never shows

    texts, chunks = stream_texts(client)

    assert texts == ["Sorry, I can help with travel."]
    assert chunks[0].model == "chat"  # type: ignore[attr-defined]
    assert chunks[0].model_extra["ood"]["status"] == "flagged"  # type: ignore[attr-defined]
    resp = events(url)
    assert resp.headers["x-rdv-reason"] == "ood_safe_reply"
    assert resp.headers["x-rdv-ood"] == "flagged"
    assert resp.headers["x-rdv-finish-reason"] == "stop"


def test_a_reply_without_a_grant_that_is_no_chat_answer_is_502_and_frees_its_request(
    app: FastAPI, api: tuple[openai.OpenAI, str], bus: FakeBus
) -> None:
    _, url = api
    gateway: Gateway = app.state.gateway
    bus.responder = lambda env: [  # a safe reply configured as plain text, no chat answer
        encode(
            Reply(
                request_id=env.request_id,
                model=None,
                reason="ood_safe_reply",
                output={"text": "sorry"},
                decided_ms=1.0,
            )
        )
    ]
    resp = events(url)
    assert resp.status_code == 502
    assert resp.json()["error"]["code"] == "bad_message"
    assert len(gateway.pending) == 0


def test_no_grant_and_no_reply_by_the_deadline_is_504(
    api: tuple[openai.OpenAI, str], bus: FakeBus
) -> None:
    _, url = api
    bus.responder = script(delta(0, "Par"))
    resp = events(url, headers={"x-rdv-deadline-ms": "150"})
    assert resp.status_code == 504
    assert resp.json()["error"]["code"] == "no_answer"


def test_a_stream_that_gets_no_reply_by_the_deadline_ends_with_an_error_event(
    api: tuple[openai.OpenAI, str], bus: FakeBus
) -> None:
    _, url = api
    bus.responder = script(grant(), delta(0, "Par"))
    resp = events(url, headers={"x-rdv-deadline-ms": "150"})
    assert resp.status_code == 200
    assert '"content":"Par"' in resp.text
    tail = resp.text.rsplit("\n\n", 2)[-2]
    assert tail.startswith("event: error\ndata: ")
    assert json.loads(tail.split("data: ", 1)[1])["error"]["code"] == "no_answer"


def test_a_client_that_goes_away_frees_its_request(
    tmp_path: Path, bus: FakeBus, topics: Topics
) -> None:
    policies = tmp_path / "long"
    policies.mkdir()  # a deadline no busy machine reaches: only the disconnect frees it
    (policies / "chat.yaml").write_text(
        "endpoint: chat\ndeadline_ms: 120000\nstages: [{until_ms: deadline, accept: any}]\n"
    )
    settings = GatewaySettings(policies=policies, max_body_bytes=65536, max_loop_lag_ms=60_000)
    app = build_app(settings, bus=bus, topics=topics)
    gateway: Gateway = app.state.gateway
    bus.responder = script(grant(), delta(0, "Par"))  # and then nothing until the deadline
    body = {"model": "chat", "messages": USER, "stream": True}
    with serving(app) as url:
        with (
            httpx.Client(timeout=30) as http,
            http.stream("POST", f"{url}/v1/chat/completions", json=body) as resp,
        ):
            lines = resp.iter_lines()  # held: a dropped iterator closes the connection
            assert next(lines).startswith("data: ")
            assert len(gateway.pending) == 1
        until = time.monotonic() + 30.0
        while len(gateway.pending) and time.monotonic() < until:
            time.sleep(0.01)  # the server notices the disconnect on its own schedule
        assert len(gateway.pending) == 0


def test_deltas_for_a_request_that_does_not_stream_are_dropped(
    api: tuple[openai.OpenAI, str], bus: FakeBus
) -> None:
    client, _ = api
    name = "rdv_gateway_dropped_stream_records_total"
    before = metric(name, kind="delta", reason="not_streaming")
    bus.responder = script(delta(0, "Par"), grant(), reply("Paris"))
    resp = client.chat.completions.create(model="chat", messages=USER)  # type: ignore[arg-type]
    assert resp.choices[0].message.content == "Paris"
    assert "stream" not in bus.envelopes()[0].payload  # type: ignore[operator]
    assert metric(name, kind="delta", reason="not_streaming") == before + 1


def _d(offset: int, text: str, model: str = "smol", seq: int = 0) -> Delta:
    return Delta(request_id="r", model=model, seq=seq, offset=offset, text=text)


def test_streamed_text_takes_each_character_once_in_order() -> None:
    text = StreamedText()
    assert text.feed(_d(5, " is", seq=1)) == ""  # early, out of order
    assert text.feed(_d(0, "Paris", seq=0)) == ""
    assert text.feed(StreamGrant(request_id="r", model="smol", granted_ms=1.0)) == "Paris is"
    assert text.feed(StreamGrant(request_id="r", model="other", granted_ms=2.0)) == ""
    assert text.feed(_d(0, "Paris is the")) == " the"  # a re-run from the start: only news
    assert text.feed(_d(20, "gap")) == ""  # a gap: the reply fills it
    assert text.feed(_d(3, "XX")) == ""  # disagrees with what was sent
    assert text.feed(_d(12, " capital", model="other")) == ""
    assert text.sent == "Paris is the"
    assert text.finish("Paris is the capital.") == (" capital.", True)
    assert text.finish("Lyon") == ("", False)
