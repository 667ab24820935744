"""The documentation keeps up with the code: every command and option of the Typer app is in
docs/commands.md, no relative link in README.md or docs/ is dead, and the README stays short.

Quick: the app is read as click sees it, and importing fercli.cli imports no TensorFlow."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest
import typer
import typer.main

from fercli.cli import app

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
COMMANDS = DOCS / "commands.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
README_MAX_LINES = 160  # read in five minutes

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")


def prose_lines(text: str) -> list[str]:
    """The lines of a Markdown text outside fenced code blocks (where '#' is no heading)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        lines.append("" if fenced else line)
    return lines


def headings(text: str) -> list[tuple[int, str]]:
    """(level, title) of every heading, in order."""
    found = []
    for line in prose_lines(text):
        match = HEADING.match(line)
        if match:
            found.append((len(match.group(1)), match.group(2)))
    return found


def slug(title: str) -> str:
    """GitHub's anchor for a heading: the rendered text lower-cased, punctuation dropped
    (letters, digits, '-', '_' and spaces kept), spaces turned into '-'."""
    text = CODE_SPAN.sub(lambda match: match.group(2), title)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link's text
    kept = "".join(
        char
        for char in text.lower()
        if char in "-_ " or unicodedata.category(char)[0] in ("L", "N")
    )
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a page's headings make, repeats numbered as GitHub numbers them."""
    seen: dict[str, int] = {}
    result = set()
    for _, title in headings(path.read_text(encoding="utf-8")):
        base = slug(title)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def links(path: Path) -> list[str]:
    """The targets of a page's Markdown links, outside code blocks and code spans."""
    targets = []
    for line in prose_lines(path.read_text(encoding="utf-8")):
        targets += LINK.findall(CODE_SPAN.sub("", line))
    return targets


def command_sections(text: str, command: str) -> str:
    """The text of every section (with its subsections) whose heading names `fer COMMAND`."""
    lines = prose_lines(text)
    naming = re.compile(rf"\bfer {re.escape(command)}\b")
    parts, level = [], None
    for line in lines:
        match = HEADING.match(line)
        if match:
            depth = len(match.group(1))
            if level is not None and depth <= level:
                level = None
            if level is None and naming.search(match.group(2)):
                level = depth
        if level is not None:
            parts.append(line)
    return "\n".join(parts)


def the_commands() -> dict:
    return typer.main.get_command(app).commands


def spellings(command) -> list[str]:
    """Every option spelling of a command, --no-x forms included (not the arguments)."""
    return [
        opt
        for param in command.params
        if param.param_type_name == "option"
        for opt in (*param.opts, *param.secondary_opts)
        if opt.startswith("--")
    ]


def test_the_app_is_read_whole():
    commands = the_commands()
    assert {"preprocess", "train", "crossval", "predict", "list", "remove"} <= set(commands)
    assert "--epochs" in spellings(commands["train"])
    assert "--no-augment" in spellings(commands["train"])


@pytest.mark.parametrize("name", sorted(the_commands()))
def test_every_command_and_each_of_its_options_is_in_commands_md(name):
    text = COMMANDS.read_text(encoding="utf-8")
    section = command_sections(text, name)
    assert section, f"docs/commands.md has no heading naming `fer {name}`"
    missing = [
        opt
        for opt in spellings(the_commands()[name])
        if not re.search(rf"{re.escape(opt)}(?![\w-])", section)
    ]
    assert not missing, f"fer {name}: options not in its sections of docs/commands.md: {missing}"


def test_the_apps_own_options_are_in_commands_md():
    text = COMMANDS.read_text(encoding="utf-8")
    group = typer.main.get_command(app)
    missing = [
        opt
        for param in group.params
        for opt in param.opts
        if opt.startswith("--") and opt not in text
    ]
    assert not missing, f"fer's own options not in docs/commands.md: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_points_to_a_file_and_heading_that_exist(page):
    dead = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not checked here
            continue
        file_part, _, anchor = target.partition("#")
        path = (page.parent / file_part).resolve() if file_part else page
        if not path.exists():
            dead.append(f"{target}: no file {file_part}")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            dead.append(f"{target}: no heading #{anchor} in {path.name}")
    assert not dead, f"dead links in {page.relative_to(ROOT)}: {dead}"


def test_the_readme_links_every_docs_page():
    linked = {
        (README.parent / target.partition("#")[0]).resolve()
        for target in links(README)
        if target.partition("#")[0]
    }
    unlinked = [page.name for page in DOCS.glob("*.md") if page.resolve() not in linked]
    assert not unlinked, f"README.md links no docs page named {unlinked}"


def test_the_readme_is_short():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines, more than {README_MAX_LINES}"


def test_the_readme_keeps_the_blocks_ci_and_the_api_test_read():
    text = README.read_text(encoding="utf-8")
    for marker in ("install", "test"):
        block = re.search(rf"^<!-- {marker} -->\n```\n(.+?)\n```$", text, re.S | re.M)
        assert block and block.group(1).strip(), f"README.md: no command under <!-- {marker} -->"
    assert re.search(r"<!-- api-example -->\n```python\n", text)


@pytest.mark.parametrize(
    ("title", "anchor"),
    [
        ("fer sweep [DATASET] --grid FILE", "fer-sweep-dataset---grid-file"),
        ("fer preprocess DATASET_DIR", "fer-preprocess-dataset_dir"),
        ("The `paper` recipe and what it said", "the-paper-recipe-and-what-it-said"),
        (
            "Several datasets at once: fer train / fer crossval A B ...",
            "several-datasets-at-once-fer-train--fer-crossval-a-b-",
        ),
    ],
)
def test_anchors_are_made_as_github_makes_them(title, anchor):
    assert slug(title) == anchor


def table_of_contents(text: str) -> set[str]:
    """The anchors of a page's own headings that the list before its first section links to
    (its table of contents); empty for a page without one."""
    opening = text.split("\n## ", 1)[0]
    return {target[1:] for target in LINK.findall(opening) if target.startswith("#")}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_a_table_of_contents_lists_every_section(page):
    # issue 31.5: accuracy.md's list lacked "Photos from elsewhere", which the README links to.
    text = page.read_text(encoding="utf-8")
    listed = table_of_contents(text)
    if not listed:
        return
    sections = [slug(title) for level, title in headings(text) if level == 2]
    missing = [section for section in sections if section not in listed]
    assert not missing, f"{page.name}'s table of contents lacks {missing}"
