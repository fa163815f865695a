"""Every number in the README's results tables is found in the result files the table names.

For each Markdown table in the README's "Results" section, the text around it (from the previous
table to this one, and the paragraph right after it) names its result files
(``experiments/results/NAME.{json,md}`` or ``benchmarks/results/NAME.json``, paths from the repository
root, or a bare ``NAME.json`` in ``experiments/results/``; braces expanded, placeholders such as
``<α>`` skipped).
Every number in a result cell (every column but the row labels) must be some number of those
files, JSON values or numbers written in their Markdown, printed with the cell's precision: the
same decimals (or significant digits in scientific notation), after scaling by 1 (as is), 100 (a
fraction shown in percent), or 1e-3, 1e-6, 1e-9 (bytes shown in kB, MB, GB). So a table cannot
drift from its files: changing a digit in the README, or re-running an experiment without redoing
its table, fails here. (A number is looked for in the whole file, not in its row: a changed digit
that happens to equal another number of the file passes.)
"""

import json
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "experiments", "results")
LABELS = {  # header cells of row-label columns (configuration, not measurements)
    "α", "method", "topology", "run", "clients (sampled)", "model (η, rank r)", "graph",
    "algorithm", "faults", "option", "values (default first)",
}
SCALES = (1.0, 100.0, 1e-3, 1e-6, 1e-9)
NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:e[-+]?\d+)?")
FILE = re.compile(r"`([^`\s]*?(?:\.json|\.md|\{[^`\s]*?\}))`")


def _section(text: str, title: str = "## Results") -> str:
    start = text.index(title)
    end = text.find("\n## ", start + len(title))
    return text[start : end if end > 0 else len(text)]


def _tables(section: str):
    """[(header cells, rows of cells, text around the table)]."""
    lines = section.split("\n")
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].startswith("|"):
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            blocks.append((i, j))
            i = j
        else:
            i += 1
    out = []
    for k, (a, b) in enumerate(blocks):
        before = blocks[k - 1][1] if k else 0
        after = b
        while after < len(lines) and not lines[after].strip():
            after += 1  # blank lines, then the next paragraph up to a blank line or a table
        while after < len(lines) and lines[after].strip() and not lines[after].startswith("|"):
            after += 1
        cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines[a:b]]
        context = "\n".join(lines[before:a] + lines[b:after])
        out.append((cells[0], cells[2:], context))
    return out


def _expand(token: str) -> list[str]:
    m = re.search(r"\{([^}]*)\}", token)
    if not m:
        return [token]
    return [x for alt in m.group(1).split(",")
            for x in _expand(token[: m.start()] + alt + token[m.end():])]


def named_files(context: str) -> list[str]:
    paths = []
    for token in FILE.findall(context):
        for name in _expand(token):
            if "<" in name or not name.endswith((".json", ".md")):
                continue
            path = os.path.join(REPO, name) if "/" in name else os.path.join(RESULTS, name)
            if os.path.exists(path) and path not in paths:
                paths.append(path)
    return paths


def _numbers(path: str) -> list[float]:
    with open(path) as f:
        text = f.read()
    values = [float(t.replace(",", "")) for t in NUMBER.findall(text)]
    if path.endswith(".json"):
        def walk(x):
            if isinstance(x, bool):
                return
            if isinstance(x, (int, float)):
                values.append(float(x))
            elif isinstance(x, dict):
                for v in x.values():
                    walk(v)
            elif isinstance(x, list):
                for v in x:
                    walk(v)
        walk(json.loads(text))
    return values


def _printed(value: float, token: str) -> str:
    if "e" in token:
        digits = len(token.split("e")[0].split(".")[1]) if "." in token.split("e")[0] else 0
        return f"{value:.{digits}e}"
    digits = len(token.split(".")[1]) if "." in token else 0
    return f"{value:.{digits}f}"


def _canonical(token: str) -> str:
    t = token.replace(",", "")
    if "e" in t:
        return f"{float(t):.{len(t.split('e')[0].split('.')[1]) if '.' in t.split('e')[0] else 0}e}"
    return t


class Files:
    def __init__(self, paths):
        self.values = [v for p in paths for v in _numbers(p)]
        self.cache = {}

    def has(self, token: str) -> bool:
        want = _canonical(token)
        shape = ("e" if "e" in want else "f", _printed(1.0, want))
        if shape not in self.cache:
            self.cache[shape] = {
                _printed(v * s, want).lstrip("-") for v in self.values for s in SCALES
            } | {_printed(v * s, want) for v in self.values for s in SCALES}
        return want in self.cache[shape] or want.lstrip("-") in self.cache[shape]


def check(readme: str) -> list[str]:
    """Every README results-table number not found in its files (empty: all found)."""
    missing = []
    for header, rows, context in _tables(_section(readme)):
        result_cols = [i for i, h in enumerate(header) if h.strip("*` ") not in LABELS]
        if not result_cols or all(not NUMBER.search(r[i]) for r in rows for i in result_cols
                                  if i < len(r)):
            continue  # a table of options, not results
        paths = named_files(context)
        if not paths:
            missing.append(f"table {header}: names no result file")
            continue
        files = Files(paths)
        for row in rows:
            for i in result_cols:
                if i >= len(row):
                    continue
                for token in NUMBER.findall(row[i].replace("**", "")):
                    if not files.has(token):
                        missing.append(f"{row[0]} | {header[i]}: {token} not in "
                                       f"{[os.path.basename(p) for p in paths]}")
    return missing


def _readme() -> str:
    with open(os.path.join(REPO, "README.md")) as f:
        return f.read()


def test_readme_tables_match_their_result_files():
    readme = _readme()
    assert len(_tables(_section(readme))) >= 6
    missing = check(readme)
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize(
    "old, new",
    [("| 0.7779 |", "| 0.7778 |"), ("19.3 ± 4.0", "19.4 ± 4.0"), ("| 1396.9 |", "| 1396.8 |")],
)
def test_an_altered_number_is_caught(old, new):
    readme = _readme()
    assert old in readme
    assert check(readme.replace(old, new, 1))
