"""The CRM KPI stream processor: worker, exporter and command line (README.md).

Public surface: the settings, the KPI registry, and the entry points. Everything
else in the package is internal.
"""

from stream.kpis import METRICS, Metric
from stream.settings import Settings, SettingsError, load_settings

__all__ = ["METRICS", "Metric", "Settings", "SettingsError", "load_settings"]
