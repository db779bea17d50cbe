"""Metrics and the HTML report over hand-made scored tables; every expected number is worked by hand."""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import re
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from matplotlib.container import BarContainer, ErrorbarContainer

import cluster
from cluster.core.version import code_version, git_commit
from cluster.data.metrics import REWARDBENCH_SECTIONS, Bootstrap, format_summary, summarize
from cluster.data.report import (
    accuracy_plot,
    add_arguments,
    display_text,
    fitted_range,
    load_scored,
    main,
    margin_plot,
    pair_examples,
    score_distribution_plot,
    score_examples,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
INLINE_PNG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def rm_pairs(subsets: list[str | None] | None, margins: list[float | None], wins: list[bool | None]) -> pa.Table:
    """Single-pair reward-model rows; rejected scores are 0 so chosen_score == margin."""
    columns = {
        "chosen_score": pa.array(margins, pa.float64()),
        "rejected_score": pa.array([None if m is None else 0.0 for m in margins], pa.float64()),
        "margin": pa.array(margins, pa.float64()),
        "chosen_wins": pa.array(wins, pa.bool_()),
        "truncated": pa.array([False] * len(margins)),
    }
    if subsets is not None:
        columns = {"subset": pa.array(subsets, pa.string())} | columns
    return pa.table(columns)


def without_ci(entry: dict) -> dict:
    return {key: value for key, value in entry.items() if key != "ci"}


def rewardbench_table() -> pa.Table:
    # alpacaeval-easy: 4 rows, 3 wins (0.75); mt-bench-easy: 2 rows, 0 wins (0.0); hep-python: 1 win.
    subsets = ["alpacaeval-easy"] * 4 + ["mt-bench-easy"] * 2 + ["hep-python"]
    wins = [True, True, True, False, False, False, True]
    return rm_pairs(subsets, [1.0, 1.0, 1.0, -1.0, -1.0, 0.0, 2.0], wins)


def rm_bench_table() -> pa.Table:
    """Two RM-Bench rows (3 chosen x 3 rejected); the matrices are worked out in the test."""
    chosen = [[1.0, 2.0, 3.0], [2.0, 1.0, 3.0]]
    rejected = [[0.5, 1.5, 2.5], [1.0, 1.0, 3.5]]
    margins = [[c - r for c in row_chosen for r in row_rejected] for row_chosen, row_rejected in zip(chosen, rejected)]
    return pa.table(
        {
            "subset": ["chat", "code"],
            "chosen_scores": chosen,
            "rejected_scores": rejected,
            "margins": margins,
            "margin": [sum(row) / 9 for row in margins],
            "win_rate": [sum(m > 0 for m in row) / 9 for row in margins],
            "chosen_wins": [all(m > 0 for m in row) for row in margins],
            "truncated": [False, False],
        }
    )


def critic_table() -> pa.Table:
    probs = [0.9, 0.5, 0.2, 1.0]
    return pa.table(
        {
            "prob_chosen": probs,
            "margin": [math.log(9.0), 0.0, math.log(0.25), math.inf],
            "chosen_wins": [p > 0.5 for p in probs],  # 0.5 is a tie: it loses
            "truncated": [False, True, False, False],
        }
    )


def plain_table() -> pa.Table:
    return pa.table(
        {
            "subset": ["x", "x", "y", "y", "y"],
            "score": pa.array([1.0, 2.0, 3.0, 4.0, None], pa.float64()),
            "truncated": [True, False, True, False, False],
        }
    )


# ---------------------------------------------------------------- metrics


def test_ties_lose_and_accuracy_is_the_share_of_wins():
    # margins 1, 0 (tie), -1, 2: the pipeline marks the tie as a loss, so 2 wins of 4.
    summary = summarize(rm_pairs(None, [1.0, 0.0, -1.0, 2.0], [True, False, False, True]))
    assert (summary["kind"], summary["layout"]) == ("reward", "pairs")
    assert "scorer" not in summary
    assert summary["rows"] == 4 and summary["skipped"] == 0
    assert summary["accuracy"] == pytest.approx(2 / 4)
    assert summary["margin"]["mean"] == pytest.approx((1 + 0 - 1 + 2) / 4)
    assert summary["margin"]["min"] == -1.0 and summary["margin"]["max"] == 2.0
    assert "per_subset" not in summary and "rewardbench" not in summary


def test_per_subset_accuracy_sorted_by_name():
    summary = summarize(rm_pairs(["b", "b", "b", "a"], [1.0, 1.0, -1.0, -1.0], [True, True, False, False]))
    assert list(summary["per_subset"]) == ["a", "b"]
    assert summary["per_subset"]["a"] == {"rows": 1, "accuracy": 0.0, "ci": [0.0, 0.0]}
    assert summary["per_subset"]["b"]["rows"] == 3
    assert summary["per_subset"]["b"]["accuracy"] == pytest.approx(2 / 3)
    assert summary["accuracy"] == pytest.approx(2 / 4)


def test_rewardbench_sections_are_weighted_by_rows_in_the_table():
    sections = summarize(rewardbench_table())["rewardbench"]
    # Chat: (0.75 * 4 + 0.0 * 2) / 6 = 0.5, not the unweighted (0.75 + 0.0) / 2 = 0.375.
    chat = (0.75 * 4 + 0.0 * 2) / (4 + 2)
    reasoning = 1.0
    assert sections == {
        "Chat": pytest.approx(chat),
        "Reasoning": pytest.approx(reasoning),
        "Score": pytest.approx((chat + reasoning) / 2),
    }  # absent sections omitted


def test_no_rewardbench_key_unless_every_subset_is_rewardbench():
    table = rm_pairs(["alpacaeval-easy", "my-own-subset"], [1.0, 1.0], [True, True])
    assert "rewardbench" not in summarize(table)


def test_rm_bench_easy_normal_hard():
    # Row "chat": chosen 1,2,3 vs rejected 0.5,1.5,2.5 -> M = [[1,0,0],[1,1,0],[1,1,1]]:
    #   easy (below diagonal) 3/3, normal 3/3, hard (above) 0/3.
    # Row "code": chosen 2,1,3 vs rejected 1,1,3.5 -> margins [[1,1,-1.5],[0,0,-2.5],[2,2,-0.5]]; the
    #   two ties lose, so M = [[1,1,0],[0,0,0],[1,1,0]]: easy 2/3, normal 1/3, hard 1/3.
    summary = summarize(rm_bench_table())
    easy, normal, hard = (1 + 2 / 3) / 2, (1 + 1 / 3) / 2, (0 + 1 / 3) / 2  # 5/6, 2/3, 1/6: all differ
    assert without_ci(summary["rm_bench"]) == {
        "rows": 2,
        "easy": pytest.approx(easy),
        "normal": pytest.approx(normal),
        "hard": pytest.approx(hard),
        "total": pytest.approx((easy + normal + hard) / 3),
    }
    assert without_ci(summary["rm_bench_per_subset"]["chat"]) == {
        "rows": 1,
        "easy": 1.0,
        "normal": 1.0,
        "hard": 0.0,
        "total": pytest.approx(2 / 3),
    }
    assert without_ci(summary["rm_bench_per_subset"]["code"]) == {
        "rows": 1,
        "easy": pytest.approx(2 / 3),
        "normal": pytest.approx(1 / 3),
        "hard": pytest.approx(1 / 3),
        "total": pytest.approx(4 / 9),
    }
    # One row per subset: every resample is that row, so its intervals are single points.
    assert summary["rm_bench_per_subset"]["chat"]["ci"]["hard"] == [0.0, 0.0]
    # Two rows: a resample is chat twice, code twice, or one each; hard is 0, 1/6 or 1/3 -> [0, 1/3].
    assert summary["rm_bench"]["ci"]["hard"] == [0.0, pytest.approx(1 / 3)]
    assert summary["accuracy"] == pytest.approx((6 / 9 + 4 / 9) / 2)  # mean of the rows' win rates
    # score_stats pools every chosen and rejected score: 6 + 4.5 + 6 + 5.5 = 22 over 12 responses.
    assert summary["score_stats"]["count"] == 12
    assert summary["score_stats"]["mean"] == pytest.approx(22 / 12)
    assert (summary["score_stats"]["min"], summary["score_stats"]["max"]) == (0.5, 3.5)


def test_no_rm_bench_for_other_shapes():
    table = pa.table(
        {
            "chosen_scores": [[1.0, 2.0]],
            "rejected_scores": [[0.0, 3.0]],
            "margins": [[1.0, -2.0, 2.0, -1.0]],
            "margin": [0.0],
            "win_rate": [0.5],
            "chosen_wins": [False],
            "truncated": [False],
        }
    )
    summary = summarize(table)
    assert "rm_bench" not in summary
    assert summary["accuracy"] == 0.5


def test_critic_table():
    summary = summarize(critic_table())
    assert (summary["kind"], summary["layout"]) == ("critic", "pairs")
    assert summary["accuracy"] == pytest.approx(2 / 4)  # 0.9 and 1.0 win; 0.5 ties and loses
    assert summary["truncated"] == 1
    assert "score_stats" not in summary  # a critic gives no per-response score
    margin = summary["margin"]
    assert (margin["count"], margin["nonfinite"]) == (3, 1)  # +inf counted, not averaged
    assert margin["mean"] == pytest.approx((math.log(9.0) + 0.0 + math.log(0.25)) / 3)
    assert margin["max"] == pytest.approx(math.log(9.0))
    json.dumps(summary, allow_nan=False)  # strict JSON: no inf or NaN anywhere


def test_critic_multi_response_rm_bench_from_log_odds():
    # One row, 3x3 log-odds: wins everywhere except the upper-right triangle (indices 1, 2, 5).
    margins = [2.0, -1.0, -1.0, 2.0, 2.0, -1.0, 2.0, 2.0, 2.0]
    table = pa.table(
        {
            "probs_chosen": [[1 / (1 + math.exp(-m)) for m in margins]],
            "margins": [margins],
            "margin": [sum(margins) / 9],
            "win_rate": [6 / 9],
            "chosen_wins": [False],
            "truncated": [False],
        }
    )
    summary = summarize(table)
    assert summary["kind"] == "critic"
    assert without_ci(summary["rm_bench"]) == {
        "rows": 1,
        "easy": 1.0,
        "normal": 1.0,
        "hard": 0.0,
        "total": pytest.approx(2 / 3),
    }


def test_plain_score_stats():
    summary = summarize(plain_table())
    assert (summary["kind"], summary["layout"]) == ("reward", "scores")
    assert "accuracy_ci" not in summary
    assert (summary["rows"], summary["skipped"], summary["truncated"]) == (5, 1, 2)
    stats = summary["score_stats"]  # over 1, 2, 3, 4 (the null row is skipped)
    assert stats["count"] == 4
    assert stats["mean"] == pytest.approx(2.5)
    assert stats["std"] == pytest.approx(math.sqrt((1.5**2 + 0.5**2 + 0.5**2 + 1.5**2) / 4))  # population
    # Linear interpolation: p5 sits 0.05 * 3 = 0.15 of the way along, p95 at 2.85.
    assert (stats["p5"], stats["p50"], stats["p95"]) == (pytest.approx(1.15), 2.5, pytest.approx(3.85))
    assert (stats["min"], stats["max"]) == (1.0, 4.0)
    assert summary["per_subset"]["y"]["count"] == 2
    assert summary["per_subset"]["y"]["mean"] == pytest.approx(3.5)


def test_null_rows_are_skipped():
    table = rm_pairs(["a", "a", "b"], [1.0, None, None], [True, None, None])
    summary = summarize(table)
    assert (summary["rows"], summary["scored"], summary["skipped"]) == (3, 1, 2)
    assert summary["accuracy"] == 1.0  # not 1/3: errored rows are neither wins nor losses
    assert summary["per_subset"] == {
        "a": {"rows": 1, "accuracy": 1.0, "ci": [1.0, 1.0]},
        "b": {"rows": 0, "accuracy": None, "ci": None},
    }
    assert summary["score_stats"]["count"] == 2  # one chosen, one rejected
    json.dumps(summary, allow_nan=False)


def test_format_summary_shows_subsets_and_sections():
    text = format_summary(summarize(rewardbench_table()))
    assert re.search(r"alpacaeval-easy\s+4\s+75\.00", text)
    assert re.search(r"Chat\s+50\.00", text)
    assert re.search(r"Score\s+75\.00", text)


# ---------------------------------------------------------------- bootstrap intervals


def test_bootstrap_interval_of_a_known_share():
    # 1,000 rows, 700 won: the binomial standard error is sqrt(0.7 * 0.3 / 1000) = 0.0145, so the 95%
    # interval is about 0.700 -+ 0.028 = [0.672, 0.728]; a percentile bootstrap lands within ~0.005 of it.
    wins = [True] * 700 + [False] * 300
    summary = summarize(rm_pairs(None, [1.0 if won else -1.0 for won in wins], wins))
    low, high = summary["accuracy_ci"]
    assert 0.662 < low < 0.682 and 0.718 < high < 0.738
    assert summarize(rm_pairs(None, [1.0] * 5, [True] * 5))["accuracy_ci"] == [1.0, 1.0]
    assert summarize(rm_pairs(None, [1.0] * 700 + [-1.0] * 300, wins))["accuracy_ci"] == [low, high]  # seeded
    assert summary["bootstrap"]["resamples"] == 1000 and summary["bootstrap"]["confidence"] == 0.95
    json.dumps(summary, allow_nan=False)


def test_bootstrap_counts_draw_is_the_row_resampling_distribution():
    # Bootstrap.means draws how often each distinct value is picked (multinomial) instead of drawing
    # row indices; the replicate distribution must be the same as plain index resampling.
    rng = np.random.default_rng(7)
    values = rng.choice([0.0, 1 / 3, 2 / 3, 1.0], size=500, p=[0.2, 0.3, 0.3, 0.2])
    ours = Bootstrap(resamples=4000, seed=3).means(values, stream="x")
    plain = values[rng.integers(0, len(values), size=(4000, len(values)))].mean(axis=1)
    assert ours.shape == (4000,)
    assert ours.mean() == pytest.approx(values.mean(), abs=0.002)
    assert ours.std() == pytest.approx(plain.std(), rel=0.08)
    assert ours.std() == pytest.approx(values.std() / math.sqrt(len(values)), rel=0.08)
    columns = Bootstrap(resamples=10, seed=3).means(np.stack([values, 1 - values], axis=1), stream="x")
    assert columns.shape == (10, 2) and np.allclose(columns.sum(axis=1), 1.0)  # rows resampled together


def test_subset_and_section_intervals():
    # A small subset has a wide interval, a large one a narrow one; each holds its accuracy.
    subsets = ["alpacaeval-easy"] * 10 + ["mt-bench-easy"] * 400 + ["hep-python"] * 40
    wins = [i < 5 for i in range(10)] + [i < 300 for i in range(400)] + [i < 30 for i in range(40)]
    summary = summarize(rm_pairs(subsets, [1.0 if won else -1.0 for won in wins], wins))
    small, large = summary["per_subset"]["alpacaeval-easy"], summary["per_subset"]["mt-bench-easy"]
    assert small["ci"][1] - small["ci"][0] > 0.4  # 5 of 10: roughly [0.2, 0.8]
    assert large["ci"][1] - large["ci"][0] < 0.1  # 300 of 400: about 0.75 -+ 0.042
    for entry in summary["per_subset"].values():
        assert entry["ci"][0] <= entry["accuracy"] <= entry["ci"][1]
    sections, intervals = summary["rewardbench"], summary["rewardbench_ci"]
    assert set(intervals) == set(sections) == {"Chat", "Reasoning", "Score"}
    for name, value in sections.items():
        assert intervals[name][0] <= value <= intervals[name][1]
    # Chat weights its subsets by rows (410 rows): its interval is close to the 400-row subset's.
    assert intervals["Chat"][1] - intervals["Chat"][0] < 0.1


def test_intervals_are_fast_on_benchmark_sized_tables():
    rng = np.random.default_rng(0)
    names = [name for section in REWARDBENCH_SECTIONS.values() for name in section]
    margins = rng.normal(0.5, 1.0, 3000)
    rewardbench = rm_pairs(list(rng.choice(names, 3000)), list(margins), list(margins > 0))
    grid = rng.normal(0.3, 1.0, (800, 9))
    rm_bench = pa.table(
        {
            "subset": rng.choice(["chat", "code", "math", "safety"], 800),
            "chosen_scores": list(rng.normal(size=(800, 3))),
            "rejected_scores": list(rng.normal(size=(800, 3))),
            "margins": list(grid),
            "margin": grid.mean(axis=1),
            "win_rate": (grid > 0).mean(axis=1),
            "chosen_wins": (grid > 0).all(axis=1),
        }
    )
    started = time.perf_counter()
    first, second = summarize(rewardbench), summarize(rm_bench)
    assert time.perf_counter() - started < 2.0
    assert len(first["rewardbench_ci"]) == 5 and set(second["rm_bench"]["ci"]) == {"easy", "normal", "hard", "total"}
    json.dumps([first, second], allow_nan=False)


def test_format_summary_shows_intervals():
    text = format_summary(summarize(rewardbench_table()))
    assert re.search(r"accuracy 57\.14 \[\d+\.\d\d, \d+\.\d\d\]", text)  # 4 of 7 rows
    assert "(reward model, pairs;" in text


# ---------------------------------------------------------------- report: plots


def inline_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in INLINE_PNG.findall(page)]


def test_accuracy_plot_has_the_chance_line_and_the_intervals():
    summary = summarize(rewardbench_table())
    axes = accuracy_plot([("rm", summary)]).figure.axes[0]
    chance = [line for line in axes.get_lines() if line.get_label() == "chance (50%)"]
    assert len(chance) == 1 and list(chance[0].get_xdata()) == [50, 50]
    labels = [tick.get_text() for tick in axes.get_yticklabels()]
    assert labels == [
        "all rows",
        "RewardBench Chat",
        "RewardBench Reasoning",
        "RewardBench Score",
        "alpacaeval-easy",
        "hep-python",
        "mt-bench-easy",
    ]
    (bars,) = [container for container in axes.containers if isinstance(container, BarContainer)]
    assert [round(bar.get_width(), 6) for bar in bars] == [round(100 * 4 / 7, 6), 50.0, 100.0, 75.0, 75.0, 100.0, 0.0]
    (errors,) = [container for container in axes.containers if isinstance(container, ErrorbarContainer)]
    segments = errors.lines[2][0].get_segments()  # one horizontal error bar per accuracy, in the bars' order
    low, high = summary["accuracy_ci"]
    assert segments[0][:, 0].tolist() == pytest.approx([100 * low, 100 * high])


def narrow_critic_table(rows: int = 400) -> pa.Table:
    """A tiny random critic: every P(chosen wins) within 0.0005 of 0.5125, log-odds in [0.049, 0.052]."""
    margins = np.linspace(0.049, 0.051, rows) + np.random.default_rng(0).random(rows) * 0.001
    probs = 1 / (1 + np.exp(-margins))
    return pa.table({"prob_chosen": probs, "margin": margins, "chosen_wins": probs > 0.5})


def non_empty_bins(axes) -> int:
    return sum(1 for patch in axes.patches if patch.get_height() > 0)


def test_narrow_band_critic_histograms_fit_their_data():
    scored = narrow_critic_table()
    margins = scored["margin"].to_numpy()
    margin = margin_plot(scored, "critic")
    axes = margin.figure.axes[0]
    low, high = axes.get_xlim()
    assert margins.min() - 0.0002 < low < margins.min() and margins.max() < high < margins.max() + 0.0002
    assert non_empty_bins(axes) > 20
    assert not [line for line in axes.get_lines() if list(line.get_xdata()) == [0.0, 0.0]]  # 0 is off the axis
    assert "the 0 (a tie) line is off it" in margin.caption
    assert axes.get_xlabel() == "critic margin: log-odds that chosen wins"
    verdicts = score_distribution_plot(scored, "critic").figure.axes[0]
    low, high = verdicts.get_xlim()
    assert high - low < 0.002  # not forced onto 0..1
    assert non_empty_bins(verdicts) > 20
    assert verdicts.get_xlabel() == "critic P(chosen wins)"


def test_degenerate_and_near_zero_histogram_ranges():
    ties = margin_plot(rm_pairs(None, [0.0] * 6, [False] * 6), "reward")
    axes = ties.figure.axes[0]
    low, high = axes.get_xlim()
    assert low < 0 < high and high - low < 0.01  # padded around the single value
    assert non_empty_bins(axes) == 1
    assert [line for line in axes.get_lines() if list(line.get_xdata()) == [0.0, 0.0]]
    assert "All values equal 0" in ties.caption
    assert axes.get_xlabel() == "reward margin: chosen score - rejected score"
    # Margins from 0.1 to 1.0: 0 is a ninth of the width away, so the axis takes it in and draws the line.
    near = margin_plot(rm_pairs(None, [0.1, 0.5, 1.0], [True] * 3), "reward").figure.axes[0]
    assert near.get_xlim()[0] < 0 and [line for line in near.get_lines() if list(line.get_xdata()) == [0.0, 0.0]]
    assert fitted_range(np.array([5.0, 5.001]), marker=0.0).marker_shown is False


# ---------------------------------------------------------------- report: pages


def write_output_folder(folder, table: pa.Table, summary_json: dict | None = None) -> str:
    """A scoring output folder as the pipeline lays it out: parts/ shards and summary.json."""
    if "source_file" not in table.column_names:
        table = table.append_column("source_file", pa.array(["data.jsonl"] * table.num_rows)).append_column(
            "source_row", pa.array(range(table.num_rows), pa.int64())
        )
    (folder / "parts").mkdir(parents=True)
    half = table.num_rows // 2
    pq.write_table(table.slice(0, half), folder / "parts" / "part-0001.parquet")
    pq.write_table(table.slice(half), folder / "parts" / "part-0002.parquet")
    if summary_json is not None:
        (folder / "summary.json").write_text(json.dumps(summary_json), encoding="utf-8")
    return str(folder)


RUN_BLOCK = {
    "model": "skywork-rm-8b",
    "model_path": "/models/Skywork-Reward-Llama-3.1-8B",
    "model_kind": "reward",
    "model_revision": "f3c1a2b",
    "input": "/data/rewardbench",
    "inputs": ["filtered.jsonl"],
    "started_at": "2025-03-01T10:00:00+00:00",
    "finished_at": "2025-03-01T10:04:30+00:00",
    "version": {"package": "0.1.0", "git": "abc1234"},
    "options": {"shape": "pairs", "debias": False},
}


def test_report_says_what_was_measured(tmp_path):
    table = (
        rewardbench_table()
        .append_column("source_file", pa.array(["filtered.jsonl"] * 7))
        .append_column("source_row", pa.array(range(7), pa.int64()))
    )
    folder = write_output_folder(
        tmp_path / "out", table, {"model": "skywork-rm-8b", "seconds": 270.5, "errors": 3, "run": RUN_BLOCK}
    )
    run = load_scored(folder)
    page = write_report(run.table, tmp_path / "r.html", title="T", run=run).read_text(encoding="utf-8")
    for fact in (
        "skywork-rm-8b",
        "/models/Skywork-Reward-Llama-3.1-8B",
        "f3c1a2b",
        "/data/rewardbench",
        "1: filtered.jsonl",
        "2025-03-01 10:00:00 UTC to 2025-03-01 10:04:30 UTC",
        "270.5",
        "7 scored, 0 with no result, 3 errors",
        "scoring-cluster 0.1.0, git abc1234",
        "shape=pairs, debias=False",
    ):
        assert html.escape(fact) in page, fact
    assert re.search(r"Report generated \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC by scoring-cluster ", page)
    order = [page.index(heading) for heading in ("What was measured", "Results", "Plots", "Examples")]
    assert order == sorted(order)


def test_report_without_run_metadata_says_not_recorded(tmp_path):
    page = write_report(rewardbench_table(), tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<tr><td>model</td><td>not recorded</td></tr>" in page
    assert "<tr><td>run</td><td>not recorded</td></tr>" in page
    assert "reward (from the table&#x27;s columns)" in page
    assert "57.1 [" in page  # accuracy with its interval


def test_code_version_and_git_commit_outside_a_repository(tmp_path):
    assert git_commit(tmp_path) is None  # not a repository: None, no exception
    assert git_commit(tmp_path / "missing") is None
    version = code_version()
    assert version["package"] == cluster.__version__


def test_report_for_pairs_with_subsets_escapes_names(tmp_path):
    table = rm_pairs(["<script>alert(1)</script>", "plain"], [1.0, -1.0], [True, False])
    table = table.append_column("prompt", pa.array(["<img src=x onerror=alert(2)>", "fine"]))
    out = write_report(table, tmp_path / "nested" / "report.html", title="RM <eval>")
    page = out.read_text(encoding="utf-8")
    pngs = inline_pngs(page)
    assert len(pngs) == 3  # accuracy, score distributions, margins
    assert all(png.startswith(PNG_SIGNATURE) for png in pngs)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(2)&gt;" in page
    assert "<script" not in page and "<img src=x" not in page
    assert "RM &lt;eval&gt;" in page
    assert not re.search(r'(src|href)="(?!data:)', page)  # self-contained: nothing fetched


def test_report_for_multi_response_table(tmp_path):
    page = write_report(rm_bench_table(), tmp_path / "rm.html").read_text(encoding="utf-8")
    assert len(inline_pngs(page)) == 3
    assert "RM-Bench" in page


def test_report_for_critic_with_infinite_margin(tmp_path):
    page = write_report(critic_table(), tmp_path / "critic.html").read_text(encoding="utf-8")
    pngs = inline_pngs(page)
    assert len(pngs) == 3  # accuracy, P(chosen wins), margins
    assert all(png.startswith(PNG_SIGNATURE) for png in pngs)
    assert "P(chosen wins)" in page
    assert "1 margins of +inf are drawn at 2.197" in page  # log(9), the largest finite margin
    assert "Margin statistics (critic log-odds that chosen wins)" in page


def test_report_for_plain_scores(tmp_path):
    page = write_report(plain_table(), tmp_path / "scores.html").read_text(encoding="utf-8")
    assert len(inline_pngs(page)) == 2  # histogram and per-subset boxplots
    assert "Highest scores" in page and "Lowest scores" in page


# ---------------------------------------------------------------- report: examples


def test_examples_are_the_most_confident_wins_and_losses():
    margins = [0.5, 3.0, -2.0, 1.0, -0.1, -4.0, 2.0]
    table = rm_pairs([f"s{i}" for i in range(7)], margins, [m > 0 for m in margins])
    table = table.append_column("prompt", pa.array([f"prompt {i}" for i in range(7)]))
    shown = pair_examples(table, "reward", count=2)
    wins, losses = shown["Most confident wins"], shown["Most confident losses"]
    assert [example.texts["prompt"] for example in wins] == ["prompt 1", "prompt 6"]  # margins 3.0, 2.0
    assert [example.texts["prompt"] for example in losses] == ["prompt 5", "prompt 2"]  # -4.0, -2.0
    assert wins[0].values[:3] == ["margin 3", "chosen score 3", "rejected score 0"]
    assert "subset s1" in wins[0].values


def test_examples_render_message_lists_and_several_responses():
    long_answer = "word " * 200
    table = rm_bench_table().append_column(
        "prompt",
        pa.array(
            [
                [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <there>"}],
                [{"role": "user", "content": "plain"}],
            ]
        ),
    )
    table = table.append_column("chosen", pa.array([["c1", "c2", long_answer], ["a", "b", "c"]])).append_column(
        "rejected", pa.array([["r1", "r2", "r3"], ["x", "y", "z"]])
    )
    shown = pair_examples(table.filter(pa.array([True, False])), "reward", count=1)
    (win,) = shown["Most confident losses"]  # the row's chosen_wins is False (one of its comparisons lost)
    assert win.texts["prompt"] == "system: Be brief.\nuser: Hi <there>"
    assert win.texts["chosen"].startswith("[1] c1\n[2] c2\n[3] word word")
    assert win.texts["chosen"].endswith("[999 characters]")  # shortened, with the full length named
    assert any(value.startswith("chosen scores [1, 2, 3]") for value in win.values)
    assert "win rate 67%" in win.values
    assert (
        display_text([[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]])
        == "[1] user: q\nassistant: a"
    )


def test_score_examples_highest_and_lowest():
    table = pa.table(
        {
            "conversations": [[{"role": "user", "content": f"q{i}"}] for i in range(4)],
            "score": pa.array([0.5, None, 2.0, -1.0], pa.float64()),
        }
    )
    shown = score_examples(table.filter(pa.array([True, False, True, True])), count=1)
    assert shown["Highest scores"][0].texts["conversations"] == "user: q2"
    assert shown["Lowest scores"][0].texts["conversations"] == "user: q3"


# ---------------------------------------------------------------- report: CLI


def test_report_cli_main_on_an_output_folder(tmp_path, capsys):
    folder = write_output_folder(tmp_path / "scored", rewardbench_table(), {"run": RUN_BLOCK})
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "cli.html"
    assert main(parser.parse_args([folder, "--out", str(out), "--title", "T"])) == 0
    page = out.read_text(encoding="utf-8")
    assert "<title>T</title>" in page and "skywork-rm-8b" in page
    printed = capsys.readouterr().out
    assert f"report written to {out.resolve()}" in printed
    assert "Chat" in printed
