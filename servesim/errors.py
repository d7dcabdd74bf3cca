"""User-facing errors: one clear line naming the file, row, column or field at fault.

The CLI turns these into ``error: <message>`` on stderr and exit code 2, with no traceback.
Every package may import this module (it imports nothing of ours).
"""

from __future__ import annotations

import re

# What str.splitlines() splits on: a message keeps its one line whatever the file's names and values hold.
_LINE_BREAKS = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def one_line(text: str) -> str:
    """``text`` with every line break escaped (``\\n``), as it is when quoted from a file."""
    return _LINE_BREAKS.sub(lambda m: repr(m.group())[1:-1], text)


class InputError(ValueError):
    """Bad input from the user: a file, a row, a column or a config field."""

    def __init__(
        self,
        problem: str,
        *,
        file: str | None = None,
        row: int | None = None,
        column: str | None = None,
        field: str | None = None,
    ) -> None:
        self.problem = problem
        self.file, self.row, self.column, self.field = file, row, column, field
        where = []
        if file is not None:
            where.append(str(file))
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column '{column}'")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(one_line(f"{', '.join(where)}: {problem}" if where else problem))


class ConfigError(InputError):
    """A configuration that cannot work (model does not fit, TP does not divide heads, ...)."""


def unknown_name(what: str, name: str, known, aliases: dict[str, str] | None = None) -> str:
    """``unknown GPU 'H10'; closest: H100-SXM, H100-PCIe; known: ...``: the closest names first (difflib, also
    over ``aliases``, which map another spelling to a known name), then every known one."""
    import difflib

    known = list(known)
    spellings = {k.lower(): k for k in known}
    spellings.update({a.lower(): k for a, k in (aliases or {}).items()})
    close = difflib.get_close_matches(str(name).lower(), list(spellings), n=6, cutoff=0.5)
    close = list(dict.fromkeys(spellings[c] for c in close))[:3]
    hint = f"closest: {', '.join(close)}; " if close else ""
    return f"unknown {what} '{name}'; {hint}known: {', '.join(known)}"
