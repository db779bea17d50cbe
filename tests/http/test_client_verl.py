"""verl against the app, replaying verl's own code (verl-project/verl):

- its reward loop's reward-model request, verl/experimental/reward_loop/reward_loop.py @19c3befa
  (`RewardLoopWorker._post_request`, `_preprocess_reward_inputs`, `compute_score_disrm`: POST
  /classify for vLLM, /v1/embeddings for SGLang, `model` = the config's model path). verl starts
  its own servers for that path and sends no header; the app answers it as the servers it
  replaces would (trusted network, the model named by its path or an alias);
- its custom reward function call, verl/trainer/ppo/reward.py @302f740f (`_call_with_kwargs`:
  `custom_reward_function.reward_kwargs` merged over the call's keyword arguments) and
  verl/experimental/reward_loop/reward_manager/naive.py @b0705987 / batch.py @a9ba0658 (the
  keyword arguments, with `reward_router_address` and `reward_model_tokenizer` when verl's reward
  model is on): what the README configures for verl.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial

import pytest
from helpers import API_KEY, CONVERSATIONS, TOL

aiohttp = pytest.importorskip("aiohttp")
logger = logging.getLogger("verl-replay")


class RewardLoopWorker:
    """verl-project/verl@19c3befa verl/experimental/reward_loop/reward_loop.py, the request and the
    answer's reading (config access reduced to the two values it reads)."""

    def __init__(self, reward_router_address, engine_name, model_path, reward_model_tokenizer):
        self.reward_router_address = reward_router_address
        self.engine_name, self.model_path = engine_name, model_path
        self.reward_model_tokenizer = reward_model_tokenizer

    async def _post_request(self, payload: dict, endpoint: str, max_retries: int = 16):
        url = f"http://{self.reward_router_address}/{endpoint}"
        last_exception = None
        for attempt in range(max_retries):
            try:
                # It's safer to have a timeout instead of None, which can hang indefinitely.
                timeout = aiohttp.ClientTimeout(total=None)
                async with aiohttp.ClientSession(timeout=timeout) as session:
                    async with session.post(url, json=payload) as resp:
                        resp.raise_for_status()
                        return await resp.json()
            except aiohttp.ClientResponseError as e:
                # Do not retry on 4xx client errors, but retry on 5xx server errors.
                if 400 <= e.status < 500:
                    logger.error(f"Request to {url} failed with client error HTTP {e.status}: {e}. Not retrying.")
                    raise
                last_exception = e
            except (asyncio.TimeoutError, aiohttp.ClientConnectorError) as e:  # noqa: UP041 - verl's code
                last_exception = e
            if attempt < max_retries - 1:
                backoff_seconds = 2**attempt
                await asyncio.sleep(min(backoff_seconds, 30))
        logger.error(f"Max retries ({max_retries}) reached for request to {url}.")
        if last_exception:
            raise last_exception

    def _preprocess_reward_inputs(self, chat: list) -> str:
        rm_prompt = self.reward_model_tokenizer.apply_chat_template(
            chat,
            add_generation_prompt=False,
            tokenize=False,
        )

        # llama tokenizer will add bos token by default
        # will be removed in vllm >= 0.11.2, where we can add "add_special_tokens" = False
        if self.reward_model_tokenizer.bos_token is not None and rm_prompt.startswith(
            self.reward_model_tokenizer.bos_token
        ):
            rm_prompt = rm_prompt[len(self.reward_model_tokenizer.bos_token) :]

        return rm_prompt

    async def compute_score_disrm(self, chat: list) -> dict:
        disrm_prompt = self._preprocess_reward_inputs(chat)
        engine_name = self.engine_name
        model_name = self.model_path
        if engine_name == "vllm":
            payloads = {
                "model": model_name,
                "input": disrm_prompt,
                "use_activation": False,
            }
            output = await self._post_request(payloads, "classify")
            rm_score = output["data"][-1]["probs"][-1]
        elif engine_name == "sglang":
            payloads = {
                "model": model_name,
                "input": disrm_prompt,
            }
            output = await self._post_request(payloads, "v1/embeddings")
            rm_score = output["data"][-1]["embedding"][-1]
        else:
            raise NotImplementedError(f"RewardLoopManager does not support {engine_name}")

        return {"reward_score": rm_score, "reward_extra_info": {}}


def _call_with_kwargs(raw_fn, extra_kwargs, *args, **kwargs):
    """verl-project/verl@302f740f verl/trainer/ppo/reward.py"""
    merged_kwargs = {**kwargs, **extra_kwargs}
    return raw_fn(*args, **merged_kwargs)


def router_address(url: str) -> str:
    return url.removeprefix("http://")


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
@pytest.mark.parametrize(
    "model_path", ["path", "~/models/Skywork-Reward-Llama-3.1-8B-v0.2", "Skywork/Skywork-Reward-Llama-3.1-8B-v0.2"]
)
def test_reward_loop_request_gets_the_card_reward(live, engine, model_path):
    """verl's reward-model request, `model` its config's model_path: the absolute path the model
    was loaded from, or one of its configured aliases (a `~` path, a hub id)."""
    rm = live["models"]["rm"]
    path = str(live["service"].resolve("rm", ("reward",)).path) if model_path == "path" else model_path
    worker = RewardLoopWorker(router_address(live["trusted"]), engine, path, rm.encoder.tokenizer)
    got = [asyncio.run(worker.compute_score_disrm(c))["reward_score"] for c in CONVERSATIONS[:3]]
    assert got == pytest.approx(rm.score(CONVERSATIONS[:3]), abs=TOL)


def test_reward_loop_request_with_an_unknown_model_is_a_4xx_that_verl_does_not_retry(live):
    worker = RewardLoopWorker(
        router_address(live["trusted"]), "vllm", "/no/such/model", live["models"]["rm"].encoder.tokenizer
    )
    with pytest.raises(aiohttp.ClientResponseError) as err:
        asyncio.run(worker.compute_score_disrm(CONVERSATIONS[0]))
    assert err.value.status == 404  # a 5xx would be retried for ~330 s


def test_custom_reward_function_with_verl_kwargs(live, monkeypatch):
    """The README's verl setup: custom_reward_function.path=cluster/client/verl_reward.py with
    reward_kwargs {url, api_key, model}; verl adds reward_router_address and reward_model_tokenizer
    when its own reward model is on, which the function must accept."""
    import cluster.client.from_env as from_env
    from cluster.client import verl_reward

    monkeypatch.setattr(from_env, "_clients", {})
    rm = live["models"]["rm"]
    reward_kwargs = {"url": live["keyed"], "api_key": API_KEY, "model": "rm"}
    compute_score = partial(_call_with_kwargs, verl_reward.compute_score, reward_kwargs)
    extra_reward_kwargs = {"reward_router_address": "10.0.0.1:9000", "reward_model_tokenizer": rm.encoder.tokenizer}
    got = [
        compute_score(
            data_source="gsm8k",
            solution_str=c[-1]["content"],
            ground_truth="",
            extra_info={"messages": c[:-1], "num_turns": 2, "rollout_reward_scores": {}},
            **extra_reward_kwargs,
        )
        for c in CONVERSATIONS[:3]
    ]
    assert got == pytest.approx(rm.score(CONVERSATIONS[:3]), abs=TOL)
    batch = partial(_call_with_kwargs, verl_reward.compute_score_batch, reward_kwargs)
    convs = CONVERSATIONS[:3]
    scores = batch(
        data_sources=["x"] * 3,
        solution_strs=[c[-1]["content"] for c in convs],
        ground_truths=[""] * 3,
        extra_infos=[{"messages": c[:-1]} for c in convs],
        **extra_reward_kwargs,
    )
    assert scores == pytest.approx(rm.score(convs), abs=TOL)


class ActivationRewardLoopWorker(RewardLoopWorker):
    """volcengine/verl@b178a3cd56f58b2d502255daba591e92833930a7 verl/experimental/reward_loop/reward_loop.py
    (last changed in e46f7005c3769cbebceb60dd5a341216af3aedfe), `compute_score_disrm`'s vLLM branch:
    the same request and reading but `"activation": False`, vLLM's older name of use_activation
    (its TODO: 'the "activation" has been changed to "use_activation" in vllm 0.11.2'). The
    request code (`_post_request`, `_preprocess_reward_inputs`) is the same in both versions."""

    async def compute_score_disrm(self, chat: list) -> dict:
        disrm_prompt = self._preprocess_reward_inputs(chat)
        model_name = self.model_path
        # TODO (dyy): the "activation" has been changed to "use_activation" in vllm 0.11.2
        payloads = {
            "model": model_name,
            "input": disrm_prompt,
            "activation": False,
            # "add_special_tokens": False,  # vllm >= 0.11.2
        }
        output = await self._post_request(payloads, "classify")
        rm_score = output["data"][-1]["probs"][-1]
        return {"reward_score": rm_score}


def test_reward_loop_activation_false_gets_the_raw_reward_of_the_card(live):
    """verl's older reward loop posts `activation: false` (aiohttp, no header, `model` its model
    path): the value read is the reward model's raw logit as the model card computes it, one
    conversation at a time (helpers.card_score: transformers alone), not its sigmoid."""
    from helpers import card_score

    rm = live["models"]["rm"]
    path = str(live["service"].resolve("rm", ("reward",)).path)
    worker = ActivationRewardLoopWorker(router_address(live["trusted"]), "vllm", path, rm.encoder.tokenizer)
    for conv in CONVERSATIONS[:3]:
        got = asyncio.run(worker.compute_score_disrm(conv))["reward_score"]
        assert abs(got - card_score(path, conv)) <= TOL


def test_activation_and_use_activation_that_disagree_are_a_400(live):
    """`activation` means what `use_activation` means: both given and different is the client's
    mistake (400, naming both), never one silently winning; given alike, they are one switch."""
    url = f"{live['trusted']}/classify"

    async def post(payload: dict) -> tuple[int, dict]:
        async with aiohttp.ClientSession() as session:
            async with session.post(url, json=payload) as resp:
                return resp.status, await resp.json()

    text = "Hello, my name is"
    status, body = asyncio.run(post({"model": "rm", "input": text, "activation": False, "use_activation": True}))
    assert status == 400, body
    assert "activation: false" in body["error"]["message"] and "use_activation: true" in body["error"]["message"]
    status, same = asyncio.run(post({"model": "rm", "input": text, "activation": False, "use_activation": False}))
    status_raw, raw = asyncio.run(post({"model": "rm", "input": text, "use_activation": False}))
    assert status == status_raw == 200 and same["data"][0]["probs"] == raw["data"][0]["probs"]
