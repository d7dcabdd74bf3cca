"""Launch configs per GPU (servesim/kernels/tuned.py): device keys, the fallback to the H100 tables, and the configs
files a ``--tune`` run writes read back by the launchers."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from servesim.kernels import tuned  # noqa: E402
from servesim.kernels.quant import configs as QC  # noqa: E402

BENCH = Path(__file__).parent.parent / "bench"


@pytest.fixture(autouse=True)
def fresh(tmp_path, monkeypatch):
    """An empty package configs folder and no cached key or tables, before and after each test."""
    monkeypatch.setattr(tuned, "CONFIG_DIR", tmp_path / "configs")
    tuned.reset()
    yield
    tuned.reset()


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("name", "key"), [
    ("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H100 PCIe", "h100"), ("NVIDIA H200", "h200"),
    ("NVIDIA H200 NVL", "h200"), ("NVIDIA A100-SXM4-80GB", "a100"), ("NVIDIA GeForce RTX 4090", "rtx-4090"),
])
def test_device_names_map_to_one_key_per_gpu_model(name, key):
    assert tuned.device_key(name) == key


def test_the_interpreter_and_the_cpu_launch_with_the_h100_tables_in_code():
    assert tuned.current_key() == tuned.REFERENCE == "h100"
    t = QC.tables()
    assert t.configs is QC.CONFIGS and t.large_w is QC.LARGE_W and t.large_w_elems == QC.LARGE_W_ELEMS


def test_the_current_gpu_is_named_once_per_process(monkeypatch):
    names = []

    def name():
        names.append(1)
        return "NVIDIA H200"

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", name)
    assert [tuned.current_key() for _ in range(3)] == ["h200"] * 3
    assert names == [1]


def test_an_unknown_gpu_gets_the_h100_tables_and_one_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="servesim.kernels.tuned"):
        for _ in range(3):
            assert QC.config_for(4, 1, device="a100") is QC.CONFIGS[(4, "1")]
            assert QC.tables("a100").large_w is QC.LARGE_W
    warnings = [r for r in caplog.records if "a100" in r.getMessage()]
    assert len(warnings) == 1 and "quant_gemm" in warnings[0].getMessage()


def _tuned_table() -> QC.Tables:
    """The H100 tables with one bucket, one large-weight override and the threshold changed, as a sweep might."""
    configs = {**QC.CONFIGS, (4, "1"): {**QC.CONFIGS[(4, "1")], "BLOCK_N": 64, "fill": 6}}
    large_w = {**QC.LARGE_W, (8, "1"): {**QC.LARGE_W[(8, "1")], "fill": 9}}
    return QC.Tables(configs, large_w, 1 << 26)


def test_a_tune_runs_configs_file_is_read_back_by_config_for_on_that_gpu(tmp_path):
    bench = _bench("quant_gemm")
    meta = dict(card="NVIDIA H200", date="2026-12-04", command="python3 bench/quant_gemm.py --tune", torch="2.11",
                triton="3.6", tune_shapes=[(4096, 4096)])
    path = bench.write_configs(str(tmp_path / "results"), meta, _tuned_table())
    assert Path(path).name == "quant_gemm_configs-h200-2026-12-04.json"
    doc = json.loads(Path(path).read_text())
    assert doc["device"] == "h200" and doc["quant_gemm"]["command"] == meta["command"]
    assert tuned.install(path) == tuned.CONFIG_DIR / "h200.json"
    want = _tuned_table()
    for bits in (4, 8):
        for m in (1, 16, 64, 256, 1024):
            for n, k in ((4096, 4096), (8192, 8192), (28672, 8192)):
                got = QC.config_for(bits, m, n, k, device="h200")
                assert got == (want.large_w if n * k >= want.large_w_elems and (bits, QC.bucket(m)) in want.large_w
                               else want.configs)[(bits, QC.bucket(m))]
    assert QC.config_for(4, 1, device="h200")["fill"] == 6  # the changed bucket, not the H100's
    assert QC.config_for(8, 1, 8192, 8192, device="h200")["fill"] == 9  # 67M weights: over the new threshold
    assert QC.config_for(8, 1, 8192, 8192, device="h100") is QC.CONFIGS[(8, "1")]  # the H100's: under its own


def test_a_partial_section_keeps_the_h100_entries_it_does_not_name():
    cfg = {**QC.CONFIGS[(8, "64")], "num_warps": 8}
    doc = tuned.configs_document("NVIDIA H200", "quant_gemm", {"configs": {"W8/64": cfg}}, {"date": "2026-12-04"})
    src = tuned.write_document(tuned.CONFIG_DIR.parent / "part.json", doc)
    tuned.install(src)
    t = QC.tables("h200")
    assert t.configs[(8, "64")] == cfg
    assert {k: v for k, v in t.configs.items() if k != (8, "64")} == {k: v for k, v in QC.CONFIGS.items()
                                                                      if k != (8, "64")}
    assert t.large_w == QC.LARGE_W and t.large_w_elems == QC.LARGE_W_ELEMS


def test_installing_merges_sections_and_refuses_the_h100_and_non_config_files(tmp_path):
    first = tuned.configs_document("NVIDIA H200", "quant_gemm", QC.section(QC.tables()), {"date": "a"})
    second = tuned.configs_document("NVIDIA H200", "spec_verify", {"launch": {"block": 2048}}, {"date": "b"})
    for i, doc in enumerate((first, second, {**first, "quant_gemm": {**first["quant_gemm"], "date": "c"}})):
        tuned.install(tuned.write_document(tmp_path / f"{i}.json", doc))
    merged = json.loads((tuned.CONFIG_DIR / "h200.json").read_text())
    assert merged["quant_gemm"]["date"] == "c" and merged["spec_verify"]["date"] == "b"
    h100 = tuned.write_document(tmp_path / "h100.json", tuned.configs_document("NVIDIA H100 80GB HBM3", "quant_gemm",
                                                                                {}, {}))
    with pytest.raises(ValueError, match="code"):
        tuned.install(h100)
    with pytest.raises(ValueError, match="not a configs file"):
        tuned.install(tuned.write_document(tmp_path / "x.json", {"rows": []}))
    assert not (tuned.CONFIG_DIR / "h100.json").exists()


def test_engine_shapes_are_the_per_gpu_gemms_of_the_model_catalog():
    bench = _bench("quant_gemm")
    assert bench.engine_gemms("Llama-3.1-8B", 1) == [("qkv", 6144, 4096), ("o", 4096, 4096),
                                                     ("gate_up", 28672, 4096), ("down", 4096, 14336)]
    # 70B: hidden 8192, 64 q / 8 kv heads of 128, intermediate 28672; QKV and gate+up split N, O and down split K
    for tp in (2, 4):
        q, kv = 64 * 128 // tp, 8 * 128 // tp
        assert bench.engine_gemms("Llama-3.1-70B", tp) == [("qkv", q + 2 * kv, 8192), ("o", 8192, q),
                                                           ("gate_up", 2 * 28672 // tp, 8192),
                                                           ("down", 8192, 28672 // tp)]
    shapes = bench.bench_shapes("all")
    assert shapes[(28672, 8192)] == ["classic", "Llama-3.1-70B TP2 gate_up"]
    assert set(bench.bench_shapes("classic")) == set(bench.SHAPES)
    assert all(all(k % 128 == 0 for k in s) for s in shapes)  # whole 128-wide K blocks: the packed layout's


def test_the_issue17_targets_read_the_copy_fraction_and_ratios_of_the_engine_rows():
    bench = _bench("quant_gemm")
    copy = 4.0e12
    rows = []
    for n, k, ops in ((4096, 4096, "Llama-3.1-8B TP1 o"), (28672, 4096, "Llama-3.1-8B TP1 gate_up")):
        t_at = {1: n * k / 2 / (0.5 * copy), 16: 1e-3, 256: 1e-3, 1024: 1e-3}  # M=1 at exactly 50% of copy
        for m, t in t_at.items():
            rows.append({"N": n, "K": k, "M": m, "ops": ops, **{f"{op}{sfx}_ms": t * 1e3 for op in ("w4", "w8")
                                                                for sfx in ("", "_stream")},
                         **{f"cublas{sfx}_ms": 2 * t * 1e3 for sfx in ("", "_stream")}})
    lines = bench.target_lines(rows, copy, bench.targets17(rows))
    by_name = {line.split(" | ")[0][2:]: line for line in lines}
    assert by_name["W4A16 M=1 4096x4096 >= 45% of copy"].endswith("| 0.50 | yes | 0.50 | yes |")
    assert by_name["W4A16 M=1 28672x4096 >= 70% of copy"].endswith("| 0.50 | **no** | 0.50 | **no** |")
    assert by_name["W8A16 M=1 28672x4096 >= 1.8x cuBLAS"].endswith("| 2.00 | yes | 2.00 | yes |")
    assert "W4A16 M=16 28672x4096 >= 2.5x cuBLAS" in by_name and "W4A16 M=16 4096x4096 >= 2.5x cuBLAS" not in by_name


def _meta(card: str = "NVIDIA H200") -> dict:
    return dict(card=card, date="2026-12-04", command="python3 bench/x.py --tune", torch="2.11", triton="3.6")


def test_an_attention_sweeps_configs_file_is_what_decode_and_prefill_launch_with_on_that_gpu(tmp_path, monkeypatch):
    from servesim.kernels.attention import decode as dec
    from servesim.kernels.attention import prefill as pre

    bench = _bench("attention")
    # what a sweep leaves in this GPU's tables (patched copies: the code's stay as they are)
    monkeypatch.setattr(dec, "tables", lambda device=None: dec.DecodeTables(
        {**dec.DECODE_CONFIGS, 128: dict(BLOCK_N=128, num_warps=8, num_stages=3, PREFETCH=2)},
        {"SPLIT_WAVES": 4, "MIN_SPLIT_KEYS": 512}))
    monkeypatch.setattr(pre, "tables", lambda device=None: {**pre.PREFILL_CONFIGS, (128, True): dict(
        BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=7)})
    path = bench.write_configs(str(tmp_path), _meta())
    assert Path(path).name == "attention_configs-h200-2026-12-04.json"
    monkeypatch.undo()
    monkeypatch.setattr(tuned, "CONFIG_DIR", tmp_path / "configs")
    tuned.install(path)
    t = dec.tables("h200")
    assert t.configs[128] == dict(BLOCK_N=128, num_warps=8, num_stages=3, PREFETCH=2)
    assert t.configs[64] == dec.DECODE_CONFIGS[64] and t.split == {"SPLIT_WAVES": 4, "MIN_SPLIT_KEYS": 512}
    assert pre.tables("h200")[(128, True)] == dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=7)
    assert pre.tables("h200")[(128, False)] == pre.PREFILL_CONFIGS[(128, False)]  # TMA config kept, True intact
    # the split heuristic follows the GPU's parameters: 4 waves of 132 SMs over 8 programs, >= 512 keys a split
    assert dec.choose_num_splits(1, 8, 65536, 132, device="h200") == 4 * 132 // 8
    assert dec.choose_num_splits(1, 8, 65536, 132, device="h100") == 2 * 132 // 8
    assert dec.choose_num_splits(1, 8, 4096, 132, device="h200") == 4096 // 512
    assert dec.choose_num_splits(1, 8, 65536, 132) == 2 * 132 // 8  # this process (CPU): the H100's
    assert dec.tables() == dec.DecodeTables(dec.DECODE_CONFIGS, dec.SPLIT)


def test_a_spec_verify_sweeps_launch_parameters_are_read_back_and_verify_defaults_to_the_gpus(tmp_path):
    from servesim.kernels.spec.verify import LAUNCH, launch_tables

    bench = _bench("spec_verify")
    meta = {**_meta(), "launch": {**LAUNCH, "block": 2048, "num_warps": 8, "max_chunk": 16384}}
    path = bench.write_configs(tmp_path, meta)
    assert path.name == "spec_verify_configs-h200-2026-12-04.json"
    tuned.install(path)
    assert launch_tables("h200") == {**LAUNCH, "block": 2048, "num_warps": 8, "max_chunk": 16384}
    assert launch_tables() is LAUNCH and launch_tables("a100") is LAUNCH
    assert bench.candidates()[0] == {k: LAUNCH[k] for k in ("block", "num_warps", "max_chunk")}
    assert len(bench.candidates()) == len(bench.CANDIDATES)  # the H100's parameters are one of the candidates


def test_a_w8a8_sweeps_configs_file_is_read_back_by_its_config_for(tmp_path, monkeypatch):
    from servesim.kernels.quant import w8a8 as W

    bench = _bench("quant_gemm_w8a8")
    tuned_16 = {**W.CONFIGS["16"], "BLOCK_N": 128, "fill": 4}
    monkeypatch.setattr(W, "tables", lambda device=None: {**W.CONFIGS, "16": tuned_16})
    path = bench.write_configs(str(tmp_path), _meta())
    monkeypatch.undo()
    monkeypatch.setattr(tuned, "CONFIG_DIR", tmp_path / "configs")
    assert Path(tuned.install(path)).name == "h200.json"
    assert W.config_for(16, device="h200") == tuned_16 and W.config_for(2, device="h200") == tuned_16
    assert W.config_for(1, device="h200") == W.CONFIGS["1"]
    assert W.config_for(16) is W.CONFIGS["16"]  # this process (CPU): the tables in code
