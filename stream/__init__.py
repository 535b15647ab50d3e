"""The CRM KPI stream processor: worker, exporter and command line (README.md).

Public surface: the settings, the KPI registry, and the entry points. Everything
else in the package is internal.
"""

from stream import _compiled

_compiled.install()  # before the first import of a module that may be compiled (stream/_compiled.py)

from stream.kpis import METRICS, Metric  # noqa: E402
from stream.settings import Settings, SettingsError, load_settings  # noqa: E402

__all__ = ["METRICS", "Metric", "Settings", "SettingsError", "load_settings"]
