"""Plain-text tables for the command line's reports."""

__all__ = ["format_table"]


def format_table(headers, rows):
    """Left-aligned columns separated by two spaces, with a dashed rule under the headers.

    headers: sequence of column titles; rows: sequences of the same length (any values, shown
    with str). Returns the table as one string without a trailing newline.
    """
    cells = [[str(h) for h in headers]] + [[str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
