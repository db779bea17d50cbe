"""Shared-prefix scoring: items that start with the same tokens (the n responses of a GRPO group, a
debiased judgement's two orders) compute that prefix once, and still score exactly as the model
card's one-at-a-time forward does, in every decoder family, on both padding sides, whatever the
order or mix of the items.

The reference is the card's computation written with plain transformers calls (conftest); the
runner's own counts (`Ran.computed`) prove the sharing happened, so a parity check cannot pass by
sharing nothing.
"""

from __future__ import annotations

import random

import pytest
import torch
from helpers import TOL, card_ids, card_score_ids
from test_critic import ITEMS, card_prob_a, load_critic, swap

from cluster import ModelSpec, load_model
from cluster.core.batching import MIN_SHARED_PREFIX, call_cost, plan_calls, shared_prefix_groups

DECODERS = {  # build_tiny_model kwargs per family (tests/parity/test_families.py has the why of each)
    "llama": dict(arch="llama"),
    "gemma2": dict(arch="gemma2"),  # sliding window 32, smaller than the shared prefixes here
    "qwen2": dict(arch="qwen2"),
    "qwen3": dict(arch="qwen3"),
    "mistral": dict(arch="mistral"),
    "smollm": dict(arch="smollm"),
    "gpt_neox": dict(arch="gpt_neox", pad="eos"),  # pad == EOS: the read position is before it
}
NO_SYSTEM = {"gemma2", "mistral"}
WORDS = (
    "the river runs past old stone walls while children count boats and the baker sells warm bread "
    "to every tired traveller who asks about the weather in the hills beyond town"
).split()


def prose(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)) + "."


def grpo_batch(
    family: str, seed: int = 0, groups: int = 3, n: int = 4, prompt_words: int = 60, response_words: int = 40
) -> list:
    """`groups` prompts x `n` responses of different lengths (two identical), plus unrelated
    conversations, in shuffled order."""
    rng = random.Random(seed)
    convs = []
    for g in range(groups):
        turns = [] if family in NO_SYSTEM else [{"role": "system", "content": prose(rng, 30)}]
        turns.append({"role": "user", "content": prose(rng, prompt_words + 20 * g)})
        responses = [prose(rng, rng.randint(3, response_words)) for _ in range(n - 1)]
        responses.append(responses[0])  # the same answer twice: identical items share all but the read
        convs += [turns + [{"role": "assistant", "content": r}] for r in responses]
    convs += [
        [{"role": "user", "content": prose(rng, 12)}, {"role": "assistant", "content": prose(rng, 25)}]
        for _ in range(3)
    ]
    rng.shuffle(convs)
    return convs


def load(path, **kw):
    return load_model(ModelSpec(name="rm", path=str(path), kind="reward", dtype="float32", **kw))


# ----------------------------------------------------------------------------- which items share


def test_groups_take_what_a_run_of_items_shares():
    prompt, other = list(range(100, 200)), list(range(300, 360))
    seqs = [prompt + [1000 + i] * (10 + i) for i in range(8)]  # one prompt, 8 answers
    seqs += [other + [5] * 300, prompt[:40] + [7] * 20, other + [9] * 10, [1, 2, 3]]
    groups = shared_prefix_groups(seqs, [len(s) - 1 for s in seqs])
    # the 8 answers share 100 tokens; the 9th item shares only 40 of them: a smaller saving, left out;
    # `other` saves 60 of 430 tokens (< 25%): not worth a second kind of pass
    assert [(g.prefix, sorted(g.members)) for g in groups] == [(100, list(range(8)))]
    assert [
        (g.prefix, sorted(g.members))
        for g in shared_prefix_groups(seqs, [len(s) - 1 for s in seqs], min_saved_share=0.0)
    ] == [(100, list(range(8))), (60, [8, 10])]


def test_groups_never_share_a_read_position_and_ignore_short_prefixes():
    same = [list(range(50))] * 3
    (group,) = shared_prefix_groups(same, [49, 49, 49])
    assert group.prefix == 49  # identical items: everything but the read token
    assert shared_prefix_groups(same, [10, 10, 10]) == []  # reads before MIN_SHARED_PREFIX: nothing
    header = list(range(MIN_SHARED_PREFIX - 1))
    assert shared_prefix_groups([header + [i] * 5 for i in range(20)], [100] * 20) == []
    assert shared_prefix_groups([[1, 2, 3]], [2]) == []


def test_calls_keep_a_group_together_within_the_budget():
    """The request core plans replica calls so that a replica finds each group again: a group stays
    in one call, or in calls that each carry its prefix, and every call's computed cost fits."""
    prompt = list(range(100, 400))
    group = [prompt + [1000 + i] * (20 + i) for i in range(16)]
    others = [[7, i] * (40 + i) for i in range(10)]
    seqs = [s for pair in zip(group, others) for s in pair] + group[10:]  # interleaved, as gathered
    assert call_cost(group) == 300 + sum(len(s) - 300 for s in group)
    assert call_cost(others) == sum(map(len, others))
    for budget in (100_000, 800):
        calls = plan_calls(seqs, budget)
        assert sorted(i for c in calls for i in c) == list(range(len(seqs)))
        assert all(call_cost([seqs[i] for i in c]) <= budget for c in calls)
        with_prompt = [c for c in calls if any(seqs[i][:300] == prompt for i in c)]
        assert all(all(seqs[i][:300] == prompt for i in c) for c in with_prompt)
        assert len(with_prompt) == (1 if budget > 10_000 else len(with_prompt)) and len(with_prompt) < 16


# ----------------------------------------------------------------------------- reward models


@pytest.fixture(scope="module")
def decoder_dir(model_dirs):
    return lambda family: model_dirs(f"family-{family}", **DECODERS[family])


@pytest.mark.parametrize("family", sorted(DECODERS))
@pytest.mark.parametrize("side", ["right", "left"])
def test_shared_prefixes_score_as_the_card(decoder_dir, family, side):
    path = decoder_dir(family)
    convs = grpo_batch(family)
    rm = load(path, padding_side=side, max_batch_tokens=4096)
    seqs = [e.ids for e in rm.encoder.encode_inputs(convs)]
    assert seqs == [card_ids(path, c) for c in convs]
    ran = rm.runner.run("score", seqs)
    assert ran.computed < 0.75 * sum(len(s) for s in seqs), "the three prompts were not shared"
    reference = [card_score_ids(path, s) for s in seqs]
    assert [score for score, _ in ran.outputs] == pytest.approx(reference, abs=TOL)
    # and through the request core, as a route or a notebook calls it
    assert rm.score(convs) == pytest.approx(reference, abs=TOL)
    unshared = load(path, padding_side=side, max_batch_tokens=4096, share_prefixes=False)
    assert unshared.runner.run("score", seqs).computed >= sum(len(s) for s in seqs)
    assert unshared.score(convs) == pytest.approx(reference, abs=TOL)


def test_sharing_never_moves_a_score_to_another_item(decoder_dir):
    """Any order, any mix of groups in one call, groups split over several passes by a small
    budget: each item's score is its own."""
    path = decoder_dir("llama")
    convs = grpo_batch("llama", seed=1, groups=4, n=6)
    reference = [card_score_ids(path, card_ids(path, c)) for c in convs]
    assert max(len(card_ids(path, c)) for c in convs) <= 1024  # nothing cut: the card scores all of it
    for budget in (8192, 1024):
        rm = load(path, max_batch_tokens=budget, max_length=1024)
        for seed in range(3):
            order = list(range(len(convs)))
            random.Random(seed).shuffle(order)
            scores = rm.score([convs[i] for i in order])
            assert scores == pytest.approx([reference[i] for i in order], abs=TOL)
    # two requests of the same groups, gathered into one call, then one of them alone
    halves = [convs[::2], convs[1::2]]
    together = rm.service.run([rm.service.rewards_job(rm.spec, h) for h in halves])
    for half, result in zip(halves, together):
        assert result.scores == pytest.approx([reference[convs.index(c)] for c in half], abs=TOL)


def test_a_group_that_does_not_fit_one_pass_reuses_its_prefix(decoder_dir):
    path = decoder_dir("qwen2")
    convs = grpo_batch("qwen2", seed=2, groups=1, n=12)[:12]
    rm = load(path, max_batch_tokens=256, max_length=256)
    seqs = [e.ids for e in rm.encoder.encode_inputs(convs)]
    ran = rm.runner.run("score", seqs)
    assert len(ran.batches) > 1
    assert [s for s, _ in ran.outputs] == pytest.approx([card_score_ids(path, s) for s in seqs], abs=TOL)


# ----------------------------------------------------------------------------- critics


@pytest.mark.parametrize("arch", ["llama", "gemma2", "qwen2"])
def test_debiased_orders_share_their_prefix_and_match_the_card(model_dirs, arch):
    """A debiased judgement's two orders share the judge prompt up to the first response."""
    path = model_dirs(f"{arch}-critic", kind="critic", arch=arch, teach_steps=0)
    critic = load_critic(path, dtype="float32")
    long_items = [{**it, "prompt": it["prompt"] + " " + prose(random.Random(i), 80)} for i, it in enumerate(ITEMS)]
    seqs = [e.ids for order in (False, True) for e in critic.encoder.encode_judge_items(long_items, swap=order)]
    ran = critic.runner.run("verdicts", seqs)
    assert ran.computed < 0.8 * sum(ran.lengths), "the two orders were not shared"
    for item, v in zip(long_items, critic.judge(long_items, debias=True)):
        expected = (card_prob_a(path, critic, item) + 1 - card_prob_a(path, critic, swap(item))) / 2
        assert v.prob_a == pytest.approx(expected, abs=1e-5)


def test_a_critic_whose_forward_scales_its_logits_is_read_through_its_own_forward(critic_dir):
    """The fast path applies the LM head (and soft-capping) itself; a model whose forward does
    something more is detected at load and read through its own forward (left-padded, no sharing)."""
    critic = load_critic(critic_dir, dtype="float32")
    runner = critic.runner
    assert not runner.own_head
    reference = [v.prob_a for v in critic.judge(ITEMS)]
    head = runner.lm.lm_head
    runner.model.set_output_embeddings(ScaledHead(head))  # what a logit_scale in the forward would do
    assert runner._check_head()
    runner.model.set_output_embeddings(head)
    runner.own_head = True
    assert runner.ops()["verdicts"].read_limit is None  # no sharing on that path
    assert [v.prob_a for v in critic.judge(ITEMS)] == pytest.approx(reference, abs=1e-5)
    assert [v.prob_a for v in critic.judge(ITEMS)] == pytest.approx(
        [card_prob_a(critic_dir, critic, it) for it in ITEMS], abs=1e-5
    )


class ScaledHead(torch.nn.Module):
    def __init__(self, head):
        super().__init__()
        self.head = head

    def forward(self, hidden):
        return self.head(hidden) * 2.0
