"""The Ray Data pipeline with a process reward model (kind "prm"), on the session's local cluster:
one run over a folder of solutions (steps and responses) scores as `load_model(spec).step_rewards`
does in-process (fp32, 1e-4); the new list columns keep their types through the parquet shards;
filter_solutions keeps exactly the solutions whose weakest step reaches the threshold (the API and
the CLI); the summary's step statistics; and the errors that name what is wrong before anything
runs, for a prm and a pointwise judge. A prm's pairs and a pointwise judge's rows and pairs, row by
row: tests/unit/test_pipeline_rows.py (the same stages, no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import FAST, TOL, close, write_corpus
from test_pipeline_rows import QUESTIONS, STEPS, SYSTEM  # the prm tests' corpus words

from cluster import ConfigError, InvalidInput, ModelLoadError, ModelSpec
from cluster.data.pipeline import _model_identity, filter_solutions, read_scores, resolve_model, score_corpus

pytestmark = pytest.mark.slow  # a Ray Data suite: `pytest -m slow` (CI runs it after the default run)

ray = pytest.importorskip("ray")

FAST = {**FAST, "rows_per_shard": 4}
STEP_COLUMNS = {
    "score": pa.float64(),
    "step_rewards": pa.list_(pa.float64()),
    "num_steps": pa.int64(),
    "weakest_step": pa.int64(),
    "weakest_step_reward": pa.float64(),
}


def write(path: Path, rows: list[dict]) -> Path:
    return write_corpus(path, rows, row_group_size=3)


# ---------------------------------------------------------------- models (built once per module)


# ---------------------------------------------------------------- a prm over solutions (scores layout)


def solution_rows() -> tuple[list[dict], list[dict]]:
    """A parquet file of steps (a list column; a system message on some rows) and a JSONL file of
    responses (one text, split at the model's separator), with one row that has no step at all."""
    steps = [
        {
            "id": f"s{i}",
            "prompt": QUESTIONS[i % 5],
            "steps": STEPS[i % 6][i % 2 :] or STEPS[i % 6],
            "system": SYSTEM if i % 3 == 0 else None,
        }
        for i in range(10)
    ]
    responses = [
        {"id": f"r{i}", "prompt": QUESTIONS[(i + 2) % 5], "response": "\n\n".join(STEPS[(i + 1) % 6])}
        for i in range(10)
    ]
    responses[4] = {"id": "r4", "prompt": QUESTIONS[0], "response": "\n\n  \n\n"}  # no step: the one bad row
    return steps, responses


def reference_item(row: dict) -> dict:
    return {k: row[k] for k in ("prompt", "steps", "response", "system") if row.get(k) is not None}


@pytest.fixture(scope="module")
def prm_run(ray_cluster, tmp_path_factory, prm_spec, prm):
    root = tmp_path_factory.mktemp("prm-run")
    steps, responses = solution_rows()
    write(root / "corpus" / "steps.parquet", steps)
    write(root / "corpus" / "responses.jsonl", responses)
    summary = score_corpus(root / "corpus", root / "out", prm_spec, on_error="skip", **FAST)
    good = [r for r in responses if r["id"] != "r4"] + steps  # read_scores' order: by file, then row
    expected = prm.step_rewards([reference_item(r) for r in good])
    return {"root": root, "summary": summary, "rows": good, "expected": expected}


def test_prm_step_rewards_match_in_process(prm_run):
    table = read_scores(prm_run["root"] / "out")
    expected = prm_run["expected"]
    assert table["id"].to_pylist() == [r["id"] for r in prm_run["rows"]]  # 19 rows, input order, bad row out
    for got, want in zip(table["step_rewards"].to_pylist(), expected):
        assert close(got, want.step_rewards)
    assert close(table["score"].to_pylist(), [e.score for e in expected])  # the spec's aggregate: min
    assert table["num_steps"].to_pylist() == [len(e.step_rewards) for e in expected]
    assert table["weakest_step"].to_pylist() == [e.weakest_step for e in expected]
    assert close(table["weakest_step_reward"].to_pylist(), [min(e.step_rewards) for e in expected])
    assert table["steps"].to_pylist() == [r.get("steps") for r in prm_run["rows"]]  # input columns carried
    errors = (prm_run["root"] / "out" / "errors.jsonl").read_text().splitlines()
    assert len(errors) == 1 and json.loads(errors[0])["source_row"] == 4 and "no steps" in errors[0]


def test_prm_list_columns_keep_their_types_in_the_parquet_shards(prm_run):
    for part in sorted((prm_run["root"] / "out" / "parts").glob("part-*.parquet")):
        schema = pq.read_schema(part)
        for name, typ in STEP_COLUMNS.items():
            assert schema.field(name).type == typ, (part.name, name)


def test_prm_summary_step_statistics(prm_run):
    summary, expected = prm_run["summary"], prm_run["expected"]
    on_disk = json.loads((prm_run["root"] / "out" / "summary.json").read_text())
    weakest = [min(e.step_rewards) for e in expected]
    for s in (summary, on_disk):
        assert s["kind"] == "prm" and s["layout"] == "scores" and s["run"]["model_kind"] == "prm"
        assert s["rows"] == s["scored"] == 19 and s["errors"] == 1
        stats = s["step_stats"]
        assert stats["solutions"] == 19 and stats["steps"] == sum(len(e.step_rewards) for e in expected)
        assert stats["steps_per_solution"]["mean"] == pytest.approx(stats["steps"] / 19)
        assert stats["step_rewards"]["mean"] == pytest.approx(
            sum(sum(e.step_rewards) for e in expected) / stats["steps"], abs=TOL
        )
        assert stats["weakest_step_rewards"]["mean"] == pytest.approx(sum(weakest) / 19, abs=TOL)
        assert stats["weakest_step_rewards"]["p50"] is not None
        assert stats["weak_solutions"] == sum(w < 0.5 for w in weakest)
        assert stats["weak_share"] == pytest.approx(stats["weak_solutions"] / 19)


def split_threshold(values: list[float]) -> float:
    """A threshold between two of the values near the middle, clear of both by more than TOL."""
    ordered = sorted(values)
    gaps = [(ordered[i + 1] - ordered[i], i) for i in range(len(ordered) - 1)]
    middle = [(gap, i) for gap, i in gaps if len(ordered) // 4 <= i < 3 * len(ordered) // 4]
    gap, i = max(middle)
    assert gap > 4 * TOL
    return (ordered[i] + ordered[i + 1]) / 2


def test_filter_solutions_keeps_the_solutions_whose_weakest_step_reaches_the_threshold(prm_run, prm_spec):
    root, rows, expected = prm_run["root"], prm_run["rows"], prm_run["expected"]
    threshold = split_threshold([min(e.step_rewards) for e in expected])
    # the same arguments as the scoring run: it resumes (nothing to score again) and filters
    summary = filter_solutions(
        root / "corpus", root / "out", prm_spec, min_step_reward=threshold, on_error="skip", **FAST
    )
    kept, dropped = pq.read_table(root / "out" / "kept.parquet"), pq.read_table(root / "out" / "dropped.parquet")
    want = [r["id"] for r, e in zip(rows, expected) if min(e.step_rewards) >= threshold]
    assert kept["id"].to_pylist() == want and 0 < len(want) < len(rows)
    assert sorted(kept["id"].to_pylist() + dropped["id"].to_pylist()) == sorted(r["id"] for r in rows)
    assert summary["rows_scored_now"] == 0 and summary["errors"] == 1  # the bad row: in errors.jsonl, counted
    assert summary["kept"] == len(want) and summary["dropped"] == len(rows) - len(want)
    assert summary["min_step_reward"] == threshold
    assert kept.schema.field("step_rewards").type == pa.list_(pa.float64())
    assert all(w >= threshold for w in kept["weakest_step_reward"].to_pylist())
    assert all(w < threshold for w in dropped["weakest_step_reward"].to_pylist())


def test_cli_filter_solutions(prm_run, prm_spec, capsys):
    from cluster.cli.main import main

    root, expected = prm_run["root"], prm_run["expected"]
    rc = main(
        [
            "filter-solutions",
            str(root / "corpus"),
            str(root / "out"),
            "--model",
            json.dumps(prm_spec),
            "--min-step-reward",
            "0",
            "--on-error",
            "skip",
            "--no-progress",
            "--batch-rows",
            "4",
            "--num-cpus",
            "0.5",
            "--tokenizer-num-cpus",
            "0.25",
            "--num-gpus",
            "0",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"kept {len(expected)} solutions" in printed and "dropped 0 solutions" in printed
    assert "process reward model" in printed and "weakest step reward" in printed


# ---------------------------------------------------------------- said before anything runs (no Ray)


def test_a_prm_or_pointwise_judge_needs_a_spec(prm_spec):
    with pytest.raises(ModelLoadError, match="kind='prm' and its step_tag"):
        resolve_model(prm_spec["path"])


def test_filter_solutions_needs_a_prm_and_single_solutions(tmp_path, prm_spec, judge_spec):
    pairs = write(tmp_path / "pairs.jsonl", [{"prompt": "Q", "chosen": "a", "rejected": "b"}])
    with pytest.raises(InvalidInput, match="holds pairs: use filter_pairs"):
        filter_solutions(pairs, tmp_path / "o1", prm_spec, **FAST)
    assert not (tmp_path / "o1").exists()
    rows = write(tmp_path / "rows.jsonl", [{"prompt": "Q", "response": "a"}])
    with pytest.raises(ConfigError, match="needs a process reward model"):
        filter_solutions(rows, tmp_path / "o2", judge_spec, **FAST)
    with pytest.raises(ConfigError, match="min_step_reward"):
        filter_solutions(rows, tmp_path / "o3", prm_spec, min_step_reward=1.5, **FAST)


def test_shapes_a_kind_cannot_read_are_named(tmp_path, judge_spec, rm_path):
    conversations = write(
        tmp_path / "c.jsonl",
        [{"conversations": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}],
    )
    with pytest.raises(InvalidInput, match="pointwise judge rates 'prompt' \\+ 'response' rows or pairs"):
        score_corpus(conversations, tmp_path / "o1", judge_spec, **FAST)
    steps = write(tmp_path / "s.jsonl", [{"prompt": "Q", "steps": ["a", "b"]}])
    with pytest.raises(InvalidInput, match="'steps' is read by a process reward model only"):
        score_corpus(steps, tmp_path / "o2", rm_path, **FAST)


def test_model_identity_adds_the_new_kinds_fields_only_to_them(prm_spec, judge_spec, rm_path):
    base = {"path", "kind", "revision", "dtype", "max_length", "truncation", "judge_template", "verdicts"}
    assert set(_model_identity(ModelSpec(name="rm", path=rm_path, kind="reward"))) == base
    assert set(_model_identity(ModelSpec(name="c", path=rm_path, kind="critic"))) == base
    prm_identity = _model_identity(ModelSpec.parse(prm_spec))
    assert {"step_tag", "step_format", "step_separator", "step_aggregate", "prm_template"} <= set(prm_identity)
    assert prm_identity["step_tag"] == "<extra_0>"
    assert {"ratings", "rating_format", "rating_values", "system_prompt"} <= set(
        _model_identity(ModelSpec.parse(judge_spec))
    )
