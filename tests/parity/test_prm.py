"""Process reward models and pointwise judges, in-process: equal to the cards' one-at-a-time
computations (tests/prm_reference.py) within 1e-4 in fp32, batched, padded and length-sorted.

- Qwen2.5-Math-PRM style: remote-code token classifier, `<extra_0>` after each step, softmax over
  two labels at each tag, the positive class.
- Math-Shepherd style: a causal LM, 'ки' after each step, P('+') / (P('+') + P('-')) at each tag.
- Pointwise judge: the expected rating over the scale at the rating token (one forward pass), and
  greedy generation with the rating parsed from the end, its probabilities read at its token.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from helpers import REPO
from prm_reference import (
    pointwise_reference_generate,
    pointwise_reference_rating,
    qwen_card_step_rewards,
    shepherd_card_step_rewards,
)
from transformers import AutoTokenizer

from cluster.core.config import ModelSpec
from cluster.core.errors import ConfigError, InputTooLong, InvalidInput
from cluster.core.results import SCORE_TOLERANCE, aggregate_steps
from cluster.engine.loading import load_model
from cluster.kinds.pointwise import pointwise_template
from cluster.tiny import build_tiny_model, build_tiny_prm

SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
# solutions of different lengths and step counts, so batches pad and sort
PROBLEMS = [
    ("Add 2 and 3.", ["2 + 3 = 5.", "The answer is \\boxed{5}."]),
    (
        "What is the capital of France?",
        ["France is a country in Europe.", "Its capital is Paris.", "So the answer is \\boxed{Paris}."],
    ),
    ("Name a prime number.", ["2 is only divisible by 1 and itself.", "\\boxed{2}"]),
    ("Add 2 and 3.", ["2 + 3 = 6.", "The answer is \\boxed{6}."]),
    (
        "Compute 1 + 2 + 3 + 4.",
        [
            "1 + 2 = 3.",
            "3 + 3 = 6.",
            "6 + 4 = 10.",
            "The sum is 10, so the answer is \\boxed{10}, because addition of the four numbers gives ten.",
        ],
    ),
    ("Is water wet?", ["Yes."]),
]
SHEPHERD = {
    "kind": "prm",
    "step_tag": "ки",
    "step_format": "{step} {tag}",
    "step_joiner": "\n",
    "prm_template": "{prompt} {response}",
    "step_labels": ["+", "-"],
}


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return str(build_tiny_prm(tmp_path_factory.mktemp("qwen-prm"), style="qwen"))


@pytest.fixture(scope="module")
def shepherd_dir(tmp_path_factory):
    return str(build_tiny_prm(tmp_path_factory.mktemp("shepherd-prm"), style="shepherd"))


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("judge"), kind="pointwise"))


@pytest.fixture(scope="module")
def qwen(qwen_dir):
    return load_model(
        {
            "name": "qwen-prm",
            "path": qwen_dir,
            "kind": "prm",
            "step_tag": "<extra_0>",
            "trust_remote_code": True,
            "dtype": "float32",
            "system_prompt": SYSTEM,
        }
    )


@pytest.fixture(scope="module")
def shepherd(shepherd_dir):
    return load_model({"name": "shepherd-prm", "path": shepherd_dir, "dtype": "float32", **SHEPHERD})


@pytest.fixture(scope="module")
def judge(judge_dir):
    return load_model(
        {"name": "judge", "path": judge_dir, "kind": "pointwise", "dtype": "float32", "max_new_tokens": 16}
    )


def close(ours, theirs):
    return len(ours) == len(theirs) and all(abs(a - b) <= SCORE_TOLERANCE for a, b in zip(ours, theirs))


# ---------------------------------------------------------------- Qwen2.5-Math-PRM


def test_qwen_style_equals_the_card_one_at_a_time(qwen, qwen_dir):
    items = [{"prompt": q, "steps": s} for q, s in PROBLEMS]
    results = qwen.step_rewards(items)
    ran = qwen.runner.run("score", [e.ids for e in qwen.encoder.encode("score", items)])
    assert any(len(b) > 1 for b in ran.batches), "the items must share a padded batch"
    for (q, steps), r in zip(PROBLEMS, results):
        card = qwen_card_step_rewards(qwen_dir, SYSTEM, q, steps)
        assert close(r.step_rewards, card), (r.step_rewards, card)
        assert r.score == min(r.step_rewards) and r.aggregate == "min"
    # the rewards mean something to compare: not all alike
    assert max(v for r in results for v in r.step_rewards) - min(v for r in results for v in r.step_rewards) > 0.1


def test_a_response_is_split_at_the_separator_and_a_conversation_scores_alike(qwen, qwen_dir):
    q, steps = PROBLEMS[1]
    text = "\n\n".join(steps) + "\n\n"  # a trailing separator leaves an empty piece: dropped
    conversation = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": q},
        {"role": "assistant", "content": text},
    ]
    split, conv = qwen.step_rewards([{"prompt": q, "response": text}, conversation])
    card = qwen_card_step_rewards(qwen_dir, SYSTEM, q, steps)
    assert close(split.step_rewards, card) and close(conv.step_rewards, card)
    # an item's own system message wins over the spec's
    own = qwen.step_rewards([{"prompt": q, "steps": steps, "system": "Be brief."}])[0]
    assert close(own.step_rewards, qwen_card_step_rewards(qwen_dir, "Be brief.", q, steps))


@pytest.mark.parametrize("how", ["min", "last", "mean", "product"])
def test_every_aggregate(qwen, how):
    items = [{"prompt": q, "steps": s} for q, s in PROBLEMS]
    results = qwen.step_rewards(items, aggregate=how)
    expected = {"min": min, "last": lambda r: r[-1], "mean": lambda r: math.fsum(r) / len(r), "product": math.prod}
    for r in results:
        assert r.aggregate == how and r.score == pytest.approx(expected[how](r.step_rewards), abs=1e-12)
    assert qwen.score(items, aggregate=how) == [r.score for r in results]


def test_bad_prm_items_are_named(qwen):
    with pytest.raises(InvalidInput, match=r"items\[1\]\.steps: empty"):
        qwen.step_rewards([{"prompt": "q", "steps": ["a"]}, {"prompt": "q", "steps": []}])
    with pytest.raises(InvalidInput, match=r"items\[0\]: give the solution as steps .* not both"):
        qwen.step_rewards([{"prompt": "q", "steps": ["a"], "response": "a"}])
    with pytest.raises(InvalidInput, match=r"items\[0\]: step 1 contains the step tag '<extra_0>'"):
        qwen.step_rewards([{"prompt": "q", "steps": ["a", "b<extra_0>c"]}])
    with pytest.raises(InvalidInput, match=r"items\[0\]\.prompt: missing"):
        qwen.step_rewards([{"steps": ["a"]}])
    with pytest.raises(InvalidInput, match=r"items\[0\]: the response has no steps"):
        qwen.step_rewards([{"prompt": "q", "response": "\n\n  \n\n"}])
    with pytest.raises(InvalidInput, match=r"items\[0\]: no step tag '<extra_0>'"):
        qwen.step_rewards(["a text with no tags"])
    with pytest.raises(InvalidInput, match=r"aggregate: must be one of min, last, mean, product"):
        qwen.step_rewards([{"prompt": "q", "steps": ["a"]}], aggregate="median")
    with pytest.raises(InputTooLong, match=r"a prm reads every step, so its input is never cut"):
        qwen.step_rewards([{"prompt": "q", "steps": ["word " * 3000]}])


def test_pre_tagged_text_and_token_ids_are_scored_as_sent(qwen, qwen_dir):
    q, steps = PROBLEMS[0]
    tok = AutoTokenizer.from_pretrained(qwen_dir)
    text = tok.apply_chat_template(
        [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": q},
            {"role": "assistant", "content": "<extra_0>".join(steps) + "<extra_0>"},
        ],
        tokenize=False,
    )
    card = qwen_card_step_rewards(qwen_dir, SYSTEM, q, steps)
    by_text, by_ids = qwen.step_rewards([text, tok.encode(text)])
    assert close(by_text.step_rewards, card) and close(by_ids.step_rewards, card)


# ---------------------------------------------------------------- Math-Shepherd


def shepherd_output(steps: list[str]) -> str:
    """The card's output format: "Step 1: ... ки\\nStep 2: ... ки"."""
    return "\n".join(f"Step {i + 1}: {s} ки" for i, s in enumerate(steps))


def test_shepherd_style_equals_the_card_one_at_a_time(shepherd, shepherd_dir):
    items = [{"prompt": q, "steps": [f"Step {i + 1}: {s}" for i, s in enumerate(steps)]} for q, steps in PROBLEMS]
    results = shepherd.step_rewards(items)
    assert not shepherd.runner.own_head  # the LM head on the tag positions only
    for (q, steps), r in zip(PROBLEMS, results):
        card = shepherd_card_step_rewards(shepherd_dir, q, shepherd_output(steps))
        assert close(r.step_rewards, card), (r.step_rewards, card)
    assert len({round(v, 3) for r in results for v in r.step_rewards}) > 3


def test_shepherd_read_through_its_own_forward_is_the_same(shepherd, shepherd_dir):
    """The fallback for a model whose forward computes its logits some other way: the same values."""
    items = [{"prompt": q, "steps": [f"Step {i + 1}: {s}" for i, s in enumerate(steps)]} for q, steps in PROBLEMS]
    fast = shepherd.step_rewards(items)
    shepherd.runner.own_head = True
    try:
        slow = shepherd.step_rewards(items)
    finally:
        shepherd.runner.own_head = False
    for a, b in zip(fast, slow):
        assert close(a.step_rewards, b.step_rewards)


def test_step_numbers_from_the_format(shepherd_dir):
    """Math-Shepherd's solutions number their steps ("Step 1: ..."): `{index}` writes the numbers."""
    numbered = load_model(
        {"name": "s", "path": shepherd_dir, "dtype": "float32", **SHEPHERD, "step_format": "Step {index}: {step} {tag}"}
    )
    q, steps = PROBLEMS[4]
    r = numbered.step_rewards([{"prompt": q, "response": "\n\n".join(steps)}])[0]
    assert close(r.step_rewards, shepherd_card_step_rewards(shepherd_dir, q, shepherd_output(steps)))


def test_step_labels_given_as_token_ids_are_the_same(shepherd_dir, shepherd):
    tok = AutoTokenizer.from_pretrained(shepherd_dir)
    ids = tok.encode("+ -")[1:]  # the card's candidate_tokens
    by_ids = load_model({"name": "s", "path": shepherd_dir, "dtype": "float32", **SHEPHERD, "step_labels": ids})
    item = [{"prompt": PROBLEMS[1][0], "steps": PROBLEMS[1][1]}]
    assert by_ids.step_rewards(item)[0].step_rewards == shepherd.step_rewards(item)[0].step_rewards


# ---------------------------------------------------------------- specs


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"kind": "prm"}, r"a prm needs step_tag"),
        ({"kind": "prm", "step_tag": "x", "step_format": "{tag}{step}"}, r"step_format must end with \{tag\}"),
        ({"kind": "prm", "step_tag": "x", "step_format": "{step}"}, r"step_format must use \{step\} and \{tag\}"),
        ({"kind": "prm", "step_tag": "x", "prm_template": "{question} {response}"}, r"prm_template must use exactly"),
        ({"kind": "prm", "step_tag": "x", "padding_side": "left"}, r"padding_side must be auto or right"),
        ({"kind": "reward", "step_tag": "x"}, r"step_tag is for kind 'prm', not 'reward'"),
        ({"kind": "critic", "ratings": ["1", "2"]}, r"ratings is for kind 'pointwise', not 'critic'"),
        ({"kind": "pointwise", "ratings": ["good", "bad"]}, r"ratings \['good', 'bad'\] are not numbers"),
        ({"kind": "pointwise", "ratings": ["1"]}, r"ratings must be at least two different"),
        ({"kind": "pointwise", "rating_format": "[[x]]"}, r"rating_format must hold \{rating\} once"),
        ({"kind": "pointwise", "judge_template": "{input} only"}, r"must use the fields \{input\} and \{response\}"),
    ],
)
def test_bad_specs_are_named(fields, message):
    with pytest.raises(ConfigError, match=message):
        ModelSpec(name="m", path="/nowhere", **fields)


def test_the_prm_and_judges_config_is_a_valid_serve_config():
    """ray_config.prm-and-judges.yaml: Serve's schema and ours; each kind's fields as the README says."""

    import yaml
    from ray.serve.schema import ServeDeploySchema

    from cluster.core.config import AppConfig

    raw = yaml.safe_load((REPO / "ray_config.prm-and-judges.yaml").read_text())
    [app] = ServeDeploySchema(**raw).applications
    models = {m.name: m for m in AppConfig.parse(app.args).models}
    assert models["qwen2.5-math-prm-7b"].trust_remote_code and models["qwen2.5-math-prm-7b"].step_tag == "<extra_0>"
    shepherd = models["math-shepherd-mistral-7b-prm"]
    assert shepherd.step_format.format(step="x = 1", tag="ки", index=2) == "Step 2: x = 1 ки"
    prometheus = models["prometheus-7b-v2.0"].spec()
    assert prometheus.rating_strings == ("[RESULT] 1", "[RESULT] 2", "[RESULT] 3", "[RESULT] 4", "[RESULT] 5")
    assert prometheus.template.endswith("###Score Rubrics:\n{rubric}\n\n###Feedback: ")


def test_a_full_dump_of_a_spec_loads_again():
    spec = ModelSpec(name="m", path="/x", kind="prm", step_tag="<extra_0>")
    assert ModelSpec(**spec.model_dump()) == spec


def test_ratings_that_share_their_first_token_are_refused(judge_dir):
    with pytest.raises(ConfigError, match=r"'\[\[1\]\]' and '\[\[11\]\]' begin with the same token"):
        load_model({"name": "j", "path": judge_dir, "kind": "pointwise", "ratings": ["1", "2", "11"]})


def test_a_sequence_classifier_is_not_a_prm(tmp_path):
    rm = build_tiny_model(tmp_path / "rm", kind="reward")
    with pytest.raises(Exception, match=r"one score per sequence, not per step; use kind='reward'"):
        load_model({"name": "x", "path": str(rm), "kind": "prm", "step_tag": "<|eot_id|>"})


# ---------------------------------------------------------------- pointwise judge


ITEMS = [
    {"prompt": "Add 2 and 3.", "response": "5"},
    {"prompt": "What is the capital of France?", "response": "The capital of France is Paris, a large city."},
    {"prompt": "Name a prime number.", "response": "2"},
    {"prompt": "Add 2 and 3.", "response": "2 + 3 = 5, because addition."},
]


def reference_ids(judge_dir: str, item: dict, system: str | None = None) -> list[int]:
    """The judge prompt built independently of the package: the template filled in, one user turn
    through the chat template with the generation prompt, tokenized with no special tokens added."""
    tok = AutoTokenizer.from_pretrained(judge_dir)
    prompt = pointwise_template().format(input=item["prompt"], response=item["response"])
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


def rating_tokens(judge_dir: str) -> tuple[list[int], list[int]]:
    tok = AutoTokenizer.from_pretrained(judge_dir)
    prefix = tok("[[", add_special_tokens=False)["input_ids"]
    return prefix, [tok(f"[[{r}]]", add_special_tokens=False)["input_ids"][len(prefix)] for r in range(1, 11)]


def test_expected_rating_equals_one_forward_at_the_rating_token(judge, judge_dir):
    prefix, tokens = rating_tokens(judge_dir)
    results = judge.rate(ITEMS)
    for item, r in zip(ITEMS, results):
        expected, probs = pointwise_reference_rating(
            judge_dir, reference_ids(judge_dir, item) + prefix, tokens, [float(v) for v in range(1, 11)]
        )
        assert abs(r.expected - expected) <= SCORE_TOLERANCE
        assert close(r.probs, probs) and sum(r.probs) == pytest.approx(1.0, abs=1e-9)
        assert r.rating == float(1 + max(range(10), key=probs.__getitem__))  # the greedy choice at that step


def test_a_system_prompt_and_custom_values(judge_dir):
    judge = load_model(
        {
            "name": "j",
            "path": judge_dir,
            "kind": "pointwise",
            "dtype": "float32",
            "system_prompt": "You are a helpful assistant.",
            "rating_values": [v / 10 for v in range(1, 11)],
        }
    )
    prefix, tokens = rating_tokens(judge_dir)
    r = judge.rate(ITEMS[:1])[0]
    expected, _ = pointwise_reference_rating(
        judge_dir,
        reference_ids(judge_dir, ITEMS[0], "You are a helpful assistant.") + prefix,
        tokens,
        [v / 10 for v in range(1, 11)],
    )
    assert abs(r.expected - expected) <= SCORE_TOLERANCE


def test_generate_mode_parses_the_last_rating_and_reads_its_token(judge, judge_dir):
    prefix, tokens = rating_tokens(judge_dir)
    results = judge.rate(ITEMS, mode="generate")
    found = 0
    for item, r in zip(ITEMS, results):
        text, new_ids, step_logits = pointwise_reference_generate(judge_dir, reference_ids(judge_dir, item), 16)
        assert r.text == text
        ratings = [int(m) for m in re.findall(r"\[\[(\d+)\]\]", text)]
        assert r.rating == (float(ratings[-1]) if ratings else None)
        if r.probs is not None:  # read at the generated rating token: the logits there
            at = max(j for j, t in enumerate(new_ids) if t == tokens[int(r.rating) - 1])
            probs = torch.softmax(step_logits[at][tokens].double(), dim=-1).tolist()
            assert close(r.probs, probs)
            assert abs(r.expected - sum(p * v for p, v in zip(probs, range(1, 11)))) <= SCORE_TOLERANCE
            found += 1
    assert found >= 2, "the tiny judge writes [[N]] at the end of its answer"


def test_the_last_rating_in_a_reasoned_answer_is_the_verdict(judge):
    runner = judge.runner
    assert runner.parse_choice("Step 1 scores [[3]], step 2 [[4]]. Overall: [[10]]") == 9
    assert runner.parse_choice("no rating here [[11]]") is None


def test_template_fields_come_from_each_item(judge_dir):
    judge = load_model(
        {
            "name": "j",
            "path": judge_dir,
            "kind": "pointwise",
            "dtype": "float32",
            "judge_template": "Rubric: {rubric}\nQuestion: {input}\nAnswer: {response}\nRate 1-10 as [[N]].",
        }
    )
    r = judge.rate([{"prompt": "Add 2 and 3.", "response": "5", "rubric": "correctness"}])[0]
    assert r.expected is not None and 1 <= r.expected <= 10
    with pytest.raises(InvalidInput, match=r"items\[0\]\.rubric: missing \(this judge's template uses it\)"):
        judge.rate([{"prompt": "q", "response": "r"}])
    with pytest.raises(InvalidInput, match=r"items\[0\]: unknown field\(s\) \['extra'\]"):
        judge.rate([{"prompt": "q", "response": "r", "rubric": "x", "extra": "y"}])


def test_aggregate_of_no_steps_is_refused():
    with pytest.raises(InvalidInput, match="no steps"):
        aggregate_steps([], "min")


def test_the_readme_prm_and_judge_example_runs(tmp_path, capsys):

    readme = (REPO / "docs" / "models.md").read_text()  # moved from the README
    section = readme[readme.index("## Process reward models and pointwise judges") :]
    [code] = re.findall(r"```python\n(.*?)```", section, flags=re.S)[:1]
    exec(compile(code.replace("/tmp/readme-", str(tmp_path / "readme-")), "docs/models.md (PRMs)", "exec"), {})
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("[0.") and lines[1].split()[-1] == "10"
