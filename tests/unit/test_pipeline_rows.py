"""The pipeline's row shapes, on its row logic in-process (no Ray): every input shape scores like
`load_model(...).score` row by row; critics judge pairs like `CriticModel.judge`; a process reward
model's pairs like `.step_rewards`, a pointwise judge's rows and pairs like `.rate`; the summary's
metrics on corpora with answers worked out here. Each corpus goes through the code a `score_corpus`
run runs (`helpers.score_rows_in_process`: the driver's layout, the read tasks, the tokenize and
model stages); the Ray Data run itself, over several files, is tests/ray/test_pipeline.py's."""

from __future__ import annotations

import sys
from collections import Counter

import pyarrow as pa
import pytest
from helpers import (
    BAD,
    CONVERSATIONS,
    FAST,
    GOOD,
    PROMPTS,
    TOL,
    close,
    pair_rows,
    score_rows_in_process,
    turn,
    write_corpus,
)

from cluster import ConfigError, ModelSpec, load_model
from cluster.data.corpus import critic_swap


def ray_running() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


@pytest.fixture(scope="module", autouse=True)
def no_ray():
    """Nothing here starts Ray (in a run with tests/ray, its session cluster may be up already)."""
    before = ray_running()
    yield
    assert ray_running() == before, "a row-logic test started Ray"


@pytest.fixture(scope="module")
def critic(critic_dir):
    return load_model(ModelSpec(name="judge", path=str(critic_dir), kind="critic"))


# ---------------------------------------------------------------- every shape == load_model(...).score


SHAPES = {
    "conversations.jsonl": (
        lambda: [{"conversations": c, "tag": i} for i, c in enumerate(CONVERSATIONS)],
        lambda rows: [r["conversations"] for r in rows],
    ),
    "prompt_response.parquet": (
        lambda: [{"prompt": p, "response": g, "tag": i} for i, (p, g) in enumerate(zip(PROMPTS, GOOD))],
        lambda rows: [turn(r["prompt"], r["response"]) for r in rows],
    ),
    "messages-with-system-prompt.json": (
        lambda: [
            {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": p}], "response": g}
            for p, g in zip(PROMPTS, GOOD)
        ],
        lambda rows: [r["prompt"] + [{"role": "assistant", "content": r["response"]}] for r in rows],
    ),
}


@pytest.mark.parametrize("name", list(SHAPES))
def test_plain_shapes_score_like_load_model(tmp_path, rm_path, rm, name):
    make, conversations = SHAPES[name]
    rows = make()
    table, summary = score_rows_in_process(write_corpus(tmp_path / name, rows), rm_path, **FAST)
    assert summary["shape"] == ("conversations" if name.startswith("conv") else "prompt_response")
    assert table["source_row"].to_pylist() == list(range(len(rows)))  # input order, nothing lost
    assert close(table["score"].to_pylist(), rm.score(conversations(rows)))
    for column in rows[0]:  # the input's own columns are carried through untouched
        assert table[column].to_pylist() == [r[column] for r in rows]


PAIR_SHAPES = {
    "strings.jsonl": lambda r: r,
    "response-turns.parquet": lambda r: {
        **r,
        "chosen": [{"role": "assistant", "content": r["chosen"]}],
        "rejected": [{"role": "assistant", "content": r["rejected"]}],
    },
    "whole-conversations-no-prompt.jsonl": lambda r: {
        "id": r["id"],
        "subset": r["subset"],
        "chosen": turn(r["prompt"], r["chosen"]),
        "rejected": turn(r["prompt"], r["rejected"]),
    },
}


@pytest.mark.parametrize("name", list(PAIR_SHAPES))
def test_pair_shapes_score_like_load_model(tmp_path, rm_path, rm, name):
    base = pair_rows(8)
    rows = [PAIR_SHAPES[name](r) for r in base]
    table, summary = score_rows_in_process(write_corpus(tmp_path / name, rows), rm_path, **FAST)
    chosen = rm.score([turn(r["prompt"], r["chosen"]) for r in base])
    rejected = rm.score([turn(r["prompt"], r["rejected"]) for r in base])
    assert summary["shape"] == "pairs"
    assert close(table["chosen_score"].to_pylist(), chosen)
    assert close(table["rejected_score"].to_pylist(), rejected)
    assert close(table["margin"].to_pylist(), [c - r for c, r in zip(chosen, rejected)])
    assert table["chosen_wins"].to_pylist() == [c > r for c, r in zip(chosen, rejected)]
    assert table["id"].to_pylist() == [r["id"] for r in base]


def test_several_responses_per_side_rm_bench(tmp_path, rm_path, rm):
    """RM-Bench rows (3 chosen x 3 rejected): the 3x3 matrix, and easy/normal/hard computed here."""
    rows = [
        {
            "id": i,
            "subset": "chat" if i < 3 else "code",
            "prompt": PROMPTS[i],
            "chosen": [GOOD[i], GOOD[i] + " Indeed.", f"**{GOOD[i]}**"],
            "rejected": [BAD[i], BAD[(i + 1) % 8], f"**{BAD[i]}**"],
        }
        for i in range(5)
    ]
    table, summary = score_rows_in_process(write_corpus(tmp_path / "rmb.json", rows), rm_path, **FAST)
    easy = normal = hard = 0.0
    for row, got in zip(rows, table.to_pylist()):
        c = rm.score([turn(row["prompt"], x) for x in row["chosen"]])
        r = rm.score([turn(row["prompt"], x) for x in row["rejected"]])
        assert close(got["chosen_scores"], c) and close(got["rejected_scores"], r)
        wins = [[c[i] > r[j] for j in range(3)] for i in range(3)]
        assert got["win_rate"] == pytest.approx(sum(map(sum, wins)) / 9)
        hard += (wins[0][1] + wins[0][2] + wins[1][2]) / 3 / len(rows)
        normal += (wins[0][0] + wins[1][1] + wins[2][2]) / 3 / len(rows)
        easy += (wins[1][0] + wins[2][0] + wins[2][1]) / 3 / len(rows)
    assert summary["rm_bench"]["hard"] == pytest.approx(hard)
    assert summary["rm_bench"]["normal"] == pytest.approx(normal)
    assert summary["rm_bench"]["easy"] == pytest.approx(easy)


def test_glob_input_picks_matching_files_in_order(tmp_path, rm_path):
    write_corpus(tmp_path / "in" / "b.jsonl", pair_rows(2))
    write_corpus(tmp_path / "in" / "a.jsonl", pair_rows(3))
    (tmp_path / "in" / "notes.txt").write_text("not data")
    table, summary = score_rows_in_process(str(tmp_path / "in" / "*.jsonl"), rm_path, **FAST)
    assert summary["rows"] == 5
    assert list(zip(table["source_file"].to_pylist(), table["source_row"].to_pylist())) == [
        ("a.jsonl", 0),
        ("a.jsonl", 1),
        ("a.jsonl", 2),
        ("b.jsonl", 0),
        ("b.jsonl", 1),
    ]


# ---------------------------------------------------------------- critic over pairs


@pytest.mark.parametrize("debias", [False, True])
def test_critic_judges_pairs_like_critic_model(tmp_path, critic_dir, critic, debias):
    rows = pair_rows(8)
    spec = {"name": "judge", "path": str(critic_dir), "kind": "critic"}
    table, _ = score_rows_in_process(write_corpus(tmp_path / "p.jsonl", rows), spec, debias=debias, **FAST)
    got = table["prob_chosen"].to_pylist()
    items = [{"prompt": r["prompt"], "response_a": r["chosen"], "response_b": r["rejected"]} for r in rows]
    if debias:
        expected = [v.prob_a for v in critic.judge(items, debias=True)]
    else:  # chosen goes second where the stable hash says so; P(chosen) = 1 - P(A) there
        swaps = [critic_swap(it) for it in items]
        assert any(swaps) and not all(swaps)
        flipped = [
            {**it, "response_a": it["response_b"], "response_b": it["response_a"]} if s else it
            for it, s in zip(items, swaps)
        ]
        expected = [1 - v.prob_a if s else v.prob_a for v, s in zip(critic.judge(flipped), swaps)]
    assert close(got, expected)


def test_critic_judges_every_pair_of_several_responses(tmp_path, critic_dir, critic):
    rows = [
        {"prompt": PROMPTS[i], "chosen": [GOOD[i], GOOD[i] + "!"], "rejected": [BAD[i], BAD[i] + "?"]} for i in range(3)
    ]
    spec = {"name": "judge", "path": str(critic_dir), "kind": "critic"}
    got, _ = score_rows_in_process(write_corpus(tmp_path / "m.json", rows), spec, debias=True, **FAST)
    for row, probs in zip(rows, got["probs_chosen"].to_pylist()):
        items = [
            {"prompt": row["prompt"], "response_a": c, "response_b": r} for c in row["chosen"] for r in row["rejected"]
        ]  # row-major: chosen i, rejected j
        assert close(probs, [v.prob_a for v in critic.judge(items, debias=True)])
    assert got["win_rate"].to_pylist() == [sum(p > 0.5 for p in ps) / 4 for ps in got["probs_chosen"].to_pylist()]


# ---------------------------------------------------------------- metrics with known answers


def test_summary_rewardbench_sections_and_ties(tmp_path, rm_path, rm):
    subsets = (
        ["alpacaeval-easy"] * 3
        + ["mt-bench-easy"] * 2
        + ["llmbar-natural"] * 2
        + ["donotanswer"] * 2
        + ["math-prm"] * 1
    )
    rows = [
        {"subset": s, "prompt": PROMPTS[i % 8], "chosen": GOOD[i % 8], "rejected": BAD[(i * 3) % 8]}
        for i, s in enumerate(subsets)
    ]
    rows.append({"subset": "math-prm", "prompt": "Tie?", "chosen": "Same answer.", "rejected": "Same answer."})
    _, summary = score_rows_in_process(write_corpus(tmp_path / "rb.jsonl", rows), rm_path, **FAST)
    wins: dict[str, list[bool]] = {}
    for r in rows:
        c, j = rm.score([turn(r["prompt"], r["chosen"]), turn(r["prompt"], r["rejected"])])
        wins.setdefault(r["subset"], []).append(c > j)  # the tie (c == j) counts as a loss
    assert wins["math-prm"][-1] is False
    acc = {s: sum(w) / len(w) for s, w in wins.items()}
    chat = (acc["alpacaeval-easy"] * 3 + acc["mt-bench-easy"] * 2) / 5
    assert summary["per_subset"]["math-prm"]["accuracy"] == pytest.approx(acc["math-prm"])
    assert summary["rewardbench"]["Chat"] == pytest.approx(chat)
    assert summary["rewardbench"]["Chat Hard"] == pytest.approx(acc["llmbar-natural"])
    assert summary["rewardbench"]["Reasoning"] == pytest.approx(acc["math-prm"])
    sections = [chat, acc["llmbar-natural"], acc["donotanswer"], acc["math-prm"]]
    assert summary["rewardbench"]["Score"] == pytest.approx(sum(sections) / 4)
    assert summary["accuracy"] == pytest.approx(sum(sum(w) for w in wins.values()) / len(rows))


# ---------------------------------------------------------------- other model families


def test_multi_output_model_gets_list_columns(tmp_path, model_dirs):
    """A HelpSteer2-style model: the chosen scalar in score columns, every label in list columns."""
    from cluster.tiny import HELPSTEER2_LABELS

    path = str(model_dirs("multi-helpsteer2", arch="llama", labels=HELPSTEER2_LABELS))
    spec = {"name": "attrs", "path": path, "kind": "reward", "reward_label": "coherence"}
    attrs = load_model(ModelSpec(**spec))
    rows = [{"conversations": c} for c in CONVERSATIONS]
    table, _ = score_rows_in_process(write_corpus(tmp_path / "c.jsonl", rows), spec, **FAST)
    expected = attrs.score_detailed(CONVERSATIONS)
    assert table.schema.field("values").type == pa.list_(pa.float64())
    assert close(table["score"].to_pylist(), [r.score for r in expected])
    for got, want in zip(table["values"].to_pylist(), expected):
        assert close(got, want.values) and len(got) == 5 and got[2] == pytest.approx(want.score, abs=TOL)
    # pairs: one vector per side
    base = pair_rows(4)
    pairs, _ = score_rows_in_process(write_corpus(tmp_path / "p.jsonl", base), spec, **FAST)
    chosen = attrs.score_detailed([turn(r["prompt"], r["chosen"]) for r in base])
    assert all(close(g, w.values) for g, w in zip(pairs["chosen_values"].to_pylist(), chosen))
    # several labels and no scalar chosen: refused in the driver, before any actor starts
    with pytest.raises(ConfigError, match="has 5 output labels"):
        score_rows_in_process(write_corpus(tmp_path / "c2.jsonl", rows), path, **FAST)


def test_encoder_text_pairs_through_the_pipeline(tmp_path, model_dirs):
    """BERT: (question, answer) pairs with token types survive the tokenize -> score stages."""
    path = str(model_dirs("family-bert", arch="bert"))
    bert = load_model(ModelSpec(name="bert", path=path, kind="reward"))
    rows = [{"prompt": p, "response": g} for p, g in zip(PROMPTS, GOOD)]
    table, _ = score_rows_in_process(write_corpus(tmp_path / "pr.parquet", rows), path, **FAST)
    assert close(table["score"].to_pylist(), bert.score([turn(r["prompt"], r["response"]) for r in rows]))
    assert "values" not in table.column_names  # one output label: no vector column


# ---------------------------------------------------------------- a process reward model, a pointwise judge

PRM_FAST = {**FAST, "rows_per_shard": 4}  # tests/ray/test_pipeline_prm.py's options
QUESTIONS = [
    "What is (2 + 3 - 1) * 2?",
    "Janet's ducks lay 16 eggs per day. She eats 3. How many are left?",
    "Name a prime number.",
    "What is 9 * 2?",
    "How much does she make selling 13 eggs at $2 each?",
]
STEPS = [
    ["To find the sum, we add 2 + 3 = 5.", "Then 5 - 1 = 4.", "So 4 * 2 = 8.", "The answer is \\boxed{8}."],
    ["Janet's ducks lay 16 eggs per day.", "She eats 3, so 16 - 3 = 13 eggs are left.", "The answer is \\boxed{13}."],
    ["7 is prime."],
    ["9 * 2 = 18.", "The answer is: 18"],
    ["She sells 13 eggs for $2 each.", "So she makes 9 * 2 = 18 dollars.", "The answer is: 18"],
    ["Step 1: 16 - 3 = 13.", "Step 2: 13 * 2 = 26.", "Step 3: The answer is 26."],
]
SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


@pytest.fixture(scope="module")
def judge(judge_spec):
    return load_model(judge_spec)


@pytest.fixture(scope="module")
def tiny_rubric_judge(judge_spec):
    """The judge with a template naming a further field, {rubric}: read from each row's column."""
    template = (
        "Rubric: {rubric}\nQuestion: {input}\nAnswer: {response}\n"
        "Rate the answer from 1 to 10 and write the rating as [[rating]]."
    )
    spec = {**judge_spec, "name": "pw-rubric", "judge_template": template}
    return spec, load_model(spec)


def test_prm_pairs_score_each_side_like_step_rewards(tmp_path, prm_spec, prm):
    rows = [
        {
            "id": f"p{i}",
            "prompt": QUESTIONS[i % 5],
            "chosen": "\n\n".join(STEPS[i % 6]),
            "rejected": "\n\n".join(STEPS[(i + 3) % 6]),
            **({"system": SYSTEM} if i == 2 else {}),
        }
        for i in range(6)
    ]
    table, summary = score_rows_in_process(write_corpus(tmp_path / "pairs.jsonl", rows), prm_spec, **PRM_FAST)

    def item(row, side):
        return {
            "prompt": row["prompt"],
            "response": row[side],
            **({"system": row["system"]} if "system" in row else {}),
        }

    chosen = prm.step_rewards([item(r, "chosen") for r in rows])
    rejected = prm.step_rewards([item(r, "rejected") for r in rows])
    assert close(table["chosen_score"].to_pylist(), [c.score for c in chosen])
    assert close(table["rejected_score"].to_pylist(), [r.score for r in rejected])
    for got, want in zip(table["chosen_step_rewards"].to_pylist(), chosen):
        assert close(got, want.step_rewards)
    for got, want in zip(table["rejected_step_rewards"].to_pylist(), rejected):
        assert close(got, want.step_rewards)
    margins = [c.score - r.score for c, r in zip(chosen, rejected)]
    assert close(table["margin"].to_pylist(), margins)
    wins = table["chosen_wins"].to_pylist()
    assert all(w == (m > 0) for w, m in zip(wins, margins) if abs(m) > TOL)
    assert summary["kind"] == "prm" and summary["layout"] == "pairs"
    assert summary["accuracy"] == pytest.approx(sum(wins) / len(wins))
    assert summary["step_stats"]["solutions"] == 12
    assert summary["step_stats"]["steps"] == sum(len(x.step_rewards) for x in chosen + rejected)


def test_pointwise_rates_rows_like_rate(tmp_path, tiny_rubric_judge):
    rows = [
        {
            "id": f"w{i}",
            "prompt": QUESTIONS[i % 5],
            "response": " ".join(STEPS[i % 6]),
            "rubric": "Correctness." if i % 2 else "Clarity.",
        }
        for i in range(8)
    ]
    spec, rubric = tiny_rubric_judge
    table, summary = score_rows_in_process(
        write_corpus(tmp_path / "rows.parquet", rows, row_group_size=3), spec, **PRM_FAST
    )
    expected = rubric.rate([{k: r[k] for k in ("prompt", "response", "rubric")} for r in rows])
    assert close(table["score"].to_pylist(), [e.expected for e in expected])
    assert table["rating"].to_pylist() == [e.rating for e in expected]
    for got, want in zip(table["rating_probs"].to_pylist(), expected):
        assert close(got, want.probs)
    assert table.schema.field("rating_probs").type == pa.list_(pa.float64())
    assert summary["kind"] == "pointwise" and summary["layout"] == "scores"
    counts = Counter(f"{e.rating:g}" for e in expected)
    assert summary["rating_stats"]["counts"] == dict(sorted(counts.items(), key=lambda kv: float(kv[0])))
    assert close(
        summary["rating_stats"]["mean_probs"],
        [sum(e.probs[j] for e in expected) / len(expected) for j in range(len(expected[0].probs))],
    )
    assert summary["score_stats"]["mean"] == pytest.approx(sum(e.expected for e in expected) / 8, abs=TOL)


def test_pointwise_pairs_rate_both_responses(tmp_path, judge_spec, judge):
    rows = [
        {
            "id": f"q{i}",
            "subset": "math" if i % 2 else "chat",
            "prompt": QUESTIONS[i % 5],
            "chosen": " ".join(STEPS[i % 6]),
            "rejected": STEPS[(i + 2) % 6][0],
        }
        for i in range(8)
    ]
    table, summary = score_rows_in_process(write_corpus(tmp_path / "pairs.jsonl", rows), judge_spec, **PRM_FAST)
    chosen = judge.rate([{"prompt": r["prompt"], "response": r["chosen"]} for r in rows])
    rejected = judge.rate([{"prompt": r["prompt"], "response": r["rejected"]} for r in rows])
    assert close(table["chosen_score"].to_pylist(), [c.expected for c in chosen])
    assert close(table["rejected_score"].to_pylist(), [r.expected for r in rejected])
    margins = [c.expected - r.expected for c, r in zip(chosen, rejected)]
    assert close(table["margin"].to_pylist(), margins)
    wins = table["chosen_wins"].to_pylist()
    assert all(w == (m > 0) for w, m in zip(wins, margins) if abs(m) > TOL)
    assert table["chosen_rating"].to_pylist() == [c.rating for c in chosen]
    assert table["rejected_rating"].to_pylist() == [r.rating for r in rejected]
    assert summary["kind"] == "pointwise" and summary["layout"] == "pairs"
    assert summary["accuracy"] == pytest.approx(sum(wins) / 8)
    assert set(summary["per_subset"]) == {"chat", "math"}
    assert sum(summary["rating_stats"]["chosen"]["counts"].values()) == 8
    assert summary["score_stats"]["count"] == 16


def test_a_generative_judge_is_refused_by_name_before_anything_runs(tmp_path, model_dirs):
    """A generative judge answers chat completions; its verdicts are its clients' to read, so a
    corpus run refuses it in the driver, saying which kinds score corpora."""
    from cluster.data.models import resolve_model

    path = model_dirs("genrm-corpus", kind="generative", teach_steps=0)
    with pytest.raises(ConfigError, match="model 'g' is a generative judge: it answers chat completions") as err:
        resolve_model({"name": "g", "path": str(path), "kind": "generative"})
    assert "verdict_pattern" in str(err.value)


# ---------------------------------------------------------------- reasoning judges over a corpus (mode="generate")


def test_generate_mode_judges_pairs_after_the_reasoning_and_keeps_the_answers(tmp_path, model_dirs):
    """mode="generate" on a reasoning critic: each pair judged as critic.judge(mode="generate")
    judges it (the same orders as the fast path's), P(chosen) from the verdict read after the
    reasoning, every answer kept in judge_texts. The same judge read by exact strings states no
    verdict after its reasoning (its `[[A]]`/`[[B]]` are in the reasoning only): those rows are
    unscored (null), counted as skipped, their answers kept."""
    path = model_dirs("thinking-critic", kind="critic", arch="llama", thinking=True, teach_steps=100)
    spec = {"name": "judge", "path": str(path), "kind": "critic", "max_new_tokens": 40}
    boxed = {**spec, "verdict_pattern": r"\\boxed\{(A|B)\}"}
    rows = pair_rows(6)
    corpus = write_corpus(tmp_path / "p.jsonl", rows)
    table, summary = score_rows_in_process(corpus, boxed, mode="generate", **FAST)
    items = [{"prompt": r["prompt"], "response_a": r["chosen"], "response_b": r["rejected"]} for r in rows]
    swaps = [critic_swap(it) for it in items]
    flipped = [
        {**it, "response_a": it["response_b"], "response_b": it["response_a"]} if s else it
        for it, s in zip(items, swaps)
    ]
    judged = load_model(boxed).judge(flipped, mode="generate")
    assert all(v.prob_a is not None for v in judged)
    assert close(table["prob_chosen"].to_pylist(), [1 - v.prob_a if s else v.prob_a for v, s in zip(judged, swaps)])
    assert table["judge_texts"].to_pylist() == [[v.text] for v in judged]
    assert all("</think>" in v.text for v in judged)
    assert summary["scored"] == len(rows) and summary["accuracy"] is not None

    plain, plain_summary = score_rows_in_process(corpus, spec, mode="generate", **FAST)
    assert plain["prob_chosen"].to_pylist() == [None] * len(rows)
    assert plain["chosen_wins"].to_pylist() == [None] * len(rows)
    assert plain["judge_texts"].to_pylist() == table["judge_texts"].to_pylist()
    assert plain_summary["scored"] == 0 and plain_summary["skipped"] == len(rows)


def test_generate_mode_rates_after_the_reasoning(tmp_path, model_dirs):
    path = model_dirs("thinking-judge", kind="pointwise", arch="llama", thinking=True, teach_steps=100)
    spec = {"name": "rater", "path": str(path), "kind": "pointwise", "max_new_tokens": 40}
    rows = [{"prompt": PROMPTS[i], "response": GOOD[i]} for i in range(4)]
    table, summary = score_rows_in_process(write_corpus(tmp_path / "r.jsonl", rows), spec, mode="generate", **FAST)
    rated = load_model(spec).rate(rows, mode="generate")
    assert all(r.rating is not None for r in rated)
    assert table["rating"].to_pylist() == [r.rating for r in rated]
    assert close(table["score"].to_pylist(), [r.expected for r in rated])
    assert table["judge_texts"].to_pylist() == [[r.text] for r in rated]
    assert summary["kind"] == "pointwise"


def test_generate_mode_is_for_judges(tmp_path, rm_path):
    with pytest.raises(ConfigError, match="mode='generate' is for a critic or a pointwise judge"):
        score_rows_in_process(
            write_corpus(tmp_path / "c.jsonl", pair_rows(2)), {"name": "rm", "path": str(rm_path), "kind": "reward"},
            mode="generate",
        )  # fmt: skip
