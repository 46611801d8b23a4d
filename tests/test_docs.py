"""The README and the docs/ site: the README stays a front door, no link points nowhere,
and every command they name exists.

``mkdocs build --strict`` (in .ci/run) checks the site's own links and anchors; these
tests also cover the README, which MkDocs does not build.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
# [text](target) and ![alt](target); the target ends at a space (a title) or ')'
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)
# `atml <command>`, not a path or URL ending in atml (/shared/atml, psycopg://atml@db)
COMMAND = re.compile(r"(?<![\w/.:@+-])atml ([a-z][a-z0-9-]*)")


def _prose(text: str) -> str:
    """The text outside code: links in code blocks and spans are examples, not links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def _code(text: str) -> str:
    """Only the code: fenced blocks and inline spans, where commands are written."""
    return "\n".join(FENCE.findall(text) + INLINE_CODE.findall(FENCE.sub("", text)))


def _slug(heading: str) -> str:
    """The anchor MkDocs' toc extension gives a heading (GitHub agrees on plain headings)."""
    text = re.sub(r"[*_`]", "", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(page: Path) -> set[str]:
    return {_slug(h) for h in HEADING.findall(FENCE.sub("", page.read_text()))}


def _links(page: Path) -> list[str]:
    return LINK.findall(_prose(page.read_text()))


def test_readme_is_a_front_door() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move reference text into docs/"


def test_readme_keeps_its_two_setup_commands_and_test_needs() -> None:
    text = README.read_text()
    assert ("pip install torch==2.13.0 && pip install -e . && atml search --space "
            "search_spaces/afib.yaml") in text
    assert 'pip install torch==2.13.0 && pip install -e ".[test]" && python -m pytest' in text
    for need in ("../shared/data", "ATML_SHARED_DATA", "127.0.0.1:5432", "Chromium"):
        assert need in text, f"README.md no longer says what the tests need: {need}"


def test_docs_site_has_a_page_per_topic() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in sorted(DOCS.glob("*.md")):
        assert page.name in nav, f"docs/{page.name} is not in mkdocs.yml's nav"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_existing_files(page: Path) -> None:
    broken = []
    for target in _links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest})")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.name})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


def _commands() -> set[str]:
    out = subprocess.run([sys.executable, "-m", "atml", "--help"], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    choices = re.search(r"\{([a-z0-9,-]+)\}", out)
    assert choices, f"no command list in `atml --help`:\n{out}"
    return set(choices.group(1).split(","))


def test_every_named_command_exists() -> None:
    commands = _commands()
    named = {}
    for page in PAGES:
        for cmd in COMMAND.findall(_code(page.read_text())):
            named.setdefault(cmd, page.relative_to(ROOT))
    assert "search" in named, "the README's commands were not found at all"
    unknown = {cmd: str(page) for cmd, page in named.items() if cmd not in commands}
    assert not unknown, f"commands that `atml --help` does not list: {unknown}"
