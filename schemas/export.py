"""JSON Schema of every event type, for producers (`crm-kpi schemas export DIR`).

Each schema names the Kafka topic its events go to: `x-topic` (with the topic
prefix, `crm.` unless told otherwise), `x-topic-family` (without it) and
`x-event-type`, and says the same in its title and description.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from schemas.events import MODELS, TOPIC_FAMILY, type_of

__all__ = ["DEFAULT_TOPIC_PREFIX", "export_json_schemas", "json_schemas", "topic_of"]

DEFAULT_TOPIC_PREFIX = "crm."
"""The topic prefix of the committed schemas (the worker's CRM_KPI_TOPIC_PREFIX default)."""

_PREFIX = re.compile(r"^[A-Za-z0-9._-]*$")


def topic_of(event_type: str, topic_prefix: str = DEFAULT_TOPIC_PREFIX) -> str:
    """The topic events of `event_type` are published to ('deal.won' -> 'crm.deals')."""
    return f"{topic_prefix}{TOPIC_FAMILY[event_type]}"


def json_schemas(topic_prefix: str = DEFAULT_TOPIC_PREFIX) -> dict[str, str]:
    """{file name: schema text} for every event type, deterministic (sorted keys)."""
    if not _PREFIX.match(topic_prefix):
        raise ValueError(f"topic prefix {topic_prefix!r} may hold only letters, digits, '.', '_' and '-'")
    out = {}
    for model in MODELS:
        kind = type_of(model)
        topic = topic_of(kind, topic_prefix)
        schema = model.model_json_schema(mode="validation")
        schema["$id"] = f"https://crm-kpi-stream.example/schemas/{kind}.json"
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["title"] = f"{kind} (topic {topic})"
        where = f"Publish to the Kafka topic `{topic}`"
        if "customer_id" in model.model_fields:
            where += "; recommended message key: the `customer_id`"
        schema["description"] = f"{schema.get('description', '').strip()}\n\n{where}."
        schema["x-event-type"] = kind
        schema["x-topic"] = topic
        schema["x-topic-family"] = TOPIC_FAMILY[kind]
        out[f"{kind}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def export_json_schemas(directory: Path, topic_prefix: str = DEFAULT_TOPIC_PREFIX) -> list[Path]:
    """Write one `<type>.json` per event type into `directory`; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in json_schemas(topic_prefix).items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written
