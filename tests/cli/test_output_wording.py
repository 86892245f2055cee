"""Counts in command output agree with their number: '1 batch', '1 reload', '1 value', '1 step' (newcomer
review H6: `flowrl stats` said "1 batches", `flowrl inspect` "1 values", `flowrl export` "× 1 steps")."""

from __future__ import annotations

from flowrl_deploy.errors import counted


def test_counted_is_singular_for_one_only():
    assert [counted(n, "session") for n in (0, 1, 2)] == ["0 sessions", "1 session", "2 sessions"]
    assert [counted(n, "batch", "batches") for n in (0, 1, 5)] == ["0 batches", "1 batch", "5 batches"]
