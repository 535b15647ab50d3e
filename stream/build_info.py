"""The installed version and the `crm_kpi_build_info` series every /metrics endpoint serves."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

from prometheus_client.core import GaugeMetricFamily

__all__ = ["VERSION", "build_info"]

try:
    VERSION = version("crm-kpi-stream")
except PackageNotFoundError:  # running from a source tree that was never installed
    VERSION = "unknown"


def build_info() -> GaugeMetricFamily:
    """`crm_kpi_build_info{version, python} 1`: which release a target runs (join it on instance)."""
    family = GaugeMetricFamily(
        "crm_kpi_build_info",
        "Always 1: the crm-kpi-stream version and Python of this process.",
        labels=["version", "python"],
    )
    family.add_metric([VERSION, platform.python_version()], 1)
    return family
