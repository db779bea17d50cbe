"""slime's remote reward model against the app on a real socket (no Ray), replaying slime's own
client (THUDM/slime @624b824a898ab0ec1fcb4d373004c7f3852bf515, slime/rollout/rm_hub/__init__.py, last
changed in 4c058f65c3d296db719f6cee9e7e67b2078b3e9c: `_get_shared_session` and `remote_rm`, verbatim
but for the `args` / `sample` objects it reads): aiohttp, one shared session
(`TCPConnector(limit=64, enable_cleanup_closed=True)`, `ClientTimeout(total=120)`), POST
`args.rm_url` as given with `{"prompt", "response", "label"}` and no header, `raise_for_status()`,
`await resp.json()` stored as the reward (a bare number with the default `--reward-key`).

The key travels as slime can send it: the URL's password (`http://slime:KEY@host/...`), which
aiohttp sends as HTTP Basic; a trusted network needs none. Rewards are compared with our own
/v1/rewards (and /v1/rate for a pointwise judge) for the same conversation, within 1e-6.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
from helpers import API_KEY, CONVERSATIONS, InProcessClient, LiveServer

aiohttp = pytest.importorskip("aiohttp")
logger = logging.getLogger("slime-replay")

_shared_session: aiohttp.ClientSession | None = None


def _get_shared_session() -> aiohttp.ClientSession:
    global _shared_session
    if _shared_session is None or _shared_session.closed:
        connector = aiohttp.TCPConnector(
            limit=64,
            enable_cleanup_closed=True,
        )
        timeout = aiohttp.ClientTimeout(total=120)
        _shared_session = aiohttp.ClientSession(connector=connector, timeout=timeout)
    return _shared_session


async def remote_rm(args, sample: Sample, max_retries: int = 10):
    payload = {
        "prompt": sample.prompt,
        "response": sample.response,
        "label": sample.label,
    }
    session = _get_shared_session()
    for attempt in range(max_retries):
        try:
            async with session.post(args.rm_url, json=payload) as resp:
                resp.raise_for_status()
                return await resp.json()
        except Exception as e:
            if attempt + 1 >= max_retries:
                logger.warning(f"remote_rm failed after {attempt + 1} attempts: {e}")
                raise
            backoff = min(2**attempt, 30) + random.random()
            logger.info(f"remote_rm: {type(e).__name__}, retrying in {backoff:.1f}s ({attempt + 1}/{max_retries})")
            await asyncio.sleep(backoff)


@dataclass
class Sample:
    """slime/utils/types.py `Sample`: the three fields remote_rm reads."""

    prompt: str | list[dict[str, str]]
    response: str
    label: str | None = None


def rewards_of(calls: list[tuple[str, Sample]], max_retries: int = 1) -> list:
    """slime's rollout: `await async_rm(args, sample)` per sample (gathered), on one event loop and
    the one shared session; the session closed at the end (a later call opens a new one). One
    attempt each (slime's default is 10, with back-off: a failure here would take minutes)."""
    global _shared_session

    async def main():
        try:
            return await asyncio.gather(
                *(remote_rm(SimpleNamespace(rm_url=url), s, max_retries) for url, s in calls), return_exceptions=True
            )
        finally:
            await _get_shared_session().close()

    out = asyncio.run(main())
    _shared_session = None
    return out


def with_key(url: str) -> str:
    """`--rm-url` with the API key as the URL's password (aiohttp: an HTTP Basic header)."""
    return url.replace("http://", f"http://slime:{API_KEY}@", 1)


def ours(live, path: str, body: dict) -> dict:
    import requests

    response = requests.post(f"{live['keyed']}{path}", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status_code == 200, response.text
    return response.json()


def test_remote_rm_rewards_equal_v1_rewards(live):
    """A string prompt is one user turn, a message list is used as is; the response is the
    assistant turn. The default model is the first reward model; `?model=` names another (an
    ensemble, shaped as /v1/rewards shapes it)."""
    samples = [
        Sample(CONVERSATIONS[0][0]["content"], CONVERSATIONS[0][1]["content"], "Paris"),
        Sample(CONVERSATIONS[2][:-1], CONVERSATIONS[2][-1]["content"], None),  # system + user messages
        Sample(CONVERSATIONS[4][:-1], CONVERSATIONS[4][-1]["content"]),  # a multi-turn prompt
    ]
    convs = [
        [{"role": "user", "content": samples[0].prompt}, {"role": "assistant", "content": samples[0].response}],
        CONVERSATIONS[2],
        CONVERSATIONS[4],
    ]
    url = with_key(f"{live['keyed']}/slime/reward")
    no_system = [samples[0], samples[2]]  # the ensemble's Gemma-2 member's template takes no system turn
    got = rewards_of([(url, s) for s in samples] + [(url + "?model=rm-mix", s) for s in no_system])
    assert all(isinstance(r, float) for r in got), got
    expected = ours(live, "/v1/rewards", {"conversations": convs})["scores"]
    mixed = ours(live, "/v1/rewards", {"model": "rm-mix", "conversations": [convs[0], convs[2]]})["scores"]
    assert got[:3] == pytest.approx(expected, abs=1e-6)
    assert got[3:] == pytest.approx(mixed, abs=1e-6)
    assert [got[0], got[2]] != pytest.approx(mixed, abs=1e-3)  # ?model= chose the ensemble
    # no key at all from a trusted network, as slime's examples run
    [trusted] = rewards_of([(f"{live['trusted']}/slime/reward", samples[0])])
    assert trusted == pytest.approx(expected[0], abs=1e-6)


def test_remote_rm_errors_are_raised_by_raise_for_status(live):
    """A wrong or missing key is 401; a model that answers no single number (a critic) or a prompt
    that is not one is a 4xx: slime's raise_for_status raises them (slime retries every failure,
    10 times by default)."""
    sample = Sample("What is 2 + 2?", "4")
    url = f"{live['keyed']}/slime/reward"
    got = rewards_of(
        [
            (url, sample),
            (url.replace("http://", "http://slime:wrong@", 1), sample),
            (with_key(url) + "?model=judge", sample),
            (with_key(url) + "?model=nope", sample),
            (with_key(url), Sample([{"role": "user", "content": 5}], "4")),
        ]
    )
    assert [getattr(e, "status", e) for e in got] == [401, 401, 422, 404, 422]
    assert all(API_KEY not in str(e) for e in got)  # what slime logs of a failure: no key in it


def test_basic_password_is_the_key_and_the_answer_is_json(live):
    """What aiohttp sends for `http://slime:KEY@host`: `Authorization: Basic base64(slime:KEY)`; the
    answer is a bare number with content-type application/json (aiohttp's json() needs it)."""
    import base64

    import requests

    basic = "Basic " + base64.b64encode(f"slime:{API_KEY}".encode()).decode()
    r = requests.post(
        f"{live['keyed']}/slime/reward", json={"prompt": "Hi", "response": "Hello!"}, headers={"Authorization": basic}
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert isinstance(r.json(), float)


@pytest.fixture(scope="module")
def judge_server(judge_spec):
    """A pointwise judge (its default template, and one with a {label} field) served on a socket."""
    from cluster.core.config import AppConfig
    from cluster.engine.loading import local_service
    from cluster.http.app import create_app

    template = "Question: {input}\nReference answer: {label}\nAnswer: {response}\nRate the answer from 1 to 10."
    config = AppConfig.parse({"models": [judge_spec, {**judge_spec, "name": "pw-label", "judge_template": template}]})
    app = create_app(local_service(config))
    server = LiveServer(app)
    yield {"url": server.url, "client": InProcessClient(app)}
    server.stop()


def test_remote_rm_pointwise_judge_answers_its_expected_rating(judge_server):
    """A pointwise judge named: the sample's expected rating, as /v1/rate's logits mode gives it;
    a template's {label} is filled with slime's label."""
    client = judge_server["client"]
    samples = [
        Sample("What is the capital of France?", "Paris.", "Paris"),
        Sample([{"role": "user", "content": "Add 2 and 3."}], "2 + 3 = 6", "5"),
    ]
    items = [
        {"prompt": "What is the capital of France?", "response": "Paris."},
        {"prompt": "Add 2 and 3.", "response": "2 + 3 = 6"},
    ]
    url = f"{judge_server['url']}/slime/reward"
    got = rewards_of([(url, s) for s in samples] + [(url + "?model=pw-label", s) for s in samples])
    rated = client.post("/v1/rate", json={"model": "pw", "items": items}).json()["results"]
    labelled = [{**it, "label": s.label} for it, s in zip(items, samples)]
    rated_label = client.post("/v1/rate", json={"model": "pw-label", "items": labelled}).json()["results"]
    assert got[:2] == pytest.approx([r["expected"] for r in rated], abs=1e-6)
    assert got[2:] == pytest.approx([r["expected"] for r in rated_label], abs=1e-6)
    refused = rewards_of(
        [
            (url + "?model=pw-label", Sample("q", "a", None)),  # the template needs the label
            (url, Sample([{"role": "system", "content": "s"}, {"role": "user", "content": "q"}], "a")),
        ]
    )
    assert [getattr(e, "status", e) for e in refused] == [422, 422]
