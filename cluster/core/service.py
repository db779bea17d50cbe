"""The request core: the one scoring flow behind every front door.

    encode -> plan -> run on a backend -> reassemble in input order -> shape / combine orders

A request is a *job* (`RewardsJob`, `JudgeJob`, `CompareJob`, `SequencesJob`) made of *parts*
(one model's share: an ensemble has one part per member, a debiased judgement one per order). The
flow is written once, as a generator over any number of concurrent jobs, that yields two effects:

- `Encode(parts)`: text -> token ids, one encoder call for all the parts. The encoder is the
  in-process `ChatEncoder`s (`LocalEncoder`) or the Serve tokenizer deployment's handle.
- `Run(calls)`: token ids -> outputs. The sequences of every part are planned by the one planner
  (`plan_batches`: length-sorted, under the backend's per-call token budget) into calls, run all at
  once. The backend is the in-process runners (`LocalBackend`) or the Serve replicas' handles.

`run_sync` drives it for in-process models and Ray Data stages, `run_async` for the Serve ingress
(HTTP routes and the handle API), so the same code answers a notebook, a route and a corpus row.
Nothing here imports Ray, FastAPI, pyarrow or torch.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cluster.core.batching import plan_batches, plan_calls
from cluster.core.config import Ensemble, ModelSpec
from cluster.core.errors import InvalidInput, ModelFailure, Overloaded, RequestTooLarge, ScoringError, UnknownModel
from cluster.core.inputs import (
    Encoded,
    EncodeOptions,
    Prompt,
    check_list,
    is_token_ids,
    validate_judge_item,
    validate_rating_item,
)
from cluster.core.results import (
    Comparison,
    Generated,
    GeneratedRating,
    Rating,
    StepRewards,
    Verdict,
    aggregate_steps,
    check_aggregate,
    check_mode,
    combine,
    pair_comparisons,
    pair_conversations,
    rating_of,
    winner_of,
)
from cluster.kinds import Op, kind_of
from cluster.kinds.pointwise import rating_extra_fields

# reward model and prm (a reward per item / per step); critic and pointwise judge fast path (P(A) /
# P(rating)); their slow path (generation)
OPS = tuple(Op)
ENCODE_ONLY = "tokenize"  # a part that is encoded as reward inputs, never run (vLLM's /tokenize)
UNLIMITED = 1 << 62


# ---------------------------------------------------------------- what flows


@dataclass(frozen=True)
class Part:
    """One model's share of a job: its inputs and what to run on them."""

    model: str
    op: str  # one of OPS
    inputs: list  # conversations / texts (score), judge items (verdicts, generate); token ids if encoded
    what: str = "conversations"  # how error messages name the inputs
    swap: bool = False  # judge items with A and B exchanged
    encoded: bool = False  # inputs are token id lists already (Ray Data's tokenize stage made them)
    options: EncodeOptions | None = None  # the request's own tokenization settings (reward inputs)


@dataclass(frozen=True)
class Call:
    """One backend call: sequences of one model for one op."""

    model: str
    op: str
    seqs: list[list[int]]


@dataclass(frozen=True)
class Encode:
    parts: list[Part]


@dataclass(frozen=True)
class Run:
    calls: list[Call]


@dataclass(frozen=True)
class PartResult:
    encoded: list[Encoded]
    outputs: list  # per item, in input order: (scalar, values | None) | P(A) | Generated

    @property
    def num_tokens(self) -> list[int]:
        return [len(e.ids) for e in self.encoded]

    @property
    def tokens(self) -> int:
        return sum(self.num_tokens)

    @property
    def truncated(self) -> list[bool]:
        return [e.truncated for e in self.encoded]


class Encoder(Protocol):
    """Parts -> per part, its items' token ids (or the ScoringError its input caused)."""

    def encode(self, parts: list[Part]) -> list[list[Encoded] | ScoringError] | Awaitable[list]: ...


class Backend(Protocol):
    """Calls -> per call, one output per sequence (or the exception the call met)."""

    def run(self, calls: list[Call]) -> list[list | BaseException] | Awaitable[list]: ...

    def call_tokens(self, model: str) -> int | None:
        """The most tokens one call may carry (None: no limit)."""

    def head(self, model: str) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        """A reward model's output `labels` and `problem_type`."""

    def chat(self, model: str, job: Any) -> Any | Awaitable[Any]:
        """A causal LM's chat completion (ChatJob -> ChatResult, or the error it met)."""


# ---------------------------------------------------------------- jobs


@dataclass(frozen=True)
class Rewards:
    """A reward request's results, in input order."""

    scores: list[float]  # the scalar reward (shaped when the model or ensemble has shaping)
    truncated: list[bool]
    num_tokens: list[int]  # per item (an ensemble: summed over its members)
    values: list[list[float]] | None = None  # every output label, for a model with several
    raw: list[float] | None = None  # the model's scalar before shaping, when shaping changed it
    steps: list[list[float]] | None = None  # a prm's step rewards (`scores` are their aggregates)
    aggregate: str | None = None  # how a prm's scores aggregate its steps

    @property
    def tokens(self) -> int:
        return sum(self.num_tokens)

    def step_results(self) -> list[StepRewards]:
        return [
            StepRewards(score, steps, self.aggregate, truncated, n)
            for score, steps, truncated, n in zip(self.scores, self.steps, self.truncated, self.num_tokens)
        ]


@dataclass(frozen=True)
class Judged:
    """Pairwise results in input order: a critic's Verdicts or a reward model's Comparisons."""

    results: list[Verdict] | list[Comparison]
    tokens: int


def shaped_rewards(spec: ModelSpec, result: PartResult, aggregate: str | None = None) -> Rewards:
    """A model's rewards, with its own shaping (normalize, clip) when it has one. A prm's reward is
    its step rewards' aggregate (the request's choice, else its spec's)."""
    if kind_of(spec).steps:
        how = aggregate or spec.step_aggregate
        scores = [aggregate_steps(steps, how) for steps in result.outputs]
        return Rewards(scores, result.truncated, result.num_tokens, steps=list(result.outputs), aggregate=how)
    scores = [s for s, _ in result.outputs]
    values = [v for _, v in result.outputs] if result.outputs and result.outputs[0][1] is not None else None
    shaping = getattr(spec, "shaping", None)
    if shaping is None:
        return Rewards(scores, result.truncated, result.num_tokens, values)
    return Rewards(shaping.apply(scores), result.truncated, result.num_tokens, values, raw=scores)


@dataclass(frozen=True)
class RewardsJob:
    """Rewards from a model, or from an ensemble's members combined by weight."""

    target: ModelSpec | Ensemble
    inputs: list
    what: str = "conversations"
    members: tuple[ModelSpec, ...] = ()  # an ensemble's member models
    options: EncodeOptions | None = None
    aggregate: str | None = None  # a prm's: how its step rewards become one score

    def parts(self) -> list[Part]:
        return [
            Part(m.name, "score", self.inputs, self.what, options=self.options)
            for m in (self.members or (self.target,))
        ]

    def finish(self, results: list[PartResult]) -> Rewards:
        if not isinstance(self.target, Ensemble):
            return shaped_rewards(self.target, results[0], self.aggregate)
        member = [shaped_rewards(m, r) for m, r in zip(self.members, results)]
        truncated = [any(flags) for flags in zip(*(r.truncated for r in member))]
        num_tokens = [sum(counts) for counts in zip(*(r.num_tokens for r in member))]
        return Rewards(self.target.combine([r.scores for r in member]), truncated, num_tokens)


@dataclass(frozen=True)
class JudgeJob:
    """A critic's verdicts: logits (P(A) at the verdict token) or generate; debias runs both orders
    in the same flow and combines them."""

    model: str
    items: list[dict[str, str]]
    mode: str = "logits"
    debias: bool = False

    def parts(self) -> list[Part]:
        op = "verdicts" if self.mode == "logits" else "generate"
        orders = (False, True) if self.debias else (False,)
        return [Part(self.model, op, self.items, "items", swap=s) for s in orders]

    def finish(self, results: list[PartResult]) -> Judged:
        orders = [[self._verdict(out, enc) for out, enc in zip(r.outputs, r.encoded)] for r in results]
        verdicts = orders[0] if not self.debias else [combine(a, b) for a, b in zip(*orders)]
        return Judged(verdicts, sum(r.tokens for r in results))

    @staticmethod
    def _verdict(output: float | Generated, enc: Encoded) -> Verdict:
        if isinstance(output, Generated):
            return Verdict(output.winner, output.prob_a, enc.truncated, output.text)
        return Verdict(winner_of(output), output, enc.truncated)


@dataclass(frozen=True)
class Rated:
    """A pointwise judge's ratings, in input order."""

    results: list[Rating]
    tokens: int


@dataclass(frozen=True)
class RateJob:
    """A pointwise judge's ratings: logits (the expected rating over the scale at the rating token)
    or generate (the rating the answer states last, and the scale read at its token)."""

    model: str
    items: list[dict[str, str]]
    values: tuple[float, ...]  # each rating's value, in scale order
    mode: str = "logits"

    def parts(self) -> list[Part]:
        return [Part(self.model, "verdicts" if self.mode == "logits" else "generate", self.items, "items")]

    def finish(self, results: list[PartResult]) -> Rated:
        r = results[0]
        return Rated([self._rating(out, enc) for out, enc in zip(r.outputs, r.encoded)], r.tokens)

    def _rating(self, output: list[float] | GeneratedRating, enc: Encoded) -> Rating:
        if isinstance(output, GeneratedRating):
            stated = self.values[output.choice] if output.choice is not None else None
            expected = rating_of(output.probs, self.values)[0] if output.probs is not None else None
            return Rating(expected, stated, output.probs, enc.truncated, output.text)
        expected, best = rating_of(output, self.values)
        return Rating(expected, best, output, enc.truncated)


@dataclass(frozen=True)
class CompareJob:
    """Pairs judged by a reward model or ensemble: prob_a = sigmoid(r_a - r_b)."""

    rewards: RewardsJob

    def parts(self) -> list[Part]:
        return self.rewards.parts()

    def finish(self, results: list[PartResult]) -> Judged:
        rewards = self.rewards.finish(results)
        return Judged(pair_comparisons(rewards.scores, rewards.truncated), rewards.tokens)


@dataclass(frozen=True)
class TokenizeJob:
    """Reward inputs -> the token ids the model would score (nothing runs)."""

    model: str
    inputs: list
    what: str = "input"
    options: EncodeOptions | None = None

    def parts(self) -> list[Part]:
        return [Part(self.model, ENCODE_ONLY, self.inputs, self.what, options=self.options)]

    def finish(self, results: list[PartResult]) -> list[Encoded]:
        return results[0].encoded


@dataclass(frozen=True)
class SequencesJob:
    """Token ids already made (Ray Data's tokenize stage): the outputs alone, in input order."""

    model: str
    op: str
    seqs: list[list[int]]

    def parts(self) -> list[Part]:
        return [Part(self.model, self.op, self.seqs, encoded=True)]

    def finish(self, results: list[PartResult]) -> list:
        return results[0].outputs


@dataclass(frozen=True)
class NextTokens:
    """A causal LM's log-probabilities of chosen tokens at the next position after each prompt, in
    input order (`logprobs[i][k]`: prompt i, the k-th chosen token)."""

    logprobs: list[list[float]]
    num_tokens: list[int]

    @property
    def tokens(self) -> int:
        return sum(self.num_tokens)


@dataclass(frozen=True)
class NextTokenJob:
    """Any causal LM's next-token log-probabilities of `token_ids` after each prompt, from one
    forward pass (no generation): vLLM's /generative_scoring, SGLang's decoder-only /v1/score. The
    replica answers the whole vocabulary's row per prompt (so calls gather whatever tokens their
    requests read); the chosen ids are picked here."""

    model: str
    prompts: list[Prompt]
    token_ids: tuple[int, ...]

    def parts(self) -> list[Part]:
        options = EncodeOptions(read_tokens=self.token_ids)
        return [Part(self.model, Op.NEXT_TOKEN, self.prompts, "items", options=options)]

    def finish(self, results: list[PartResult]) -> NextTokens:
        r = results[0]
        rows = []
        for row in r.outputs:
            bad = next((t for t in self.token_ids if t >= len(row)), None)
            if bad is not None:  # the tokenizer's vocabulary is larger than the model's head
                raise InvalidInput(
                    f"label_token_ids: token id {bad} is outside this model's vocabulary (0..{len(row) - 1})"
                )
            rows.append([float(row[t]) for t in self.token_ids])
        return NextTokens(rows, r.num_tokens)


# ---------------------------------------------------------------- the flow, written once

Flow = Generator[Encode | Run, Any, list]


def flow(jobs: Sequence[Any], call_tokens: Callable[[str], int | None]) -> Flow:
    """Every job's result (or the exception it met), in order. One job's bad input or failed call
    fails that job alone."""
    parts = [(j, part) for j, job in enumerate(jobs) for part in job.parts()]

    # 1. encode: one encoder call for every part that is not token ids yet
    fresh = [part for _, part in parts if not part.encoded]
    made = iter((yield Encode(fresh)) if fresh else [])
    encoded = [[Encoded(list(s), False) for s in part.inputs] if part.encoded else next(made) for _, part in parts]
    failed: dict[int, BaseException] = {}
    for (j, _), enc in zip(parts, encoded):
        if isinstance(enc, BaseException):
            failed.setdefault(j, enc)

    # 2. plan: per model and op, every live sequence, length-sorted under the per-call budget
    groups: dict[tuple[str, str], list[tuple[int, int]]] = {}  # -> (part, item)
    for k, ((j, part), enc) in enumerate(zip(parts, encoded)):
        if j not in failed and part.op != ENCODE_ONLY:
            groups.setdefault((part.model, part.op), []).extend((k, i) for i in range(len(enc)))
    calls, owners = [], []
    for (model, op), members in groups.items():
        budget = call_tokens(model) if op != "generate" else None  # generation: one call, as one batch
        seqs = [encoded[k][i].ids for k, i in members]
        # items sharing a prefix stay in one call, so the replica computes it once (batching.plan_calls)
        plan = (
            plan_calls(seqs, budget)
            if budget is not None
            else plan_batches([len(s) for s in seqs], UNLIMITED, min_efficiency=0.0)
        )
        for batch in plan:
            owners.append([members[b] for b in batch])
            calls.append(Call(model, op, [encoded[k][i].ids for k, i in owners[-1]]))

    # 3. run every call at once; 4. reassemble each part's outputs in input order
    outputs = [[None] * len(enc) if not isinstance(enc, BaseException) else [] for enc in encoded]
    answered = list(zip(calls, owners, (yield Run(calls)) if calls else []))
    # a call that failed for what one of its jobs sent (not for load, which waiting did not cure)
    # must not fail the others: each job's share of it runs again on its own
    shared = [
        (call, owned)
        for call, owned, out in answered
        if isinstance(out, BaseException)
        and not isinstance(out, Overloaded)
        and len({parts[k][0] for k, _ in owned}) > 1
    ]
    if shared:
        answered = [a for a in answered if not any(a[0] is call for call, _ in shared)]
        alone_calls, alone_owners = [], []
        for call, owned in shared:
            for j in dict.fromkeys(parts[k][0] for k, _ in owned):
                alone_owners.append([(k, i) for k, i in owned if parts[k][0] == j])
                alone_calls.append(Call(call.model, call.op, [encoded[k][i].ids for k, i in alone_owners[-1]]))
        answered += list(zip(alone_calls, alone_owners, (yield Run(alone_calls))))
    for call, owned, out in answered:
        if not isinstance(out, BaseException) and len(out) != len(owned):
            out = ModelFailure(f"model '{call.model}' returned {len(out)} results for {len(owned)} sequences")
        if isinstance(out, BaseException):
            for k, _ in owned:
                failed.setdefault(parts[k][0], out)
            continue
        for (k, i), value in zip(owned, out):
            outputs[k][i] = value

    # 5. shape / combine, per job
    per_job: list[list[PartResult]] = [[] for _ in jobs]
    for k, (j, _) in enumerate(parts):
        if j not in failed:
            per_job[j].append(PartResult(encoded[k], outputs[k]))
    results: list = []
    for j, job in enumerate(jobs):
        if j in failed:
            results.append(failed[j])
            continue
        try:
            results.append(job.finish(per_job[j]))
        except Exception as err:  # noqa: BLE001 - one job's failure is its own, raised to its caller alone
            results.append(err)
    return results


def _drive(jobs: Sequence[Any], encoder: Encoder, backend: Backend) -> Generator[Awaitable, Any, list]:
    """The flow with each effect performed; an effect whose result must be awaited is yielded to
    the driver, which sends the awaited result back."""
    steps = flow(jobs, backend.call_tokens)
    value = None
    while True:
        try:
            effect = steps.send(value)
        except StopIteration as done:
            return done.value
        value = encoder.encode(effect.parts) if isinstance(effect, Encode) else backend.run(effect.calls)
        if inspect.isawaitable(value):
            value = yield value


def run_sync(jobs: Sequence[Any], encoder: Encoder, backend: Backend) -> list:
    """Drive the flow with a synchronous encoder and backend (in-process, Ray Data stages)."""
    driver = _drive(jobs, encoder, backend)
    try:
        pending = next(driver)
    except StopIteration as done:
        return done.value
    getattr(pending, "close", lambda: None)()
    raise TypeError("run_sync was given an asynchronous encoder or backend; use run_async")


async def run_async(jobs: Sequence[Any], encoder: Encoder, backend: Backend) -> list:
    """Drive the flow with an encoder and backend whose calls may be awaitable (Serve handles)."""
    driver = _drive(jobs, encoder, backend)
    value = None
    while True:
        try:
            pending = driver.send(value)
        except StopIteration as done:
            return done.value
        value = await pending


def _path_form(path: str) -> str:
    """A path as the same file on this machine would be named: `~` expanded, no trailing slash."""
    if not path or len(path) > 4096 or "\0" in path:
        return path
    return os.path.normpath(os.path.expanduser(path)) if path[0] in "/~." else path.rstrip("/")


def raise_or_return(result: Any) -> Any:
    if isinstance(result, BaseException):
        raise result
    return result


# ---------------------------------------------------------------- the service


@dataclass
class ScoringService:
    """The served models (and ensembles) over an encoder and a backend: resolves names, checks
    limits, builds jobs and runs them through the flow. Every front door is a few lines over this."""

    models: Sequence[ModelSpec]
    encoder: Encoder
    backend: Backend
    ensembles: Sequence[Ensemble] = ()
    max_items: int | None = None
    # set by the Serve ingress: concurrent jobs gathered into one flow (`@serve.batch`), for the
    # models whose `replicas.cross_request_batching` is on
    gather: Callable[[Any], Awaitable[Any]] | None = None
    _models: dict[str, ModelSpec] = field(init=False, repr=False)
    _ensembles: dict[str, Ensemble] = field(init=False, repr=False)
    _heads: dict[str, dict[str, Any]] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._models = {m.name: m for m in self.models}
        self._ensembles = {e.name: e for e in self.ensembles}
        # other names a model answers to: its configured aliases, then the path it was loaded from
        # (as written, and expanded: clients such as verl send their config's model path as `model`)
        self._aliases: dict[str, list[str]] = {}
        for m in self.models:
            for alias in getattr(m, "aliases", ()):
                self._aliases.setdefault(alias, []).append(m.name)
        configured = set(self._aliases) | set(self._models) | set(self._ensembles)
        for m in self.models:
            for form in {m.path, _path_form(m.path)} - configured:  # a name or an alias wins over a path
                self._aliases.setdefault(form, []).append(m.name)

    # -- names and limits

    def default_model(self, kind: str) -> ModelSpec | None:
        return next((m for m in self.models if m.kind == kind), None)

    def resolve(self, name: str | None, kinds: tuple[str, ...]) -> ModelSpec | Ensemble:
        """The model (or, where a reward model is accepted, the ensemble) a request names; the
        first model of the first kind when it names none."""
        if name is None:
            for kind in kinds:
                default = self.default_model(kind)
                if default is not None:
                    return default
            raise UnknownModel(f"no {' or '.join(kinds)} model is served here")
        if name in self._ensembles:
            if "reward" in kinds:
                return self._ensembles[name]
            raise UnknownModel(f"'{name}' is an ensemble of reward models; this route needs a critic")
        model = self._models.get(name) or self._by_alias(name, kinds)
        if model is None:
            shown = name if len(name) <= 200 else name[:200] + "..."
            raise UnknownModel(f"model '{shown}' is not served here; see GET /v1/models")
        if model.kind not in kinds:
            raise InvalidInput(f"model '{name}' is {kind_of(model).title}; this route needs a {' or '.join(kinds)}")
        return model

    def _by_alias(self, name: str, kinds: tuple[str, ...]) -> ModelSpec | None:
        """The model an alias or a path names (one path may serve a reward model and a critic:
        the route's kind decides; two of the same kind are ambiguous)."""
        names = self._aliases.get(name) or self._aliases.get(_path_form(name)) or []
        fitting = [n for n in names if self._models[n].kind in kinds] or names
        if len(fitting) > 1:
            raise UnknownModel(f"'{name}' names several served models ({', '.join(fitting)}); request one by name")
        return self._models[fitting[0]] if fitting else None

    def check_count(self, n: int) -> None:
        if self.max_items is not None and n > self.max_items:
            raise RequestTooLarge(f"{n} items in one request; the limit is {self.max_items}")

    async def head(self, name: str) -> dict[str, Any]:
        """A reward model's output labels and problem type (asked of the backend once)."""
        if name not in self._heads:
            info = self.backend.head(name)
            self._heads[name] = await info if inspect.isawaitable(info) else info
        return self._heads[name]

    # -- jobs (validation happens here, once, whichever door the request came through)

    def rewards_job(
        self,
        target: ModelSpec | Ensemble,
        inputs: Any,
        what: str = "conversations",
        options: EncodeOptions | None = None,
        aggregate: str | None = None,
    ) -> RewardsJob:
        items = check_list(inputs, what)
        self.check_count(len(items))
        members = tuple(self._models[m.model] for m in target.members) if isinstance(target, Ensemble) else ()
        if members and any(is_token_ids(item) for item in items):
            raise InvalidInput(
                f"{what}: token ids belong to one tokenizer; '{target.name}' is an ensemble of "
                "several models: send text or conversations"
            )
        return RewardsJob(target, items, what, members, options, check_aggregate(aggregate))

    def rate_job(self, model: ModelSpec, items: Any, mode: str = "logits") -> RateJob:
        mode = check_mode(mode)
        extra = rating_extra_fields(model.template)
        checked = [validate_rating_item(it, f"items[{i}]", extra) for i, it in enumerate(check_list(items, "items"))]
        self.check_count(len(checked))
        return RateJob(model.name, checked, model.rating_numbers, mode)

    def judge_job(self, model: ModelSpec, items: Any, mode: str = "logits", debias: bool = False) -> JudgeJob:
        mode = check_mode(mode)
        return JudgeJob(model.name, self._judge_items(items), mode, bool(debias))

    def compare_job(self, target: ModelSpec | Ensemble, items: Any, what: str = "items") -> JudgeJob | CompareJob:
        """A critic judges the pairs (logits); a reward model or ensemble compares their rewards
        (`what` names the pair conversations in errors)."""
        checked = self._judge_items(items)
        if kind_of(target).judges_pairs:
            return JudgeJob(target.name, checked)
        return CompareJob(self.rewards_job(target, pair_conversations(checked), what))

    def next_token_job(self, model: ModelSpec, prompts: Sequence[Prompt], token_ids: Sequence[int]) -> NextTokenJob:
        """A causal LM's log-probabilities of `token_ids` at the next token after each prompt."""
        if kind_of(model).head != "next_token":
            raise InvalidInput(f"model '{model.name}' is {kind_of(model).title}, not a causal LM")
        if not prompts:
            raise InvalidInput("items must contain at least one item")
        if not token_ids:
            raise InvalidInput("label_token_ids must contain at least one token ID")
        self.check_count(len(prompts))
        return NextTokenJob(model.name, list(prompts), tuple(token_ids))

    def _judge_items(self, items: Any) -> list[dict[str, str]]:
        checked = [validate_judge_item(it, f"items[{i}]") for i, it in enumerate(check_list(items, "items"))]
        self.check_count(len(checked))
        return checked

    # -- running jobs

    def run(self, jobs: Sequence[Any]) -> list:
        """Results (or exceptions) of several jobs, run together, synchronously."""
        return run_sync(jobs, self.encoder, self.backend)

    async def arun(self, jobs: Sequence[Any]) -> list:
        return await run_async(jobs, self.encoder, self.backend)

    def one(self, job: Any) -> Any:
        """One job's result, synchronously; its error raised."""
        return raise_or_return(self.run([job])[0])

    async def submit(self, job: Any) -> Any:
        """One job's result; with a gatherer, run in one flow with the jobs that arrive meanwhile."""
        if self.gather is not None and all(self._gathers(p) for p in job.parts()):
            return raise_or_return(await self.gather(job))
        return raise_or_return((await self.arun([job]))[0])

    async def chat(self, model: ModelSpec, job: Any) -> Any:
        """One chat completion (cluster/engine/generation.py: ChatJob -> ChatResult) on a causal-LM
        model: it joins that model's continuously batched generation, wherever it runs."""
        out = self.backend.chat(model.name, job)
        if inspect.isawaitable(out):
            out = await out
        return raise_or_return(out)

    def _gathers(self, part: Part) -> bool:
        """Generation is not gathered: one request's generations are a batch already, and a
        gathered one would hold every caller until the longest answer ends."""
        replicas = getattr(self._models.get(part.model), "replicas", None)
        return part.op != "generate" and (replicas is None or replicas.cross_request_batching)
