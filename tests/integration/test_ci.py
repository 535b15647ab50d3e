"""`.ci/run` runs every test, slow ones included, and makes a skip a failure."""

from __future__ import annotations

import tomllib

from tests.support.harness import ROOT


def test_ci_runs_every_test_and_fails_on_skips() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    assert "\nexport CI=true\n" in script  # tests/conftest.py: under CI a skip fails
    commands = [line for line in script.splitlines() if line.startswith("python -m pytest")]
    assert commands == ["python -m pytest -q"], commands  # no -m or -k: slow tests and the property run
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "-m" not in str(options.get("addopts", "")).split()
