"""The byte-level trainer: its split, its schedule, and a checkpoint the engine loads and runs with the trainer's
own logits; the quality evaluation on held-out files."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from servesim.cli.main import main
from servesim.engine import quality
from servesim.engine import train as T
from servesim.engine.config import EngineModelConfig
from servesim.engine.kernels import BACKENDS
from servesim.engine.model import LlamaModel
from servesim.engine.weights import build_weights, load_state_dict
from servesim.errors import ConfigError, InputError


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A small tree of Python-like files (some in excluded folders), at least one held out."""
    root = tmp_path_factory.mktemp("src")
    for i in range(60):
        d = root / ("pkg" if i % 2 else "lib")
        d.mkdir(exist_ok=True)
        body = "".join(f"def f{i}_{j}(x):\n    return x * {j} + {i}\n\n" for j in range(12))
        (d / f"m{i}.py").write_text(body)
    (root / "test").mkdir()
    (root / "test" / "test_x.py").write_text("assert False\n")
    (root / "site-packages").mkdir()
    (root / "site-packages" / "y.py").write_text("import this\n")
    return root


def test_split_follows_the_path_crc_and_skips_tests_and_site_packages(source):
    files = [p.relative_to(source).as_posix() for p in T.source_files(source)]
    assert len(files) == 60 and not any(f.startswith(("test/", "site-packages/")) for f in files)
    corpus = T.load_corpus(source)
    held = [f for f in files if T.is_held_out(f)]
    assert list(corpus.heldout_files) == held and 0 < len(held) < 60 and corpus.train_files == 60 - len(held)
    sizes = {f: (source / f).stat().st_size + 1 for f in files}  # + the separator
    assert len(corpus.heldout) == sum(sizes[f] for f in held)
    assert len(corpus.train) == sum(sizes.values()) - len(corpus.heldout)


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(InputError, match="no \\*.py files"):
        T.source_files(tmp_path)
    with pytest.raises(InputError, match="not a directory"):
        T.source_files(tmp_path / "missing")
    with pytest.raises(ConfigError, match="size must be one of target, draft"):
        T.TrainConfig(out=str(tmp_path), size="huge")
    with pytest.raises(ConfigError, match="exceeds max_position_embeddings"):
        T.TrainConfig(out=str(tmp_path), seq_len=4096)


def test_schedule_warms_up_then_decays_to_a_tenth():
    cfg = T.TrainConfig(out="x", lr=1e-3, warmup_steps=10)
    assert T.lr_at(0.0, 0, cfg) == pytest.approx(1e-4)
    assert T.lr_at(0.0, 9, cfg) == pytest.approx(1e-3)
    assert T.lr_at(0.5, 500, cfg) == pytest.approx(1e-3 * (0.1 + 0.45))
    assert T.lr_at(1.0, 900, cfg) == pytest.approx(1e-4)


def test_window_starts_come_in_chunks_as_if_drawn_step_by_step():
    import numpy as np

    it = T._batch_starts(np.random.default_rng(4), 1000, 3, torch.device("cpu"), chunk=5)
    got = [next(it).tolist() for _ in range(12)]  # across chunk boundaries
    ref = np.random.default_rng(4)
    assert got == [ref.integers(0, 1000, 3).tolist() for _ in range(12)]


def test_the_time_budget_ends_the_run_and_restores_the_thread_count(source, tmp_path):
    threads = torch.get_num_threads()
    meta = T.train(T.TrainConfig(out=str(tmp_path / "m"), source=str(source), size="draft", seq_len=16,
                                 batch_size=2, steps=1000, time_budget_s=1e-3, threads=1))
    assert meta["steps"] == 1 and meta["threads"] == 1 and torch.get_num_threads() == threads
    assert "heldout_bits_per_byte" in meta["log"][-1]  # the last step is always logged and scored


@pytest.fixture(scope="module")
def trained(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "byte"
    with pytest.raises(SystemExit) as e:
        main(["train", "--out", str(out), "--source", str(source), "--size", "draft", "--steps", "60",
              "--seq-len", "64", "--batch-size", "8", "--lr", "1e-2", "--time-budget-s", "300"])
    assert e.value.code == 0
    return out


def test_training_learns_and_writes_what_the_engine_loads(trained):
    meta = json.loads((trained / "train_meta.json").read_text())
    assert meta["steps"] == 60 and meta["tokens"] == 60 * 8 * 64 and meta["threads"] == 1
    assert meta["log"][-1]["heldout_bits_per_byte"] < 4.0 < 8.0  # uniform over 256 bytes is 8 bits
    mc = EngineModelConfig.resolve(str(trained))
    assert (mc.vocab_size, mc.hidden_size, mc.num_layers) == (256, 64, 2)


def test_engine_forward_gives_the_trainers_logits(trained):
    mc = EngineModelConfig.resolve(str(trained))
    sd = load_state_dict(trained, mc, torch.float32)
    tm = T.TrainModel(mc)
    tm.load_state_dict(sd)
    ids = torch.randint(0, 256, (40,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = tm(ids[None])[0]
    model = LlamaModel(mc, build_weights(mc, dict(sd)), BACKENDS["torch"], 512)
    from servesim.engine.calibration_inputs import prefill_logits

    got = prefill_logits(model, ids, 16, torch.arange(40))
    assert (got - ref).abs().max() / ref.abs().max() < 1e-5


@pytest.mark.parametrize("size", list(T.SIZES))
def test_every_size_saves_a_checkpoint_the_engine_runs_with_the_trainers_logits(size, tmp_path):
    """The GPU sizes too (untrained, on the CPU): the same state dict, config and forward as the trained draft."""
    from servesim.engine.calibration_inputs import prefill_logits
    from servesim.engine.weights import save_state_dict

    tm = T.TrainModel(T.model_config(size, 256), seed=3)
    save_state_dict(tm.hf_state_dict(), tm.mc, tmp_path)
    mc = EngineModelConfig.resolve(str(tmp_path))
    assert mc.hidden_size == T.SIZES[size]["hidden_size"] and mc.num_kv_heads == T.SIZES[size]["num_kv_heads"]
    ids = torch.randint(0, 256, (24,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = tm(ids[None])[0]
    model = LlamaModel(mc, build_weights(mc, dict(load_state_dict(tmp_path, mc, torch.float32))), BACKENDS["torch"],
                       256)
    got = prefill_logits(model, ids, 16, torch.arange(24))
    assert (got - ref).abs().max() / ref.abs().max() < 1e-5


def test_the_default_source_is_the_standard_library_this_python_imports():
    import os

    src = T.default_source()
    assert src == os.path.dirname(os.__file__) and (T.Path(src) / "os.py").is_file()


def test_spec_acceptance_bench_runs_end_to_end(source, trained, tmp_path):
    """bench/spec_acceptance.py on the CPU: two prompts, two concurrencies; every field written, the speculative
    tokens are plain greedy decoding's, and the counts hold together."""
    from tests.bench_helpers import load_bench

    draft = tmp_path / "draft"
    T.train(T.TrainConfig(out=str(draft), source=str(source), size="draft", seq_len=32, batch_size=4, steps=30,
                          lr=1e-2, seed=5))
    out = tmp_path / "results"
    doc = load_bench("spec_acceptance").main(
        ["--target", str(trained), "--draft", str(draft), "--k", "3", "--prompts", "2", "--prompt-len", "16",
         "--output-len", "12", "--concurrency", "1,2", "--out", str(out)])
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 2 and files[0].startswith("spec_acceptance-cpu-") and files[0].endswith(".json")
    saved = json.loads((out / files[0]).read_text())
    assert saved == json.loads(json.dumps(doc))
    assert {"card", "date", "command", "commit", "target", "draft", "k"} <= saved["meta"].keys()
    assert saved["meta"]["card"] == "cpu" and "--concurrency 1,2" in saved["meta"]["command"]
    text = (out / files[1]).read_text()
    assert [r["concurrency"] for r in saved["rows"]] == [1, 2]
    for r in saved["rows"]:
        assert r["identical_requests"] == r["requests"] == 2  # fp32 on the CPU: greedy speculation is exact
        assert r["decode_tokens"] == 2 * 11 and r["last_steps"] == 2 and r["positions"] == 2 * 11
        assert 1 <= r["tokens_per_step"] <= 4 and 1 <= r["tokens_per_step_not_last"] <= 4
        assert r["tokens_per_step"] <= r["tokens_per_step_last_uncut"] <= 4
        assert r["decode_seq_steps"] * r["tokens_per_step"] == pytest.approx(r["decode_tokens"])
        assert 0 <= r["alpha"] <= 1 and r["predicted"] == pytest.approx((1 - r["alpha"] ** 4) / (1 - r["alpha"]))
        assert r["ratio"] == pytest.approx(r["tokens_per_step"] / r["predicted"])
        assert math.isfinite(r["speedup"]) and r["speedup"] > 0
        assert r["speedup"] == pytest.approx(r["s_per_token_plain"] / r["s_per_token_spec"])
        assert r["steps_spec"] < r["steps_plain"]
        assert f"| {r['concurrency']} | {r['alpha']:.3f} | {r['tokens_per_step']:.3f} |" in text


def test_quality_scores_the_heldout_windows_by_cross_entropy(trained):
    corpus, meta = quality.heldout_corpus(trained)
    evals, calib = quality.eval_windows(corpus, 32, 3)
    assert evals.shape == (3, 33) and calib.shape == (3, 33)
    model = quality.quantized_model(trained, "bf16")
    s = quality.score(model, evals)
    mc = EngineModelConfig.resolve(str(trained))
    tm = T.TrainModel(mc)
    tm.load_state_dict({k: v.float() for k, v in load_state_dict(trained, mc, torch.bfloat16).items()})
    with torch.no_grad():
        ce = F.cross_entropy(tm(evals[:, :-1]).reshape(-1, 256), evals[:, 1:].reshape(-1)).item()
    assert s.bits_per_byte == pytest.approx(ce / math.log(2), rel=1e-5) and s.bytes_scored == 96
    assert s.perplexity == pytest.approx(math.exp(ce), rel=1e-5)
    gptq = quality.quantized_model(trained, "w8a8", "gptq", calib)  # (hidden 64: no int4 group of 128)
    assert abs(quality.score(gptq, evals).bits_per_byte - s.bits_per_byte) < 0.5


def test_quality_refuses_a_split_that_changed(trained, tmp_path):
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(trained, copy)
    meta = json.loads((copy / "train_meta.json").read_text())
    meta["heldout_files"] = meta["heldout_files"][1:]
    (copy / "train_meta.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="held-out files .* differ"):
        quality.heldout_corpus(copy)
