"""Names that moved to another module stay importable from their old one, with a DeprecationWarning
that names the new home: user code written against an earlier release keeps running while it is fixed."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping


def moved_names(old_module: str, new_homes: Mapping[str, str]) -> Callable[[str], object]:
    """A module-level ``__getattr__`` for ``old_module``: a name in ``new_homes`` (name → the module it
    moved to) is imported from its new module, with a DeprecationWarning; any other name is the usual
    AttributeError. The new module is imported only when a moved name is asked for."""

    def __getattr__(name: str) -> object:
        home = new_homes.get(name)
        if home is None:
            raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
        warnings.warn(f"{old_module}.{name} moved to {home}: import it from there", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(home), name)

    return __getattr__
