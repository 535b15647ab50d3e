"""Supervising child processes: start them shielded from the terminal's Ctrl-C, stop them in order.

One stop sequence for every child the project starts (the demo's worker and
exporter, the embedded broker and Redis, the bench's and the tests' processes):
SIGTERM, wait up to a grace period, then SIGKILL and wait - so a child that
ignores SIGTERM cannot hang a shutdown, and none is left as a zombie.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Child", "shielded_from_ctrl_c", "spawn", "stop", "stop_all"]

_HELD = (signal.SIGTERM, signal.SIGHUP)


def stop(proc: subprocess.Popen[bytes], grace: float = 15.0) -> int:
    """SIGTERM `proc`, wait up to `grace` seconds, then SIGKILL it; return its exit code.

    An already finished process is only reaped. The code is negative for a signal
    (-9 when it had to be killed).
    """
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def stop_all(procs: Iterable[subprocess.Popen[bytes]], grace: float = 15.0) -> list[int]:
    """SIGTERM every process at once, then `stop` each in order: they shut down in parallel."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    return [stop(proc, grace) for proc in procs]


@contextlib.contextmanager
def shielded_from_ctrl_c() -> Iterator[None]:
    """Start children inside this block with SIGINT blocked (a blocked mask survives fork and exec).

    A Ctrl-C in a terminal signals the whole foreground process group; children
    started here ignore it and are stopped by their parent, in order. A SIGINT
    meanwhile stays pending and raises KeyboardInterrupt on the way out; a
    SIGTERM or SIGHUP is held until then too, so no child is left half-started.
    """
    held: list[int] = []
    old_handlers = {sig: signal.signal(sig, lambda signum, frame: held.append(signum)) for sig in _HELD}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    if held:
        raise KeyboardInterrupt


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


@dataclass
class Child:
    """A supervised child process and its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path | None = None

    def stop(self, grace: float = 15.0) -> int:
        """`stop` this child (SIGTERM, then SIGKILL after `grace` seconds)."""
        return stop(self.proc, grace)

    def tail(self, lines: int = 15) -> str:
        """The last lines of its log ('' without one)."""
        if self.log is None:
            return ""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    log: Path | None = None,
    shield: bool = False,
    die_with_parent: bool = False,
) -> Child:
    """Start `argv` with stdin closed and stdout+stderr appended to `log` (or discarded).

    `shield`: SIGINT blocked in the child (see `shielded_from_ctrl_c`).
    `die_with_parent`: the kernel sends it SIGTERM if this process dies (Linux).
    """
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115 - the child keeps it
    guard = shielded_from_ctrl_c() if shield else contextlib.nullcontext()
    try:
        with guard:
            proc = subprocess.Popen(
                list(argv),
                env=None if env is None else dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if die_with_parent and sys.platform == "linux" else None,
            )
    finally:
        if log is not None and not isinstance(out, int):
            out.close()
    return Child(name, proc, log)
