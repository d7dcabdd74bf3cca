"""Launch configs per GPU (servesim/kernels/tuned.py): device keys, the fallback to the H100 tables, and the configs
files a ``--tune`` run writes read back by the launchers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from servesim.kernels import tuned  # noqa: E402
from servesim.kernels.quant import configs as QC  # noqa: E402
from tests.bench_helpers import load_bench  # noqa: E402


@pytest.fixture(autouse=True)
def fresh(tmp_path, monkeypatch):
    """An empty package configs folder and no cached key or tables, before and after each test."""
    monkeypatch.setattr(tuned, "CONFIG_DIR", tmp_path / "configs")
    tuned.reset()
    yield
    tuned.reset()


def _bench(name: str):
    return load_bench(name)


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


# ------------------------------------------------------------------------------- the shipped files
SHIPPED = sorted(Path(tuned.__file__).with_name("configs").glob("*.json"))
# what each launcher reads from a config (a key outside these would be ignored or refused at launch)
KNOWN_KEYS = {
    "quant_gemm": {"kernel", "BLOCK_M", "BLOCK_N", "GROUP_M", "JOIN", "num_warps", "num_stages", "waves", "fill",
                   "split_k", "SWAP", "DEQ", "PREFETCH", "XPF", "EVEN", "DENORM"},
    "w8a8_gemm": {"BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "num_warps", "num_stages", "waves", "fill", "split_k",
                  "SWAP"},
    "decode_attention": {"BLOCK_N", "num_warps", "num_stages", "PREFETCH"},
    "prefill_attention": {"BLOCK_M", "BLOCK_N", "num_warps", "num_stages", "TMA"},
}
_H100_QUANT = [*QC.CONFIGS.values(), *QC.LARGE_W.values()]  # run by tests/test_kernels_quant.py already
SHIPPED_QUANT = [(path.stem, table, name) for path in SHIPPED
                 for table, entries in json.loads(path.read_text()).get("quant_gemm", {}).items()
                 if table in ("configs", "large_w")
                 for name, cfg in entries.items() if cfg not in _H100_QUANT]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_each_shipped_configs_file_names_its_device_and_only_keys_the_launchers_read(path):
    doc = json.loads(path.read_text())
    assert doc["device"] == path.stem != tuned.REFERENCE
    assert set(doc) - {"device", "card"} <= set(tuned.KERNELS) and set(doc) & set(tuned.KERNELS)
    for kernel, known in KNOWN_KEYS.items():
        sec = doc.get(kernel, {})
        for table in ("configs", "large_w"):
            for name, cfg in sec.get(table, {}).items():
                assert set(cfg) <= known, (kernel, name, set(cfg) - known)
    if "spec_verify" in doc:
        assert set(doc["spec_verify"]["launch"]) <= {"block", "num_warps", "programs_per_sm", "max_chunk"}
    if "decode_attention" in doc:
        assert set(doc["decode_attention"].get("split", {})) <= {"SPLIT_WAVES", "MIN_SPLIT_KEYS"}
        for cfg in doc["decode_attention"].get("wide", {}).values():
            assert {"MIN_WAVES", "BLOCK_N", "num_warps", "num_stages"} <= set(cfg) <= {
                "MIN_WAVES", "BLOCK_N", "num_warps", "num_stages", "PREFETCH"}


def test_a_wide_decode_grid_launches_with_the_gpus_wide_config_from_its_programs_per_sm(tmp_path, monkeypatch):
    from servesim.kernels.attention import decode as dec

    wide = dict(BLOCK_N=64, num_warps=4, num_stages=3, PREFETCH=0)
    doc = tuned.configs_document("NVIDIA H200", "decode_attention", {"wide": {"128": {**wide, "MIN_WAVES": 3}}},
                                 {"date": "a"})
    monkeypatch.setattr(tuned, "CONFIG_DIR", tmp_path / "configs")
    tuned.install(tuned.write_document(tmp_path / "a.json", doc))
    t = dec.tables("h200")
    assert dec.section(t)["wide"] == {"128": {**wide, "MIN_WAVES": 3}}
    assert dec.launch_config(128, 3 * 132, 132, t) == wide  # 3 programs per SM: wide
    assert dec.launch_config(128, 3 * 132 - 1, 132, t) == dec.DECODE_CONFIGS[128]
    assert dec.launch_config(64, 10**6, 132, t) == dec.DECODE_CONFIGS[64]  # no wide config for head_dim 64
    h100 = dec.tables("h100")
    assert h100.wide == {} and dec.launch_config(128, 10**6, 132, h100) == dec.DECODE_CONFIGS[128]
    assert "MIN_WAVES" not in dec.launch_config(128, 10**6, 132, t) and "MIN_WAVES" in t.wide[128]  # a copy


@pytest.mark.interpret
def test_the_shipped_wide_decode_configs_compute_attention(monkeypatch):
    """Each wide config a GPU's file ships, launched by decode_attention's own choice on a grid wide enough for it
    (the interpreter's SM count), against the torch reference on ragged contexts."""
    from servesim.kernels.attention import decode as dec
    from servesim.kernels.counters import INTERPRETER_SMS

    for path in SHIPPED:
        monkeypatch.setattr(tuned, "CONFIG_DIR", path.parent)
        t = dec.tables(path.stem)
        if 128 not in t.wide:
            continue
        monkeypatch.setitem(tuned.ACTIVE, "decode_attention", t)
        gen = torch.Generator().manual_seed(5)
        batch, kv_heads, bs = int(t.wide[128]["MIN_WAVES"] * INTERPRETER_SMS) // 2 + 1, 2, 16
        lens = torch.randint(1, 90, (batch,), generator=gen, dtype=torch.int32)
        blocks = -(-int(lens.max()) // bs)
        k = torch.randn(batch * blocks, bs, kv_heads, 128, generator=gen).to(torch.bfloat16)
        v = torch.randn(batch * blocks, bs, kv_heads, 128, generator=gen).to(torch.bfloat16)
        tables = torch.arange(batch * blocks, dtype=torch.int32).reshape(batch, blocks)
        q = torch.randn(batch, 2 * kv_heads, 128, generator=gen).to(torch.bfloat16)
        assert batch * kv_heads >= t.wide[128]["MIN_WAVES"] * INTERPRETER_SMS
        out = dec.decode_attention(q, k, v, tables, lens, int(lens.max()), num_splits=1)
        ref = dec.decode_attention_ref(q, k, v, tables, lens)
        assert (out.float() - ref).abs().max().item() < 2e-2


@pytest.mark.interpret
@pytest.mark.parametrize(("device", "table", "name"), SHIPPED_QUANT, ids=[f"{d}-{t}-{n}" for d, t, n in SHIPPED_QUANT])
def test_each_shipped_quant_config_computes_the_product(device, table, name, monkeypatch):
    """Every W4A16/W8A16 config a GPU's file ships (beyond the H100's), on a small ragged weight: the kernel paths
    of the big one."""
    from servesim.kernels.quant import gemm as QG
    from servesim.kernels.quant import quantize as Q

    monkeypatch.setattr(tuned, "CONFIG_DIR", SHIPPED[0].parent)
    t = QC.tables(device)
    bits, bkt = int(name[1]), name.split("/")[1]
    cfg = (t.large_w if table == "large_w" else t.configs)[(bits, bkt)]
    m = {"1": 1, "16": 5, "64": 40, "256": 70, "large": 300}[bkt]
    gen = torch.Generator().manual_seed(21)
    w = torch.randn(300, 640, generator=gen)
    if bits == 8:
        q, scale = Q.quantize_int8_per_channel(w)
        packed, sz, gs = Q.pack_int8(q), scale, None
        ref_w = Q.dequantize_w8_packed(packed, sz, 640)
    else:
        q, s, z = Q.quantize_int4_groupwise(w, 128)
        packed, sz, gs = Q.pack_int4(q), Q.pack_scales_zeros(s, z), 128
        ref_w = Q.dequantize_w4_packed(packed, sz, 128, 640)
    x = torch.randn(m, 640, generator=gen).to(torch.bfloat16)
    y = QG.quant_matmul(x, packed, sz, bits, gs, cfg)
    ref = x.float() @ ref_w.t()
    assert ((y.float() - ref).norm() / ref.norm()).item() < 1e-2
