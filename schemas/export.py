"""JSON Schema of every event type, for producers (`crm-kpi schemas export DIR`)."""

from __future__ import annotations

import json
from pathlib import Path

from schemas.events import MODELS, type_of

__all__ = ["export_json_schemas", "json_schemas"]


def json_schemas() -> dict[str, str]:
    """{file name: schema text} for every event type, deterministic (sorted keys)."""
    out = {}
    for model in MODELS:
        schema = model.model_json_schema(mode="validation")
        schema["$id"] = f"https://crm-kpi-stream.example/schemas/{type_of(model)}.json"
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        out[f"{type_of(model)}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def export_json_schemas(directory: Path) -> list[Path]:
    """Write one `<type>.json` per event type into `directory`; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in json_schemas().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written
