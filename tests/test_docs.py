"""The ```python blocks of README.md and docs/*.md run as they are.

Every fenced ```python block is one test, named ``<file>:<line of the fence>``. It runs in a
fresh interpreter (``sys.executable -c <block>``, cwd and ``PYTHONPATH`` the repository root)
and passes when the process exits 0 within ``DEADLINE`` seconds. A line comment
``# prints: X`` in the block says that ``X`` appears in its output: the test checks that some
line of stdout contains ``X``, where ``...`` in ``X`` stands for any text.

A block that cannot run alone says so in an HTML comment on the line right before its fence:

* ``<!-- not run: <reason> -->``: collected as a skipped test with that reason (needs a seed
  or other nodes, runs forever, is a fragment, ...);
* ``<!-- run with the previous block -->``: a continuation; it runs after the previous
  ```python block of the same file, in the same process.

Any other HTML comment right before a ```python fence is an error, so a typo cannot turn a
block into one that silently does not run.

The environment: ``PERL_ANYEVENT_MP_TRACE`` removed, and ``PERL_ANYEVENT_MP_RC`` pointing to a
fresh rc file in the test's ``tmp_path`` (so no user rc file is read or written) whose only
setting is ``binds: ["127.0.0.1:*"]``: a block that calls ``configure()`` without ``binds``
(AEMP's default is every local address) listens on the loopback interface only.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC_FILES = [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))
DEADLINE = 30  # seconds per block

_FENCE = re.compile(r"^```python\s*$")
_END = re.compile(r"^```\s*$")
_COMMENT = re.compile(r"^<!--(.*)-->\s*$")
_NOT_RUN = re.compile(r"^\s*not run:\s*(\S.*?)\s*$")
_WITH_PREVIOUS = re.compile(r"^\s*run with the previous block\s*$")
_PRINTS = re.compile(r"#\s*prints:\s*(.*?)\s*$")


class Block:
    """One ```python block: where it is, its code, and what the comment before it says."""

    def __init__(self, path, line, code, not_run=None, previous=None):
        self.path = path
        self.line = line  # 1-based line of the opening fence
        self.code = code
        self.not_run = not_run  # the reason, or None
        self.previous = previous  # the Block this one continues, or None

    @property
    def name(self):
        return "%s:%d" % (_rel(self.path), self.line)

    def program(self):
        """The code to run: the blocks this one continues first."""
        parts = []
        block = self
        while block is not None:
            parts.append(block.code)
            block = block.previous
        return "\n".join(reversed(parts))


def _rel(path):
    try:
        return path.relative_to(REPO).as_posix()
    except ValueError:
        return str(path)


def parse(path):
    """Return the ``Block``s of one Markdown file, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        if not _FENCE.match(lines[i]):
            i += 1
            continue
        start = i
        end = start + 1
        while end < len(lines) and not _END.match(lines[end]):
            end += 1
        where = "%s:%d" % (_rel(path), start + 1)
        if end == len(lines):
            raise ValueError("%s: ```python block is never closed" % where)
        not_run = previous = None
        comment = _COMMENT.match(lines[start - 1]) if start > 0 else None
        if comment:
            text = comment.group(1)
            if _NOT_RUN.match(text):
                not_run = _NOT_RUN.match(text).group(1)
            elif _WITH_PREVIOUS.match(text):
                if not blocks:
                    raise ValueError("%s: 'run with the previous block' but there is none" % where)
                previous = blocks[-1]
                if previous.not_run:
                    raise ValueError(
                        "%s continues %s, which is marked not run" % (where, previous.name)
                    )
            else:
                raise ValueError(
                    "%s: unknown marker %r before a ```python block (use "
                    "'<!-- not run: <reason> -->' or "
                    "'<!-- run with the previous block -->')" % (where, lines[start - 1])
                )
        blocks.append(
            Block(path, start + 1, "\n".join(lines[start + 1 : end]) + "\n", not_run, previous)
        )
        i = end + 1
    return blocks


BLOCKS = [block for path in DOC_FILES for block in parse(path)]


def expected_output(code):
    """The ``X`` of every ``# prints: X`` comment in ``code``."""
    return [m.group(1) for m in map(_PRINTS.search, code.splitlines()) if m and m.group(1)]


def shows(expected, stdout):
    """True if a line of ``stdout`` contains ``expected`` (``...`` matches any text)."""
    pattern = ".*?".join(re.escape(part) for part in expected.split("..."))
    return re.search(pattern, stdout) is not None


def _params():
    params = []
    for block in BLOCKS:
        marks = []
        if block.not_run:
            marks.append(pytest.mark.skip(reason="%s not run: %s" % (block.name, block.not_run)))
        params.append(pytest.param(block, id=block.name, marks=marks))
    return params


def test_every_doc_file_is_parsed():
    """The parser sees the blocks (a changed fence style would otherwise run nothing)."""
    names = {block.path.name for block in BLOCKS}
    assert {"README.md", "tutorial.md"} <= names, names
    assert any(not block.not_run for block in BLOCKS)


def test_markers_prints_and_continuations(tmp_path):
    """The parser and the output check themselves, on a made-up document."""
    doc = tmp_path / "doc.md"
    doc.write_text(
        "text\n<!-- not run: needs a seed -->\n```python\nx = 1\n```\n"
        "```python\na = 2\n```\n<!-- run with the previous block -->\n"
        "```python\nprint(a)   # prints: 2\n```\n```sh\nnot python\n```\n"
    )
    skipped, first, second = parse(doc)
    assert (skipped.line, skipped.not_run) == (3, "needs a seed")
    assert first.not_run is None and first.previous is None
    assert second.previous is first and second.program() == "a = 2\n\nprint(a)   # prints: 2\n"
    assert expected_output(second.program()) == ["2"]
    assert shows(
        "worker ended: ('die', 'ZeroDivisionError: ...')",
        "x\nworker ended: ('die', 'ZeroDivisionError: division by zero')\n",
    )
    assert not shows("counter ended ()", "counter ended ('die',)\n")
    for bad in ("<!-- not ran: typo -->", "<!-- not run: -->"):
        doc.write_text(bad + "\n```python\npass\n```\n")
        with pytest.raises(ValueError, match="unknown marker"):
            parse(doc)
    doc.write_text(
        "<!-- not run: x -->\n```python\npass\n```\n"
        "<!-- run with the previous block -->\n```python\npass\n```\n"
    )
    with pytest.raises(ValueError, match="marked not run"):
        parse(doc)


@pytest.mark.parametrize("block", _params())
def test_doc_block_runs(block, tmp_path):
    rc = tmp_path / "perl-anyevent-mp"
    rc.write_text(json.dumps({"version": 1, "binds": ["127.0.0.1:*"]}))
    env = dict(os.environ)
    env.pop("PERL_ANYEVENT_MP_TRACE", None)
    env.update(PYTHONPATH=str(REPO), PERL_ANYEVENT_MP_RC=str(rc), PYTHONUNBUFFERED="1")
    code = block.program()
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=str(REPO),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(
            "%s did not end within %ss (killed)\n--- stdout\n%s--- stderr\n%s"
            % (block.name, DEADLINE, out, err)
        )
    report = "%s\n--- code\n%s--- stdout\n%s--- stderr\n%s" % (block.name, code, out, err)
    assert proc.returncode == 0, "exit status %s: %s" % (proc.returncode, report)
    for expected in expected_output(code):
        assert shows(expected, out), "%r not in stdout: %s" % (expected, report)
