"""Command-line edges a new user meets: bad output directories, compare's checks, rejections, saturation,
empty statistics, listing commands, help at 80 columns and plain piped output."""

from __future__ import annotations

import json
import re

import pytest

from servesim.cli.main import main
from servesim.sim import simulator

BOX_DRAWING = re.compile("[\u2500-\u257f]")


def run(capsys, *argv):
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


@pytest.fixture
def no_simulation(monkeypatch):
    """Fail the test if a simulation starts (the error must come before any work)."""
    def refuse(*args, **kwargs):
        raise AssertionError("a simulation ran before the input was refused")

    monkeypatch.setattr(simulator, "simulate", refuse)


@pytest.mark.parametrize("where", ["/proc/servesim-out", "FILE/sub", "FILE"])
def test_unwritable_output_dir_is_refused_before_the_run(capsys, tmp_path, no_simulation, where):
    (tmp_path / "FILE").write_text("a file, not a directory")
    out_dir = where.replace("FILE", str(tmp_path / "FILE"))
    for cmd in (["simulate"], ["compare", "--policies", "fcfs"]):
        code, out, err = run(capsys, *cmd, "--num-requests", "20", "--output-dir", out_dir)
        assert code == 2 and err.startswith("error: ") and out_dir in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"]  # the probe left nothing


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--rates", "10,-1"], "field 'rates': -1"),
        (["--rates", "10,x"], "field 'rates'"),
        (["--policies", "fcfs,lifo"], "unknown policy 'lifo'"),
        (["--slowdown-by", "prompt"], "field 'slowdown_by'"),
        (["--rates", "10", "--tp", "3"], "field 'tp'"),  # the deployment, before the first run
    ],
)
def test_compare_checks_everything_before_simulating(capsys, tmp_path, no_simulation, argv, needle):
    out_dir = tmp_path / "D"
    code, _, err = run(capsys, "compare", "--num-requests", "20", "--output-dir", str(out_dir), *argv)
    assert code == 2 and needle in err and len(err.splitlines()) == 1
    assert not out_dir.exists()


def test_compare_folder_names(capsys, tmp_path):
    code, out, err = run(capsys, "compare", "--policies", "fcfs,sjf", "--rates", "4,2.5", "--num-requests", "40",
                         "--output-dir", str(tmp_path / "D"))
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "D").iterdir()) == ["fcfs_rate2.5", "fcfs_rate4", "sjf_rate2.5",
                                                                  "sjf_rate4"]
    assert all((tmp_path / "D" / d / "summary.json").is_file() for d in ("fcfs_rate4", "sjf_rate2.5"))


def test_compare_writes_nothing_when_a_run_is_all_rejected(capsys, tmp_path):
    code, _, err = run(capsys, "compare", "--num-requests", "20", "--max-model-len", "10",
                       "--output-dir", str(tmp_path / "D"))
    assert code == 2 and "fcfs: all 20 requests rejected" in err and "max_model_len 10" in err
    assert not (tmp_path / "D").exists()


def test_partial_rejection_warns_with_count_and_main_reason(capsys):
    code, out, err = run(capsys, "simulate", "--num-requests", "200", "--max-model-len", "1000", "--json")
    doc = json.loads(out)
    assert code == 0 and 0 < doc["rejected"] < 200
    assert re.search(rf"^warning: {doc['rejected']} of 200 requests rejected; main reason \(\d+ of them\): "
                     r"prompt\+output [\d,]+ tokens > max_model_len 1,000$", err, re.M)


def test_empty_statistics_are_null_and_dashes(capsys, tmp_path):
    # Every request makes one token: no TPOT, no inter-token gaps. Unknown, not 0 ms.
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,input_tokens,output_tokens\n" + "".join(f"{i * 0.5},100,1\n" for i in range(8)))
    code, out, err = run(capsys, "simulate", "--trace", str(trace), "--trace-format", "generic", "--json")
    doc = json.loads(out)
    assert code == 0, err
    assert doc["mean_tpot_ms"] is None and doc["p99_itl_ms"] is None and doc["mean_ttft_ms"] > 0
    code, out, err = run(capsys, "simulate", "--trace", str(trace), "--trace-format", "generic")
    tpot = next(line for line in out.splitlines() if line.startswith("TPOT"))
    assert tpot.split()[1:] == ["—"] * 4


def test_saturation_is_flagged_and_warned(capsys):
    code, out, err = run(capsys, "simulate", "--num-requests", "1000", "--rate", "30", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["saturated"] is True
    assert doc["served_rate"] < 0.95 * doc["offered_rate"] and doc["queue_busy_fraction"] >= 0.9
    assert re.search(r"^warning: saturated: it served [\d.]+ of 30.00 req/s offered, and requests waited through "
                     r"\d+% of the second half", err, re.M)
    code, out, err = run(capsys, "simulate", "--num-requests", "300", "--rate", "4", "--json")
    assert code == 0 and json.loads(out)["saturated"] is False and "saturated" not in err


def test_max_model_len_above_positions_is_refused(capsys, no_simulation):
    code, _, err = run(capsys, "simulate", "--max-model-len", "200000")
    assert code == 2 and "field 'max_model_len'" in err and "200,000" in err and "131,072" in err


@pytest.mark.parametrize(("group", "needle"), [("gpus", "H100-SXM"), ("models", "Llama-3.1-8B")])
def test_groups_list_without_a_subcommand(capsys, group, needle):
    code, bare, _ = run(capsys, group)
    code2, listed, _ = run(capsys, group, "list")
    assert code == code2 == 0 and needle in bare and bare == listed
    code, out, _ = run(capsys, group, "--json")
    assert code == 0 and json.loads(out)


@pytest.mark.parametrize("argv", [[], ["simulate"], ["compare"], ["fit"], ["traces"], ["gpus"], ["models"], ["sweep"],
                                  ["plan"], ["traces", "show"], ["gpus", "show"]])
def test_help_reads_at_80_columns(capsys, monkeypatch, argv):
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run(capsys, *argv, "--help")
    assert code == 0
    lines = out.splitlines()
    assert max(map(len, lines)) <= 80
    assert "…" not in out and "<bool>" not in out and not BOX_DRAWING.search(out)
    # one default per option: an option's entry runs from its "--flag" line to the next
    entries = re.split(r"\n(?=  -)", out)
    assert all(len(re.findall(r"default", e, re.I)) <= 1 for e in entries), out


def test_simulate_help_names_the_choices_from_the_registries(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    _, out, _ = run(capsys, "simulate", "--help")
    flat = " ".join(out.split())
    assert "(fcfs | sjf | sjf-oracle | sjf-predicted | srpt | priority | edf)" in flat
    assert "(trace | poisson | gamma | constant | closed)" in flat
    assert "(bf16 | fp16 | fp8 | int8)" in flat


@pytest.mark.parametrize(
    "argv",
    [
        ["simulate", "--num-requests", "30", "--replicas", "2"],
        ["compare", "--num-requests", "30", "--rates", "4,8"],
        ["traces"], ["traces", "show", "azure-code"], ["gpus"], ["gpus", "show", "H200"], ["models"],
        ["models", "show", "Llama-3.1-8B"], ["fit", "Llama-3.1-8B", "H200"],
    ],
)
def test_piped_output_is_plain_text(capsys, argv):
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert not BOX_DRAWING.search(out) and "\x1b[" not in out
    assert all(line == line.rstrip() for line in out.splitlines())


def test_header_counts_read_as_words(capsys):
    _, out, _ = run(capsys, "simulate", "--num-requests", "1200")
    assert "1 replica;" in out and "(1,200 requests)" in out and "replica(s)" not in out
    _, out, _ = run(capsys, "simulate", "--num-requests", "30", "--replicas", "2", "--gpu", "h100")
    assert "2 replicas;" in out and "2× H100-SXM" in out  # the alias resolves to the catalog name


def test_cli_needs_no_standalone_click():
    # typer bundles its own click; `make demo` installs only the core dependencies, which do not include click.
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "click":
                    raise ImportError(f"{name} is blocked")

        sys.meta_path.insert(0, Block())
        from servesim.cli.main import main
        main(["simulate", "--num-requests", "5", "--json"])
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["completed"] == 5


def test_compare_tables_fit_80_columns(capsys):
    code, out, err = run(capsys, "compare", "--num-requests", "40", "--rates", "4,8")
    assert code == 0, err
    assert max(map(len, out.splitlines())) <= 80
    assert re.search(r"^\d[\d,]*–\d[\d,]* ", out, re.M)  # size bins as 95–490


def test_num_requests_beyond_the_trace_is_refused_unless_repeated(capsys):
    """`--num-requests` past the trace's rows is one line and exit 2; `--repeat` repeats the trace, and the
    workload's name says so (never a silent `[:N]` of fewer rows)."""
    code, out, err = run(capsys, "simulate", "--trace", "burstgpt", "--num-requests", "500")
    assert code == 2 and len(err.splitlines()) == 1 and not out
    assert "500 requests asked of burstgpt, which has 383" in err and "--repeat" in err
    code, out, err = run(capsys, "simulate", "--trace", "burstgpt", "--num-requests", "500", "--repeat", "--json")
    assert code == 0
    workload = json.loads(out)["meta"]["workload"]
    assert workload["requests"] == 500 and workload["name"] == "burstgpt[500 repeating 383]"
    code, out, _ = run(capsys, "simulate", "--trace", "burstgpt", "--num-requests", "300", "--json")
    assert code == 0 and json.loads(out)["meta"]["workload"]["name"] == "burstgpt[:300]"
