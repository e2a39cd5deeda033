"""seed 001 1.8 / 1.8.1 / 1.8.3 lint: bins are normalised by 999 (k/999, pixel scale W−1, grid scale R−1) only.

Greps every ``*.py``, ``*.md``, ``*.yaml``/``*.yml`` and ``*.sh`` file under the shipped trees and ``README.md`` for a
division or multiplication by the literal one-thousand and for its float literal, and fails naming file:line.

Not normalisation, hence allowed: the Stage-2 seed stride (a 7-digit constant that merely starts with the same
digits, excluded by the word boundary and listed explicitly), ``max_new_tokens`` settings, and a line carrying the
explicit marker ``norm1000-lint: ok`` (for e.g. a seconds-to-milliseconds conversion; say why next to it).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from coordexp_swift.coord.codec import MAX_BIN, decode, encode, project_to_grid

ROOT = Path(__file__).resolve().parents[2]
TREES = ("coordexp_swift", "plugins", "tests", "docs", "configs", "bench", "examples")
TOP_FILES = ("README.md",)
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh"}
SKIP_DIRS = {".venv", "__pycache__", ".git", ".pytest_cache", ".hypothesis", "results", "node_modules"}

BAD = [re.compile(r"/ ?1000\b"), re.compile(r"\* ?1000\b"), re.compile(r"(?<![\d.])1000\.0")]
ALLOW = [re.compile(r"\b1000003\b"), re.compile(r"max_new_tokens"), re.compile(r"norm1000-lint: ok")]


def _files() -> list[Path]:
    out = [ROOT / f for f in TOP_FILES if (ROOT / f).is_file()]
    for tree in TREES:
        base = ROOT / tree
        if not base.is_dir():
            continue
        for p in sorted(base.rglob("*")):
            if p.is_file() and p.suffix in SUFFIXES and not SKIP_DIRS.intersection(p.relative_to(ROOT).parts):
                out.append(p)
    return out


def violations(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every offending line in ``text``."""
    found = []
    for no, line in enumerate(text.splitlines(), start=1):
        if any(a.search(line) for a in ALLOW):
            continue
        if any(b.search(line) for b in BAD):
            found.append((no, line.strip()))
    return found


def test_lint_catches_and_allows_samples():
    """seed 001 1.8: the patterns catch the forbidden forms and spare the legitimate ones (samples are assembled
    at run time so that this file does not trip its own lint)."""
    thousand = "1" + "000"
    bad = [f"x = k / {thousand}", f"x = k/{thousand}", f"c = b * {thousand}", f"c = b*{thousand}",
           f"scale = {thousand}.0", f"v = k/{thousand}.", f"`/{thousand}` normalisation"]
    good = [f"seed = base + s * {thousand}003", f"max_new_tokens: {thousand}", "x = k / 999", "k = 10000.0",
            f"NUM_BINS = {thousand}", f"ms = t * {thousand}  # norm1000-lint: ok (seconds to ms)", f"/{thousand}0",
            "norm1000 range 0..999"]
    assert [no for no, _ in violations("\n".join(bad))] == list(range(1, len(bad) + 1))
    assert violations("\n".join(good)) == []


def test_no_thousand_normalisation_anywhere():
    """seed 001 1.8 / 1.8.1: no division/multiplication by one thousand or its float literal in code, tests, docs,
    configs, benchmarks, examples or README (the convention is k/999)."""
    files = _files()
    assert any(p.name == "codec.py" for p in files)  # the scan really covers the package
    report = []
    for p in files:
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        report += [f"{p.relative_to(ROOT)}:{no}: {line}" for no, line in violations(text)]
    assert not report, "bin normalisation must use 999 (k/999); offending lines:\n" + "\n".join(report)


@pytest.mark.parametrize("k", [0, 1, 2, 250, 499, 500, 501, 998, 999])
def test_codec_uses_999_only(k):
    """seed 001 1.8.1: decode is exactly k/999 and encode inverts it; bin 999 is 1.0 (a 1000-scale would give
    0.999), and no bin maps outside [0, 1]."""
    assert decode(k) == k / MAX_BIN
    assert encode(k / 999) == k
    assert decode(999) == 1.0


def test_projection_scales():
    """seed 001 1.8.3: projection to an R-grid is round(k/999·(R−1)): at R = 256, bin 999 lands on the last cell
    255 and bin 998 on 255 (998·255/999 = 254.74); at R = W = 1920 (scale W−1 = 1919), 999 -> 1919 and
    500 -> 960 (500·1919/999 = 960.46)."""
    assert project_to_grid(999, 256) == 255 and project_to_grid(998, 256) == 255
    assert project_to_grid(999, 1920) == 1919 and project_to_grid(500, 1920) == 960
