"""``python -m bench.bandit``: the learning rendezvous, proven on known rewards.

1. Simulated through the rendezvous's own decide() (bench.bandit_sim), repeated runs:
   three arms of reward 0.50 / 0.55 / 0.60 (share on the best arm, regret against the
   best fixed model and a uniform random policy); context buckets whose best model
   differs (contextual stage vs the context-free stage vs the best single model).
2. Off-policy evaluation coverage and the sequential gate (bench.gate_sim).
3. Through the real stack: broker, gateway, rendezvous, archive, compare (the learner),
   three echo workers; a feedback client draws each answer's reward from the answering
   model's known rate and posts it to ``/v1/feedback``; the learner publishes the
   rewards to the control topic and the rendezvous draws from them. Reports the share
   of answers per model in windows of requests, regret, and the learned versions seen.

Prints the machine and one JSON line last. ``--quick``: fewer repeats and requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections import Counter
from typing import Any

import httpx

from bench import bandit_sim, gate_sim
from bench.chaos_report import machine
from bench.stack import BenchStack, free_port
from services.devstack.stack import ProcessSpec

STACK_RATES = {"a": 0.50, "b": 0.55, "c": 0.60}
STACK_POLICY = """
endpoint: bench
deadline_ms: 1000
models: [a, b, c]
stages:
  - {until_ms: 800, accept: [a, b, c], pick: bandit}
  - {until_ms: deadline, accept: any}
bandit: {reward: bernoulli, min_share: 0.01}
"""
WORKERS = {m: f"echo:name={m},role=challenger,endpoints=bench,latency_ms=0" for m in "abc"}


async def _client(
    url: str, n: int, concurrency: int, seed: int
) -> list[tuple[float, str | None, float, int | None]]:
    """``n`` requests, each answer's reward drawn from its model's rate and fed back;
    returns (sent at, model, reward, status) in send order."""
    rng = random.Random(seed)
    out: list[tuple[float, str | None, float, int | None]] = [(0.0, None, 0.0, None)] * n
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    async with httpx.AsyncClient(base_url=url, timeout=10.0) as http:

        async def one() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                sent = time.monotonic()
                try:
                    res = await http.post("/v1/infer/bench", json={"inputs": {"i": i}})
                except httpx.HTTPError:
                    out[i] = (sent, None, 0.0, None)
                    continue
                model = res.json().get("model") if res.status_code == 200 else None
                reward = 1.0 if model and rng.random() < STACK_RATES[model] else 0.0
                if model is not None:
                    rid = res.headers["x-rdv-request-id"]
                    await http.post("/v1/feedback", json={"request_id": rid, "reward": reward})
                out[i] = (sent, model, reward, res.status_code)

        await asyncio.gather(*(one() for _ in range(concurrency)))
    return out


def through_stack(n: int, concurrency: int) -> dict[str, object]:
    """The bandit stage on the real stack (see the module doc)."""
    with BenchStack(STACK_POLICY, env={"RDV_ARCHIVE_MAX_AGE_S": "1"}) as stack:
        archive_dir = stack.dir / "archive"
        archive_ops, compare_ops = free_port(), free_port()
        stack._run(
            ProcessSpec(
                name="archive",
                command=["python", "-m", "services.archive"],
                env={"RDV_ARCHIVE_DIR": str(archive_dir), "RDV_ARCHIVE_OPS_PORT": str(archive_ops)},
                ready=f"http://127.0.0.1:{archive_ops}/readyz",
            )
        )
        stack._run(
            ProcessSpec(
                name="compare",
                command=["python", "-m", "services.compare"],
                env={
                    "RDV_COMPARE_ARCHIVE_DIR": str(archive_dir),
                    "RDV_COMPARE_OPS_PORT": str(compare_ops),
                    "RDV_COMPARE_LEARN_INTERVAL_S": "1",
                    "RDV_COMPARE_POLICIES": str(stack.policy),
                },
                ready=f"http://127.0.0.1:{compare_ops}/readyz",
            )
        )
        stack.start_workers(WORKERS)
        stack.start_front()
        started = time.monotonic()
        rows = asyncio.run(_client(f"http://127.0.0.1:{stack.gateway_port}", n, concurrency, 1))
        seconds = time.monotonic() - started
        learned = _learned_changes(stack)
    models = [m for _, m, _, _ in rows]
    statuses = Counter(s for _, _, _, s in rows)
    best = max(STACK_RATES, key=STACK_RATES.__getitem__)
    windows = []
    for start in range(0, n, 500):
        part = [m for m in models[start : start + 500] if m]
        counts = Counter(part)
        windows.append({m: round(counts[m] / max(len(part), 1), 3) for m in STACK_RATES})
    answered = [m for m in models if m]
    regret = sum(STACK_RATES[best] - STACK_RATES[m] for m in answered)
    uniform_regret = len(answered) * (STACK_RATES[best] - sum(STACK_RATES.values()) / 3)
    return {
        "requests": n,
        "concurrency": concurrency,
        "seconds": round(seconds, 1),
        "statuses": {str(k): v for k, v in statuses.items()},
        "share_per_500": windows,
        "best_share_last_1000": round(
            sum(1 for m in models[-1000:] if m == best) / max(len(models[-1000:]), 1), 3
        ),
        "regret": round(regret, 1),
        "uniform_regret": round(uniform_regret, 1),
        "mean_reward": round(sum(r for _, _, r, _ in rows) / n, 4),
        "learned_changes_applied": learned,
    }


def _learned_changes(stack: BenchStack) -> float:
    """rdv_rendezvous_learned_changes_total of the stack's rendezvous."""
    url = stack.specs["rendezvous"].ready.replace("/readyz", "/metrics")
    for line in httpx.get(url, timeout=5.0).text.splitlines():
        if line.startswith("rdv_rendezvous_learned_changes_total "):
            return float(line.split()[1])
    return 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bandit", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and requests")
    parser.add_argument("--no-stack", action="store_true", help="simulations only")
    parser.add_argument("--stack-requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    print("machine:", json.dumps(machine()), flush=True)
    repeats = 5 if args.quick else 20
    out: dict[str, Any] = {"machine": machine()}
    out["three_arms"] = bandit_sim.three_arms(repeats)
    print("three arms (simulated):", json.dumps(out["three_arms"]), flush=True)
    out["contextual"] = bandit_sim.contextual(max(repeats // 2, 3))
    print("contextual (simulated):", json.dumps(out["contextual"]), flush=True)
    out["ope"] = gate_sim.ope_coverage(runs=20 if args.quick else 100)
    print("off-policy coverage:", json.dumps(out["ope"]), flush=True)
    out["gate_false_promotions"] = gate_sim.false_promotions(runs=50 if args.quick else 200)
    print("gate, A/A:", json.dumps(out["gate_false_promotions"]), flush=True)
    out["gate_time_to_promote"] = gate_sim.time_to_promote(runs=20 if args.quick else 100)
    print("gate, +5 points:", json.dumps(out["gate_time_to_promote"]), flush=True)
    if not args.no_stack:
        n = min(args.stack_requests, 1500) if args.quick else args.stack_requests
        out["stack"] = through_stack(n, args.concurrency)
        print("through the stack:", json.dumps(out["stack"]), flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
