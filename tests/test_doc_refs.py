"""Citations of Markdown documents point at files that are in the repository.

Tests, code and docs cite the documents they follow (``docs/api.md#monitoring``,
``docs/protocol.md#framings``, ``docs/security.md``). A reader of the repository must be able to
open every one of them, so this test fails on:

* any mention of the project folder that sits beside a checkout (``..`` then ``/shared``): the
  repository must stand on its own;
* a cited ``*.md`` file that does not exist. A path is resolved against the citing file's
  folder, the repository root and ``docs/``; a bare name (``cli.md``) counts when one of those
  holds it;
* a ``#anchor`` after a cited file that names no heading of that file (GitHub's rule for heading
  anchors: lower case, punctuation dropped, spaces as ``-``).

What is scanned: every text file under the folders in ``SCANNED`` plus the top-level Markdown
files. In Python files only comments and docstrings (and other bare string statements) count as
citations, so a test that writes a Markdown file of its own is not one; the folder check reads the
whole file. Recordings (``tests/interop/*-session``) are data, not prose, and are skipped.
"""

import ast
import functools
import io
import re
import sys
import tokenize
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("tests", "aemp_green", "bench", "examples", "fuzz", "docs")
TEXT_SUFFIXES = {".py", ".md", ".txt", ".toml", ".ini", ".cfg", ".rst", ".sh", ".dict"}
SKIPPED_DIRS = (
    "tests/interop/json-session",
    "tests/interop/cbor-session",
    "tests/interop/badauth-session",
)

_OUTSIDE = re.compile(r"\.\./+shared\b")
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.I)
# a path ending in .md, not preceded by a path character; an optional #anchor after it
_CITE = re.compile(r"(?<![\w./-])((?:\.{1,2}/)*[\w-][\w./-]*\.md)\b(?:#([\w-]+))?")


def scanned_files():
    """Every text file whose citations are checked, as paths relative to the repository."""
    files = sorted(p for p in REPO.glob("*.md"))
    for top in SCANNED:
        for path in sorted((REPO / top).rglob("*")):
            rel = path.relative_to(REPO).as_posix()
            if not path.is_file() or path.suffix not in TEXT_SUFFIXES:
                continue
            if "__pycache__" in rel or rel.startswith(SKIPPED_DIRS):
                continue
            files.append(path)
    return files


def prose(path, text):
    """The parts of ``text`` that are prose: all of it, or a Python file's comments and
    docstrings (every string that stands alone as a statement)."""
    if path.suffix != ".py":
        return text
    parts = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            if isinstance(node.value.value, str):
                parts.append(node.value.value)
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            parts.append(tok.string)
    return "\n".join(parts)


def slug(heading):
    """GitHub's anchor for a Markdown heading text.

    >>> slug("The `aemp` command")
    'the-aemp-command'
    """
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@functools.lru_cache(maxsize=None)
def anchors(md_path):
    """The anchors of every ``#`` heading of a Markdown file (outside code fences)."""
    found = set()
    fenced = False
    for line in md_path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            found.add(slug(line.lstrip("#")))
    return found


def resolve(citing, name):
    """The existing file a citation names, or None."""
    bases = [citing.parent, REPO, REPO / "docs"]
    for base in bases:
        target = (base / name).resolve()
        if target.is_file() and REPO in target.parents:
            return target
    return None


def problems(path):
    """Every broken reference in one file, as ``"<file>:<line>: <what>"`` strings."""
    text = path.read_text(encoding="utf-8", errors="replace")
    rel = path.relative_to(REPO).as_posix()
    found = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if _OUTSIDE.search(line):
            found.append(
                "%s:%d: mentions a folder outside the repository: %s" % (rel, lineno, line.strip())
            )
    for lineno, line in enumerate(prose(path, text).splitlines(), 1):
        line = _URL.sub("", line)
        for m in _CITE.finditer(line):
            name, anchor = m.group(1), m.group(2)
            target = resolve(path, name)
            if target is None:
                found.append("%s: cites %s, which is not in the repository" % (rel, name))
            elif anchor and anchor not in anchors(target):
                found.append(
                    "%s: cites %s#%s, which is no heading of %s" % (rel, name, anchor, name)
                )
    return found


_QUOTE = re.compile(
    r'docs/(api|protocol)\.md#([\w-]+)[^"\n]{0,60}?"([^"]{1,400}?)"(?=[.,;:)]|\s--|\s\+|\s\(|\s*$)',
    re.M,
)


@functools.lru_cache(maxsize=None)
def section_texts(md_path):
    """``{anchor: text}`` of a Markdown file; a section's text includes its subsections."""
    lines = md_path.read_text(encoding="utf-8").splitlines()
    heads = [
        (i, len(m.group(1)), slug(m.group(2)))
        for i, line in enumerate(lines)
        for m in [re.match(r"(#{1,6}) (.*)", line)]
        if m
    ]
    texts = {}
    for n, (i, level, anchor) in enumerate(heads):
        end = next((j for j, lv, _ in heads[n + 1 :] if lv <= level), len(lines))
        texts[anchor] = _plain("\n".join(lines[i + 1 : end]))
    return texts


def _plain(text):
    """Text as compared: no backticks, whitespace collapsed."""
    return re.sub(r"\s+", " ", text.replace("`", "")).strip()


def docstrings(path):
    """Every docstring (and bare string statement) of a Python file, with its line."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            if isinstance(node.value.value, str):
                yield node.lineno, node.value.value


def quote_problems(path):
    """Quotes after a ``docs/api.md#<section>`` or ``docs/protocol.md#<section>`` citation that
    the section lacks.

    A quote is the text in double quotes right after the citation (a few words may come
    between, such as a colon); ``...`` in it stands for left-out text. Double quotes inside
    backticks belong to the quote.
    """
    rel = path.relative_to(REPO).as_posix()
    found = []
    for lineno, doc in docstrings(path):
        guarded = re.sub(r"`[^`\n]*`", lambda m: m.group(0).replace('"', "\x01"), doc)
        for m in _QUOTE.finditer(guarded):
            name, anchor, quote = m.groups()
            sections = section_texts(REPO / "docs" / ("%s.md" % name))
            if anchor not in sections:
                continue  # test_every_cited_document_exists reports it
            for part in re.split(r"\.\.\.|\u2026", quote.replace("\x01", '"')):
                part = _plain(part).strip(" .,")
                if part and part not in sections[anchor]:
                    found.append(
                        "%s:%d: docs/%s.md#%s does not say %r" % (rel, lineno, name, anchor, part)
                    )
    return found


def test_scan_covers_the_tree():
    """The scan sees the files that cite documents most (a glob that matched nothing would pass)."""
    names = {p.relative_to(REPO).as_posix() for p in scanned_files()}
    assert {"README.md", "tests/test_monitor.py", "aemp_green/kernel.py", "fuzz/README.md"} <= names


@pytest.mark.parametrize(
    "text, bad",
    [
        ('"""See the API notes (API.md "Calls")."""\n', "cites API.md"),
        ('"""As docs/api.md#no-such-heading says."""\n', "no heading"),
        ("# recordings in ..%s/interop\nx = 1\n" % "/shared", "outside the repository"),
    ],
)
def test_checker_catches(tmp_path, monkeypatch, text, bad):
    """The checker itself finds each kind of broken reference (so a clean tree means something)."""
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "api.md").write_text("# API\n\n## Calls\n")
    f = tmp_path / "t.py"
    f.write_text(text)
    assert any(bad in p for p in problems(f)), problems(f)
    f.write_text('"""docs/api.md#calls and ./docs/api.md are fine; so is cli.md here."""\n')
    (tmp_path / "docs" / "cli.md").write_text("# CLI\n")
    assert problems(f) == []


def test_every_cited_document_exists():
    """No file cites a document that a reader of the repository cannot open."""
    found = [p for path in scanned_files() for p in problems(path)]
    assert not found, "%d broken document references:\n%s" % (len(found), "\n".join(found))


def test_quotes_match_the_cited_section():
    """A sentence a test or module quotes from docs/api.md or docs/protocol.md is in the section
    it cites (so the docs and the tests that prove them do not drift apart)."""
    found = [
        p
        for top in ("tests", "aemp_green", "bench")
        for path in sorted((REPO / top).rglob("*.py"))
        for p in quote_problems(path)
    ]
    assert not found, "%d quotes not in the cited section:\n%s" % (len(found), "\n".join(found))


def test_quote_checker_catches(tmp_path, monkeypatch):
    """The quote check finds a misquote, and accepts a quote with left-out text."""
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "api.md").write_text(
        "# API\n\n## Calls\n\n`call(p)` returns the reply list.\n"
    )
    f = tmp_path / "t.py"
    f.write_text('"""docs/api.md#calls: "`call(p)` ... the reply list"."""\n')
    assert quote_problems(f) == []
    f.write_text('"""docs/api.md#calls: "`call(p)` returns the answer"."""\n')
    assert quote_problems(f) and "returns the answer" in quote_problems(f)[0]
