"""Every repository path the README and docs/ name in code spans exists (a renamed module is not a promise)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.support.harness import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PATH = re.compile(r"`((?:stream|schemas|tests|bench|deploy|docs|\.ci)/[A-Za-z0-9_./-]+)`")


def _made_by_the_user(path: str) -> bool:
    """A path git ignores is written by a documented command (a secret, generated certificates), never shipped."""
    return subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT, check=False).returncode == 0


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_named_paths_exist(page: Path) -> None:
    named = {m.group(1) for m in PATH.finditer(page.read_text())}
    missing = sorted(p for p in named if not (ROOT / p).exists() and not _made_by_the_user(p))
    assert not missing, f"{page.name} names paths that do not exist: {missing}"
