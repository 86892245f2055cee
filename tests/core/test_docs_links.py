"""Every relative link in README.md, docs/*.md and CHANGELOG.md leads somewhere: its file exists and its
``#anchor`` is a heading of that file, slugged as GitHub does. The README was split into docs/ pages,
and a link left pointing at a section that moved opens the right page at its top, or nowhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "CHANGELOG.md"]

FENCE = re.compile(r"^(`{3,}|~{3,}).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$", re.MULTILINE)
HTML_ANCHOR = re.compile(r"<a\s[^>]*(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)


def _blank(match: re.Match[str]) -> str:
    """The match with every character but its line ends replaced by a space (line numbers stay)."""
    return re.sub(r"[^\n]", " ", match.group(0))


def prose(text: str) -> str:
    """``text`` with its fenced code blocks and code spans blanked: a link or heading in code is none."""
    return CODE_SPAN.sub(_blank, FENCE.sub(_blank, text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the link text of its links kept, lower case, punctuation but ``-``
    and ``_`` dropped, each space a ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a page: one per heading (a repeated one gets ``-1``, ``-2``, … as on GitHub) and
    each HTML ``<a name=…>`` or ``id=…``."""
    text = path.read_text(encoding="utf-8")
    found: set[str] = set()
    seen: dict[str, int] = {}
    for match in HEADING.finditer(FENCE.sub(_blank, text)):
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found | set(HTML_ANCHOR.findall(text))


def links(path: Path) -> list[tuple[int, str]]:
    """Each link target of a page outside code, with its line number."""
    text = prose(path.read_text(encoding="utf-8"))
    matches = [*LINK.finditer(text), *REFERENCE.finditer(text)]
    return sorted((text.count("\n", 0, m.start()) + 1, m.group(1)) for m in matches)


def broken(path: Path) -> list[str]:
    """Each relative link of ``path`` whose file is missing or whose anchor is no heading there."""
    problems = []
    for line, target in links(path):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # https:, mailto:: not checked here
            continue
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.name}:{line}: {target}"
        if not destination.exists():
            problems.append(f"{where}: no file {destination}")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            problems.append(f"{where}: no heading #{anchor} in {destination.name}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_relative_link_and_anchor_resolves(page):
    assert broken(page) == []


def test_the_readme_links_every_docs_page():
    linked = {(ROOT / target.partition("#")[0]).resolve() for _, target in links(ROOT / "README.md")}
    pages = sorted((ROOT / "docs").glob("*.md"))
    assert pages, "docs/ has no pages"
    assert [page.name for page in pages if page.resolve() not in linked] == []


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Security: token, TLS, host", "security-token-tls-host"),
        ("In the robot's control loop (Python, no torch needed)", "in-the-robots-control-loop-python-no-torch-needed"),
        ("`--report`: latency and return per N", "--report-latency-and-return-per-n"),
        ("`flowrl demo` — every stage in a few minutes", "flowrl-demo--every-stage-in-a-few-minutes"),
        ("The algorithm, one obvious place per idea (`train/`)", "the-algorithm-one-obvious-place-per-idea-train"),
        ("See [the page](other.md) now", "see-the-page-now"),
    ],
)
def test_slugs_are_githubs(heading, anchor):
    assert slug(heading) == anchor


def test_a_missing_file_a_missing_anchor_and_a_repeated_heading_are_told_apart(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## Part\n\n## Part\n\n```\n# not a heading\n```\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[ok](other.md#part) [second](other.md#part-1) [self](#page) [web](https://example.com/x#y)\n"
        "[gone](missing.md) [no anchor](other.md#nowhere) [code heading](other.md#not-a-heading)\n"
        "[third](other.md#part-2) [self gone](#moved) `[in code](missing.md)`\n\n"
        "```\n[in a block](missing.md)\n```\n\n[ref]: other.md#nothing-here\n"
    )
    assert broken(page) == [
        f"page.md:4: missing.md: no file {tmp_path / 'missing.md'}",
        "page.md:4: other.md#not-a-heading: no heading #not-a-heading in other.md",
        "page.md:4: other.md#nowhere: no heading #nowhere in other.md",
        "page.md:5: #moved: no heading #moved in page.md",
        "page.md:5: other.md#part-2: no heading #part-2 in other.md",
        "page.md:11: other.md#nothing-here: no heading #nothing-here in other.md",
    ]
