"""Generative judges as RL frameworks call them: each client's request built as its own code builds
it, sent by its own HTTP library to /v1/chat/completions on a real socket, and the answer read and
parsed by its own code. The judge is a tiny `generative` model taught the answer formats these
clients' prompts ask for; every parsed reward is checked against the same parse of one-at-a-time
greedy `model.generate` (the card's loop) on the same messages.

Sources (read with the search tool; the request and parse code below is theirs, verbatim where
quoted):
- verl's reward-loop GenRM test: volcengine/verl@b178a3cd56f58b2d502255daba591e92833930a7
  tests/experimental/reward_loop/reward_fn.py (aiohttp, the answer validated as the openai package's
  ChatCompletion, sampling at temperature 0.7 / top_p 0.8, max_tokens 4096).
- verl's remote GenRM recipe: volcengine/verl@246cac4ca6b0e3ce1009bc48aaa798689e0600af
  recipe/genrm_remote/reward_function.py (the last in-tree version, before recipe/ moved to
  verl-recipe), with last_boxed_only_string / remove_boxed from
  volcengine/verl@b178a3cd56f58b2d502255daba591e92833930a7 verl/utils/reward_score/math_reward.py.
- SkyRL's LLM-as-a-judge environment: NovaSky-AI/SkyRL@a9564572eb8e91076be43c1bd5e4615e3de17265
  examples/train/llm_as_a_judge/llm_judge_env.py (the `openai` package's sync client).
- NeMo Gym's genrm_compare: NVIDIA-NeMo/Gym@07d6b0d07b22fcf530b4c211dae2ee23100428e4
  responses_api_models/genrm_model/app.py (the `response_1` / `response_2` / `principle` roles
  appended to the conversation), nemo_gym/openai_utils.py (aiohttp, `Authorization: Bearer`),
  resources_servers/genrm_compare/utils.py (parse_genrm_output),
  resources_servers/genrm_compare/configs/genrm_compare.yaml (max_output_tokens 16384 -> max_tokens).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from typing import List, Optional, Tuple  # noqa: UP035 - NeMo Gym's parse, verbatim

import aiohttp
import pytest
import torch
from helpers import API_KEY, LiveServer

# ---------------------------------------------------------------- the clients' prompts

# verl recipe/genrm_remote/reward_function.py
GENRM_PROMPT_TEMPLATE = """
The following is a math problem and an AI solution:

[Math Problem]

{problem}

[AI Solution]

{solution}

Your task is to review and critique the solution step by step, and output whether the AI solution is correct.

Please put your final answer (i.e., 'True' or 'False') in \\boxed{{}}.
""".strip()

# verl tests/experimental/reward_loop/reward_fn.py
GRM_PROMPT_TEMPLATE = """
You are given a problem and a proposed solution.

Problem:
{problem}

Solution:
{solution}

Please evaluate how well the solution addresses the problem. 
Give a score from 1 to 10, where:
- 1 means the solution is completely irrelevant or incorrect.
- 5 means the solution is partially correct but incomplete or not well reasoned.
- 10 means the solution is fully correct, well-reasoned, and directly solves the problem.

Only output the score as a single number (integer).
""".strip()  # noqa: W291 - verl's own trailing space

# SkyRL examples/train/llm_as_a_judge/llm_judge_env.py
PROMPT = """
You are a strict math evaluation assistant.

Compare the following **gold** and **predicted** math solutions. Your job is to determine if the predicted solution is mathematically correct and if the predicted solution ends with a line of the form:

#### <number>

You must only give a score of "1" if:
- The final line of the predicted solution **ends with `#### <number>`**, and
- The number **matches the final answer in the gold solution** exactly.

Instructions:
- You may provide internal reasoning or explanation before giving your final judgment.
- Your final judgment must appear as a separate line at the end of your response, in the format:

### Final Score: 1

or

### Final Score: 0

Do not include any explanation after the final score.
"""  # noqa: E501


def skyrl_message(ground_truth: str, action: str) -> str:
    return PROMPT + f"\n\nGOLD SOLUTION:\n{ground_truth}\n\nPREDICTED SOLUTION:\n{action}\n\nAnswer:"


def nemo_messages(history: list[dict], response_1: str, response_2: str, principle: str | None = None) -> list[dict]:
    """GenRMModelMixin._preprocess_chat_completion_create_params: the conversation, then the roles."""
    messages = [dict(m) for m in history]
    if principle:
        messages.append({"role": "principle", "content": principle})
    messages.append({"role": "response_1", "content": response_1})
    messages.append({"role": "response_2", "content": response_2})
    return messages


PROBLEMS = [
    ("What is 2 + 3?", "2 + 3 = 5", "5"),
    ("What is 4 + 4?", "4 + 4 = 9", "8"),
    ("What is 6 - 1?", "6 - 1 = 5", "5"),
]


def teach_examples() -> list[tuple[str | list[dict], str]]:
    """The formats the three clients' prompts ask for (the judgement itself means nothing)."""
    out: list = []
    for problem, solution, answer in PROBLEMS:
        right = solution.endswith(answer)
        verdict = "Scored.\n\n" + ("10" if right else "2")
        out.append((GRM_PROMPT_TEMPLATE.format(problem=problem, solution=solution), verdict))
        out.append((GENRM_PROMPT_TEMPLATE.format(problem=problem, solution=solution), f"Checked.\n\\boxed{{{right}}}"))
        action = f"{solution}\n#### {solution.split()[-1]}"
        out.append((skyrl_message(f"#### {answer}", action), f"Compared.\n### Final Score: {int(right)}"))
        r1, r2 = (solution, "I don't know.") if right else ("I don't know.", solution)
        out.append(
            (
                nemo_messages([{"role": "user", "content": problem}], r1, r2),
                '<think>Response 1 is better.</think>{"score_1": 4, "score_2": 2, "ranking": 2}'
                if right
                else '<think>Response 2 is better.</think>{"score_1": 2, "score_2": 4, "ranking": 5}',
            )
        )
    return out * 2


# ---------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def genrm(tmp_path_factory):
    from cluster.core.config import AppConfig
    from cluster.engine.loading import local_service
    from cluster.http.app import create_app
    from cluster.tiny import build_tiny_model

    path = build_tiny_model(
        tmp_path_factory.mktemp("genrm") / "generative-genrm",
        kind="generative",
        arch="llama",
        teach_steps=150,
        teach_examples=teach_examples(),
        hidden=96,
        max_positions=8192,
    )
    config = AppConfig.parse(
        {
            "api_keys": [API_KEY],
            "models": [
                {
                    "name": "genrm-demo",
                    "path": str(path),
                    "kind": "generative",
                    "max_length": 8192,  # verl asks for 4096 new tokens
                    "aliases": [os.path.expanduser("~/models/Qwen/Qwen2.5-1.5B-Instruct")],  # verl's `model`
                    "max_new_tokens": 96,
                }
            ],
        }
    )
    service = local_service(config)
    keyed = LiveServer(create_app(service, api_keys=[API_KEY]))
    trusted = LiveServer(create_app(service, api_keys=[API_KEY], trusted_networks=["127.0.0.0/8"]))
    yield {"path": path, "keyed": keyed.url, "trusted": trusted.url}
    keyed.stop()
    trusted.stop()


def card_answer(path, messages: list[dict], max_new_tokens: int = 96) -> str:
    """One-at-a-time greedy generation, as the model card runs it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    with torch.inference_mode():
        out = model.generate(
            input_ids=torch.tensor([ids]),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tok.eos_token_id,
            eos_token_id=model.generation_config.eos_token_id,
        )
    return tok.decode(out[0, len(ids) :], skip_special_tokens=True)


# ---------------------------------------------------------------- verl's remote GenRM recipe


def remove_boxed(s):
    if "\\boxed " in s:
        left = "\\boxed "
        assert s[: len(left)] == left
        return s[len(left) :]

    left = "\\boxed{"

    assert s[: len(left)] == left
    assert s[-1] == "}"

    return s[len(left) : -1]


def last_boxed_only_string(string):
    idx = string.rfind("\\boxed")
    if "\\boxed " in string:
        return "\\boxed " + string.split("\\boxed ")[-1].split("$")[0]
    if idx < 0:
        idx = string.rfind("\\fbox")
        if idx < 0:
            return None

    i = idx
    right_brace_idx = None
    num_left_braces_open = 0
    while i < len(string):
        if string[i] == "{":
            num_left_braces_open += 1
        if string[i] == "}":
            num_left_braces_open -= 1
            if num_left_braces_open == 0:
                right_brace_idx = i
                break
        i += 1

    retval = None if right_brace_idx is None else string[idx : right_brace_idx + 1]

    return retval


def compute_reward(response):
    reward_score = 0.0
    try:
        boxed_result = last_boxed_only_string(response)
        if boxed_result is not None:
            result = remove_boxed(boxed_result)
            reward_score = float(result == "True")
    except Exception as e:  # noqa: BLE001 - verl's own
        print(e)
    return reward_score


def test_verl_genrm_recipe_reward_function(genrm):
    """verl's recipe: aiohttp, no key (a trusted network), `{"model": "genrm-demo", "messages"}` and
    nothing else (the server's max_new_tokens bounds the answer), content read by plain dict access,
    the reward 1.0 iff the last \\boxed{} holds True."""
    base_url = genrm["trusted"]
    model_name = "genrm-demo"

    async def post_request(payload, endpoint):
        url = f"{base_url}/{endpoint}"
        timeout = aiohttp.ClientTimeout(total=None)
        session = aiohttp.ClientSession(timeout=timeout)
        try:
            async with session.post(url, json=payload) as resp:
                output = await resp.text()
                output = json.loads(output)
                return output
        finally:
            await session.close()

    async def get_response(problem, solution_str):
        prompt = GENRM_PROMPT_TEMPLATE.format(problem=problem, solution=solution_str)
        messages = [{"role": "user", "content": prompt}]
        data = {"model": model_name, "messages": messages}
        output = await post_request(data, "v1/chat/completions")
        return output["choices"][0]["message"]["content"]

    async def main():
        return await asyncio.gather(*(get_response(p, s) for p, s, _ in PROBLEMS))

    responses = asyncio.run(main())
    rewards = []
    for (problem, solution, _), response in zip(PROBLEMS, responses):
        messages = [{"role": "user", "content": GENRM_PROMPT_TEMPLATE.format(problem=problem, solution=solution)}]
        ref = card_answer(genrm["path"], messages)
        assert response == ref
        assert last_boxed_only_string(response) is not None  # the judge states a verdict the client reads
        rewards.append(compute_reward(response))
        assert rewards[-1] == compute_reward(ref)
    assert set(rewards) <= {0.0, 1.0}


# ---------------------------------------------------------------- verl's reward-loop GenRM test


def test_verl_reward_loop_genrm_compute_score(genrm):
    """verl's compute_score_gsm8k: aiohttp to `/v1/chat/completions` with its sampling parameters
    (temperature 0.7, top_p 0.8, max_tokens 4096) and its model path as `model` (an alias here), the
    answer validated by the `openai` package's ChatCompletion, the score the integer after the last
    blank line. Sampled, so its text is not the greedy one: checked is that the client's own
    validation and parse succeed on every answer (the sampling itself is compared with the card's
    distribution in tests/http/test_client_openai.py)."""
    from openai.types.chat import ChatCompletion

    router_address = genrm["trusted"].removeprefix("http://")

    async def chat_complete(router_address: str, chat_complete_request: dict):
        url = f"http://{router_address}/v1/chat/completions"
        try:
            timeout = aiohttp.ClientTimeout(total=None)
            session = aiohttp.ClientSession(timeout=timeout)
            async with session.post(url, json=chat_complete_request) as resp:
                output = await resp.text()
                output = json.loads(output)
                return ChatCompletion(**output)
        finally:
            await session.close()

    async def compute_score_gsm8k(solution_str: str, extra_info: dict):
        grm_prompt = GRM_PROMPT_TEMPLATE.format(problem=extra_info["question"], solution=solution_str)
        messages = [{"role": "user", "content": grm_prompt}]
        sampling_params = {"temperature": 0.7, "top_p": 0.8, "max_tokens": 4096}
        model_name = os.path.expanduser("~/models/Qwen/Qwen2.5-1.5B-Instruct")
        chat_complete_request = {"messages": messages, "model": model_name, **sampling_params}
        result = await chat_complete(router_address=router_address, chat_complete_request=chat_complete_request)
        grm_response = result.choices[0].message.content
        try:
            score = int(grm_response.split("\n\n")[-1].strip())
        except Exception:  # noqa: BLE001 - verl's own
            score = 0
        return {"score": score, "acc": score == 10, "genrm_response": grm_response}, result

    async def main():
        return await asyncio.gather(*(compute_score_gsm8k(s, {"question": p}) for p, s, _ in PROBLEMS * 3))

    results = asyncio.run(main())
    for out, completion in results:
        assert completion.choices[0].finish_reason in ("stop", "length")
        assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
        assert 0 <= out["score"] <= 10
    # the taught format comes through sampling at 0.7 on most answers: the client reads a score
    assert sum(out["score"] > 0 for out, _ in results) >= len(results) // 2


# ---------------------------------------------------------------- SkyRL's LLM-as-a-judge environment


def test_skyrl_llm_judge_environment(genrm, monkeypatch):
    """SkyRL's env: `OpenAI(base_url, api_key=$OPENAI_API_KEY)`, `chat.completions.create(model,
    messages=[user])`, the reply's `### Final Score: x` read by its regex."""
    from openai import OpenAI

    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    client = OpenAI(base_url=genrm["keyed"] + "/v1", api_key=os.getenv("OPENAI_API_KEY"))

    def _get_reward(ground_truth: str, action: str) -> float:
        message = skyrl_message(ground_truth, action)
        response = client.chat.completions.create(model="genrm-demo", messages=[{"role": "user", "content": message}])
        reply = response.choices[0].message.content.strip()
        match = re.search(r"### Final Score:\s*([01](?:\.0)?)", reply)
        if match:
            return float(match.group(1))
        if reply.strip() in {"1", "0"}:
            return float(reply.strip())
        return -1.0  # SkyRL returns 0.0 here; -1 tells this test the reply was unreadable

    for _problem, solution, answer in PROBLEMS:
        action = f"{solution}\n#### {solution.split()[-1]}"
        reward = _get_reward(f"#### {answer}", action)
        ref = card_answer(genrm["path"], [{"role": "user", "content": skyrl_message(f"#### {answer}", action)}]).strip()
        assert reward == float(re.search(r"### Final Score:\s*([01](?:\.0)?)", ref).group(1))


# ---------------------------------------------------------------- NeMo Gym's genrm_compare


def parse_genrm_output(
    output: str,
    default_score: float,
    default_ranking: float,
    *,
    raise_on_fail: bool = False,
) -> Tuple[float, float, float]:  # noqa: UP006
    def _try_parse(json_str: str) -> Optional[Tuple[float, float, float]]:  # noqa: UP006, UP045
        """Attempt to parse a JSON string into scores."""
        try:
            parsed = json.loads(json_str)
        except json.JSONDecodeError:
            return None

        if not isinstance(parsed, dict):
            return None

        # Handle nested format: {"rubric_evaluations": [...], "overall": {...}}
        if "overall" in parsed and isinstance(parsed["overall"], dict):
            parsed = parsed["overall"]

        # Must have at least one expected key
        if not any(k in parsed for k in ("score_1", "score_2", "ranking")):
            return None

        try:
            score_1 = float(parsed.get("score_1", default_score))
            score_2 = float(parsed.get("score_2", default_score))
            ranking = float(parsed.get("ranking", default_ranking))
            return score_1, score_2, ranking
        except (TypeError, ValueError):
            return None

    def _find_json_objects(text: str) -> List[str]:  # noqa: UP006
        """Find top-level JSON objects in text using brace counting."""
        results = []
        i = 0
        while i < len(text):
            if text[i] == "{":
                depth = 0
                start = i
                in_string = False
                escape_next = False
                for j in range(i, len(text)):
                    ch = text[j]
                    if escape_next:
                        escape_next = False
                        continue
                    if ch == "\\" and in_string:
                        escape_next = True
                        continue
                    if ch == '"' and not escape_next:
                        in_string = not in_string
                        continue
                    if in_string:
                        continue
                    if ch == "{":
                        depth += 1
                    elif ch == "}":
                        depth -= 1
                        if depth == 0:
                            results.append(text[start : j + 1])
                            i = j
                            break
            i += 1
        return results

    for match in re.finditer(r"```json\s*([\s\S]*?)\s*```", output, flags=re.IGNORECASE):
        for json_str in _find_json_objects(match.group(1)):
            result = _try_parse(json_str)
            if result is not None:
                return result
    last_valid: Optional[Tuple[float, float, float]] = None  # noqa: UP006, UP045
    for json_str in _find_json_objects(output):
        result = _try_parse(json_str)
        if result is not None:
            last_valid = result
    if last_valid is not None:
        return last_valid
    if raise_on_fail:
        raise ValueError(f"No parseable JSON found in GenRM output: {output[:200]}")
    return default_score, default_score, default_ranking


def test_nemo_gym_genrm_compare_with_its_roles(genrm):
    """NeMo Gym's GenRM model server: the conversation, then `response_1` / `response_2` messages
    (roles only the judge's chat template knows), posted by its aiohttp client with a Bearer key,
    max_tokens from its max_output_tokens (16384: refused as over this model's max_length, which
    NeMo Gym reads as an empty answer), then at the server's own limit; the JSON scores parsed by
    parse_genrm_output. Sampling (its temperature 0.6) is not served yet: the replay sends 0."""
    url = genrm["keyed"] + "/v1/chat/completions"
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}

    async def create_chat_completion(**kwargs):
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout()) as session:
            async with session.post(url, data=json.dumps(kwargs), headers=headers) as resp:
                return resp.status, await resp.json()

    async def main(bodies):
        return await asyncio.gather(*(create_chat_completion(**b) for b in bodies))

    cases = []
    for problem, solution, answer in PROBLEMS:
        right = solution.endswith(answer)
        r1, r2 = (solution, "I don't know.") if right else ("I don't know.", solution)
        cases.append(nemo_messages([{"role": "user", "content": problem}], r1, r2))
    too_long = asyncio.run(
        main(
            [
                {"messages": m, "model": "genrm-demo", "max_tokens": 16384, "temperature": 0, "top_p": 0.95}
                for m in cases
            ]
        )
    )
    for status, body in too_long:  # NeMo Gym: a 400 naming the context length is an empty answer
        assert status == 400 and "max_length" in body["error"]["message"]
        assert body["error"]["message"].startswith("the prompt's")
    answers = asyncio.run(
        main([{"messages": m, "model": "genrm-demo", "max_tokens": 96, "temperature": 0, "top_p": 0.95} for m in cases])
    )
    parsed = []
    for messages, (status, body) in zip(cases, answers):
        assert status == 200, body
        content = body["choices"][0]["message"]["content"]
        assert content == card_answer(genrm["path"], messages)
        assert "</think>" in content  # the reasoning is kept in the answer
        scores = parse_genrm_output(content, 3.0, 3.5, raise_on_fail=True)
        parsed.append(scores)
    assert all(1 <= s1 <= 5 and 1 <= s2 <= 5 and 1 <= r <= 6 for s1, s2, r in parsed)


def test_a_generative_judge_is_listed_and_answers_the_openai_client(genrm):
    """The `openai` package against the generative kind: /v1/models lists it; greedy text equals
    the card's; a reward model's routes refuse it by name."""
    import httpx
    from openai import OpenAI

    client = OpenAI(base_url=genrm["keyed"] + "/v1", api_key=API_KEY)
    assert [m.id for m in client.models.list()] == ["genrm-demo"]
    messages = [{"role": "system", "content": "Judge."}, {"role": "user", "content": "What is 2 + 3?"}]
    out = client.chat.completions.create(model="genrm-demo", messages=messages, max_tokens=16)
    assert out.choices[0].message.content == card_answer(genrm["path"], messages, 16)
    r = httpx.post(
        genrm["keyed"] + "/v1/rewards",
        json={
            "model": "genrm-demo",
            "conversations": [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]],
        },
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert r.status_code == 422
    message = r.json()["error"]["message"]
    assert message.startswith("model 'genrm-demo' is a generative judge; this route needs a reward")
