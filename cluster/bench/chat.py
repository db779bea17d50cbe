"""`python -m cluster bench-chat`: chat completions of a causal-LM judge, three ways on one model in
one process: the requests one at a time through `model.generate` (the card's loop), all of them as
one padded `generate` batch (what a judge's generate mode did per request), and all of them
concurrently through /v1/chat/completions on the in-process app (continuous batching: they share
decode steps). Tokens/s, per-request latency p50/p99, and the ratio to one at a time; medians of
--repeats runs.

The model is a tiny Llama-format judge built here with random weights (no hub), so that every
request writes its --new-tokens (an untaught model rarely writes its end token).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=32, help="concurrent chat completions")
    p.add_argument("--new-tokens", type=int, default=64, help="max_tokens of each")
    p.add_argument("--repeats", type=int, default=3, help="runs per method (medians are printed)")
    p.add_argument("--hidden", type=int, default=256, help="the tiny model's hidden size")
    p.add_argument("--layers", type=int, default=4, help="the tiny model's layers")


def conversations(n: int) -> list[list[dict]]:
    return [
        [{"role": "user", "content": f"Judge answer {i}: " + "the quick brown fox jumps " * (1 + i % 7)}]
        for i in range(n)
    ]


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def run(args: argparse.Namespace) -> int:
    import httpx
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cluster.core.config import AppConfig
    from cluster.engine.loading import local_service
    from cluster.http.app import create_app
    from cluster.tiny import build_tiny_model

    root = Path(tempfile.mkdtemp(prefix="bench-chat-"))
    path = build_tiny_model(
        root / "judge", kind="critic", arch="llama", teach_steps=0, hidden=args.hidden,
        intermediate=2 * args.hidden, layers=args.layers,
    )  # fmt: skip
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    convs = conversations(args.requests)
    prompts = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=False) for c in convs]
    greedy = dict(do_sample=False, temperature=None, top_p=None, top_k=None, max_new_tokens=args.new_tokens)
    greedy["min_new_tokens"] = args.new_tokens  # every request writes the same number of tokens
    tokens = args.requests * args.new_tokens

    def one_at_a_time() -> list[float]:
        lat, t0 = [], time.perf_counter()
        with torch.inference_mode():
            for ids in prompts:
                model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), **greedy)
                lat.append(time.perf_counter() - t0)  # in a row: each waits for those before it
        return lat

    def padded() -> list[float]:
        tok.padding_side = "left"
        batch = tok.pad({"input_ids": prompts}, return_tensors="pt")
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.generate(**batch, pad_token_id=tok.pad_token_id, **greedy)
        return [time.perf_counter() - t0] * len(prompts)  # every request waits for the whole batch

    spec = {"name": "judge", "path": str(path), "kind": "critic", "max_length": 1024, "max_new_tokens": args.new_tokens}
    service = local_service(AppConfig.parse({"models": [spec]}))
    app = create_app(service)

    async def continuous() -> list[float]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as client:
            t0 = time.perf_counter()

            async def one(c):
                body = {"model": "judge", "messages": c, "temperature": 0, "max_tokens": args.new_tokens}
                r = await client.post("/v1/chat/completions", json=body, timeout=600)
                r.raise_for_status()
                return time.perf_counter() - t0, r.json()["usage"]["completion_tokens"]

            out = await asyncio.gather(*(one(c) for c in convs))
        return [t for t, _ in out], sum(n for _, n in out)

    methods = {"one at a time (generate)": one_at_a_time, "padded batch (generate)": padded}
    results: dict[str, list[tuple[float, float, float, int]]] = {}
    asyncio.run(continuous())  # the generation loop started and warm
    for _ in range(args.repeats):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            lat = fn()
            results.setdefault(name, []).append((time.perf_counter() - t0, *_pcts(lat), tokens))
        t0 = time.perf_counter()
        lat, n = asyncio.run(continuous())
        results.setdefault("continuous batching (/v1/chat/completions)", []).append(
            (time.perf_counter() - t0, *_pcts(lat), n)
        )

    base = statistics.median(r[0] for r in results["one at a time (generate)"])
    print(
        f"{args.requests} chat completions of {args.new_tokens} new tokens, tiny Llama "
        f"(hidden {args.hidden}, {args.layers} layers), fp32, {torch.get_num_threads()} threads; "
        f"medians of {args.repeats} runs"
    )
    print("| method | wall s | tokens/s | p50 s | p99 s | vs one at a time |\n|---|---|---|---|---|---|")
    for name, runs in results.items():
        wall = statistics.median(r[0] for r in runs)
        p50 = statistics.median(r[1] for r in runs)
        p99 = statistics.median(r[2] for r in runs)
        n = statistics.median(r[3] for r in runs)
        print(f"| {name} | {wall:.2f} | {n / wall:.0f} | {p50:.2f} | {p99:.2f} | {base / wall:.2f}x |")
    return 0


def _pcts(lat: list[float]) -> tuple[float, float]:
    return percentile(lat, 0.5), percentile(lat, 0.99)
