"""The planning API's surface: importable from the top-level package without making `import servesim` heavy."""

from __future__ import annotations

from test_import_rules import _run


def test_import_servesim_stays_light_and_exports_plan_and_sweep():
    proc = _run("""
        import servesim
        heavy = [m for m in ("pandas", "simpy", "joblib", "plotly", "servesim.plan") if m in sys.modules]
        assert not heavy, heavy
        from servesim import plan, sweep
        from servesim.plan import plan as plan_fn, sweep as sweep_fn, Grid, Limits, PlanResult, SweepResult
        assert sweep is sweep_fn and callable(plan) and plan.plan is plan_fn
        import pkgutil, servesim.plan as p
        for m in pkgutil.walk_packages(p.__path__, p.__name__ + "."):
            __import__(m.name)
        import servesim.cli.plan
        assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "triton")]
        print("ok")
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_the_module_called_is_plan(monkeypatch):
    import servesim.plan as module

    seen = {}
    monkeypatch.setattr(module, "plan", lambda *a, **k: seen.setdefault("args", (a, k)))
    module("Llama-3.1-8B", rate=3, slo="ttft_p99_ms=1")
    assert seen["args"] == (("Llama-3.1-8B",), {"rate": 3, "slo": "ttft_p99_ms=1"})
