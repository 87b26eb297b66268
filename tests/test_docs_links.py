"""README.md and docs/**/*.md: every relative link and image points to an existing file (and, for
a Markdown target with `#anchor`, to an existing heading); the README stays a five-minute read."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250

# Inline links and images `[text](target "title")`, reference definitions `[id]: target`, HTML src.
INLINE = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HTML_SRC = re.compile(r"<(?:img|a)\b[^>]*\b(?:src|href)=\"([^\"]+)\"", re.IGNORECASE)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def markdown_files(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def prose_lines(text: str, *, blank_code: bool = True) -> list[tuple[int, str]]:
    """Lines outside fenced code blocks; inline code spans blanked (links there are code)."""
    lines, fence = [], None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.lstrip()
        marker = re.match(r"(`{3,}|~{3,})", stripped)
        if fence is None and marker:
            fence = marker.group(1)
            continue
        if fence is not None:
            if stripped.startswith(fence):
                fence = None
            continue
        if blank_code:
            line = re.sub(r"(`+)(?:(?!\1).)+?\1", "", line)
        lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found, seen = set(), {}
    for _, line in prose_lines(path.read_text(), blank_code=False):
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading is None:
            continue
        base = slug(heading.group(1))
        n = seen.get(base, 0)
        found.add(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    return found


def broken_links(path: Path, root: Path) -> list[str]:
    """`file:line: target (why)` for each relative link or image of `path` that does not resolve."""
    problems = []
    for number, line in prose_lines(path.read_text()):
        targets = INLINE.findall(line) + HTML_SRC.findall(line)
        reference = REFERENCE.match(line)
        if reference:
            targets.append(reference.group(1))
        for target in targets:
            if SCHEME.match(target) or target.startswith("//"):
                continue  # absolute URLs are not checked (no network in the tests)
            file_part, _, anchor = target.partition("#")
            where = f"{path.relative_to(root)}:{number}: {target}"
            resolved = (path.parent / file_part).resolve() if file_part else path
            if not resolved.exists():
                problems.append(f"{where} (no such file {resolved})")
            elif root.resolve() not in (resolved, *resolved.parents):
                problems.append(f"{where} (outside the repository)")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                problems.append(f"{where} (no heading with anchor #{anchor})")
    return problems


def test_readme_and_docs_links_resolve():
    files = markdown_files(ROOT)
    assert len(files) > 5, files  # the docs folder was found
    problems = [p for path in files for p in broken_links(path, ROOT)]
    assert problems == [], "\n".join(problems)


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"


@pytest.fixture
def tiny_repo(tmp_path):
    (tmp_path / "docs" / "img").mkdir(parents=True)
    (tmp_path / "docs" / "img" / "a.png").write_bytes(b"png")
    (tmp_path / "docs" / "page.md").write_text("# A page\n\n## Some `code` heading!\n")
    return tmp_path


def test_checker_finds_planted_broken_links(tiny_repo):
    (tiny_repo / "README.md").write_text(
        "See [page](docs/page.md), [heading](docs/page.md#some-code-heading),\n"
        "![ok](docs/img/a.png) and [web](https://example.org/x.md).\n"
        "Broken: [gone](docs/gone.md), ![gone](img/a.png), [bad anchor](docs/page.md#nope),\n"
        "[up](../outside.md) and\n\n[ref]: docs/missing.png\n\n"
        "```python\nx = '[not a link](nowhere.md)'\n```\n"
        "Inline code `[nor this](nowhere.md)` is skipped.\n")
    (tiny_repo / "docs" / "page.md").write_text(
        "# A page\n\n## Some `code` heading!\n\n![back](../README.md) ![img](img/a.png)"
        " ![wrong](docs/img/a.png)\n")
    problems = [p for path in markdown_files(tiny_repo) for p in broken_links(path, tiny_repo)]
    targets = sorted(p.split(": ", 1)[1].split(" (")[0] for p in problems)
    assert targets == sorted(["docs/gone.md", "img/a.png", "docs/page.md#nope", "../outside.md",
                              "docs/missing.png", "docs/img/a.png"]), problems
