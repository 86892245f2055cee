"""gc_frozen: objects made before the block are out of the collector's reach inside it, and back after."""

from __future__ import annotations

import gc

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
