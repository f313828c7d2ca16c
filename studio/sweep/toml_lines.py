"""Where a key sits in a TOML file, so that a spec's errors can name its line.

``tomllib`` returns plain dictionaries without positions. A sweep spec is short and written by
hand, so a line scan is enough: it follows ``[table]`` headers and finds ``key =`` (bare, quoted or
dotted, ``axes.steps = …`` at the top level) in the table it belongs to. Keys it cannot place fall
back to their table's header, then to line 1.
"""
from __future__ import annotations

import re

_HEADER = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(?:#.*)?$")
_KEY = re.compile(r"""^\s*((?:"[^"]*"|'[^']*'|[A-Za-z0-9_-]+)(?:\s*\.\s*(?:"[^"]*"|'[^']*'|[A-Za-z0-9_-]+))*)\s*=""")
_PART = re.compile(r""""([^"]*)"|'([^']*)'|([A-Za-z0-9_-]+)""")


def _parts(dotted: str) -> tuple[str, ...]:
    return tuple(next(g for g in m.groups() if g is not None) for m in _PART.finditer(dotted))


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """{key path: 1-based line} of every table header and every ``key =`` line (the first occurrence)."""
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    in_string = False
    for number, line in enumerate(text.splitlines(), start=1):
        if line.count('"""') % 2 or line.count("'''") % 2:  # a multi-line string starts or ends here
            in_string = not in_string
            if not in_string:
                continue
        if in_string and '"""' not in line and "'''" not in line:
            continue
        header = _HEADER.match(line)
        if header:
            table = _parts(header.group(1))
            lines.setdefault(table, number)
            continue
        key = _KEY.match(line)
        if key:
            path = table + _parts(key.group(1))
            for i in range(len(table) + 1, len(path) + 1):  # a.b.c = … also places a.b
                lines.setdefault(path[:i], number)
    return lines


def line_of(lines: dict[tuple[str, ...], int], *path: str) -> int:
    """The line of ``path``, else of its nearest enclosing table, else 1."""
    for i in range(len(path), 0, -1):
        if path[:i] in lines:
            return lines[path[:i]]
    return 1
