"""Plain-text tables for the terminal (no pandas, so listings stay fast)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any


def text_table(rows: Sequence[dict[str, Any]], align_right: Sequence[str] = ()) -> str:
    """Formats dicts sharing the same keys as an aligned table with a header rule."""
    if not rows:
        return "(nothing to show)"
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(row[c])) for row in rows)) for c in columns}

    def line(values: dict[str, Any]) -> str:
        cells = (
            str(values[c]).rjust(widths[c]) if c in align_right else str(values[c]).ljust(widths[c])
            for c in columns
        )
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * widths[c] for c in columns)
    return "\n".join([line({c: c for c in columns}), rule, *(line(row) for row in rows)])


def safe_name(name: str) -> str:
    """Returns `name` with anything but letters, digits, `-`, `_` and `.` as `_` (for paths).

    A name of dots only (`.`, `..`) would name this folder or its parent, so it becomes `_`.
    """
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return "_" if not safe.strip(".") else safe


def plural(count: int, noun: str) -> str:
    """Returns `1 seed`, `2 seeds`: the count with its noun in the right number."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


WIDTH = 100  # columns of the terminal report's wrapped lines


def report_width() -> int:
    """The columns the report wraps at: `WIDTH`, or a narrower terminal's width (at least 40)."""
    import shutil

    try:
        terminal = sys.stdout.isatty()
    except (AttributeError, ValueError):  # a closed or replaced standard output
        terminal = False
    if not terminal:
        return WIDTH
    return max(40, min(WIDTH, shutil.get_terminal_size((WIDTH, 24)).columns))


def wrap(
    text: str, *, initial: str = "", subsequent: str = "", width: int | None = None
) -> list[str]:
    """Returns `text` wrapped to `width` columns (`report_width()` unless given), the first line
    after `initial`, the rest after `subsequent`; a long word (a number with its interval) is
    never split."""
    import textwrap

    return textwrap.wrap(
        text,
        width=width or report_width(),
        initial_indent=initial,
        subsequent_indent=subsequent,
        break_long_words=False,
        break_on_hyphens=False,
    )
