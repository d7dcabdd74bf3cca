"""Quality of a weight format, measured: next-byte cross-entropy (bits per byte, perplexity) of a byte-level model
trained by :mod:`servesim.engine.train`, on the files it held out, through the engine's own forward pass.

The model directory's ``train_meta.json`` names the source tree and the held-out files; the split is recomputed
from the sources and must give the same files (else the evaluation would not be on held-out text). Evaluation
windows are ``seq_len + 1`` bytes spaced evenly over the held-out bytes, each run as one prompt; calibration
windows (AWQ, GPTQ) come from the training bytes, so no evaluated byte is seen by a quantizer.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from servesim.engine.calibration_inputs import linear_inputs, prefill_logits
from servesim.engine.config import EngineModelConfig
from servesim.engine.kernels import BACKENDS
from servesim.engine.model import LlamaModel
from servesim.engine.train import Corpus, load_corpus, windows
from servesim.engine.weights import build_weights, load_state_dict, needs_calibration
from servesim.errors import InputError


@dataclass(frozen=True)
class Score:
    """Mean next-byte cross-entropy over the evaluation windows, and per window (for paired comparisons)."""

    nats_per_window: torch.Tensor  # [windows], fp64
    bytes_scored: int

    @property
    def bits_per_byte(self) -> float:
        return float(self.nats_per_window.mean()) / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(float(self.nats_per_window.mean()))


def heldout_corpus(model_dir: str | Path) -> tuple[Corpus, dict]:
    """The corpus the model was trained on, checked against its ``train_meta.json``; and that meta."""
    meta_file = Path(model_dir) / "train_meta.json"
    if not meta_file.is_file():
        raise InputError("no train_meta.json (train the model with `servesim train`)", file=str(model_dir))
    meta = json.loads(meta_file.read_text())
    corpus = load_corpus(meta["source"])
    if list(corpus.heldout_files) != meta["heldout_files"]:
        raise InputError(f"the held-out files of {meta['source']} differ from those the model was trained without",
                         file=str(meta_file), field="heldout_files")
    return corpus, meta


def score(model: LlamaModel, batch: torch.Tensor, block_size: int = 16) -> Score:
    """Cross-entropy of every next byte of each window ``[B, T + 1]`` (one prompt each, every position sampled)."""
    t = batch.shape[1] - 1
    rows = torch.arange(t, device=batch.device)
    nats = []
    with torch.no_grad():
        for w in batch:
            logits = prefill_logits(model, w[:-1], block_size, rows)
            nats.append(F.cross_entropy(logits.double(), w[1:]).item())
    return Score(torch.tensor(nats, dtype=torch.float64), batch.shape[0] * t)


def quantized_model(model_dir: str | Path, weight_format: str, quantizer: str = "rtn",
                    calib_windows: torch.Tensor | None = None, max_rows: int = 4096) -> LlamaModel:
    """The model of ``model_dir`` in ``weight_format`` (a spec) on the CPU reference path (float32 activations),
    its weights first rounded to bf16 as a GPU would hold them; AWQ/GPTQ calibrated on ``calib_windows``."""
    mc = EngineModelConfig.resolve(str(model_dir))
    sd = {k: v.float() for k, v in load_state_dict(model_dir, mc, torch.bfloat16).items()}
    calib = None
    if needs_calibration(mc, weight_format, quantizer):
        if calib_windows is None:
            raise ValueError(f"{quantizer} needs calibration windows")
        from servesim.engine.engine import EngineConfig

        calib = linear_inputs(mc, sd, EngineConfig(device="cpu"), torch.device("cpu"), calib_windows, max_rows)
    weights = build_weights(mc, sd, weight_format, calib, quantizer)
    return LlamaModel(mc, weights, BACKENDS["torch"], max_positions=mc.max_position_embeddings)


def eval_windows(corpus: Corpus, seq_len: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(evaluation windows from the held-out bytes, calibration windows from the training bytes)."""
    return windows(corpus.heldout, seq_len, count), windows(corpus.train, seq_len, count)
