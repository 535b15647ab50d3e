"""Every repository path the README and docs/ name in code spans exists (a renamed module is not a promise)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.harness import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PATH = re.compile(r"`((?:stream|schemas|tests|bench|deploy|docs|\.ci)/[A-Za-z0-9_./-]+)`")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_named_paths_exist(page: Path) -> None:
    missing = sorted({m.group(1) for m in PATH.finditer(page.read_text()) if not (ROOT / m.group(1)).exists()})
    assert not missing, f"{page.name} names paths that do not exist: {missing}"
