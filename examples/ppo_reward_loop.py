"""A PPO-shaped reward loop on Ray: rollout actors produce batches of responses and ask the scoring
cluster for their rewards concurrently through `RewardClient`; a learner step then uses them
(here: whitened advantages and the batch's mean reward; no policy is trained).

    python examples/ppo_reward_loop.py                    # local CPU cluster + the tiny demo app
    python examples/ppo_reward_loop.py --compare          # benchmark: handle vs HTTP vs naive client
    python examples/ppo_reward_loop.py --address auto --url http://head:8000 --model skywork-rm

Responses come from a corpus (RM-Bench from ../shared/data when present, else generated text of
RM-Bench-like lengths). Prints rewards/s and p50/p99 latency of the reward calls. `--transport
naive` is the baseline: one HTTP request per sample (OpenRLHF's per-sample remote-RM path), up to
16 in flight per actor, no batching.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from pathlib import Path

import ray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
NAIVE_CONCURRENCY = 16  # in-flight per-sample requests per rollout actor (the naive client)


@ray.remote(num_cpus=0)
class RolloutWorker:
    """Stands in for a rollout worker: each step it 'generates' a batch (samples a corpus) and
    awaits its rewards. Async actor: the reward call does not block the event loop."""

    def __init__(
        self,
        worker_id: int,
        corpus: list,
        transport: str,
        url: str | None,
        api_key: str | None,
        model: str | None,
        app: str,
    ):
        from cluster.client.reward_client import RewardClient

        self.rng = random.Random(worker_id)
        self.corpus = corpus
        self.transport = transport
        self.url, self.api_key, self.model = url, api_key, model
        if transport == "handle":
            self.client = RewardClient.handle(app, model, max_items_per_call=64)
        elif transport == "http":
            self.client = RewardClient.http(url, api_key, model, max_items_per_call=64)
        self.naive = None

    async def rollout(self, batch_size: int) -> dict:
        indices = [self.rng.randrange(len(self.corpus)) for _ in range(batch_size)]
        batch = [self.corpus[i] for i in indices]
        start = time.perf_counter()
        rewards = await (self._naive(batch) if self.transport == "naive" else self.client.ascore(batch))
        return {"rewards": rewards, "indices": indices, "latency_s": time.perf_counter() - start}

    async def _naive(self, batch: list) -> list[float]:
        import httpx

        if self.naive is None:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self.naive = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=120)

        limit = asyncio.Semaphore(NAIVE_CONCURRENCY)

        async def one(conv) -> float:
            body = {"conversations": [conv], **({"model": self.model} if self.model else {})}
            async with limit:
                while True:
                    response = await self.naive.post("/v1/rewards", json=body)
                    if response.status_code != 503:  # the one courtesy: wait out an overload
                        break
                    await asyncio.sleep(0.1)
            response.raise_for_status()
            return response.json()["scores"][0]

        return list(await asyncio.gather(*(one(c) for c in batch)))


def learner_step(results: list[dict]) -> dict:
    """What PPO does with the rewards: whiten them into advantages across the global batch."""
    rewards = [r for res in results for r in res["rewards"]]
    mean = statistics.fmean(rewards)
    std = statistics.pstdev(rewards) or 1.0
    advantages = [(r - mean) / std for r in rewards]
    return {"mean_reward": mean, "n": len(rewards), "max_advantage": max(advantages)}


def run_loop(
    corpus: list,
    transport: str,
    actors: int,
    steps: int,
    batch_size: int,
    url: str | None = None,
    api_key: str | None = None,
    model: str | None = None,
    app: str = "scoring",
    verbose: bool = True,
) -> dict:
    """Rollout actors x steps; returns rewards/s, latency percentiles and every step's rewards."""
    workers = [RolloutWorker.remote(i, corpus, transport, url, api_key, model, app) for i in range(actors)]
    ray.get([w.rollout.remote(1) for w in workers])  # warm up: clients and connections exist
    latencies, per_step, start = [], [], time.perf_counter()
    for step in range(steps):
        results = ray.get([w.rollout.remote(batch_size) for w in workers])
        latencies += [r["latency_s"] for r in results]
        per_step.append(results)
        stats = learner_step(results)
        if verbose:
            print(f"step {step}: {stats['n']} rewards, mean {stats['mean_reward']:+.4f}", flush=True)
    seconds = time.perf_counter() - start
    for w in workers:
        ray.kill(w)
    latencies.sort()
    total = actors * steps * batch_size
    return {
        "transport": transport,
        "rewards": total,
        "seconds": seconds,
        "rewards_per_s": total / seconds,
        "p50_ms": 1000 * percentile(latencies, 0.5),
        "p99_ms": 1000 * percentile(latencies, 0.99),
        "steps": per_step,
    }


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]


def load_corpus(kind: str, items: int, seed: int) -> list:
    """rm-bench: RM-Bench responses (hundreds of tokens; generated look-alikes without ../shared);
    short: one-line chat turns, where per-request overhead, not the model, sets the pace."""
    if kind == "short":
        from cluster.tiny import DEMO_CONVERSATIONS

        rng = random.Random(seed)
        return [rng.choice(DEMO_CONVERSATIONS) for _ in range(items)]
    from cluster.bench.inprocess import load_corpus as bench_corpus

    return bench_corpus(None, items, seed).conversations


def start_demo_app(port: int) -> tuple[str, str]:
    """A local CPU cluster serving the tiny demo reward model as app 'scoring'."""
    import tempfile

    from ray import serve

    from cluster.tiny import build_demo_models
    from deployments.app import build_app
    from deployments.demo import demo_args

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    rm_dir, critic_dir = build_demo_models(Path(tempfile.mkdtemp(prefix="ppo-loop-")))
    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(demo_args(rm_dir, critic_dir)), name="scoring", route_prefix="/")
    return f"http://127.0.0.1:{port}", "tiny-rm"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transport", choices=["handle", "http", "naive"], default="handle")
    parser.add_argument("--compare", action="store_true", help="run handle, http and naive; print the table")
    parser.add_argument("--actors", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64, help="responses per actor per step")
    parser.add_argument("--corpus", choices=["rm-bench", "short"], default="rm-bench")
    parser.add_argument("--corpus-items", type=int, default=512)
    parser.add_argument("--address", help="a running Ray cluster (with --url/--model of its app)")
    parser.add_argument("--url", help="the app's HTTP address (default: start the demo app locally)")
    parser.add_argument("--api-key", default=os.environ.get("SCORING_API_KEY"))
    parser.add_argument("--model", help="reward model or ensemble name (default: the app's first)")
    parser.add_argument("--app", default="scoring", help="Serve app name (handle transport)")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)

    if args.address:
        ray.init(address=args.address, log_to_driver=False)
        url, model = args.url, args.model
    else:
        url, model = start_demo_app(args.port)
        model = args.model or model
    corpus = load_corpus(args.corpus, args.corpus_items, seed=0)
    transports = ["handle", "http", "naive"] if args.compare else [args.transport]
    rows = [
        run_loop(
            corpus,
            t,
            args.actors,
            args.steps,
            args.batch_size,
            url,
            args.api_key,
            model,
            args.app,
            verbose=not args.compare,
        )
        for t in transports
    ]
    print(
        f"\n{args.actors} rollout actors x {args.steps} steps x {args.batch_size} responses "
        f"({args.corpus} corpus, {len(corpus)} conversations), model {model or '(default)'}"
    )
    print(f"{'client':<34}{'rewards/s':>11}{'p50 ms':>9}{'p99 ms':>9}")
    names = {
        "handle": "RewardClient.handle (Serve handle)",
        "http": "RewardClient.http (batched HTTP)",
        "naive": "naive: one HTTP request per sample",
    }
    for row in rows:
        print(f"{names[row['transport']]:<34}{row['rewards_per_s']:>11.1f}{row['p50_ms']:>9.0f}{row['p99_ms']:>9.0f}")
    if args.compare:
        handle, http, naive = (row["rewards_per_s"] for row in rows)
        print(f"handle / naive: {handle / naive:.2f}x   http / naive: {http / naive:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
