"""A data curator's first hour with the scoring CLI and pipeline: real datasets score as they are
(columns named like ours are kept, moved aside), a run commits its work in pieces of bounded
seconds, an interrupt says what is written and how to resume, progress is one display, and the
user's mistakes (a wrong model path, a hub id with no network) are one line, said at once."""

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
import pyarrow.compute  # noqa: F401 (pa.compute)
import pyarrow.parquet as pq
import pytest
from helpers import REPO
from test_pipeline import BAD, FAST, GOOD, PROMPTS, close, turn, write

from cluster import ModelLoadError, ModelSpec
from cluster.data.corpus import OUTPUT_COLUMNS, STAGE_COLUMNS, aside, move_aside, moved_columns
from cluster.data.pipeline import read_scores, score_corpus, score_dataset
from cluster.data.progress import RunProgress

ray = pytest.importorskip("ray")
ROOT = REPO
RM_BENCH = ROOT.parent / "shared" / "data" / "rm-bench"  # optional: the real files, when present


def cli_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


# ---------------------------------------------------------------- columns named like ours


def test_aside_is_one_to_one_and_leaves_other_names_alone():
    names = [
        *OUTPUT_COLUMNS,
        *STAGE_COLUMNS,
        "input_error",
        "input_input_error",
        "id",
        "subset",
        "prompt",
        "chosen",
        "rejected",
        "input_",
        "input_x",
        "errors",
        "Score",
    ]
    moved = [aside(n) for n in names]
    assert len(set(moved)) == len(names)  # no two input columns end up under one name
    assert not set(moved) & (set(OUTPUT_COLUMNS) | set(STAGE_COLUMNS))  # and none under one of ours
    assert [aside(n) for n in ("id", "subset", "prompt", "chosen", "input_x", "errors", "Score")] == [
        "id",
        "subset",
        "prompt",
        "chosen",
        "input_x",
        "errors",
        "Score",
    ]
    assert aside("error") == "input_error" and aside("input_error") == "input_input_error"
    assert moved_columns([aside(n) for n in ("error", "input_error", "id")]) == {
        "error": "input_error",
        "input_error": "input_input_error",
    }
    assert move_aside({"error": 1, "id": 2}) == {"input_error": 1, "id": 2}


def clashing_rows(n: int) -> list[dict]:
    """Pairs whose other columns carry every name the pipeline writes or uses between its stages,
    and the name the first of them moves to, each with a value that says which row it came from."""
    extra = [*OUTPUT_COLUMNS, *STAGE_COLUMNS, "input_error"]
    return [
        {
            "prompt": PROMPTS[i % 8],
            "chosen": GOOD[i % 8],
            "rejected": BAD[(i + 3) % 8],
            **{name: f"{name}-{i}" for name in extra},
        }
        for i in range(n)
    ]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_a_file_whose_columns_clash_with_every_output_name_scores_unchanged(ray_cluster, tmp_path, rm_path, rm, fmt):
    rows = clashing_rows(7)
    corpus = write(tmp_path / f"clash.{fmt}", rows)
    summary = score_corpus(corpus, tmp_path / "out", rm_path, on_error="skip", **FAST)
    table = read_scores(tmp_path / "out")
    assert summary["errors"] == 0 and table.num_rows == 7
    for name in rows[0]:  # every input column is there, with its own values, under its name or moved aside
        assert table[aside(name)].to_pylist() == [r[name] for r in rows], name
    assert summary["moved_columns"] == {n: aside(n) for n in rows[0] if aside(n) != n}
    assert summary["moved_columns"]["error"] == "input_error"
    # and the results are the model's own
    chosen = rm.score([turn(r["prompt"], r["chosen"]) for r in rows])
    rejected = rm.score([turn(r["prompt"], r["rejected"]) for r in rows])
    assert close(table["chosen_score"].to_pylist(), chosen)
    assert close(table["margin"].to_pylist(), [c - r for c, r in zip(chosen, rejected)])
    assert table["source_row"].to_pylist() == list(range(7))


def test_score_dataset_moves_clashing_columns_aside_too(ray_cluster, rm_path, rm):
    rows = [{"conversations": turn(PROMPTS[i], GOOD[i]), "score": i, "error": "e"} for i in range(4)]
    out = score_dataset(ray.data.from_items(rows), rm_path, **FAST).to_pandas().sort_values("input_score")
    assert list(out["input_score"]) == [0, 1, 2, 3] and set(out["input_error"]) == {"e"}
    assert close(list(out["score"]), rm.score([r["conversations"] for r in rows]))


def rm_bench_rows(n: int) -> list[dict]:
    """RM-Bench's record shape (THU-KEG/RM-Bench data/*_filtered.json): three responses per side,
    and its own `error` / `error_key` columns."""
    return [
        {
            "id": i,
            "subset": "alpacaeval",
            "prompt": PROMPTS[i % 8],
            "chosen": [GOOD[(i + k) % 8] for k in range(3)],
            "rejected": [BAD[(i + k) % 8] for k in range(3)],
            "error_key": "k",
            "error": f"the rejected answers' error, row {i}",
        }
        for i in range(n)
    ]


def rewardbench_rows(n: int) -> list[dict]:
    """RewardBench's filtered split (allenai/reward-bench): prompt, chosen, rejected strings, the
    models that wrote them, a subset name and an integer id."""
    subsets = ["alpacaeval-easy", "llmbar-natural", "donotanswer", "math-prm"]
    return [
        {
            "prompt": PROMPTS[i % 8],
            "chosen": GOOD[i % 8],
            "chosen_model": "gpt-4",
            "rejected": BAD[i % 8],
            "rejected_model": "llama-7b",
            "subset": subsets[i % 4],
            "id": 1000 + i,
        }
        for i in range(n)
    ]


def test_rm_bench_and_rewardbench_files_score_as_they_are(ray_cluster, tmp_path, rm_path, rm):
    """A folder of RM-Bench files (its record shape; with ../shared, the published files too, a few
    records each, byte for byte) and a RewardBench file, each scored in one run as it is."""
    corpora = {"rm-bench": {"chat.json": rm_bench_rows(5)}, "rewardbench": {"filtered.jsonl": rewardbench_rows(8)}}
    if RM_BENCH.is_dir():
        for path in sorted(RM_BENCH.glob("*.json")):
            corpora["rm-bench"][f"published/{path.name}"] = json.loads(path.read_text())[:3]
    for corpus, files in corpora.items():
        for rel, rows in files.items():
            write(tmp_path / corpus / rel, rows)
        summary = score_corpus(tmp_path / corpus, tmp_path / f"{corpus}-scores", rm_path, **FAST)
        table = read_scores(tmp_path / f"{corpus}-scores")
        assert summary["errors"] == 0 and table.num_rows == sum(len(rows) for rows in files.values()), corpus
        has_error_column = any("error" in rows[0] for rows in files.values())
        assert summary["moved_columns"] == ({"error": "input_error"} if has_error_column else {}), corpus
        assert ("rm_bench" if corpus == "rm-bench" else "rewardbench") in summary
        for rel, rows in files.items():
            mine = table.filter(pa.compute.equal(table["source_file"], rel))
            for name in rows[0]:  # every column of every file, its values untouched
                assert mine[aside(name)].to_pylist() == [r[name] for r in rows], (rel, name)
            first = rows[0]
            chosen = first["chosen"] if isinstance(first["chosen"], list) else [first["chosen"]]
            want = rm.score([turn(first["prompt"], c) for c in chosen])
            got = (
                mine["chosen_scores"][0].as_py()
                if "chosen_scores" in mine.column_names
                else [mine["chosen_score"][0].as_py()]
            )
            assert close(got, want), rel


# ---------------------------------------------------------------- work at risk, interrupts


def test_a_batch_is_committed_in_pieces_of_about_flush_s(ray_cluster, tmp_path, rm_path, rm):
    """One Ray batch holding the whole corpus is still written as it goes: pieces of about
    flush_s seconds of work (the first one small, to measure), so an interrupt loses one piece."""
    n = 120
    rows = [
        {"id": i, "prompt": " ".join(PROMPTS) * (2 + i % 3), "response": GOOD[(i * 3) % 8] * 3} for i in range(n)
    ]  # ~200-400 tokens a row: the first piece (1,024 tokens) is a few rows
    corpus = write(tmp_path / "one-batch.jsonl", rows)
    opts = {**FAST, "batch_rows": n, "rows_per_shard": n, "flush_s": 0.05}
    score_corpus(corpus, tmp_path / "out", rm_path, **opts)
    parts = sorted((tmp_path / "out" / "parts").glob("part-*.parquet"), key=lambda p: p.stat().st_mtime_ns)
    sizes = [pq.ParquetFile(p).metadata.num_rows for p in parts]
    assert sum(sizes) == n and len(parts) >= 4, sizes  # one batch, many commits
    assert sizes[0] < n // 4  # the first piece only measures the speed
    table = read_scores(tmp_path / "out")
    assert table["source_row"].to_pylist() == list(range(n))
    assert close(table["score"].to_pylist(), rm.score([turn(r["prompt"], r["response"]) for r in rows]))


def test_pieces_hold_flush_s_seconds_of_work_at_the_measured_speed():
    from cluster.data.pipeline import FIRST_PIECE_TOKENS, _ScoreStage

    stage = _ScoreStage("reward", {"shape": "conversations", "kind": "reward"}, False, False, flush_s=2.0)
    batch = pa.table({"_ids": [[[1] * 300, [2] * 200]] * 10})  # 10 rows of 500 tokens
    assert FIRST_PIECE_TOKENS == 1024  # not measured yet: pieces of 1,024 tokens or just over, 3 rows
    assert [p.num_rows for p in stage._pieces(batch)] == [3, 3, 3, 1]
    stage.tokens_per_s = 1000.0  # measured: 2 s of work is 2,000 tokens, 4 rows
    assert [p.num_rows for p in stage._pieces(batch)] == [4, 4, 2]
    stage.tokens_per_s = 1e9  # a fast GPU: the whole batch at once
    assert [p.num_rows for p in stage._pieces(batch)] == [10]


@pytest.mark.reliability  # a CLI run interrupted and run again: about a minute
def test_ctrl_c_says_what_is_written_and_how_to_resume(ray_cluster, tmp_path, rm_path, rm):
    """Ctrl-C mid-run: exit 130, one line naming the rows written and the way to resume, no
    traceback; those rows are in the folder, and the same command finishes the rest."""
    n = 1200  # long enough (tens of seconds on a fast machine) for the interrupt to land mid-run
    rows = [{"id": i, "prompt": PROMPTS[i % 8] * (1 + i % 3), "response": GOOD[(i * 5) % 8]} for i in range(n)]
    corpus = write(tmp_path / "big.jsonl", rows)
    out = tmp_path / "out"
    argv = [
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
        "--batch-rows",
        "8",
        "--rows-per-shard",
        "50",
        "--flush-s",
        "0.2",
        "--num-cpus",
        "0.5",
        "--num-gpus",
        "0",
        "--tokenizer-num-cpus",
        "0.25",
    ]
    # SIGINT as a terminal's foreground command has it, even where this test's own runner ignores
    # it (a CI job started in the background does; Python then installs no KeyboardInterrupt)
    proc = subprocess.Popen(
        argv,
        env=cli_env(),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 240
    while time.time() < deadline and not list((out / "parts").glob("part-*.parquet")):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    [said] = [line for line in err.splitlines() if line.startswith("interrupted:")]
    written = read_scores(out).num_rows
    assert 0 < written < n, "the interrupt was meant to land mid-run"
    # counted once Ray was down: every row it names is in the folder (an actor of this attached
    # cluster may commit its piece in flight as its job ends; that row is kept too, not lost)
    said_written = int(re.match(rf"interrupted: (\d+) of this run's {n} rows are safely written", said).group(1))
    assert 0 < said_written <= written and "run the same command again to resume" in said
    assert len(err.splitlines()) <= 3, err  # the line, and where Ray's own messages went

    rerun = subprocess.run(argv, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    table = read_scores(out)
    assert table["source_row"].to_pylist() == list(range(n))
    assert close(table["score"].to_pylist(), rm.score([turn(r["prompt"], r["response"]) for r in rows]))


def test_read_scores_keeps_one_copy_of_a_row_scored_twice(tmp_path):
    """A model actor that died after committing a piece has its batch run again by Ray Data, cut
    into other pieces: a row can then sit in two shards. The results hold it once."""
    parts = tmp_path / "parts"
    parts.mkdir()
    rows = [{"source_file": "a.jsonl", "source_row": i, "score": float(i)} for i in range(6)]
    pq.write_table(pa.Table.from_pylist(rows[:4]), parts / "part-1.parquet")
    pq.write_table(pa.Table.from_pylist(rows[2:]), parts / "part-2.parquet")
    table = read_scores(tmp_path)
    assert table["source_row"].to_pylist() == list(range(6)) and table["score"].to_pylist() == [0, 1, 2, 3, 4, 5]


# ---------------------------------------------------------------- progress


class Sink:
    def __init__(self, tty: bool):
        self.text, self.tty = [], tty

    def write(self, s: str) -> int:
        self.text.append(s)
        return len(s)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return self.tty


def commit(parts: Path, name: str, n: int) -> None:
    pq.write_table(pa.table({"source_row": list(range(n))}), parts / f"part-{name}.parquet")


def test_progress_not_on_a_terminal_is_a_few_plain_lines(tmp_path):
    parts = tmp_path / "parts"
    parts.mkdir()
    commit(parts, "before", 5)  # a previous run's rows are not this run's progress
    sink = Sink(tty=False)
    with RunProgress(parts, 40, file=sink, interval_s=0.6) as progress:
        for i in range(4):
            commit(parts, str(i), 10)
            time.sleep(0.7)
    lines = "".join(sink.text).splitlines()
    assert progress.written == 40
    assert 2 <= len(lines) <= 6, lines  # a line per interval at most, and the last
    assert lines[-1].startswith("rows written: 40/40 (100%)")
    assert all(line.startswith("rows written: ") and "\r" not in line for line in lines)


def test_progress_on_a_terminal_is_one_live_bar(tmp_path):
    parts = tmp_path / "parts"
    parts.mkdir()
    sink = Sink(tty=True)
    with RunProgress(parts, 20, file=sink) as progress:
        commit(parts, "a", 12)
        time.sleep(0.8)
        commit(parts, "b", 8)
    text = "".join(sink.text)
    assert progress._bar is not None and progress.written == 20
    assert "\r" in text and "20/20" in text and text.count("\n") <= 1  # redrawn in place: one line


def test_progress_off_prints_nothing(tmp_path):
    (tmp_path / "parts").mkdir()
    sink = Sink(tty=True)
    with RunProgress(tmp_path / "parts", 3, enabled=False, file=sink):
        commit(tmp_path / "parts", "a", 3)
    assert sink.text == []


# ---------------------------------------------------------------- the user's mistakes, said at once


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cluster", *args], env=env or cli_env(), capture_output=True, text=True, timeout=120
    )


def test_a_wrong_model_path_is_one_line_naming_the_path_before_ray_starts(tmp_path):
    corpus = write(tmp_path / "c.jsonl", [{"prompt": "p", "response": "r"}])
    started = time.monotonic()
    done = run_cli("score", str(corpus), str(tmp_path / "out"), "--model", str(tmp_path / "no-such-model"))
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: model: {str(tmp_path / 'no-such-model')!r} does not exist"
    assert "probe" not in done.stderr and not (tmp_path / "out").exists()
    assert time.monotonic() - started < 60  # no cluster was started for it (that alone takes ~15 s)


def test_a_hub_id_without_network_fails_at_once_naming_hf_hub_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from cluster.engine import loading

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: refused at once
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    spec = ModelSpec(name="rm", path="Skywork/Skywork-Reward-Llama-3.1-8B", kind="reward")
    started = time.monotonic()
    with pytest.raises(ModelLoadError, match=r"hub \(http://127.0.0.1:9\) cannot be reached.*HF_HUB_OFFLINE=1"):
        loading.load_config(spec)
    assert time.monotonic() - started < loading.HUB_PROBE_TIMEOUT_S + 5
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="not in the Hugging Face cache, and HF_HUB_OFFLINE is set"):
        loading.load_config(spec)


def test_ray_data_is_quiet_during_a_run_and_as_it_was_after():
    import logging

    from ray.data import DataContext

    from cluster.data.pipeline import quiet_ray_data

    context, logger = DataContext.get_current(), logging.getLogger("ray.data")
    before = (context.enable_progress_bars, context.print_on_execution_start, logger.level)
    with quiet_ray_data(show=False):
        assert not context.enable_progress_bars and not context.print_on_execution_start
        assert logger.getEffectiveLevel() == logging.CRITICAL
    assert (context.enable_progress_bars, context.print_on_execution_start, logger.level) == before
    with quiet_ray_data(show=True):  # --verbose: Ray Data as it is
        assert (context.enable_progress_bars, context.print_on_execution_start) == before[:2]
