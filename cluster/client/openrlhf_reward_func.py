"""OpenRLHF reward function backed by the scoring cluster:

    --remote_rm_url <this file>            (OpenRLHF loads `reward_func` from it)

OpenRLHF passes `queries`: the prompt and response already in the policy's chat template. They
are scored as pre-templated text, so the policy's template should be the reward model's (as with
OpenRLHF's own remote RM server). Alternatively point `--remote_rm_url` straight at the app's
`http://head:8000/get_reward`, which speaks OpenRLHF's HTTP protocol. Server settings: SCORING_*
environment variables (see cluster/client/from_env.py).
"""

from __future__ import annotations

from typing import Any

from cluster.client.from_env import client_from_env


def reward_func(queries: list[str], prompts: list[str], labels: list[Any], **kwargs: Any) -> dict[str, Any]:
    import torch

    rewards = torch.tensor(client_from_env().score_texts(list(queries)), dtype=torch.float32)
    return {"rewards": rewards, "scores": rewards, "extra_logs": {}}
