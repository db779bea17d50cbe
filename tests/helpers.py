"""What the tests share besides fixtures: the tiny models' variants, the model cards' reference
computations (written independently of `cluster`: straight transformers calls, one item at a time, as
the cards do, so a bug in the package cannot hide in its own yardstick), the test app's config, and
the clients that drive an app in-process. Tests import from here; conftest.py holds the fixtures."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from functools import cache
from pathlib import Path

import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from cluster.core.results import SCORE_TOLERANCE  # noqa: E402

REPO = Path(__file__).resolve().parents[1]  # the repository's root
TOL = SCORE_TOLERANCE  # every parity check: ours vs the card's computation, fp32, absolute

hf_logging.disable_progress_bar()
hf_logging.set_verbosity_error()

# name -> build_tiny_model kwargs. Skywork's own setup is "llama": template without BOS, tokenizer
# adding it, a separate pad token.
REWARD_VARIANTS = {
    "llama": dict(arch="llama", template_bos=False, tokenizer_adds_bos=True, pad="separate"),
    "llama-bos-in-template-and-tokenizer": dict(arch="llama", template_bos=True, tokenizer_adds_bos=True),
    "llama-bos-in-template-only": dict(arch="llama", template_bos=True, tokenizer_adds_bos=False),
    "llama-bos-nowhere": dict(arch="llama", template_bos=False, tokenizer_adds_bos=False),
    "llama-pad-is-eos": dict(arch="llama", pad="eos"),
    "llama-no-pad": dict(arch="llama", pad="none"),
    "gemma2": dict(arch="gemma2", template_bos=True, tokenizer_adds_bos=True),
    "gemma2-pad-is-eos": dict(arch="gemma2", template_bos=False, tokenizer_adds_bos=True, pad="eos"),
}

CONVERSATIONS = [
    [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
    ],
    [{"role": "user", "content": "Add 2 and 3."}, {"role": "assistant", "content": "5"}],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "How do I print in Python?"},
        {"role": "assistant", "content": "def add(a, b):\n    return a + b\n\nprint(add(2, 3))"},
    ],
    [
        {"role": "user", "content": "Tell me something."},
        {
            "role": "assistant",
            "content": "Sure! Here is a detailed, step-by-step explanation with examples, "
            "code and a short summary. " * 6,
        },
    ],
    [
        {"role": "user", "content": "Can you help me?"},
        {"role": "assistant", "content": "I'm sorry, but I can't."},
        {"role": "user", "content": "Please, it's about water boiling."},
        {"role": "assistant", "content": "Water boils at 100 degrees Celsius at sea level."},
    ],
    [{"role": "user", "content": "Count."}, {"role": "assistant", "content": "1 2 3 4 5 6 7 8 9 10"}],
]


def without_system(conv):
    return [m for m in conv if m["role"] != "system"]


def conversations_for(variant: str) -> list:
    # Gemma-2's template rejects a system turn, as the real one does
    return [without_system(c) for c in CONVERSATIONS] if variant.startswith("gemma2") else CONVERSATIONS


@cache
def _hf_reward(path: str):
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    return tok, model


@cache
def _hf_causal(path: str):
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return tok, model


def collapse_doubled_bos(ids: list[int], bos: int | None) -> list[int]:
    """The one deliberate deviation from a literal model card (the Skywork note): a doubled leading
    BOS, written by the template and added again by the tokenizer, becomes one. Nothing is added."""
    ids = list(ids)
    while bos is not None and len(ids) > 1 and ids[0] == ids[1] == bos:
        ids = ids[1:]
    return ids


def card_ids(path, item) -> list[int]:
    """Model card: apply_chat_template(conv, tokenize=False), then tokenizer(text)."""
    tok, _ = _hf_reward(str(path))
    text = item if isinstance(item, str) else tok.apply_chat_template(item, tokenize=False)
    return collapse_doubled_bos(tok(text)["input_ids"], tok.bos_token_id)


def card_score_ids(path, ids: list[int]) -> float:
    """Model card: one sequence, `model(**inputs).logits[0][0]`."""
    _, model = _hf_reward(str(path))
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0][0].item()


def card_score(path, item) -> float:
    return card_score_ids(path, card_ids(path, item))


def card_judge_ids(path, item, template: str) -> list[int]:
    """Skywork-Critic card: the judge prompt as one user turn, apply_chat_template(tokenize=True,
    add_generation_prompt=True)."""
    tok, _ = _hf_causal(str(path))
    user = template.format(input=item["prompt"], response_a=item["response_a"], response_b=item["response_b"])
    out = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=True, add_generation_prompt=True)
    ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out
    return collapse_doubled_bos(list(ids), tok.bos_token_id)


def card_generate(path, ids: list[int], max_new_tokens: int) -> tuple[list[int], str]:
    tok, model = _hf_causal(str(path))
    with torch.inference_mode():
        gen = model.generate(
            input_ids=torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.eos_token_id
        )
    new = gen[0][len(ids) :].tolist()
    return new, tok.decode(new, skip_special_tokens=True)


def card_next_token_logits(path, ids: list[int]) -> torch.Tensor:
    _, model = _hf_causal(str(path))
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0, -1].float()


# ----------------------------------------------------------------------------- Ray and Serve


API_KEY = "test-key-123"
TRUSTED_CLIENT = "127.0.0.2"  # a loopback address the tests send from to be a trusted client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_args(rm, rm2, critic, attrs=None, bert=None, **rm_replicas):
    return {
        "api_keys": ["sha256:" + hashlib.sha256(API_KEY.encode()).hexdigest()],  # the key itself in no config
        "trusted_networks": [TRUSTED_CLIENT + "/32"],  # key-less clients from this address only
        "max_items_per_request": 64,
        "max_request_bytes": 200_000,
        "tokenizer": {"min_replicas": 1, "max_replicas": 1, "num_cpus": 0.1},
        "models": [
            {
                "name": "rm",
                "path": str(rm),
                "kind": "reward",
                "max_length": 512,
                "max_batch_tokens": 2048,
                # what RL frameworks' configs name it by (verl sends its model path as `model`)
                "aliases": ["~/models/Skywork-Reward-Llama-3.1-8B-v0.2", "Skywork/Skywork-Reward-Llama-3.1-8B-v0.2"],
                "replicas": {
                    "min_replicas": 2,
                    "max_replicas": 2,
                    "num_gpus": 1,
                    "num_cpus": 0.1,
                    "batch_max_tokens": 4096,
                    "batch_wait_timeout_s": 0.05,
                    **rm_replicas,
                },
            },
            {"name": "rm-gemma", "path": str(rm2), "kind": "reward", "replicas": {"num_cpus": 0.1}},
            {
                "name": "judge",
                "path": str(critic),
                "kind": "critic",
                "max_new_tokens": 8,
                "replicas": {"num_cpus": 0.1, "max_ongoing_requests": 1, "max_queued_requests": 1},
            },
            # a multi-output (HelpSteer2-style) reward model and an encoder reward model
            *(
                [
                    {
                        "name": "rm-attrs",
                        "path": str(attrs),
                        "kind": "reward",
                        "reward_label": "correctness",
                        "replicas": {"num_cpus": 0.1},
                    }
                ]
                if attrs
                else []
            ),
            *(
                [
                    {
                        "name": "rm-bert",
                        "path": str(bert),
                        "kind": "reward",
                        "max_length": 64,
                        "replicas": {"num_cpus": 0.1},
                    }
                ]
                if bert
                else []
            ),
        ],
        "ensembles": [
            {
                "name": "rm-mix",
                "members": [{"model": "rm", "weight": 3}, {"model": "rm-gemma", "weight": 1}],
                "shaping": {"normalize": {"mean": 0.5, "std": 2.0}, "clip": [-1.0, 1.0]},
            },
        ],
    }


def reference_models(rm, rm2, critic, attrs, bert) -> dict:
    """The served models loaded as a notebook would (`load_model` with their own specs, not the
    served config's): what every route's answer is compared with."""
    from cluster import ModelSpec, load_model

    return {
        "rm": load_model(ModelSpec(name="rm", path=str(rm), kind="reward")),
        "rm-gemma": load_model(ModelSpec(name="rm-gemma", path=str(rm2), kind="reward")),
        "judge": load_model(ModelSpec(name="judge", path=str(critic), kind="critic", max_new_tokens=8)),
        "rm-attrs": load_model(ModelSpec(name="rm-attrs", path=str(attrs), kind="reward", reward_label="correctness")),
        "rm-bert": load_model(ModelSpec(name="rm-bert", path=str(bert), kind="reward", max_length=64)),
    }


def deploy(app: dict, timeout_s: float = 180) -> None:
    """Deploy as `serve deploy ray_config.yaml` does (the declarative path), and wait until running."""
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    serve.context._get_global_client().deploy_apps(ServeDeploySchema(applications=[app]))
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        status = serve.status().applications.get(app["name"])
        if status is not None and status.status == "RUNNING":
            # a lightweight update is applied by the controller loop; let it reach every replica
            if all(d.status == "HEALTHY" for d in status.deployments.values()):
                return
        if status is not None and status.status == "DEPLOY_FAILED":
            raise RuntimeError(status.message)
        time.sleep(0.5)
    raise TimeoutError(f"app {app['name']} not running after {timeout_s}s")


# ----------------------------------------------------------------------------- the HTTP app in-process


class InProcessClient:
    """httpx's sync call shapes (`get`, `post`, `request`) over the app through `httpx.ASGITransport`:
    the routes, auth, limits and errors with no Ray and no socket."""

    def __init__(self, app, headers: dict[str, str] | None = None):
        self.app = app
        self.headers = headers or {}
        self.base_url = "http://in-process"

    def request(self, method: str, path: str, **kw):
        import asyncio

        import httpx

        async def send():
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url=self.base_url, headers=self.headers) as c:
                return await c.request(method, path, **kw)

        return asyncio.run(send())

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw):
        return self.request("POST", path, **kw)


class LiveServer:
    """An app served by uvicorn on 127.0.0.1 in a background thread (no Ray): what the RL frameworks'
    own client code (aiohttp, requests, huggingface_hub) is run against, unchanged."""

    def __init__(self, app):
        import threading

        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off", access_log=False)
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the live test server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
