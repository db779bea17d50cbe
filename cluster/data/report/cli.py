"""`python -m cluster report`: its arguments, and one report or one comparison page from them."""

from __future__ import annotations

import argparse
from pathlib import Path

from cluster.core.errors import InvalidInput
from cluster.data.metrics import format_summary, summarize
from cluster.data.report.compare import compare_labels
from cluster.data.report.compare_page import COMPARE_TITLE, format_comparison, write_comparison
from cluster.data.report.examples import EXAMPLES
from cluster.data.report.load import load_scored
from cluster.data.report.single import DEFAULT_TITLE, write_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "scores",
        nargs="+",
        help="scoring output folder(s) of python -m cluster score (or parquet files of scored rows); "
        "several folders of the same corpus: one comparison page",
    )
    parser.add_argument("--out", default="report.html", help="HTML file to write (default: report.html)")
    parser.add_argument("--title", help="page title (default: 'Scoring report: <scores name>')")
    parser.add_argument(
        "--labels",
        help="comparison: comma-separated model labels, one per output "
        "(default: the model names the outputs recorded, else the folder names)",
    )
    parser.add_argument(
        "--examples",
        type=int,
        default=EXAMPLES,
        help=f"example rows shown per table: most confident wins and losses (default {EXAMPLES})",
    )


def main(args: argparse.Namespace) -> int:
    paths = [args.scores] if isinstance(args.scores, str | Path) else list(args.scores)
    runs = [load_scored(path) for path in paths]
    labels = getattr(args, "labels", None)
    if len(runs) == 1:
        if labels:
            raise InvalidInput("--labels is for comparing several outputs; one output was given")
        run = runs[0]
        summary = summarize(run.table)
        title = args.title or f"{DEFAULT_TITLE}: {run.name}"
        out_path = write_report(
            run.table, args.out, summary=summary, title=title, run=run, examples=getattr(args, "examples", EXAMPLES)
        )
        print(format_summary(summary))
    else:
        given = labels.split(",") if labels else None
        chosen = compare_labels(runs, given)
        title = args.title or f"{COMPARE_TITLE}: {' vs '.join(chosen)}"
        out_path, comparison = write_comparison(runs, args.out, title=title, labels=given)
        print(format_comparison(comparison))
        for warning in comparison.warnings:
            print(f"warning: {warning}")
    print(f"\nreport written to {out_path.resolve()}")
    return 0
