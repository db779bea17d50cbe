"""`python -m cluster demo`: the Serve app on a local CPU cluster, exercised over real HTTP.

Builds the tiny models (reused from --models-dir when present), starts a local Ray cluster,
deploys `build_app` with CPU settings (num_gpus: 0), sends a request to every route, prints what
came back, and keeps serving until Ctrl-C (`--once` stops after the round).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path


def demo_args(rm_dir: Path, critic_dir: Path) -> dict:
    cpu = {"num_gpus": 0, "num_cpus": 0.5, "max_ongoing_requests": 32, "max_queued_requests": 128}
    return {
        "tokenizer": {"min_replicas": 1, "max_replicas": 1, "num_cpus": 0.2},
        "models": [
            {"name": "tiny-rm", "path": str(rm_dir), "kind": "reward", "max_length": 2048,
             "max_batch_tokens": 4096, "replicas": cpu},
            {"name": "tiny-critic", "path": str(critic_dir), "kind": "critic", "max_length": 2048,
             "max_batch_tokens": 4096, "max_new_tokens": 8, "replicas": cpu},
        ],
    }


def demo_requests(rm_text: str) -> list[tuple[str, str, dict | None]]:
    from cluster.tiny import DEMO_CONVERSATIONS, DEMO_PAIR

    return [
        ("GET", "/healthz", None),
        ("GET", "/v1/models", None),
        ("POST", "/v1/rewards", {"conversations": DEMO_CONVERSATIONS}),
        ("POST", "/v1/compare", DEMO_PAIR),
        ("POST", "/v1/compare", {"model": "tiny-critic", **DEMO_PAIR}),
        ("POST", "/v1/judge", {"items": [DEMO_PAIR], "mode": "logits", "debias": True}),
        ("POST", "/v1/judge", {"items": [DEMO_PAIR], "mode": "generate"}),
        # the RL frameworks' and inference servers' protocols (README: "Using it from ...")
        ("POST", "/get_reward", {"query": [rm_text], "prompts": [""], "labels": [""]}),        # OpenRLHF
        ("POST", "/classify", {"model": "tiny-rm", "input": [rm_text], "use_activation": False}),  # vLLM, verl
        ("POST", "/pooling", {"model": "tiny-rm", "input": rm_text}),
        ("POST", "/score", {"model": "tiny-rm", "text_1": DEMO_PAIR["prompt"], "text_2": DEMO_PAIR["response_a"]}),
        ("POST", "/rerank", {"model": "tiny-rm", "query": DEMO_PAIR["prompt"],
                             "documents": [DEMO_PAIR["response_a"], DEMO_PAIR["response_b"]]}),
        ("POST", "/tokenize", {"model": "tiny-rm", "prompt": rm_text}),
        ("GET", "/health", None),
        ("GET", "/version", None),
        ("POST", "/classify", {"text": [rm_text]}),                                             # SGLang
        ("POST", "/v1/embeddings", {"model": "tiny-rm", "input": rm_text}),                     # SGLang, verl
        ("POST", "/predict", {"inputs": rm_text, "raw_scores": True}),                          # TEI
        ("POST", "/v1/rewards", {"conversations": [[{"role": "bot", "content": "hi"}]]}),
    ]


def run_demo(models_dir: str | None, port: int, once: bool) -> int:
    import tempfile

    import httpx
    import ray
    from ray import serve
    from transformers import AutoTokenizer

    from cluster.tiny import DEMO_CONVERSATIONS, build_demo_models
    from deployments.app import build_app

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    root = Path(models_dir or tempfile.mkdtemp(prefix="scoring-demo-"))
    rm_dir, critic_dir = build_demo_models(root)
    print("starting a local Ray cluster and the Serve app (CPU settings) ...", flush=True)
    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(demo_args(rm_dir, critic_dir)), name="scoring", route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    text = AutoTokenizer.from_pretrained(rm_dir).apply_chat_template(DEMO_CONVERSATIONS[0], tokenize=False)
    try:
        with httpx.Client(base_url=base, timeout=120) as client:
            for method, path, body in demo_requests(text):
                response = client.request(method, path, json=body)
                print(f"\n{method} {path}" + (f"  {json.dumps(body)[:140]}" if body else ""))
                shown = json.dumps(response.json())[:400] if response.content else "(empty body)"
                print(f"  -> {response.status_code} {shown}")
        print("\n(tiny random models: the numbers show the plumbing, not judgement)")
        if once:
            return 0
        print(f"\nserving at {base} (try: curl {base}/v1/models); Ctrl-C to stop", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the shutdown short
        serve.shutdown()
        ray.shutdown()
