"""`servesim models|gpus|fit`: output, --json, exit codes and one-line errors."""

from __future__ import annotations

import json

import pytest

from servesim.cli.main import main


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_lists_and_shows(capsys):
    code, out, _ = _run(capsys, "models", "list")
    assert code == 0 and "Llama-3.1-8B" in out and "8.03B" in out and "Mixtral-8x7B" in out
    code, out, _ = _run(capsys, "gpus", "list")
    assert code == 0 and "MI300X" in out and "989.4" in out
    code, out, _ = _run(capsys, "gpus", "show", "h100", "--json")
    assert code == 0 and json.loads(out)["sm_count"] == 132
    code, out, _ = _run(capsys, "models", "show", "Llama-3.1-8B", "--json")
    assert code == 0 and json.loads(out)["kv_bytes_per_token_bf16"] == 131072


def test_fit_prints_memory_and_times(capsys):
    code, out, _ = _run(capsys, "fit", "Llama-3.1-8B", "H100-SXM")
    assert code == 0
    assert "28,440 blocks of 16 tokens = 455,040 tokens" in out
    assert "assumed (as servesim simulate): batching chunked, max_num_batched_tokens 2,048, max_num_seqs 256" in out
    assert "prefill 2,048 tokens" in out and "decode batch 256" in out
    code, out, _ = _run(capsys, "fit", "Llama-3.1-70B", "H100-SXM", "--tp", "4", "--quant", "fp8", "--json")
    data = json.loads(out)
    assert code == 0 and data["memory"]["kv_blocks"] > 0
    t = data["decode_step_s_at_ctx_2048"]
    assert 0 < t["1"] < t["32"] < t["256"] and data["prefill_2048_s"] > t["1"]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (("fit", "Llama-3.1-70B", "H100-SXM"), "needs 141.1 GB of weights per GPU at tp=1"),
        (("fit", "Llama-3.1-8B", "H100-SXM", "--tp", "3"), "tp=3 does not divide"),
        (("fit", "Llama-3.1-8B", "TPUv9"), "unknown GPU 'TPUv9'"),
        (("fit", "Llama-3.1-8B", "H100", "--quant", "int3"), "unknown weight format 'int3'"),
        (("models", "show", "no-such-model"), "unknown model"),
    ],
)
def test_errors_are_one_line_exit_2(capsys, argv, needle):
    code, out, err = _run(capsys, *argv)
    assert code == 2 and err.startswith("error: ") and needle in err and err.count("\n") == 1
