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
README_MAX_LINES = 180  # read in five minutes (raised from 160 for "A general model")

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


# --- module paths named in the docs and in the code's comments ------------------------------

PACKAGE = ROOT / "src" / "fercli"
SUBPACKAGES = sorted(path.name for path in PACKAGE.iterdir() if (path / "__init__.py").exists())
_SUB = "|".join(SUBPACKAGES)
# fercli.core.config.TrainConfig, and below fercli: infer.adapt, core.labels.collapse_note.
DOTTED = re.compile(rf"(?<![\w./-])((?:fercli|{_SUB})(?:\.[A-Za-z_]\w*)+)")
# fercli/infer/files.py, core/labels.py, fercli/web/ (a folder).
FILE_PATH = re.compile(rf"(?<![\w./~-])((?:fercli/)?(?:{_SUB})/(?:\w+\.py\b|(?=[`\s),;])))")
# Words that name a subpackage and, in the code, the variable of a record too ("media", a
# MediaReport): media.images.notes is that record's field. Checked only as far as a module
# of the subpackage goes (media.discover must exist; media.annotated is taken as the field).
VARIABLES = {"media"}


def named_in_text() -> list[tuple[str, str]]:
    """(where, name) of every module path named in the README, docs/*.md, pyproject.toml's
    comments and the comments and strings of fercli's own code."""
    import tokenize

    texts = [(page, page.read_text(encoding="utf-8")) for page in PAGES]
    project = (ROOT / "pyproject.toml").read_text(encoding="utf-8").splitlines()
    texts.append((ROOT / "pyproject.toml", "\n".join(line for line in project if "#" in line)))
    kinds = {tokenize.COMMENT, tokenize.STRING, getattr(tokenize, "FSTRING_MIDDLE", -1)}
    for source in sorted(PACKAGE.rglob("*.py")):
        with source.open("rb") as stream:
            parts = [
                token.string for token in tokenize.tokenize(stream.readline) if token.type in kinds
            ]
        texts.append((source, "\n".join(parts)))
    found = set()
    for path, text in texts:
        where = str(path.relative_to(ROOT))
        found.update((where, match.group(1).rstrip(".")) for match in DOTTED.finditer(text))
        found.update((where, "/" + match.group(1)) for match in FILE_PATH.finditer(text))
    return sorted(found)


def module_path_exists(name: str) -> bool:
    """Whether fercli has what a dotted name (fercli.a.b, or a.b below fercli) or a file path
    (/fercli/a/b.py, /a/b.py, /a/) names: modules found without importing them, attributes of
    modules that import here."""
    import importlib

    if name.startswith("/"):
        return (PACKAGE / name[1:].removeprefix("fercli/")).exists()
    parts = name.split(".")
    variable = parts[0] in VARIABLES
    parts = parts[1:] if parts[0] == "fercli" else parts
    module, folder, rest = "fercli", PACKAGE, list(parts)
    while (
        rest
        and folder.is_dir()
        and ((folder / rest[0] / "__init__.py").exists() or (folder / f"{rest[0]}.py").exists())
    ):
        folder = folder / rest[0]
        module = f"{module}.{rest.pop(0)}"
    if variable:
        return True  # as far as modules go; the rest is the record's
    try:
        target = importlib.import_module(module)
    except ImportError:  # an optional extra missing here: its module exists
        return True
    for attribute in rest:
        if not hasattr(target, attribute):
            return False
        target = getattr(target, attribute)
    return True


def test_every_module_path_named_in_docs_and_comments_exists():
    # issue 31.5: crossvalidation.train_fold, fercli.engines, fercli.config.TrainConfig, ...
    # outlived the move into subpackages in comments and docs.
    names = named_in_text()
    assert len(names) > 100  # the search finds them
    stale = [
        f"{where}: {name.lstrip('/')}" for where, name in names if not module_path_exists(name)
    ]
    assert not stale, "\n".join(stale)
