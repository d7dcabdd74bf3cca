"""Named numpy columns: the tables a simulation reads (its workload) and writes (requests, timeline).

A ``Table`` maps column names to numpy arrays of one length. The workload loaders, the simulator and the
summary work on these; ``frame()`` builds the pandas DataFrame on demand, so pandas (and pyarrow, which it
loads) is imported only by what needs a DataFrame: writing a file, the dashboard, a caller of
``Workload.requests`` or ``Result.requests``. A simulation that writes nothing never imports it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


class Table:
    """Columns of equal length, in order. ``table[name]`` is the column's array; ``len(table)`` its rows."""

    __slots__ = ("_cols", "_rows")

    def __init__(self, columns: Mapping[str, Any] | None = None, rows: int | None = None) -> None:
        self._cols: dict[str, np.ndarray] = {}
        self._rows = rows
        for name, values in (columns or {}).items():
            self[name] = values
        if self._rows is None:
            self._rows = 0

    @classmethod
    def of(cls, data: Table | pd.DataFrame | Mapping[str, Any]) -> Table:
        """``data`` as a Table: itself, a DataFrame's columns (missing values of object columns as None), or a
        mapping of columns."""
        if isinstance(data, Table):
            return data
        if hasattr(data, "iloc"):  # a DataFrame
            cols = {}
            for name in data.columns:
                s = data[name]
                cols[str(name)] = s.to_numpy(dtype=object, na_value=None) if s.dtype.kind not in "biufcmM" \
                    else s.to_numpy(copy=True)
            return cls(cols, rows=len(data))
        return cls(data)

    # -- mapping ------------------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> np.ndarray:
        return self._cols[name]

    def __setitem__(self, name: str, values: Any) -> None:
        arr = values if isinstance(values, np.ndarray) else _array(values)
        if self._rows is None:
            self._rows = len(arr)
        elif len(arr) != self._rows:
            raise ValueError(f"column {name!r} has {len(arr)} rows, the table {self._rows}")
        self._cols[name] = arr

    def __iter__(self) -> Iterator[str]:
        return iter(self._cols)

    def __len__(self) -> int:  # rows, as a DataFrame's len
        return self._rows

    def items(self):
        return self._cols.items()

    def __contains__(self, name: object) -> bool:
        return name in self._cols

    @property
    def columns(self) -> list[str]:
        return list(self._cols)

    # -- rows ---------------------------------------------------------------------------------------------
    def take(self, rows: slice | np.ndarray) -> Table:
        """The rows ``rows`` selects (a slice, a boolean mask or indices), as a new table of copies."""
        out = Table({name: col[rows].copy() for name, col in self._cols.items()})
        if not self._cols:
            out._rows = len(range(self._rows)[rows]) if isinstance(rows, slice) else int(np.sum(rows))
        return out

    def copy(self) -> Table:
        return Table({name: col.copy() for name, col in self._cols.items()}, rows=self._rows)

    def frame(self) -> pd.DataFrame:
        """The table as a pandas DataFrame (imports pandas)."""
        import pandas as pd

        return pd.DataFrame(self._cols, index=pd.RangeIndex(self._rows))


def _array(values: Any) -> np.ndarray:
    """``values`` as a 1-D array; a list of tuples or lists stays one object per row."""
    if isinstance(values, (list, tuple)) and values and isinstance(values[0], (list, tuple)):
        out = np.empty(len(values), dtype=object)
        for i, v in enumerate(values):
            out[i] = v
        return out
    return np.asarray(values)
