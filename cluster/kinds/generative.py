"""Generative judges: a chat model served for the judging prompts its client writes (RM-R1, J1,
DeepSeek-GRM, Qwen3-Nemotron-GenRM, Skywork-Critic with the client's own prompt). It answers OpenAI
chat completions (continuously batched) and generative scores (the next token's probabilities);
the verdict in its text is the client's to read, as RL frameworks' judge clients do."""

from __future__ import annotations

from pydantic import BaseModel, Field

from cluster.kinds.base import JUDGE_TEMPLATE_ONLY, REWARD_LABEL_ONLY, Kind, Op


class Fields(BaseModel):
    max_new_tokens: int = Field(
        1024, ge=1, le=32768, description="a chat completion's max_tokens when the request sets none"
    )


KIND = Kind(
    name="generative",
    title="a generative judge",
    summary="a generative judge: a chat model answering the client's judging prompts (chat completions)",
    spec_fields=Fields,
    refused={
        "judge_template": JUDGE_TEMPLATE_ONLY + " (a generative judge's prompt is the client's messages)",
        "reward_label": REWARD_LABEL_ONLY,
        "reward_weights": REWARD_LABEL_ONLY,
    },
    fast_op=Op.NEXT_TOKEN,
    head="next_token",
    encoder="chat",
    unit="chat",
    padding_side="left",
    fixed_padding=True,
    needs_chat_template=True,
)
