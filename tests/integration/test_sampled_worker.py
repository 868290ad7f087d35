"""A sampled model's worker (spec ``sample`` < 1) on the real broker: it scores exactly
the requests whose hash is in its sample and sends a ``not_sampled`` skip for the rest."""

from __future__ import annotations

from services.common.messages import ScoreStatus
from services.common.sampling import in_sample, not_sampled_error
from services.common.settings import KafkaSettings
from services.common.topics import Topics
from tests.integration.kafka_io import read_exactly
from tests.integration.test_worker import fresh, scores_of, send, worker

SHADOW = "latency:name=llm2,role=challenger,endpoints=demo,sample=0.3,latency_ms=1"


def test_a_sampled_worker_scores_its_sample_and_skips_the_rest(
    kafka_settings: KafkaSettings, topics: Topics
) -> None:
    reqs = [fresh({"n": i}) for i in range(120)]
    send(kafka_settings, topics, reqs)

    stats = worker(kafka_settings, topics, SHADOW).run(max_records=120, idle_timeout_s=60)

    assert stats.records == 120
    scores = {s.request_id: s for s in scores_of(read_exactly(kafka_settings, topics.scores, 120))}
    assert set(scores) == {r.request_id for r in reqs}  # one score per request
    inside = {r.request_id for r in reqs if in_sample("llm2", r.request_id, 0.3)}
    assert 0 < len(inside) < len(reqs)
    scored = {rid for rid, s in scores.items() if s.status is ScoreStatus.OK}
    assert scored == inside
    for req in reqs:
        score = scores[req.request_id]
        if req.request_id in inside:
            assert (score.output, score.error) == (req.payload, None)
        else:
            assert (score.status, score.output) == (ScoreStatus.SKIPPED, None)
            assert score.error == not_sampled_error(0.3)
