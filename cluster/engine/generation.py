"""Generation with continuous batching: every generating caller of a loaded causal LM (chat
completions, from any number of concurrent requests and ingress replicas) shares one
`transformers` ContinuousBatchingManager (paged KV cache, a background decode loop): a request
joins the running batch at its next step and leaves it when it ends, so nobody waits on the
longest answer of someone else's batch.

Greedy (temperature 0) only, in this first cut: the manager samples or not for all its requests
(`GenerationConfig.do_sample`), and its seed is the manager's, not a request's, so a request's
`seed` could not make sampling reproducible. Greedy output equals one-at-a-time `model.generate`
token for token (fp32; tests/parity/test_chat_generation.py), and each token's logprob is the
log-softmax of its step's logits.

`chat(job)` is the whole of one chat completion on the model's side (the replica or this
process): the messages through the model's own chat template, the generation, the answer decoded
and cut at its stop strings. Nothing here imports Ray or FastAPI.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import math
import threading
from concurrent.futures import Future
from dataclasses import dataclass

import torch

from cluster.core.chat import ChatJob, ChatResult, Choice
from cluster.core.errors import InputTooLong, InvalidInput, ModelFailure

PAGE_SIZE = 32  # tokens per KV-cache block


@dataclass(frozen=True)
class Generated:
    """One sequence's generation: the new tokens (end token included when it ended on one)."""

    token_ids: list[int]
    logprobs: list[float]


class ContinuousGenerator:
    """One ContinuousBatchingManager over `model`, started on first use. `submit(ids, n)` is
    thread-safe and returns at once (a Future); the manager's loop runs the decode steps."""

    def __init__(self, model, *, eos_ids: list[int], pad_id: int, max_length: int, max_batch_tokens: int):
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        self.model = model
        self.eos_ids = list(eos_ids)
        self.max_length = max_length  # prompt + answer, the most one sequence holds
        # the KV cache holds at least one longest sequence and a budget's worth of others
        kv_tokens = max(max_length, 4 * max_batch_tokens)
        self.generation_config = GenerationConfig(
            do_sample=False,
            max_new_tokens=max_length,
            eos_token_id=self.eos_ids,
            pad_token_id=pad_id,
            temperature=None,
            top_p=None,
            top_k=None,
        )
        self.config = ContinuousBatchingConfig(
            page_size=PAGE_SIZE,
            num_blocks=math.ceil(kv_tokens / PAGE_SIZE),
            max_batch_tokens=max_batch_tokens,
            return_logprobs=True,
            use_async_batching=False,
            auto_switch_to_flash=False,  # the replica's other passes share this model as loaded
        )
        self.manager = None
        self.pending: dict[str, Future] = {}
        self.lock = threading.Lock()
        self.ids = itertools.count()

    def _start(self) -> None:
        def start() -> None:
            with torch.inference_mode():  # the manager's loop runs in the mode of the thread that starts it
                self.manager = self.model.init_continuous_batching(
                    generation_config=self.generation_config, continuous_batching_config=self.config
                )
                self.manager.start()

        # started from a daemon thread, the manager's loop is a daemon too (a thread inherits it), so
        # a process that never closes its models still exits
        starter = threading.Thread(target=start, name="generation-start", daemon=True)
        starter.start()
        starter.join()
        if self.manager is None or not self.manager.is_running():
            raise ModelFailure("the generation loop did not start")
        threading.Thread(target=self._collect, name="generation-results", daemon=True).start()

    def submit(self, ids: list[int], max_new_tokens: int) -> Future:
        if len(ids) + max_new_tokens > self.max_length:
            raise InputTooLong(
                f"{len(ids)} prompt tokens and {max_new_tokens} new tokens exceed the generation loop's "
                f"{self.max_length} tokens per sequence"
            )
        future: Future = Future()
        with self.lock:
            if self.manager is None:
                self._start()
            rid = f"g{next(self.ids)}"
            self.pending[rid] = future
            self.manager.add_request(ids, request_id=rid, max_new_tokens=max_new_tokens, eos_token_id=self.eos_ids)
        return future

    def _collect(self) -> None:
        """Hands each finished result to its Future; fails them all if the manager's loop died."""
        while True:
            result = self.manager.get_result(timeout=0.1)
            if result is None:
                if not self.manager.is_running():
                    with self.lock:
                        failed, self.pending = self.pending, {}
                    for f in failed.values():
                        f.set_exception(ModelFailure("the generation loop stopped"))
                    return
                continue
            if not result.is_finished():
                continue
            with self.lock:
                future = self.pending.pop(result.request_id, None)
            if future is None:
                continue
            if result.error:
                future.set_exception(ModelFailure(f"generation failed: {result.error}"))
            else:
                future.set_result(Generated(list(result.generated_tokens), list(result.logprobs)))

    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> list[Generated]:
        """Blocking: every prompt's generation (they join the running batch together)."""
        futures = [self.submit(ids, max_new_tokens) for ids in prompts]
        return [f.result() for f in futures]

    def close(self) -> None:
        if self.manager is not None:
            self.manager.stop(block=True, timeout=10)


class ChatRunner:
    """Chat completions over a loaded causal LM: template, continuous-batched generation, decode."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        eos_ids,
        pad_id: int,
        max_length: int,
        max_new_tokens: int,
        max_batch_tokens: int,
        capacity: int | None = None,
    ):
        self.tokenizer = tokenizer
        self.eos_ids = list(eos_ids)
        self.max_length = max_length  # a chat completion's prompt + max_tokens
        self.max_new_tokens = max_new_tokens
        # the longest sequence the shared loop holds (a judge's prompt of max_length, then its answer)
        self.generator = ContinuousGenerator(
            model,
            eos_ids=self.eos_ids,
            pad_id=pad_id,
            max_length=max(capacity or max_length, max_length),
            max_batch_tokens=max_batch_tokens,
        )

    def prompt_ids(self, job: ChatJob) -> list[int]:
        named = set(inspect.signature(self.tokenizer.apply_chat_template).parameters)
        taken = sorted(k for k in job.template_kwargs if k in named or not str(k).isidentifier())
        if taken:  # the template's own variables only (enable_thinking, ...), never the call's arguments
            raise InvalidInput(f"chat_template_kwargs: {taken[:5]} are not template variables")
        try:
            ids = self.tokenizer.apply_chat_template(
                job.messages, add_generation_prompt=True, tokenize=True, return_dict=False, **job.template_kwargs
            )
        except Exception as err:  # noqa: BLE001 - a template's refusal (a role it does not know) is the input's
            raise InvalidInput(f"messages: the model's chat template refused them: {str(err)[:300]}") from None
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)

    def submit(self, job: ChatJob) -> tuple[int, list[Future]]:
        ids = self.prompt_ids(job)
        room = self.max_length - len(ids)
        max_new = job.max_tokens if job.max_tokens is not None else min(self.max_new_tokens, max(1, room))
        if len(ids) + max_new > self.max_length:
            raise InputTooLong(
                f"the prompt's {len(ids)} tokens and max_tokens {max_new} exceed this model's "
                f"max_length ({self.max_length} tokens); send a shorter conversation or fewer max_tokens"
            )
        return len(ids), [self.generator.submit(ids, max_new) for _ in range(job.n)]

    def answer(self, job: ChatJob, prompt_tokens: int, generated: list[Generated]) -> ChatResult:
        return ChatResult(prompt_tokens, [self._choice(job, g) for g in generated])

    def chat(self, job: ChatJob) -> ChatResult:
        n, futures = self.submit(job)
        return self.answer(job, n, [f.result() for f in futures])

    async def achat(self, job: ChatJob) -> ChatResult:
        n, futures = self.submit(job)
        return self.answer(job, n, list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))))

    def _choice(self, job: ChatJob, g: Generated) -> Choice:
        ids, logprobs = list(g.token_ids), list(g.logprobs)
        finish = "length"
        if ids and ids[-1] in self.eos_ids:
            ids, logprobs, finish = ids[:-1], logprobs[:-1], "stop"
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in job.stop) if i >= 0), default=-1)
        if cut >= 0:  # the answer ends before its first stop string (OpenAI's: the stop string is not returned)
            text, finish = text[:cut], "stop"
            keep = 0
            while keep < len(ids) and len(self.tokenizer.decode(ids[:keep], skip_special_tokens=True)) < cut:
                keep += 1
            ids, logprobs = ids[:keep], logprobs[:keep]
        tokens = [self.tokenizer.decode([t]) for t in ids]
        pieces, sent = [], 0
        for k in range(1, len(ids) + 1):  # the text as decoded so far, less what was sent
            upto = len(self.tokenizer.decode(ids[:k], skip_special_tokens=True)) if k < len(ids) else len(text)
            upto = min(max(upto, sent), len(text))
            pieces.append(text[sent:upto])
            sent = upto
        return Choice(text, ids, tokens, pieces, logprobs if job.logprobs else None, finish)
