"""The tiny process reward models (Qwen2.5-Math-PRM and math-shepherd formats) and the pointwise
judge's critic: they load through the real from_pretrained paths, their tokenizers have the facts
the cards rely on, and the cards' own computations (tests/prm_reference.py) give spread-out step
rewards. Fast: no Ray, tiny models built once per module."""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import prm_reference as ref  # noqa: E402
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from cluster.tiny import build_tiny_model, build_tiny_prm  # noqa: E402

SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
QWEN_ITEMS = [
    (
        "What is (2 + 3 - 1) * 2?",
        ["To find the sum, we add 2 + 3 = 5.", "Then 5 - 1 = 4.", "So 4 * 2 = 8.", "The answer is \\boxed{8}."],
    ),
    (
        "Janet's ducks lay 16 eggs per day. She eats 3. How many are left?",
        [
            "Janet's ducks lay 16 eggs per day.\n\n",
            "She eats 3, so 16 - 3 = 13 eggs are left.\n\n",
            "The answer is \\boxed{13}.",
        ],
    ),
    ("Name a prime number.", ["7 is prime."]),
]
SHEPHERD_ITEMS = [
    (
        "Janet's ducks lay 16 eggs per day. She eats 3 and sells the rest for $2 each. How much does she make?",
        "Step 1: Janet's ducks lay 16 eggs per day. ки\nStep 2: She eats 3, so 16 - 3 = 13 eggs are left. ки\n"
        "Step 3: She sells 13 eggs for $2 each, so she makes 13 * 2 = 26 dollars. The answer is: 26 ки",
    ),
    ("What is 2 + 3?", "Step 1: We add 2 + 3 = 5. ки\nStep 2: The answer is: 5 ки"),
    ("Name a prime number.", "Step 1: 7 is prime. The answer is: 7 ки"),
]


@pytest.fixture(scope="module")
def qwen_prm(tmp_path_factory):
    return build_tiny_prm(tmp_path_factory.mktemp("qwen-prm"), style="qwen")


@pytest.fixture(scope="module")
def shepherd_prm(tmp_path_factory):
    return build_tiny_prm(tmp_path_factory.mktemp("shepherd-prm"), style="shepherd")


def spread_out(rewards: list[float]) -> bool:
    return all(0.0 < r < 1.0 for r in rewards) and max(rewards) - min(rewards) > 1e-3


# ----------------------------------------------------------------------------- Qwen2.5-Math-PRM


def test_qwen_prm_loads_through_automodel_with_remote_code(qwen_prm):
    config = json.loads((qwen_prm / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForProcessRewardModel"] and config["model_type"] == "qwen2"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_qwen2_rm.Qwen2RMConfig",
        "AutoModel": "modeling_qwen2_rm.Qwen2ForProcessRewardModel",
    }
    assert type(AutoConfig.from_pretrained(qwen_prm, trust_remote_code=True)).__name__ == "Qwen2RMConfig"
    model = AutoModel.from_pretrained(qwen_prm, trust_remote_code=True, dtype=torch.float32).eval()
    assert type(model).__name__ == "Qwen2ForProcessRewardModel"
    assert type(model.model).__name__ == "Qwen2Model"
    first, act, last = model.score
    assert isinstance(act, torch.nn.ReLU)
    assert (first.in_features, first.out_features, last.out_features) == (64, 64, 2)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=torch.arange(4).expand(2, 4))
        as_tuple = model(input_ids=ids, return_dict=False)
    assert out[0].shape == out.logits.shape == (2, 4, 2)  # every position
    assert torch.equal(as_tuple[0], out.logits)


def test_qwen_step_token_is_one_special_token_once_per_step(qwen_prm):
    tok = AutoTokenizer.from_pretrained(qwen_prm, trust_remote_code=True)
    [sep] = tok.encode("<extra_0>")
    assert "<extra_0>" in tok.all_special_tokens and tok.convert_ids_to_tokens(sep) == "<extra_0>"
    assert tok.bos_token is None and tok.chat_template and "<|im_start|>" in tok.chat_template
    for query, steps in QWEN_ITEMS:
        ids = ref.qwen_card_input_ids(qwen_prm, SYSTEM, query, steps)
        assert ids.count(sep) == len(steps)
        text = ref.qwen_card_conversation(qwen_prm, SYSTEM, query, steps)
        assert text.startswith("<|im_start|>system\n" + SYSTEM) and text.endswith("<extra_0><|im_end|>\n")
        assert "<extra_0>" not in tok.decode(ids, skip_special_tokens=True)


def test_qwen_card_gives_one_spread_out_reward_per_step(qwen_prm):
    every = []
    for query, steps in QWEN_ITEMS:
        rewards = ref.qwen_card_step_rewards(qwen_prm, SYSTEM, query, steps)
        assert len(rewards) == len(steps) and all(0.0 < r < 1.0 for r in rewards)
        every += rewards
    assert spread_out(every) and max(every) - min(every) > 0.1  # not all ~0.5


# ----------------------------------------------------------------------------- math-shepherd


def test_shepherd_prm_loads_as_a_causal_lm(shepherd_prm):
    model = AutoModelForCausalLM.from_pretrained(shepherd_prm, dtype=torch.float32)
    assert type(model).__name__ == "MistralForCausalLM"
    assert json.loads((shepherd_prm / "config.json").read_text())["architectures"] == ["MistralForCausalLM"]


def test_shepherd_tag_and_candidates_are_single_tokens(shepherd_prm):
    tok = AutoTokenizer.from_pretrained(shepherd_prm)
    candidates, tag = ref.shepherd_card_tokens(shepherd_prm)
    assert tok.encode("ки") == [tok.bos_token_id, tag]  # the card takes [-1]; here it is the only token
    assert tok.convert_ids_to_tokens(tag) == "ки" and "ки" not in tok.all_special_tokens
    assert tok.encode("Step 1: 2 + 3 = 5. ки\n")[-2:] == [tag, tok.encode("\n")[-1]]
    assert len(candidates) == 2 and len(set(candidates)) == 2 and tag not in candidates
    assert [tok.decode([c]).strip() for c in candidates] == ["+", "-"]
    for question, output in SHEPHERD_ITEMS:
        ids = ref.shepherd_card_input_ids(shepherd_prm, question, output)
        assert ids.count(tag) == output.count("ки") == len(output.split("\n"))  # once per step
        assert tok.decode(ids, skip_special_tokens=True) == f"{question} {output}"  # round-trips


def test_shepherd_card_gives_one_spread_out_reward_per_step(shepherd_prm):
    every = []
    for question, output in SHEPHERD_ITEMS:
        rewards = ref.shepherd_card_step_rewards(shepherd_prm, question, output)
        assert len(rewards) == output.count("ки") and all(0.0 < r < 1.0 for r in rewards)
        every += rewards
    assert spread_out(every) and max(every) - min(every) > 0.1


# ----------------------------------------------------------------------------- building


@pytest.mark.parametrize("style", ["qwen", "shepherd"])
def test_prm_builds_are_seeded(style, tmp_path, qwen_prm, shepherd_prm):
    built = {"qwen": qwen_prm, "shepherd": shepherd_prm}[style]
    again = build_tiny_prm(tmp_path / "again", style=style, seed=0)
    other = build_tiny_prm(tmp_path / "other", style=style, seed=1)
    weights = (built / "model.safetensors").read_bytes()
    assert (again / "model.safetensors").read_bytes() == weights != (other / "model.safetensors").read_bytes()
    assert (again / "tokenizer.json").read_text() == (built / "tokenizer.json").read_text()


def test_tiny_model_command_builds_prms(tmp_path, capsys):
    from cluster.cli.main import main

    assert main(["tiny-model", "--kind", "prm", "--style", "shepherd", "--out", str(tmp_path / "s")]) == 0
    assert (tmp_path / "s" / "config.json").exists()
    assert main(["tiny-model", "--kind", "prm", "--out", str(tmp_path / "q")]) == 0  # qwen by default
    assert (tmp_path / "q" / "modeling_qwen2_rm.py").exists()
    assert main(["tiny-model", "--kind", "reward", "--style", "qwen", "--out", str(tmp_path / "r")]) == 2
    assert "--style is only for --kind prm" in capsys.readouterr().err


def test_style_must_be_known(tmp_path):
    with pytest.raises(ValueError, match="style"):
        build_tiny_prm(tmp_path, style="llama")


# ----------------------------------------------------------------------------- pointwise judge


@pytest.fixture(scope="module")
def critic(tmp_path_factory):
    # teach_steps=0: the tokenizer (what the rating facts are about) does not depend on the teaching
    return build_tiny_model(tmp_path_factory.mktemp("critic"), kind="critic", teach_steps=0)


def test_ratings_one_to_ten_are_single_tokens_in_the_critic_tokenizer(critic):
    tok = AutoTokenizer.from_pretrained(critic)
    ids = [tok.encode(str(v), add_special_tokens=False) for v in range(1, 11)]
    assert all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == 10  # "10" included
    spaced = [tok.encode(f" {v}", add_special_tokens=False) for v in range(1, 11)]
    assert len(spaced[0]) == 2 and all(len(i) == 1 for i in spaced[1:])  # " 1" is 'Ġ' + '1'


def test_pointwise_references(critic):
    tok = AutoTokenizer.from_pretrained(critic)
    out = tok.apply_chat_template(
        [{"role": "user", "content": "Rate the answer from 1 to 10. 2 + 3 = 5"}],
        tokenize=True,
        add_generation_prompt=True,
    )
    prompt = list(out["input_ids"] if hasattr(out, "keys") else out)
    ratings = [tok.encode(str(v), add_special_tokens=False)[0] for v in range(1, 11)]
    expected, probs = ref.pointwise_reference_rating(critic, prompt, ratings, [float(v) for v in range(1, 11)])
    assert len(probs) == 10 and abs(sum(probs) - 1.0) < 1e-12 and 1.0 < expected < 10.0
    assert expected == pytest.approx(sum(p * v for p, v in zip(probs, range(1, 11))), abs=1e-12)
    text, new_ids, step_logits = ref.pointwise_reference_generate(critic, prompt, max_new_tokens=4)
    assert 1 <= len(new_ids) <= 4 and len(step_logits) == len(new_ids)
    assert [int(logits.argmax()) for logits in step_logits] == new_ids  # greedy
    assert text == tok.decode(new_ids, skip_special_tokens=True)
