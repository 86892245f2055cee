"""Type checks of frozen dataclasses read back from JSON (a training config, a policy contract) or
built by library callers (an export config): each field's annotation says what it must hold, so a
hand-edited file or a wrong argument gets a clear error."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import numpy as np

_KINDS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "str": (str, "a string"),
    "int": (int, "an integer"),
    "float": ((int, float), "a number"),
    "bool": (bool, "true or false"),
    "None": (type(None), "None"),
}


def is_int(value: object) -> bool:
    """An integer, and not a bool (which JSON's true/false become, and Python counts as an int)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """A Python or NumPy real number, and not a bool: what a setting given in code may be."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def is_integer(value: object) -> bool:
    """A Python or NumPy integer, and not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def shown(value: object) -> str:
    """How an error message shows a value it refuses: numbers as ``%g``, anything else as its repr."""
    return f"{value:g}" if is_number(value) else repr(value)


def wrong_type(instance: Any) -> tuple[str, str] | None:
    """The first field whose value its annotation does not allow, and what it must be ('an integer');
    None when every field fits. ``tuple[...]`` fields must hold tuples (their items are not checked);
    a union such as ``int | None`` allows any of its members ('an integer or None')."""
    for field in fields(instance):
        annotation = str(field.type)
        if annotation.startswith("tuple["):
            kinds, description = (tuple,), "a list"
        else:
            members = [_KINDS[member] for member in annotation.split(" | ")]
            kinds = tuple(t for kind, _ in members for t in (kind if isinstance(kind, tuple) else (kind,)))
            description = " or ".join(words for _, words in members)
        value = getattr(instance, field.name)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            return field.name, description
    return None
