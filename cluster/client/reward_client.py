"""RewardClient: the online reward source for RL trainers, over a Serve handle or HTTP.

    client = RewardClient.handle("scoring")                  # inside the Ray cluster: no HTTP
    client = RewardClient.http("http://head:8000", api_key)  # anywhere else
    rewards = client.score(conversations)                    # or: await client.ascore(...)

One interface, two transports. A call is split into chunks (at most `max_items_per_call` items and
`max_chars_per_call` characters each, a token budget's proxy the client can compute without a
tokenizer), at most `max_concurrency` chunks are in flight per client, and results come back in
input order. Overload (503, a full Serve queue), a replica that died mid-call and dropped
connections are retried with exponential backoff and jitter, honouring Retry-After, until the
call's deadline; every other error is raised at once as the `ScoringError` the server named
(`InvalidInput`, `UnknownModel`, ...), naming the bad item by its index in the call (as in-process
scoring does), or prefixed with the chunk's items when it names none. Results have the same keys
over both transports. Scoring is a pure function of its input, so a retried chunk cannot count
twice: each item's result is taken once.
"""

from __future__ import annotations

import asyncio
import random
import re
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from cluster.core import errors
from cluster.core.errors import Overloaded, ScoringError
from cluster.core.retry import Backoff, GaveUp, retry_async

RETRYABLE_STATUS = (502, 503, 504)
ERROR_BY_CODE = {
    cls.code: cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, ScoringError)
}


class Retryable(Exception):
    """A transient failure: overload, a replica or connection lost. `retry_after` in seconds."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


# ---------------------------------------------------------------- transports


class HttpTransport:
    """The HTTP API (`/v1/rewards`, `/v1/compare`, `/v1/judge`) with httpx, one AsyncClient per
    event loop (an httpx client belongs to the loop that made it)."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 60.0, transport=None):
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout_s = timeout_s
        self.transport = transport  # tests inject httpx.MockTransport
        self.clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> AsyncClient

    def _client(self):
        import httpx

        loop = asyncio.get_running_loop()
        if loop not in self.clients:
            self.clients[loop] = httpx.AsyncClient(
                base_url=self.base_url, headers=self.headers, timeout=self.timeout_s, transport=self.transport
            )
        return self.clients[loop]

    async def call(self, op: str, model: str | None, payload: dict[str, Any]) -> Any:
        import httpx

        path = {
            "rewards": "/v1/rewards",
            "compare": "/v1/compare",
            "judge": "/v1/judge",
            "step_rewards": "/v1/step_rewards",
            "rate": "/v1/rate",
        }[op]
        body = {"model": model, **payload} if model else payload
        try:
            response = await self._client().post(path, json=body)
        except (httpx.TransportError, httpx.TimeoutException) as err:  # connect/read errors, dropped connections
            raise Retryable(f"{type(err).__name__}: {err}") from None
        if response.status_code in RETRYABLE_STATUS:
            raise Retryable(
                f"HTTP {response.status_code}: {_message(response)}", _retry_after(response.headers.get("Retry-After"))
            )
        if response.status_code != 200:
            raise _error_from(response)
        data = response.json()
        return data["scores"] if op == "rewards" else data["results"]

    async def aclose(self) -> None:
        """Close this event loop's connections (another loop's client closes with its loop)."""
        client = self.clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()


def _message(response) -> str:
    try:
        return response.json()["error"]["message"]
    except Exception:
        return response.text[:200]


def _error_from(response) -> ScoringError:
    try:
        body = response.json()["error"]
        cls = ERROR_BY_CODE.get(body["code"], ScoringError)
        return cls(body["message"])
    except Exception:
        return ScoringError(f"HTTP {response.status_code}: {response.text[:200]}")


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


class HandleTransport:
    """The Serve app's ingress through a deployment handle (inside the cluster): the same logic as
    HTTP (tokenizer deployment, gathering, replicas) without the proxy and JSON."""

    def __init__(self, app_name: str = "scoring"):
        self.app_name = app_name
        self.handle = None

    async def call(self, op: str, model: str | None, payload: dict[str, Any]) -> Any:
        from ray import serve

        if self.handle is None:
            self.handle = serve.get_app_handle(self.app_name)
        method = {
            "rewards": "score_inputs",
            "compare": "compare_items",
            "judge": "judge_items",
            "step_rewards": "step_reward_items",
            "rate": "rate_items",
        }[op]
        try:
            return await getattr(self.handle, method).remote(model, **payload)
        except Exception as err:
            raise _from_ray(err) from None

    async def aclose(self) -> None:
        return None


def _from_ray(err: BaseException) -> BaseException:
    """The handle's failure as a ScoringError (the server's verdict) or Retryable (transient)."""
    cause = errors.from_ray(err)
    if isinstance(cause, Overloaded):
        return Retryable(cause.message)
    if isinstance(cause, ScoringError):
        return type(cause)(cause.message)
    return ScoringError(f"the scoring app failed: {type(cause).__name__}: {str(cause)[:300]}")


# ---------------------------------------------------------------- the client


class RewardClient:
    def __init__(
        self,
        transport,
        model: str | None = None,
        *,
        max_concurrency: int = 8,
        max_items_per_call: int = 64,
        max_chars_per_call: int = 200_000,
        deadline_s: float = 120.0,
        backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
        seed: int | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ):
        if max_concurrency < 1 or max_items_per_call < 1 or max_chars_per_call < 1:
            raise errors.ConfigError("max_concurrency, max_items_per_call and max_chars_per_call must be >= 1")
        self.transport = transport
        self.model = model
        self.max_concurrency = max_concurrency
        self.max_items_per_call = max_items_per_call
        self.max_chars_per_call = max_chars_per_call
        self.deadline_s = deadline_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.rng = random.Random(seed)
        self.sleep = sleep or asyncio.sleep
        self.stats = {"calls": 0, "retries": 0}
        self._limits: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> Semaphore
        self._loop: asyncio.AbstractEventLoop | None = None  # the sync API's private loop
        self._loop_lock = threading.Lock()

    @classmethod
    def handle(cls, app_name: str = "scoring", model: str | None = None, **options: Any) -> RewardClient:
        """Inside the Ray cluster (e.g. from rollout actors): calls go through a Serve handle."""
        return cls(HandleTransport(app_name), model, **options)

    @classmethod
    def http(
        cls,
        base_url: str,
        api_key: str | None = None,
        model: str | None = None,
        *,
        timeout_s: float = 60.0,
        transport=None,
        **options: Any,
    ) -> RewardClient:
        """From anywhere: the HTTP API at `base_url` (e.g. http://head:8000)."""
        return cls(HttpTransport(base_url, api_key, timeout_s, transport), model, **options)

    # -- async API

    async def ascore(self, conversations: Sequence[list[dict[str, str]]]) -> list[float]:
        """Raw rewards (higher is better), one per conversation, in input order."""
        return await self._map("rewards", _as_list(conversations, "conversations"), "conversations")

    async def ascore_texts(self, texts: Sequence[str]) -> list[float]:
        """Rewards for pre-templated strings (chat template already applied), in input order."""
        return await self._map("rewards", _as_list(texts, "texts"), "texts")

    async def acompare(self, items: Sequence[dict[str, str]]) -> list[dict[str, Any]]:
        """Pairs {prompt, response_a, response_b} -> {winner, prob_a, ...} from the default or named model."""
        return await self._map("compare", _as_list(items, "items"), "items")

    async def ajudge(
        self, items: Sequence[dict[str, str]], mode: str = "logits", debias: bool = False
    ) -> list[dict[str, Any]]:
        """A critic's verdicts on pairs, in input order."""
        return await self._map("judge", _as_list(items, "items"), "items", {"mode": mode, "debias": debias})

    async def astep_rewards(self, items: Sequence[Any], aggregate: str | None = None) -> list[dict[str, Any]]:
        """A process reward model's step rewards: items {prompt, steps} or {prompt, response} ->
        {score, step_rewards, num_steps, weakest_step, ...}, in input order."""
        extra = {"aggregate": aggregate} if aggregate is not None else {}
        return await self._map("step_rewards", _as_list(items, "items"), "items", extra)

    async def arate(self, items: Sequence[dict[str, str]], mode: str = "logits") -> list[dict[str, Any]]:
        """A pointwise judge's ratings: items {prompt, response} -> {expected, rating, probs, ...}."""
        return await self._map("rate", _as_list(items, "items"), "items", {"mode": mode})

    # -- sync API (same names, no prefix)

    def score(self, conversations):
        return self._sync(self.ascore(conversations))

    def score_texts(self, texts):
        return self._sync(self.ascore_texts(texts))

    def compare(self, items):
        return self._sync(self.acompare(items))

    def judge(self, items, mode: str = "logits", debias: bool = False):
        return self._sync(self.ajudge(items, mode, debias))

    def step_rewards(self, items, aggregate: str | None = None):
        return self._sync(self.astep_rewards(items, aggregate))

    def rate(self, items, mode: str = "logits"):
        return self._sync(self.arate(items, mode))

    def close(self) -> None:
        """Stop the sync API's loop and close its connections (async users: `await aclose()`)."""
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self.transport.aclose(), self._loop).result()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop = None

    async def aclose(self) -> None:
        await self.transport.aclose()

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals

    def _sync(self, coro):
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            coro.close()
            raise RuntimeError("RewardClient: inside an event loop, await the async method (ascore, ...) instead")
        with self._loop_lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=self._loop.run_forever, name="reward-client", daemon=True).start()
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _chunks(self, items: list) -> list[tuple[int, int]]:
        spans, start, chars = [], 0, 0
        for i, item in enumerate(items):
            size = _chars(item)
            if i > start and (i - start >= self.max_items_per_call or chars + size > self.max_chars_per_call):
                spans.append((start, i))
                start, chars = i, 0
            chars += size
        if items:
            spans.append((start, len(items)))
        return spans

    async def _map(self, op: str, items: list, field: str, extra: dict | None = None) -> list:
        loop = asyncio.get_running_loop()
        if loop not in self._limits:
            self._limits[loop] = asyncio.Semaphore(self.max_concurrency)
        limit = self._limits[loop]
        deadline = time.monotonic() + self.deadline_s
        key = "conversations" if op == "rewards" else "items"  # texts go in `conversations` too

        async def one(start: int, stop: int) -> list:
            async with limit:
                payload = {key: items[start:stop], **(extra or {})}
                try:
                    out = await self._with_retries(op, payload, deadline)
                except ScoringError as err:
                    raise type(err)(_located(err.message, key, field, start, stop)) from None
            if len(out) != stop - start:
                raise ScoringError(f"{field}[{start}:{stop}]: the server returned {len(out)} results")
            return out

        parts = await asyncio.gather(*(one(a, b) for a, b in self._chunks(items)))
        return [x for part in parts for x in part]

    async def _with_retries(self, op: str, payload: dict, deadline: float) -> list:
        async def once() -> list:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Overloaded(f"no answer within the {self.deadline_s:.0f}s deadline")
            self.stats["calls"] += 1
            return await asyncio.wait_for(self.transport.call(op, self.model, payload), timeout=left)

        def retried(_failure: BaseException, _pause: float) -> None:
            self.stats["retries"] += 1

        # jittered x0.5 to x1: many rollout workers must not retry in step; a longer Retry-After
        # wins, spread over half as long again (cluster/core/retry.py: Backoff)
        backoff = Backoff(self.backoff_s, self.max_backoff_s, jitter=(0.5, 1.0))
        try:
            return await retry_async(
                once,
                retry_on=(TimeoutError, Retryable),
                backoff=backoff,
                deadline=deadline,
                clock=time.monotonic,
                sleep=self.sleep,
                rng=self.rng,
                retry_after=lambda err: getattr(err, "retry_after", None),
                on_retry=retried,
            )
        except GaveUp as end:
            reason = str(end.last) or "timed out"
            raise Overloaded(
                f"gave up after {end.attempts} attempt(s) within the {self.deadline_s:.0f}s "
                f"deadline; last failure: {reason}"
            ) from None


def _located(message: str, key: str, field: str, start: int, stop: int) -> str:
    """The server's message about chunk [start, stop). One that names an item by its index in the
    chunk (`conversations[3][0].role: ...`) is given the item's index in the caller's list instead,
    the words in-process scoring uses; any other is prefixed with the chunk (`conversations[64:128]: ...`)."""
    named = re.match(rf"{key}\[(\d+)\]", message)
    if named and start + int(named.group(1)) < stop:
        return f"{field}[{start + int(named.group(1))}]{message[named.end() :]}"
    return f"{field}[{start}:{stop}]: {message}"


def _as_list(items: Any, what: str) -> list:
    if isinstance(items, str | bytes | dict) or not isinstance(items, Sequence):
        raise errors.InvalidInput(f"{what}: expected a list, got {type(items).__name__}")
    return list(items)


def _chars(item: Any) -> int:
    if isinstance(item, str):
        return len(item)
    if isinstance(item, dict):
        return sum(_chars(v) for v in item.values() if isinstance(v, str | list | tuple))  # a prm's steps too
    return sum(_chars(x) for x in item) if isinstance(item, list | tuple) else 0
