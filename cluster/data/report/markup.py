"""HTML pieces both pages use: the page shell with its inline style, escaped tables, figures inlined as
base64 PNG data URIs, so that the file has no external assets and every user string is escaped."""

from __future__ import annotations

import html
from pathlib import Path

from cluster.data.metrics import number
from cluster.data.report.plots import Plot, figure_png

STAT_KEYS = ("count", "mean", "std", "min", "p5", "p50", "p95", "max")
PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; padding: 0 1em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
table.facts td, table.facts th { text-align: left; }
table.facts td:first-child { font-weight: 600; white-space: nowrap; }
table.examples td { text-align: left; vertical-align: top; font-size: 0.85em; }
table.examples td.values { white-space: nowrap; }
.text { white-space: pre-wrap; overflow-wrap: anywhere; max-height: 16em; overflow: auto; min-width: 12em; }
.warning { background: #fff4e5; border-left: 4px solid #e8a33d; padding: 0.4em 0.8em; margin: 0.5em 0; }
.note { color: #555; font-size: 0.9em; }
ol.steps { margin: 0; padding-left: 2.2em; }
ol.steps li { margin: 0.15em 0; white-space: pre-wrap; overflow-wrap: anywhere; }
ol.steps li.weakest { background: #fde2e1; outline: 1px solid #e06c66; }
ol.steps .reward { font-family: monospace; color: #555; margin-right: 0.5em; }
ol.steps li.weakest .reward { color: #b00; font-weight: 600; }
figure { margin: 1em 0 2em; }
figcaption { color: #555; font-size: 0.9em; }
img { max-width: 100%; }
"""


def write_page(out_html: str | Path, page: str) -> Path:
    out_path = Path(out_html)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(page, encoding="utf-8")
    return out_path


def page_html(title: str, sections: list[str]) -> str:
    body = "\n".join(sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{PAGE_STYLE}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


def stat_cell(stats: dict, key: str) -> str:
    return str(stats[key]) if key == "count" else number(stats[key])


def html_table(header: list[str], rows: list[list], css: str | None = None, head: bool = True) -> str:
    head_row = "<tr>" + "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header) + "</tr>\n" if head else ""
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    css_attr = f' class="{css}"' if css else ""
    return f"<table{css_attr}>\n{head_row}{body}\n</table>"


def plot_html(plot: Plot) -> str:
    return (
        f'<figure>\n<img src="data:image/png;base64,{figure_png(plot.figure)}" alt="{html.escape(plot.caption)}">\n'
        f"<figcaption>{html.escape(plot.caption)}</figcaption>\n</figure>"
    )
