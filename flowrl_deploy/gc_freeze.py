"""Keeping Python's cyclic garbage collector from pausing a control path.

A full collection walks every object the collector tracks. Once a simulator, gRPC and numpy are
loaded that is some 80,000 objects, and a full collection took 20–30 ms here: at 200 Hz that is
several missed control ticks at once. Collecting once after setup and then freezing what exists
(``gc.freeze``) leaves later collections only the objects made since, which take well under a
millisecond. Real-time Python services (and CPython's own documentation of ``gc.freeze``) use the
same remedy.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

_FROZEN_AT_IMPORT = gc.get_freeze_count()
"""Objects frozen before this module was imported: the interpreter's own, not a caller's. CPython 3.12
keeps its immortal objects frozen (375 tuples in 3.12.1, put back by every full collection), so a
nonzero count there does not mean that a caller froze. A freeze made before the import is taken for the
interpreter's and undone by the block: that costs only later collections walking those objects, where
taking the interpreter's for a caller's left everything frozen for good."""


@contextmanager
def gc_frozen() -> Iterator[None]:
    """Collect, then keep every object that exists now out of the collector while the block runs.

    On exit the objects go back under the collector, unless a caller had frozen objects since this
    module was imported (then they stay frozen, as that caller expects)."""
    already_frozen = gc.get_freeze_count() > _FROZEN_AT_IMPORT
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        if not already_frozen:
            gc.unfreeze()
