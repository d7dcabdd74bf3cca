"""DESIGN.md's import rules, held by CI: the simulator, hwmodels and the CLI import without torch or triton."""

import subprocess
import sys
import textwrap

import pytest

BLOCK = textwrap.dedent("""
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "triton"):
                raise ImportError(f"{name} is blocked by the import-rule test")
            return None

    sys.meta_path.insert(0, Block())
""")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + textwrap.dedent(code)], capture_output=True, text=True)


def test_core_imports_without_torch_or_triton():
    proc = _run("""
        import pkgutil, servesim.sim, servesim.hwmodels, servesim.cli
        for pkg in (servesim.sim, servesim.hwmodels, servesim.cli):
            for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
                __import__(m.name)
        from servesim.cli.main import _register
        _register()
        assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "triton")]
        print("ok")
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_blocker_works():
    proc = _run("import torch")
    assert proc.returncode != 0 and "blocked by the import-rule test" in proc.stderr


HEAVY = ("numpy", "pandas", "pyarrow", "simpy", "pydantic", "plotly", "scipy", "torch", "triton")


def _imported_by(code: str) -> set[str]:
    """Top-level packages among ``HEAVY`` that ``code`` (run in a fresh interpreter) leaves imported."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code) + textwrap.dedent(f"""
        import sys
        print(sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r})))
    """)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return set(eval(proc.stdout.strip().splitlines()[-1]))


def test_help_imports_nothing_heavy():
    """`servesim --help` lists the commands without importing them: no numpy, pandas, pyarrow, simpy, pydantic."""
    assert _imported_by("""
        import contextlib, io
        from servesim.cli.main import main
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
            main(["--help"])
    """) == set()


def test_commands_table_matches_the_modules():
    """Each entry of the lazy command table names the module that registers the command, and its help line is
    the start of the command's own help."""
    from servesim.cli.app import COMMANDS, app, load_command
    from servesim.cli.main import _register

    _register()
    registered = {info.name for info in app.registered_commands + app.registered_groups}
    registered |= {info.callback.__name__.replace("_", "-") for info in app.registered_commands if not info.name}
    assert set(COMMANDS) == registered
    for name, (_, short) in COMMANDS.items():
        cmd = load_command(name)
        text = " ".join((cmd.short_help or cmd.help or "").split())
        assert text.startswith(short), (name, text)


def test_simulate_imports_no_pandas_until_a_file_is_written():
    """A `servesim simulate` that writes nothing never imports pandas or pyarrow (a 100-request run starts in a
    fraction of a second); one that writes its tables does."""
    run = """
        import contextlib, io, sys
        from servesim.cli.main import main
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
            main(["simulate", "--num-requests", "100"{extra}])
    """
    assert _imported_by(run.format(extra="")) & {"pandas", "pyarrow", "scipy", "plotly", "torch"} == set()
    assert _imported_by(run.format(extra=', "--json"')) & {"pandas", "pyarrow"} == set()


def _module_imports() -> dict[str, set[str]]:
    """servesim module -> the servesim modules it imports at module level (not inside functions)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "servesim"
    mods = {".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in root.rglob("*.py")}
    graph = {}
    for name, path in mods.items():
        pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        out = set()
        for node in ast.parse(path.read_text()).body:  # module level only: lazy imports are the design's tool
            if isinstance(node, ast.If | ast.Try):  # `if TYPE_CHECKING:` blocks are not run
                continue
            if isinstance(node, ast.Import):
                out |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
                subs = {f"{base}.{a.name}" for a in node.names}
                # `from pkg import module` needs the module; `from pkg import name` needs pkg's __init__
                out |= (subs & mods.keys()) | ({base} if subs - mods.keys() else set())
        graph[name] = {m for m in out if m in mods and m != name}
    return graph


def test_no_import_circles_between_modules():
    """No two modules import each other, directly or through others, at module level (issue 12 broke the four
    circles cli <-> main, models <-> hf_config, scheduler <-> scheduler_config, workload <-> its synthetic
    generators); a package's __init__ re-exporting its own modules is the one allowed loop."""
    graph = _module_imports()

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    circles = []
    for a in graph:
        for b in graph[a]:
            if a in reach(b) and not (b.startswith(a + ".") or a.startswith(b + ".")):
                circles.append((a, b))
    assert not circles, circles
    assert len(graph) > 100  # the walk found the package


def test_kernels_and_their_launch_configs_import_without_the_simulators_dependencies():
    """servesim.kernels (launch configs per GPU included) and the kernel benchmarks' catalog shapes need torch and
    triton only: a GPU machine's python may lack pydantic, simpy, pandas, scipy."""
    pytest.importorskip("torch")
    pytest.importorskip("triton")
    assert _imported_by("""
        import servesim.kernels.tuned, servesim.kernels.quant.linear, servesim.kernels.attention, servesim.kernels.spec
        from servesim.kernels.quant.configs import config_for
        from servesim.kernels.attention.decode import choose_num_splits
        from servesim.hwmodels.ops import layer_ops
        config_for(4, 1, 4096, 4096), choose_num_splits(1, 8, 4096, 132)
    """) & {"pandas", "pyarrow", "simpy", "pydantic", "plotly", "scipy"} == set()
