"""Tables: the one check of a table file's columns, and the one Markdown and CSV renderers."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence

_DELIMITER_NAMES = {"\t": "tabs", ",": "commas", ";": "semicolons", "|": "bars"}


def check_columns(
    path: str | os.PathLike, header: Sequence[str], required: Sequence[str], delimiter: str
) -> None:
    """Refuse a table without the ``required`` columns, naming another delimiter if it has one.

    A header read as a single column that another delimiter would split is a
    file separated by the wrong character: that is what the error says.
    """
    missing = [column for column in required if column not in header]
    if not missing:
        return
    if len(header) == 1:
        for found, name in _DELIMITER_NAMES.items():
            if found != delimiter and found in header[0]:
                raise ValueError(
                    f"{path} is separated by {name} (header {header[0]!r}); "
                    f"expected {_DELIMITER_NAMES[delimiter]} between the columns "
                    f"{', '.join(required)}"
                )
    raise ValueError(f"{path} lacks column(s) {', '.join(missing)}; it has {', '.join(header)}")


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


def csv_text(header: Sequence[object], rows: Iterable[Sequence[object]]) -> str:
    """A CSV table (``\\n`` line ends), header first."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()
