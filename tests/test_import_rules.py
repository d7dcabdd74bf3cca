"""DESIGN.md's import rules, held by CI: the simulator, hwmodels and the CLI import without torch or triton."""

import subprocess
import sys
import textwrap

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
