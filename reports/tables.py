"""Tables rendered as Markdown (for the .md artifacts) and HTML (for the report), one formatting
rule for both: floats to a fixed number of digits, NaN shown as an empty cell."""
from __future__ import annotations

import html
import math

import numpy as np
import pandas as pd


def format_cell(value, digits: int = 4) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        text = f"{value:.{digits}f}"
        # a tiny negative rounds to "-0.0000", which reads as a real sign
        return text[1:] if text.startswith("-") and float(text) == 0 else text
    if hasattr(value, "item") and not isinstance(value, str):  # numpy scalars
        return format_cell(value.item(), digits)
    return str(value)


def markdown_table(frame: pd.DataFrame, digits: int = 4) -> str:
    header = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in frame.itertuples(index=False):
        cells = [format_cell(v, digits).replace("|", "\\|") for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def html_table(frame: pd.DataFrame, digits: int = 4, highlight_rows=None) -> str:
    """A plain <table>; rows whose position is in `highlight_rows` get class="hl"."""
    highlight_rows = set(highlight_rows or [])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for i, row in enumerate(frame.itertuples(index=False)):
        cls = ' class="hl"' if i in highlight_rows else ""
        cells = "".join(f"<td{_number_class(v)}>{html.escape(format_cell(v, digits))}</td>" for v in row)
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _number_class(value) -> str:
    # numbers align right (digits line up), text aligns left
    is_number = isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_))
    return ' class="num"' if is_number else ""
