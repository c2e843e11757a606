"""Markdown tables: the one renderer every report uses."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(
    header: Sequence[object], rows: Iterable[Sequence[object]], align: str | None = None
) -> str:
    """A GitHub-flavoured Markdown table; cells are ``str()``-ed, ``|`` escaped.

    ``align`` gives one letter per column (``l``, ``r`` or ``c``); by default
    columns are left as Markdown's default. Every row must have as many cells
    as the header, so a report cannot silently shift its columns.
    """
    header = [_cell(h) for h in header]
    if align is not None and len(align) != len(header):
        raise ValueError(f"align {align!r} has {len(align)} letters for {len(header)} columns")
    rules = {"l": ":---", "r": "---:", "c": ":---:"}
    rule = [rules[a] for a in align] if align else ["---"] * len(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    for number, row in enumerate(rows):
        cells = [_cell(c) for c in row]
        if len(cells) != len(header):
            raise ValueError(f"row {number} has {len(cells)} cells for {len(header)} columns")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
