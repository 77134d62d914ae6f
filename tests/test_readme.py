"""The README is true: every fenced code block in README.md runs in ``make test``.

Each block is found by its fence and run by its language, against a real daemon of its own (the
``daemon`` fixture) whose socket it finds in ``$TASKER_SOCKET``:

- ``python``: a subprocess of this venv's interpreter;
- ``sh`` (also ``bash``, ``shell``): ``bash -e -o pipefail``, with this venv's ``bin`` first on
  ``PATH``, so ``taskerctl`` is the one under test; nothing is substituted;
- ``text`` (usage lines, diagrams): not code, not run.

A block of any other language, or with none, fails :func:`test_every_block_has_a_known_language`
until a runner is added here or the block is marked. Each block runs in a sandbox directory of its
own (its working directory, and so its tasks'), which holds a trivial ``Makefile``: the README's
``make -j4`` examples assume a project to build.

A block must run as written, so it is self-contained: it imports and defines what it uses. What
the test cannot do is said in the README itself, in an HTML comment (invisible once rendered)
right before the block, blank lines allowed in between::

    <!-- readme-test: skip: REASON -->                 the block is not run (keep these rare)
    <!-- readme-test: drop `PREFIX`, ...: REASON -->   lines starting with a PREFIX are not run
                                                       (``taskerd &``: the test starts the daemon)
    <!-- readme-test: needs `CMD`, ...: REASON -->     run only where each CMD is on PATH
    <!-- readme-test: expect `TEXT`, ... -->           stdout has each TEXT, in this order,
                                                       each on a later line than the one before

A block passes when it exits 0 within ``TIMEOUT`` seconds, prints what it is expected to, and,
for Python, writes nothing on stderr (a "coroutine ... was never awaited" warning fails it). A
failing block is named by its README line: the test id is ``L<line>-<language>``, and the file it
runs from has the block at the README's own line numbers, so a traceback's ``line N`` (or the
shell's ``README.md:N``) is line N of README.md.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.protobuf import json_format

from tasker.v1 import tasker_pb2 as pb
from tests.conftest import ROOT, Daemon

README = ROOT / "README.md"
TIMEOUT = 60.0  # seconds a block may take; the slowest today takes about 2 s
PYTHON = ("python",)
SHELL = ("sh", "bash", "shell")
NOT_CODE = ("text",)
#: The sandbox's Makefile, for the README's ``make -j4``.
MAKEFILE = "all:\n\t@echo built\n"

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*?)\s*$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*readme-test:\s*(?P<body>.*?)\s*-->\s*$")
_VERB = re.compile(r"^(?P<verb>skip|drop|needs|expect)\b\s*:?\s*(?P<rest>.*)$", re.S)
_TICKED = re.compile(r"`([^`]+)`")


@dataclass(frozen=True)
class Block:
    """One fenced block of README.md."""

    line: int  # README line of the opening fence; the code starts on the next line
    lang: str  # the fence's first word, lowercase; "" when it has none
    code: str
    skip: str = ""  # why it is not run
    drop: tuple[str, ...] = ()  # line prefixes the test does not run
    needs: tuple[str, ...] = ()  # commands it needs on PATH
    needs_why: str = ""
    expect: tuple[str, ...] = ()  # texts its stdout has, in order, on lines one after another

    @property
    def id(self) -> str:
        return f"L{self.line}-{self.lang or 'nolang'}"

    def where(self) -> str:
        return f"README.md:{self.line} (```{self.lang} block)"


def parse(text: str) -> list[Block]:
    """The fenced blocks of a Markdown text, with the ``readme-test`` comments before each."""
    blocks: list[Block] = []
    pending: dict[str, object] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        directive = _DIRECTIVE.match(line)
        fence = _FENCE.match(line)
        if directive:
            _add_directive(pending, directive["body"], i + 1)
        elif fence:
            start, marker = i + 1, fence["fence"]
            closing = re.compile(rf" {{0,3}}{re.escape(marker[0])}{{{len(marker)},}}\s*")
            body: list[str] = []
            i += 1
            while i < len(lines) and not closing.fullmatch(lines[i]):
                body.append(lines[i])
                i += 1
            if i == len(lines):
                raise ValueError(f"README.md:{start}: a fence that is never closed")
            lang = (fence["info"].split() or [""])[0].lower()
            blocks.append(Block(start, lang, "\n".join(body) + "\n", **pending))  # type: ignore[arg-type]
            pending = {}
        elif line.strip() and pending:
            raise ValueError(f"README.md:{i + 1}: a readme-test comment not right before a block")
        i += 1
    return blocks


def _add_directive(pending: dict[str, object], body: str, line: int) -> None:
    m = _VERB.match(body)
    if m is None:
        raise ValueError(
            f"README.md:{line}: unknown readme-test comment {body!r} "
            "(skip: REASON, drop `PREFIX`: REASON, needs `CMD`: REASON, expect `TEXT`)"
        )
    verb, rest = m["verb"], m["rest"].strip()
    if verb == "skip":
        if not rest:
            raise ValueError(f"README.md:{line}: `skip` needs a reason")
        pending["skip"] = rest
        return
    ticked = tuple(_TICKED.findall(rest))
    if not ticked:
        raise ValueError(f"README.md:{line}: `{verb}` names nothing in backquotes")
    why = _TICKED.sub("", rest).partition(":")[2].strip()
    if verb in ("drop", "needs") and not why:
        raise ValueError(f"README.md:{line}: `{verb}` needs a reason, after a colon")
    if verb == "needs":
        pending["needs_why"] = why
    pending[verb] = (*pending.get(verb, ()), *ticked)  # type: ignore[misc]


BLOCKS = parse(README.read_text())


def _params(langs: tuple[str, ...]) -> list[object]:
    params: list[object] = []
    for b in BLOCKS:
        if b.lang not in langs:
            continue
        marks = []
        if b.skip:
            marks.append(pytest.mark.skip(reason=f"{b.where()}: {b.skip}"))
        for cmd in b.needs:
            marks.append(
                pytest.mark.skipif(
                    shutil.which(cmd) is None,
                    reason=f"{b.where()}: `{cmd}` is not installed ({b.needs_why})",
                )
            )
        params.append(pytest.param(b, id=b.id, marks=marks))
    return params


# ------------------------------------------------------------------ the harness's own checks


def test_every_block_has_a_known_language() -> None:
    unknown = [b.where() for b in BLOCKS if b.lang not in (*PYTHON, *SHELL, *NOT_CODE)]
    assert not unknown, (
        "blocks this test cannot run (give the fence a language it knows, or add a runner to "
        f"tests/test_readme.py): {unknown}"
    )


def test_directives_are_where_they_apply() -> None:
    """A ``drop`` prefix matches a line of its block, and text blocks carry no directives."""
    for b in BLOCKS:
        if b.lang in NOT_CODE:
            assert not (b.skip or b.drop or b.needs or b.expect), f"{b.where()}: not code"
        for prefix in b.drop:
            assert any(ln.strip().startswith(prefix) for ln in b.code.splitlines()), (
                f"{b.where()}: `drop {prefix}` matches no line of the block"
            )


def test_parse_finds_blocks_lines_and_directives() -> None:
    text = (
        "# t\n"
        "```python\nprint(1)\n```\n"
        "<!-- readme-test: drop `taskerd &`: the test starts it -->\n"
        "<!-- readme-test: expect `a` `b` -->\n\n"
        "```sh\ntaskerd &\ntaskerctl list\n```\n"
        "````text\nusage\n```\n````\n"
    )
    a, b, c = parse(text)
    assert (a.line, a.lang, a.code) == (2, "python", "print(1)\n")
    assert (b.line, b.lang, b.drop, b.expect) == (8, "sh", ("taskerd &",), ("a", "b"))
    assert (c.line, c.lang, c.code) == (12, "text", "usage\n```\n")
    with pytest.raises(ValueError, match=r"README\.md:1: unknown readme-test"):
        parse("<!-- readme-test: maybe -->\n```sh\ntrue\n```\n")
    with pytest.raises(ValueError, match=r"README\.md:2: a readme-test comment not right"):
        parse("<!-- readme-test: skip: x -->\nprose\n```sh\ntrue\n```\n")


# ------------------------------------------------------------------ running the blocks


def _source(block: Block) -> str:
    """The block's code at README.md's line numbers: line N of the result is line N of the
    README (the dropped lines left blank)."""
    kept = []
    for ln in block.code.splitlines():
        dropped = any(ln.strip().startswith(prefix) for prefix in block.drop)
        assert not (dropped and ln.rstrip().endswith("\\")), f"{block.where()}: drops a `\\` line"
        kept.append("" if dropped else ln)
    return "\n" * block.line + "\n".join(kept) + "\n"


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    """The working directory of a block (and of its tasks): empty but for a trivial Makefile."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "Makefile").write_text(MAKEFILE)
    return work


def _run(argv: list[str], block: Block, daemon: Daemon, cwd: Path) -> tuple[int, str, str, float]:
    bindir = Path(sys.executable).parent
    assert (bindir / "taskerctl").exists(), f"no taskerctl beside {sys.executable}"
    env = {
        **os.environ,
        "TASKER_SOCKET": str(daemon.socket),
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
    }
    t0 = time.monotonic()
    p = subprocess.Popen(
        argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = p.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        pytest.fail(
            f"{block.where()} still running after {TIMEOUT:.0f}s\n--- stdout ---\n{out}"
            f"\n--- stderr ---\n{err}\n--- daemon log (end) ---\n{_daemon_log(daemon)}",
            pytrace=False,
        )
    return p.returncode, out, err, time.monotonic() - t0


def _daemon_log(daemon: Daemon) -> str:
    """The end of the daemon's log, without its DEBUG lines."""
    lines = [ln for ln in daemon.log().splitlines() if " DEBUG " not in ln]
    return "\n".join(lines[-30:])


def _check(block: Block, daemon: Daemon, rc: int, out: str, err: str, took: float) -> None:
    report = (
        f"\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
        f"\n--- daemon log (end) ---\n{_daemon_log(daemon)}"
    )
    if rc != 0:
        pytest.fail(f"{block.where()} exited {rc} after {took:.1f}s{report}", pytrace=False)
    if block.lang in PYTHON and err.strip():
        pytest.fail(f"{block.where()} wrote on stderr{report}", pytrace=False)
    lines, at = out.splitlines(), 0
    for text in block.expect:
        found = next((n for n in range(at, len(lines)) if text in lines[n]), None)
        if found is None:
            after = f" on a line after {lines[at - 1]!r}" if at else ""
            pytest.fail(f"{block.where()} did not print {text!r}{after}{report}", pytrace=False)
        at = found + 1


@pytest.mark.parametrize("block", _params(PYTHON))
def test_python_block(block: Block, daemon: Daemon, sandbox: Path, tmp_path: Path) -> None:
    script = tmp_path / "snippet" / "README.md"  # so a traceback says README.md, line N
    script.parent.mkdir()
    script.write_text(_source(block))
    _check(block, daemon, *_run([sys.executable, str(script)], block, daemon, sandbox))


@pytest.mark.parametrize("block", _params(SHELL))
def test_shell_block(block: Block, daemon: Daemon, sandbox: Path, tmp_path: Path) -> None:
    script = tmp_path / "snippet" / "README.md"
    script.parent.mkdir()
    # Line 1 (always before the block, which starts after its fence) names a failing line.
    trap = "trap 'echo \"README.md:$LINENO: exit $?\" >&2' ERR"
    script.write_text(f"set -e -o pipefail; {trap}" + _source(block))
    _check(block, daemon, *_run(["bash", str(script)], block, daemon, sandbox))


# ------------------------------------------------------------------ where grpcurl is absent


def _grpcurl_calls() -> list[tuple[Block, str, str]]:
    calls = []
    for b in BLOCKS:
        for ln in b.code.splitlines():
            if b.lang in SHELL and ln.strip().startswith("grpcurl"):
                words = shlex.split(ln)
                data = words[words.index("-d") + 1] if "-d" in words else ""
                method = words[-1] if "/" in words[-1] else ""
                calls.append((b, method, data))
    return calls


def test_grpcurl_lines_name_real_methods_and_requests() -> None:
    """The grpcurl block runs only where grpcurl is installed (Debian 12 and PyPI have none):
    everywhere, each of its calls must name a method of the proto, and its ``-d`` JSON must
    decode into that method's request, as grpcurl would decode it."""
    service = pb.DESCRIPTOR.services_by_name["Tasker"]
    calls = _grpcurl_calls()
    assert calls, "the README shows grpcurl: this test should find its lines"
    for block, method, data in calls:
        if not method:
            continue
        name, _, rpc = method.rpartition("/")
        assert name == service.full_name, f"{block.where()}: {method}"
        assert rpc in service.methods_by_name, f"{block.where()}: no method {rpc}"
        request = getattr(pb, service.methods_by_name[rpc].input_type.name)()
        json_format.Parse(data or "{}", request)  # raises on an unknown field or a bad value
