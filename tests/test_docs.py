"""Citations in code and docs resolve inside the repository: docs/method.md sections and items exist, cited docs pages
exist, and nothing points at files outside the repository (an old spec, private notes, a shared folder)."""

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHOD = ROOT / "docs" / "method.md"
#: the trees whose citations must resolve
TREES = ("verl_modality", "docs", "recipes", "examples", "bench", "scripts", "tests", "README.md")
EXCLUDED = (ROOT / "tests" / "fixtures", Path(__file__).resolve())
SKIPPED_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache"}

#: a section (`## 2. MAPO ...`) or numbered item (`### 2.4 Difficulty`) heading of docs/method.md
ANCHOR_HEADING = re.compile(r"^#{2,4}\s+(\d+(?:\.\d+)*)\.?\s")
METHOD_CITATION = re.compile(r"docs/method\.md\s*§(\d+(?:\.\d+)*)")
DOCS_PATH = re.compile(r"(?<![\w-])docs/[\w./-]*?\.md\b")
OUTSIDE = (
    (re.compile(r"\bSPEC\b"), "the word SPEC (cite docs/method.md instead)"),
    (re.compile(r"(?<![\w./-])notes/"), "a notes/ path (outside the repository)"),
    (re.compile(r"\.\./shared"), "a ../shared path (outside the repository)"),
)


def _excluded(path: Path) -> bool:
    return any(path == e or e in path.parents for e in EXCLUDED)


def _text_files() -> Iterator[Path]:
    for name in TREES:
        top = ROOT / name
        paths = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file()) if top.is_dir() else []
        for path in paths:
            if _excluded(path) or SKIPPED_DIRS.intersection(path.relative_to(ROOT).parts):
                continue
            yield path


def _lines() -> Iterator[tuple[str, int, str]]:
    """``(repository-relative path, 1-based line number, line)`` of every UTF-8 text file of the trees."""
    for path in _text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # images and other binary files
        rel = path.relative_to(ROOT).as_posix()
        for number, line in enumerate(text.splitlines(), 1):
            yield rel, number, line


def method_anchors(text: str) -> set[str]:
    """The anchors of a method page: ``"2"`` for ``## 2. ...``, ``"2.4"`` for ``### 2.4 ...``; fenced code skipped."""
    anchors: set[str] = set()
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        m = None if fenced else ANCHOR_HEADING.match(line)
        if m:
            anchors.add(m.group(1))
    return anchors


@pytest.fixture(scope="module")
def lines() -> list[tuple[str, int, str]]:
    out = list(_lines())
    assert out, f"no text files found under {TREES}"
    return out


def test_method_page_keeps_its_numbering():
    anchors = method_anchors(METHOD.read_text(encoding="utf-8"))
    assert {str(n) for n in range(1, 9)} <= anchors, f"docs/method.md lacks sections: {sorted(anchors)}"
    for section in map(str, range(1, 9)):
        items = sorted((a for a in anchors if a.startswith(section + ".")), key=lambda a: int(a.split(".")[1]))
        numbers = [int(a.split(".")[1]) for a in items]
        assert numbers == list(range(1, len(numbers) + 1)), f"docs/method.md §{section}: items numbered {numbers}"


def test_anchor_parser():
    text = "# Title\n## 2. MAPO\n### 2.4 Difficulty\n```\n### 9.9 inside a fence\n```\n#### 5.7. Details\n2.5 not a heading\n"
    assert method_anchors(text) == {"2", "2.4", "5.7"}
    assert METHOD_CITATION.findall("see docs/method.md §2.4, docs/method.md §6. and docs/method.md §5") == [
        "2.4",
        "6",
        "5",
    ]


def test_nothing_points_outside_the_repository(lines):
    problems = [
        f"{rel}:{number}: {what}: {line.strip()[:120]}"
        for rel, number, line in lines
        for pattern, what in OUTSIDE
        if pattern.search(line)
    ]
    assert not problems, "\n".join(problems)


def test_method_citations_resolve(lines):
    anchors = method_anchors(METHOD.read_text(encoding="utf-8"))
    problems = [
        f"{rel}:{number}: docs/method.md §{anchor} is not a section or item of docs/method.md"
        for rel, number, line in lines
        for anchor in METHOD_CITATION.findall(line)
        if anchor not in anchors
    ]
    assert not problems, "\n".join(problems)
    cited = sum(len(METHOD_CITATION.findall(line)) for _, _, line in lines)
    assert cited > 0, "no docs/method.md citation found: is the pattern still right?"


def test_cited_docs_pages_exist(lines):
    problems = [
        f"{rel}:{number}: {page} does not exist"
        for rel, number, line in lines
        for page in DOCS_PATH.findall(line)
        if not (ROOT / page).is_file()
    ]
    assert not problems, "\n".join(problems)
