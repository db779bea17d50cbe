"""The Ray Data pipeline on the session's local cluster: one run over a folder of files of every
format scores like `load_model(...).score` row by row (the row shapes themselves, critics and the
summary's metrics: tests/unit/test_pipeline_rows.py, on the same stages without Ray); score_dataset;
resume after a killed run; bad input named by file, row and field (or skipped into errors.jsonl);
curation; via_serve; the CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import BAD, FAST, GOOD, PROMPTS, REPO, TOL, close, pair_rows, turn, write_corpus
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster import ConfigError, InvalidInput, ModelLoadError, ModelSpec
from cluster.data.pipeline import filter_pairs, read_scores, score_corpus, score_dataset

ray = pytest.importorskip("ray")

write = write_corpus  # (with the corpus words, what test_curator_runs.py imports from here)


# ---------------------------------------------------------------- one run over several files


def test_a_folder_of_every_format_scores_like_load_model(ray_cluster, tmp_path, rm_path, rm):
    """One real Ray Data run over a folder of three files, one per format (JSONL, parquet in row
    groups of 2, JSON in a subfolder), read in chunks of 3 rows and scored in batches of 4, so
    batches span chunks and files: every row once, in input order (by file, then row), its own
    columns carried through untouched, scored like load_model."""
    files = {
        "a.jsonl": [{"prompt": p, "response": g, "tag": i} for i, (p, g) in enumerate(zip(PROMPTS, GOOD))],
        "b.parquet": [{"prompt": p, "response": b, "tag": 10 + i} for i, (p, b) in enumerate(zip(PROMPTS, BAD))],
        "c/d.json": [
            {"prompt": p, "response": g + " " + b, "tag": 20 + i}
            for i, (p, g, b) in enumerate(zip(PROMPTS[:5], GOOD, BAD))
        ],
    }
    for name, rows in files.items():
        write(tmp_path / "in" / name, rows)
    summary = score_corpus(tmp_path / "in", tmp_path / "out", rm_path, **FAST)
    table = read_scores(tmp_path / "out")
    rows = [r for name in files for r in files[name]]
    assert summary["shape"] == "prompt_response" and summary["rows"] == summary["rows_scored_now"] == len(rows)
    assert list(zip(table["source_file"].to_pylist(), table["source_row"].to_pylist())) == [
        (name, i) for name in files for i in range(len(files[name]))
    ]
    assert close(table["score"].to_pylist(), rm.score([turn(r["prompt"], r["response"]) for r in rows]))
    for column in ("prompt", "response", "tag"):
        assert table[column].to_pylist() == [r[column] for r in rows]


# ---------------------------------------------------------------- score_dataset


def test_score_dataset_is_lazy_and_matches(ray_cluster, rm_path, rm):
    rows = pair_rows(6)
    ds = score_dataset(ray.data.from_items(rows), rm_path, **FAST)
    out = sorted(ds.take_all(), key=lambda r: r["id"])
    chosen = rm.score([turn(r["prompt"], r["chosen"]) for r in rows])
    assert close([r["chosen_score"] for r in out], chosen)
    assert "error" not in out[0] and "source_file" not in out[0]


@pytest.mark.parametrize("layout", ["conversations", "several responses", "prm steps", "pointwise pairs"])
def test_score_dataset_gives_every_layout_the_columns_score_corpus_writes(
    ray_cluster, tmp_path, rm_path, prm_spec, judge_spec, layout
):
    """A Dataset of each layout score_corpus detects: the input's columns and the kind's result
    columns, equal to what the pipeline's own stages write for the same rows as a file (in
    process, tests/helpers.py), whatever order Ray Data returns the rows in."""
    from helpers import score_rows_in_process

    if layout == "conversations":
        model, rows = rm_path, [{"id": i, "conversations": turn(p, g)} for i, (p, g) in enumerate(zip(PROMPTS, GOOD))]
    elif layout == "several responses":
        model, rows = (
            rm_path,
            [
                {"id": i, "prompt": PROMPTS[i], "chosen": [GOOD[i], GOOD[i] + "!"], "rejected": [BAD[i], BAD[i] + "?"]}
                for i in range(5)
            ],
        )
    elif layout == "prm steps":
        model, rows = (
            prm_spec,
            [
                {"id": i, "prompt": PROMPTS[i], "steps": [GOOD[i], BAD[i], GOOD[(i + 1) % 8]][: 1 + i % 3]}
                for i in range(5)
            ],
        )
    else:
        model, rows = judge_spec, pair_rows(4)
    expected, _ = score_rows_in_process(write(tmp_path / "rows.jsonl", rows), model, **FAST)
    scored = score_dataset(ray.data.from_items(rows), model, **FAST)
    assert isinstance(scored, ray.data.Dataset)
    got = {r["id"]: r for r in scored.take_all()}
    want = {r["id"]: r for r in expected.to_pylist()}
    assert sorted(got) == sorted(want)
    for key, row in got.items():
        assert set(row) == set(want[key]) - {"source_file", "source_row"}
        for column, value in row.items():
            if isinstance(value, float) or (isinstance(value, list) and value and isinstance(value[0], float)):
                assert close(_flat(value), _flat(want[key][column])), (layout, column)
            else:
                assert _plain(value) == _plain(want[key][column]), (layout, column)


def _flat(value) -> list[float]:
    return [float(v) for v in (value if isinstance(value, list) else [value])]


def _plain(value):
    return value.tolist() if hasattr(value, "tolist") else value


# ---------------------------------------------------------------- resume after a killed run


@pytest.mark.slow  # for time (CI runs `pytest -m slow`)
def test_killed_run_resumes_without_loss_or_duplicates(ray_cluster, tmp_path, rm_path, rm):
    n = 400
    rows = [{"id": i, "prompt": PROMPTS[i % 8] * (1 + i % 3), "response": GOOD[(i * 5) % 8]} for i in range(n)]
    corpus = write(tmp_path / "big.jsonl", rows)
    opts = [
        "--rows-per-shard",
        "8",
        "--batch-rows",
        "4",
        "--no-progress",
        "--num-cpus",
        "0.5",
        "--num-gpus",
        "0",
        "--tokenizer-num-cpus",
        "0.25",
    ]
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cluster",
            "score",
            str(corpus),
            str(out),
            "--model",
            rm_path,
            "--address",
            ray_cluster["address"],
            *opts,
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 240
    while time.time() < deadline and len(list((out / "parts").glob("part-*.parquet"))) < 3:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver dies mid-run: its Ray Data job dies with it
    proc.wait()
    partial = read_scores(out).num_rows
    assert 0 < partial < n, "the kill was meant to land mid-run"

    options = {k: v for k, v in FAST.items()} | {"rows_per_shard": 8}
    resumed = score_corpus(corpus, out, rm_path, **options)
    assert resumed["rows_done_before"] == partial and resumed["rows_scored_now"] == n - partial
    table = read_scores(out)
    assert table["source_row"].to_pylist() == list(range(n))  # none lost, none twice, in input order
    # the same scores an uninterrupted run gives (every row equals the in-process model's score)
    assert close(table["score"].to_pylist(), rm.score([turn(r["prompt"], r["response"]) for r in rows]))

    again = score_corpus(corpus, out, rm_path, **options)  # complete: nothing left to do
    assert again["rows_scored_now"] == 0 and read_scores(out).num_rows == n


def test_output_of_another_model_is_not_resumed(ray_cluster, tmp_path, rm_path, reward_dir):
    corpus = write(tmp_path / "p.jsonl", pair_rows(3))
    score_corpus(corpus, tmp_path / "out", rm_path, **FAST)
    with pytest.raises(ConfigError, match="different model"):
        score_corpus(corpus, tmp_path / "out", str(reward_dir("gemma2")), **FAST)
    summary = score_corpus(corpus, tmp_path / "out", str(reward_dir("gemma2")), overwrite=True, **FAST)
    assert summary["rows_scored_now"] == 3


def test_a_reasoning_critic_scores_a_corpus_in_generate_mode_and_resumes_only_so(ray_cluster, tmp_path, model_dirs):
    """mode="generate" through Ray Data and the output folder: the rows equal the in-process stages'
    (tests/unit/test_pipeline_rows.py compares those with critic.judge(mode="generate")), the answers
    are in judge_texts, and the folder resumes only with mode="generate" (its run.json records it)."""
    from helpers import score_rows_in_process

    path = model_dirs("thinking-critic", kind="critic", arch="llama", thinking=True, teach_steps=100)
    spec = {"name": "judge", "path": str(path), "kind": "critic", "max_new_tokens": 40}
    spec["verdict_pattern"] = r"\\boxed\{(A|B)\}"
    corpus = write(tmp_path / "p.jsonl", pair_rows(5))
    summary = score_corpus(corpus, tmp_path / "out", spec, mode="generate", **FAST)
    assert summary["rows_scored_now"] == 5 and summary["run"]["options"]["mode"] == "generate"
    got = read_scores(tmp_path / "out")
    want, _ = score_rows_in_process(corpus, spec, mode="generate", **FAST)
    assert close(got["prob_chosen"].to_pylist(), want["prob_chosen"].to_pylist())
    assert got["judge_texts"].to_pylist() == want["judge_texts"].to_pylist()
    assert json.loads((tmp_path / "out" / "run.json").read_text())["mode"] == "generate"
    with pytest.raises(ConfigError, match="mode"):
        score_corpus(corpus, tmp_path / "out", spec, **FAST)
    assert score_corpus(corpus, tmp_path / "out", spec, mode="generate", **FAST)["rows_scored_now"] == 0


# ---------------------------------------------------------------- bad input


def test_missing_column_names_the_file_and_column(ray_cluster, tmp_path, rm_path):
    write(tmp_path / "in" / "a.jsonl", pair_rows(2))
    write(tmp_path / "in" / "b.jsonl", [{"prompt": "p", "chosen": "x"}])
    with pytest.raises(InvalidInput, match=r"b\.jsonl row 0: missing column 'rejected'"):
        score_corpus(tmp_path / "in", tmp_path / "out", rm_path, **FAST)


def test_malformed_rows_name_file_row_and_field(ray_cluster, tmp_path, rm_path):
    good = json.dumps(pair_rows(1)[0])
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{good}\n\n{{not json\n")
    with pytest.raises(InvalidInput, match=r"bad\.jsonl row 1 \(line 3\): not valid JSON"):
        score_corpus(path, tmp_path / "out1", rm_path, **FAST)
    rows = pair_rows(2)
    rows[1]["chosen"] = [{"role": "bot", "content": "hi"}]
    with pytest.raises(InvalidInput, match=r"bad2\.jsonl row 1: chosen\[0\]\.role: unknown role 'bot'"):
        score_corpus(write(tmp_path / "bad2.jsonl", rows), tmp_path / "out2", rm_path, **FAST)


def test_empty_file_and_non_model_path(ray_cluster, tmp_path, rm_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(InvalidInput, match=r"empty\.jsonl: the file has no rows"):
        score_corpus(tmp_path / "empty.jsonl", tmp_path / "out", rm_path, **FAST)
    corpus = write(tmp_path / "p.jsonl", pair_rows(2))
    with pytest.raises(ModelLoadError, match=str(tmp_path / "nomodel")):
        (tmp_path / "nomodel").mkdir()
        score_corpus(corpus, tmp_path / "out", str(tmp_path / "nomodel"), **FAST)
    with pytest.raises(ConfigError, match="max_actors"):
        score_corpus(corpus, tmp_path / "out", rm_path, min_actors=2, max_actors=1)
    with pytest.raises(ConfigError, match=r"needs 100\.\d+ CPU .* but the Ray cluster has 8 CPU"):
        score_corpus(corpus, tmp_path / "out3", rm_path, **{**FAST, "num_cpus": 100})  # would wait forever


def test_skip_mode_keeps_every_row_accounted_for(ray_cluster, tmp_path, rm_path, rm):
    rows = pair_rows(6)
    rows[2]["chosen"] = [{"role": "bot", "content": "hi"}]
    del rows[4]["rejected"]
    lines = [json.dumps(r) for r in rows] + ["[1, 2]", "{oops"]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "mixed.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "in" / "zero.jsonl").write_text("\n")
    summary = score_corpus(tmp_path / "in", tmp_path / "out", rm_path, on_error="skip", **FAST)
    table = read_scores(tmp_path / "out")
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    reasons = {(e["source_file"], e["source_row"]): e["error"] for e in errors}
    assert table["source_row"].to_pylist() == [0, 1, 3, 5]
    assert set(reasons) == {
        ("mixed.jsonl", 2),
        ("mixed.jsonl", 4),
        ("mixed.jsonl", 6),
        ("mixed.jsonl", 7),
        ("zero.jsonl", None),
    }
    assert "unknown role 'bot'" in reasons[("mixed.jsonl", 2)]
    assert "rejected: missing" in reasons[("mixed.jsonl", 4)]
    assert "must be a JSON object" in reasons[("mixed.jsonl", 6)]
    assert "not valid JSON" in reasons[("mixed.jsonl", 7)]
    assert summary["errors"] == 5 and summary["rows"] == 4
    kept = [rows[i] for i in (0, 1, 3, 5)]
    assert close(table["chosen_score"].to_pylist(), rm.score([turn(r["prompt"], r["chosen"]) for r in kept]))


# ---------------------------------------------------------------- on_error: every valid row kept, each bad one reported

# corruptions a row can carry, each with what its error must say
CORRUPT = {
    "invalid-json": ('{"id": 1, "prompt": "p", "chosen": "c"', r"\(line \d+\): not valid JSON"),
    "not-an-object": ("[1, 2]", r"a row must be a JSON object, got list"),
    "missing-rejected": ('{"id": 1, "prompt": "p", "chosen": "c"}', r"(rejected: missing|missing column 'rejected')"),
    "chosen-null": ('{"id": 1, "prompt": "p", "chosen": null, "rejected": "r"}', r"chosen: missing"),
    "chosen-number": ('{"id": 1, "prompt": "p", "chosen": 5, "rejected": "r"}', r"chosen: .*got int"),
    "prompt-number": ('{"id": 1, "prompt": 7, "chosen": "c", "rejected": "r"}', r"prompt: .*got int"),
}


def _corrupted(n: int, bad: dict[int, str]) -> tuple[list[dict], list[str]]:
    rows = pair_rows(n)
    return rows, [CORRUPT[bad[i]][0] if i in bad else json.dumps(r) for i, r in enumerate(rows)]


def _read_stage(path: Path, spec: ModelSpec, on_error: str, rows_per_shard: int) -> list[dict]:
    """What the read stage hands the tokenizer for a file (layout from the corpus, then every read
    task), without Ray."""
    from dataclasses import asdict

    from cluster.data.pipeline import ScoringOptions, _corpus_layout, plan_chunks, read_chunk

    opts = ScoringOptions(on_error=on_error, rows_per_shard=rows_per_shard)
    chunks, _ = plan_chunks([str(path)], str(path.parent), rows_per_shard)
    layout = _corpus_layout(chunks, spec, opts)
    rows = []
    for chunk in chunks:
        rows += read_chunk(chunk, on_error, asdict(layout)).to_pylist()
    return rows


@pytest.fixture(scope="module")
def rm_spec(rm_path):
    from cluster.data.pipeline import resolve_model

    return resolve_model(rm_path)


def test_skip_keeps_every_valid_row_around_bad_first_rows_of_chunks(tmp_path, rm_spec):
    """A chunk's columns come from all its rows: a bad row 0, or a bad first row of a later chunk,
    fails alone (before: row 0 ended the run; a later one turned its chunk's rows into errors)."""
    bad = {
        0: "invalid-json",
        8: "missing-rejected",
        16: "chosen-number",
        17: "not-an-object",
        24: "prompt-number",
        31: "chosen-null",
    }
    rows, lines = _corrupted(32, bad)
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(lines) + "\n")
    got = _read_stage(path, rm_spec, "skip", 8)
    assert [r["source_row"] for r in got] == list(range(32))  # each row once, in order
    for r in got:
        i = r["source_row"]
        if i in bad:
            assert re.search(rf"c\.jsonl row {i}\b.*{CORRUPT[bad[i]][1]}", r["_error"]), r["_error"]
        else:
            assert r["_error"] is None
            assert {k: r[k] for k in rows[i]} == rows[i]  # the row's own columns, untouched


def test_skip_fails_only_the_row_whose_column_type_differs(tmp_path, rm_spec):
    """A value Arrow cannot put in one column with the file's others (an id that is a string where
    the rest are numbers, even in row 0) fails that row, not its chunk."""
    rows = pair_rows(12)
    for i in (0, 5):
        rows[i] = {**rows[i], "id": ["not", "a", "string"]}
    rows[9] = {**rows[9], "chosen": [{"role": "assistant", "content": "fine alone, odd here"}]}
    path = write(tmp_path / "t.jsonl", rows)
    got = _read_stage(path, rm_spec, "skip", 5)
    errors = {r["source_row"]: r["_error"] for r in got if r["_error"]}
    assert sorted(errors) == [0, 5, 9] and [r["source_row"] for r in got] == list(range(12))
    assert "column 'id': list<item: string> here, string in the file's other rows" in errors[0]
    assert "column 'chosen'" in errors[9]
    with pytest.raises(InvalidInput, match=r"t\.jsonl row 0: column 'id': list<item: string> here"):
        _read_stage(path, rm_spec, "raise", 5)


def test_parquet_first_row_of_a_row_group_missing_a_field(tmp_path, rm_spec):
    rows = pair_rows(8)
    for i in (0, 4):
        rows[i] = {**rows[i], "rejected": None}
    path = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=4)
    got = _read_stage(path, rm_spec, "skip", 4)
    assert [r["source_row"] for r in got if r["_error"]] == [0, 4]
    assert [r["id"] for r in got if not r["_error"]] == [rows[i]["id"] for i in (1, 2, 3, 5, 6, 7)]


@pytest.mark.parametrize("kind", list(CORRUPT))
def test_raise_names_the_row_and_what_is_wrong(tmp_path, rm_spec, kind):
    for at in (0, 5):  # the corpus's first row (where the layout comes from) and a later chunk's first
        _, lines = _corrupted(8, {at: kind})
        path = tmp_path / f"{kind}-{at}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        with pytest.raises(InvalidInput, match=rf"{kind}-{at}\.jsonl row {at}\b.*{CORRUPT[kind][1]}"):
            _read_stage(path, rm_spec, "raise", 5)


def test_skip_with_no_row_that_can_be_scored_says_so(tmp_path, rm_spec):
    path = tmp_path / "junk.jsonl"
    path.write_text("{oops\n[1]\n")
    with pytest.raises(InvalidInput, match=r"no row of the input can be scored; the first problem: junk\.jsonl row 0"):
        _read_stage(path, rm_spec, "skip", 1)


@settings(max_examples=60, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    n=st.integers(1, 30),
    rows_per_shard=st.integers(1, 9),
    bad=st.dictionaries(st.integers(0, 29), st.sampled_from(sorted(CORRUPT)), max_size=12),
)
def test_skip_property_every_row_once_valid_rows_intact(rm_spec, n, rows_per_shard, bad):
    """Any corruptions anywhere: each valid row comes out once with its columns intact, each bad
    one once as an error naming its row; nothing else."""
    import tempfile

    bad = {i: k for i, k in bad.items() if i < n}
    rows, lines = _corrupted(n, bad)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "h.jsonl"
        path.write_text("\n".join(lines) + "\n")
        if len(bad) == n:
            with pytest.raises(InvalidInput, match="no row of the input can be scored"):
                _read_stage(path, rm_spec, "skip", rows_per_shard)
            return
        got = _read_stage(path, rm_spec, "skip", rows_per_shard)
        assert [r["source_row"] for r in got] == list(range(n))
        for r in got:
            i = r["source_row"]
            if i in bad:
                assert re.search(rf"row {i}\b.*{CORRUPT[bad[i]][1]}", r["_error"]), r["_error"]
            else:
                assert r["_error"] is None and {k: r[k] for k in rows[i]} == rows[i]
        if bad:
            with pytest.raises(InvalidInput, match=r"h\.jsonl row (\d+)") as info:
                _read_stage(path, rm_spec, "raise", rows_per_shard)
            assert int(re.search(r"row (\d+)", str(info.value)).group(1)) in bad


def test_skip_run_scores_valid_rows_as_the_clean_file_does(ray_cluster, tmp_path, rm_path):
    """End to end on Ray: bad rows at row 0 and at the first row of later chunks; every valid row
    scored as in a run on the clean file (same rows, nothing corrupt), each bad row one error."""
    bad = {0: "invalid-json", 8: "missing-rejected", 16: "chosen-number", 23: "not-an-object", 24: "prompt-number"}
    rows, lines = _corrupted(32, bad)
    lines[12] = json.dumps({**rows[12], "id": ["an", "id", "of", "another", "type"]})  # scorable, but not storable
    bad[12] = "id-type"
    clean, dirty = write(tmp_path / "clean.jsonl", rows), tmp_path / "dirty.jsonl"
    dirty.write_text("\n".join(lines) + "\n")
    options = {**FAST, "rows_per_shard": 8}
    score_corpus(clean, tmp_path / "clean", rm_path, **options)
    summary = score_corpus(dirty, tmp_path / "dirty", rm_path, on_error="skip", **options)
    want = {r["source_row"]: r for r in read_scores(tmp_path / "clean").to_pylist()}
    got = read_scores(tmp_path / "dirty").to_pylist()
    errors = [json.loads(line) for line in (tmp_path / "dirty" / "errors.jsonl").read_text().splitlines()]
    assert [r["source_row"] for r in got] == [i for i in range(32) if i not in bad]
    assert [e["source_row"] for e in errors] == sorted(bad)
    assert all(f"row {e['source_row']}" in e["error"] for e in errors)
    assert "column 'id': list<item: string> here, string in the file's other rows" in errors[2]["error"]
    assert summary["rows"] == 32 - len(bad) and summary["errors"] == len(bad)
    for r in got:
        w = want[r["source_row"]]
        assert r["id"] == w["id"] and abs(r["chosen_score"] - w["chosen_score"]) <= TOL
        assert abs(r["rejected_score"] - w["rejected_score"]) <= TOL


# ---------------------------------------------------------------- curation


def test_filter_pairs_keeps_what_the_model_agrees_with(ray_cluster, tmp_path, rm_path, rm):
    rows = pair_rows(8)
    margins = [
        c - r
        for c, r in zip(
            rm.score([turn(r["prompt"], r["chosen"]) for r in rows]),
            rm.score([turn(r["prompt"], r["rejected"]) for r in rows]),
        )
    ]
    threshold = sorted(m for m in margins if m > 0)[0] + 1e-3 if any(m > 0 for m in margins) else 0.0
    summary = filter_pairs(write(tmp_path / "p.parquet", rows), tmp_path / "out", rm_path, min_margin=threshold, **FAST)
    kept = pq.read_table(tmp_path / "out" / "kept.parquet")
    dropped = pq.read_table(tmp_path / "out" / "dropped.parquet")
    expected = [r["id"] for r, m in zip(rows, margins) if m > 0 and m >= threshold]
    assert kept["id"].to_pylist() == expected
    assert sorted(kept["id"].to_pylist() + dropped["id"].to_pylist()) == sorted(r["id"] for r in rows)
    assert summary["kept"] == len(expected) and summary["dropped"] == len(rows) - len(expected)


# ---------------------------------------------------------------- via_serve


def test_via_serve_gives_the_same_scores_in_few_calls(ray_cluster, served, tmp_path, rm_path):
    from ray import serve

    rows = pair_rows(16)
    corpus = write(tmp_path / "p.jsonl", rows)
    local = score_corpus(corpus, tmp_path / "local", rm_path, **FAST)
    handle = serve.get_deployment_handle("reward-rm", app_name="scoring")
    before = sum(s["calls"] for s in _replica_stats(handle))
    remote = score_corpus(corpus, tmp_path / "remote", "rm", via_serve="scoring", **FAST)
    calls = sum(s["calls"] for s in _replica_stats(handle)) - before
    a, b = read_scores(tmp_path / "local"), read_scores(tmp_path / "remote")
    assert close(a["chosen_score"].to_pylist(), b["chosen_score"].to_pylist())
    assert close(a["rejected_score"].to_pylist(), b["rejected_score"].to_pylist())
    assert local["accuracy"] == remote["accuracy"]
    assert 0 < calls < len(rows) / 2  # about one call per Ray batch (4 rows here), never one per row


def _replica_stats(handle) -> list[dict]:
    seen = {}
    for _ in range(40):
        s = handle.get_stats.remote().result()
        seen[s["replica"]] = s
        if len(seen) == 2:
            break
    return list(seen.values())


def test_via_serve_unknown_app_or_model(ray_cluster, served, tmp_path):
    corpus = write(tmp_path / "p.jsonl", pair_rows(2))
    with pytest.raises(ConfigError, match="no such Serve application"):
        score_corpus(corpus, tmp_path / "o1", "rm", via_serve="nope", **FAST)
    with pytest.raises(ConfigError, match="serves no model named 'ghost'"):
        score_corpus(corpus, tmp_path / "o2", "ghost", via_serve="scoring", **FAST)


# ---------------------------------------------------------------- CLI and report


def test_cli_score_then_report(ray_cluster, tmp_path, rm_path, capsys):
    from cluster.cli.main import main

    corpus = write(tmp_path / "p.jsonl", pair_rows(6, subset=lambda i: "chat" if i % 2 else "code"))
    rc = main(
        [
            "score",
            str(corpus),
            str(tmp_path / "out"),
            "--model",
            rm_path,
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
    assert "accuracy" in printed.lower() and str(tmp_path / "out") in printed
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["rows"] == 6
    assert main(["report", str(tmp_path / "out"), "--out", str(tmp_path / "r.html")]) == 0
    html = (tmp_path / "r.html").read_text()
    assert html.count('src="data:image/png;base64,') == 3
    assert main(["score", str(tmp_path / "nothing-here"), str(tmp_path / "o2"), "--model", rm_path]) == 2
    assert "no input files" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("address", "env", "expected"),
    [
        (None, None, "local"),  # never the cluster a previous `ray start` recorded in /tmp/ray/ray_current_cluster
        (None, "10.0.0.5:6379", "10.0.0.5:6379"),  # a Ray Job's driver: RAY_ADDRESS
        ("auto", None, "auto"),  # asked for: the recorded one
        ("auto", "10.0.0.5:6379", "auto"),  # (ray.init itself lets RAY_ADDRESS override "auto")
        ("10.0.0.7:6379", "10.0.0.5:6379", "10.0.0.7:6379"),
        ("ray://head:10001", None, "ray://head:10001"),
        ("local", "10.0.0.5:6379", "local"),
    ],
)
def test_cli_address_choice(address, env, expected):
    from cluster.cli.score import ray_address

    assert ray_address(address, {} if env is None else {"RAY_ADDRESS": env}) == expected


class FakeRay:
    def __init__(self, initialized=False):
        self.initialized, self.calls = initialized, []

    def is_initialized(self):
        return self.initialized

    def init(self, **kw):
        self.calls.append(("init", kw))
        self.initialized = True

    def shutdown(self):
        self.calls.append(("shutdown", {}))
        self.initialized = False


@pytest.fixture
def fake_ray(monkeypatch):
    import cluster.cli.score as score_cli

    fake, watchdogs = FakeRay(), []
    for name in ("is_initialized", "init", "shutdown"):
        monkeypatch.setattr(ray, name, getattr(fake, name))
    monkeypatch.setattr(score_cli, "_start_watchdog", lambda: watchdogs.append(object()) or None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    fake.watchdogs = watchdogs
    return fake


def test_cli_session_starts_a_fresh_local_cluster_and_shuts_it_down(fake_ray, monkeypatch):
    from cluster.cli.score import ray_session

    before = signal.getsignal(signal.SIGTERM)
    with ray_session(None):
        assert fake_ray.calls == [("init", {"address": "local", "log_to_driver": False, "logging_level": "ERROR"})]
        assert signal.getsignal(signal.SIGTERM) is not before  # SIGTERM now unwinds to the shutdown
    assert fake_ray.calls[-1] == ("shutdown", {}) and len(fake_ray.watchdogs) == 1
    assert signal.getsignal(signal.SIGTERM) is before
    fake_ray.calls.clear()
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    with ray_session(None):
        pass
    assert fake_ray.calls[0][1]["address"] == "10.0.0.5:6379" and len(fake_ray.watchdogs) == 1  # not ours: no watchdog


def test_cli_session_sigterm_shuts_down_then_exits_143(fake_ray):
    from cluster.cli.score import ray_session

    with pytest.raises(SystemExit) as exited:
        with ray_session(None):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises here
    assert exited.value.code == 128 + signal.SIGTERM
    assert fake_ray.calls[-1] == ("shutdown", {})


def test_cli_session_leaves_an_existing_connection_alone(fake_ray):
    from cluster.cli.score import ray_session

    fake_ray.initialized = True  # a notebook's or this test session's
    with ray_session("10.0.0.7:6379"):
        pass
    assert fake_ray.calls == [] and not fake_ray.watchdogs


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the watchdog reads /proc")
def test_watchdog_ends_what_a_sigkilled_command_left(tmp_path):
    """A command that started the watchdog, then three long-lived children: a plain one, one that
    is no one's descendant any more (double fork: reparented) but carries the mark, and one with
    a clean environment (found as a descendant). SIGKILL the command: the watchdog ends all three."""
    script = tmp_path / "command.py"
    script.write_text(
        "import os, subprocess, sys, time\n"
        "from cluster.cli.score import _start_watchdog\n"
        "watchdog = _start_watchdog()\n"
        "sleep = [sys.executable, '-c', 'import time; time.sleep(300)']\n"
        "plain = subprocess.Popen(sleep)\n"
        "bare = subprocess.Popen(sleep, env={})\n"
        "mid = subprocess.Popen([sys.executable, '-c', 'import subprocess, sys; "
        "p = subprocess.Popen(sys.argv[1:], start_new_session=True); print(p.pid)', *sleep], stdout=subprocess.PIPE)\n"
        "orphan = int(mid.stdout.readline())\n"
        "mid.wait()\n"
        "time.sleep(2.5)  # the watchdog notes descendants every second\n"
        "print(plain.pid, bare.pid, orphan, watchdog.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, env=env, start_new_session=True)
    *children, watchdog = [int(p) for p in proc.stdout.readline().split()]
    assert all(_alive(p) for p in children)
    proc.kill()
    proc.wait()
    deadline = time.time() + 15
    while time.time() < deadline and any(_alive(p) for p in [*children, watchdog]):
        time.sleep(0.1)
    assert not [p for p in [*children, watchdog] if _alive(p)]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# ---------------------------------------------------------------- notebook and Ray Jobs


@pytest.mark.slow  # for time (CI runs `pytest -m slow`)
def test_notebook_runs_top_to_bottom_and_submits_a_job(ray_cluster, s3, tmp_path, monkeypatch):
    """examples/score_corpus.ipynb in a real Jupyter kernel, joined to this cluster; its object
    storage cell runs on the test's S3 server (through the AWS environment, as a user's would); its
    last cell submits the same run as a Ray Job through the dashboard and compares the summaries."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    root = REPO
    monkeypatch.setenv("SCORING_S3_BUCKET", s3.bucket("notebook").removeprefix("s3://"))
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster["address"])
    monkeypatch.setenv("SCORING_JOB_ADDRESS", ray_cluster["dashboard"])
    monkeypatch.setenv("PYTHONPATH", str(root))
    nb = nbformat.read(root / "examples" / "score_corpus.ipynb", as_version=4)
    nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = "".join(o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs)
    assert "kept" in outputs and "report.html" in outputs
    assert "set SCORING_JOB_ADDRESS" not in outputs  # the job cell really ran
    assert "set SCORING_S3_BUCKET" not in outputs and "chat rows scored through score_dataset" in outputs
    # the scoring cell's progress is one widget (tqdm.auto with ipywidgets), and Ray Data's own
    # progress and logs stay out of the notebook
    [score_cell] = [c for c in nb.cells if c.cell_type == "code" and "summary = pipeline.score_corpus" in c.source]
    widgets = [o for o in score_cell.outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(widgets) == 1, score_cell.outputs
    streamed = "".join(o.get("text", "") for o in score_cell.outputs if o.get("name") == "stderr")
    assert "logging_progress" not in streamed and "Running Dataset" not in streamed and "INFO" not in streamed


def test_job_failure_is_reported_with_its_logs(ray_cluster, tmp_path):
    from cluster.cli.jobs import submit_scoring_job

    # the job's own error line, from its logs (the input is checked first, before Ray starts)
    with pytest.raises(RuntimeError, match=r"(?s)ended FAILED.*error: .*missing.jsonl: no input files"):
        submit_scoring_job(
            ray_cluster["dashboard"],
            str(tmp_path / "missing.jsonl"),
            str(tmp_path / "out"),
            "/nonexistent-model",
            wait=True,
            timeout_s=300,
            progress=False,
        )


def test_readme_pipeline_example_runs(ray_cluster):
    import re

    readme = (REPO / "docs" / "corpora.md").read_text()  # moved from the README
    section = readme.split("## Scoring corpora (Ray Data)", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    exec(compile(code, "docs/corpora.md (Scoring corpora)", "exec"), {})
