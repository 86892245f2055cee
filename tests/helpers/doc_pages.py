"""The documentation the tests read their examples from: README.md and the pages under docs/."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def doc(name: str) -> str:
    """The text of ``README.md`` or of a page such as ``docs/client.md``, by its path in the repository."""
    return (ROOT / name).read_text(encoding="utf-8")


def section(name: str, heading: str) -> str:
    """What follows the heading line ``heading`` (its text, without the ``#``s) in ``name``."""
    found = re.search(rf"^#{{1,6}} {re.escape(heading)}\n", doc(name), re.MULTILINE)
    assert found, f"{name} has no heading {heading!r}"
    return doc(name)[found.end() :]


def python_block(name: str, heading: str) -> str:
    """The first ``python`` code block after ``heading`` in ``name``."""
    return section(name, heading).split("```python\n", 1)[1].split("```", 1)[0]
