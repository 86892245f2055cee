"""gc_frozen: objects made before the block are out of the collector's reach inside it, and back after."""

from __future__ import annotations

import gc
import json
import subprocess
import sys

from flowrl_deploy.gc_freeze import gc_frozen


class Node:
    """A tracked container (an instance with a __dict__)."""


def tracked(obj: object) -> bool:
    return any(o is obj for o in gc.get_objects())


def test_objects_made_before_the_block_are_frozen_inside_it_and_released_after():
    before = Node()
    with gc_frozen():
        during = Node()
        assert gc.get_freeze_count() > 0
        assert not tracked(before), "an object from before the block is still collectable"
        assert tracked(during), "an object made inside the block must stay collectable"
    assert gc.get_freeze_count() == 0
    assert tracked(before)


def test_a_callers_own_freeze_survives_the_block():
    gc.freeze()
    try:
        theirs_count = gc.get_freeze_count()
        with gc_frozen():
            pass
        assert gc.get_freeze_count() >= theirs_count > 0
    finally:
        gc.unfreeze()


def test_the_block_releases_its_freeze_when_it_raises():
    try:
        with gc_frozen():
            raise KeyError("boom")
    except KeyError:
        pass
    assert gc.get_freeze_count() == 0


# CPython 3.12 starts with objects already frozen (375 of its own tuples in 3.12.1), which the block
# once took for a caller's freeze: it then never unfroze, and a garbage cycle from before it was never
# collected. A fresh interpreter that freezes before importing gc_freeze plays that on any version.
# It freezes live objects only, as 3.12 does: a freeze of the start-up's garbage too (which site hooks
# leave, more in some environments than others) counted more objects than the caller's freeze after the
# import, which was then taken for the interpreter's and undone (seen on a 3.12.1 install). The
# garbage made here, with the collector off, is there in every environment.
PRE_FROZEN_INTERPRETER = """
import gc, json, weakref

gc.disable()
for _ in range(5000):
    cycle = []
    cycle.append(cycle)  # start-up garbage
del cycle
gc.enable()
gc.collect()
gc.freeze()  # what CPython 3.12 does at start-up: its own objects, all alive, frozen
from flowrl_deploy.gc_freeze import gc_frozen


class Node:
    pass


node = Node()
node.self = node
ref = weakref.ref(node)
with gc_frozen():
    pass
left_frozen = gc.get_freeze_count()  # read now: 3.12's full collections refreeze its immortal objects
del node
gc.collect()
collected = ref() is None
gc.freeze()  # now a caller's own freeze, made after the import
callers = gc.get_freeze_count()
with gc_frozen():
    pass
print(json.dumps({"collected": collected, "left_frozen": left_frozen, "callers": callers,
                  "after_callers": gc.get_freeze_count()}))
"""


def test_an_interpreter_that_starts_with_frozen_objects_gets_them_back_under_the_collector():
    done = subprocess.run(
        [sys.executable, "-c", PRE_FROZEN_INTERPRETER], capture_output=True, text=True, timeout=60, check=True
    )
    seen = json.loads(done.stdout)
    assert seen["collected"], "a reference cycle made before the block was never collected"
    assert seen["left_frozen"] == 0
    assert seen["after_callers"] >= seen["callers"] > 0, "a freeze made after the import was undone"
