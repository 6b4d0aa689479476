"""Every relative link in README.md and docs/*.md leads somewhere (issue 18, item 8).

The reference moved out of the README into one page per topic, so a reader now follows links
to find anything; a renamed page or heading must fail here rather than leave a dead link.
A link to a Markdown file's `#anchor` must name one of its headings, as GitHub spells them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# `[text](target)`, where target is not a URL; fenced code is cut out before matching.
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^#{1,6} +(.+?) *$", re.MULTILINE)


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces
    to hyphens, and `-1`, `-2`... after a repeated one."""
    slugs: set[str] = set()
    repeats: dict[str, int] = {}
    for heading in HEADING.findall(FENCE.sub("", page.read_text())):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        repeat = repeats.get(slug, 0)
        repeats[slug] = repeat + 1
        slugs.add(f"{slug}-{repeat}" if repeat else slug)
    return slugs


def relative_links(page: Path) -> list[str]:
    """The link targets on `page` that are not URLs (`https:`, `mailto:`...)."""
    targets = LINK.findall(FENCE.sub("", page.read_text()))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def resolves(page: Path, target: str) -> bool:
    """Whether a link on `page` names a file inside the repository (and, for a Markdown
    file, one of its headings when it gives an anchor)."""
    path, _, anchor = target.partition("#")
    resolved = (page.parent / path).resolve() if path else page
    if not resolved.exists() or ROOT not in (resolved, *resolved.parents):
        return False
    return not anchor or resolved.suffix != ".md" or anchor in anchors(resolved)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert [t for t in relative_links(page) if not resolves(page, t)] == []


def test_the_checker_sees_links_and_anchors() -> None:
    """The check above passes vacuously if nothing matches: the README links to docs/."""
    assert "docs/README.md" in relative_links(ROOT / "README.md")
    assert "targets-files-directories-wheels" in anchors(ROOT / "docs" / "inspect.md")
