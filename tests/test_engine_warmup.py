"""The start-up warm-up's decode-attention launches (run on CUDA only, with the Triton backend; here through the
same kernels under the interpreter): every query length and split count it compiles is a valid launch."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from servesim.engine import engine as E
from servesim.engine.engine import EngineConfig, build_engine
from servesim.engine.kernels import BACKENDS
from tests.engine_helpers import tiny_config, write_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = write_config(tiny_config(), tmp_path_factory.mktemp("tiny"))
    return build_engine(EngineConfig(model=path, device="cpu", num_gpu_blocks=8, cuda_graphs=False,
                                     capture_at_start=False, max_model_len=256, max_num_batched_tokens=64,
                                     max_num_seqs=4))


def test_warmup_launches_every_query_length(tiny, monkeypatch):
    """Queries 1 and 1 + k (an eager verification, k = 3 and k = 17: past one block of the block table)."""
    pytest.importorskip("triton")
    calls = []
    model, cache = tiny.model, tiny.runner.cache
    real = BACKENDS["triton"]

    def decode(q, *a, **kw):
        calls.append((tuple(q.shape), kw["num_splits"]))
        return real.decode_attention(q.to(torch.bfloat16), *a, **kw)

    monkeypatch.setattr(model, "backend", replace(real, decode_attention=decode))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    cfg = EngineConfig(model="x", max_num_batched_tokens=64)
    E._warmup(model, cache, cfg, (1, 4, 18))
    heads, hd = model.cfg.num_heads, model.cfg.head_dim
    assert {s for _, s in calls} == set(E.WARM_SPLITS)
    assert {shape for shape, _ in calls} == {(1, heads, hd), (1, 4, heads, hd), (1, 18, heads, hd)}
