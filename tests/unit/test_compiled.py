"""The compiled core (setup.py, stream/_compiled.py): which build runs, and when the source wins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stream import _compiled

PURE = os.environ.get("CRM_KPI_PURE_PYTHON", "") not in ("", "0")


def _compiled_in_child(**env: str) -> str:
    code = "from stream._compiled import compiled; print(compiled())"
    run = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, check=True
    )
    return run.stdout.strip()


def test_ci_runs_the_compiled_core_unless_told_not_to() -> None:
    # CI installs a C compiler: a build that silently fell back to pure Python would test pure code twice.
    if os.environ.get("CI"):
        assert _compiled.compiled() is not PURE


def test_the_switch_forces_the_source() -> None:
    assert _compiled_in_child(CRM_KPI_PURE_PYTHON="1") == "False"


def test_a_source_changed_since_the_build_is_never_shadowed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CRM_KPI_PURE_PYTHON", raising=False)
    record = {m: "0" * 64 for m in _compiled.MODULES}
    monkeypatch.setattr(_compiled, "RECORD", tmp_path / "record.json")
    (tmp_path / "record.json").write_text(json.dumps(record))
    reason = _compiled._why_pure()
    assert reason is not None
    if all(_compiled._has_extension(m) for m in (*_compiled.MODULES, _compiled.SHARED_LIBRARY)):
        assert reason == f"{_compiled.MODULES[0]} changed since it was compiled"
    else:
        assert reason.endswith("was not built")
