"""Parameter paths: every user value has one name, one check (in Scenario) and an error naming its field."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

from servesim.cli.main import main
from servesim.errors import ConfigError
from servesim.hwmodels.gpus import GPUS
from servesim.hwmodels.models import KV_DTYPE_BYTES, WEIGHT_FORMATS
from servesim.sim.config import CHOICE_FIELDS, Scenario, choices, make_scenario
from servesim.sim.deployment import build_deployment, build_workload
from servesim.sim.policies import POLICIES
from servesim.sim.router import ROUTERS
from servesim.sim.scheduler import BATCHING
from servesim.sim.workload import ARRIVALS


def test_choice_lists_are_the_registries():
    assert choices("policy") == tuple(POLICIES) and choices("router") == tuple(ROUTERS)
    assert choices("batching") == tuple(BATCHING) and choices("arrival") == ("trace", *ARRIVALS)
    assert choices("quant") == tuple(WEIGHT_FORMATS) and choices("kv_dtype") == tuple(KV_DTYPE_BYTES)
    for field in CHOICE_FIELDS:
        for value in choices(field):
            extra = {"rate": 5.0} if field == "arrival" else {}
            if field == "kv_link":  # a P/D field
                extra = {"prefill_replicas": 1, "decode_replicas": 1}
            assert getattr(make_scenario({field: value, **extra}), field) == value


def test_a_variant_added_to_its_registry_is_a_valid_choice(monkeypatch):
    # One place to add a variant: the registry. Scenario, the CLI help and build_workload follow it.
    @dataclass(frozen=True)
    class Burst:
        rate_per_s: float

        def arrivals(self, n: int, rng: np.random.Generator) -> np.ndarray:
            return np.repeat(np.arange(-(-n // 4)) * 4 / self.rate_per_s, 4)[:n]

    with pytest.raises(ConfigError, match="field 'arrival'"):
        make_scenario({"arrival": "burst", "rate": 2.0})
    monkeypatch.setitem(ARRIVALS, "burst", Burst)
    monkeypatch.setitem(POLICIES, "lifo", lambda r: -r.arrival_s)
    s = make_scenario({"arrival": "burst", "rate": 2.0, "policy": "lifo", "trace": "arxiv-summarization",
                       "num_requests": 8})
    assert list(build_workload(s).requests["arrival_s"]) == [0.0] * 4 + [2.0] * 4
    with pytest.raises(ConfigError, match="field 'rate'"):  # it takes a rate, so it needs one
        make_scenario({"arrival": "burst"})


@pytest.mark.parametrize("spelling", ["H200", "h200", "H200-SXM", "h200_sxm5", "NVIDIA H200"])
def test_gpu_aliases_resolve_to_one_name_and_one_hash(spelling):
    s = make_scenario({"gpu": spelling})
    assert s.gpu == "H200"
    assert s.config_hash() == make_scenario({"gpu": "H200"}).config_hash()
    assert make_scenario({"gpu": "NVIDIA H100 80GB HBM3"}).gpu == make_scenario({"gpu": "h100"}).gpu == "H100-SXM"


def test_every_alias_in_the_catalog_resolves_to_its_entry():
    for name, gpu in GPUS.items():
        for alias in gpu.aliases:
            assert make_scenario({"gpu": alias}).gpu == name


def test_model_aliases_and_formats_are_canonical():
    s = make_scenario({"model": "meta-llama/llama-3.1-8b-instruct", "quant": "FP8", "kv_dtype": "INT8"})
    assert (s.model, s.quant, s.kv_dtype) == ("Llama-3.1-8B", "fp8", "int8")
    assert s.config_hash() == make_scenario({"quant": "fp8", "kv_dtype": "int8"}).config_hash()


@pytest.mark.parametrize(
    ("values", "field", "closest"),
    [
        ({"gpu": "H10"}, "gpu", "H100-SXM"),
        ({"gpu": "TPUv9"}, "gpu", None),
        ({"model": "Llama-3.1-8"}, "model", "Llama-3.1-8B"),
        ({"policy": "sjff"}, "policy", "sjf"),
        ({"router": "round-robin"}, "router", "round_robin"),
        ({"batching": "chunk"}, "batching", "chunked"),
        ({"quant": "w4a8"}, "quant", "w8a8, w4a16"),
        ({"kv_dtype": "fp4"}, "kv_dtype", "fp8"),
        ({"arrival": "possion", "rate": 1.0}, "arrival", "poisson"),
    ],
)
def test_unknown_names_are_refused_with_the_closest(values, field, closest):
    with pytest.raises(ConfigError) as err:
        make_scenario(values)
    assert err.value.field == field
    text = str(err.value)
    assert "known: " in text
    if closest:
        assert f"closest: {closest}" in text


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"max_num_seqs": 0}, "max_num_seqs"),
        ({"max_num_batched_tokens": 100}, "max_num_batched_tokens"),  # below one decode step of 256 seqs
        ({"arrival": "gamma"}, "rate"),
        ({"start_s": 10.0}, "duration_s"),
        ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
        ({"spec_k": 3, "spec_alpha": 0.0, "spec_alpha_concentration": 4.0}, "spec_alpha"),
        ({"slo_mode": "both"}, "slo_mode"),
    ],
)
def test_scenario_errors_name_a_field_a_user_sets(values, field):
    with pytest.raises(ConfigError) as err:
        make_scenario(values)
    assert err.value.field == field and field in Scenario.model_fields


@pytest.mark.parametrize(
    ("values", "field", "numbers"),
    [
        ({"max_model_len": 200_000}, "max_model_len", ("200,000", "131,072")),
        ({"model": "Qwen2.5-7B", "max_model_len": 40_000}, "max_model_len", ("40,000", "32,768")),
        # without chunking a prompt runs whole: the budget error is the budget's, not relabelled
        ({"batching": "continuous", "max_num_batched_tokens": 4096, "max_model_len": 8192},
         "max_num_batched_tokens", ("4,096", "8,192")),
    ],
)
def test_limits_that_need_the_model_are_refused_with_the_numbers(values, field, numbers):
    with pytest.raises(ConfigError) as err:
        build_deployment(make_scenario(values))
    assert err.value.field == field
    assert all(n in str(err.value) for n in numbers)


def test_max_num_seqs_reaches_the_memory_plan():
    small, large = (build_deployment(make_scenario({"max_num_seqs": n})) for n in (16, 1024))
    assert small.memory.activation_bytes < large.memory.activation_bytes
    assert small.num_blocks > large.num_blocks


def test_num_gpu_blocks_beyond_memory_warns_with_the_numbers(capsys):
    planned = build_deployment(make_scenario({})).num_blocks
    dep = build_deployment(make_scenario({"num_gpu_blocks": 2 * planned}))
    assert dep.num_blocks == 2 * planned
    assert len(dep.warnings) == 1 and f"{2 * planned:,}" in dep.warnings[0] and f"{planned:,}" in dep.warnings[0]
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--num-requests", "20", "--num-gpu-blocks", str(2 * planned), "--json"])
    err = capsys.readouterr().err
    assert exc.value.code == 0 and err.startswith("warning: num_gpu_blocks")


def test_fit_and_simulate_share_defaults_and_count_the_same_blocks(capsys):
    for extra in ([], ["--max-num-seqs", "64"], ["--batching", "continuous", "--kv-dtype", "fp8"]):
        with pytest.raises(SystemExit):
            main(["fit", "Llama-3.1-8B", "H100-SXM", "--json", *extra])
        fit = json.loads(capsys.readouterr().out)
        flags = dict(zip(extra[::2], extra[1::2]))
        s = make_scenario({"gpu": "H100-SXM",
                           **{k[2:].replace("-", "_"): (int(v) if v.isdigit() else v) for k, v in flags.items()}})
        dep = build_deployment(s)
        assert fit["memory"]["kv_blocks"] == dep.num_blocks
        assert fit["assumed"]["max_num_batched_tokens"] == dep.scheduler.max_num_batched_tokens
    assert fit["assumed"]["batching"] == "continuous"
