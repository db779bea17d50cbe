"""The in-process encoder and backend of the request core: `ChatEncoder`s and runners in this
process (a notebook's `load_model`, a Ray Data model actor). The Serve layer's twins, over
deployment handles, are in deployments/handles.py."""

from __future__ import annotations

import asyncio
import threading
from functools import cached_property
from typing import Any

from cluster.core.config import ModelSpec
from cluster.core.inputs import Encoded
from cluster.core.service import Call, Part, ScoringService
from cluster.engine.encoders import ChatEncoder
from cluster.engine.runner import ForwardRunner


class LocalEncoder:
    def __init__(self, encoders: dict[str, ChatEncoder]):
        self.encoders = encoders

    def encode(self, parts: list[Part]) -> list[list[Encoded] | BaseException]:
        out: list = []
        for part in parts:
            try:
                out.append(self.encoders[part.model].encode(part.op, part.inputs, part.what, part.swap, part.options))
            except Exception as err:  # noqa: BLE001 - one part's failure is that part's alone (raised to its caller)
                out.append(err)
        return out


class LocalBackend:
    """Runners in this process. A call is one runner pass: the runner plans its own forward passes
    (length-sorted, under the model's max_batch_tokens), so calls need no token limit."""

    def __init__(self, runners: dict[str, Any]):
        self.runners = runners

    def call_tokens(self, model: str) -> int | None:
        return None

    def run(self, calls: list[Call]) -> list:
        out: list = []
        for call in calls:
            try:
                out.append(self.runners[call.model].run(call.op, call.seqs).outputs)
            except Exception as err:  # noqa: BLE001 - one part's failure is that part's alone (raised to its caller)
                out.append(err)
        return out

    def head(self, model: str) -> dict[str, Any]:
        return self.runners[model].describe_head()

    def chat(self, model: str, job: Any) -> Any:
        """One chat completion (cluster/engine/generation.py): it joins the model's running batch."""
        return self.runners[model].chat_runner.chat(job)


class ThreadedEncoder(LocalEncoder):
    """LocalEncoder for an app's event loop: each encode runs in a worker thread, so the loop
    keeps answering (/healthz, other requests) while a long request is tokenized."""

    def encode(self, parts: list[Part]):
        return asyncio.to_thread(LocalEncoder.encode, self, parts)


class ThreadedBackend(LocalBackend):
    """LocalBackend for an app's event loop: the forward passes in a worker thread, one at a time
    (the process's cores are one device, as a replica's GPU is)."""

    def __init__(self, runners: dict[str, Any]):
        super().__init__(runners)
        self.lock = threading.Lock()

    def run(self, calls: list[Call]):
        if all(call.op == "generate" for call in calls):  # the shared generation loop: no lock, as chat
            return asyncio.to_thread(LocalBackend.run, self, calls)
        return asyncio.to_thread(self._locked, calls)

    async def chat(self, model: str, job: Any) -> Any:
        # not under the lock: the generation loop is its own thread, shared by every caller
        return await self.runners[model].chat_runner.achat(job)

    def _locked(self, calls: list[Call]) -> list:
        with self.lock:
            return LocalBackend.run(self, calls)


class LoadedModel:
    """A spec with the encoder (text -> ids) and runner (ids -> outputs) it was loaded into, and
    the request core over the two (`service`): in-process calls take the same flow as a route."""

    kind: str

    def __init__(self, spec: ModelSpec, encoder: ChatEncoder, runner: ForwardRunner):
        self.spec = spec
        self.encoder = encoder
        self.runner = runner

    @property
    def name(self) -> str:
        return self.spec.name

    @cached_property
    def service(self) -> Any:
        return ScoringService(
            [self.spec], LocalEncoder({self.name: self.encoder}), LocalBackend({self.name: self.runner})
        )
