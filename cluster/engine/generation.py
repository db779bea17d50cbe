"""Generation with continuous batching: every generating caller of a loaded causal LM (chat
completions, a judge's generate mode, from any number of concurrent requests and ingress replicas)
shares one `transformers` ContinuousBatchingManager (paged KV cache, a background decode loop): a
request joins the running batch at its next step and leaves it when it ends, so nobody waits on
the longest answer of someone else's batch.

Greedy requests (temperature 0, the default) run on a greedy manager: their output equals
one-at-a-time `model.generate` token for token (fp32; tests/http/test_client_openai.py), and each
token's logprob is the log-softmax of its step's logits. Sampled requests (temperature > 0, with
top_p) run on a second manager that samples with each request's own temperature and top_p
(transformers' per-request processors). Its random numbers are the loop's, shared by whoever is
in the batch, so a request that gives a `seed` is sampled apart from it instead: `model.generate`
with the same temperature and top-p warpers, then the Gumbel-max trick with a generator seeded by
the request (argmax of the scores plus Gumbel noise is a draw from their softmax), one request at
a time, the same answer for the same seed whoever else is served. The logprobs of a sampled
answer, and every answer's top_logprobs, are read by one forward pass over prompt and answer: the
model's own distribution, before temperature and top-p (vLLM's default, raw logprobs).

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
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property

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

    def __init__(
        self, model, *, eos_ids: list[int], pad_id: int, max_length: int, max_batch_tokens: int, sampling: bool = False
    ):
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        self.model = model
        self.eos_ids = list(eos_ids)
        self.max_length = max_length  # prompt + answer, the most one sequence holds
        # the KV cache holds at least one longest sequence and a budget's worth of others
        kv_tokens = max(max_length, 4 * max_batch_tokens)
        self.generation_config = GenerationConfig(
            do_sample=sampling,
            max_new_tokens=max_length,
            eos_token_id=self.eos_ids,
            pad_token_id=pad_id,
            # sampling: placeholders that make the manager build its per-request temperature and top-p
            # processors (a value of 1 builds none); every request sends its own
            temperature=0.5 if sampling else None,
            top_p=0.5 if sampling else None,
            top_k=None,
        )
        self.config = ContinuousBatchingConfig(
            page_size=PAGE_SIZE,
            num_blocks=math.ceil(kv_tokens / PAGE_SIZE),
            max_batch_tokens=max_batch_tokens,
            return_logprobs=True,
            use_async_batching=False,
            auto_switch_to_flash=False,  # the replica's other passes share this model as loaded
            per_request_processors=sampling,
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

    def submit(self, ids: list[int], max_new_tokens: int, **sampling: float) -> Future:
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
            self.manager.add_request(
                ids, request_id=rid, max_new_tokens=max_new_tokens, eos_token_id=self.eos_ids, **sampling
            )
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
        read_logprobs: Callable[[list[int], list[int], int], tuple[list[float], list]] | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = list(eos_ids)
        self.pad_id = pad_id
        self.max_length = max_length  # a chat completion's prompt + max_tokens
        self.max_new_tokens = max_new_tokens
        # (prompt ids, answer ids, top) -> each answer token's logprob and its top alternatives
        self.read_logprobs = read_logprobs
        # the longest sequence the shared loop holds (a judge's prompt of max_length, then its answer)
        self.loop_args = dict(
            eos_ids=self.eos_ids,
            pad_id=pad_id,
            max_length=max(capacity or max_length, max_length),
            max_batch_tokens=max_batch_tokens,
        )
        self.generator = ContinuousGenerator(model, **self.loop_args)
        self.seeded_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seeded-sampling")

    @cached_property
    def sampler(self) -> ContinuousGenerator:
        """The sampling loop (started on the first sampled request)."""
        return ContinuousGenerator(self.model, sampling=True, **self.loop_args)

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

    def submit(self, job: ChatJob) -> tuple[list[int], list[Future]]:
        ids = self.prompt_ids(job)
        room = self.max_length - len(ids)
        max_new = job.max_tokens if job.max_tokens is not None else min(self.max_new_tokens, max(1, room))
        if len(ids) + max_new > self.max_length:
            raise InputTooLong(
                f"the prompt's {len(ids)} tokens and max_tokens {max_new} exceed this model's "
                f"max_length ({self.max_length} tokens); send a shorter conversation or fewer max_tokens"
            )
        if not job.samples:
            return ids, [self.generator.submit(ids, max_new) for _ in range(job.n)]
        if job.seed is None:
            warp = {"temperature": float(job.temperature), "top_p": float(job.top_p)}
            return ids, [self.sampler.submit(ids, max_new, **warp) for _ in range(job.n)]
        return ids, [self.seeded_pool.submit(self._seeded, ids, max_new, job)]

    def _seeded(self, ids: list[int], max_new: int, job: ChatJob) -> list[Generated]:
        """A seeded request's n samples, apart from the shared loops (see the module docstring)."""
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

        generator = torch.Generator().manual_seed(job.seed)
        warpers = [TemperatureLogitsWarper(float(job.temperature))]
        if job.top_p < 1:
            warpers.append(TopPLogitsWarper(float(job.top_p)))
        processors = LogitsProcessorList([*warpers, GumbelMax(generator)])
        prompt = torch.tensor([ids], device=self.model.device)
        out = []
        with torch.inference_mode():
            for _ in range(job.n):
                seq = self.model.generate(
                    input_ids=prompt,
                    attention_mask=torch.ones_like(prompt),
                    max_new_tokens=max_new,
                    do_sample=False,
                    logits_processor=processors,
                    eos_token_id=self.eos_ids,
                    pad_token_id=self.pad_id,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                )
                new = seq[0, len(ids) :].tolist()
                end = next((j + 1 for j, tok in enumerate(new) if tok in self.eos_ids), len(new))
                out.append(Generated(new[:end], []))
        return out

    def answer(self, job: ChatJob, prompt: list[int], generated: list) -> ChatResult:
        flat = [g for item in generated for g in (item if isinstance(item, list) else [item])]
        return ChatResult(len(prompt), [self._choice(job, prompt, g) for g in flat])

    def chat(self, job: ChatJob) -> ChatResult:
        prompt, futures = self.submit(job)
        return self.answer(job, prompt, [f.result() for f in futures])

    async def achat(self, job: ChatJob) -> ChatResult:
        prompt, futures = self.submit(job)
        generated = list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))
        return await asyncio.to_thread(self.answer, job, prompt, generated)

    def _choice(self, job: ChatJob, prompt: list[int], g: Generated) -> Choice:
        ids, logprobs, top = list(g.token_ids), list(g.logprobs), None
        wants_read = (job.logprobs and job.samples) or job.top_logprobs
        if wants_read and ids and self.read_logprobs is not None:  # the model's own distribution (docstring)
            logprobs, top = self.read_logprobs(prompt, ids, job.top_logprobs)
        finish = "length"
        if ids and ids[-1] in self.eos_ids:
            ids, logprobs, finish = ids[:-1], logprobs[:-1], "stop"
            top = top[:-1] if top is not None else None
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in job.stop) if i >= 0), default=-1)
        if cut >= 0:  # the answer ends before its first stop string (OpenAI's: the stop string is not returned)
            text, finish = text[:cut], "stop"
            keep = 0
            while keep < len(ids) and len(self.tokenizer.decode(ids[:keep], skip_special_tokens=True)) < cut:
                keep += 1
            ids, logprobs = ids[:keep], logprobs[:keep]
            top = top[:keep] if top is not None else None
        tokens = [self.tokenizer.decode([t]) for t in ids]
        pieces, sent = [], 0
        for k in range(1, len(ids) + 1):  # the text as decoded so far, less what was sent
            upto = len(self.tokenizer.decode(ids[:k], skip_special_tokens=True)) if k < len(ids) else len(text)
            upto = min(max(upto, sent), len(text))
            pieces.append(text[sent:upto])
            sent = upto
        named = None
        if job.logprobs and job.top_logprobs and top is not None:
            named = [[(self.tokenizer.decode([t]), lp, t) for t, lp in row] for row in top]
        return Choice(text, ids, tokens, pieces, logprobs if job.logprobs else None, finish, named)


class GumbelMax:
    """A logits processor that makes greedy decoding draw a sample: the scores plus Gumbel noise
    from the request's own generator (argmax of logits + Gumbel(0, 1) is a draw from their
    softmax). Tokens the warpers removed (-inf) stay removed."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        u = torch.rand(scores.shape, generator=self.generator, dtype=torch.float64).clamp_(min=1e-300)
        gumbel = -torch.log(-torch.log(u))
        return scores.double() + gumbel.to(scores.device)
