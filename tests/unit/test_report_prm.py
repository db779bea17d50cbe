"""The report of a process reward model's output (step rewards) and of a pointwise judge's (ratings),
alone and compared, over output folders written here as the pipeline lays them out (parts/ shards,
summary.json, run.json, errors.jsonl). Expected numbers are computed here from the rows, apart from
the report's code."""

from __future__ import annotations

import base64
import html
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.data.report import (
    compare,
    load_scored,
    prm_solutions,
    rating_plot,
    step_count_plot,
    step_histogram_plot,
    step_index_plot,
    write_comparison,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
INLINE_PNG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')

# Twelve solutions: step rewards chosen so that the weakest step falls first, in the middle and
# last, with ties, one-step solutions, and a long solution (8 steps) only one reaches.
STEP_REWARDS = [
    [0.9, 0.8, 0.7],
    [0.1, 0.9, 0.95],  # weakest first
    [0.6, 0.05, 0.7, 0.8],  # middle; the lowest of all
    [0.99],  # one step
    [0.7, 0.7, 0.3],  # last
    [0.5, 0.4, 0.4, 0.9],  # a tie: the first of the two (index 1, middle)
    [0.85, 0.15],  # last
    [0.95, 0.9, 0.92, 0.91, 0.6, 0.93, 0.97, 0.99],  # middle, 8 steps
    [0.3],  # one step
    [0.55, 0.65, 0.75],  # first
    [0.2, 0.25, 0.19, 0.8, 0.9],  # middle
    [0.81, 0.82],  # first
]


def prm_rows(rewards: list[list[float] | None], errors: dict[int, str] | None = None) -> pa.Table:
    """PRM "scores" rows as the pipeline writes them; rows in `errors` failed (null results, an error)."""
    errors = errors or {}
    ok = [i not in errors and r is not None for i, r in enumerate(rewards)]
    steps = [[f"step {j + 1} of solution {i}" for j in range(len(r or []))] for i, r in enumerate(rewards)]

    def per_row(make, kind):
        return pa.array([make(r) if good and r else None for r, good in zip(rewards, ok)], kind)

    return pa.table(
        {
            "prompt": [f"problem {i}" for i in range(len(rewards))],
            "steps": pa.array(steps, pa.list_(pa.string())),
            "score": per_row(min, pa.float64()),
            "step_rewards": pa.array([r if good else None for r, good in zip(rewards, ok)], pa.list_(pa.float64())),
            "num_steps": pa.array([len(r) if good else None for r, good in zip(rewards, ok)], pa.int64()),
            "weakest_step": per_row(lambda r: int(np.argmin(r)), pa.int64()),
            "weakest_step_reward": per_row(min, pa.float64()),
            "truncated": [False] * len(rewards),
            "num_tokens": pa.array([10 * len(r or []) for r in rewards], pa.int64()),
            "error": pa.array([errors.get(i) for i in range(len(rewards))], pa.string()),
            "source_file": ["math.jsonl"] * len(rewards),
            "source_row": pa.array(range(len(rewards)), pa.int64()),
        }
    )


def output_folder(
    path,
    table: pa.Table,
    kind: str,
    layout: str,
    model: str = "qwen-prm",
    identity: dict | None = None,
    errors: list[dict] | None = None,
    extra: dict | None = None,
) -> str:
    """parts/ (two shards), summary.json, run.json and errors.jsonl, as `score` leaves them."""
    (path / "parts").mkdir(parents=True)
    half = table.num_rows // 2
    pq.write_table(table.slice(0, half), path / "parts" / "part-a.parquet")
    pq.write_table(table.slice(half), path / "parts" / "part-b.parquet")
    summary = {
        "model": model,
        "kind": kind,
        "layout": layout,
        "seconds": 2.0,
        "errors": len(errors or []),
        "run": {"model": model, "model_kind": kind, "inputs": ["math.jsonl"]},
    } | (extra or {})
    (path / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    (path / "run.json").write_text(json.dumps({"model": {"kind": kind, **(identity or {})}}), encoding="utf-8")
    if errors:
        (path / "errors.jsonl").write_text("".join(json.dumps(e) + "\n" for e in errors), encoding="utf-8")
    return str(path)


def inline_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in INLINE_PNG.findall(page)]


def table_cells(page: str, heading: str) -> dict[str, list[str]]:
    """The rows of the first table after <h3>heading</h3> (or <h2>), as {first cell: the other cells}."""
    start = re.search(rf"<h[23]>{re.escape(heading)}</h[23]>", page).end()
    body = page[start : page.index("</table>", start)]
    rows = {}
    for row in re.findall(r"<tr>(.*?)</tr>", body, flags=re.S):
        cells = [html.unescape(cell) for cell in re.findall(r"<t[dh]>(.*?)</t[dh]>", row)]
        rows[cells[0]] = cells[1:]
    return rows


def g4(value: float) -> str:
    return f"{value:.4g}"


def pct(share: float) -> str:
    return f"{100 * share:.1f}"


def expected_table(solutions: list[list[float]]) -> dict[str, str]:
    """The step-reward table's numbers, worked from the lists directly."""
    steps = [x for s in solutions for x in s]
    kept = [s for s in solutions if s]
    weakest = [min(s) for s in kept]
    where = [s.index(min(s)) for s in kept]
    n = len(kept)
    return {
        "solutions": str(len(solutions)),
        "steps": str(len(steps)),
        "mean steps per solution": g4(sum(len(s) for s in solutions) / len(solutions)),
        "mean step reward": g4(sum(steps) / len(steps)),
        "median step reward": g4(float(np.median(steps))),
        "mean weakest-step reward": g4(sum(weakest) / n),
        "weakest step < 0.2 (% of solutions)": pct(sum(w < 0.2 for w in weakest) / n),
        "weakest step < 0.5 (% of solutions)": pct(sum(w < 0.5 for w in weakest) / n),
        "weakest step < 0.8 (% of solutions)": pct(sum(w < 0.8 for w in weakest) / n),
        "weakest step is the first (%)": pct(sum(w == 0 and len(s) > 1 for w, s in zip(where, kept)) / n),
        "weakest step is the middle (%)": pct(sum(0 < w < len(s) - 1 for w, s in zip(where, kept)) / n),
        "weakest step is the last (%)": pct(sum(w == len(s) - 1 and len(s) > 1 for w, s in zip(where, kept)) / n),
        "solutions of one step (%)": pct(sum(len(s) == 1 for s in kept) / n),
    }


# ---------------------------------------------------------------- one PRM output, scores layout


@pytest.fixture
def prm_folder(tmp_path):
    rewards = STEP_REWARDS + [None]  # row 12 failed
    table = prm_rows(rewards, errors={12: "InputTooLong: 9000 tokens"})
    return output_folder(
        tmp_path / "prm",
        table,
        "prm",
        "scores",
        identity={"step_aggregate": "min", "step_separator": "\n\n"},
        errors=[{"source_file": "math.jsonl", "source_row": 12, "error": "InputTooLong"}],
        extra={"steps": {"aggregate": "min"}},
    )


def test_prm_report_step_table_is_worked_from_the_rows(prm_folder, tmp_path):
    run = load_scored(prm_folder)
    page = write_report(run.table, tmp_path / "prm.html", run=run).read_text(encoding="utf-8")
    rows = table_cells(page, "Step rewards")
    assert rows[""] == ["solutions"]
    for name, value in expected_table(STEP_REWARDS).items():
        assert rows[name] == [value], name
    # the numbers themselves, for the record: 4 of 12 weakest steps first-or-last ... worked by hand
    assert rows["weakest step is the first (%)"] == ["25.0"]  # solutions 1, 9, 11
    assert rows["weakest step is the middle (%)"] == ["33.3"]  # 2, 5, 7, 10
    assert rows["weakest step is the last (%)"] == ["25.0"]  # 0, 4, 6
    assert rows["solutions of one step (%)"] == ["16.7"]  # 3, 8
    assert rows["weakest step < 0.2 (% of solutions)"] == ["33.3"]  # 0.1, 0.05, 0.15, 0.19
    assert "a solution&#x27;s score is the min of its step rewards" in page
    assert "process reward model (prm)" in page
    assert "12 scored, 1 with no result, 1 errors" in page
    pngs = inline_pngs(page)
    assert len(pngs) == 4  # step histograms, by step number, steps per solution, solution scores
    assert all(png.startswith(PNG_SIGNATURE) and len(png) > 5000 for png in pngs)
    assert "PRM solution score (min of its step rewards)" not in page  # axis labels are in the images
    order = [page.index(heading) for heading in ("Step rewards", "Plots", "Solutions with the weakest steps")]
    assert order == sorted(order)


def test_prm_examples_are_the_lowest_weakest_steps_with_each_step_and_the_weakest_marked(prm_folder, tmp_path):
    run = load_scored(prm_folder)
    page = write_report(run.table, tmp_path / "prm.html", run=run, examples=3).read_text(encoding="utf-8")
    section = page[page.index("<h3>Solutions with the weakest steps</h3>") :]
    section = section[: section.index("</table>")]
    # lowest weakest-step rewards: solution 2 (0.05), 1 (0.1), 6 (0.15)
    assert re.findall(r"problem (\d+)", section) == ["2", "1", "6"]
    assert "weakest step 2 of 4: 0.05" in section
    weakest = re.findall(r'<li value="(\d+)" class="weakest"><span class="reward">([^<]*)</span>([^<]*)</li>', section)
    assert weakest == [
        ("2", "0.05", "step 2 of solution 2"),
        ("1", "0.1", "step 1 of solution 1"),
        ("2", "0.15", "step 2 of solution 6"),
    ]
    steps_of_2 = re.findall(r'<li value="\d+"[^>]*><span class="reward">([^<]*)</span>step \d of solution 2<', section)
    assert steps_of_2 == ["0.6", "0.05", "0.7", "0.8"]
    assert "Highest scores" not in page  # the weakest solutions replace the score examples


def test_prm_solution_split_from_a_response_at_the_recorded_separator(tmp_path):
    table = (
        prm_rows([[0.9, 0.2, 0.8]])
        .drop_columns(["steps"])
        .append_column("response", pa.array(["First || Second, the bad one ||  || Third"]))
    )
    folder = output_folder(tmp_path / "prm", table, "prm", "scores", identity={"step_separator": "||"})
    run = load_scored(folder)
    page = write_report(run.table, tmp_path / "r.html", run=run).read_text(encoding="utf-8")
    assert re.search(r'<li value="2" class="weakest"><span class="reward">0.2</span>Second, the bad one</li>', page)
    # a separator that does not split it into as many steps: the rewards alone, and the text beside
    page = write_report(run.table, tmp_path / "r2.html").read_text(encoding="utf-8")  # default separator "\n\n"
    assert '<li value="2" class="weakest"><span class="reward">0.2</span></li>' in page
    assert "First || Second" in page


def test_step_plots_hold_the_rows_numbers():
    groups = prm_solutions(prm_rows(STEP_REWARDS))
    left, right = step_histogram_plot(groups).figure.axes
    assert left.get_xlim() == (0.0, 1.0) and right.get_xlim() == (0.0, 1.0)
    assert sum(patch.get_height() for patch in left.patches) == sum(len(s) for s in STEP_REWARDS)
    assert sum(patch.get_height() for patch in right.patches) == len(STEP_REWARDS)
    lowest = min((patch for patch in right.patches if patch.get_height()), key=lambda patch: patch.get_x())
    assert (lowest.get_x(), lowest.get_height()) == (pytest.approx(0.05), 1)  # 0.05 alone in [0.05, 0.075)

    by_index = step_index_plot(groups)
    top, bottom = by_index.figure.axes
    (line,) = top.get_lines()
    # steps reached by at least 5 solutions: 1 (12), 2 (10), 3 (8); step 4 has 4
    means = [np.mean([s[k] for s in STEP_REWARDS if len(s) > k]) for k in range(3)]
    assert list(line.get_xdata()) == [1, 2, 3]
    assert list(line.get_ydata()) == pytest.approx(means)
    assert [patch.get_height() for patch in bottom.patches] == [12, 10, 8]
    assert "solutions: 8 steps at most" in by_index.caption

    counts = step_count_plot(groups).figure.axes[0]
    tally = {round(patch.get_x() + patch.get_width() / 2): patch.get_height() for patch in counts.patches}
    assert tally == {0: 0, 1: 2, 2: 2, 3: 4, 4: 2, 5: 1, 6: 0, 7: 0, 8: 1}


# ---------------------------------------------------------------- robustness


def test_tiny_empty_and_failed_prm_outputs_do_not_crash(tmp_path):
    one = write_report(prm_rows([[0.4, 0.6]]), tmp_path / "one.html").read_text(encoding="utf-8")
    rows = table_cells(one, "Step rewards")
    assert rows["solutions"] == ["1"] and rows["mean weakest-step reward"] == ["0.4"]
    assert rows["weakest step is the first (%)"] == ["100.0"]
    assert len(inline_pngs(one)) == 4
    assert "Steps are shown while at least 1 solutions reach them" in one

    # an empty list of step rewards (with a score) is a solution of no steps, left out of the weakest rows
    table = prm_rows([[0.4, 0.6], [0.9]])
    empty = table.set_column(
        table.schema.get_field_index("step_rewards"), "step_rewards", pa.array([[0.4, 0.6], []], pa.list_(pa.float64()))
    )
    page = write_report(empty, tmp_path / "empty.html").read_text(encoding="utf-8")
    rows = table_cells(page, "Step rewards")
    assert rows["solutions"] == ["2"] and rows["steps"] == ["2"]
    assert rows["solutions with no steps (left out of the weakest-step rows)"] == ["1"]
    assert rows["mean weakest-step reward"] == ["0.4"]

    # every row failed: no step rewards anywhere, the page still says so
    failed = prm_rows([None, None], errors={0: "boom", 1: "boom"})
    page = write_report(failed, tmp_path / "failed.html").read_text(encoding="utf-8")
    assert table_cells(page, "Step rewards")["solutions"] == ["0"]
    assert len(inline_pngs(page)) == 4


# ---------------------------------------------------------------- PRM pairs


def prm_pairs(multi: bool = False) -> pa.Table:
    chosen = [[0.9, 0.8], [0.7, 0.2, 0.9], [0.95], [0.6, 0.65]]
    rejected = [[0.3, 0.1], [0.8, 0.85, 0.9], [0.4, 0.5], [0.9, 0.05, 0.2]]
    chosen_score, rejected_score = [min(c) for c in chosen], [min(r) for r in rejected]
    margins = [c - r for c, r in zip(chosen_score, rejected_score)]
    columns = {
        "prompt": [f"problem {i}" for i in range(4)],
        "chosen": [f"good {i} step A\n\ngood {i} step B" for i in range(4)],
        "rejected": [f"bad {i}" for i in range(4)],
        "chosen_score": chosen_score,
        "rejected_score": rejected_score,
        "margin": margins,
        "chosen_wins": [m > 0 for m in margins],
        "truncated": [False] * 4,
        "chosen_step_rewards": pa.array(chosen, pa.list_(pa.float64())),
        "rejected_step_rewards": pa.array(rejected, pa.list_(pa.float64())),
        "source_file": ["pairs.jsonl"] * 4,
        "source_row": pa.array(range(4), pa.int64()),
    }
    if multi:  # one row of 2 chosen x 1 rejected
        columns = {
            "prompt": ["p"],
            "chosen": [["c0", "c1"]],
            "rejected": [["r0"]],
            "chosen_scores": [[0.9, 0.3]],
            "rejected_scores": [[0.5]],
            "margins": [[0.4, -0.2]],
            "margin": [0.1],
            "win_rate": [0.5],
            "chosen_wins": [False],
            "truncated": [False],
            "chosen_step_rewards": pa.array([[[0.9, 0.95], [0.3]]], pa.list_(pa.list_(pa.float64()))),
            "rejected_step_rewards": pa.array([[[0.5, 0.6]]], pa.list_(pa.list_(pa.float64()))),
        }
    return pa.table(columns)


def test_prm_pairs_report_has_accuracy_and_chosen_and_rejected_step_parts(tmp_path):
    folder = output_folder(tmp_path / "pairs", prm_pairs(), "prm", "pairs")
    run = load_scored(folder)
    page = write_report(run.table, tmp_path / "pairs.html", run=run, examples=2).read_text(encoding="utf-8")
    rows = table_cells(page, "Step rewards")
    assert rows[""] == ["chosen", "rejected"]
    chosen, rejected = (
        expected_table([[0.9, 0.8], [0.7, 0.2, 0.9], [0.95], [0.6, 0.65]]),
        expected_table([[0.3, 0.1], [0.8, 0.85, 0.9], [0.4, 0.5], [0.9, 0.05, 0.2]]),
    )
    for name in chosen:
        assert rows[name] == [chosen[name], rejected[name]], name
    assert "accuracy (%) [95% CI]" in page and "75.0 [" in page  # rows 0, 2, 3 win (row 1: 0.2 < 0.8)
    assert len(inline_pngs(page)) == 6  # accuracy, scores, margins, then the three step plots
    chosen_ex = page[page.index("<h3>Chosen solutions with the weakest steps</h3>") :]
    chosen_ex = chosen_ex[: chosen_ex.index("</table>")]
    assert re.findall(r"problem (\d+)", chosen_ex) == ["1", "3"]  # weakest 0.2, then 0.6
    assert '<li value="1" class="weakest"><span class="reward">0.6</span>good 3 step A</li>' in chosen_ex
    rejected_ex = page[page.index("<h3>Rejected solutions with the weakest steps</h3>") :]
    assert re.findall(r"problem (\d+)", rejected_ex[: rejected_ex.index("</table>")]) == ["3", "0"]  # 0.05, 0.1
    assert "Most confident wins" in page and "Most confident losses" in page


def test_prm_multi_response_pairs(tmp_path):
    groups = prm_solutions(prm_pairs(multi=True))
    assert [(g.label, [r.tolist() for r in g.rewards], g.items) for g in groups] == [
        ("chosen", [[0.9, 0.95], [0.3]], [0, 1]),
        ("rejected", [[0.5, 0.6]], [0]),
    ]
    page = write_report(prm_pairs(multi=True), tmp_path / "multi.html").read_text(encoding="utf-8")
    assert '<li value="1" class="weakest"><span class="reward">0.3</span>c1</li>' in page


# ---------------------------------------------------------------- pointwise judges


def pointwise_rows() -> pa.Table:
    probs = [[0.1, 0.2, 0.7], [0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.0, 0.1, 0.9], None]
    scale = [1.0, 5.0, 10.0]
    expected = [None if p is None else sum(a * b for a, b in zip(p, scale)) for p in probs]
    best = [None if p is None else scale[int(np.argmax(p))] for p in probs]
    return pa.table(
        {
            "prompt": [f"q{i}" for i in range(5)],
            "response": [f"a{i}" for i in range(5)],
            "score": pa.array(expected, pa.float64()),
            "rating": pa.array(best, pa.float64()),
            "rating_probs": pa.array(probs, pa.list_(pa.float64())),
            "truncated": [False] * 5,
            "source_file": ["chat.jsonl"] * 5,
            "source_row": pa.array(range(5), pa.int64()),
        }
    )


def test_pointwise_report_shows_the_ratings_over_the_recorded_scale(tmp_path):
    folder = output_folder(
        tmp_path / "judge",
        pointwise_rows(),
        "pointwise",
        "scores",
        model="judge",
        identity={"ratings": ["1", "5", "10"], "rating_values": [1, 5, 10]},
    )
    run = load_scored(folder)
    page = write_report(run.table, tmp_path / "judge.html", run=run).read_text(encoding="utf-8")
    rows = table_cells(page, "Ratings")
    # most probable: 10, 1, 5, 10; mean probability of each rating over the 4 rated rows
    assert rows["1"] == ["1", "25.0", g4((0.1 + 0.6 + 0.2 + 0.0) / 4)]
    assert rows["5"] == ["1", "25.0", g4((0.2 + 0.3 + 0.5 + 0.1) / 4)]
    assert rows["10"] == ["2", "50.0", g4((0.7 + 0.1 + 0.3 + 0.9) / 4)]
    assert "pointwise judge" in page and "most probable rating 10" in page
    assert len(inline_pngs(page)) == 2  # ratings, then the expected-rating histogram
    assert "Step rewards" not in page

    scored = run.table.filter(pa.array([True] * 4 + [False]))
    left, right = rating_plot(scored, np.array([1.0, 5.0, 10.0])).figure.axes
    assert sum(patch.get_height() for patch in left.patches) == 4
    bars = sorted(right.patches, key=lambda patch: patch.get_x())
    counts = [round(patch.get_height(), 6) for patch in bars]
    assert counts == [1, round(0.9, 6), 1, round(1.1, 6), 2, round(2.0, 6)]  # rows, then summed probabilities


def test_pointwise_scale_inferred_without_run_json(tmp_path):
    page = write_report(pointwise_rows(), tmp_path / "j.html").read_text(encoding="utf-8")
    assert list(table_cells(page, "Ratings"))[1:] == ["1", "5", "10"]  # the ratings seen (3 probs, not 1..3)


def test_pointwise_pairs_use_the_reward_model_parts(tmp_path):
    table = pa.table(
        {
            "prompt": ["q0", "q1"],
            "chosen": ["a", "b"],
            "rejected": ["c", "d"],
            "chosen_score": [8.0, 3.0],
            "rejected_score": [2.0, 4.5],
            "margin": [6.0, -1.5],
            "chosen_wins": [True, False],
            "chosen_rating": [8.0, 3.0],
            "rejected_rating": [2.0, 5.0],
            "truncated": [False, False],
        }
    )
    page = write_report(table, tmp_path / "p.html").read_text(encoding="utf-8")
    assert "pointwise judge" in page and "50.0 [" in page
    assert len(inline_pngs(page)) == 3 and "Ratings" not in page and "Step rewards" not in page


# ---------------------------------------------------------------- comparisons


def reward_scores_folder(path) -> str:
    table = pa.table(
        {
            "prompt": [f"problem {i}" for i in range(12)],
            "score": [float(i) for i in range(12)],
            "truncated": [False] * 12,
            "source_file": ["math.jsonl"] * 12,
            "source_row": pa.array(range(12), pa.int64()),
        }
    )
    return output_folder(path, table, "reward", "scores", model="rm")


def test_compare_prm_runs_overlays_their_step_rewards(tmp_path):
    other = [[min(1.0, x + 0.05) for x in s] for s in STEP_REWARDS]
    a = load_scored(output_folder(tmp_path / "a", prm_rows(STEP_REWARDS), "prm", "scores", model="prm-a"))
    b = load_scored(output_folder(tmp_path / "b", prm_rows(other), "prm", "scores", model="prm-b"))
    rm = load_scored(reward_scores_folder(tmp_path / "rm"))
    out, comparison = write_comparison([a, b, rm], tmp_path / "cmp.html")
    page = out.read_text(encoding="utf-8")
    assert [s["kind"] for s in comparison.summaries] == ["prm", "prm", "reward"]
    rows = table_cells(page, "Step rewards")
    assert rows[""] == ["prm-a", "prm-b"]
    assert rows["mean step reward"] == [
        expected_table(STEP_REWARDS)["mean step reward"],
        expected_table(other)["mean step reward"],
    ]
    assert "this part does not apply to rm (reward model)" in page
    assert (
        "Model kinds: prm-a: process reward model (prm), prm-b: process reward model (prm), rm: reward model."
        in html.unescape(page)
    )
    pngs = inline_pngs(page)
    assert len(pngs) == 4  # standardized scores, scores per model, step histograms, by step number
    assert all(png.startswith(PNG_SIGNATURE) for png in pngs)
    spearman = [agreement["spearman"] for x, y, agreement in comparison.agreements if (x, y) == ("prm-a", "prm-b")]
    assert spearman == [pytest.approx(1.0)]


def test_compare_prm_pairs_with_reward_pairs(tmp_path):
    prm = load_scored(output_folder(tmp_path / "prm", prm_pairs(), "prm", "pairs", model="prm"))
    table = prm_pairs().drop_columns(["chosen_step_rewards", "rejected_step_rewards"])
    rm = load_scored(output_folder(tmp_path / "rm", table, "reward", "pairs", model="rm"))
    comparison = compare([prm, rm])
    assert [s["kind"] for s in comparison.summaries] == ["prm", "reward"]
    out, _ = write_comparison([prm, rm], tmp_path / "cmp.html")
    page = out.read_text(encoding="utf-8")
    assert table_cells(page, "Step rewards")[""] == ["prm: chosen", "prm: rejected"]
    assert "this part does not apply to rm (reward model)" in page
    assert len(inline_pngs(page)) == 5  # accuracy, margin CDFs, margins per model, step histograms, by step


def test_reward_reports_have_no_step_or_rating_parts(tmp_path):
    out, _ = write_comparison(
        [load_scored(reward_scores_folder(tmp_path / "a")), load_scored(reward_scores_folder(tmp_path / "b"))],
        tmp_path / "c.html",
    )
    page = out.read_text(encoding="utf-8")
    assert "Step rewards" not in page and "Model kinds" not in page
