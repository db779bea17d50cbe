"""`python -m cluster bench-serve`: HTTP load on loopback against the CPU app, with and without
cross-request batching, in one run.

N concurrent clients each send /v1/rewards requests holding one RM-Bench-length conversation (the
shape of an RL rollout worker asking for one sample's reward), bounded by a request count and a
time limit. The same app is deployed twice on the same local cluster: once with cross-request
batching (the default) and once with `cross_request_batching: false` (one forward pass per
request, the baseline). Printed: requests/s, tokens/s, p50/p99 latency and the mean number of
requests per forward pass, and the ratio of tokens/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class LoadResult:
    name: str
    requests: int
    seconds: float
    tokens: int
    latencies: list[float]
    mean_batch: float
    errors: int

    def row(self) -> str:
        lat = sorted(self.latencies)
        p50 = lat[len(lat) // 2] * 1000
        p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))] * 1000
        return (f"{self.name:<34}{self.requests / self.seconds:>9.1f}{self.tokens / self.seconds:>11,.0f}"
                f"{p50:>9.0f}{p99:>9.0f}{self.mean_batch:>8.1f}{self.errors:>7d}")


HEADER = f"{'app':<34}{'req/s':>9}{'tokens/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'batch':>8}{'errors':>7}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=None, help="RM-Bench folder (default: ../shared/data/rm-bench)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--requests", type=int, default=320, help="requests per app (default 320)")
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds per app at most (default 120)")
    parser.add_argument("--model-size", choices=["tiny", "small"], default="tiny",
                        help="tiny: 2 layers, hidden 64 (per-call overhead dominates, as with one sequence "
                             "on a GPU); small: the 5M-parameter model of `bench` (2 CPU cores saturate)")
    parser.add_argument("--seed", type=int, default=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: argparse.Namespace) -> int:
    import ray
    from ray import serve

    from cluster.bench import inprocess as bench
    from cluster.tiny import build_tiny_model

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    corpus = bench.load_corpus(args.data, args.requests, args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    shape = bench.MODEL_SHAPE if args.model_size == "small" else {"vocab_size": 2000}
    model_dir = build_tiny_model(tmp / "rm", kind="reward", arch="llama", corpus=corpus.texts, seed=args.seed,
                                 **shape)
    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    results = []
    try:
        for name, batching in (("cross-request batching (ours)", True), ("one forward per request", False)):
            deploy(model_dir, batching, port)
            results.append(asyncio.run(load(name, f"http://127.0.0.1:{port}", corpus.conversations, args)))
            serve.delete("bench")
    finally:
        serve.shutdown()
        ray.shutdown()
    print(f"corpus: {corpus.source}, {len(corpus.conversations)} conversations, one per request; "
          f"{args.clients} concurrent clients; model: {args.model_size}; CPU app (num_gpus 0), 1 replica")
    print(HEADER)
    for r in results:
        print(r.row())
    ours, baseline = results
    ratio = (ours.tokens / ours.seconds) / (baseline.tokens / baseline.seconds)
    print(f"tokens/s ratio, ours / one forward per request: {ratio:.2f}x")
    return 0 if ours.errors == 0 and baseline.errors == 0 else 1


def deploy(model_dir: Path, batching: bool, port: int) -> None:
    from ray import serve

    from deployments.app import build_app

    args = {
        "tokenizer": {"min_replicas": 1, "max_replicas": 1, "num_cpus": 0.2},
        "models": [{"name": "rm", "path": str(model_dir), "kind": "reward", "max_length": 2048,
                    "max_batch_tokens": 4096,
                    "replicas": {"num_gpus": 0, "num_cpus": 0.5, "max_ongoing_requests": 64,
                                 "max_queued_requests": -1, "batch_max_tokens": 16384,
                                 "batch_wait_timeout_s": 0.005, "cross_request_batching": batching}}],
    }
    serve.run(build_app(args), name="bench", route_prefix="/")


async def load(name: str, base: str, conversations: list, args: argparse.Namespace) -> LoadResult:
    import httpx
    from ray import serve

    latencies: list[float] = []
    counts = {"tokens": 0, "errors": 0}
    deadline = time.perf_counter() + args.time_limit

    async def client(c: httpx.AsyncClient, queue: list) -> None:
        while queue and time.perf_counter() < deadline:
            conv = queue.pop()
            start = time.perf_counter()
            r = await c.post("/v1/rewards", json={"conversations": [conv]})
            latencies.append(time.perf_counter() - start)
            if r.status_code == 200:
                counts["tokens"] += r.json()["usage"]["prompt_tokens"]
            else:
                counts["errors"] += 1

    handle = serve.get_deployment_handle("reward-rm", app_name="bench")
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=httpx.Limits(max_connections=args.clients)) as c:
        warm = list(conversations[:8])
        await asyncio.gather(*(client(c, warm) for _ in range(4)))
        latencies.clear()
        counts.update(tokens=0, errors=0)
        before = await handle.get_stats.remote()
        queue = list(conversations)
        start = time.perf_counter()
        await asyncio.gather(*(client(c, queue) for _ in range(args.clients)))
        seconds = time.perf_counter() - start
    after = await handle.get_stats.remote()
    batches = after["batches"] - before["batches"]
    mean_batch = (after["calls"] - before["calls"]) / batches if batches else 0.0
    return LoadResult(name, len(latencies), seconds, counts["tokens"], latencies or [0.0], mean_batch,
                      counts["errors"])
