"""Every Python code block in README.md and docs/ runs, or says why it cannot.

The convention (docs/contributing.md): a fenced ```` ```python ```` block is
*complete* and runs on its own, in a fresh interpreter, unless the line just
above its fence is ``<!-- fragment: why -->`` (invisible on the site and on
GitHub), for a block that needs a GPU, a server or surrounding code. A block
whose only lines are snippet includes (``--8<-- "docs/examples/x.py"``) shows
an example file, which ``tests/test_docs_examples.py`` runs. Complete blocks
may not pass a literal ``...`` as a value (a placeholder would run as
``Ellipsis``); ``...`` as a function's body is fine.

Complete blocks run concurrently (one interpreter each), with no GPU needed:
the default tracker falls back to the ``"none"`` backend, and blocks that need
figures use ``gputime.testing``. A block importing an optional package that is
not installed (the floor job has no exporters) is skipped, naming it.
"""

from __future__ import annotations

import ast
import os
import re
import socket
import subprocess
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.scripts import run_python

ROOT = Path(__file__).resolve().parents[1]

#: The Markdown files whose blocks are checked.
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)")
FRAGMENT = re.compile(r"^\s*<!--\s*fragment:\s*(?P<why>.*?)\s*-->\s*$")
INCLUDE = re.compile(r"""^--8<--\s+["'](?P<path>[^"']+)["']\s*$""")

#: Optional packages a complete block may need; missing, the block is skipped.
OPTIONAL = (
    "opentelemetry.exporter",
    "opentelemetry.sdk",
    "prometheus_client",
    "starlette",
    "celery",
    "matplotlib",
)


@dataclass(frozen=True)
class Block:
    """One fenced Python block."""

    page: Path
    line: int  # 1-based line of the opening fence
    code: str
    fragment: str | None  # the reason given, for a fragment

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def includes(self) -> list[str] | None:
        """The included files, for a block made of snippet includes only."""
        lines = [line.strip() for line in self.code.splitlines() if line.strip()]
        found = [INCLUDE.match(line) for line in lines]
        if lines and all(found):
            return [match["path"] for match in found if match]
        return None


def blocks_of(page: Path) -> list[Block]:
    """The Python blocks of one page (fences may be indented, inside list items)."""
    found = []
    lines = page.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, fence, info = opening["indent"], opening["fence"], opening["info"]
        body, end = [], index + 1
        while end < len(lines):
            closing = FENCE.match(lines[end])
            if (
                closing is not None
                and closing["fence"].startswith(fence[0])
                and len(closing["fence"]) >= len(fence)
                and not closing["info"]
            ):
                break
            line = lines[end]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            end += 1
        if info.lower() in ("python", "py"):
            above = next((lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), "")
            marker = FRAGMENT.match(above)
            found.append(
                Block(page, index + 1, "\n".join(body) + "\n", marker["why"] if marker else None)
            )
        index = end + 1
    return found


ALL = [block for page in PAGES for block in blocks_of(page)]
COMPLETE = [b for b in ALL if b.fragment is None and b.includes is None]


def ellipsis_values(code: str) -> list[int]:
    """Lines where ``...`` is used as a value rather than as a body."""
    tree = ast.parse(code)
    bodies = {
        id(statement.value)
        for node in ast.walk(tree)
        for statement in getattr(node, "body", [])
        if isinstance(statement, ast.Expr)
    }
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value is Ellipsis and id(node) not in bodies
    ]


def closed_port() -> int:
    """A loopback port nobody listens on (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(block: Block, workdir: Path) -> subprocess.CompletedProcess[str]:
    workdir.mkdir(parents=True, exist_ok=True)
    script = workdir / "block.py"
    script.write_text(block.code, encoding="utf-8")
    env = {
        # Exporters in the recipes send to nothing, quickly.
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{closed_port()}",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
        # The Prometheus recipe binds this port; 0 is a free one.
        "METRICS_PORT": "0",
    }
    return run_python(script, workdir, env)


@pytest.fixture(scope="module")
def results(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Future[subprocess.CompletedProcess[str]]]]:
    """Every complete block started at once (a few at a time), by id."""
    base = tmp_path_factory.mktemp("blocks")
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:
        yield {
            block.id: pool.submit(run, block, base / f"b{n}") for n, block in enumerate(COMPLETE)
        }


def test_blocks_are_found() -> None:
    # The collector sees the README's blocks and the pages' (not none by a parsing slip).
    assert any(b.page.name == "README.md" for b in COMPLETE)
    assert len(ALL) >= 9, [b.id for b in ALL]


@pytest.mark.parametrize("block", COMPLETE, ids=lambda b: b.id)
def test_complete_block_runs(
    block: Block, results: dict[str, Future[subprocess.CompletedProcess[str]]]
) -> None:
    done = results[block.id].result()
    missing = re.search(r"ModuleNotFoundError: No module named '([\w.]+)'", done.stderr)
    if done.returncode != 0 and missing and missing[1].startswith(OPTIONAL):
        pytest.skip(f"{block.id} needs {missing[1]}, not installed here")
    assert done.returncode == 0, f"{block.id} failed:\n{block.code}\n--- stderr:\n{done.stderr}"


@pytest.mark.parametrize("block", COMPLETE, ids=lambda b: b.id)
def test_complete_block_has_no_placeholder(block: Block) -> None:
    lines = ellipsis_values(block.code)
    assert not lines, (
        f"{block.id}: `...` used as a value on line(s) {lines} of the block: write the real "
        "value, or mark the block <!-- fragment: why -->"
    )


@pytest.mark.parametrize("block", [b for b in ALL if b.fragment is not None], ids=lambda b: b.id)
def test_fragment_says_why(block: Block) -> None:
    assert block.fragment, f"{block.id}: say why it is a fragment: <!-- fragment: why -->"


@pytest.mark.parametrize("block", [b for b in ALL if b.includes is not None], ids=lambda b: b.id)
def test_included_files_are_tested_examples(block: Block) -> None:
    for path in block.includes or []:
        assert path.startswith("docs/examples/"), (block.id, path)
        assert path.endswith(".py"), (block.id, path)
        assert (ROOT / path).is_file(), f"{block.id}: {path} does not exist"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_fragment_markers_stand_before_python_blocks(page: Path) -> None:
    lines = page.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.lstrip().startswith("<!-- fragment"):
            continue  # (a mention in prose is not a marker)
        assert FRAGMENT.match(line), f"{page.name}:{number}: write <!-- fragment: why -->"
        following = next((ln for ln in lines[number:] if ln.strip()), "")
        opening = FENCE.match(following)
        where = f"{page.name}:{number}: a fragment marker must stand just above a ```python fence"
        assert opening is not None, where
        assert opening["info"].lower() in ("python", "py"), where


def test_readme_example_prints_the_two_services(
    results: dict[str, Future[subprocess.CompletedProcess[str]]],
) -> None:
    # The README's first example promises {'nmt': ServiceStats(...), 'tts': ServiceStats(...)}.
    first = next(b for b in COMPLETE if b.page.name == "README.md" and "stats()" in b.code)
    out = results[first.id].result().stdout
    assert "'nmt': ServiceStats(service='nmt', task_count=1" in out, out
    assert "'tts': ServiceStats(service='tts', task_count=1" in out, out
