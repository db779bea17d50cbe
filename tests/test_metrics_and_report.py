"""Metrics and the HTML report over hand-made scored tables; every expected number is worked by hand."""

from __future__ import annotations

import argparse
import base64
import json
import math
import re
import sys
import types

import pyarrow as pa
import pytest

from cluster.data.metrics import format_summary, summarize
from cluster.data.report import add_arguments, main, write_report

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
    return pa.table({
        "subset": ["chat", "code"],
        "chosen_scores": chosen,
        "rejected_scores": rejected,
        "margins": margins,
        "margin": [sum(row) / 9 for row in margins],
        "win_rate": [sum(m > 0 for m in row) / 9 for row in margins],
        "chosen_wins": [all(m > 0 for m in row) for row in margins],
        "truncated": [False, False],
    })


def critic_table() -> pa.Table:
    probs = [0.9, 0.5, 0.2, 1.0]
    return pa.table({
        "prob_chosen": probs,
        "margin": [math.log(9.0), 0.0, math.log(0.25), math.inf],
        "chosen_wins": [p > 0.5 for p in probs],  # 0.5 is a tie: it loses
        "truncated": [False, True, False, False],
    })


def plain_table() -> pa.Table:
    return pa.table({
        "subset": ["x", "x", "y", "y", "y"],
        "score": pa.array([1.0, 2.0, 3.0, 4.0, None], pa.float64()),
        "truncated": [True, False, True, False, False],
    })


# ---------------------------------------------------------------- metrics


def test_ties_lose_and_accuracy_is_the_share_of_wins():
    # margins 1, 0 (tie), -1, 2: the pipeline marks the tie as a loss, so 2 wins of 4.
    summary = summarize(rm_pairs(None, [1.0, 0.0, -1.0, 2.0], [True, False, False, True]))
    assert summary["kind"] == "pairs"
    assert summary["scorer"] == "reward_model"
    assert summary["rows"] == 4 and summary["skipped"] == 0
    assert summary["accuracy"] == pytest.approx(2 / 4)
    assert summary["margin"]["mean"] == pytest.approx((1 + 0 - 1 + 2) / 4)
    assert summary["margin"]["min"] == -1.0 and summary["margin"]["max"] == 2.0
    assert "per_subset" not in summary and "rewardbench" not in summary


def test_per_subset_accuracy_sorted_by_name():
    summary = summarize(rm_pairs(["b", "b", "b", "a"], [1.0, 1.0, -1.0, -1.0], [True, True, False, False]))
    assert list(summary["per_subset"]) == ["a", "b"]
    assert summary["per_subset"]["a"] == {"rows": 1, "accuracy": 0.0}
    assert summary["per_subset"]["b"] == {"rows": 3, "accuracy": pytest.approx(2 / 3)}
    assert summary["accuracy"] == pytest.approx(2 / 4)


def test_rewardbench_sections_are_weighted_by_rows_in_the_table():
    sections = summarize(rewardbench_table())["rewardbench"]
    # Chat: (0.75 * 4 + 0.0 * 2) / 6 = 0.5, not the unweighted (0.75 + 0.0) / 2 = 0.375.
    chat = (0.75 * 4 + 0.0 * 2) / (4 + 2)
    reasoning = 1.0
    assert sections == {"Chat": pytest.approx(chat), "Reasoning": pytest.approx(reasoning),
                        "Score": pytest.approx((chat + reasoning) / 2)}  # absent sections omitted


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
    assert summary["rm_bench"] == {
        "rows": 2, "easy": pytest.approx(easy), "normal": pytest.approx(normal), "hard": pytest.approx(hard),
        "total": pytest.approx((easy + normal + hard) / 3),
    }
    assert summary["rm_bench_per_subset"]["chat"] == {
        "rows": 1, "easy": 1.0, "normal": 1.0, "hard": 0.0, "total": pytest.approx(2 / 3)}
    assert summary["rm_bench_per_subset"]["code"] == {
        "rows": 1, "easy": pytest.approx(2 / 3), "normal": pytest.approx(1 / 3), "hard": pytest.approx(1 / 3),
        "total": pytest.approx(4 / 9)}
    assert summary["accuracy"] == pytest.approx((6 / 9 + 4 / 9) / 2)  # mean of the rows' win rates
    # score_stats pools every chosen and rejected score: 6 + 4.5 + 6 + 5.5 = 22 over 12 responses.
    assert summary["score_stats"]["count"] == 12
    assert summary["score_stats"]["mean"] == pytest.approx(22 / 12)
    assert (summary["score_stats"]["min"], summary["score_stats"]["max"]) == (0.5, 3.5)


def test_no_rm_bench_for_other_shapes():
    table = pa.table({"chosen_scores": [[1.0, 2.0]], "rejected_scores": [[0.0, 3.0]],
                      "margins": [[1.0, -2.0, 2.0, -1.0]], "margin": [0.0], "win_rate": [0.5],
                      "chosen_wins": [False], "truncated": [False]})
    summary = summarize(table)
    assert "rm_bench" not in summary
    assert summary["accuracy"] == 0.5


def test_critic_table():
    summary = summarize(critic_table())
    assert summary["scorer"] == "critic"
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
    table = pa.table({"probs_chosen": [[1 / (1 + math.exp(-m)) for m in margins]], "margins": [margins],
                      "margin": [sum(margins) / 9], "win_rate": [6 / 9], "chosen_wins": [False],
                      "truncated": [False]})
    summary = summarize(table)
    assert summary["rm_bench"] == {"rows": 1, "easy": 1.0, "normal": 1.0, "hard": 0.0,
                                   "total": pytest.approx(2 / 3)}


def test_plain_score_stats():
    summary = summarize(plain_table())
    assert summary["kind"] == "scores"
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
    assert summary["per_subset"] == {"a": {"rows": 1, "accuracy": 1.0}, "b": {"rows": 0, "accuracy": None}}
    assert summary["score_stats"]["count"] == 2  # one chosen, one rejected
    json.dumps(summary, allow_nan=False)


def test_format_summary_shows_subsets_and_sections():
    text = format_summary(summarize(rewardbench_table()))
    assert re.search(r"alpacaeval-easy\s+4\s+75\.00", text)
    assert re.search(r"Chat\s+50\.00", text)
    assert re.search(r"Score\s+75\.00", text)


# ---------------------------------------------------------------- report


def inline_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in INLINE_PNG.findall(page)]


def test_report_for_pairs_with_subsets_escapes_names(tmp_path):
    table = rm_pairs(["<script>alert(1)</script>", "plain"], [1.0, -1.0], [True, False])
    out = write_report(table, tmp_path / "nested" / "report.html", title="RM <eval>")
    page = out.read_text(encoding="utf-8")
    pngs = inline_pngs(page)
    assert len(pngs) == 3  # score distributions, margins, accuracy per subset
    assert all(png.startswith(PNG_SIGNATURE) for png in pngs)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in page
    assert "RM &lt;eval&gt;" in page
    assert not re.search(r'(src|href)="(?!data:)', page)  # self-contained: nothing fetched


def test_report_for_multi_response_table(tmp_path):
    page = write_report(rm_bench_table(), tmp_path / "rm.html").read_text(encoding="utf-8")
    assert len(inline_pngs(page)) == 3
    assert "RM-Bench" in page


def test_report_for_critic_with_infinite_margin(tmp_path):
    page = write_report(critic_table(), tmp_path / "critic.html").read_text(encoding="utf-8")
    pngs = inline_pngs(page)
    assert len(pngs) == 2  # P(chosen wins) and margins; no subset column
    assert all(png.startswith(PNG_SIGNATURE) for png in pngs)
    assert "P(chosen wins)" in page
    assert "1 margins of +inf are drawn at 2.197" in page  # log(9), the largest finite margin


def test_report_for_plain_scores(tmp_path):
    page = write_report(plain_table(), tmp_path / "scores.html").read_text(encoding="utf-8")
    assert len(inline_pngs(page)) == 2  # histogram and per-subset boxplots


def test_report_cli_main_with_a_stand_in_reader(tmp_path, monkeypatch, capsys):
    stand_in = types.ModuleType("cluster.data.pipeline")
    stand_in.read_scores = lambda path: rewardbench_table()
    monkeypatch.setitem(sys.modules, "cluster.data.pipeline", stand_in)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "cli.html"
    assert main(parser.parse_args(["scored-folder", "--out", str(out), "--title", "T"])) == 0
    assert "<title>T</title>" in out.read_text(encoding="utf-8")
    printed = capsys.readouterr().out
    assert f"report written to {out.resolve()}" in printed
    assert "Chat" in printed
