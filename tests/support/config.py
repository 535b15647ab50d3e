"""Settings for tests: the defaults of `Settings` plus explicit overrides, never the developer's environment."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from stream.events.fold import FoldContext
from stream.events.windows import make_windows
from stream.kpis import KpiConfig, fold_rules
from stream.settings import Settings, load_settings
from stream.store import Keys


def clean_settings(**overrides: Any) -> Settings:
    """Settings as a fresh process without any CRM_KPI_* variable would see them, plus `overrides`."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("CRM_KPI_")}
    try:
        return load_settings(**overrides)
    finally:
        os.environ.update(saved)


def kpi_config(**overrides: Any) -> KpiConfig:
    """The KPI settings of `clean_settings(**overrides)`."""
    return clean_settings(**overrides).kpi_config()


def fold_context(now_s: float, windows: list[float], key_prefix: str = "p", **overrides: Any) -> FoldContext:
    """A FoldContext as the worker builds it, for these windows (s) and settings overrides."""
    prefix: Callable[[str], str] = Keys(key_prefix).entity_prefix
    return FoldContext(now_s, make_windows(windows), fold_rules(kpi_config(**overrides)), prefix)
