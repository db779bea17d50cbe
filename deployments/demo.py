"""`python -m cluster demo`: the Serve app on a local CPU cluster, exercised over real HTTP.

Builds the tiny models (reused from --models-dir when present), starts a local Ray cluster,
deploys `build_app` with CPU settings (num_gpus: 0), sends a request to every route, prints what
came back, and keeps serving until Ctrl-C (`--once` stops after the round).

Quiet unless `--verbose`: what prints is the demo's own output, and Ray's warnings and errors
(Ray's driver loggers at WARNING/ERROR, the errors Ray pushes to the driver); Serve's progress
lines (started, connecting, ready, its handles' long-poll clients) and the replicas' own logs
(in the session's log folder, /tmp/ray/session_latest/logs) stay out of the terminal.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path

SERVE_LOGGER = "ray.serve"  # the logger Serve's driver-side API reports its progress on (INFO)


def demo_args(rm_dir: Path, critic_dir: Path) -> dict:
    cpu = {"num_gpus": 0, "num_cpus": 0.5, "max_ongoing_requests": 32, "max_queued_requests": 128}
    return {
        "tokenizer": {"min_replicas": 1, "max_replicas": 1, "num_cpus": 0.2},
        "models": [
            {
                "name": "tiny-rm",
                "path": str(rm_dir),
                "kind": "reward",
                "max_length": 2048,
                "max_batch_tokens": 4096,
                "replicas": cpu,
            },
            {
                "name": "tiny-critic",
                "path": str(critic_dir),
                "kind": "critic",
                "max_length": 2048,
                "max_batch_tokens": 4096,
                "max_new_tokens": 8,
                "replicas": cpu,
            },
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
        ("POST", "/get_reward", {"query": [rm_text], "prompts": [""], "labels": [""]}),  # OpenRLHF
        ("POST", "/classify", {"model": "tiny-rm", "input": [rm_text], "use_activation": False}),  # vLLM, verl
        ("POST", "/pooling", {"model": "tiny-rm", "input": rm_text}),
        ("POST", "/score", {"model": "tiny-rm", "text_1": DEMO_PAIR["prompt"], "text_2": DEMO_PAIR["response_a"]}),
        (
            "POST",
            "/rerank",
            {
                "model": "tiny-rm",
                "query": DEMO_PAIR["prompt"],
                "documents": [DEMO_PAIR["response_a"], DEMO_PAIR["response_b"]],
            },
        ),
        ("POST", "/tokenize", {"model": "tiny-rm", "prompt": rm_text}),
        ("GET", "/health", None),
        ("GET", "/version", None),
        ("POST", "/classify", {"text": [rm_text]}),  # SGLang
        ("POST", "/v1/embeddings", {"model": "tiny-rm", "input": rm_text}),  # SGLang, verl
        ("POST", "/predict", {"inputs": rm_text, "raw_scores": True}),  # TEI
        (  # OpenAI chat completions (the `openai` client; verl's GenRM, SkyRL, NeMo Gym)
            "POST",
            "/v1/chat/completions",
            {"model": "tiny-critic", "messages": [{"role": "user", "content": DEMO_PAIR["prompt"]}], "max_tokens": 8},
        ),
        (  # vLLM's generative scores: P(label token) after a prompt, one forward pass
            "POST",
            "/generative_scoring",
            {"model": "tiny-critic", "query": DEMO_PAIR["prompt"], "items": [" yes", " no"], "label_token_ids": [1, 2]},
        ),
        (  # slime's remote reward model
            "POST",
            "/slime/reward",
            {"prompt": DEMO_PAIR["prompt"], "response": DEMO_PAIR["response_a"], "label": None},
        ),
        ("POST", "/v1/rewards", {"conversations": [[{"role": "bot", "content": "hi"}]]}),
    ]


def run_demo(models_dir: str | None, port: int, once: bool, verbose: bool = False) -> int:
    import tempfile

    import httpx
    import ray
    from ray import serve
    from transformers import AutoTokenizer

    from cluster.core.errors import ScoringError
    from cluster.tiny import DEMO_CONVERSATIONS, build_demo_models
    from deployments.app import build_app

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    root = Path(models_dir or tempfile.mkdtemp(prefix="scoring-demo-"))
    rm_dir, critic_dir = build_demo_models(root)
    print("starting a local Ray cluster and the Serve app (CPU settings) ...", flush=True)
    # quiet: Ray's driver logs at ERROR, the replicas' output left in their log files, and Serve's
    # driver-side progress (INFO) off; its warnings and errors still print
    ray.init(
        address="local", include_dashboard=False, log_to_driver=verbose, logging_level="INFO" if verbose else "ERROR"
    )
    logging.getLogger(SERVE_LOGGER).setLevel(logging.INFO if verbose else logging.WARNING)
    base = f"http://127.0.0.1:{port}"
    text = AutoTokenizer.from_pretrained(rm_dir).apply_chat_template(DEMO_CONVERSATIONS[0], tokenize=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        try:
            serve.run(build_app(demo_args(rm_dir, critic_dir)), name="scoring", route_prefix="/")
        except RuntimeError as err:  # Serve says which deployment failed; the replica's own error says why
            raise ScoringError(f"{err} {why_not_running('scoring')}".strip()) from None
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
        # the app's replicas stop gracefully; the cluster is this command's own, so ray.shutdown()
        # ends Serve's controller and proxy with it (serve.shutdown() would make Ray report the
        # controller's own exit as a failed task: "graceful_shutdown failed ... infinite retries")
        serve.delete("scoring")
        ray.shutdown()


def why_not_running(app: str) -> str:
    """Each failed deployment of `app` and the last line of its error (a replica's constructor's
    exception, e.g. `ModelLoadError: ...`), which the quiet demo's terminal would not otherwise show;
    the whole traceback is in the Serve controller's log."""
    from ray import serve

    try:
        deployments = serve.status().applications[app].deployments
    except Exception:  # noqa: BLE001 - the status is extra detail; the failure itself is reported anyway
        return ""
    reasons = []
    for name, d in deployments.items():
        lines = [line for line in (d.message or "").strip().splitlines() if line.strip()]
        if d.status != "HEALTHY" and lines:
            reasons.append(f"{name}: {lines[-1].strip()}")
    return "; ".join(reasons)
