"""Reward functions in the shapes RL frameworks load from a file: verl's `compute_score` and
OpenRLHF's `reward_func`. Both call the scoring cluster through `RewardClient`, configured by
environment variables (or keyword arguments, which win):

    SCORING_URL        http://head:8000 (HTTP transport, the default)
    SCORING_API_KEY    the app's API key, if it has one
    SCORING_MODEL      the reward model or ensemble to ask (default: the app's first reward model)
    SCORING_TRANSPORT  http | handle (inside the Ray cluster: a Serve handle, no HTTP)
    SCORING_APP        the Serve app name for the handle transport (default: scoring)
"""

from __future__ import annotations

import os
import threading
from typing import Any

from cluster.client.reward_client import RewardClient

_clients: dict[tuple, RewardClient] = {}
_lock = threading.Lock()


def client_from_env(
    url: str | None = None,
    api_key: str | None = None,
    model: str | None = None,
    transport: str | None = None,
    app: str | None = None,
    **options: Any,
) -> RewardClient:
    """One client per process and settings (frameworks call the reward function many times)."""
    transport = transport or os.environ.get("SCORING_TRANSPORT", "http")
    model = model or os.environ.get("SCORING_MODEL") or None
    if transport == "handle":
        key = ("handle", app or os.environ.get("SCORING_APP", "scoring"), model)
    else:
        key = (
            "http",
            url or os.environ.get("SCORING_URL", "http://127.0.0.1:8000"),
            api_key or os.environ.get("SCORING_API_KEY") or None,
            model,
        )
    with _lock:
        if key not in _clients:
            if key[0] == "handle":
                _clients[key] = RewardClient.handle(key[1], model, **options)
            else:
                _clients[key] = RewardClient.http(key[1], key[2], model, **options)
        return _clients[key]
