"""Run outputs: Parquet tables, a deterministic summary.json and a Chrome trace (terminal tables: ``cli/render``).

The simulator and the engine write the same files, so one reader and one comparison serve both:

- ``requests.parquet``  one row per request (``metrics.REQUEST_COLUMNS``)
- ``timeline.parquet``  one row per iteration or run of identical decode iterations
- ``summary.json``      the summary plus run metadata under ``"meta"``; byte-identical for the same
                        scenario and seed (wall-clock fields go to ``run.json`` instead)
- ``run.json``          the full metadata, wall-clock time included
- ``trace.json``        on request: Chrome trace events (chrome://tracing, ui.perfetto.dev)

A failed or interrupted write leaves nothing behind: everything goes to a temporary sibling directory first
and is moved into place only once every file is complete, with Ctrl-C and SIGTERM held back while the files
move (a few renames), so a run's files are replaced as a set: the complete previous ones or the complete new
ones, never a mix. :func:`published` lists what this process has put in place (for the interrupt message).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from servesim.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

OUTPUT_FILES = ("requests.parquet", "timeline.parquet", "summary.json", "run.json", "trace.json")
# Metadata that differs between identical runs; kept out of summary.json so it stays byte-identical.
VOLATILE_META_KEYS = frozenset({"wall_time_s", "started_at", "finished_at", "hostname", "host", "pid"})


def to_json_value(x: object) -> object:
    """Plain JSON types: numpy scalars unwrapped, NaN and infinities as null, tuples and arrays as lists."""
    if isinstance(x, Mapping):
        return {str(k): to_json_value(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [to_json_value(v) for v in x]
    if x is None or isinstance(x, (str, bool)):
        return x
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    pd_ = sys.modules.get("pandas")  # a pandas NA can only come from a loaded pandas
    if pd_ is not None and x is pd_.NA:
        return None
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"cannot write {type(x).__name__} to JSON: {x!r}")


def dumps_json(obj: object) -> str:
    """Deterministic JSON text: sorted keys, two-space indent, shortest round-trip floats, newline."""
    return json.dumps(to_json_value(obj), sort_keys=True, indent=2, allow_nan=False) + "\n"


def summary_document(summary: Mapping[str, object], meta: Mapping[str, object]) -> dict[str, object]:
    """What summary.json holds: the summary, and the metadata without its wall-clock fields."""
    return {**summary, "meta": {k: v for k, v in meta.items() if k not in VOLATILE_META_KEYS}}


def _iteration_kind(prefill: int, decode: int) -> str:
    if decode == 0:
        return "prefill"
    return "decode" if prefill == 0 else "mixed"


def iter_trace_events(timeline: pd.DataFrame, chunk_rows: int = 50_000) -> Iterator[list[dict[str, object]]]:
    """Chrome trace events in chunks (so a long timeline never sits in memory as one list):
    process names, then per row one "X" slice (pid = replica, µs) and "C" counters for KV and queue."""
    replicas = sorted(set(timeline["replica"].tolist()))
    yield [{"name": "process_name", "ph": "M", "pid": r, "tid": 0, "args": {"name": f"replica {r}"}}
           for r in replicas]
    arg_names = ("steps", "batch_size", "prefill_tokens", "decode_tokens", "num_running", "num_waiting")
    for lo in range(0, len(timeline), chunk_rows):
        part = timeline.iloc[lo : lo + chunk_rows]
        cols = {c: part[c].tolist() for c in part.columns}  # plain Python numbers for json
        events: list[dict[str, object]] = []
        for i in range(len(part)):
            pid, ts = cols["replica"][i], cols["start_s"][i] * 1e6
            events.append({
                "name": _iteration_kind(cols["prefill_tokens"][i], cols["decode_tokens"][i]),
                "cat": "iteration", "ph": "X", "pid": pid, "tid": 0, "ts": ts,
                "dur": (cols["end_s"][i] - cols["start_s"][i]) * 1e6,
                "args": {a: cols[a][i] for a in arg_names},
            })
            events.append({"name": "kv_blocks", "ph": "C", "pid": pid, "ts": ts,
                           "args": {"used": cols["kv_blocks_used"][i]}})
            events.append({"name": "queue", "ph": "C", "pid": pid, "ts": ts,
                           "args": {"running": cols["num_running"][i], "waiting": cols["num_waiting"][i]}})
        yield events


def chrome_trace_events(timeline: pd.DataFrame) -> dict[str, object]:
    """The whole Chrome trace document for a timeline (``{"traceEvents": [...]}``)."""
    events = [e for chunk in iter_trace_events(timeline) for e in chunk]
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def _write_trace(path: Path, timeline: pd.DataFrame) -> None:
    """Stream the trace document to ``path`` chunk by chunk (one json.dumps per chunk is fast)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write('{"displayTimeUnit":"ms","traceEvents":[')
        first = True
        for events in iter_trace_events(timeline):
            if events:
                text = json.dumps(events, separators=(",", ":"), allow_nan=False)[1:-1]
                f.write(text if first else "," + text)
                first = False
        f.write("]}\n")


def check_writable(out_dir: str | os.PathLike[str]) -> Path:
    """Refuse, before any work, a directory that :func:`write_outputs` could not create or fill. The write makes
    a temporary sibling of ``out_dir`` (so its parent, or the nearest ancestor that exists, must take a new
    directory) and moves files into an existing ``out_dir``; both are probed by making and removing a
    directory. Leaves nothing behind; InputError naming ``out_dir`` otherwise."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError("exists and is not a directory", field="output_dir", file=str(out))
    ancestor = out.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"cannot be created: {ancestor} is not a directory", field="output_dir", file=str(out))
    for where in (ancestor, out) if out.exists() else (ancestor,):
        try:
            tempfile.TemporaryDirectory(prefix=".servesim-probe-", dir=where).cleanup()
        except OSError as exc:
            raise InputError(f"cannot write in {where}: {exc.strerror or exc}", field="output_dir",
                             file=str(out)) from None
    return out


def write_outputs(out_dir: str | os.PathLike[str], *run: object, record: bool = True, **files: object) -> Path:
    """Write a run's files into ``out_dir`` (created if needed), all of them or none: ``run`` is ``requests,
    timeline, summary, meta`` and ``files`` the options of :func:`run_writers` (``chrome_trace=True``, ``extra``).

    In an existing directory, files of ours that this run does not write (a stale ``trace.json``)
    are removed, so the directory always describes one run. Other files there are left alone.
    ``extra`` adds files (name -> writer of that path), e.g. the engine's iteration log.
    """
    return write_files(out_dir, run_writers(*run, **files), owned=OUTPUT_FILES, record=record)


def run_writers(
    requests: pd.DataFrame,
    timeline: pd.DataFrame,
    summary: Mapping[str, object],
    meta: Mapping[str, object],
    *,
    chrome_trace: bool = False,
    extra: Mapping[str, Callable[[Path], None]] | None = None,
) -> dict[str, Callable[[Path], None]]:
    """The writers of one run's files (name -> writer of that path), as :func:`write_outputs` writes them; give
    them to :func:`folder` to write the run as one directory of a larger set."""
    writers: dict[str, Callable[[Path], None]] = {
        "requests.parquet": lambda p: requests.to_parquet(p, index=False),
        "timeline.parquet": lambda p: timeline.to_parquet(p, index=False),
        "summary.json": lambda p: p.write_text(dumps_json(summary_document(summary, meta)), encoding="utf-8"),
        "run.json": lambda p: p.write_text(dumps_json(meta), encoding="utf-8"),
    }
    if chrome_trace:
        writers["trace.json"] = lambda p: _write_trace(p, timeline)
    writers.update(extra or {})
    return writers


def folder(writers: Mapping[str, Callable[[Path], None]]) -> Callable[[Path], None]:
    """A writer of a directory holding ``writers``' files: one entry of :func:`write_files` that is a whole run
    (``compare``'s run folders, ``validate``'s predicted/ and measured/), replaced with the rest of the set."""
    def write(path: Path) -> None:
        path.mkdir()
        for name, w in writers.items():
            w(path / name)
    return write


_PUBLISHED: list[Path] = []


def published() -> list[Path]:
    """The output directories this process has completed, in order (what an interrupt leaves written)."""
    return list(_PUBLISHED)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back for the duration (in the main thread; elsewhere a no-op): one that arrives
    meanwhile is raised again, to the handler in place before, as soon as the block ends. (Python-level handlers:
    a signal mask would not do, since the kernel hands a signal to any thread not masking it, pyarrow's among
    them.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: pending.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)  # None: set outside Python
        if pending:
            signal.raise_signal(pending[0])


def write_files(out_dir: str | os.PathLike[str], writers: Mapping[str, Callable[[Path], None]],
                owned: tuple[str, ...] = (), *, record: bool = True) -> Path:
    """Write each file (``writers[name](path)``; a :func:`folder` writes a directory) into ``out_dir``, all of
    them or none: everything goes to a temporary sibling directory first and moves into place once complete,
    SIGINT and SIGTERM held back while it moves. Names in ``owned`` that this call does not write are removed
    from an existing ``out_dir``. ``record`` False keeps it off :func:`published` (an intermediate, not an
    output)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError("exists and is not a directory", field="output_dir", file=str(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        for name, write in writers.items():
            write(tmp / name)
        with signals_held():
            _publish(tmp, out, owned)
            if record:
                _PUBLISHED.append(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _publish(tmp: Path, out: Path, owned: tuple[str, ...]) -> None:
    """Move the finished files into place: one rename for a new directory, else entry by entry (a directory
    replacing one moves the old one into ``tmp`` first, removed with it)."""
    if not out.exists():
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp made it private; give it a normal directory's mode
        os.rename(tmp, out)
        return
    written = sorted(p.name for p in tmp.iterdir())
    for name in owned:
        if name not in written:
            (out / name).unlink(missing_ok=True)
    for name in written:
        target = out / name
        if target.is_dir() and not target.is_symlink():
            os.rename(target, tmp / f".old.{name}")
        os.replace(tmp / name, target)
    shutil.rmtree(tmp)


def read_outputs(out_dir: str | os.PathLike[str]) -> dict[str, object]:
    """Load a run's ``requests``, ``timeline`` (DataFrames) and ``summary`` (dict) back."""
    import pandas as pd

    out = Path(out_dir)
    for name in ("requests.parquet", "timeline.parquet", "summary.json"):
        if not (out / name).is_file():
            raise InputError("is not a servesim output directory (missing file)", file=str(out / name))
    return {
        "requests": pd.read_parquet(out / "requests.parquet"),
        "timeline": pd.read_parquet(out / "timeline.parquet"),
        "summary": json.loads((out / "summary.json").read_text(encoding="utf-8")),
    }
