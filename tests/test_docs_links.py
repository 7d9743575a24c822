"""The README and docs/*.md: every relative link points at a file that exists, every ``#anchor`` at a heading of
the page it names (GitHub's anchor rules), and every ``make <target>`` they show is a target of the Makefile."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def prose_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, line) of the page outside fenced code blocks."""
    out, fence = [], None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        marker = re.match(r"^\s*(```|~~~)", line)
        if marker:
            fence = None if fence == marker.group(1) else (fence or marker.group(1))
            continue
        if fence is None:
            out.append((number, line))
    return out


def slug(title: str) -> str:
    """GitHub's anchor of a heading: link text kept, markup dropped, lower case, punctuation other than ``-`` and
    ``_`` removed, each space a hyphen."""
    title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title).replace("`", "")
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in prose_lines(path):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def test_slug_follows_github_rules():
    assert slug("What `make demo` does") == "what-make-demo-does"
    assert slug("2.5D: neighbouring slices as channels (`--context-slices`)") == \
        "25d-neighbouring-slices-as-channels---context-slices"
    assert slug("The nnU-Net / MSD raw layout") == "the-nnu-net--msd-raw-layout"
    assert slug("Section `seg_models`: the brain-MRI models") == "section-seg_models-the-brain-mri-models"


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_links_and_anchors_resolve(page):
    cache: dict[Path, set[str]] = {}
    broken = []
    for number, line in prose_lines(page):
        for link in LINK.findall(line):
            if re.match(r"[a-z]+:", link):  # https:, mailto:
                continue
            target_text, _, anchor = link.partition("#")
            target = (page.parent / target_text).resolve() if target_text else page
            if not target.exists():
                broken.append(f"{page.name}:{number}: {link}: no such file")
            elif anchor and target.suffix == ".md":
                if anchor not in cache.setdefault(target, anchors(target)):
                    broken.append(f"{page.name}:{number}: {link}: no heading with that anchor in {target.name}")
    assert not broken, "\n".join(broken)


def test_make_targets_shown_exist():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([\w.-]+):", makefile, re.M))
    unknown = []
    for page in PAGES:
        prose = dict(prose_lines(page))
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            code = re.findall(r"`([^`]+)`", line) if number in prose else [line]  # inline code, or a code block
            for target in (t for text in code for t in re.findall(r"(?<![\w/.$-])make\s+([a-z][\w-]*)", text)):
                if target not in targets:
                    unknown.append(f"{page.name}:{number}: make {target}")
    assert not unknown, "\n".join(unknown)
