"""Train a small byte-level Llama on local text (by default the Python standard library's sources) and save it
as a HuggingFace safetensors directory the engine loads (``--weights DIR``).

The data are the bytes of every ``*.py`` file under ``source`` (test suites and site-packages left out), one file
after another with a NUL byte between; the vocabulary is the 256 byte values. A file is held out for evaluation
when the CRC-32 of its path relative to ``source`` is 0 mod ``HOLDOUT_MOD``, a split that any machine with the
same sources reproduces; ``train_meta.json`` in the output directory lists the held-out files and their bytes.

The model being trained is written with the engine's parameter names and conventions (HF Llama: rotate-half
RoPE, RMSNorm, GQA, SwiGLU), so its state dict *is* the checkpoint; a test checks that the engine's forward gives
the trainer's logits on the saved weights. Training is plain AdamW with warm-up and cosine decay over
``progress = max(step / steps, elapsed / time_budget_s)``: a wall-clock budget ends the run with the schedule
decayed, whatever the machine's speed. ``threads`` bounds the CPU threads torch uses.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from servesim.engine.config import EngineModelConfig
from servesim.errors import ConfigError, InputError
from servesim.kernels.elementwise import rope_tables

HOLDOUT_MOD = 20
SEPARATOR = 0  # the byte between two files
EXCLUDED_DIRS = {"site-packages", "test", "tests", "idle_test", "__pycache__"}

# Model shapes by role: the target whose quantized formats are measured, and a smaller draft for speculation.
# "target"/"draft" train in minutes on one CPU thread. The "-gpu" pair is sized for 90 s each on one H200 (bf16
# autocast): the target's 25.2M weights cost ~6 x 25.2M + attention 12 x 8 layers x 512 x 512 = ~180 MFLOP per
# byte at seq 512, so at an eager model's ~100-200 TFLOP/s (well under the ~700 peak: small GEMMs, elementwise
# kernels between them) 90 s sees 50-100M bytes, 4-8 passes over the ~12M training bytes of the standard library:
# enough to fit it without a long tail of overfitting. The draft has 1/8 of the target's weights (3.2M) and
# only 2 layers, because a decode step of such small models is bound by its kernel launches, not its FLOPs: a
# draft token should cost the engine about 2/8 of a target step, and 3 of them (k = 3) less than one. (Estimates;
# the run's train_meta.json records the steps and bytes it reached.)
SIZES = {
    "target": dict(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32, intermediate_size=384),
    "draft": dict(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=32, intermediate_size=128),
    "target-gpu": dict(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, head_dim=64,
                       intermediate_size=1536),
    "draft-gpu": dict(hidden_size=384, num_layers=2, num_heads=6, num_kv_heads=3, head_dim=64,
                      intermediate_size=1024),
}


@dataclass(frozen=True)
class TrainConfig:
    """What one training run does; validated where it is built."""

    out: str
    source: str | None = None  # default: the running Python's standard library
    size: str = "target"
    seq_len: int = 256
    batch_size: int = 16
    steps: int = 4000
    time_budget_s: float = 480.0
    lr: float = 3e-3
    warmup_steps: int = 50
    weight_decay: float = 0.1
    seed: int = 0
    device: str = "cpu"
    threads: int | None = 1  # torch.set_num_threads on the CPU; None leaves torch's default
    max_position_embeddings: int = 2048

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ConfigError(f"size must be one of {', '.join(SIZES)}, got {self.size!r}", field="size")
        for name in ("seq_len", "batch_size", "steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"must be >= 1, got {getattr(self, name)}", field=name)
        if not self.time_budget_s > 0:
            raise ConfigError(f"must be > 0, got {self.time_budget_s}", field="time_budget_s")
        if self.seq_len > self.max_position_embeddings:
            raise ConfigError(f"seq_len {self.seq_len} exceeds max_position_embeddings "
                              f"{self.max_position_embeddings}", field="seq_len")


def model_config(size: str = "target", max_position_embeddings: int = 2048) -> EngineModelConfig:
    """The engine's description of a byte-level model of ``size`` (vocabulary: the 256 byte values)."""
    return EngineModelConfig(name=f"byte-llama-{size}", architecture="LlamaForCausalLM", vocab_size=256,
                             max_position_embeddings=max_position_embeddings, rms_norm_eps=1e-5, rope_theta=10000.0,
                             **SIZES[size])


# ------------------------------------------------------------------------------------------------- data
def default_source() -> str:
    """The running Python's standard library: where ``os`` was loaded from (in a virtual environment that is the
    base installation's, ``sys.base_prefix``), else sysconfig's ``stdlib`` path."""
    import os
    import sys
    import sysconfig

    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for cand in (os.path.dirname(os.__file__), sysconfig.get_paths()["stdlib"],
                 os.path.join(sys.base_prefix, "lib", version)):
        if os.path.isfile(os.path.join(cand, "os.py")):
            return cand
    raise InputError("cannot find the standard library's sources: pass --source DIR", file=os.__file__)


def source_files(root: str | Path) -> list[Path]:
    """Every ``*.py`` under ``root`` outside :data:`EXCLUDED_DIRS`, sorted by relative path."""
    root = Path(root)
    if not root.is_dir():
        raise InputError("not a directory", file=str(root))
    files = [p for p in root.rglob("*.py")
             if p.is_file() and not EXCLUDED_DIRS.intersection(p.relative_to(root).parts[:-1])]
    if not files:
        raise InputError("no *.py files", file=str(root))
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def is_held_out(rel_path: str) -> bool:
    return zlib.crc32(rel_path.encode()) % HOLDOUT_MOD == 0


@dataclass(frozen=True)
class Corpus:
    train: np.ndarray  # uint8 bytes
    heldout: np.ndarray
    heldout_files: tuple[str, ...]
    train_files: int


def load_corpus(root: str | Path) -> Corpus:
    """The training and held-out bytes of ``root`` (files joined by :data:`SEPARATOR`)."""
    root = Path(root)
    parts: dict[bool, list[bytes]] = {True: [], False: []}
    held: list[str] = []
    for p in source_files(root):
        rel = p.relative_to(root).as_posix()
        out = is_held_out(rel)
        parts[out] += [p.read_bytes(), bytes([SEPARATOR])]
        if out:
            held.append(rel)
    if not held or not parts[False]:
        raise InputError(f"too few files to hold one in {HOLDOUT_MOD} out", file=str(root))
    arr = {k: np.frombuffer(b"".join(v), dtype=np.uint8) for k, v in parts.items()}
    return Corpus(arr[False], arr[True], tuple(held), len(parts[False]) // 2)


def windows(data: np.ndarray, length: int, count: int) -> torch.Tensor:
    """``count`` windows of ``length + 1`` bytes spaced evenly over ``data`` (inputs and next-byte targets)."""
    span = len(data) - (length + 1)
    if span < 0:
        raise ValueError(f"{len(data)} bytes are fewer than one window of {length + 1}")
    starts = np.linspace(0, span, count).astype(np.int64) if count > 1 else np.zeros(1, dtype=np.int64)
    return torch.from_numpy(np.stack([data[s:s + length + 1] for s in starts]).astype(np.int64))


# ------------------------------------------------------------------------------------------------ model
class _Attention(torch.nn.Module):
    def __init__(self, mc: EngineModelConfig) -> None:
        super().__init__()
        h = mc.hidden_size
        self.q_proj = torch.nn.Linear(h, mc.q_size, bias=False)
        self.k_proj = torch.nn.Linear(h, mc.kv_size, bias=False)
        self.v_proj = torch.nn.Linear(h, mc.kv_size, bias=False)
        self.o_proj = torch.nn.Linear(mc.q_size, h, bias=False)


class _MLP(torch.nn.Module):
    def __init__(self, mc: EngineModelConfig) -> None:
        super().__init__()
        self.gate_proj = torch.nn.Linear(mc.hidden_size, mc.intermediate_size, bias=False)
        self.up_proj = torch.nn.Linear(mc.hidden_size, mc.intermediate_size, bias=False)
        self.down_proj = torch.nn.Linear(mc.intermediate_size, mc.hidden_size, bias=False)


class _Layer(torch.nn.Module):
    def __init__(self, mc: EngineModelConfig) -> None:
        super().__init__()
        self.input_layernorm = torch.nn.RMSNorm(mc.hidden_size, eps=mc.rms_norm_eps)
        self.self_attn = _Attention(mc)
        self.post_attention_layernorm = torch.nn.RMSNorm(mc.hidden_size, eps=mc.rms_norm_eps)
        self.mlp = _MLP(mc)


class _Body(torch.nn.Module):
    def __init__(self, mc: EngineModelConfig) -> None:
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(mc.vocab_size, mc.hidden_size)
        self.layers = torch.nn.ModuleList(_Layer(mc) for _ in range(mc.num_layers))
        self.norm = torch.nn.RMSNorm(mc.hidden_size, eps=mc.rms_norm_eps)


class TrainModel(torch.nn.Module):
    """A Llama decoder over whole sequences (causal attention, no KV cache), named as HF's ``LlamaForCausalLM``."""

    def __init__(self, mc: EngineModelConfig, seed: int = 0) -> None:
        super().__init__()
        self.mc = mc
        self.model = _Body(mc)
        self.lm_head = torch.nn.Linear(mc.hidden_size, mc.vocab_size, bias=False)
        cos, sin = rope_tables(mc.head_dim, mc.max_position_embeddings, mc.rope_theta, mc.rope_scaling)
        self.register_buffer("cos", torch.cat([cos, cos], -1), persistent=False)
        self.register_buffer("sin", torch.cat([sin, sin], -1), persistent=False)
        gen = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                continue
            std = 0.02 / math.sqrt(2 * mc.num_layers) if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=gen) * std)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, T, vocab]`` of byte ids ``[B, T]``."""
        mc = self.mc
        b, t = ids.shape
        cos, sin = self.cos[:t].to(ids.device), self.sin[:t].to(ids.device)
        x = self.model.embed_tokens(ids)
        for layer in self.model.layers:
            h = layer.input_layernorm(x)
            a = layer.self_attn
            q = a.q_proj(h).view(b, t, mc.num_heads, mc.head_dim).transpose(1, 2)
            k = a.k_proj(h).view(b, t, mc.num_kv_heads, mc.head_dim).transpose(1, 2)
            v = a.v_proj(h).view(b, t, mc.num_kv_heads, mc.head_dim).transpose(1, 2)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            rep = mc.num_heads // mc.num_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + a.o_proj(o.transpose(1, 2).reshape(b, t, mc.q_size))
            h = layer.post_attention_layernorm(x)
            m = layer.mlp
            x = x + m.down_proj(F.silu(m.gate_proj(h)) * m.up_proj(h))
        return self.lm_head(self.model.norm(x))

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()}


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF ``apply_rotary_pos_emb`` (rotate half) on ``[B, H, T, D]``."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin


# ------------------------------------------------------------------------------------------------- loop
def lr_at(progress: float, step: int, cfg: TrainConfig) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine from ``lr`` to ``lr / 10`` as progress goes 0 -> 1."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps)
    return cfg.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def _batch_starts(rng: np.random.Generator, high: int, batch_size: int, dev: torch.device, chunk: int = 256):
    """Each step's window starts (``batch_size`` uniform in ``[0, high)``), drawn ``chunk`` steps at a time and
    moved to ``dev`` in one copy: a host-to-GPU copy from pageable memory waits for the GPU, and one per step
    would stop the host from queueing the next step while the GPU runs this one. The stream of draws is one
    ``rng.integers`` call per step, as drawn one by one."""
    while True:
        block = torch.from_numpy(np.stack([rng.integers(0, high, batch_size) for _ in range(chunk)])).to(dev)
        yield from block


def bits_per_byte(model: TrainModel, batch: torch.Tensor) -> float:
    """Mean next-byte cross-entropy of ``batch`` ``[B, T + 1]`` in bits."""
    with torch.no_grad():
        logits = model(batch[:, :-1])
        nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
    return nll.item() / math.log(2)


def train(cfg: TrainConfig, on_log: Callable[[dict], None] | None = None) -> dict:
    """Train; write ``model.safetensors``, ``config.json`` and ``train_meta.json`` into ``cfg.out``; the meta."""
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, on_log)
    finally:
        torch.set_num_threads(threads)


def _train(cfg: TrainConfig, on_log: Callable[[dict], None] | None) -> dict:
    from servesim.engine.weights import save_state_dict

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("no CUDA device: train with device 'cpu'", field="device")
    dev = torch.device(cfg.device)
    source = cfg.source or default_source()
    corpus = load_corpus(source)
    mc = model_config(cfg.size, cfg.max_position_embeddings)
    torch.manual_seed(cfg.seed)
    model = TrainModel(mc, cfg.seed).to(dev)
    decay = [p for n, p in model.named_parameters() if p.dim() == 2]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0}],
                            lr=cfg.lr, betas=(0.9, 0.95), fused=dev.type == "cuda")
    starts_iter = _batch_starts(np.random.default_rng(cfg.seed), len(corpus.train) - cfg.seq_len - 1,
                                cfg.batch_size, dev)
    data = torch.from_numpy(corpus.train.astype(np.int64)).to(dev)  # on the GPU: no host copy per step
    offsets = torch.arange(cfg.seq_len + 1, device=dev)
    val = windows(corpus.heldout, cfg.seq_len, 32).to(dev)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else contextlib.nullcontext()
    log, t0, step, progress = [], time.perf_counter(), 0, 0.0
    while progress < 1.0:
        batch = data[next(starts_iter)[:, None] + offsets]
        for group in opt.param_groups:
            group["lr"] = lr_at(progress, step, cfg)
        with autocast:
            logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, mc.vocab_size), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        elapsed = time.perf_counter() - t0
        progress = max(step / cfg.steps, elapsed / cfg.time_budget_s)
        if step % 100 == 0 or progress >= 1.0:
            row = {"step": step, "elapsed_s": round(elapsed, 1), "lr": group["lr"],
                   "train_bits_per_byte": loss.item() / math.log(2)}
            if step % 500 == 0 or progress >= 1.0:
                row["heldout_bits_per_byte"] = bits_per_byte(model, val)
            log.append(row)
            if on_log:
                on_log(row)
    meta = {"config": asdict(cfg), "source": str(source), "model": mc.to_json(), "steps": step,
            "tokens": step * cfg.batch_size * cfg.seq_len, "train_s": round(time.perf_counter() - t0, 1),
            "threads": torch.get_num_threads() if dev.type == "cpu" else None, "device": cfg.device,
            "torch": torch.__version__, "train_bytes": int(len(corpus.train)),
            "train_files": corpus.train_files, "heldout_bytes": int(len(corpus.heldout)),
            "heldout_files": list(corpus.heldout_files), "log": log}
    save_state_dict(model.hf_state_dict(), mc, cfg.out)
    Path(cfg.out, "train_meta.json").write_text(json.dumps(meta, indent=1))
    return meta

