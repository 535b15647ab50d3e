"""Entity states: the packed encoding round-trips every field, compiled or not (pure)."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

import stream
from stream.events.entities import PackedState
from stream.kpis import ENTITIES

STATES = sorted({type(kind.decode(None)) for kind in ENTITIES}, key=lambda c: c.__name__)
PACKED = [c for c in STATES if issubclass(c, PackedState)]


def _annotations(cls: type) -> dict[str, str]:
    """Field annotations as written in the source (compiled classes do not keep them)."""
    source = Path(stream.__file__).parent.joinpath(*cls.__module__.split(".")[1:]).with_suffix(".py")
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
            return {
                item.target.id: ast.unparse(item.annotation)
                for item in node.body
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
            }
    raise AssertionError(f"{cls.__name__} not found in {source}")


def test_every_packed_state_is_found() -> None:
    assert {c.__name__ for c in PACKED} >= {"TicketState", "DealState", "CustomerState", "InvoiceState"}


@pytest.mark.parametrize("cls", PACKED, ids=lambda c: c.__name__)
def test_integer_fields_follow_the_naming_rule(cls: type) -> None:
    # PackedState decodes a field as an integer exactly when its name ends in _us or _micros.
    for name, annotation in _annotations(cls).items():
        assert annotation in ("int | None", "str | None"), (name, annotation)
        assert (annotation == "int | None") == name.endswith(("_us", "_micros")), name


@pytest.mark.parametrize("cls", PACKED, ids=lambda c: c.__name__)
def test_every_field_round_trips(cls: type) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    tricky = ["a|b", "100%", "%7C", "", "x"]
    for shift in range(len(names)):
        values = {}
        for i, name in enumerate(names):
            if name.endswith(("_us", "_micros")):
                values[name] = (i + shift) * 10**12 - 7 if (i + shift) % 3 else None
            else:
                values[name] = tricky[(i + shift) % len(tricky)] or None
        state = cls(**values)
        assert cls.decode(state.encode()) == state
        copy = state.copy()
        assert copy == state and copy is not state
    assert cls.decode(None) == cls() == cls.decode("")


@pytest.mark.parametrize("cls", PACKED, ids=lambda c: c.__name__)
def test_a_shorter_encoding_leaves_later_fields_empty(cls: type) -> None:
    # What an older layout with fewer fields wrote still decodes.
    first = dataclasses.fields(cls)[0].name
    value = 5 if first.endswith(("_us", "_micros")) else "v"
    assert cls.decode(str(value)) == cls(**{first: value})
