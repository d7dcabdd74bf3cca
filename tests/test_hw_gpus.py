"""GPU catalog: sources, lookups, datasheet values, user YAML."""

from __future__ import annotations

import pytest

from servesim.errors import ConfigError, InputError
from servesim.hwmodels.gpus import GPUS, get_gpu, load_gpus_yaml

REQUIRED = [
    "H100-SXM",
    "H100-PCIe",
    "H200",
    "A100-40GB-SXM",
    "A100-80GB-SXM",
    "L40S",
    "L4",
    "A10G",
    "B200",
    "MI300X",
]


def test_catalog_has_required_gpus_each_with_source():
    assert set(REQUIRED) <= set(GPUS)
    for g in GPUS.values():
        assert "datasheet" in g.source.lower() or "data sheet" in g.source.lower(), g.name
        assert "https://" in g.source, g.name
        assert g.memory_bytes > 0 and g.hbm_bytes_per_s > 0 and g.tflops["bf16"] > 0 and g.usd_per_hour > 0


def test_h100_datasheet_values():
    g = get_gpu("h100-sxm")
    assert g.memory_bytes == 80 * 2**30 and g.hbm_bytes_per_s == 3.35e12 and g.sm_count == 132
    assert g.peak_flops_per_s("bf16") == pytest.approx(989.4e12) and g.tflops["fp8"] == pytest.approx(1978.9)
    assert g.interconnect_bytes_per_s == 900e9
    assert get_gpu("H200").memory_bytes == 141 * 2**30 and get_gpu("h200").hbm_bytes_per_s == 4.8e12
    a100 = get_gpu("A100-80GB-SXM")
    assert a100.hbm_bytes_per_s == pytest.approx(2.039e12) and a100.peak_flops_per_s(
        "fp8"
    ) == a100.peak_flops_per_s("bf16")


def test_unknown_gpu_lists_names():
    with pytest.raises(ConfigError, match="known: H100-SXM, H100-PCIe"):
        get_gpu("V100")


GOOD = """\
MyCard:
  memory_gib: 32
  hbm_tbps: 1.2
  tflops: {bf16: 200, fp8: 400}
  sm_count: 64
  interconnect_gbps: 64
  pcie_gbps: 64
  tdp_w: 300
  usd_per_hour: 0.5
  source: vendor datasheet
"""


def test_user_yaml(tmp_path):
    p = tmp_path / "gpus.yaml"
    p.write_text(GOOD.replace("1.2", "1.2e12 ").replace("hbm_tbps: 1.2e12 ", "hbm_tbps: 12e-1"))
    gpus = load_gpus_yaml(p)
    g = get_gpu("mycard", gpus)
    assert g.memory_bytes == 32 * 2**30 and g.hbm_bytes_per_s == pytest.approx(1.2e12)
    assert g.peak_flops_per_s("fp8") == 400e12


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (("  tdp_w: 300\n", ""), "MyCard.tdp_w"),
        (("sm_count: 64", "sm_count: lots"), "MyCard.sm_count"),
        (("{bf16: 200, fp8: 400}", "{fp9: 1, bf16: 2}"), "MyCard.tflops.fp9"),
        (("  tdp_w: 300\n", "  tdp_w: 300\n  colour: red\n"), "MyCard.colour"),
    ],
)
def test_user_yaml_errors_name_file_and_field(tmp_path, edit, field):
    p = tmp_path / "bad.yaml"
    p.write_text(GOOD.replace(*edit))
    with pytest.raises(InputError, match=rf"bad.yaml, field '{field}'"):
        load_gpus_yaml(p)
