"""Grafana dashboard JSON (provisioned from deploy/grafana/dashboards/)."""

from __future__ import annotations

import json
from typing import Any

from .model import Dashboard, Panel
from .names import metric_help
from .thresholds import WINDOWS

__all__ = ["dashboard_json", "dashboard_text"]

# Every panel and query reads the data source picked in the board's `datasource` variable.
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRID_COLUMNS = 24
PANEL_HEIGHT = 8
DEFAULT_WINDOW = "24h"


def _panel_options(kind: str) -> dict[str, Any]:
    reduce = {"calcs": ["lastNotNull"], "fields": "", "values": False}
    if kind == "stat":
        return {"reduceOptions": reduce, "colorMode": "value", "graphMode": "area", "textMode": "auto"}
    if kind == "bargauge":
        return {"reduceOptions": reduce, "displayMode": "gradient", "orientation": "horizontal"}
    return {
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
        "tooltip": {"mode": "multi", "sort": "none"},
    }


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description or metric_help(panel.queries[0].expr),
        "datasource": DATASOURCE,
        "gridPos": {"h": PANEL_HEIGHT, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": _panel_options(panel.kind),
        "targets": [
            {
                "datasource": DATASOURCE,
                "expr": q.expr,
                "legendFormat": q.legend or "__auto",
                "range": True,
                "refId": chr(ord("A") + i),
            }
            for i, q in enumerate(panel.queries)
        ],
    }


def _variables() -> list[dict[str, Any]]:
    datasource = {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {"selected": False, "text": "Prometheus", "value": "prometheus"},
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "refresh": 1,
        "regex": "",
    }
    window = {
        "name": "window",
        "label": "Window",
        "type": "custom",
        "query": ",".join(WINDOWS),
        "current": {"selected": True, "text": DEFAULT_WINDOW, "value": DEFAULT_WINDOW},
        "options": [{"selected": v == DEFAULT_WINDOW, "text": v, "value": v} for v in WINDOWS],
        "hide": 0,
        "includeAll": False,
        "multi": False,
    }
    return [datasource, window]


def dashboard_json(board: Dashboard) -> dict[str, Any]:
    """The board as Grafana's dashboard model; panels fill rows of 24 columns left to right."""
    panels = []
    x = y = 0
    for panel_id, panel in enumerate(board.panels, start=1):
        if x + panel.width > GRID_COLUMNS:
            x, y = 0, y + PANEL_HEIGHT
        panels.append(_panel_json(panel, panel_id, x, y))
        x += panel.width
    return {
        "uid": board.uid,
        "title": board.title,
        "description": board.description,
        "tags": ["crm-kpi"],
        "editable": False,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "browser",
        "annotations": {"list": []},
        "links": [
            {
                "type": "dashboards",
                "tags": ["crm-kpi"],
                "asDropdown": True,
                "title": "CRM KPIs",
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "templating": {"list": _variables()},
        "panels": panels,
    }


def dashboard_text(board: Dashboard) -> str:
    """The board's JSON file as committed."""
    return json.dumps(dashboard_json(board), indent=2, ensure_ascii=False) + "\n"
