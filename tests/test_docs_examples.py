"""Every ```python block of the README and of the reference pages listed here runs as printed, so the pages
stay current. Add a page to PAGES when its examples are self-contained; a sketch that is not meant to run
(names left undefined, files the reader brings) goes in a plain ``` block."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *(ROOT / "docs" / f"{name}.md" for name in (
    "simulator", "serving-core", "workloads", "hwmodels", "outputs", "kernels"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
EXAMPLES = [(page, i, code) for page in PAGES for i, code in enumerate(BLOCK.findall(page.read_text()))]


def test_the_pages_have_examples():
    assert len(EXAMPLES) >= 6


@pytest.mark.parametrize(("page", "index", "code"), EXAMPLES,
                         ids=[f"{p.relative_to(ROOT)}#{i}" for p, i, _ in EXAMPLES])
def test_example_runs(page, index, code, tmp_path, monkeypatch, capsys):
    if "servesim.kernels" in code:
        torch = pytest.importorskip("torch")
        if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
            pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{page.name} example {index}", "exec"), {"__name__": "__docs__"})


def test_readme_is_a_newcomers_page():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    for command in ("make demo", "make test", "$ servesim simulate", "$ servesim compare", "Where things stand"):
        assert command in text
    for link in re.findall(r"\]\((docs/[^)#]+)\)", text):
        assert (ROOT / link).is_file(), link
