"""verl custom reward function backed by the scoring cluster.

    custom_reward_function.path=<this file>  custom_reward_function.name=compute_score
or, with verl's batch reward manager (one call per batch, far fewer requests):
    reward_model.reward_manager=batch  custom_reward_function.name=compute_score_batch

verl passes the decoded response (`solution_str`); a reward model also needs the prompt, which
verl hands over in `extra_info`: put the question there in your dataset preprocessing, as a string
(`extra_info["question"]` or `["prompt"]`) or as chat messages (`extra_info["messages"]` or
`["raw_prompt"]`). The server, URL and model come from SCORING_* environment variables or from
`custom_reward_function.reward_kwargs` (url, api_key, model, transport).

verl adds keyword arguments of its own when its reward loop runs a reward model
(`reward_router_address`, `reward_model_tokenizer`: its own servers', not this app's); they are
accepted and ignored (verl-project/verl@b0705987, verl/experimental/reward_loop/reward_manager/naive.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cluster.client.from_env import client_from_env
from cluster.core.errors import InvalidInput

PROMPT_KEYS = ("messages", "raw_prompt", "question", "prompt")
# what verl's reward managers pass besides the sample (naive.py / batch.py `extra_reward_kwargs`)
VERL_OWN_KWARGS = ("reward_router_address", "reward_model_tokenizer")


def compute_score(
    data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None, **kwargs: Any
) -> float:
    """verl's per-sample signature: the reward for one response."""
    return compute_score_batch([data_source], [solution_str], [ground_truth], [extra_info], **kwargs)[0]


def compute_score_batch(
    data_sources: Sequence[str],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[dict | None] | None = None,
    **kwargs: Any,
) -> list[float]:
    """verl's batch reward manager signature: one reward per response, in order, in one client call."""
    infos = list(extra_infos) if extra_infos is not None else [None] * len(solution_strs)
    conversations = [conversation(s, info, i) for i, (s, info) in enumerate(zip(solution_strs, infos))]
    settings = {k: v for k, v in kwargs.items() if k not in VERL_OWN_KWARGS}
    return client_from_env(**settings).score(conversations)


def conversation(response: str, extra_info: dict | None, index: int = 0) -> list[dict[str, str]]:
    for key in PROMPT_KEYS:
        prompt = (extra_info or {}).get(key)
        if isinstance(prompt, str) and prompt:
            return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        if isinstance(prompt, Sequence) and prompt and not isinstance(prompt, str):
            return [{"role": m["role"], "content": m["content"]} for m in prompt] + [
                {"role": "assistant", "content": response}
            ]
    raise InvalidInput(
        f"extra_info[{index}]: a reward model needs the prompt; put it in extra_info under one "
        f"of {', '.join(PROMPT_KEYS)} when preprocessing the dataset"
    )
