"""One self-contained HTML report over scoring outputs (`python -m cluster report`, docs/report.md):
one output gives one model's report, several a comparison page. The names below are the package's API."""

from cluster.data.report.cli import add_arguments, main
from cluster.data.report.compare import (
    Comparison,
    align_rows,
    average_ranks,
    compare,
    compare_labels,
    pair_agreement,
    spearman,
)
from cluster.data.report.compare_page import format_comparison, write_comparison
from cluster.data.report.examples import display_text, pair_examples, score_examples
from cluster.data.report.load import ScoredRun, load_scored
from cluster.data.report.plots import accuracy_plot, fitted_range, margin_plot, score_distribution_plot
from cluster.data.report.prm import prm_solutions, step_count_plot, step_histogram_plot, step_index_plot
from cluster.data.report.ratings import rating_plot
from cluster.data.report.single import write_report

__all__ = [
    "Comparison",
    "ScoredRun",
    "accuracy_plot",
    "add_arguments",
    "align_rows",
    "average_ranks",
    "compare",
    "compare_labels",
    "display_text",
    "fitted_range",
    "format_comparison",
    "load_scored",
    "main",
    "margin_plot",
    "pair_agreement",
    "pair_examples",
    "prm_solutions",
    "rating_plot",
    "score_distribution_plot",
    "score_examples",
    "spearman",
    "step_count_plot",
    "step_histogram_plot",
    "step_index_plot",
    "write_comparison",
    "write_report",
]
