"""Process reward models and pointwise judges over HTTP, in-process (`create_app(local_service(...))`
over `httpx.ASGITransport`, no Ray): vLLM's /pooling for a prm, /v1/step_rewards, /v1/rewards with
a prm, /v1/rate, RewardClient.http, /v1/models. Every value is compared with the cards' own
one-at-a-time computations (tests/prm_reference.py) within 1e-4 (fp32).

vLLM's side, as replayed here (vllm-project/vllm):
- examples/pooling/reward/token_reward_online.py @01e4fce07423dafcc832600ba05159fb28dc1126: the
  token-reward client. The model id from GET /v1/models `data[0]["id"]`, then POST /pooling with
  {"model", "input": text} (completion form) and {"model", "messages": [...]} (chat form, content
  as text parts); the answer is `data[i]["data"]`.
- tests/models/language/pooling/test_reward.py @089c137d7f69bef950a3b950153699c88d0f352a: vLLM's
  PRM prompt (the card's flamingo problem, steps joined by `<extra_0>` and ended by one, a
  pre-templated text) and its HF yardstick `make_step_rewards`, which keeps both columns:
  per step [P(label 0), P(label 1)], column 1 the positive class (the card's `[:, 1]`); its golden
  output tests/models/fixtures/qwen2_5_math_prm_reward_step.json @0f17ee061e413bf8ab7927f926f69cdff24dc63e
  is such rows.
- vllm/model_executor/layers/pooler/tokwise/methods.py @055e47c28003156421365af985d676fc921cb075
  `StepPool`: the rows at the step tag's positions only, `returned_token_ids` columns first (for
  Math-Shepherd the card's [good, bad] = ['+', '-'] token ids: column 0 = P(good)); the head's
  softmax by default (activations.py @1c713679497631bd9bf8b251c9ac93b6f6680326 `PoolerClassify`).
A PRM client over HTTP reads `outputjson['data'][0]['data']` and takes `i[1]` of each row for
Qwen2.5-Math-PRM (a public client found only as an unnamed index excerpt, so not cited as a file).
"""

from __future__ import annotations

import math
import re

import httpx
import pytest
import torch
import torch.nn.functional as F
from helpers import InProcessClient
from prm_reference import (
    pointwise_reference_rating,
    qwen_card_conversation,
    qwen_card_step_rewards,
    shepherd_card_step_rewards,
)
from transformers import AutoModel, AutoTokenizer

from cluster.client.reward_client import RewardClient
from cluster.core.config import AppConfig
from cluster.core.errors import InvalidInput
from cluster.engine.loading import local_service
from cluster.http.app import create_app
from cluster.kinds.pointwise import pointwise_template
from cluster.tiny import build_tiny_model, build_tiny_prm

TOL = 1e-4
SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
PROBLEMS = [  # different lengths and step counts: batches pad and sort
    ("Add 2 and 3.", ["2 + 3 = 5.", "The answer is \\boxed{5}."]),
    (
        "What is the capital of France?",
        ["France is a country in Europe.", "Its capital is Paris.", "So the answer is \\boxed{Paris}."],
    ),
    ("Is water wet?", ["Yes."]),
    (
        "Compute 1 + 2 + 3 + 4.",
        [
            "1 + 2 = 3.",
            "3 + 3 = 6.",
            "6 + 4 = 10.",
            "The sum is 10, so the answer is \\boxed{10}, because addition of the four numbers gives ten.",
        ],
    ),
]
SHEPHERD = {
    "kind": "prm",
    "step_tag": "ки",
    "step_format": "{step} {tag}",
    "step_joiner": "\n",
    "prm_template": "{prompt} {response}",
    "step_labels": ["+", "-"],
}
RUBRIC_TEMPLATE = "Rubric: {rubric}\nQuestion: {input}\nAnswer: {response}\nRate 1-10 as [[N]]."
ITEMS = [
    {"prompt": "Add 2 and 3.", "response": "5"},
    {"prompt": "What is the capital of France?", "response": "The capital of France is Paris, a large city."},
    {"prompt": "Name a prime number.", "response": "2"},
]

# vllm-project/vllm@089c137d tests/models/language/pooling/test_reward.py `math_step_prompts`, verbatim
VLLM_DATA = {
    "system": "Please reason step by step, and put your final answer within \\boxed{}. ",
    "query": "Sue lives in a fun neighborhood.  One weekend, the neighbors decided to play a prank on Sue.  On Friday "
    "morning, the neighbors placed 18 pink plastic flamingos out on Sue's front yard.  On Saturday morning, "
    "the neighbors took back one third of the flamingos, painted them white, and put these newly painted "
    "white flamingos back out on Sue's front yard.  Then, on Sunday morning, they added another 18 pink "
    "plastic flamingos to the collection. At noon on Sunday, how many more pink plastic flamingos were out "
    "than white plastic flamingos?",
    "response": [
        "To find out how many more pink plastic flamingos were out than white plastic flamingos at noon on Sunday, "
        "we can break down the problem into steps. First, on Friday, the neighbors start with 18 pink plastic "
        "flamingos.",
        "On Saturday, they take back one third of the flamingos. Since there were 18 flamingos, (1/3 \\times 18 = 6) "
        "flamingos are taken back. So, they have (18 - 6 = 12) flamingos left in their possession. Then, they paint "
        "these 6 flamingos white and put them back out on Sue's front yard. Now, Sue has the original 12 pink "
        "flamingos plus the 6 new white ones. Thus, by the end of Saturday, Sue has (12 + 6 = 18) pink flamingos and "
        "6 white flamingos.",
        "On Sunday, the neighbors add another 18 pink plastic flamingos to Sue's front yard. By the end of Sunday "
        "morning, Sue has (18 + 18 = 36) pink flamingos and still 6 white flamingos.",
        "To find the difference, subtract the number of white flamingos from the number of pink flamingos: "
        "(36 - 6 = 30). Therefore, at noon on Sunday, there were 30 more pink plastic flamingos out than white "
        "plastic flamingos. The answer is (\\boxed{30}).",
    ],
}


def vllm_test_prompt(data: dict) -> str:
    """vllm-project/vllm@089c137d test_reward.py: the pre-templated prompt, as written there."""
    answer = "<extra_0>".join(data["response"]) + "<extra_0>"
    return (
        f"<im_start>system\n{data['system']}<im_end>\n<im_start>user\n{data['query']}<im_end>\n"
        f"<im_start>assistant\n{answer}<im_end><|endoftext|>"
    )


# ---------------------------------------------------------------- fixtures (each tiny model built once)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("prm-http")
    return {
        "qwen": str(build_tiny_prm(root / "qwen", style="qwen")),
        "shepherd": str(build_tiny_prm(root / "shepherd", style="shepherd")),
        "judge": str(build_tiny_model(root / "judge", kind="pointwise")),
    }


@pytest.fixture(scope="module")
def served(dirs):
    config = AppConfig.parse(
        {
            "models": [
                {
                    "name": "qwen-prm",
                    "path": dirs["qwen"],
                    "kind": "prm",
                    "step_tag": "<extra_0>",
                    "trust_remote_code": True,
                    "dtype": "float32",
                    "system_prompt": SYSTEM,
                },
                {"name": "shepherd-prm", "path": dirs["shepherd"], "dtype": "float32", **SHEPHERD},
                {"name": "judge", "path": dirs["judge"], "kind": "pointwise", "dtype": "float32", "max_new_tokens": 16},
                {
                    "name": "judge-rubric",
                    "path": dirs["judge"],
                    "kind": "pointwise",
                    "dtype": "float32",
                    "judge_template": RUBRIC_TEMPLATE,
                },
            ]
        }
    )
    service = local_service(config)
    app = create_app(service)
    return {"app": app, "service": service, "client": InProcessClient(app)}


@pytest.fixture(scope="module")
def client(served):
    return served["client"]


def close(ours, theirs, tol: float = TOL) -> bool:
    return len(ours) == len(theirs) and all(abs(a - b) <= tol for a, b in zip(ours, theirs))


def error(r, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    return r.json()["error"]["message"]


def shepherd_output(steps: list[str]) -> str:
    """Math-Shepherd's card format: "Step 1: ... ки\\nStep 2: ... ки"."""
    return "\n".join(f"Step {i + 1}: {s} ки" for i, s in enumerate(steps))


# ---------------------------------------------------------------- vLLM /pooling with a prm


def test_pooling_qwen_text_form_as_vllm_clients_send_it(client, dirs):
    """token_reward_online.py's request (the id from /v1/models, `input` a text) with the card's
    pre-tagged text; the answer read as the PRM client reads it: `data[0]["data"][k][1]`."""
    model = client.get("/v1/models").json()["data"][0]["id"]
    assert model == "qwen-prm"
    for q, steps in PROBLEMS[:2]:
        prompt = {"model": model, "input": qwen_card_conversation(dirs["qwen"], SYSTEM, q, steps)}
        r = client.post("/pooling", json=prompt)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "list" and body["model"] == "qwen-prm" and body["id"].startswith("pool-")
        assert body["data"][0]["index"] == 0 and body["data"][0]["object"] == "pooling"
        rows = body["data"][0]["data"]
        card = qwen_card_step_rewards(dirs["qwen"], SYSTEM, q, steps)
        assert close([row[1] for row in rows], card), (rows, card)
        assert all(len(row) == 2 and abs(row[0] + row[1] - 1) <= 1e-6 for row in rows)  # softmax rows
        assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0
    # several texts of different lengths in one request: one entry each, in order
    texts = [qwen_card_conversation(dirs["qwen"], SYSTEM, q, s) for q, s in PROBLEMS]
    body = client.post("/pooling", json={"model": model, "input": texts, "task": "token_classify"}).json()
    assert [d["index"] for d in body["data"]] == list(range(len(PROBLEMS)))
    for (q, steps), d in zip(PROBLEMS, body["data"]):
        assert close([row[1] for row in d["data"]], qwen_card_step_rewards(dirs["qwen"], SYSTEM, q, steps))
    # token ids, vLLM's older task name, and no model named (the first prm served)
    ids = AutoTokenizer.from_pretrained(dirs["qwen"]).encode(texts[0])
    by_ids = client.post("/pooling", json={"input": ids, "task": "encode"}).json()
    assert by_ids["model"] == "qwen-prm"
    assert close([row[1] for row in by_ids["data"][0]["data"]], [row[1] for row in body["data"][0]["data"]])


def test_pooling_qwen_vllm_test_prompt_rows_equal_its_hf_yardstick(client, dirs):
    """vLLM's own PRM test prompt, and its HF yardstick (test_reward.py `step_reward_patch_hf_model`:
    tokenizer(prompts), the model, softmax, both columns at the tag): every row, both columns."""
    prompt = vllm_test_prompt(VLLM_DATA)
    body = client.post("/pooling", json={"model": "qwen-prm", "input": prompt}).json()
    tokenizer = AutoTokenizer.from_pretrained(dirs["qwen"], trust_remote_code=True)
    model = AutoModel.from_pretrained(dirs["qwen"], dtype=torch.float32, trust_remote_code=True).eval()
    input_ids = tokenizer([prompt], return_tensors="pt").input_ids
    with torch.inference_mode():
        outputs = model(input_ids=input_ids)
    step_sep_id = tokenizer.encode("<extra_0>")[0]
    token_masks = input_ids == step_sep_id
    probabilities = F.softmax(outputs[0], dim=-1) * token_masks.unsqueeze(-1)
    expected = probabilities[0][probabilities[0] != 0].view(-1, 2).tolist()
    rows = body["data"][0]["data"]
    assert len(rows) == len(VLLM_DATA["response"]) == len(expected)
    for row, want in zip(rows, expected):
        assert close(row, want), (rows, expected)


def test_pooling_qwen_chat_form_as_vllm_clients_send_it(client, dirs):
    """The chat form: system, user, and the assistant's steps joined by <extra_0> (the card's
    messages), content as a string or as text parts (token_reward_online.py's form)."""
    for q, steps in PROBLEMS[:2]:
        messages = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": q},
            {"role": "assistant", "content": "<extra_0>".join(steps) + "<extra_0>"},
        ]
        outputjson = client.post("/pooling", json={"model": "qwen-prm", "messages": messages}).json()
        outputdata = outputjson["data"][0]["data"]
        step = [i[1] for i in outputdata]
        assert close(step, qwen_card_step_rewards(dirs["qwen"], SYSTEM, q, steps))
        parts = [{**m, "content": [{"type": "text", "text": m["content"]}]} for m in messages]
        as_parts = client.post("/pooling", json={"model": "qwen-prm", "messages": parts}).json()
        assert as_parts["data"][0]["data"] == outputdata
    # the tags are the client's: a system message the client leaves out is not added (rendered as sent)
    q, steps = PROBLEMS[0]
    bare = [{"role": "user", "content": q}, {"role": "assistant", "content": "<extra_0>".join(steps) + "<extra_0>"}]
    got = client.post("/pooling", json={"model": "qwen-prm", "messages": bare}).json()["data"][0]["data"]
    tok = AutoTokenizer.from_pretrained(dirs["qwen"])
    text = tok.apply_chat_template(bare, tokenize=False, add_generation_prompt=False)
    by_text = client.post("/pooling", json={"model": "qwen-prm", "input": text}).json()["data"][0]["data"]
    assert close([r[1] for r in got], [r[1] for r in by_text])


def test_pooling_shepherd_text_and_chat_forms(client, dirs):
    """Math-Shepherd served by vLLM with returned_token_ids = ['+', '-']: each row [P(good), P(bad)],
    column 0 the reward. The text form is the card's "{question} {output}"; the chat form's user
    message and tagged assistant message are written into that same text (the card's plain format)."""
    for q, steps in PROBLEMS:
        output = shepherd_output(steps)
        card = shepherd_card_step_rewards(dirs["shepherd"], q, output)
        text = client.post("/pooling", json={"model": "shepherd-prm", "input": f"{q} {output}"}).json()
        chat = client.post(
            "/pooling",
            json={
                "model": "shepherd-prm",
                "task": "token_classify",
                "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": output}],
            },
        ).json()
        for body in (text, chat):
            rows = body["data"][0]["data"]
            assert close([row[0] for row in rows], card), (rows, card)
            assert all(abs(row[0] + row[1] - 1) <= 1e-6 for row in rows)
    with_system = [
        {"role": "system", "content": "x"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a ки"},
    ]
    refused = client.post("/pooling", json={"model": "shepherd-prm", "messages": with_system})
    assert "reads plain text" in error(refused, 400)


@pytest.mark.parametrize("flag", ["use_activation", "softmax", "activation", "normalize"])
def test_pooling_raw_logits_are_refused_for_a_prm(client, flag):
    r = client.post("/pooling", json={"model": "qwen-prm", "input": "a<extra_0>", flag: False})
    message = error(r, 400)
    assert f"{flag}: false asks for raw logits" in message and "step probabilities" in message
    assert r.json()["error"]["type"] == "BadRequestError" and r.json()["error"]["code"] == 400
    ok = client.post("/pooling", json={"model": "qwen-prm", "input": "a<extra_0>", flag: True})
    assert ok.status_code == 200


def test_pooling_prm_errors_are_vllms_400s(client, served, monkeypatch):
    message = error(client.post("/pooling", json={"model": "qwen-prm", "input": "a<extra_0>", "task": "classify"}), 400)
    assert "Task classify is not supported by model 'qwen-prm'" in message
    message = error(client.post("/pooling", json={"model": "qwen-prm", "input": ["a<extra_0>", "no tags"]}), 400)
    assert message.startswith("input[1]: no step tag '<extra_0>'")
    message = error(client.post("/pooling", json={"model": "qwen-prm", "text": "a<extra_0>"}), 400)
    assert "SGLang's /classify fields" in message
    message = error(client.post("/pooling", json={"model": "shepherd-prm", "input": "x", "task": "embed"}), 400)
    assert "Task embed is not supported" in message
    # a prm of more than two labels: only the positive class's probability is served, so no rows
    service = served["service"]
    head = dict(service._heads.get("qwen-prm") or {"step_tag_id": 0, "reward_column": 1})
    monkeypatch.setitem(service._heads, "qwen-prm", {**head, "num_columns": 3})
    message = error(client.post("/pooling", json={"model": "qwen-prm", "input": "a<extra_0>"}), 400)
    assert "with 3 labels" in message and "two-label prms only" in message


@pytest.mark.parametrize(
    "path, body",
    [
        ("/classify", {"input": "x"}),
        ("/score", {"text_1": "q", "text_2": "a"}),
        ("/rerank", {"query": "q", "documents": ["a", "b"]}),
    ],
)
@pytest.mark.parametrize("model, where", [("qwen-prm", "/v1/step_rewards"), ("judge", "/v1/rate")])
def test_reward_model_routes_refuse_a_prm_or_a_judge(client, path, body, model, where):
    message = error(client.post(path, json={"model": model, **body}), 400)
    assert f"model '{model}' is a" in message and where in message and f"{path} answers a reward model" in message


# ---------------------------------------------------------------- /v1/step_rewards


def test_step_rewards_explicit_steps_batched_equal_the_card(client, dirs):
    items = [{"prompt": q, "steps": s} for q, s in PROBLEMS]
    r = client.post("/v1/step_rewards", json={"model": "qwen-prm", "items": items})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "qwen-prm" and body["aggregate"] == "min"
    for (q, steps), res in zip(PROBLEMS, body["results"]):
        card = qwen_card_step_rewards(dirs["qwen"], SYSTEM, q, steps)
        assert close(res["step_rewards"], card), (res, card)
        assert res["num_steps"] == len(steps) and res["score"] == min(res["step_rewards"])
        assert res["weakest_step"] == res["step_rewards"].index(min(res["step_rewards"]))
        assert res["truncated"] is False and res["num_tokens"] > 0
    assert body["usage"]["prompt_tokens"] == sum(res["num_tokens"] for res in body["results"])
    shepherd = client.post(
        "/v1/step_rewards",
        json={
            "model": "shepherd-prm",
            "items": [
                {"prompt": q, "steps": [f"Step {i + 1}: {s}" for i, s in enumerate(steps)]} for q, steps in PROBLEMS
            ],
        },
    ).json()
    for (q, steps), res in zip(PROBLEMS, shepherd["results"]):
        assert close(res["step_rewards"], shepherd_card_step_rewards(dirs["shepherd"], q, shepherd_output(steps)))


def test_step_rewards_response_conversation_and_system(client, dirs):
    q, steps = PROBLEMS[1]
    text = "\n\n".join(steps) + "\n\n"  # split at the default separator; the empty tail is dropped
    conversation = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": q},
        {"role": "assistant", "content": text},
    ]
    own_system = {"prompt": q, "steps": steps, "system": "Be brief."}
    body = client.post(
        "/v1/step_rewards", json={"items": [{"prompt": q, "response": text}, conversation, own_system]}
    ).json()
    card = qwen_card_step_rewards(dirs["qwen"], SYSTEM, q, steps)
    assert body["model"] == "qwen-prm"  # the first prm served
    assert close(body["results"][0]["step_rewards"], card) and close(body["results"][1]["step_rewards"], card)
    assert close(body["results"][2]["step_rewards"], qwen_card_step_rewards(dirs["qwen"], "Be brief.", q, steps))


@pytest.mark.parametrize("how", ["min", "last", "mean", "product"])
def test_step_rewards_each_aggregate(client, how):
    items = [{"prompt": q, "steps": s} for q, s in PROBLEMS]
    body = client.post("/v1/step_rewards", json={"model": "qwen-prm", "items": items, "aggregate": how}).json()
    expected = {"min": min, "last": lambda r: r[-1], "mean": lambda r: math.fsum(r) / len(r), "product": math.prod}
    assert body["aggregate"] == how
    for res in body["results"]:
        assert res["score"] == pytest.approx(expected[how](res["step_rewards"]), abs=1e-12)


@pytest.mark.parametrize(
    "payload, pattern",
    [
        ({"items": [{"prompt": "q", "steps": ["a"]}, {"steps": ["a"]}]}, r"items\[1\]\.prompt: missing"),
        (
            {"items": [{"prompt": "q", "steps": ["a"]}, {"prompt": "q", "steps": ["a"], "response": "a"}]},
            r"items\[1\]: give the solution as steps .*not both",
        ),
        ({"items": [{"prompt": "q", "steps": ["a"]}, {"prompt": "q", "steps": []}]}, r"items\[1\]\.steps: empty"),
        ({"items": [{"prompt": "q", "steps": ["a", "b<extra_0>c"]}]}, r"items\[0\]: step 1 contains the step tag"),
        (
            {"items": [{"prompt": "q", "steps": ["a"]}], "aggregate": "median"},
            r"aggregate: .*must be one of min, last, mean, product",
        ),
        ({"items": [{"prompt": "q", "steps": ["a"]}], "model": "judge"}, r"model 'judge' is a pointwise"),
        ({"items": []}, r"items"),
    ],
)
def test_step_rewards_bad_inputs_are_named(client, payload, pattern):
    r = client.post("/v1/step_rewards", json=payload)
    assert r.status_code in (400, 422), r.text
    assert re.search(pattern, r.json()["error"]["message"]), r.json()


def test_rewards_route_with_a_prm_answers_the_aggregates(client, dirs):
    convs = [
        [{"role": "user", "content": q}, {"role": "assistant", "content": "\n\n".join(steps)}] for q, steps in PROBLEMS
    ]
    r = client.post("/v1/rewards", json={"model": "qwen-prm", "conversations": convs})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["aggregate"] == "min" and len(body["step_rewards"]) == len(PROBLEMS)
    for (q, steps), score, rewards in zip(PROBLEMS, body["scores"], body["step_rewards"]):
        assert close(rewards, qwen_card_step_rewards(dirs["qwen"], SYSTEM, q, steps))
        assert score == min(rewards)


# ---------------------------------------------------------------- /v1/rate


def reference_ids(judge_dir: str, item: dict) -> list[int]:
    """The judge prompt built independently: the default template filled in, one user turn through
    the chat template with the generation prompt, tokenized with no special tokens added."""
    tok = AutoTokenizer.from_pretrained(judge_dir)
    prompt = pointwise_template().format(input=item["prompt"], response=item["response"])
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


def rating_tokens(judge_dir: str) -> tuple[list[int], list[int]]:
    tok = AutoTokenizer.from_pretrained(judge_dir)
    prefix = tok("[[", add_special_tokens=False)["input_ids"]
    return prefix, [tok(f"[[{r}]]", add_special_tokens=False)["input_ids"][len(prefix)] for r in range(1, 11)]


def test_rate_logits_equals_one_forward_at_the_rating_token(client, dirs):
    r = client.post("/v1/rate", json={"model": "judge", "items": ITEMS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "judge" and body["ratings"] == [str(v) for v in range(1, 11)]
    prefix, tokens = rating_tokens(dirs["judge"])
    for item, res in zip(ITEMS, body["results"]):
        expected, probs = pointwise_reference_rating(
            dirs["judge"], reference_ids(dirs["judge"], item) + prefix, tokens, [float(v) for v in range(1, 11)]
        )
        assert abs(res["expected"] - expected) <= TOL
        assert close(res["probs"], probs) and res["rating"] == float(1 + max(range(10), key=probs.__getitem__))
        assert res["truncated"] is False and res["text"] is None
    assert body["usage"]["prompt_tokens"] > 0


def test_rate_generate_states_the_last_rating_in_its_text(client):
    body = client.post("/v1/rate", json={"model": "judge", "items": ITEMS, "mode": "generate"}).json()
    stated = 0
    for res in body["results"]:
        found = re.findall(r"\[\[(\d+)\]\]", res["text"])
        assert res["rating"] == (float(found[-1]) if found else None)
        stated += bool(found)
    assert stated >= 2, body


def test_rate_template_fields_are_required_per_item(client):
    item = {"prompt": "Add 2 and 3.", "response": "5", "rubric": "correctness"}
    ok = client.post("/v1/rate", json={"model": "judge-rubric", "items": [item]})
    assert ok.status_code == 200 and 1 <= ok.json()["results"][0]["expected"] <= 10
    r = client.post("/v1/rate", json={"model": "judge-rubric", "items": [item, {"prompt": "q", "response": "r"}]})
    assert r.status_code == 422 and "items[1].rubric: missing" in r.json()["error"]["message"]
    r = client.post("/v1/rate", json={"model": "judge", "items": ITEMS, "mode": "sample"})
    assert r.status_code == 422 and "mode" in r.json()["error"]["message"]
    r = client.post("/v1/rate", json={"model": "qwen-prm", "items": ITEMS})
    assert r.status_code == 422 and "model 'qwen-prm' is a process reward model" in r.json()["error"]["message"]


# ---------------------------------------------------------------- RewardClient over HTTP, /v1/models


def test_reward_client_step_rewards_and_rate_over_http(served, client):
    transport = httpx.ASGITransport(app=served["app"])
    items = [{"prompt": q, "steps": s} for q, s in PROBLEMS]
    with RewardClient.http("http://in-process", model="qwen-prm", transport=transport) as prm:
        got = prm.step_rewards(items, aggregate="mean")
        route = client.post("/v1/step_rewards", json={"model": "qwen-prm", "items": items, "aggregate": "mean"})
        assert got == route.json()["results"]
        many = [{"prompt": f"Add {i} and 1.", "steps": [f"{i} + 1 = {i + 1}."]} for i in range(100)]
        many[70] = {"prompt": "Add 70 and 1.", "steps": []}
        with pytest.raises(InvalidInput, match=r"^items\[70\]\.steps: empty"):
            prm.step_rewards(many)
    with RewardClient.http("http://in-process", model="judge", transport=transport) as judge:
        rated = judge.rate(ITEMS)
        assert rated == client.post("/v1/rate", json={"model": "judge", "items": ITEMS}).json()["results"]


def test_models_lists_the_kinds(client):
    cards = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert {k: (c["kind"], c["default"]) for k, c in cards.items()} == {
        "qwen-prm": ("prm", True),
        "shepherd-prm": ("prm", False),
        "judge": ("pointwise", True),
        "judge-rubric": ("pointwise", False),
    }
