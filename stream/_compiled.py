"""Which build of the pure core runs: compiled by mypyc (setup.py) or the `.py` source.

The modules in `MODULES` may be installed twice: as C extensions built by mypyc
from their source, and as that `.py` source. Python imports an extension first.
`install()` (run by `stream/__init__.py` before anything else) makes it import
the `.py` files instead when

* CRM_KPI_PURE_PYTHON is set to anything but "" or "0" (CI runs the unit tests
  both ways), or
* the source no longer matches what was compiled (an edited checkout after
  `pip install -e .`): the build records a SHA-256 of each source, and a stale
  extension must never stand in for newer code. A warning says so once.

All or nothing: compiled modules call each other natively, so a mix of compiled
and interpreted modules of the group is never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from collections.abc import Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import EXTENSION_SUFFIXES, SOURCE_SUFFIXES, FileFinder, ModuleSpec, SourceFileLoader
from pathlib import Path
from types import ModuleType

__all__ = ["MODULES", "RECORD", "SHARED_LIBRARY", "compiled", "install"]

MODULES: tuple[str, ...] = (
    "stream.events.decode",
    "stream.events.dedupe",
    "stream.events.entities",
    "stream.events.fold",
    "stream.events.windows",
    "stream.kpis.business_hours",
    "stream.kpis.churn_risk",
    "stream.kpis.commerce",
    "stream.kpis.customers",
    "stream.kpis.registry",
    "stream.kpis.sales",
    "stream.kpis.sketch",
    "stream.kpis.support",
)
"""The modules setup.py compiles (setup.py reads this tuple; it cannot import the package)."""

SHARED_LIBRARY = "stream._core__mypyc"
"""The extension holding the compiled code of every module (mypyc group "stream._core")."""
_ROOT = Path(__file__).resolve().parent.parent
RECORD = Path(__file__).with_name("_compiled_sources.json")
"""{module: SHA-256 of the source it was compiled from}, written by setup.py when it compiles."""


def _source(module: str) -> Path:
    return _ROOT.joinpath(*module.split(".")).with_suffix(".py")


def _has_extension(module: str) -> bool:
    base = _source(module).with_suffix("")
    return any(base.with_name(base.name + suffix).exists() for suffix in EXTENSION_SUFFIXES)


def _why_pure() -> str | None:
    """Why the `.py` files must be imported although extensions are installed; None: use them."""
    if os.environ.get("CRM_KPI_PURE_PYTHON", "") not in ("", "0"):
        return "CRM_KPI_PURE_PYTHON is set"
    missing = [m for m in (*MODULES, SHARED_LIBRARY) if not _has_extension(m)]
    if missing:
        return f"{missing[0]} was not built"
    try:
        record = json.loads(RECORD.read_text())
    except (OSError, ValueError):
        return "no record of the compiled sources"
    for module in MODULES:
        if record.get(module) != hashlib.sha256(_source(module).read_bytes()).hexdigest():
            return f"{module} changed since it was compiled"
    return None


class _SourceOnly(MetaPathFinder):
    """Finds the compiled modules' `.py` files, ahead of the extensions."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname not in MODULES or not path:
            return None
        for entry in path:
            spec = FileFinder(entry, (SourceFileLoader, SOURCE_SUFFIXES)).find_spec(fullname)
            if spec is not None:
                return spec
        return None


def install() -> None:
    """Import the `.py` files of MODULES if they must be (see the module docstring); idempotent."""
    if any(isinstance(f, _SourceOnly) for f in sys.meta_path) or not any(_has_extension(m) for m in MODULES):
        return
    reason = _why_pure()
    if reason is None:
        return
    if not reason.startswith("CRM_KPI_PURE_PYTHON"):
        warnings.warn(
            f"crm-kpi-stream: running the pure-Python core, not the compiled one ({reason}); "
            "`pip install -e .` rebuilds it",
            RuntimeWarning,
            stacklevel=2,
        )
    sys.meta_path.insert(0, _SourceOnly())


def compiled() -> bool:
    """True when the pure core runs compiled in this process."""
    import stream.events.fold  # noqa: F401  (the module, not the function the package re-exports)

    return not (sys.modules["stream.events.fold"].__file__ or "").endswith(".py")
