"""Launch configurations per GPU: which device's tuned tables a kernel launches with.

Each kernel keeps the tables its ``--tune`` sweep chose on an H100 in code (``quant/configs.py``, ``quant/w8a8.py``,
``attention/decode.py``, ``attention/prefill.py``, ``spec/verify.py``); they are the reference and the fallback.
Another GPU's tables live in ``servesim/kernels/configs/<key>.json`` (package data), one section per kernel, each
written by that kernel's benchmark (``bench/quant_gemm.py [--w8a8] --tune``, ``bench/attention.py --tune``,
``bench/spec_verify.py``) with the card, date and command that produced it.

The device key is :func:`~servesim.kernels.timing.card_slug` of the CUDA device name ("NVIDIA H200" -> ``h200``).
A process picks its key once (the current CUDA device; the H100's off CUDA and under ``TRITON_INTERPRET=1``, so
CPU tests see the tables in code) and builds each kernel's tables once per key, so a launch pays one dict lookup.
A GPU with no file, or a file without a kernel's section, gets the H100 tables, said once in the log.

    python3 -m servesim.kernels.tuned                    # this process's device key and where its tables come from
    python3 -m servesim.kernels.tuned install FILE...    # merge a benchmark's configs file into the package
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .timing import card_slug

REFERENCE = "h100"  # the device whose tables are the code's
CONFIG_DIR = Path(__file__).with_name("configs")
# a device file's sections, one per kernel family
KERNELS = ("quant_gemm", "w8a8_gemm", "decode_attention", "prefill_attention", "spec_verify")

log = logging.getLogger(__name__)
T = TypeVar("T")
_CURRENT: list[str] = []  # the process's device key, once known
_TABLES: dict[tuple[str, str], object] = {}  # (kernel, device key) -> the tables its builder made
_FILES: dict[str, dict] = {}  # device key -> its parsed file ({} when there is none)
# kernel -> the current device's tables: the launchers' fast path (one dict lookup, no call); reset() empties it
ACTIVE: dict[str, object] = {}


def device_key(name: str) -> str:
    """The key of a CUDA device name: ``h100`` for "NVIDIA H100 80GB HBM3", ``h200`` for "NVIDIA H200"."""
    return card_slug(name)


def current_key() -> str:
    """This process's device key: the current CUDA device's; :data:`REFERENCE` off CUDA or under the interpreter."""
    if not _CURRENT:
        import torch

        on_gpu = os.environ.get("TRITON_INTERPRET", "0") != "1" and torch.cuda.is_available()
        _CURRENT.append(device_key(torch.cuda.get_device_name()) if on_gpu else REFERENCE)
    return _CURRENT[0]


def config_path(key: str) -> Path:
    return CONFIG_DIR / f"{key}.json"


def _file(key: str) -> dict:
    if key not in _FILES:
        path = config_path(key)
        _FILES[key] = json.loads(path.read_text()) if path.exists() else {}
    return _FILES[key]


def section(kernel: str, key: str) -> dict | None:
    """The ``kernel`` section of device ``key``'s file; None for the reference device or where there is none."""
    if key == REFERENCE:
        return None
    found = _file(key).get(kernel)
    if found is None:
        log.warning("servesim.kernels: no tuned %s launch configs for %s in %s; using the %s tables", kernel, key,
                    config_path(key), REFERENCE.upper())
    return found


def tables(kernel: str, build: Callable[[dict | None], T], device: str | None = None) -> T:
    """``build(section)`` for ``device`` (a key; default this process's), made once and then reused.

    ``build(None)`` must return the tables in code themselves (not copies), so that a benchmark which updates
    the returned tables in place launches with the update."""
    key = device or current_key()
    got = _TABLES.get((kernel, key))
    if got is None:
        got = _TABLES[(kernel, key)] = build(section(kernel, key))
    if key == current_key():
        ACTIVE[kernel] = got
    return got


def reset() -> None:
    """Forget the device key, the files read and the tables built (tests; after installing a file)."""
    _CURRENT.clear()
    _TABLES.clear()
    _FILES.clear()
    ACTIVE.clear()


def configs_document(card: str, kernel: str, body: dict, provenance: dict) -> dict:
    """A configs file holding one kernel's section: what a ``--tune`` run writes and :func:`install` merges."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    return {"device": device_key(card), "card": card, kernel: {**provenance, **body}}


def write_document(path: str | Path, doc: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    return path


def install(path: str | Path, directory: str | Path | None = None) -> Path:
    """Merge the sections of configs file ``path`` into its device's package file (a section replaces the old one).

    The H100's tables are code, not a file: a file for it is refused (edit the tables in code instead)."""
    doc = json.loads(Path(path).read_text())
    key = doc.get("device")
    if not key or not any(k in doc for k in KERNELS):
        raise ValueError(f"{path} is not a configs file (it needs 'device' and one of {KERNELS})")
    if key == REFERENCE:
        raise ValueError(f"the {REFERENCE.upper()} tables are the code's: copy {path}'s configs into the kernel "
                         "modules instead")
    if key == "cpu":
        raise ValueError(f"{path} comes from a CPU run (--smoke): the interpreter always launches with the "
                         f"{REFERENCE.upper()} tables")
    target = Path(directory or CONFIG_DIR) / f"{key}.json"
    merged = json.loads(target.read_text()) if target.exists() else {"device": key}
    merged.update({k: v for k, v in doc.items() if k in KERNELS or k == "card"})
    write_document(target, merged)
    reset()
    return target


def report_written(path: str | Path, install_it: bool) -> None:
    """A ``--tune`` run's last words: where its configs file is, how to install it, and with ``install_it`` the
    install itself (a refused one is said, not raised: the run's results are already written)."""
    print(f"configs file: {path} (install: python3 -m servesim.kernels.tuned install {path})", flush=True)
    if install_it:
        try:
            print(f"installed as {install(path)}", flush=True)
        except ValueError as e:
            print(f"not installed: {e}", flush=True)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["install"]:
        for path in args[1:]:
            print(f"{path} -> {install(path)}")
        return
    key = current_key()
    if key == REFERENCE:
        print(f"device key {key}: every kernel launches with the tables in code")
        return
    found = _file(key)
    print(f"device key {key}; file {config_path(key)} ({'present' if found else 'absent'})")
    for kernel in KERNELS:
        got = found.get(kernel)
        print(f"  {kernel}: " + (f"tuned {got.get('date', '?')} on {got.get('card', '?')}" if got
                                 else f"the {REFERENCE.upper()} tables in code"))


if __name__ == "__main__":
    main()
