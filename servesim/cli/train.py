"""``servesim train``: train a small byte-level Llama on local text (the standard library's sources by default)
and save it as a HuggingFace safetensors directory that ``replay --weights`` and the quality benchmark load."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from servesim.cli.app import app
from servesim.cli.render import make_console

_OUT = typer.Option(..., "--out", metavar="DIR", help="where model.safetensors, config.json and train_meta.json go "
                    "(keep it outside the repository)")
_SOURCE = typer.Option(None, "--source", metavar="DIR",
                       help="text to train on: every *.py under DIR (default: the standard library)")


@app.command("train", context_settings={"max_content_width": 100})
def train_cmd(
    out: Path = _OUT,
    source: Optional[Path] = _SOURCE,  # noqa: UP045
    size: str = typer.Option("target", "--size", help="target | draft (CPU scale) | target-gpu | draft-gpu"),
    time_budget_s: float = typer.Option(480.0, "--time-budget-s", help="wall-clock budget; the schedule ends with it"),
    steps: int = typer.Option(4000, "--steps", help="at most this many steps"),
    batch_size: int = typer.Option(16, "--batch-size", help="sequences per step"),
    seq_len: int = typer.Option(256, "--seq-len", help="bytes per sequence"),
    lr: float = typer.Option(3e-3, "--lr", help="peak learning rate"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda (bf16 autocast)"),
    threads: int = typer.Option(1, "--threads", help="CPU threads for torch (0: torch's default)"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train a byte-level Llama and save it for the engine."""
    from servesim.engine.train import TrainConfig, train

    cfg = TrainConfig(out=str(out), source=str(source) if source else None, size=size, seq_len=seq_len,
                      batch_size=batch_size, steps=steps, time_budget_s=time_budget_s, lr=lr, device=device,
                      threads=threads or None, seed=seed)
    console = make_console()

    def show(row: dict) -> None:
        held = f", held-out {row['heldout_bits_per_byte']:.3f}" if "heldout_bits_per_byte" in row else ""
        console.print(f"step {row['step']:>5}  {row['elapsed_s']:>6.1f} s  lr {row['lr']:.2e}  "
                      f"train {row['train_bits_per_byte']:.3f} bits/byte{held}", highlight=False)

    meta = train(cfg, show)
    console.print(f"wrote {out}: {meta['steps']} steps, {meta['tokens']:,} bytes in {meta['train_s']} s; "
                  f"{len(meta['heldout_files'])} files ({meta['heldout_bytes']:,} bytes) held out", highlight=False)
