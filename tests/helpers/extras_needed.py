"""Tests that need an optional extra skip where it is not installed (a robot computer's base install
plus the dev extra), saying which extra to install, instead of failing on the missing module."""

from __future__ import annotations

import pytest

from flowrl_deploy.extras import missing_modules


def missing_extras_reason(*extras: str) -> str | None:
    """Why a test needing ``extras`` cannot run here, naming the install; None when it can."""
    missing = missing_modules(*extras)
    if not missing:
        return None
    named = " and ".join(f"[{extra}]" for extra in extras) + (" extras" if len(extras) > 1 else " extra")
    return f'needs the {named} ({", ".join(missing)} not installed): pip install -e ".[{",".join(extras)}]"'


def needs_extras(*extras: str) -> pytest.MarkDecorator:
    """Skip the marked test (or parameter) where an optional module of ``extras`` is missing."""
    reason = missing_extras_reason(*extras)
    return pytest.mark.skipif(reason is not None, reason=reason or "")
