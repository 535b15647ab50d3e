"""Running `crm-kpi` commands as a user would: a child process, its own environment, output captured."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from tests.support.harness import ROOT

__all__ = ["Run", "crm_kpi", "one_line"]


@dataclass(frozen=True)
class Run:
    """A finished command: exit status and output."""

    code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def crm_kpi(env: Mapping[str, str], *args: str, timeout: float = 60) -> Run:
    """Run `crm-kpi ARGS` with only `env`'s CRM_KPI_* settings (none of the caller's)."""
    import time

    clean = {k: v for k, v in os.environ.items() if not k.startswith("CRM_KPI_")}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "stream", *args], env={**clean, **env}, cwd=ROOT, capture_output=True, text=True,
        timeout=timeout, check=False, stdin=subprocess.DEVNULL,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)


def one_line(run: Run) -> str:
    """The single line a failed command printed (asserts there is exactly one and no traceback)."""
    lines = [line for line in run.output.splitlines() if line.strip()]
    assert "Traceback" not in run.output, run.output
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{run.output}"
    return lines[0]
