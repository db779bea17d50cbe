"""`python -m cluster bench-serve`: HTTP load on loopback against the CPU app, with and without
cross-request batching, in one run (`--one-per-request`: the per-request path, see one_per_request).

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
        return (
            f"{self.name:<34}{self.requests / self.seconds:>9.1f}{self.tokens / self.seconds:>11,.0f}"
            f"{p50:>9.0f}{p99:>9.0f}{self.mean_batch:>8.1f}{self.errors:>7d}"
        )


HEADER = f"{'app':<34}{'req/s':>9}{'tokens/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'batch':>8}{'errors':>7}"


def client_counts(values: list[str] | None, default: int) -> list[int]:
    """`--clients 64,256 --clients 512` -> [64, 256, 512]."""
    counts = [int(v) for value in values or [] for v in str(value).split(",") if v.strip()]
    if any(c < 1 for c in counts):
        raise argparse.ArgumentTypeError("--clients: counts must be >= 1")
    return counts or [default]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=None, help="RM-Bench folder (default: ../shared/data/rm-bench)")
    parser.add_argument(
        "--clients",
        action="append",
        metavar="N[,N...]",
        help="concurrent clients, a list or repeated (default 16; --one-per-request: 64)",
    )
    parser.add_argument(
        "--one-per-request",
        action="store_true",
        help="one conversation per HTTP request: the app with the per-request path before issue 13 "
        "(ingress.fast_path: false) vs the new one, behind Serve's proxy and (--haproxy) behind "
        "HAProxy, and batched RewardClient calls on the same conversations",
    )
    parser.add_argument(
        "--corpus",
        choices=["short", "rm-bench"],
        default=None,
        help="--one-per-request: short one-line chat turns (default: per-request costs, not the "
        "model, set the pace) or RM-Bench conversations",
    )
    parser.add_argument(
        "--haproxy",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="--one-per-request: also run both paths on a second local cluster started with "
        "RAY_SERVE_ENABLE_HA_PROXY=1 (default on)",
    )
    parser.add_argument("--leg", choices=["haproxy"], help=argparse.SUPPRESS)  # the HAProxy cluster's subprocess
    parser.add_argument("--leg-model", help=argparse.SUPPRESS)
    parser.add_argument("--leg-out", help=argparse.SUPPRESS)
    parser.add_argument(
        "--requests",
        type=int,
        default=None,
        help="requests per app (default 320; --one-per-request: 4000 conversations)",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="seconds per app at most (default 120; --one-per-request: 15 per row)",
    )
    parser.add_argument(
        "--model-size",
        choices=["tiny", "small"],
        default="tiny",
        help="tiny: 2 layers, hidden 64 (per-call overhead dominates, as with one sequence "
        "on a GPU); small: the 5M-parameter model of `bench` (2 CPU cores saturate)",
    )
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
    if args.one_per_request or args.leg:
        args.requests = args.requests or 4000
        args.time_limit = args.time_limit or 15.0
        return one_per_request(args)
    args.clients = client_counts(args.clients, 16)[0]
    args.requests = args.requests or 320
    args.time_limit = args.time_limit or 120.0
    corpus = bench.load_corpus(args.data, args.requests, args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    shape = bench.MODEL_SHAPE if args.model_size == "small" else {"vocab_size": 2000}
    model_dir = build_tiny_model(tmp / "rm", kind="reward", arch="llama", corpus=corpus.texts, seed=args.seed, **shape)
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
    print(
        f"corpus: {corpus.source}, {len(corpus.conversations)} conversations, one per request; "
        f"{args.clients} concurrent clients; model: {args.model_size}; CPU app (num_gpus 0), 1 replica"
    )
    print(HEADER)
    for r in results:
        print(r.row())
    ours, baseline = results
    ratio = (ours.tokens / ours.seconds) / (baseline.tokens / baseline.seconds)
    print(f"tokens/s ratio, ours / one forward per request: {ratio:.2f}x")
    return 0 if ours.errors == 0 and baseline.errors == 0 else 1


def deploy(model_dir: Path, batching: bool, port: int) -> None:
    from ray import serve

    from cluster.bench.serve_baselines import build_app  # cross_request_batching: false is a baseline

    args = {
        "tokenizer": {"min_replicas": 1, "max_replicas": 1, "num_cpus": 0.2},
        "models": [
            {
                "name": "rm",
                "path": str(model_dir),
                "kind": "reward",
                "max_length": 2048,
                "max_batch_tokens": 4096,
                "replicas": {
                    "num_gpus": 0,
                    "num_cpus": 0.5,
                    "max_ongoing_requests": 64,
                    "max_queued_requests": -1,
                    "batch_max_tokens": 16384,
                    "batch_wait_timeout_s": 0.005,
                    "cross_request_batching": batching,
                },
            }
        ],
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
    return LoadResult(name, len(latencies), seconds, counts["tokens"], latencies or [0.0], mean_batch, counts["errors"])


# ---------------------------------------------------------------- --one-per-request

ONE_PER_REQUEST_DOC = """One conversation per HTTP request (the newest OpenRLHF: one query per request, hundreds in
flight), N concurrent clients, each on one keep-alive connection of the cheapest HTTP client Python
has (`RawHttp`: the load generator shares the 2 cores, so it must cost next to nothing). Per client
count, in one run:

- the app with the per-request path before issue 13 (`ingress: {fast_path: false}`) and with the new
  one (`Gatherer`), each behind Serve's HTTP proxy (the default cluster);
- batched RewardClient calls (64 conversations per call, N/64 calls in flight: the same number of
  conversations in flight) over HTTP and over the Serve handle, on the same conversations;
- with --haproxy (default), both paths again on a second local cluster started with
  RAY_SERVE_ENABLE_HA_PROXY=1: HAProxy in front of the ingress replicas' own HTTP servers, without
  the Serve proxy's hop (a subprocess: one cluster at a time, and the flag must be set before Ray
  starts).

Printed: requests/s (conversations/s for the batched rows), p50/p99 latency per HTTP request or
client call, CPU milliseconds per request of each Serve process, and ratios.
"""

ONE_ROWS = (("baseline", "today's path (fast_path: false)"), ("new", "new path (gatherer)"))


class RawHttp:
    """One keep-alive HTTP/1.1 connection: write the request, read the status line, headers and a
    Content-Length or chunked body. Nothing else (no pool, no retries)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(
            b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path.encode(), self.host.encode(), len(body), body)
        )
        status = int((await self.reader.readline()).split(b" ", 2)[1])
        length, chunked, close = 0, False, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value
            elif name == b"connection":
                close = value == b"close"
        if chunked:
            parts = []
            while size := int((await self.reader.readline()).split(b";")[0], 16):
                parts.append(await self.reader.readexactly(size))
                await self.reader.readline()
            await self.reader.readline()
            data = b"".join(parts)
        else:
            data = await self.reader.readexactly(length)
        if close:
            await self.close()
        return status, data

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


@dataclass
class OneRow:
    leg: str  # "serve proxy" | "haproxy" | "batched"
    path: str  # "baseline" | "new" | "http" | "handle"
    clients: int
    rate: float  # requests/s (conversations/s for batched rows)
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_ms: dict  # Serve process -> CPU ms per request (conversation for batched rows)

    def line(self) -> str:
        names = dict(ONE_ROWS, http="RewardClient.http, 64 per call", handle="RewardClient.handle, 64 per call")
        return (
            f"{self.leg:<12}{names[self.path]:<34}{self.clients:>8d}{self.rate:>10.1f}{self.p50_ms:>9.0f}"
            f"{self.p99_ms:>9.0f}{self.errors:>7d}  " + " ".join(f"{k} {v:.2f}" for k, v in self.cpu_ms.items())
        )


ONE_HEADER = (
    f"{'front':<12}{'app / client':<34}{'clients':>8}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>7}"
    "  CPU ms per request: proxy, ingress, tokenizer, replica"
)


def percentiles(latencies: list[float]) -> tuple[float, float]:
    lat = sorted(latencies) or [0.0]
    return lat[len(lat) // 2] * 1000, lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))] * 1000


def serve_processes() -> dict[int, str]:
    """pid -> role of this machine's Serve processes: proxy (Serve's or HAProxy), ingress, tokenizer,
    replica (Linux /proc; empty elsewhere)."""
    prefixes = {
        "ray::ProxyActor": "proxy",
        "ray::ServeReplica:bench:ingress": "ingress",
        "ray::ServeReplica:bench:tokenizer": "tokenizer",
        "ray::ServeReplica:bench:reward-": "replica",
    }
    out = {}
    for entry in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv0 = entry.read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        role = next((r for p, r in prefixes.items() if argv0.startswith(p)), None)
        if role is None and Path(argv0.split(" ")[0]).name.startswith("haproxy"):
            role = "proxy"
        if role is not None:
            out[int(entry.parent.name)] = role
    return out


def cpu_seconds(pids: dict[int, str]) -> dict[str, float]:
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    out: dict[str, float] = {}
    for pid, role in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[role] = out.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return out


def cpu_per_request(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    order = ("proxy", "ingress", "tokenizer", "replica")
    return {k: 1000 * (after[k] - before.get(k, 0.0)) / max(n, 1) for k in order if k in after}


async def one_per_request_load(port: int, bodies: list[bytes], clients: int, seconds: float) -> tuple:
    """N clients, each a loop of one-conversation POSTs on its own connection, until the bodies or the
    time run out. -> (requests, seconds, latencies, errors)."""
    latencies: list[float] = []
    errors = 0
    queue = list(bodies)
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal errors
        conn = RawHttp("127.0.0.1", port)
        try:
            while queue and time.perf_counter() < deadline:
                body = queue.pop()
                start = time.perf_counter()
                status, _ = await conn.post("/v1/rewards", body)
                latencies.append(time.perf_counter() - start)
                errors += status != 200
        finally:
            await conn.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return len(latencies), time.perf_counter() - start, latencies, errors


async def batched_load(client, conversations: list, seconds: float) -> tuple:
    """RewardClient.ascore over the conversations, in slices so the time limit holds; latency per call."""
    latencies: list[float] = []
    call = client.transport.call

    async def timed(*a, **k):
        start = time.perf_counter()
        try:
            return await call(*a, **k)
        finally:
            latencies.append(time.perf_counter() - start)

    client.transport.call = timed
    done, start = 0, time.perf_counter()
    step = 64 * client.max_concurrency * 4
    while done < len(conversations) and time.perf_counter() - start < seconds:
        part = conversations[done : done + step]
        scores = await client.ascore(part)
        assert len(scores) == len(part)
        done += len(part)
    return done, time.perf_counter() - start, latencies, 0


def one_app_args(model_dir: str, fast_path: bool) -> dict:
    return {
        "tokenizer": {"min_replicas": 1, "max_replicas": 1, "num_cpus": 0.2},
        "ingress": {"min_replicas": 1, "max_replicas": 1, "fast_path": fast_path},
        "models": [
            {
                "name": "rm",
                "path": model_dir,
                "kind": "reward",
                "max_length": 2048,
                "max_batch_tokens": 4096,
                "replicas": {
                    "num_gpus": 0,
                    "num_cpus": 0.5,
                    "max_ongoing_requests": 64,
                    "max_queued_requests": -1,
                    "batch_max_tokens": 16384,
                    "batch_wait_timeout_s": 0.005,
                },
            }
        ],
    }


def run_legs(
    leg: str, model_dir: str, conversations: list, counts: list[int], args: argparse.Namespace, batched: bool
) -> list[OneRow]:
    """Both paths (and the batched clients) on one local cluster, started here and shut down after."""
    import json

    import ray
    from ray import serve

    from cluster.bench.serve_baselines import build_app  # fast_path: false is a baseline
    from cluster.client.reward_client import RewardClient

    bodies = [json.dumps({"conversations": [c]}).encode() for c in conversations]
    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    port = 8000 if leg == "haproxy" else free_port()  # HAProxy listens on the http_options port
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    rows = []
    try:
        for path, _ in ONE_ROWS:
            serve.run(build_app(one_app_args(model_dir, path == "new")), name="bench", route_prefix="/")
            asyncio.run(one_per_request_load(port, bodies[:256], 32, 30))  # warm: connections, code paths
            pids = serve_processes()
            for n in counts:
                before = cpu_seconds(pids)
                done, seconds, latencies, errors = asyncio.run(one_per_request_load(port, bodies, n, args.time_limit))
                p50, p99 = percentiles(latencies)
                rows.append(
                    OneRow(
                        leg, path, n, done / seconds, p50, p99, errors, cpu_per_request(before, cpu_seconds(pids), done)
                    )
                )
                print(rows[-1].line(), flush=True)
            if batched and path == "new":
                for transport in ("http", "handle"):
                    for n in counts:

                        async def go(transport=transport, n=n, pids=pids):
                            options = {"max_items_per_call": 64, "max_concurrency": max(1, n // 64)}
                            client = (
                                RewardClient.http(f"http://127.0.0.1:{port}", **options)
                                if transport == "http"
                                else RewardClient.handle("bench", **options)
                            )
                            await client.ascore(conversations[:128])  # warm
                            before = cpu_seconds(pids)
                            out = await batched_load(client, conversations, args.time_limit)
                            await client.aclose()
                            return out, before

                        (done, seconds, latencies, errors), before = asyncio.run(go())
                        p50, p99 = percentiles(latencies)
                        rows.append(
                            OneRow(
                                "batched",
                                transport,
                                n,
                                done / seconds,
                                p50,
                                p99,
                                errors,
                                cpu_per_request(before, cpu_seconds(pids), done),
                            )
                        )
                        print(rows[-1].line(), flush=True)
            serve.delete("bench")
    finally:
        serve.shutdown()
        ray.shutdown()
    return rows


def one_per_request(args: argparse.Namespace) -> int:
    import dataclasses
    import json
    import random
    import subprocess
    import sys

    from cluster.bench import inprocess as bench
    from cluster.tiny import DEMO_CONVERSATIONS, build_tiny_model

    counts = client_counts(args.clients, 64)
    corpus_kind = args.corpus or "short"
    if corpus_kind == "short":
        rng = random.Random(args.seed)
        conversations = [rng.choice(DEMO_CONVERSATIONS) for _ in range(args.requests)]
        source, texts = "short one-line chat turns (cluster.tiny.DEMO_CONVERSATIONS)", ()
    else:
        corpus = bench.load_corpus(args.data, args.requests, args.seed)
        conversations, source, texts = corpus.conversations, corpus.source, corpus.texts
    if args.leg:  # the HAProxy cluster's subprocess: measure, write the rows, exit
        rows = run_legs(args.leg, args.leg_model, conversations, counts, args, batched=False)
        Path(args.leg_out).write_text(json.dumps([dataclasses.asdict(r) for r in rows]))
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    shape = {} if corpus_kind == "short" else {"vocab_size": 2000}  # short: the demo's tiny-rm
    model_dir = str(build_tiny_model(tmp / "rm", kind="reward", arch="llama", corpus=texts, seed=args.seed, **shape))
    print(
        f"corpus: {source}, {len(conversations)} conversations, one per request; clients {counts}; tiny model; "
        f"CPU app, one replica of each deployment; at most {args.time_limit:.0f} s per row",
        flush=True,
    )
    print(ONE_HEADER, flush=True)
    rows = run_legs("serve proxy", model_dir, conversations, counts, args, batched=True)
    if args.haproxy:
        out = tmp / "haproxy-rows.json"
        command = [
            sys.executable,
            "-m",
            "cluster",
            "bench-serve",
            "--one-per-request",
            "--leg",
            "haproxy",
            "--leg-model",
            model_dir,
            "--leg-out",
            str(out),
            "--corpus",
            corpus_kind,
            "--requests",
            str(args.requests),
            "--time-limit",
            str(args.time_limit),
            "--seed",
            str(args.seed),
            *(["--data", str(args.data)] if args.data else []),
            "--clients",
            ",".join(map(str, counts)),
        ]
        env = {**os.environ, "RAY_SERVE_ENABLE_HA_PROXY": "1"}
        done = subprocess.run(command, env=env, check=False)
        if done.returncode == 0 and out.exists():
            rows += [OneRow(**r) for r in json.loads(out.read_text())]
        else:
            print(f"the HAProxy cluster's run failed (exit {done.returncode}); its rows are missing", flush=True)
    print("\n" + ONE_HEADER)
    for row in rows:
        print(row.line())
    rate = {(r.leg, r.path, r.clients): r.rate for r in rows}
    for n in counts:
        base = rate[("serve proxy", "baseline", n)]
        parts = [f"new / baseline, Serve proxy: {rate[('serve proxy', 'new', n)] / base:.2f}x"]
        if ("haproxy", "new", n) in rate:
            parts.append(f"HAProxy: {rate[('haproxy', 'new', n)] / rate[('haproxy', 'baseline', n)]:.2f}x")
            parts.append(f"new via HAProxy / baseline via Serve proxy: {rate[('haproxy', 'new', n)] / base:.2f}x")
        parts.append(f"batched http / baseline: {rate[('batched', 'http', n)] / base:.2f}x")
        print(f"{n} clients: " + "   ".join(parts))
    return 0 if all(r.errors == 0 for r in rows) else 1
