"""The real chat model through the whole stack: the official openai client -> gateway
-> Kafka -> SmolLM2 worker (continuous batching) -> rendezvous -> answer."""

from __future__ import annotations

import openai

from tests.integration.stack import Launch, Worker, launch_stack_fixture  # noqa: F401

CHAT = {
    "endpoint": "chat",
    "deadline_ms": 120_000,
    "models": ["smol"],
    "stages": [{"until_ms": "deadline", "accept": ["smol"]}],
}
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def test_the_openai_client_gets_the_real_models_answer(launch_stack: Launch) -> None:
    stack = launch_stack(policies=[CHAT], workers=[Worker("smol", "models/specs/smol.yaml")])
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=120)
    try:
        resp = client.chat.completions.create(
            model="chat",
            messages=FRANCE,  # type: ignore[arg-type]
            temperature=0,
            max_tokens=24,
        )
        models = [m.id for m in client.models.list()]
        continued = client.completions.create(
            model="chat", prompt="The capital of France is", max_tokens=6, temperature=0
        )
        scored = client.chat.completions.create(
            model="chat",
            messages=FRANCE,  # type: ignore[arg-type]
            temperature=0,
            max_tokens=8,
            logprobs=True,
            top_logprobs=2,
            presence_penalty=0.5,
        )
    finally:
        client.close()

    # the model's own log-probabilities, one per answer token, greedy = the likeliest
    logprobs = scored.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.content is not None
    assert scored.usage is not None
    eos = 1 if scored.choices[0].finish_reason == "stop" else 0  # the end token has none
    assert len(logprobs.content) == scored.usage.completion_tokens - eos
    for entry in logprobs.content:
        assert len(entry.top_logprobs) == 2
        assert entry.logprob <= 0
        assert entry.top_logprobs[0].logprob == entry.logprob
    assert "".join(e.token for e in logprobs.content) == scored.choices[0].message.content

    assert "Paris" in (resp.choices[0].message.content or "")
    assert resp.model == "smol"
    assert resp.usage is not None
    assert resp.usage.completion_tokens > 0
    assert models == ["chat", "smol"]
    assert continued.choices[0].text.strip()  # the raw prompt continued, no chat template
    assert continued.usage is not None
    assert continued.usage.prompt_tokens < resp.usage.prompt_tokens
    completion = stack.metric("smol", "rdv_worker_tokens_total", model="smol", kind="completion")
    assert completion >= resp.usage.completion_tokens
    assert stack.metric("smol", "rdv_worker_finished_total", model="smol", reason="stop") >= 1


def test_a_deadline_that_cannot_be_met_returns_the_partial_answer(launch_stack: Launch) -> None:
    stack = launch_stack(policies=[CHAT], workers=[Worker("smol", "models/specs/smol.yaml")])
    story = [{"role": "user", "content": "Write a very long story about a lighthouse."}]

    resp = stack.http.post(
        "/v1/chat/completions",
        json={"model": "chat", "messages": story, "temperature": 0, "max_tokens": 1024},
        headers={"x-rdv-deadline-ms": "2000"},
    )

    assert resp.status_code == 200, resp.text
    assert resp.headers["x-rdv-finish-reason"] == "deadline"
    body = resp.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] > 0
    assert body["choices"][0]["message"]["content"]


def test_the_openai_client_streams_the_real_models_answer(launch_stack: Launch) -> None:
    stack = launch_stack(policies=[CHAT], workers=[Worker("smol", "models/specs/smol.yaml")])
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=120)
    try:
        whole = client.chat.completions.create(
            model="chat",
            messages=FRANCE,  # type: ignore[arg-type]
            temperature=0,
            max_tokens=24,
        )
        chunks = list(
            client.chat.completions.create(
                model="chat",
                messages=FRANCE,  # type: ignore[arg-type]
                temperature=0,
                max_tokens=24,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    finally:
        client.close()

    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    streamed = "".join(texts)
    assert "Paris" in streamed
    assert len(texts) > 1  # token by token, not the whole answer at the end
    # greedy, and each request ran alone (batch size 1): the very same tokens
    assert streamed == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {c.model for c in chunks} == {"smol"}
    ends = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert ends == [whole.choices[0].finish_reason]
    assert chunks[-1].usage is not None
    assert whole.usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert stack.metric("smol", "rdv_worker_stream_deltas_total", model="smol") >= len(texts) - 1
    grants = stack.metric(
        "rendezvous", "rdv_rendezvous_stream_grants_total", endpoint="chat", model="smol"
    )
    assert grants == 1
    assert stack.metric("gateway", "rdv_gateway_stream_mismatches_total", endpoint="chat") == 0
    assert (
        stack.metric("gateway", "rdv_gateway_streams_total", endpoint="chat", outcome="done") == 1
    )
