"""OpenRLHF's remote reward model client, run unchanged against the app (uvicorn, API key on).

The client code below is copied verbatim from OpenRLHF releases (the PyPI wheels; wheels carry no
commit, so each is named by version and sha256), with the stored GitHub copies' commits where the
same code is there:
- 0.11.2 (sha256 c969d70db03a70724c3d8a5a01186c6e0728bce624fb3dff95e39b5396acefa6),
  openrlhf/utils/agent.py `SingleTurnAgentExecutor._fetch_rewards_via_http` (one query per request,
  round-robin over `--reward.remote_url` servers) and
  openrlhf/trainer/ppo_utils/samples_generator.py `_process_response_into_experience` (how the
  answer becomes per-sample metrics);
- 0.10.4 (sha256 5ccd1b1de42e11b5a8827efbf901381e2af9257e0898269abdc5ce1839c86685), the same
  method before 0.11.1: every other server gets an empty shard `{"query": []}`;
- 0.5.4 (sha256 689c7452801ac19566790f03ba32d98a014e56a8adf6ee256df889158e657759; OpenRLHF/OpenRLHF@07c34b30
  openrlhf/utils/remote_rm_utils.py), `request_api_wrapper` / `remote_rm_fn` (requests), whose
  trainer decoded left- and right-padded sequences with the special tokens, and whose server
  stripped them (openrlhf/cli/serve_rm.py `strip_sequence`).
OpenRLHF cannot send a header: the key rides in the URL (`?api_key=`, or `user:key@` which the
HTTP libraries send as Basic auth), as the README tells OpenRLHF users to configure it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from itertools import cycle

import pytest
from helpers import API_KEY, CONVERSATIONS, TOL

aiohttp = pytest.importorskip("aiohttp")
requests = pytest.importorskip("requests")
torch = pytest.importorskip("torch")
logger = logging.getLogger("openrlhf-replay")


# ---------------------------------------------------------------- OpenRLHF 0.11.2, verbatim


class SingleTurnAgentExecutor:
    """The parts of openrlhf 0.11.2 openrlhf/utils/agent.py that talk to a reward server."""

    def __init__(self, remote_rm_url=None):
        reward_endpoints = [remote_rm_url] if isinstance(remote_rm_url, str) else remote_rm_url
        self.reward_endpoints = reward_endpoints or []
        self._reward_endpoint_cycle = cycle(self.reward_endpoints)

    async def _fetch_rewards_via_http(self, queries_list, prompts_list, labels_list):
        """HTTP fallback: shard requests across servers."""
        num_servers = len(self.reward_endpoints)
        batch_size = (len(queries_list) + num_servers - 1) // num_servers
        timeout = aiohttp.ClientTimeout(total=180)

        tasks = []
        for i in range(num_servers):
            start_idx = i * batch_size
            if start_idx >= len(queries_list):
                break
            # Rollouts usually send one query, so rotate across calls as well as shards.
            rm = next(self._reward_endpoint_cycle)
            end_idx = min((i + 1) * batch_size, len(queries_list))
            payload = {
                "query": queries_list[start_idx:end_idx],
                "prompts": prompts_list[start_idx:end_idx],
                "labels": labels_list[start_idx:end_idx],
            }

            async def _post_request(url, data, try_max_times=5):
                for _ in range(try_max_times):
                    try:
                        async with aiohttp.ClientSession(timeout=timeout) as session:
                            async with session.post(url, json=data) as response:
                                response.raise_for_status()
                                return await response.json()
                    except aiohttp.ClientError as e:
                        logger.info(f"Request error, please check: {e}")
                    except Exception as e:  # pragma: no cover - defensive
                        logger.info(f"Unexpected error, please check: {e}")
                    await asyncio.sleep(1)

                raise RuntimeError(
                    f"Request error for {try_max_times} times, returning None. Please check the API server."
                )

            tasks.append(asyncio.create_task(_post_request(rm, payload)))
        return await asyncio.gather(*tasks)


async def _fetch_rewards_via_http_0_10_4(self, queries_list, prompts_list, labels_list):
    """HTTP fallback: shard requests across servers. (openrlhf 0.10.4, openrlhf/utils/agent.py)"""
    num_servers = len(self.reward_endpoints)
    batch_size = (len(queries_list) + num_servers - 1) // num_servers
    timeout = aiohttp.ClientTimeout(total=180)

    tasks = []
    for i, rm in enumerate(self.reward_endpoints):
        start_idx = i * batch_size
        end_idx = min((i + 1) * batch_size, len(queries_list))
        payload = {
            "query": queries_list[start_idx:end_idx],
            "prompts": prompts_list[start_idx:end_idx],
            "labels": labels_list[start_idx:end_idx],
        }

        async def _post_request(url, data, try_max_times=5):
            for _ in range(try_max_times):
                try:
                    async with aiohttp.ClientSession(timeout=timeout) as session:
                        async with session.post(url, json=data) as response:
                            response.raise_for_status()
                            return await response.json()
                except aiohttp.ClientError as e:
                    logger.info(f"Request error, please check: {e}")
                except Exception as e:  # pragma: no cover - defensive
                    logger.info(f"Unexpected error, please check: {e}")
                await asyncio.sleep(1)

            raise RuntimeError(f"Request error for {try_max_times} times, returning None. Please check the API server.")

        tasks.append(asyncio.create_task(_post_request(rm, payload)))
    return await asyncio.gather(*tasks)


def read_reward(rewards_info_list):
    """openrlhf 0.11.2 agent.py `execute` (after the fetch) and samples_generator.py
    `_process_response_into_experience`: the answer as the trainer's per-sample `info` metrics."""
    rewards_info = rewards_info_list[0] if rewards_info_list else None
    output = {}
    if rewards_info:
        score_value = rewards_info.get("scores")
        if score_value is None:
            score_value = rewards_info.get("rewards")
        output.update(
            reward=rewards_info.get("rewards"),
            scores=score_value,
            extra_logs=rewards_info.get("extra_logs") or {},
        )
    reward_val, score_val = output.get("reward"), output.get("scores")
    is_clipped = False
    info = {
        "response_clip_ratio": torch.tensor([is_clipped]),
    }
    if reward_val is not None:
        info["reward"] = torch.tensor([reward_val])
    if score_val is not None:
        info["score"] = torch.tensor([score_val])

    # Convert extra logs to tensors for downstream consumers.
    extra_logs = output.get("extra_logs", {})
    for key, value in extra_logs.items():
        if isinstance(value, torch.Tensor):
            value = value.flatten()[0].item()
        info[key] = torch.tensor([value])
    return info, extra_logs


# ---------------------------------------------------------------- OpenRLHF 0.5.4, verbatim


def request_api_wrapper(url, data, score_key="rewards", try_max_times=5):
    """Synchronous request API wrapper"""
    headers = {
        "Content-Type": "application/json",
    }
    for _ in range(try_max_times):
        try:
            response = requests.post(url=url, json=data, headers=headers, timeout=180)
            response.raise_for_status()  # Raise an HTTPError for bad responses
            response = response.json()
            assert score_key in response, f"{score_key} not in {response}"
            return response.get(score_key)
        except requests.RequestException as e:
            logger.info(f"Request error, please check: {e}")
        except Exception as e:
            logger.info(f"Unexpected error, please check: {e}")
        import time

        time.sleep(1)

    raise Exception(f"Request error for {try_max_times} times, returning None. Please check the API server.")


def remote_rm_fn(api_url, queries, score_key="rewards"):
    scores = request_api_wrapper(api_url, {"query": queries}, score_key)
    return torch.tensor(scores)


def strip_sequence(text, pad_token, eos_token):
    """openrlhf 0.5.4 openrlhf/cli/serve_rm.py: what OpenRLHF's own server did to those queries."""
    pad_token_escaped = re.escape(pad_token)
    eos_token_escaped = re.escape(eos_token)

    pattern = f"^({eos_token_escaped}|{pad_token_escaped})+"
    text = re.sub(pattern, "", text)

    pattern = f"({eos_token_escaped}|{pad_token_escaped})+$"
    text = re.sub(pattern, "", text)
    return text


# ---------------------------------------------------------------- the tests


def queries_for(rm, convs):
    tok = rm.encoder.tokenizer
    return (
        [tok.apply_chat_template(c, tokenize=False) for c in convs],
        [tok.apply_chat_template(c[:-1], tokenize=False, add_generation_prompt=True) for c in convs],
    )


def test_current_openrlhf_gets_the_card_rewards_with_the_key_in_its_url(live):
    """0.11.2, `--reward.remote_url http://HOST:8000/get_reward?api_key=KEY`: one query per
    request, as its rollout workers send them; the rewards are the card's."""
    rm = live["models"]["rm"]
    queries, prompts = queries_for(rm, CONVERSATIONS[:4])
    executor = SingleTurnAgentExecutor(f"{live['keyed']}/get_reward?api_key={API_KEY}")

    async def rollout():
        return await asyncio.gather(
            *(executor._fetch_rewards_via_http([q], [p], [None]) for q, p in zip(queries, prompts))
        )

    answers = asyncio.run(rollout())
    expected = rm.score(CONVERSATIONS[:4])
    for answer, want in zip(answers, expected):
        info, extra_logs = read_reward(answer)
        assert info["reward"].flatten().tolist() == pytest.approx([want], abs=TOL)
        assert info["score"].flatten().tolist() == pytest.approx([want], abs=TOL)
        # merged into the trainer's metrics without replacing any of its own
        assert set(extra_logs) == {"rm_truncated"} and info["rm_truncated"].flatten().tolist() == [0.0]
        assert not set(extra_logs) & {
            "truncated",
            "response_length",
            "total_length",
            "reward",
            "score",
            "response_clip_ratio",
            "policy_loss",
            "kl",
        }


def test_round_robin_over_several_urls_and_basic_auth(live):
    """0.11.2 rotates single queries over a comma list of servers; the key also works as the URL's
    password (aiohttp sends it as Basic auth)."""
    rm = live["models"]["rm"]
    queries, prompts = queries_for(rm, CONVERSATIONS[:2])
    host = live["keyed"].removeprefix("http://")
    urls = f"{live['keyed']}/get_reward?api_key={API_KEY},http://openrlhf:{API_KEY}@{host}/get_reward".split(",")
    executor = SingleTurnAgentExecutor(urls)

    async def rollout():
        return [await executor._fetch_rewards_via_http([q], [p], [None]) for q, p in zip(queries, prompts)]

    got = [read_reward(a)[0]["reward"].item() for a in asyncio.run(rollout())]
    assert got == pytest.approx(rm.score(CONVERSATIONS[:2]), abs=TOL)


def test_empty_shards_of_openrlhf_0_10_are_answered_empty(live):
    """0.9.x-0.11.0 send `{"query": [], ...}` to every server but the first; an error there (as
    OpenRLHF's own server gave) lost the sample's reward after 5 retries."""
    rm = live["models"]["rm"]
    queries, prompts = queries_for(rm, CONVERSATIONS[:1])
    executor = SingleTurnAgentExecutor([f"{live['keyed']}/get_reward?api_key={API_KEY}"] * 3)
    answers = asyncio.run(_fetch_rewards_via_http_0_10_4(executor, queries, prompts, [None]))
    assert len(answers) == 3
    assert answers[0]["rewards"] == pytest.approx(rm.score(CONVERSATIONS[:1]), abs=TOL)
    assert answers[1] == answers[2] == {"rewards": [], "scores": [], "extra_logs": {"rm_truncated": []}}


def test_openrlhf_0_5_padded_queries_are_stripped_as_its_server_did(live):
    """0.5.4 decoded `[PAD]*k + prompt + response + [PAD]*m` with the special tokens; scoring that
    text literally is off; stripped (as serve_rm's strip_sequence), it is the card's reward."""
    rm = live["models"]["rm"]
    tok = rm.encoder.tokenizer
    assert tok.pad_token != tok.eos_token
    padded = []
    for conv in CONVERSATIONS[:3]:
        ids = tok(tok.apply_chat_template(conv, tokenize=False), add_special_tokens=False)["input_ids"]
        seq = [tok.pad_token_id] * 3 + ids + [tok.pad_token_id] * 5
        padded.append(tok.decode(seq, skip_special_tokens=False))
    assert all(p.startswith(tok.pad_token) and p.endswith(tok.pad_token) for p in padded)
    got = remote_rm_fn(f"{live['keyed']}/get_reward?api_key={API_KEY}", queries=padded).tolist()
    expected = rm.score(CONVERSATIONS[:3])
    assert got == pytest.approx(expected, abs=TOL)
    # what OpenRLHF's server scored: the stripped text plus one EOS, which here is the card's text
    stripped = [strip_sequence(p, tok.pad_token, tok.eos_token) + tok.eos_token for p in padded]
    assert rm.score(stripped) == pytest.approx(expected, abs=TOL)
    literal = rm.encoder.encode_inputs(padded[:1])[0].ids
    assert literal[:2] != rm.encoder.encode_inputs(stripped[:1])[0].ids[:2]  # the padding would have been scored


def test_python_file_reward_func(live, monkeypatch):
    """`--reward.remote_url <cluster/client/openrlhf_reward_func.py>`: OpenRLHF 0.11.2 loads
    `reward_func` and calls it in a thread as reward_func(queries, prompts, labels)."""
    import importlib.util

    import cluster.client.from_env as from_env
    import cluster.client.openrlhf_reward_func as module

    monkeypatch.setenv("SCORING_URL", live["keyed"])
    monkeypatch.setenv("SCORING_API_KEY", API_KEY)
    monkeypatch.setenv("SCORING_MODEL", "rm")
    monkeypatch.setattr(from_env, "_clients", {})
    spec = importlib.util.spec_from_file_location("reward_func", os.path.abspath(module.__file__))
    reward_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reward_module)
    rm = live["models"]["rm"]
    queries, prompts = queries_for(rm, CONVERSATIONS[:2])
    answers = [
        asyncio.run(asyncio.to_thread(reward_module.reward_func, [q], [p], [None])) for q, p in zip(queries, prompts)
    ]
    got = [read_reward([a])[0]["reward"].item() for a in answers]
    assert got == pytest.approx(rm.score(CONVERSATIONS[:2]), abs=TOL)


def test_without_the_key_openrlhf_is_refused(live):
    r = requests.post(f"{live['keyed']}/get_reward", json={"query": ["x"]}, timeout=30)
    assert r.status_code == 401 and "api_key=" in r.json()["error"]["message"]
    r = requests.post(f"{live['keyed']}/get_reward?api_key=wrong", json={"query": ["x"]}, timeout=30)
    assert r.status_code == 401
