"""Trying a call again after a jittered, growing pause until a deadline: one schedule (`Backoff`)
and one loop, synchronous (`retry_sync`) and asynchronous (`retry_async`), for every caller that
waits out transient failures: the Serve handles' admission (deployments/handles.py: refused or
lost-replica calls, async and blocking) and RewardClient (cluster/client/reward_client.py: 503s,
dropped connections, timeouts).

Nothing here knows a transport: the caller names what is retryable (exception classes or a
predicate), the clock its deadline is on, how to sleep, and what a failure's Retry-After is.
A non-retryable failure is raised as it is; when the next pause would end at or past the
deadline, `GaveUp` is raised with the last retryable failure (the pause is never started).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

# what a caller retries: exception classes, or a predicate over the failure
RetryOn = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]

_RNG = random.Random()


@dataclass(frozen=True)
class Backoff:
    """The pause before retry n (n = 0 for the first): `first_s * 2**n` capped at `max_s`, times a
    uniform jitter in [jitter[0], jitter[1]) so the callers refused together do not come back
    together. A failure's Retry-After longer than that wins, spread over [retry_after,
    retry_after * (1 + retry_after_spread)): a server's fixed Retry-After would otherwise bring
    every refused caller back in step."""

    first_s: float
    max_s: float
    jitter: tuple[float, float] = (0.5, 1.5)
    retry_after_spread: float = 0.5

    def delay(self, attempt: int, rng: random.Random = _RNG, retry_after: float | None = None) -> float:
        low, high = self.jitter
        wait = min(self.max_s, self.first_s * 2**attempt) * (low + (high - low) * rng.random())
        if retry_after is not None and wait < retry_after:
            wait = retry_after * (1 + self.retry_after_spread * rng.random())
        return wait


class GaveUp(Exception):
    """The deadline came before the call could be tried again: `last` is the last retryable
    failure, `retries` how many times the call had been tried again before it."""

    def __init__(self, last: BaseException, retries: int):
        super().__init__(f"gave up after {retries + 1} attempt(s); last failure: {last!r}")
        self.last = last
        self.retries = retries

    @property
    def attempts(self) -> int:
        return self.retries + 1


def _predicate(retry_on: RetryOn) -> Callable[[BaseException], bool]:
    if isinstance(retry_on, type | tuple):
        return lambda err: isinstance(err, retry_on)
    return retry_on


@dataclass
class _Schedule:
    """What the two loops share: which failures are retried, the pause before each retry, and
    the deadline that ends them."""

    retry_on: Callable[[BaseException], bool]
    backoff: Backoff
    deadline: float
    clock: Callable[[], float]
    rng: random.Random
    retry_after: Callable[[BaseException], float | None] | None
    on_retry: Callable[[BaseException, float], None] | None
    retries: int = 0

    def pause(self, err: Exception) -> float:
        """The pause before trying again after `err`; `err` itself when it is not retryable,
        GaveUp when the pause would end at or past the deadline."""
        if not self.retry_on(err):
            raise err
        after = self.retry_after(err) if self.retry_after is not None else None
        wait = self.backoff.delay(self.retries, self.rng, after)
        if self.clock() + wait >= self.deadline:
            raise GaveUp(err, self.retries) from None
        self.retries += 1
        if self.on_retry is not None:
            self.on_retry(err, wait)
        return wait


def retry_sync(
    attempt: Callable[[], T],
    *,
    retry_on: RetryOn,
    backoff: Backoff,
    deadline: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] = time.sleep,
    rng: random.Random = _RNG,
    retry_after: Callable[[BaseException], float | None] | None = None,
    on_retry: Callable[[BaseException, float], None] | None = None,
) -> T:
    """`attempt()`'s result, trying it again after `backoff`'s pauses while it raises a failure
    `retry_on` names, until `deadline` (on `clock`). `on_retry(failure, pause)` runs before each
    pause; `retry_after(failure)` reads a server's Retry-After (seconds) where there is one."""
    schedule = _Schedule(_predicate(retry_on), backoff, deadline, clock, rng, retry_after, on_retry)
    while True:
        try:
            return attempt()
        except Exception as err:  # noqa: BLE001 - schedule.pause raises what is not retried
            wait = schedule.pause(err)
        sleep(wait)


async def retry_async(
    attempt: Callable[[], Awaitable[T]],
    *,
    retry_on: RetryOn,
    backoff: Backoff,
    deadline: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    rng: random.Random = _RNG,
    retry_after: Callable[[BaseException], float | None] | None = None,
    on_retry: Callable[[BaseException, float], None] | None = None,
) -> T:
    """`retry_sync` for a coroutine: `await attempt()`, pausing with `await sleep(pause)`."""
    schedule = _Schedule(_predicate(retry_on), backoff, deadline, clock, rng, retry_after, on_retry)
    while True:
        try:
            return await attempt()
        except Exception as err:  # noqa: BLE001 - schedule.pause raises what is not retried
            wait = schedule.pause(err)
        await sleep(wait)
