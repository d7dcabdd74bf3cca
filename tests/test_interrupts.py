"""Real SIGINT and SIGTERM sent to a ``servesim`` process mid-run: it exits 130 or 143 with one line saying what it
left written, the output directory holds the complete previous outputs or the complete new ones (never a mix,
never a temporary file), and an interrupted sweep or compare resumes where it stopped.

The child is ``servesim`` with one hook that prints a word at the moment under test (the simulation started, a
file being written, the files being moved into place, a scenario finished), so the signal lands exactly there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from servesim.cli.main import main

CHILD = r"""
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job may start with SIGINT ignored
hook, args = sys.argv[1], sys.argv[2:]

def tell(word):
    print(word, flush=True)

if hook == "simulating":
    import servesim.sim.simulator as m
    real = m.simulate
    def simulate(*a, **k):
        tell("simulating")
        return real(*a, **k)
    m.simulate = simulate
elif hook == "writing":
    import pandas as pd
    real = pd.DataFrame.to_parquet
    def to_parquet(self, *a, **k):
        real(self, *a, **k)
        tell("writing")
        time.sleep(60)  # the signal arrives here, with one file of the set written
    pd.DataFrame.to_parquet = to_parquet
elif hook == "publishing":
    real = os.replace
    def replace(src, dst):
        if not getattr(replace, "told", False):
            replace.told = True
            tell("publishing")
            time.sleep(2.0)  # the signal arrives here (a loaded machine may take a while), held back till all moved
        real(src, dst)
    os.replace = replace
elif hook in ("cached", "kept"):
    if hook == "cached":
        from servesim.plan.cache import ResultCache as owner
    else:
        from servesim.cli.simulate import _Resume as owner
    real, calls = owner.put, []
    def put(self, *a, **k):
        real(self, *a, **k)
        calls.append(1)
        tell(hook)
        if len(calls) == int(os.environ["HOOK_AFTER"]):
            time.sleep(30)  # the signal ends this sleep at once; the wait is only for a parent slow to send it
    owner.put = put
from servesim.cli.main import main
main(args)
"""

SIGNALS = {"SIGINT": (signal.SIGINT, 130), "SIGTERM": (signal.SIGTERM, 143)}
SMALL = ["--num-requests", "200", "--arrival", "poisson", "--rate", "20"]


def interrupt(hook: str, sig: str, *args: str, after: int = 1) -> tuple[int, str]:
    """Run ``servesim ARGS`` with ``hook``; send ``sig`` once the hook has spoken ``after`` times; (exit code,
    stderr)."""
    env = {**os.environ, "COLUMNS": "200", "HOOK_AFTER": str(after)}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, hook, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        heard = 0
        for line in proc.stdout:
            if line.strip() == hook:
                heard += 1
                if heard == after:
                    proc.send_signal(SIGNALS[sig][0])
                    break
        assert heard == after, proc.stderr.read()
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


@pytest.fixture
def previous(tmp_path, capsys):
    """An output directory holding a complete earlier run (seed 1), and its files."""
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "simulate", *SMALL, "--seed", "1", "--output-dir", str(out), "--json")
    assert code == 0, err
    return out, snapshot(out)


@pytest.mark.parametrize(("hook", "sig"), [("simulating", "SIGINT"), ("writing", "SIGTERM"), ("writing", "SIGINT")])
def test_interrupt_before_the_files_move_leaves_the_previous_outputs(previous, hook, sig):
    out, before = previous
    code, err = interrupt(hook, sig, "simulate", *SMALL, "--seed", "2", "--output-dir", str(out))
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == SIGNALS[sig][1], err
    assert lines == [f"interrupted by {sig}: no output written; any earlier outputs are left complete, as they were"]
    assert snapshot(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]  # no temporary directory left behind


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_interrupt_while_the_files_move_completes_the_new_set(previous, sig):
    out, before = previous
    code, err = interrupt("publishing", sig, "simulate", SMALL[0], "300", *SMALL[2:], "--seed", "2",
                          "--output-dir", str(out))
    assert code == SIGNALS[sig][1], err
    assert err.strip().splitlines()[-1] == f"interrupted by {sig}: {out} complete (written before the interrupt)"
    after = snapshot(out)
    assert set(after) == set(before) and all(after[n] != before[n] for n in after)  # every file the new run's
    summary, run = (json.loads((out / n).read_text()) for n in ("summary.json", "run.json"))
    assert summary["meta"]["seed"] == run["seed"] == 2
    assert len(pd.read_parquet(out / "requests.parquet")) == 300
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]


def test_interrupted_sweep_resumes_from_its_cache(tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text("base: {num_requests: 150, arrival: poisson}\naxes: {rate: [1, 2, 3, 4]}\n")
    out = tmp_path / "sweep"
    code, err = interrupt("cached", "SIGINT", "sweep", str(grid), "-j", "1", "-o", str(out), after=2)
    assert code == 130, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("interrupted by SIGINT: no output written;") and "run the same command again" in line
    kept = int(line.split("; ")[-1].split()[0])
    assert kept >= 2 and not (out / "results.csv").exists()
    code, stdout, err = run_cli(capsys, "sweep", str(grid), "-j", "1", "-o", str(out))
    assert code == 0, err
    assert f"4 scenarios ({kept} from the cache)" in stdout
    assert len(pd.read_csv(out / "results.csv")) == 4


def test_interrupted_compare_resumes_and_writes_its_folders_as_a_set(tmp_path, capsys, monkeypatch):
    out = tmp_path / "cmp"
    argv = ["compare", "--policies", "fcfs,sjf,srpt", *SMALL, "--output-dir", str(out)]
    code, err = interrupt("kept", "SIGTERM", *argv)
    assert code == 143, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("interrupted by SIGTERM: no output written;") and "finished runs are kept" in line
    kept = int(line.split("; ")[-1].split()[0])
    assert 1 <= kept < 3 and not out.exists()  # the set is written whole at the end, or not at all
    import servesim.cli.simulate as cli

    ran = []
    real = cli._run
    monkeypatch.setattr(cli, "_run", lambda s, c: (ran.append(s.policy), real(s, c))[1])
    code, _, err = run_cli(capsys, *argv, "--json")
    assert code == 0, err
    assert len(ran) == 3 - kept  # only the runs the interrupted compare had not finished
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmp"]  # the resume folder is gone
    resumed = snapshot(out)
    code, _, err = run_cli(capsys, *argv[:-1], str(tmp_path / "fresh"), "--json")
    fresh = snapshot(tmp_path / "fresh")
    assert code == 0 and sorted(resumed) == sorted(fresh)
    assert all(resumed[n] == fresh[n] for n in resumed if not n.endswith("run.json"))  # resumed runs are the runs
