"""The producers' package: CRM event models, their topics and JSON Schemas (SPEC §3).

Depends on pydantic only, so producers can validate before they publish.
"""

from schemas.events import (
    CATALOG_MODELS,
    CORE_MODELS,
    CORE_TYPES,
    EVENT_TYPES,
    MODELS,
    TOPIC_FAMILY,
    Envelope,
    Event,
    event_adapter,
    type_of,
    validate_event_json,
)
from schemas.export import export_json_schemas, json_schemas

__all__ = [
    "CATALOG_MODELS",
    "CORE_MODELS",
    "CORE_TYPES",
    "EVENT_TYPES",
    "MODELS",
    "TOPIC_FAMILY",
    "Envelope",
    "Event",
    "event_adapter",
    "export_json_schemas",
    "json_schemas",
    "type_of",
    "validate_event_json",
]
