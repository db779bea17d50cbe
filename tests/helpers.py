"""What the tests share besides fixtures: the tiny models' variants, the model cards' reference
computations (written independently of `cluster`: straight transformers calls, one item at a time, as
the cards do, so a bug in the package cannot hide in its own yardstick), the test app's config, the
clients that drive an app in-process, the Serve app's deployments built in-process over fake handles
(`ServeInProcess`), and the pipeline tests' corpora with the pipeline's stages run in-process
(`score_rows_in_process`). Tests import from here; conftest.py holds the fixtures."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from functools import cache
from pathlib import Path

import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Object storage in the tests is a real S3 API server on loopback (moto's, started by the `s3`
# fixture on this port), reached the way users reach theirs: through the standard AWS environment,
# set here, before any Ray worker starts, so that workers inherit it as a node's environment.
S3_PORT = int(os.environ.get("SCORING_TEST_S3_PORT") or 0) or None
if S3_PORT is None:
    with socket.socket() as _s:
        _s.bind(("127.0.0.1", 0))
        S3_PORT = _s.getsockname()[1]
    os.environ["SCORING_TEST_S3_PORT"] = str(S3_PORT)
S3_ENV = {
    "AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}",
    "AWS_ACCESS_KEY_ID": "test-access-key",
    "AWS_SECRET_ACCESS_KEY": "test-secret-key-not-for-logs",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # never wait on an instance-metadata lookup
}
os.environ.update(S3_ENV)
# a model path on s3:// is copied once per node into this cache (cluster/engine/weights.py)
os.environ.setdefault("SCORING_CLUSTER_CACHE", os.path.join(tempfile.gettempdir(), f"scoring-cache-{os.getpid()}"))

from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from cluster.core.results import SCORE_TOLERANCE  # noqa: E402

# The Ray pipeline tests' options: small read chunks and batches (many shards from a few rows), a
# quarter CPU per tokenizer and half per model actor, no GPUs (the fake ones belong to Serve replicas)
FAST = {
    "progress": False,
    "batch_rows": 4,
    "rows_per_shard": 3,
    "tokenizer_num_cpus": 0.25,
    "num_cpus": 0.5,
    "num_gpus": 0,
}

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
    the routes, auth, limits and errors with no Ray and no socket. Each request runs on a fresh event
    loop, or on `loop` (a `BackgroundLoop`) where the app's state lives on one, as a Serve replica's
    does."""

    def __init__(self, app, headers: dict[str, str] | None = None, loop: BackgroundLoop | None = None):
        self.app = app
        self.headers = headers or {}
        self.base_url = "http://in-process"
        self.loop = loop

    def request(self, method: str, path: str, **kw):
        import asyncio

        import httpx

        async def send():
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url=self.base_url, headers=self.headers) as c:
                return await c.request(method, path, **kw)

        return self.loop.run(send()) if self.loop is not None else asyncio.run(send())

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw):
        return self.request("POST", path, **kw)


class LiveServer:
    """An app served by uvicorn on 127.0.0.1 in a background thread (no Ray): what the RL frameworks'
    own client code (aiohttp, requests, huggingface_hub) is run against, unchanged."""

    def __init__(self, app, *, log_level: str = "warning", access_log: bool = False):
        import threading

        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=self.port,
                log_level=log_level,
                lifespan="off",
                access_log=access_log,
                **({"log_config": None} if access_log else {}),  # its lines through the root logger, to caplog
            )
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


# ----------------------------------------------------------------------------- the Serve layer in-process


class BackgroundLoop:
    """An event loop in a daemon thread of its own, as a Serve replica runs its user code on one loop
    for its whole life (its `@serve.batch` queues, asyncio gates and gathered flows live on it):
    `submit(coro)` starts a coroutine there, `run(coro)` waits for it too."""

    def __init__(self, name: str):
        import asyncio
        import threading

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def submit(self, coro):
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro):
        return self.submit(coro).result()

    def stop(self) -> None:
        """Cancel what still runs there (a `@serve.batch` queue's task runs forever), then close."""
        import asyncio

        async def cancel_the_rest():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.get_running_loop().shutdown_default_executor()

        self.run(cancel_the_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def crossed(value):
    """`value` as the other side of a Ray call gets it: serialized and read back (Ray pickles task
    arguments, results and errors with cloudpickle), so what cannot cross Ray fails here too, and
    neither side shares a mutable object with the other."""
    from ray import cloudpickle

    return cloudpickle.loads(cloudpickle.dumps(value))


class FakeResponse:
    """What `FakeHandle`'s `.remote()` returns, used as Serve's DeploymentResponse is: `await response`
    in a coroutine, or `response.result()` in synchronous code. The call is already under way."""

    def __init__(self, future):
        self._future = future  # a concurrent.futures.Future of the call on the replica's loop

    def __await__(self):
        import asyncio

        return asyncio.wrap_future(self._future).__await__()

    def result(self, timeout_s: float | None = None):
        return self._future.result(timeout_s)


class FakeHandle:
    """A deployment handle over one object in this process (one replica, no Ray): `handle.method
    .remote(*args, **kw)` sends the call at once, as Serve's handle does, to the object's own event
    loop (`BackgroundLoop`), where a coroutine method is awaited and a synchronous one runs in a
    worker thread (as a replica runs them: RAY_SERVE_RUN_SYNC_IN_THREADPOOL). Arguments, results and
    errors are copied through `crossed`. An error comes back as raised; Serve hands it over wrapped
    in a RayTaskError, and `cluster.core.errors.from_ray` reads both (the wrapper's `cause`, or the
    ScoringError itself). No routing, back-pressure or replica loss: tests/ray tests those."""

    def __init__(self, target, loop: BackgroundLoop):
        self._target = target
        self._loop = loop

    def __getattr__(self, name: str) -> _FakeMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        return _FakeMethod(getattr(self._target, name), self._loop)


class _FakeMethod:
    def __init__(self, method, loop: BackgroundLoop):
        self.method = method
        self.loop = loop

    def remote(self, *args, **kw) -> FakeResponse:
        args, kw = crossed((args, kw))
        return FakeResponse(self.loop.submit(self._call(args, kw)))

    async def _call(self, args, kw):
        import asyncio
        import inspect

        try:
            if inspect.iscoroutinefunction(self.method):
                out = await self.method(*args, **kw)
            else:
                out = await asyncio.to_thread(self.method, *args, **kw)
        except Exception as err:  # noqa: BLE001 - delivered to the caller, as a handle delivers it
            raise crossed(err) from None
        return crossed(out)


def own_copy(cls: type) -> type:
    """`cls` from a copy of its module of its own, as each replica's process imports its own: the
    `@serve.batch` queue of a method is its class's, not its instance's (Serve runs a batch with its
    first call's `self`), so two replicas of one class in one process would share a queue."""
    import importlib.util

    spec = importlib.util.find_spec(cls.__module__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, cls.__qualname__)


class ServeInProcess:
    """A Serve application (the graph `deployments.app:build_app(args)` binds) built in this process
    as Serve's replicas build it, without Ray: one replica per deployment, each on its own
    `BackgroundLoop`; its class (`own_copy`: as the replica's own process has it) made with
    `__new__`, its `__init__` awaited (the `@serve.ingress` wrapper's is async) with the bound
    arguments, where a bound deployment is a `FakeHandle` over that deployment's replica; then
    `reconfigure(user_config)` where the deployment has a user_config; and the ingress's ASGI app
    from `__serve_build_asgi_app__`. `client(headers)`: an `InProcessClient` over that app on the
    ingress's loop.

    One change to Ray while it is up: `@serve.batch` reads the replica context
    (`serve.get_replica_context()`, only a replica has one) once, when its queue is made, for a
    warning that `max_batch_size` exceeds `max_ongoing_requests`; that warning is skipped
    (`_BatchQueue._warn_if_max_batch_size_exceeds_max_ongoing_requests`, undone by `stop`)."""

    def __init__(self, app):
        import pytest
        from ray.serve import batching

        self.patch = pytest.MonkeyPatch()
        self.patch.setattr(
            batching._BatchQueue, "_warn_if_max_batch_size_exceeds_max_ongoing_requests", lambda self: None
        )
        self.loops: list[BackgroundLoop] = []
        self.replicas: dict[str, object] = {}  # deployment name -> its one replica
        try:
            self.ingress, self.loop = self._start(app)
            self.app = self.loop.run(self._asgi_app())
        except BaseException:
            self.stop()
            raise

    async def _asgi_app(self):
        return self.ingress.__serve_build_asgi_app__()

    def _start(self, app) -> tuple[object, BackgroundLoop]:
        import inspect

        from ray.serve import Application

        deployment = app._bound_deployment  # the one attribute of Serve's Application this reads

        def argument(value):
            if isinstance(value, Application):
                return FakeHandle(*self._start(value))
            if isinstance(value, dict):
                return {k: argument(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return type(value)(argument(v) for v in value)
            return crossed(value)

        args = [argument(a) for a in deployment.init_args]
        kwargs = {k: argument(v) for k, v in deployment.init_kwargs.items()}
        loop = BackgroundLoop(deployment.name)
        self.loops.append(loop)
        cls = own_copy(deployment.func_or_class)

        async def construct():
            replica = cls.__new__(cls)
            started = replica.__init__(*args, **kwargs)
            if inspect.isawaitable(started):
                await started
            if deployment.user_config is not None:
                replica.reconfigure(crossed(deployment.user_config))
            return replica

        replica = self.replicas[deployment.name] = loop.run(construct())
        return replica, loop

    def client(self, headers: dict[str, str] | None = None) -> InProcessClient:
        return InProcessClient(self.app, headers, loop=self.loop)

    def stop(self) -> None:
        for loop in reversed(self.loops):
            loop.stop()
        self.patch.undo()


# ----------------------------------------------------------------------------- the pipeline's corpora and stages

# the pipeline tests' corpus words (tests/unit/test_pipeline_rows.py, tests/ray, tests/reliability)
PROMPTS = [
    "What is the capital of France?",
    "Add 2 and 3.",
    "How do I print in Python?",
    "Tell me something.",
    "Count to five.",
    "Is water wet?",
    "Name a colour.",
    "Say hi.",
]
GOOD = [
    "Paris.",
    "5",
    "print('hello')",
    "Water boils at 100 degrees Celsius at sea level.",
    "1 2 3 4 5",
    "Yes, in the everyday sense.",
    "Blue.",
    "Hi!",
]
BAD = [
    "London.",
    "2 + 3 = 6, because addition.",
    "You cannot.",
    "No.",
    "five four",
    "Maybe",
    "I'm sorry, but I can't.",
    "Goodbye, and here is a long unrelated paragraph about nothing in particular.",
]


def turn(prompt: str, response: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def write_corpus(path: Path, rows: list[dict], row_group_size: int = 2) -> Path:
    """Rows as a corpus file, by its suffix: parquet (small row groups: several read chunks), JSONL, JSON."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        path.write_text(json.dumps(rows))
    return path


def pair_rows(n: int = 8, subset=lambda i: "s", **extra) -> list[dict]:
    return [
        {
            "id": f"r{i}",
            "subset": subset(i),
            "prompt": PROMPTS[i % 8],
            "chosen": GOOD[i % 8],
            "rejected": BAD[(i + 3) % 8],
            **extra,
        }
        for i in range(n)
    ]


def close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= TOL for x, y in zip(a, b))


def score_rows_in_process(input_path, model, **options):
    """(table, summary): what `score_corpus(input_path, out, model, **options)` writes and returns,
    from the very code its Ray Data run runs, in this process and without Ray. In the driver's
    steps: the model resolved (resolve_model), the files planned into read chunks (expand_inputs,
    plan_chunks) and the corpus's layout found (_corpus_layout); then each chunk read as its read
    task reads it (read_chunk), the rows in batches of `batch_rows` through a TokenizeStage and a
    ModelStage built with the arguments `_scored` gives them (out_dir=None: the stage returns its
    scored rows instead of writing shards; torch's threads left as they are).

    The table holds the scored rows in input order (by file, then row) with source_file and
    source_row as read_chunk gives them; a row that failed with on_error='skip' is left out, as
    write_shard leaves it out of the shards. The summary holds `summarize(table)`'s fields, as
    score_corpus's does, with `model`, `shape` (the layout's) and `errors` (rows and empty files
    that could not be scored)."""
    from dataclasses import asdict

    import pyarrow as pa
    import pyarrow.compute as pc

    from cluster.core.errors import InvalidInput
    from cluster.data.metrics import summarize
    from cluster.data.models import resolve_model
    from cluster.data.options import ScoringOptions
    from cluster.data.reading import expand_inputs, plan_chunks, read_chunk
    from cluster.data.scoring import _corpus_layout
    from cluster.data.stages import ModelStage, TokenizeStage

    opts = ScoringOptions.parse(options)
    assert opts.via_serve is None, "via_serve scores on a Serve app: a Ray run (tests/ray)"
    spec = resolve_model(model)
    files, base = expand_inputs(input_path)
    chunks, empty = plan_chunks(files, base, opts.rows_per_shard)
    if empty and opts.on_error == "raise":
        raise InvalidInput(empty[0]["error"].split(": ", 1)[1])
    if not chunks:
        raise InvalidInput(f"{input_path}: the input holds no rows")
    layout = _corpus_layout(chunks, spec, opts, base)
    read = pa.concat_tables(
        [read_chunk(chunk, opts.on_error, asdict(layout), base) for chunk in chunks], promote_options="permissive"
    )
    tokenize = TokenizeStage(spec=spec.model_dump(), layout=asdict(layout), debias=opts.debias, on_error=opts.on_error)
    keep_errors = opts.on_error == "skip"
    score = ModelStage(
        spec=spec.model_dump(),
        threads=torch.get_num_threads(),
        layout=asdict(layout),
        debias=opts.debias,
        keep_errors=keep_errors,
        out_dir=None,
        flush_s=opts.flush_s,
    )
    batches = [score(tokenize(read.slice(at, opts.batch_rows))) for at in range(0, read.num_rows, opts.batch_rows)]
    table = pa.concat_tables(batches, promote_options="permissive")
    errors = len(empty)
    if keep_errors:  # as write_shard splits a batch: scored rows to the shards, failed ones to errors.jsonl
        scored = table.filter(pc.is_null(table["error"])).drop_columns(["error"])
        errors, table = errors + table.num_rows - scored.num_rows, scored
    summary = {"model": spec.name, "shape": layout.shape, "errors": errors}
    return table, {**summary, **summarize(table, default_kind=spec.kind)}


class S3Server:
    """moto's S3 server from PyPI in its own process on 127.0.0.1:S3_PORT (the AWS environment
    above points at it). `bucket()` makes a fresh bucket; `put_folder` uploads local files."""

    def __init__(self):
        self.url = S3_ENV["AWS_ENDPOINT_URL"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(S3_PORT)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", S3_PORT), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("moto's S3 server did not start") from None
                time.sleep(0.1)
        self.count = 0

    @property
    def fs(self):
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(endpoint_override=self.url, allow_bucket_creation=True)

    def bucket(self, name: str = "bucket") -> str:
        """A new, empty bucket: its s3:// URI."""
        self.count += 1
        bucket = f"{name}-{self.count}"
        self.fs.create_dir(bucket)
        return f"s3://{bucket}"

    def put_folder(self, local: Path, uri: str) -> str:
        import pyarrow.fs as pafs

        pafs.copy_files(str(local), uri.removeprefix("s3://"), destination_filesystem=self.fs)
        return uri

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
