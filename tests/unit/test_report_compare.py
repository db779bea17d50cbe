"""`python -m cluster report` over several scoring outputs (one comparison page), and its answers to
arguments that are not scoring outputs. Output folders are written here as the pipeline lays them out
(parts/part-*.parquet shards, summary.json); every expected number is worked by hand."""

from __future__ import annotations

import json
import re
import statistics

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.cli.main import main as cli_main
from cluster.data.metrics import Bootstrap
from cluster.data.report import (
    align_rows,
    average_ranks,
    compare,
    compare_labels,
    load_scored,
    pair_agreement,
    spearman,
)


def pairs(
    rows: list[int],
    wins: list[bool | None],
    margins: list[float | None],
    subset: str = "chat",
    margins_lists: list[list[float]] | None = None,
    critic: bool = False,
) -> pa.Table:
    """Scored pair rows of data.jsonl at the given source rows; None marks a row the model failed."""
    columns = {
        "subset": [subset] * len(rows),
        "prompt": [f"prompt {row}" for row in rows],
        ("prob_chosen" if critic else "chosen_score"): pa.array(
            [None if m is None else (1 / (1 + np.exp(-m)) if critic else m) for m in margins], pa.float64()
        ),
        "margin": pa.array(margins, pa.float64()),
        "chosen_wins": pa.array(wins, pa.bool_()),
        "truncated": [False] * len(rows),
        "source_file": ["data.jsonl"] * len(rows),
        "source_row": pa.array(rows, pa.int64()),
    }
    if margins_lists is not None:
        columns["margins"] = pa.array(margins_lists, pa.list_(pa.float64()))
    return pa.table(columns)


def scores(rows: list[int], values: list[float | None]) -> pa.Table:
    return pa.table(
        {
            "conversations": [[{"role": "user", "content": f"q{row}"}] for row in rows],
            "score": pa.array(values, pa.float64()),
            "truncated": [False] * len(rows),
            "source_file": ["data.jsonl"] * len(rows),
            "source_row": pa.array(rows, pa.int64()),
        }
    )


def output_folder(
    path, table: pa.Table, model: str | None = None, inputs: list[str] | None = None, kind: str = "reward"
) -> str:
    (path / "parts").mkdir(parents=True)
    half = table.num_rows // 2
    pq.write_table(table.slice(0, half), path / "parts" / "part-a.parquet")
    pq.write_table(table.slice(half), path / "parts" / "part-b.parquet")
    run = {"model_kind": kind, "inputs": inputs or ["data.jsonl"]}
    if model is not None:
        run["model"] = model
    (path / "summary.json").write_text(json.dumps({"seconds": 1.5, "errors": 0, "run": run}), encoding="utf-8")
    return str(path)


# A: rows 0..5, row 5 failed. B: the same rows in another order, plus row 6 A does not have.
A_WINS = [True, True, False, False, True, None]
A_MARGINS = [1.0, 2.0, -1.0, -2.0, 3.0, None]
B_ROWS = [6, 4, 3, 2, 1, 0, 5]
B_WINS = [True, True, True, False, False, True, False]  # by B_ROWS: row 4 wins, 3 wins, 2 loses, 1 loses, ...
B_MARGINS = [0.5, 4.0, 1.0, -2.0, -1.0, 2.0, -0.5]


def test_agreement_on_common_rows_by_hand():
    a, b = pairs(list(range(6)), A_WINS, A_MARGINS), pairs(B_ROWS, B_WINS, B_MARGINS)
    in_a, in_b, note = align_rows(a, b)
    assert note is None
    assert in_a.tolist() == [0, 1, 2, 3, 4, 5] and in_b.tolist() == [5, 4, 3, 2, 1, 6]  # joined on source_row
    agreement = pair_agreement(a, b, in_a, in_b, Bootstrap())
    # Rows 0..4 (row 5: A failed, left out). A wins T T F F T; B on rows 0..4: T F F T T -> agree on 0, 2, 4.
    assert (agreement["common_rows"], agreement["rows"]) == (6, 5)
    assert agreement["same_winner"] == pytest.approx(3 / 5)
    # Margins on rows 0..4: A 1 2 -1 -2 3; B 2 -1 -2 1 4.
    x, y = [1.0, 2.0, -1.0, -2.0, 3.0], [2.0, -1.0, -2.0, 1.0, 4.0]
    assert agreement["margin_pearson"] == pytest.approx(statistics.correlation(x, y))
    # Ranks: A 3 4 2 1 5; B 4 2 1 3 5.
    assert agreement["margin_spearman"] == pytest.approx(statistics.correlation([3, 4, 2, 1, 5], [4, 2, 1, 3, 5]))
    # Accuracy on those rows: A 3/5, B 3/5, so the paired difference is 0.
    assert agreement["accuracy_difference"] == pytest.approx(0.0)
    low, high = agreement["accuracy_difference_ci"]
    assert low < 0 < high


def test_agreement_per_comparison_for_multi_response_rows():
    # Two rows of 2 comparisons each; row 1 has 3 comparisons in B (a different shape): left out.
    a = pairs([0, 1], [False, True], [0.0, 1.0], margins_lists=[[1.0, -1.0], [1.0, 1.0]])
    b = pairs([0, 1], [True, True], [1.0, 1.0], margins_lists=[[1.0, 1.0], [1.0, 1.0, 1.0]])
    agreement = pair_agreement(a, b, *align_rows(a, b)[:2], Bootstrap())
    assert agreement["same_winner"] == pytest.approx(1 / 2)
    assert (agreement["comparisons"], agreement["same_comparison"]) == (2, pytest.approx(1 / 2))


def test_spearman_gives_ties_their_average_rank():
    assert average_ranks(np.array([10.0, 20.0, 10.0, 30.0])).tolist() == [1.5, 3.0, 1.5, 4.0]
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([5.0, 5.0, 5.0])) is None  # constant: undefined


def test_compare_cli_writes_one_page(tmp_path, capsys):
    folder_a = output_folder(tmp_path / "a", pairs(list(range(6)), A_WINS, A_MARGINS), model="rm")
    folder_b = output_folder(
        tmp_path / "b", pairs(B_ROWS, B_WINS, B_MARGINS, critic=True), model="judge", kind="critic"
    )
    out = tmp_path / "compare.html"
    assert cli_main(["report", folder_a, folder_b, "--out", str(out), "--labels", "first,second"]) == 0
    page = out.read_text(encoding="utf-8")
    assert "<title>Scoring comparison: first vs second</title>" in page
    assert "<th>first</th><th>second</th>" in page  # side-by-side columns
    assert re.search(r"<td>all rows</td><td>60\.0 \[[\d.]+, [\d.]+\]</td><td>57\.1 \[[\d.]+, [\d.]+\]</td>", page)
    assert "<td>first</td><td>second</td><td>6</td><td>5</td><td>60.0</td>" in page  # agreement row
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == 3  # accuracy, margins overlaid, per model
    # B has a row A lacks: 6 of 7 in common is under 90%, which the page points out.
    assert re.findall(r'<p class="warning">Warning: ([^<]*)</p>', page) == [
        "first and second have 6 rows in common (first: 6 rows, second: 7): not the same corpus, or one run is "
        "incomplete; their agreement is over the common rows only."
    ]
    printed = capsys.readouterr().out
    assert "same winner %" in printed and f"report written to {out.resolve()}" in printed


def test_compare_warns_about_different_corpora_and_escapes_names(tmp_path):
    hostile = "<script>alert(1)</script>"
    folder_a = output_folder(
        tmp_path / "a",
        pairs(list(range(10)), [True] * 10, [1.0] * 10, subset=hostile),
        model="<b>rm</b>",
        inputs=["rewardbench.jsonl"],
    )
    folder_b = output_folder(
        tmp_path / "b", pairs(list(range(8, 20)), [False] * 12, [-1.0] * 12), model="rm2", inputs=["rm-bench.jsonl"]
    )
    out = tmp_path / "c.html"
    assert cli_main(["report", folder_a, folder_b, "--out", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert "were run on different input files" in page
    assert "have 2 rows in common" in page  # rows 8 and 9
    assert "<td>&lt;b&gt;rm&lt;/b&gt;</td><td>rm2</td><td>2</td><td>2</td><td>0.0</td>" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in page and "<b>rm" not in page


def test_labels_default_to_model_names_and_are_made_unique(tmp_path):
    table = pairs([0, 1], [True, False], [1.0, -1.0])
    runs = [
        load_scored(output_folder(tmp_path / name, table, model=model))
        for name, model in (("x", "rm"), ("y", "rm"), ("z", None))
    ]
    assert compare_labels(runs) == ["rm (x)", "rm (y)", "z"]
    assert compare_labels(runs, ["a", "a", "a"]) == ["a (x)", "a (y)", "a (z)"]


def test_compare_score_tables_correlations(tmp_path):
    a = load_scored(output_folder(tmp_path / "a", scores([0, 1, 2, 3, 4], [1.0, 2.0, 3.0, 4.0, None])))
    b = load_scored(output_folder(tmp_path / "b", scores([0, 1, 2, 3, 4], [2.0, 1.0, 4.0, 3.0, 5.0])))
    comparison = compare([a, b], ["a", "b"])
    ((_, _, agreement),) = comparison.agreements
    assert agreement["rows"] == 4  # row 4: a failed
    assert agreement["pearson"] == pytest.approx(statistics.correlation([1, 2, 3, 4], [2, 1, 4, 3]))
    assert agreement["spearman"] == pytest.approx(0.6)  # ranks 1 2 3 4 vs 2 1 4 3: 1 - 6 * 4 / (4 * 15)
    out = tmp_path / "s.html"
    assert cli_main(["report", a.source, b.source, "--out", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert "<th>Pearson</th><th>Spearman</th>" in page
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == 2


# ---------------------------------------------------------------- arguments that are not scoring outputs


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


@pytest.mark.parametrize("name", ["data.jsonl", "data.json"])
def test_an_input_file_is_named_as_such(tmp_path, monkeypatch, capsys, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n', encoding="utf-8")
    assert cli_main(["report", name, "--out", "r.html"]) == 2
    assert one_error_line(capsys) == (
        f"error: {name}: an input file, not a scoring output; run python -m cluster "
        f"score {name} OUT first, then report OUT"
    )
    assert not (tmp_path / "r.html").exists()


def test_a_file_of_an_output_folder_points_to_the_folder(tmp_path, capsys):
    folder = output_folder(tmp_path / "out", pairs([0, 1], [True, False], [1.0, -1.0]))
    assert cli_main(["report", f"{folder}/summary.json", "--out", str(tmp_path / "r.html")]) == 2
    assert one_error_line(capsys).endswith(
        f"a file of a scoring output; pass its folder: python -m cluster report {folder}"
    )


def test_an_input_parquet_file_is_named_as_such(tmp_path, capsys):
    pq.write_table(pa.table({"prompt": ["p"], "chosen": ["a"], "rejected": ["b"]}), tmp_path / "in.parquet")
    assert cli_main(["report", str(tmp_path / "in.parquet"), "--out", str(tmp_path / "r.html")]) == 2
    assert "an input file, not a scoring output" in one_error_line(capsys)


def test_missing_path(tmp_path, capsys):
    assert cli_main(["report", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r.html")]) == 2
    assert one_error_line(capsys) == f"error: {tmp_path / 'nowhere'}: no such file or folder"


def test_folder_without_parts(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli_main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r.html")]) == 2
    assert "not a scoring output folder (it has no parts/" in one_error_line(capsys)
    (tmp_path / "inputs").mkdir()
    (tmp_path / "inputs" / "a.jsonl").write_text("{}\n", encoding="utf-8")
    assert cli_main(["report", str(tmp_path / "inputs"), "--out", str(tmp_path / "r.html")]) == 2
    assert "a folder of input files, not a scoring output; run python -m cluster score" in one_error_line(capsys)


def test_parts_without_shards(tmp_path, capsys):
    (tmp_path / "out" / "parts").mkdir(parents=True)
    assert cli_main(["report", str(tmp_path / "out"), "--out", str(tmp_path / "r.html")]) == 2
    assert "no scored rows yet (parts/ holds no shards)" in one_error_line(capsys)


def test_corrupt_parquet(tmp_path, capsys):
    folder = output_folder(tmp_path / "out", pairs([0, 1], [True, False], [1.0, -1.0]))
    (tmp_path / "out" / "parts" / "part-b.parquet").write_bytes(b"PAR1 this is not parquet")
    assert cli_main(["report", folder, "--out", str(tmp_path / "r.html")]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: {tmp_path / 'out' / 'parts' / 'part-b.parquet'}: not a readable parquet shard")
    (tmp_path / "bare.parquet").write_bytes(b"")
    assert cli_main(["report", str(tmp_path / "bare.parquet"), "--out", str(tmp_path / "r.html")]) == 2
    assert "bare.parquet: not a readable parquet file" in one_error_line(capsys)


def test_comparison_argument_errors(tmp_path, capsys):
    folder_a = output_folder(tmp_path / "a", pairs([0, 1], [True, False], [1.0, -1.0]))
    folder_b = output_folder(tmp_path / "b", scores([0, 1], [1.0, 2.0]))
    assert cli_main(["report", folder_a, folder_b, "--out", str(tmp_path / "r.html")]) == 2
    assert "cannot compare pair outputs with plain-score outputs" in one_error_line(capsys)
    assert cli_main(["report", folder_a, folder_a, "--labels", "one", "--out", str(tmp_path / "r.html")]) == 2
    assert one_error_line(capsys) == "error: --labels names 1 models for 2 outputs"
