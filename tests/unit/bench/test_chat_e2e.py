"""bench.chat_e2e's arithmetic: time to first token, inter-token latency and tokens/s
from streams, and the hops from one request's timestamps (fake times, no broker)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.chat_e2e import verdicts
from bench.chat_e2e_stats import HOPS, Marks, Stream, figures, hop_medians, hops_of, prompts


def test_a_stream_times_its_first_text_and_the_gaps_between_texts() -> None:
    s = Stream(sent_s=10.0, texts_s=(10.2, 10.3, 10.45), tokens=3)

    assert s.ttft_s == pytest.approx(0.2)
    assert s.gaps_s == pytest.approx([0.1, 0.15])
    assert Stream(sent_s=1.0, texts_s=(), tokens=0).ttft_s is None


def test_figures_pool_every_request_and_every_gap() -> None:
    streams = [
        Stream(0.0, (0.1, 0.2, 0.3), 3),
        Stream(0.0, (0.3, 0.5), 2),
        Stream(1.0, (), 0),  # no text came
    ]

    f = figures(streams, took_s=2.0)

    assert f["ttft_p50_ms"] == 100.0  # nearest rank of [100, 300]
    assert f["ttft_p99_ms"] == 300.0
    assert f["itl_p50_ms"] == 100.0  # gaps 100, 100, 200
    assert f["itl_p99_ms"] == 200.0
    assert f["tokens_per_s"] == 2.5  # 5 tokens in 2 s
    assert (f["requests"], f["no_text"], f["tokens"]) == (3, 1, 5)


def test_figures_refuse_a_level_without_wall_time() -> None:
    with pytest.raises(ValueError, match="wall time"):
        figures([Stream(0.0, (0.1,), 1)], took_s=0.0)


def marks(first_delta: float, granted: float) -> Marks:
    return Marks(
        sent=1000.0,
        created=1002.0,
        ood_received=1004.0,
        ood_started=1005.0,
        ood_finished=1025.0,
        ood_in=1027.0,
        granted=granted,
        champ_received=1003.0,
        first_delta=first_delta,
        first_text=max(first_delta, granted) + 4.0,
    )


def test_hops_follow_the_path_and_the_later_of_grant_and_first_delta() -> None:
    h = hops_of(marks(first_delta=1150.0, granted=1028.0))

    assert set(h) == set(HOPS)
    assert h["client_to_gateway"] == 2.0
    assert h["gateway_to_detector"] == 2.0
    assert h["detector_predicts"] == 20.0
    assert h["detector_to_rendezvous"] == 2.0
    assert h["rendezvous_grants"] == 1.0
    assert h["created_to_grant"] == 26.0
    assert h["gateway_to_champion"] == 1.0
    assert h["created_to_first_delta"] == 148.0
    assert h["first_token_waits_for_grant"] == 0.0  # granted long before the first token
    assert h["ready_to_client"] == 4.0
    assert h["ttft"] == 154.0

    late = hops_of(marks(first_delta=1020.0, granted=1028.0))
    assert late["first_token_waits_for_grant"] == 8.0
    assert late["ready_to_client"] == 4.0  # from the grant, the later one


def test_hop_medians_and_the_share_whose_grant_came_later() -> None:
    rows = [marks(1150.0, 1028.0), marks(1020.0, 1028.0), marks(1200.0, 1028.0)]

    m = hop_medians(rows)

    assert m["created_to_first_delta"] == 148.0  # of 18, 148, 198
    assert m["grant_later"] == 0.33
    assert m["requests"] == 3
    assert math.isnan(hop_medians([])["ttft"])


def test_prompts_are_in_scope_and_spread_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    rows = [{"text": f"q{i}", "intent": "oos" if i % 2 else "x"} for i in range(8)]
    path.write_text("\n".join(json.dumps(r) for r in rows))

    assert prompts(2, path) == ["q0", "q4"]
    with pytest.raises(ValueError, match="fewer than 5"):
        prompts(5, path)
    assert len(prompts(32)) == 32  # the bundled CLINC150 queries


def test_verdicts_read_the_two_targets_per_variant() -> None:
    engine = {str(c): {"ttft_p50_ms": 100.0, "tokens_per_s": 50.0} for c in (1, 4, 16)}
    stack = {
        "full": {str(c): {"ttft_p50_ms": 180.0, "tokens_per_s": 30.0} for c in (1, 4, 16)},
        "solo": {str(c): {"ttft_p50_ms": 140.0, "tokens_per_s": 40.0} for c in (1, 4, 16)},
    }

    v = verdicts(engine, stack)

    assert v["full"]["gap"]["1"] == {"ttft_p50_extra_ms": 80.0, "tokens_per_s_share": 0.6}
    assert (v["full"]["ttft_c1_met"], v["full"]["tokens_c16_met"]) == (False, False)
    assert (v["solo"]["ttft_c1_met"], v["solo"]["tokens_c16_met"]) == (True, True)
