"""Type checks of frozen dataclasses read back from JSON (a training config, a policy contract):
each field's annotation says what it must hold, so a hand-edited file gets a clear error."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

_KINDS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "str": (str, "a string"),
    "int": (int, "an integer"),
    "float": ((int, float), "a number"),
    "bool": (bool, "true or false"),
}


def is_int(value: object) -> bool:
    """An integer, and not a bool (which JSON's true/false become, and Python counts as an int)."""
    return isinstance(value, int) and not isinstance(value, bool)


def wrong_type(instance: Any) -> tuple[str, str] | None:
    """The first field whose value its annotation does not allow, and what it must be ('an integer');
    None when every field fits. ``tuple[...]`` fields must hold tuples (their items are not checked)."""
    for field in fields(instance):
        annotation = str(field.type)
        kind, description = (tuple, "a list") if annotation.startswith("tuple[") else _KINDS[annotation]
        value = getattr(instance, field.name)
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            return field.name, description
    return None
