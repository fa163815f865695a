"""The repository explains itself: every citation in code and docs points at a page of `docs/`.

Docstrings, comments, presets and the README cite the algorithms as ``docs/<page>.md §N``. These
tests fail when a citation names a page or a numbered section that does not exist, when a link
inside `docs/` is broken, and when anything cites the team's private notes that live outside the
repository (they cannot be read by whoever clones it).
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
SCANNED = (".py", ".md", ".flags", ".toml", ".cfg", ".sh", ".txt")
SKIP_DIRS = {".git", "runs", "tpu_runs", "build", "dist", "__pycache__", ".venv", "venv"}

# Citations of files outside the repository. Built from pieces so this file does not match itself.
_OUTSIDE = [
    # the word, but not a Python name (`NAME = ...`, `.NAME`, `f(NAME)`, `a, NAME`, `import NAME`)
    r"(?<![\w.])(?<!\w\()(?<!, )(?<!import )" + "SP" + r"EC\b(?!\s*=[^=]|\.\w)",
    "SP" + r"EC\.md",
    "DES" + r"IGN (layer|\.md)",
    "DES" + r"IGN\.md",
    "STY" + r"LE (rule|\d)",
    "STY" + r"LE\.md",
    r"\.\./" + "shared",
    r"/work/" + "shared",
]
OUTSIDE = re.compile("|".join(f"(?:{p})" for p in _OUTSIDE))

# "docs/ntk_step.md", optionally followed by "§3", "§3–4", "§2, §4", "§3, §4 and §8".
_SECTION = r"§\s*\d+(?:\.\d+)*(?:\s*[–-]\s*\d+(?:\.\d+)*)?"
CITATION = re.compile(
    r"docs/([\w-]+\.md)((?:\s*" + _SECTION + r")(?:(?:,\s*|\s+and\s+)" + _SECTION + r")*)?"
)
# Inside docs/: "[ntk_step.md §8](ntk_step.md)" style references to a sibling page.
SIBLING = re.compile(r"\[([\w-]+\.md)\s+(" + _SECTION + r")\]")
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")
HEADING = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)\.?\s", re.MULTILINE)


def _repo_files() -> list[str]:
    """Tracked text files (git), or every file under the root when git is unavailable."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout.split("\n")
        files = [f for f in out if f]
    except (OSError, subprocess.CalledProcessError):
        files = []
        for base, dirs, names in os.walk(ROOT):
            dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".")]
            files += [os.path.relpath(os.path.join(base, n), ROOT) for n in names]
    return sorted(
        f for f in files
        if (f.endswith(SCANNED) or os.path.basename(f) == "Makefile")
        and os.path.isfile(os.path.join(ROOT, f))
    )


def _read(rel: str) -> str:
    with open(os.path.join(ROOT, rel), encoding="utf-8", errors="replace") as f:
        return f.read()


def _sections(page: str) -> set[str]:
    return set(HEADING.findall(_read(os.path.join("docs", page))))


def _numbers(cited: str) -> list[str]:
    return re.findall(r"\d+(?:\.\d+)*", cited or "")


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


FILES = _repo_files()
PAGES = sorted(f for f in os.listdir(DOCS) if f.endswith(".md")) if os.path.isdir(DOCS) else []


def test_the_docs_exist():
    assert "README.md" in PAGES, "docs/README.md, the index of the documentation, is missing."
    index = _read(os.path.join("docs", "README.md"))
    unlisted = [p for p in PAGES if p != "README.md" and f"({p})" not in index]
    assert not unlisted, f"docs/README.md does not link these pages: {unlisted}"


def test_nothing_cites_files_outside_the_repository():
    me = os.path.relpath(os.path.abspath(__file__), ROOT)
    hits = []
    for rel in FILES:
        if rel == me:
            continue
        text = _read(rel)
        hits += [f"{rel}:{_line(text, m.start())}: {m.group(0)}" for m in OUTSIDE.finditer(text)]
    assert not hits, (
        "These lines cite notes that are not in the repository; cite the matching page and "
        "section of docs/ instead (docs/README.md lists them):\n" + "\n".join(hits)
    )


def test_every_cited_docs_page_and_section_exists():
    problems, count = [], 0
    for rel in FILES:
        text = _read(rel)
        for m in CITATION.finditer(text):
            count += 1
            page, where = m.group(1), f"{rel}:{_line(text, m.start())}"
            if page not in PAGES:
                problems.append(f"{where}: docs/{page} does not exist")
                continue
            missing = [n for n in _numbers(m.group(2)) if n not in _sections(page)]
            if missing:
                problems.append(f"{where}: docs/{page} has no section {', '.join(missing)}")
    assert count > 0, "no docs/ citations found at all: is the scan looking at the repository?"
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", PAGES)
def test_links_and_section_references_inside_docs_resolve(page):
    text = _read(os.path.join("docs", page))
    problems = []
    for m in LINK.finditer(text):
        target = m.group(1)
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        if not os.path.exists(os.path.normpath(os.path.join(DOCS, target))):
            problems.append(f"line {_line(text, m.start())}: broken link {target}")
    for m in SIBLING.finditer(text):
        other = m.group(1)
        if other not in PAGES:
            problems.append(f"line {_line(text, m.start())}: no page {other}")
            continue
        missing = [n for n in _numbers(m.group(2)) if n not in _sections(other)]
        if missing:
            problems.append(f"line {_line(text, m.start())}: {other} has no section {missing}")
    assert not problems, f"docs/{page}:\n" + "\n".join(problems)


def test_section_headings_are_numbered_in_order():
    for page in PAGES:
        numbers = [n for n in HEADING.findall(_read(os.path.join("docs", page))) if "." not in n]
        assert numbers == [str(i) for i in range(1, len(numbers) + 1)], (
            f"docs/{page}: top-level section numbers {numbers} should run 1, 2, 3, … so that "
            "citations stay stable; renumbering a section means updating its citations."
        )
