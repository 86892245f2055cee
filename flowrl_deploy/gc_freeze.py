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


@contextmanager
def gc_frozen() -> Iterator[None]:
    """Collect, then keep every object that exists now out of the collector while the block runs.

    On exit the objects go back under the collector, unless something had frozen objects before
    (then they stay frozen, as that caller expects)."""
    already_frozen = gc.get_freeze_count() > 0
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        if not already_frozen:
            gc.unfreeze()
