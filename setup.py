"""Build hook: compile the pure event path and KPI domain with mypyc, from the same Python source.

The modules listed in `stream/_compiled.py` (MODULES) are `mypy --strict` clean,
so mypyc turns them into C extensions at install time (docs/design.md, "A
compiled hot path"). Their `.py` files are installed too and are the fallback:
without mypyc or a C compiler, or with CRM_KPI_PURE_PYTHON=1 set at install
time, the package installs as plain Python. The build records a hash of each
compiled source, so an edited checkout never runs a stale extension
(stream/_compiled.py).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent


def _modules() -> list[str]:
    """MODULES of stream/_compiled.py, read without importing the package (its dependencies may be absent)."""
    tree = ast.parse((HERE / "stream" / "_compiled.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "MODULES":
            return list(ast.literal_eval(node.value))  # type: ignore[arg-type]
    raise SystemExit("setup.py: MODULES not found in stream/_compiled.py")


def _path(module: str) -> str:
    return str(Path(*module.split(".")).with_suffix(".py"))


def _say(message: str) -> None:
    print(f"crm-kpi-stream: {message}", file=sys.stderr)


class _OptionalBuildExt(build_ext):
    """Install the pure-Python modules when the extensions cannot be built (no C compiler, no headers).

    Records the hash of each compiled source next to the extensions, once they are built.
    """

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # setuptools raises several unrelated types for a missing toolchain
            _say(f"compiled core not built ({str(exc)[-200:]}); installing the pure-Python modules")
            return
        if self.extensions:
            record = Path(self.get_ext_fullpath("stream._core__mypyc")).parent / "_compiled_sources.json"
            modules = _modules()
            digests = {m: hashlib.sha256((HERE / _path(m)).read_bytes()).hexdigest() for m in modules}
            record.write_text(json.dumps(digests, indent=1) + "\n")


def _extensions() -> list[Any]:
    if os.environ.get("CRM_KPI_PURE_PYTHON", "") not in ("", "0"):
        _say("CRM_KPI_PURE_PYTHON is set: installing the pure-Python modules")
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        _say("mypyc is not installed: installing the pure-Python modules")
        return []
    try:
        # mypy follows the compiled modules' imports up to `stream/__init__` and the settings, whose
        # dependencies (pydantic-settings, holidays, ...) the isolated build environment lacks; they
        # are not compiled, so they need not be resolved here (`mypy --strict` checks them in CI).
        lenient = ["--ignore-missing-imports", "--allow-subclassing-any", "--no-warn-unused-ignores"]
        return list(mypycify([*lenient, *(_path(m) for m in _modules())], opt_level="3", group_name="stream._core"))
    except (Exception, SystemExit) as exc:  # mypy reports type errors by exiting
        _say(f"mypyc failed ({exc}); installing the pure-Python modules")
        return []


setup(ext_modules=_extensions(), cmdclass={"build_ext": _OptionalBuildExt})
