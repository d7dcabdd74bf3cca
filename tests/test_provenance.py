"""The commit every result file names: the copier's word first, then git, else 'unknown'."""

from __future__ import annotations

import re
import subprocess

from servesim.provenance import git_commit


def test_the_environment_names_the_commit_of_a_copied_tree(monkeypatch):
    monkeypatch.setenv("SERVESIM_GIT_COMMIT", "abc1234")
    assert git_commit() == "abc1234"


def test_git_gives_this_checkouts_commit(monkeypatch):
    monkeypatch.delenv("SERVESIM_GIT_COMMIT", raising=False)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    got = git_commit()
    if not head:  # an export without .git
        assert got == "unknown"
    else:
        assert re.fullmatch(re.escape(head) + r"(\+dirty)?", got)


def test_without_git_it_says_unknown(monkeypatch):
    monkeypatch.delenv("SERVESIM_GIT_COMMIT", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert git_commit() == "unknown"
